"""``make crds``: KServe's and KEDA's CRDs, from pinned upstream releases, for tests/operator.

The operator's tests validate every InferenceService and ScaledObject it builds against the
schemas of the releases docs/install.md names (KServe v0.20.0, KEDA v2.20.2). Each file is
fetched from the release's tag on GitHub, checked against its pinned SHA-256 and written to
``build/crds/`` (a file already there with the right hash is kept). A CI checkout with
``../shared/kserve`` and ``../shared/keda`` beside it has the same files and needs no network.

    python tools/fetch_crds.py                 # fetch what is missing; exit 1 when it cannot
    python tools/fetch_crds.py --if-possible   # the same, but only warn when offline

Standard library only: it runs before the virtualenv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CRDS_DIR = ROOT / "build" / "crds"
#: where a CI checkout finds the same files (the tests look there first)
SHARED_DIR = ROOT.parent / "shared"
BASE_URL = os.environ.get("CRDS_BASE_URL", "https://raw.githubusercontent.com")


@dataclass(frozen=True)
class Crd:
    """One CRD file of an upstream release: where it is, and what it must hash to."""

    project: str  # the directory under build/crds/ (and ../shared/)
    repository: str
    tag: str
    path: str  # in the repository
    sha256: str

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.repository}/{self.tag}/{self.path}"

    @property
    def target(self) -> Path:
        return CRDS_DIR / self.project / self.name

    @property
    def shared(self) -> Path:
        return SHARED_DIR / self.project / self.name


CRDS = (
    Crd(
        "kserve",
        "kserve/kserve",
        "v0.20.0",
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "57c3bf13f77de94678bf2ae3748056ec071ad2b9e88d6a28f44fb4710758fcff",
    ),
    Crd(
        "keda",
        "kedacore/keda",
        "v2.20.2",
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80",
    ),
)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def present(crd: Crd) -> bool:
    return crd.target.is_file() and sha256(crd.target.read_bytes()) == crd.sha256


def fetch(crd: Crd, timeout: float = 60.0) -> None:
    """Download one CRD; refuse content whose hash is not the pinned one."""
    with urllib.request.urlopen(crd.url, timeout=timeout) as response:
        data = response.read()
    digest = sha256(data)
    if digest != crd.sha256:
        raise ValueError(f"{crd.url}: sha256 {digest}, expected {crd.sha256}")
    crd.target.parent.mkdir(parents=True, exist_ok=True)
    partial = crd.target.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, crd.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--if-possible", action="store_true", help="warn instead of failing when offline"
    )
    args = parser.parse_args(argv)
    failed = []
    for crd in CRDS:
        if crd.shared.is_file():
            print(f"{crd.shared}: present (the tests use it; nothing to fetch)")
            continue
        if present(crd):
            print(f"{crd.target.relative_to(ROOT)}: up to date ({crd.repository} {crd.tag})")
            continue
        try:
            fetch(crd)
        except (OSError, urllib.error.URLError) as exc:
            failed.append(f"{crd.url}: {exc}")
            continue
        except ValueError as exc:  # the wrong content is never written, offline or not
            print(f"fetch_crds: {exc}", file=sys.stderr)
            return 1
        print(f"{crd.target.relative_to(ROOT)}: fetched ({crd.repository} {crd.tag}, sha256 ok)")
    for failure in failed:
        print(f"fetch_crds: cannot download {failure}", file=sys.stderr)
    if failed and args.if_possible:
        print(
            "fetch_crds: the operator tests that need these CRDs will skip "
            f"(unless {SHARED_DIR} has them)",
            file=sys.stderr,
        )
        return 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
