"""Checkpoints shipped inside the package, by name.

`dtrec/weights/pretrained/` holds the multi-domain pretrained model for the offline encoder
(docs/pretraining.md: six domains, the content term and neighbour distillation). `dtrec finetune`
starts from it by default on offline features (`default_init`; `--init none` trains from scratch),
`--init pretrained` names it, and `dtrec evaluate --checkpoint pretrained` scores it zero-shot. The
folder is package data, so an installed wheel finds it without a checkout; `assets/models/pretrained`
points to it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dtrec.config import read_model_config

SHIPPED = ("pretrained",)  # folder names under dtrec/weights/
NO_INIT = "none"
DEFAULT_INIT = "pretrained"  # what a fine-tuning starts from when its features suit it (`default_init`)


def shipped_checkpoint(name: str) -> Path:
    """The folder of the shipped checkpoint `name`; FileNotFoundError when this installation lacks it."""
    if name not in SHIPPED:
        raise KeyError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(SHIPPED)}")
    folder = Path(str(resources.files(__package__) / name))
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from {folder}")
    return folder


def resolve_init(init: str | None) -> str | None:
    """The checkpoint a fine-tuning starts from: a shipped name's folder, `none` (or nothing) -> None, else `init`."""
    if init is None or init.lower() == NO_INIT:
        return None
    if init in SHIPPED:
        return str(shipped_checkpoint(init))
    return init


def default_init(encoder: str, dims: dict[str, int]) -> str | None:
    """The shipped model a fine-tuning on `encoder` features of `dims` starts from when given no init, or None.

    Only features the shipped model reads (its encoder, every one of its modalities) get it; any other run starts
    from scratch, as before there was a model to ship. An installation without it starts from scratch too."""
    from dtrec.encoders.registry import same_encoder

    try:
        folder = shipped_checkpoint(DEFAULT_INIT)
    except FileNotFoundError:
        return None
    base = read_model_config(folder)
    return str(folder) if same_encoder(base.encoder, encoder) and base.modality_dims == dims else None


def resolve_checkpoint(checkpoint: str) -> str:
    """A shipped checkpoint's folder when `checkpoint` names one (and no such path exists here), else `checkpoint`."""
    if checkpoint in SHIPPED and not Path(checkpoint).exists():
        return str(shipped_checkpoint(checkpoint))
    return checkpoint
