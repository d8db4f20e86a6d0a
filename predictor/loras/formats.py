"""LoRA key formats for the Wan/ChronoEdit transformer: read any of them into one form, write each.

A LoRA file names, for each adapted linear layer, a down factor A (rank × in), an up factor B
(out × rank) and optionally an alpha (the layer then adds ``B @ A · alpha / rank``). Trainers
spell the keys three ways; all three are read, and written back (tests and ``make bench`` use the
writers to check that a file and its twin in another format give identical outputs):

* **diffusers / peft** — ``transformer.blocks.0.attn1.to_q.lora_A.weight`` (diffusers'
  ``save_lora_weights``), or bare peft keys (``blocks.0…``, ``base_model.model.blocks.0…``,
  ``lora_A.default.weight``). Alpha comes from the file's ``lora_adapter_metadata`` header
  (``lora_alpha``, ``alpha_pattern``, ``rank_pattern``, ``use_rslora``), else alpha = rank.
* **original Wan / DiffSynth** — ``diffusion_model.blocks.0.self_attn.q.lora_A.weight`` (or
  ``lora_down``/``lora_up``), Wan's own module names, optional ``….alpha`` per layer.
* **kohya / musubi-tuner** — ``lora_unet_blocks_0_self_attn_q.lora_down.weight``,
  ``….lora_up.weight`` and ``….alpha`` (underscores for dots; Wan's or diffusers' names).

The result maps diffusers module names (``blocks.0.attn1.to_q``) to :class:`LoraModule`. Keys
that cannot be placed are listed, never dropped, so the caller can refuse the file with a reason
(diffusers itself only warns and may load nothing). All-zero bias/diff tensors (``diff_b``,
``lora_B.bias``: some trainers save them for norms) change nothing and are skipped; non-zero
ones, and DoRA magnitudes, are reported as unsupported.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

#: Wan's module names inside a block → diffusers' (the transformer's own) names
WAN_TO_DIFFUSERS = {
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
DIFFUSERS_TO_WAN = {value: key for key, value in WAN_TO_DIFFUSERS.items()}
#: kohya spells a module path with underscores; both naming schemes occur in the wild
_KOHYA_TO_DIFFUSERS = {
    **{wan.replace(".", "_"): ours for wan, ours in WAN_TO_DIFFUSERS.items()},
    **{ours.replace(".", "_"): ours for ours in WAN_TO_DIFFUSERS.values()},
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_KOHYA_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")
#: ``<module>.<role>[.<adapter name>].<weight|bias>``
_FACTOR = re.compile(
    r"^(?P<module>.+?)\.(?P<role>lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)"
    r"(?:\.(?P<adapter>[\w-]+))?\.(?P<param>weight|bias)$"
)
_DOWN_ROLES = ("lora_A", "lora_down", "lora.down")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
_KOHYA_PREFIXES = ("lora_unet_", "lora_transformer_")
_TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te_", "lora_te1_", "lora_te2_", "te.")
METADATA_KEY = "lora_adapter_metadata"  # what diffusers' save_lora_weights writes
FORMATS = ("diffusers", "wan", "kohya")


@dataclass
class LoraModule:
    """One adapted layer: ``delta W = up @ down · scale``."""

    down: torch.Tensor  # A: rank × in_features
    up: torch.Tensor  # B: out_features × rank
    scale: float = 1.0  # alpha / rank (alpha / √rank for rsLoRA)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class ParsedLora:
    """A LoRA file read into diffusers module names, plus what could not be read."""

    format: str
    modules: dict[str, LoraModule] = field(default_factory=dict)
    #: keys naming modules or tensors this reader cannot place (module name → example key)
    unplaced: dict[str, str] = field(default_factory=dict)
    #: recognised but unsupported tensors: non-zero biases/diffs, DoRA, text encoder
    unsupported: list[str] = field(default_factory=list)
    #: layers with only one of the two factors
    incomplete: list[str] = field(default_factory=list)
    #: all-zero bias/diff tensors skipped (they change nothing)
    skipped_zero: int = 0


def diffusers_module(path: str) -> str:
    """In diffusers' names: Wan's ``blocks.N.self_attn.q`` becomes ``blocks.N.attn1.to_q``."""
    match = _BLOCK.match(path)
    if match and match.group(2) in WAN_TO_DIFFUSERS:
        return f"blocks.{match.group(1)}.{WAN_TO_DIFFUSERS[match.group(2)]}"
    return path


def _kohya_module(path: str) -> str | None:
    match = _KOHYA_BLOCK.match(path)
    if match and match.group(2) in _KOHYA_TO_DIFFUSERS:
        return f"blocks.{match.group(1)}.{_KOHYA_TO_DIFFUSERS[match.group(2)]}"
    return None


def _split(key: str) -> tuple[str, str, str] | None:
    """(module path in diffusers names, role, format) of one key, or None when unplaceable.

    role: ``down``, ``up``, ``alpha``, ``bias`` (a LoRA bias or Wan's ``diff_b``), ``diff``
    (a full weight delta), ``dora``.
    """
    kohya = next((p for p in _KOHYA_PREFIXES if key.startswith(p)), None)
    wan_prefixed = key.startswith(("diffusion_model.", "model.diffusion_model."))
    fmt = "kohya" if kohya else ("wan" if wan_prefixed else "")
    rest = key.removeprefix(kohya) if kohya else key
    if not kohya:
        for prefix in _PREFIXES:
            rest = rest.removeprefix(prefix)
    match = _FACTOR.match(rest)
    if match:
        module, role = match.group("module"), match.group("role")
        # a bias (peft's lora_bias on lora_B) is reported as unsupported unless all zero
        role = "down" if role in _DOWN_ROLES else "up"
        if match.group("param") == "bias":
            role = "bias"
    else:
        module, _, suffix = rest.rpartition(".")
        if suffix in ("alpha", "diff", "diff_b", "dora_scale"):
            role = {"diff_b": "bias", "dora_scale": "dora"}.get(suffix, suffix)
        elif ".lora_magnitude_vector" in rest:
            module, role = rest.split(".lora_magnitude_vector")[0], "dora"
        else:
            return None
    if kohya:
        placed = _kohya_module(module)
        module = placed if placed is not None else f"{kohya}{module}"
    else:
        wan_named = _BLOCK.match(module) is not None and diffusers_module(module) != module
        fmt = fmt or ("wan" if wan_named else "diffusers")
        module = diffusers_module(module)
    return module, role, fmt


def _metadata_config(metadata: dict[str, str] | None) -> dict:
    """diffusers' LoRA config from the safetensors header (keys lose their ``transformer.``)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except (TypeError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    return {key.removeprefix("transformer."): value for key, value in config.items()}


def _pattern_value(patterns: dict, module: str, default):
    """peft's ``rank_pattern``/``alpha_pattern``: a pattern applies when it matches the module
    name's end (whole dotted components)."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?(?:{pattern})$", module):
            return value
    return default


def parse_lora(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> ParsedLora:
    """Read a LoRA state dict in any supported format (see the module docstring)."""
    config = _metadata_config(metadata)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    formats: set[str] = set()
    parsed = ParsedLora(format="diffusers")
    for key, tensor in tensors.items():
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            parsed.unsupported.append(f"{key} (a text-encoder LoRA: the prompt is fixed)")
            continue
        split = _split(key)
        if split is None:
            parsed.unplaced.setdefault(key, key)
            continue
        module, role, fmt = split
        formats.add(fmt)
        if role in ("bias", "diff"):
            if torch.count_nonzero(tensor) == 0:
                parsed.skipped_zero += 1
            else:
                parsed.unsupported.append(f"{key} (a non-zero {role}: only LoRA factors load)")
            continue
        if role == "dora":
            parsed.unsupported.append(f"{key} (DoRA is not supported)")
            continue
        factors.setdefault(module, {})[role] = tensor
    if config.get("use_dora"):
        parsed.unsupported.append("the file's metadata says use_dora (DoRA is not supported)")
    parsed.format = next((fmt for fmt in ("kohya", "wan") if fmt in formats), "diffusers")
    rslora = bool(config.get("use_rslora"))
    for module, found in factors.items():
        if "down" not in found or "up" not in found:
            if set(found) - {"alpha"}:
                parsed.incomplete.append(module)
            else:  # an alpha alone: of a module whose factors were unplaceable, or junk
                parsed.unplaced.setdefault(module, f"{module}.alpha")
            continue
        down, up = found["down"], found["up"]
        if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
            parsed.incomplete.append(
                f"{module} (factor shapes {tuple(down.shape)} and {tuple(up.shape)} do not chain)"
            )
            continue
        rank = int(down.shape[0])
        if "alpha" in found:
            alpha = float(found["alpha"].float().reshape(-1)[0])
        else:
            alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha"))
            alpha = float(alpha) if alpha is not None else float(rank)
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        parsed.modules[module] = LoraModule(down, up, scale)
    return parsed


# --- writers (tests and benchmarks build the same LoRA in each format) --------------------------


def wan_module(module: str) -> str:
    """diffusers' module name → Wan's (``blocks.0.attn1.to_q`` → ``blocks.0.self_attn.q``)."""
    match = _BLOCK.match(module)
    if not match or match.group(2) not in DIFFUSERS_TO_WAN:
        raise ValueError(f"{module!r} has no Wan name")
    return f"blocks.{match.group(1)}.{DIFFUSERS_TO_WAN[match.group(2)]}"


def to_format(
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]], fmt: str, alpha: float | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, safetensors metadata) of ``modules`` (diffusers name → (down, up)) in ``fmt``.

    ``alpha`` (default: each layer's rank, i.e. scale 1) goes where the format keeps it: per
    layer for Wan and kohya, in diffusers' ``lora_adapter_metadata`` header for diffusers.
    """
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {"format": "pt"}
    for module, (down, up) in modules.items():
        down, up = down.contiguous(), up.contiguous()
        if fmt == "diffusers":
            tensors[f"transformer.{module}.lora_A.weight"] = down
            tensors[f"transformer.{module}.lora_B.weight"] = up
            continue
        name = wan_module(module)
        if fmt == "wan":
            base = f"diffusion_model.{name}"
            tensors[f"{base}.lora_A.weight"], tensors[f"{base}.lora_B.weight"] = down, up
        elif fmt == "kohya":
            base = "lora_unet_" + name.replace(".", "_")
            tensors[f"{base}.lora_down.weight"], tensors[f"{base}.lora_up.weight"] = down, up
        else:
            raise ValueError(f"unknown LoRA format {fmt!r}; choose {', '.join(FORMATS)}")
        if alpha is not None:
            tensors[f"{base}.alpha"] = torch.tensor(float(alpha))
    if fmt == "diffusers" and alpha is not None:
        ranks = {int(down.shape[0]) for down, _ in modules.values()}
        config = {
            "transformer.r": max(ranks),
            "transformer.lora_alpha": alpha,
            "transformer.target_modules": sorted(modules),
        }
        if len(ranks) > 1:
            config["transformer.rank_pattern"] = {
                module: int(down.shape[0]) for module, (down, _) in modules.items()
            }
        metadata[METADATA_KEY] = json.dumps(config, sort_keys=True)
    return tensors, metadata
