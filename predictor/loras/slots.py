"""LoRAs that cost only what they use: the Upscaler LoRA merged, the rest one stacked pair.

Every adapted linear layer of the transformer becomes an :class:`AdaptedLinear`: its base layer
(with the Upscaler LoRA merged into the weights at load) plus one low-rank pair, ``down``
(rank × in) and ``up`` (rank × out), sliced to the live ``rank``:

* the default request (``lora_scale`` 1, no extra LoRA) runs at rank 0: no adapter math at all;
* ``lora_scale`` s ≠ 1 adds the upscaler's own factors scaled by s − 1 (merged W + ΔW, plus
  (s − 1)·ΔW, is W + s·ΔW); each extra LoRA adds its factors scaled by its ``scale``;
* all of them are stacked along the rank, scales folded into ``up``, and copied in per request.

The live rank is padded up to one of a few fixed buckets (:func:`rank_buckets`), so a compiled
transformer sees a small, fixed set of graph variants — rank 0 and each bucket — that warm-up
compiles once (:meth:`AdapterStack.variant`); shapes, names and parameters never change after
load, and a request only copies into buffers that already exist. See docs/loras.md.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from predictor.engines.options import MAX_LORAS
from predictor.errors import InputError
from predictor.loras.formats import ParsedLora
from predictor.loras.prepare import SLOT_TARGETS, PreparedLora, SlotLayout, check_and_convert


class AdaptedLinear(nn.Module):
    """A linear layer plus at most one low-rank pair (``rank`` 0: none, the plain layer).

    ``rank`` is a Python int on purpose: a compiled graph specialises on it, so each rank bucket
    is its own graph variant, and the rank-0 variant has no adapter kernels at all.
    """

    def __init__(self, base: nn.Module, capacity: int) -> None:
        super().__init__()
        self.base = base
        weight = base.weight
        self.in_features = int(base.in_features)
        self.out_features = int(base.out_features)
        self.register_buffer(
            "down",
            torch.zeros(capacity, self.in_features, dtype=weight.dtype, device=weight.device),
        )
        self.register_buffer(
            "up", torch.zeros(capacity, self.out_features, dtype=weight.dtype, device=weight.device)
        )
        self.rank = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.rank:
            y = y + nn.functional.linear(x, self.down[: self.rank]) @ self.up[: self.rank]
        return y

    def extra_repr(self) -> str:
        return f"rank={self.rank}, capacity={self.down.shape[0]}"


def rank_buckets(capacity: int, granule: int) -> tuple[int, ...]:
    """The ranks a stack runs at besides 0: ``granule`` doubled while below ``capacity``, then
    ``capacity`` itself (64, 128, 224 for the upscaler's 32 + 3 slots of 64)."""
    if capacity <= 0:
        return ()
    buckets, rank = [], max(1, granule)
    while rank < capacity:
        buckets.append(rank)
        rank *= 2
    return (*buckets, capacity)


@dataclass(frozen=True)
class _Part:
    """One stacked adapter: its identity, scale and place in the stack."""

    key: str  # "upscaler" or a LoRA's sha256
    scale: float
    offset: int
    rank: int


UPSCALER_KEY = "upscaler"


class AdapterStack:
    """The :class:`AdaptedLinear` layers of one transformer and what is stacked in them."""

    def __init__(
        self,
        layers: dict[str, AdaptedLinear],
        upscaler: dict[str, tuple[torch.Tensor, torch.Tensor]],
        slots: int,
        max_rank: int,
    ) -> None:
        self.layers = layers
        self.upscaler = upscaler
        self.upscaler_rank = max((down.shape[0] for down, _ in upscaler.values()), default=0)
        self.slots = slots
        self.max_rank = max_rank
        like = next(iter(layers.values())).down if layers else torch.zeros(0, 0)
        self.buckets = rank_buckets(like.shape[0], max_rank)
        shapes = {
            name: (layer.in_features, layer.out_features)
            for name, layer in layers.items()
            if _is_slot_target(name)
        }
        #: what a request LoRA must fit (checked before anything is copied)
        self.layout = SlotLayout(shapes, max_rank, like.dtype, like.device)
        self.parts: tuple[_Part, ...] = ()
        self.rank = 0
        self.used = 0

    @classmethod
    def install(
        cls,
        transformer: nn.Module,
        upscaler: ParsedLora | None,
        slots: int,
        max_rank: int,
    ) -> AdapterStack:
        """Wrap the slot targets (and any other layer the upscaler adapts) in
        :class:`AdaptedLinear`, and merge the upscaler into their weights at scale 1.

        Capacity: the upscaler's rank (for ``lora_scale`` ≠ 1) plus ``slots`` × ``max_rank``.
        """
        if not 0 <= slots <= MAX_LORAS:
            raise ValueError(f"loras.slots must be 0 to {MAX_LORAS}, got {slots}")
        if max_rank < 1:
            raise ValueError(f"loras.max_rank must be at least 1, got {max_rank}")
        linears = {
            name: module
            for name, module in transformer.named_modules()
            if isinstance(module, nn.Linear)
        }
        targets = {name for name in linears if _is_slot_target(name)}
        factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if upscaler is not None:
            wanted = targets | {name for name in upscaler.modules if name in linears}
            shapes = {
                name: (linears[name].in_features, linears[name].out_features) for name in wanted
            }
            rank = max((module.rank for module in upscaler.modules.values()), default=1)
            layout = SlotLayout(shapes, rank, torch.float32)
            try:
                factors = check_and_convert(upscaler, layout, "upscaler", ("upscaler_lora",))
            except InputError as exc:  # a start-up error, not a request's
                raise ValueError(f"the upscaler LoRA cannot be applied: {exc.msg}") from None
            targets |= set(factors)
        upscaler_rank = max((down.shape[0] for down, _ in factors.values()), default=0)
        capacity = upscaler_rank + slots * max_rank
        layers: dict[str, AdaptedLinear] = {}
        with torch.no_grad():
            for name in sorted(targets):
                base = linears[name]
                if name in factors:
                    down, up = factors[name]
                    weight = base.weight
                    merged = weight.float() + up.to(weight.device) @ down.to(weight.device)
                    weight.copy_(merged.to(weight.dtype))
                layer = AdaptedLinear(base, capacity)
                transformer.set_submodule(name, layer)
                layers[name] = layer
        device = next(iter(layers.values())).down.device if layers else torch.device("cpu")
        dtype = next(iter(layers.values())).down.dtype if layers else torch.float32
        resident = {
            name: (down.to(device, dtype), up.to(device, dtype))
            for name, (down, up) in factors.items()
        }
        return cls(layers, resident, slots, max_rank)

    @property
    def variants(self) -> tuple[int, ...]:
        """Every rank a forward can run at: the graph variants of a compiled transformer."""
        return (0, *self.buckets)

    def bucket(self, rank: int) -> int:
        """The smallest bucket that holds ``rank`` (0 stays 0)."""
        if rank == 0:
            return 0
        for bucket in self.buckets:
            if rank <= bucket:
                return bucket
        raise ValueError(f"rank {rank} exceeds the stack's capacity {self.buckets[-1:]}")

    def apply(
        self, lora_scale: float, loras: Sequence[tuple[PreparedLora, float]] = ()
    ) -> dict[str, float]:
        """Stack the upscaler's correction (``lora_scale`` − 1) and ``loras`` (checked already).

        Order is canonical — the upscaler first, then by content hash and scale — so the output
        does not depend on the order of a request's ``loras``; scale-0 entries are left out.
        A part already in place with the same scale is not copied again. Returns label → scale.
        """
        active = sorted(
            ((lora, scale) for lora, scale in loras if scale != 0.0),
            key=lambda item: (item[0].sha256, item[1]),
        )
        if len(active) > self.slots:
            raise ValueError(f"{len(active)} LoRAs for {self.slots} slots")
        wanted: list[tuple[str, float, int, dict]] = []
        if lora_scale != 1.0 and self.upscaler:
            wanted.append((UPSCALER_KEY, lora_scale - 1.0, self.upscaler_rank, self.upscaler))
        for lora, scale in active:
            wanted.append((lora.sha256, scale, lora.rank, lora.modules))
        parts, offset = [], 0
        try:
            with torch.no_grad():
                for key, scale, rank, modules in wanted:
                    part = _Part(key, scale, offset, rank)
                    if part not in self.parts:
                        self._fill(part, modules)
                    parts.append(part)
                    offset += rank
                if offset < self.used:  # what the last request left beyond this one's rank
                    for layer in self.layers.values():
                        layer.down[offset : self.used].zero_()
                        layer.up[offset : self.used].zero_()
        except BaseException:
            self.reset()  # never leave a half-copied stack behind
            raise
        self.parts, self.used = tuple(parts), offset
        self._set_rank(self.bucket(offset))
        placed = {UPSCALER_KEY: lora_scale}
        placed.update({lora.label: scale for lora, scale in active})
        return placed

    def _fill(self, part: _Part, modules: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Copy one adapter's factors into rows ``offset … offset + rank``, scale folded in;
        layers it does not adapt get zeros there."""
        self.parts = ()  # unknown until every layer is written
        rows = slice(part.offset, part.offset + part.rank)
        non_blocking = self.layout.device.type == "cuda"
        for name, layer in self.layers.items():
            factors = modules.get(name)
            if factors is None:
                layer.down[rows].zero_()
                layer.up[rows].zero_()
                continue
            down, up = factors
            rank = down.shape[0]
            layer.down[rows][:rank].copy_(down, non_blocking=non_blocking)
            layer.down[rows][rank:].zero_()
            target = layer.up[rows]
            target[:rank].t().copy_(up, non_blocking=non_blocking)  # up is out × rank
            target[:rank].mul_(part.scale)
            target[rank:].zero_()

    def _set_rank(self, rank: int) -> None:
        if rank != self.rank:
            for layer in self.layers.values():
                layer.rank = rank
            self.rank = rank

    def reset(self) -> None:
        """Nothing stacked, rank 0: the state of a fresh process."""
        with torch.no_grad():
            for layer in self.layers.values():
                layer.down.zero_()
                layer.up.zero_()
        self.parts, self.used = (), 0
        self._set_rank(0)

    @contextlib.contextmanager
    def variant(self, rank: int) -> Iterator[None]:
        """Run at ``rank`` with an empty (all-zero) stack — how warm-up compiles each variant."""
        self.reset()
        self._set_rank(rank)
        try:
            yield
        finally:
            self.reset()


def _is_slot_target(name: str) -> bool:
    return re.fullmatch(SLOT_TARGETS, name) is not None
