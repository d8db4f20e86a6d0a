"""docs/install.md: its first request is a valid fal request, and every value it sets exists."""

from __future__ import annotations

import base64
import io
import json
import re

import yaml
from PIL import Image

from predictor.schema import UpscaleRequest
from tests.chart.conftest import CHART, ROOT, render

INSTALL = (ROOT / "docs" / "install.md").read_text()


def test_chart_install_doc_first_request_is_a_valid_fal_request() -> None:
    body = re.search(r"cat > request\.json <<'EOF'\n(.*?)\nEOF", INSTALL, re.S)
    assert body, "docs/install.md writes request.json"
    request = UpscaleRequest.model_validate(json.loads(body[1]))
    header, _, data = request.image_url.partition(",")
    assert header == "data:image/png;base64"
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.size == (32, 32)


def assert_values_exist(keys: list[str], where: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in keys:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{where} names {key}"
            node = node[part]


def test_chart_install_doc_and_readme_name_only_values_that_exist() -> None:
    keys = re.findall(r"--set ([A-Za-z][\w.]*)=", INSTALL)
    assert len(keys) >= 8
    assert_values_exist(keys, "docs/install.md")
    readme = (CHART / "README.md").read_text()
    table = re.findall(r"^\| (`.*?) \|", readme, re.M)
    keys = [key for row in table for key in re.findall(r"`([a-z][\w.]*)`", row)]
    assert len(keys) >= 10
    assert_values_exist(keys, "charts/chrono-upscaler/README.md")


def test_chart_install_doc_names_what_the_chart_renders() -> None:
    docs = render({})  # the documented release: chrono-upscaler in chrono-upscaler-system
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    name = deployment["metadata"]["name"]
    assert f"rollout status deployment/{name}" in INSTALL
    assert "helm show crds charts/chrono-upscaler | kubectl apply --server-side" in INSTALL
    assert "kubectl apply -f manifests/" in INSTALL
    for example in ("upscaler.yaml", "upscaler-sr-cpu.yaml"):  # GPU and CPU
        assert (ROOT / "manifests" / "examples" / example).exists()
        assert f"manifests/examples/{example}" in INSTALL
