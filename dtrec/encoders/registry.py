"""Encoders by name: a table of factories filled by the `register` decorator.

Exact names (`offline`, `tiny-clip`) map to one factory; a name with a
prefix (`clip:<model>[:<tag or file>]`) goes to the factory registered for
that prefix with the rest of the name as its argument. Aliases name a fixed
configuration under a stable name (`clip-vit-b-32`).
"""

from __future__ import annotations

from typing import Callable

import torch

from dtrec.encoders.base import Encoder, EncoderNotFound

# factory(spec, device, name) -> Encoder; spec is the text after "prefix:" (or "" for exact names)
Factory = Callable[[str, "str | torch.device | None", str], Encoder]

_EXACT: dict[str, Factory] = {}
_PREFIX: dict[str, Factory] = {}
_ALIASES: dict[str, str] = {
    # The precomputed features of the UniSRec/MISSRec data are CLIP ViT-B/32 (OpenAI weights);
    # the live encoder keeps the alias as its name so that new items line up with them.
    "clip-vit-b-32": "clip:ViT-B-32:openai",
}


def register(name: str, prefix: bool = False) -> Callable[[Factory], Factory]:
    """Decorator adding an encoder factory under `name` (or under the prefix `name:` when `prefix`)."""

    def deco(factory: Factory) -> Factory:
        table = _PREFIX if prefix else _EXACT
        if name in table:
            raise ValueError(f"encoder {name!r} is registered twice")
        table[name] = factory
        return factory

    return deco


def list_encoders() -> list[str]:
    """Registered names: exact names, aliases and `prefix:...` patterns."""
    _load_builtin()
    return sorted(_EXACT) + sorted(_ALIASES) + [f"{p}:..." for p in sorted(_PREFIX)]


def get_encoder(name: str, device: str | torch.device | None = None) -> Encoder:
    """Build the encoder called `name` on `device` (None: CUDA when available)."""
    _load_builtin()
    target = _ALIASES.get(name, name)
    if target in _EXACT:
        return _EXACT[target]("", device, name)
    prefix, sep, spec = target.partition(":")
    if sep and prefix in _PREFIX:
        return _PREFIX[prefix](spec, device, name)
    raise EncoderNotFound(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}")


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators; they import torch-heavy
    # libraries only when an encoder is built, so this stays cheap.
    from dtrec.encoders import clip, offline  # noqa: F401
