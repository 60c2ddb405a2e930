"""Checkpoints shipped inside the package, by name, and the one fine-tuning starts from by default.

`dtrec finetune --init pretrained` (and, for the offline encoders, `dtrec finetune` with no
`--init`) starts from the multi-domain pretrained model in `dtrec/weights/pretrained/`
(docs/pretraining.md); `--init none` trains from scratch. The folder is package data, so an
installed wheel finds it without a checkout; `assets/models/pretrained` points to it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dtrec.encoders.registry import same_encoder

SHIPPED = ("pretrained",)  # folder names under dtrec/weights/
DEFAULT_INIT = {"offline": "pretrained"}  # encoder -> the shipped checkpoint fine-tuning starts from
NO_INIT = "none"


def shipped_checkpoint(name: str) -> Path:
    """The folder of the shipped checkpoint `name`; FileNotFoundError when this installation lacks it."""
    if name not in SHIPPED:
        raise KeyError(f"no shipped checkpoint named {name!r}; shipped: {', '.join(SHIPPED)}")
    folder = Path(str(resources.files(__package__) / name))
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"the shipped checkpoint {name!r} is missing from {folder}")
    return folder


def resolve_init(init: str | None, encoder: str) -> str | None:
    """The checkpoint a fine-tuning starts from: `init` as given, a shipped name's folder, `none` -> None,
    and no `init` -> the encoder's default (`DEFAULT_INIT`) when it is shipped, else None."""
    if init is None:
        name = next((n for enc, n in DEFAULT_INIT.items() if same_encoder(encoder, enc)), None)
        if name is None:
            return None
        try:
            return str(shipped_checkpoint(name))
        except FileNotFoundError:
            return None
    if init.lower() == NO_INIT:
        return None
    if init in SHIPPED:
        return str(shipped_checkpoint(init))
    return init
