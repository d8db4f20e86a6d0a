"""Output planning, seeds and the output store."""

from __future__ import annotations

import pytest

from predictor.errors import InputError
from predictor.plan import plan_output_size, resolve_seed
from predictor.schema import OutputFormat
from predictor.storage.memory import MemoryOutputStore


@pytest.mark.parametrize(
    ("size", "factor", "multiple", "expected"),
    [
        ((100, 50), 2, 1, (200, 100)),
        ((33, 17), 1.5, 1, (50, 26)),
        ((33, 17), 4, 1, (132, 68)),
        ((1, 1), 1, 1, (1, 1)),
        ((640, 360), 2, 16, (1280, 720)),
        ((100, 75), 1.5, 16, (144, 112)),
        ((5, 5), 1, 16, (16, 16)),
    ],
)
def test_plan_output_size(size, factor, multiple, expected) -> None:
    assert plan_output_size(*size, factor, multiple) == expected


def test_plan_refuses_outputs_over_the_limit() -> None:
    with pytest.raises(InputError) as err:
        plan_output_size(1000, 1000, 4, max_pixels=10_000_000)
    assert err.value.status_code == 413
    assert err.value.loc == ["body", "upscale_factor"] and "4000×4000" in err.value.msg


@pytest.mark.parametrize(
    ("size", "fmt", "limit", "instead"),
    [
        ((5000, 100), OutputFormat.webp, 16383, "output_format jpeg or png"),
        ((17000, 10), OutputFormat.jpeg, 65535, "output_format png"),
    ],
)
def test_plan_checks_the_formats_own_side_limit(size, fmt, limit, instead) -> None:
    with pytest.raises(InputError) as err:
        plan_output_size(*size, 4, max_pixels=10**9, output_format=fmt)
    assert err.value.status_code == 413 and err.value.loc == ["body", "output_format"]
    assert f"at most {limit} pixels per side" in err.value.msg and instead in err.value.msg
    assert err.value.ctx == {"max_side": limit, "output_format": fmt.value}
    assert plan_output_size(4095, 100, 4, output_format=OutputFormat.webp) == (16380, 400)


def test_seed() -> None:
    assert resolve_seed(42) == 42
    seeds = {resolve_seed(None) for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < 2**53 for s in seeds)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_store_expires_and_evicts() -> None:
    clock = FakeClock()
    store = MemoryOutputStore(max_bytes=10, ttl_s=60, clock=clock)
    first = store.put(b"aaaa", "image/png", "png")
    assert first.endswith(".png")
    assert store.get(first).data == b"aaaa"
    second = store.put(b"bbbb", "image/png", "png")
    third = store.put(b"cccc", "image/png", "png")  # 12 bytes > 10: the oldest goes
    assert store.get(first) is None and store.get(second) is not None
    assert store.size_bytes == 8
    clock.now = 61
    assert store.get(third) is None and store.size_bytes == 0
    with pytest.raises(ValueError):
        store.put(b"x" * 11, "image/png", "png")
    assert store.get("../../etc/passwd") is None
