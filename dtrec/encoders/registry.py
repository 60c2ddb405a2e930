"""Encoders by name: a table of factories filled by the `register` decorator.

Exact names (`offline`, `tiny-clip`) map to one factory; a name with a
prefix (`clip:<model>[:<tag or file>]`) goes to the factory registered for
that prefix with the rest of the name as its argument. Aliases name a fixed
configuration under a stable name (`clip-vit-b-32`); two names denote the same
feature space when their aliases resolve to the same target (`same_encoder`).

This module registers nothing itself: `dtrec/encoders/__init__.py` imports the
built-in encoder modules, whose decorators fill the tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dtrec.encoders.base import Encoder, EncoderNotFound

if TYPE_CHECKING:
    import torch

# factory(spec, device, name) -> Encoder; spec is the text after "prefix:" (or "" for exact names)
Factory = Callable[[str, "str | torch.device | None", str], Encoder]

_EXACT: dict[str, Factory] = {}
_PREFIX: dict[str, Factory] = {}
_ALIASES: dict[str, str] = {}


def register(name: str, prefix: bool = False) -> Callable[[Factory], Factory]:
    """Decorator adding an encoder factory under `name` (or under the prefix `name:` when `prefix`)."""

    def deco(factory: Factory) -> Factory:
        table = _PREFIX if prefix else _EXACT
        if name in table:
            raise ValueError(f"encoder {name!r} is registered twice")
        table[name] = factory
        return factory

    return deco


def register_alias(alias: str, target: str) -> None:
    """Name the encoder `target` (an exact or `prefix:...` name) also `alias`."""
    if alias in _ALIASES or alias in _EXACT:
        raise ValueError(f"encoder {alias!r} is registered twice")
    _ALIASES[alias] = target


def canonical_name(name: str) -> str:
    """The encoder name an alias stands for (`name` itself when it is no alias)."""
    return _ALIASES.get(name, name)


def same_encoder(a: str, b: str) -> bool:
    """Whether two encoder names denote the same feature space."""
    return canonical_name(a) == canonical_name(b)


def list_encoders() -> list[str]:
    """Registered names: exact names, aliases and `prefix:...` patterns."""
    return sorted(_EXACT) + sorted(_ALIASES) + [f"{p}:..." for p in sorted(_PREFIX)]


def get_encoder(name: str, device: str | torch.device | None = None) -> Encoder:
    """Build the encoder called `name` on `device` (None: CUDA when available)."""
    target = canonical_name(name)
    if target in _EXACT:
        return _EXACT[target]("", device, name)
    prefix, sep, spec = target.partition(":")
    if sep and prefix in _PREFIX:
        return _PREFIX[prefix](spec, device, name)
    raise EncoderNotFound(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")
