"""Build a ready-to-send example request from a real photo and print the ``curl`` that sends it.

``make run`` calls this before serving, so a newcomer can paste one command and get an image.
The photo is scikit-image's astronaut (public domain, NASA), downscaled so ×2 stays quick on a CPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from predictor.schema import APP_ID


def example_photo(size: int = 256) -> Image.Image:
    from skimage import data

    return Image.fromarray(np.asarray(data.astronaut())).resize((size, size), Image.LANCZOS)


def write_example(out_dir: Path, size: int = 256, factor: float = 2.0) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    example_photo(size).save(buffer, format="JPEG", quality=92)
    (out_dir / "input.jpg").write_bytes(buffer.getvalue())
    request = {
        "image_url": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "upscale_factor": factor,
        "output_format": "png",
    }
    path = out_dir / "request.json"
    path.write_text(json.dumps(request))
    return path


def curl_command(url: str, request_path: Path) -> str:
    return (
        f"curl -s -X POST {url}/{APP_ID} -H 'Content-Type: application/json' "
        f"-d @{shlex.quote(str(request_path))}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/example"))
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    args = parser.parse_args()
    request_path = write_example(args.out)
    output = args.out / "output.png"
    download = (
        f'python3 -c "import json,sys,urllib.request; '
        f"urllib.request.urlretrieve(json.load(sys.stdin)['images'][0]['url'], '{output}')\""
    )
    print(
        "\nOnce the server says it is running, upscale the example photo (256×256 → 512×512):\n\n"
        f"  {curl_command(args.url, request_path)}\n\n"
        f"and to save the result as {output}:\n\n"
        f"  {curl_command(args.url, request_path)} | {download}\n"
    )


if __name__ == "__main__":
    main()
