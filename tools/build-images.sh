#!/usr/bin/env bash
# Build the three images a cluster install needs, tagged as the chart's defaults expect them:
#   REGISTRY/operator:TAG        operator/Dockerfile
#   REGISTRY/predictor:TAG       predictor/Dockerfile, the CUDA variant (GPU deployments: chronoedit)
#   REGISTRY/predictor:TAG-cpu   predictor/Dockerfile VARIANT=cpu (deployments without GPUs: sr)
# with docker, podman or buildah (the first found, or --builder), from the repository root, and
# optionally push them. `make images REGISTRY=… PUSH=1` runs it. The chart then needs only
#   --set image.repository=REGISTRY/operator --set config.predictorImage.repository=REGISTRY/predictor
# (and the tags, when TAG is not the chart's appVersion), which the script prints at the end.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CHART="$ROOT/charts/chrono-upscaler/Chart.yaml"
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$CHART")
REGISTRY=ghcr.io/chrono-upscaler
TAG=$APP_VERSION
BUILDER=
PUSH=0
DRY_RUN=0
BUILD_ARGS=()

usage() {
    cat <<EOF
usage: tools/build-images.sh [--registry REGISTRY] [--tag TAG] [--builder docker|podman|buildah]
                             [--build-arg NAME=VALUE]... [--push] [--dry-run]
  --registry   where the images go (default: $REGISTRY): REGISTRY/operator, REGISTRY/predictor
  --tag        image tag (default: the chart's appVersion, $APP_VERSION); the CPU variant gets TAG-cpu
  --builder    docker, podman or buildah (default: the first of them on PATH)
  --build-arg  passed to every build, e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
  --push       push the three images after building them
  --dry-run    print the commands instead of running them
EOF
}

die() {
    echo "build-images: $*" >&2
    exit 2
}

while (($#)); do
    case $1 in
        --registry) REGISTRY=${2:?--registry needs a value}; shift 2 ;;
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --builder) BUILDER=${2:?--builder needs a value}; shift 2 ;;
        --build-arg) BUILD_ARGS+=(--build-arg "${2:?--build-arg needs NAME=VALUE}"); shift 2 ;;
        --push) PUSH=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

REGISTRY=${REGISTRY%/}
[[ -n $REGISTRY ]] || die "--registry must not be empty"
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag '$TAG' is not a valid image tag"
[[ $TAG == *-cpu ]] && die "--tag '$TAG' ends in -cpu: that suffix marks the CPU variant, which this script adds"

if [[ -z $BUILDER ]]; then
    for candidate in docker podman buildah; do
        if command -v "$candidate" >/dev/null; then BUILDER=$candidate; break; fi
    done
    [[ -n $BUILDER ]] || die "none of docker, podman or buildah is on PATH; install one (or pass --builder)"
fi
case $BUILDER in
    docker | podman) BUILD=(build) ;;
    buildah) BUILD=(build --layers) ;;  # buildah caches layers only when asked
    *) die "--builder '$BUILDER': expected docker, podman or buildah" ;;
esac
if ((!DRY_RUN)); then
    command -v "$BUILDER" >/dev/null || die "$BUILDER is not on PATH"
fi

run() {
    echo "+ $*"
    if ((!DRY_RUN)); then "$@"; fi
}

OPERATOR="$REGISTRY/operator:$TAG"
PREDICTOR="$REGISTRY/predictor:$TAG"
PREDICTOR_CPU="$REGISTRY/predictor:$TAG-cpu"

cd "$ROOT"
run "$BUILDER" "${BUILD[@]}" "${BUILD_ARGS[@]}" -f operator/Dockerfile -t "$OPERATOR" .
run "$BUILDER" "${BUILD[@]}" "${BUILD_ARGS[@]}" --build-arg VARIANT=cuda -f predictor/Dockerfile -t "$PREDICTOR" .
run "$BUILDER" "${BUILD[@]}" "${BUILD_ARGS[@]}" --build-arg VARIANT=cpu -f predictor/Dockerfile -t "$PREDICTOR_CPU" .
if ((PUSH)); then
    for image in "$OPERATOR" "$PREDICTOR" "$PREDICTOR_CPU"; do
        run "$BUILDER" push "$image"
    done
fi

sets="--set image.repository=$REGISTRY/operator --set config.predictorImage.repository=$REGISTRY/predictor"
if [[ $TAG != "$APP_VERSION" ]]; then
    sets+=" --set image.tag=$TAG --set config.predictorImage.tag=$TAG --set config.predictorImage.cpuTag=$TAG-cpu"
fi
echo "images: $OPERATOR $PREDICTOR $PREDICTOR_CPU"
if ((PUSH)); then echo "install the chart with:"; else echo "push them (--push), then install the chart with:"; fi
echo "  helm install chrono-upscaler charts/chrono-upscaler -n chrono-upscaler-system --create-namespace $sets"
