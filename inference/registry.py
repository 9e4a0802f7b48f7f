"""Engines by name, loaded once per process.

Two kinds: ``separator`` and ``converter`` (plus ``asr``). An engine class registers
itself with :func:`register`; :func:`get_engine` builds it on first use and then returns
the same instance for the same (kind, name, options), so a worker process keeps its
models loaded between jobs. ``load_counts`` lets tests prove that.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from typing import Any, Callable

_FACTORIES: dict[tuple[str, str], Callable[..., Any]] = {}
_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()
load_counts: Counter = Counter()  # (kind, name) -> times built in this process

KINDS = ("separator", "converter", "asr")


def register(kind: str, name: str):
    """Class decorator: ``@register("separator", "spectral")``."""
    if kind not in KINDS:
        raise ValueError(f"unknown engine kind {kind!r}")

    def deco(factory):
        _FACTORIES[(kind, name)] = factory
        factory.engine_name = name
        return factory

    return deco


def _ensure_builtin() -> None:
    # Importing the engines package registers the built-in engines.
    from . import engines  # noqa: F401


def available(kind: str) -> list[str]:
    _ensure_builtin()
    return sorted(n for (k, n) in _FACTORIES if k == kind)


def _key(options: dict) -> str:
    return json.dumps(options, sort_keys=True, default=str)


def get_engine(kind: str, name: str, /, **options: Any) -> Any:
    """The process-wide instance of engine ``name`` built with ``options``."""
    _ensure_builtin()
    try:
        factory = _FACTORIES[(kind, name)]
    except KeyError:
        raise KeyError(f"unknown {kind} engine {name!r}; available: {', '.join(available(kind))}") from None
    key = (kind, name, _key(options))
    with _LOCK:
        inst = _CACHE.get(key)
        if inst is None:
            inst = factory(**options)
            _CACHE[key] = inst
            load_counts[(kind, name)] += 1
        return inst


def clear_cache() -> None:
    """Drop every loaded engine (tests; freeing GPU memory)."""
    with _LOCK:
        _CACHE.clear()
        load_counts.clear()
