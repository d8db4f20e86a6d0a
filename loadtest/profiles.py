"""Request mixes (profiles) and the pool of pre-encoded requests a run draws from.

A profile is a weighted set of shapes: an input size (the photo's long side, in pixels) and an
upscale factor. The pool is built once, before the first user starts, from scikit-image's
photos: each entry is a finished JSON body with the photo as a ``data:`` URI, so the load
generator only sends bytes during the run and never becomes the bottleneck.
"""

from __future__ import annotations

import base64
import io
import json
import random
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

#: colour photos that ship inside scikit-image (no download needed)
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)

#: the input is sent as a JPEG of this quality (what users upload; small data: URIs)
INPUT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class Shape:
    """One kind of request in a profile: long sides to pick from and factors to pick from."""

    weight: float
    long_sides: tuple[int, ...]
    factors: tuple[float, ...]
    #: impatient clients: seconds after which they give up (hang up) on a request of this shape
    give_up_s: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    shapes: tuple[Shape, ...]


SMALL_SIDES = (128, 160, 192, 224, 256)

PROFILES: dict[str, Profile] = {
    profile.name: profile
    for profile in (
        Profile(
            "small",
            "thumbnails and avatars: 128–256 px photos ×2",
            (Shape(1.0, SMALL_SIDES, (2,)),),
        ),
        Profile(
            "mixed",
            "60% 128–256 px ×2, 30% 320–512 px ×2–3, 10% 640–1024 px ×2",
            (
                Shape(0.6, SMALL_SIDES, (2,)),
                Shape(0.3, (320, 384, 448, 512), (2, 3)),
                Shape(0.1, (640, 768, 1024), (2,)),
            ),
        ),
        Profile(
            "impatient",
            "50% 128–256 px ×2 from clients that wait; 50% 512–768 px ×2 from clients that "
            "hang up after 1.5 s (sync mode; --give-up-after changes it)",
            (
                Shape(0.5, SMALL_SIDES, (2,)),
                Shape(0.5, (512, 640, 768), (2,), give_up_s=1.5),
            ),
        ),
        Profile(
            "large",
            "prints: 512–1024 px photos ×2–4",
            (Shape(1.0, (512, 640, 768, 896, 1024), (2, 3, 4)),),
        ),
    )
}


@dataclass(frozen=True)
class Spec:
    """What one pool entry will be, before any pixel is touched."""

    photo: str
    long_side: int
    factor: float
    seed: int
    #: the client hangs up after this many seconds (None: it waits for the answer)
    give_up_s: float | None = None


@dataclass(frozen=True)
class Payload:
    """One ready-to-send request."""

    spec: Spec
    width: int
    height: int
    #: the JSON body, serialised once
    body: bytes

    @property
    def expected_output(self) -> tuple[int, int]:
        return round(self.width * self.spec.factor), round(self.height * self.spec.factor)


def plan_pool(
    profile: Profile, count: int, seed: int = 0, give_up_s: float | None = None
) -> list[Spec]:
    """``count`` specs drawn from ``profile``'s shapes by weight; the same seed, the same pool.
    ``give_up_s`` replaces the impatient shapes' own deadline."""
    if count < 1:
        raise ValueError("the pool needs at least one request")
    rng = random.Random(seed)
    weights = [shape.weight for shape in profile.shapes]
    specs = []
    for index in range(count):
        (shape,) = rng.choices(profile.shapes, weights=weights)
        specs.append(
            Spec(
                photo=PHOTOS[index % len(PHOTOS)],
                long_side=rng.choice(shape.long_sides),
                factor=rng.choice(shape.factors),
                seed=rng.randrange(2**32),
                give_up_s=give_up_s if give_up_s and shape.give_up_s else shape.give_up_s,
            )
        )
    return specs


def fit_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """``width``×``height`` scaled so that its longer side is ``long_side``, aspect ratio kept."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@cache
def _photo(name: str) -> Image.Image:
    import numpy as np
    from PIL import Image
    from skimage import data

    return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")


def request_body(image_url: str, spec: Spec, sync_mode: bool) -> dict:
    """fal's request for one pool entry."""
    return {
        "image_url": image_url,
        "upscale_factor": spec.factor,
        "output_format": "jpeg",
        "sync_mode": sync_mode,
        "seed": spec.seed,
    }


def encode_payload(spec: Spec, sync_mode: bool) -> Payload:
    from PIL import Image

    photo = _photo(spec.photo)
    width, height = fit_long_side(photo.width, photo.height, spec.long_side)
    buffer = io.BytesIO()
    photo.resize((width, height), Image.LANCZOS).save(
        buffer, format="JPEG", quality=INPUT_JPEG_QUALITY
    )
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    body = json.dumps(request_body(uri, spec, sync_mode)).encode()
    return Payload(spec, width, height, body)


def build_pool(
    profile: Profile,
    count: int,
    seed: int = 0,
    sync_mode: bool = False,
    give_up_s: float | None = None,
) -> list[Payload]:
    """The run's requests, encoded up front."""
    return [encode_payload(spec, sync_mode) for spec in plan_pool(profile, count, seed, give_up_s)]
