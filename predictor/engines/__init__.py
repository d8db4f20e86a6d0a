"""Engine registry: name -> factory, imported lazily so that listing names stays cheap.

To add an engine, add one entry to ``_FACTORIES`` (its import happens only when it is loaded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import Engine, EngineJob, LoraRequest, ProgressFn


def _sr(**options: Any) -> Engine:
    from .sr import SREngine

    return SREngine(**options)


def _chronoedit(**options: Any) -> Engine:
    from .chronoedit import ChronoEditEngine

    return ChronoEditEngine(**options)


_FACTORIES: dict[str, Callable[..., Engine]] = {
    "sr": _sr,
    "chronoedit": _chronoedit,
}

#: names accepted by :func:`load_engine` (and the CLI's ``--engine``)
ENGINE_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def load_engine(name: str, **options: Any) -> Engine:
    """Build the engine called ``name`` with its constructor ``options``."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; supported engines: {', '.join(ENGINE_NAMES)}"
        ) from None
    return factory(**options)


__all__ = ["ENGINE_NAMES", "Engine", "EngineJob", "LoraRequest", "ProgressFn", "load_engine"]
