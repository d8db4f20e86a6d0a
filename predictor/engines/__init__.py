"""Engine registry: options type → factory, imported lazily so that listing names stays cheap.

To add an engine, add its options dataclass to :mod:`.options` and one entry to ``_FACTORIES``
(its import happens only when it is loaded).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .base import Engine, EngineJob, LoraRequest, ProgressFn
from .options import OPTIONS_BY_ENGINE, ChronoEditOptions, EngineOptions, SROptions


def _sr(**options: Any) -> Engine:
    from .sr import SREngine

    return SREngine(**options)


def _chronoedit(**options: Any) -> Engine:
    from .chronoedit.engine import ChronoEditEngine

    return ChronoEditEngine(**options)


_FACTORIES: dict[str, Callable[..., Engine]] = {
    SROptions.engine: _sr,
    ChronoEditOptions.engine: _chronoedit,
}

#: names accepted by :func:`options_for` (and the CLI's ``--engine``)
ENGINE_NAMES: tuple[str, ...] = tuple(OPTIONS_BY_ENGINE)


def options_for(name: str, **options: Any) -> EngineOptions:
    """The typed options of the engine called ``name`` (its defaults for what is left out)."""
    try:
        kind = OPTIONS_BY_ENGINE[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; supported engines: {', '.join(ENGINE_NAMES)}"
        ) from None
    return kind(**options)


def load_engine(options: EngineOptions) -> Engine:
    """Build the engine those options are for."""
    fields = {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}
    return _FACTORIES[options.engine](**fields)


__all__ = [
    "ENGINE_NAMES",
    "ChronoEditOptions",
    "Engine",
    "EngineJob",
    "EngineOptions",
    "LoraRequest",
    "ProgressFn",
    "SROptions",
    "load_engine",
    "options_for",
]
