"""Checkpoints shipped inside the package, by name.

`dtrec finetune --init pretrained` starts from the multi-domain pretrained model in
`dtrec/weights/pretrained/` (docs/pretraining.md: six domains, the content term and neighbour
distillation), and `dtrec evaluate --checkpoint pretrained` scores it zero-shot. The folder is package
data, so an installed wheel finds it without a checkout; `assets/models/pretrained` points to it.
Fine-tuning still starts from scratch by default (docs/pretraining.md, "Not the default init yet"): a
pretrained start loses on a kind of catalog its sources lack, and an init's architecture overrides the flags.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED = ("pretrained",)  # folder names under dtrec/weights/
NO_INIT = "none"


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


def resolve_checkpoint(checkpoint: str) -> str:
    """A shipped checkpoint's folder when `checkpoint` names one (and no such path exists here), else `checkpoint`."""
    if checkpoint in SHIPPED and not Path(checkpoint).exists():
        return str(shipped_checkpoint(checkpoint))
    return checkpoint
