"""The compile-safe slots request LoRAs are swapped into (see docs/loras.md).

Changing the adapters of a ``torch.compile``-d model recompiles it (a new adapter name,
``set_adapters``, a scaling stored as a Python float, a parameter of another shape). So at load
the transformer gets, beside the upscaler, ``loras.slots`` extra peft adapters of rank
``loras.max_rank`` over :data:`~predictor.loras.prepare.SLOT_TARGETS`, all active
(``set_adapters`` once), zero-weighted, with 0-d tensor scalings
(:class:`~predictor.engines.chronoedit_model.AdapterScale`). A request copies each LoRA's factors
into a slot's existing parameters (zero-padded to the slot's rank) and fills its scaling in place:
shapes, names and the graph never change.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from predictor.engines.options import MAX_LORAS
from predictor.loras.prepare import SLOT_TARGETS, PreparedLora, SlotLayout

if TYPE_CHECKING:
    from predictor.engines.chronoedit_model import AdapterScale


#: adapter names of the extra slots (fixed: a new adapter name would recompile)
SLOT_NAMES = tuple(f"extra_{index}" for index in range(1, MAX_LORAS + 1))
# --- the slots -----------------------------------------------------------------------------------


@dataclass
class _SlotState:
    scale: AdapterScale
    sha256: str | None = None
    #: layers whose factors are non-zero now (zeroed again when the next LoRA leaves them out)
    filled: frozenset[str] = frozenset()


class LoraSlots:
    """The extra, always-active adapters request LoRAs are copied into (see the module doc)."""

    def __init__(self, transformer: torch.nn.Module, names: Sequence[str], rank: int) -> None:
        from peft.tuners.lora import LoraLayer

        from predictor.engines.chronoedit_model import AdapterScale

        self.names = tuple(names)
        self.rank = rank
        #: slot → layer → (lora_A weight, lora_B weight)
        self.params: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {
            name: {} for name in self.names
        }
        shapes: dict[str, tuple[int, int]] = {}
        dtype, device = torch.float32, torch.device("cpu")
        for module_name, module in transformer.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            for name in self.names:
                if name in module.lora_A:
                    down = module.lora_A[name].weight
                    up = module.lora_B[name].weight
                    self.params[name][module_name] = (down, up)
                    shapes[module_name] = (int(down.shape[1]), int(up.shape[0]))
                    dtype, device = down.dtype, down.device
        self.layout = SlotLayout(shapes, rank, dtype, device)
        self.state = {name: _SlotState(AdapterScale(transformer, name)) for name in self.names}
        with torch.no_grad():
            for name in self.names:
                for down, up in self.params[name].values():
                    down.zero_()
                    up.zero_()
                self.state[name].scale.set(0.0)

    @classmethod
    def install(
        cls, transformer: torch.nn.Module, count: int, rank: int, resident: Sequence[str]
    ) -> LoraSlots:
        """Add ``count`` zeroed slots of ``rank`` beside the ``resident`` adapters, activate them
        all (``set_adapters``: once, before any compilation) and make every scaling a tensor.

        Call it before building the resident adapters' :class:`AdapterScale`: ``set_adapters``
        writes Python floats into every scaling.
        """
        from peft import LoraConfig

        if not 0 <= count <= len(SLOT_NAMES):
            raise ValueError(f"loras.slots must be 0 to {len(SLOT_NAMES)}, got {count}")
        if rank < 1:
            raise ValueError(f"loras.max_rank must be at least 1, got {rank}")
        names = SLOT_NAMES[:count]
        for name in names:
            config = LoraConfig(r=rank, lora_alpha=rank, target_modules=SLOT_TARGETS)
            with warnings.catch_warnings():  # several adapters in one model are the point here
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                transformer.add_adapter(config, adapter_name=name)
        if names:
            adapters = [*resident, *names]
            transformer.set_adapters(adapters, [1.0] * len(adapters))
        return cls(transformer, names, rank)

    @property
    def count(self) -> int:
        return len(self.names)

    def apply(self, loras: Sequence[tuple[PreparedLora, float]]) -> dict[str, str | None]:
        """Put ``loras`` (checked already) into the slots, scale 0 ones left out, the rest zeroed.

        Slots are assigned canonically — by content hash, then scale — so the output does not
        depend on the order of a request's ``loras`` (slot order is the order of the additions).
        A slot that already holds a LoRA only has its scale set. Returns slot → label.
        """
        active = sorted(
            ((lora, scale) for lora, scale in loras if scale != 0.0),
            key=lambda item: (item[0].sha256, item[1]),
        )
        if len(active) > self.count:
            raise ValueError(f"{len(active)} LoRAs for {self.count} slots")
        placed: dict[str, str | None] = {}
        try:
            with torch.no_grad():
                for index, name in enumerate(self.names):
                    state = self.state[name]
                    if index < len(active):
                        lora, scale = active[index]
                        if state.sha256 != lora.sha256:
                            self._fill(name, lora)
                        state.scale.set(scale)
                        placed[name] = lora.label
                    else:
                        state.scale.set(0.0)
                        if state.filled:
                            self._clear(name, state.filled)
                        placed[name] = None
        except BaseException:
            self.reset()  # never leave a half-copied slot behind
            raise
        return placed

    def _fill(self, name: str, lora: PreparedLora) -> None:
        state = self.state[name]
        state.sha256 = None  # unknown until the copy is complete
        params = self.params[name]
        self._clear(name, state.filled - set(lora.modules))
        non_blocking = self.layout.device.type == "cuda"
        for module, (down, up) in lora.modules.items():
            slot_down, slot_up = params[module]
            rank = down.shape[0]
            slot_down[:rank].copy_(down, non_blocking=non_blocking)
            slot_down[rank:].zero_()
            slot_up[:, :rank].copy_(up, non_blocking=non_blocking)
            slot_up[:, rank:].zero_()
        state.filled = frozenset(lora.modules)
        state.sha256 = lora.sha256

    def _clear(self, name: str, modules: Iterable[str]) -> None:
        state = self.state[name]
        for module in modules:
            down, up = self.params[name][module]
            down.zero_()
            up.zero_()
        state.filled = state.filled - set(modules)
        if not state.filled:
            state.sha256 = None

    def reset(self) -> None:
        """Every slot zeroed and off: the state of a fresh process."""
        with torch.no_grad():
            for name in self.names:
                state = self.state[name]
                state.scale.set(0.0)
                for down, up in self.params[name].values():
                    down.zero_()
                    up.zero_()
                state.filled, state.sha256 = frozenset(), None
