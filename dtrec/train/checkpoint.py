"""Checkpoints: resumable training state, warm starts from a pretrained model, run records.

`OUT/last/` holds the model (`save_pretrained` layout) and `state.pt` (optimizer,
epoch, early-stopping counters, RNG states), read back with
`torch.load(weights_only=True)`, which restores tensors and plain containers only.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from dtrec.config import DUAL_TOWER_FILES, ModelConfig, checkpoint_folder, read_model_config
from dtrec.encoders.registry import same_encoder
from dtrec.model.itemids import same_rows
from dtrec.model.tower import CheckpointError, DualTower, FeatureMismatchError, load_state_checked
from dtrec.provenance import git_commit

ARCH_FIELDS = ("d_model", "n_layers", "n_heads", "d_ff", "tower", "n_experts")


def rng_state() -> dict[str, Any]:
    """Every random state training draws from (python, torch CPU, CUDA)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(out: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> Path:
    """Write `out` (model + optimizer + `state`) via a temporary folder, so a crash keeps the old one."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_state(), **state}, tmp / "state.pt")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def load_training_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model weights and optimizer from `save_training_state`; returns the rest of the state."""
    path = Path(path)
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"{path / 'state.pt'} is missing: nothing to resume from")
    device = str(next(model.parameters()).device)
    load_state_checked(model, load_file(str(path / "model.safetensors"), device=device), source=str(path))
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state.pop("optimizer"))
    return state


def merge_init_config(model_cfg: ModelConfig, init: str | Path) -> ModelConfig:
    """`model_cfg` with the architecture of the checkpoint at `init` (which must share its encoder)."""
    base = read_model_config(init)
    if model_cfg.encoder and not same_encoder(base.encoder, model_cfg.encoder):
        raise FeatureMismatchError(
            f"checkpoint {init} was trained on encoder {base.encoder!r}, but the features come from {model_cfg.encoder!r}"
        )
    if model_cfg.modality_dims and base.modality_dims != model_cfg.modality_dims:
        raise FeatureMismatchError(
            f"checkpoint {init} expects dims {base.modality_dims}, but the features have {model_cfg.modality_dims}"
        )
    return dataclasses.replace(model_cfg, encoder=base.encoder, modality_dims=base.modality_dims,
                               **{f: getattr(base, f) for f in ARCH_FIELDS})


SETTINGS_WITH_WEIGHTS = ("repeat_bias", "content_lags")  # score terms with learned weights: they come with an init
_NOT_SETTINGS = ("encoder", "modality_dims", "id_rows", *ARCH_FIELDS)  # id_rows: from the catalog (item_ids)


def architecture_conflicts(given: dict[str, Any], init: str | Path) -> list[str]:
    """The architecture fields in `given` (settings named for this run) that differ from the init's, as
    "--flag ours (the init: its)": a fine-tuning takes its init's architecture, so such a flag would be ignored."""
    base = read_model_config(init)
    return [f"--{f.replace('_', '-')} {given[f]!r} (the init: {getattr(base, f)!r})"
            for f in ARCH_FIELDS if f in given and given[f] != getattr(base, f)]


def settings_from_init(model_cfg: ModelConfig, init: str | Path, given: set[str], every: bool = False) -> ModelConfig:
    """`model_cfg` with the init's values of the settings not in `given`: the score terms with weights
    (`SETTINGS_WITH_WEIGHTS`), or with `every` all of its settings beyond the architecture (temperature, window,
    dropout, ...), which makes the run the init's own model continued on new data."""
    base = read_model_config(init)
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in _NOT_SETTINGS] if every \
        else list(SETTINGS_WITH_WEIGHTS)
    return dataclasses.replace(model_cfg, **{n: getattr(base, n) for n in names if n not in given})


def init_differences(model_cfg: ModelConfig, init: str | Path) -> list[str]:
    """The model settings beyond the architecture in which `model_cfg` differs from the init's, as "name ours (the init: its)".

    The architecture (`ARCH_FIELDS`) always comes from the init; the rest (the temperature, the repeat term, the
    window, dropout) is the run's own, so a setting left at its default can silently differ from the one the init
    was trained with (a fine-tuning without the init's repeat term starts by echoing the last item)."""
    base = read_model_config(init)
    return [f"{f.name} {getattr(model_cfg, f.name)!r} (the init: {getattr(base, f.name)!r})"
            for f in dataclasses.fields(ModelConfig)
            if f.name not in _NOT_SETTINGS and getattr(model_cfg, f.name) != getattr(base, f.name)]


def resize_table(table: Tensor, rows: int, fill: Tensor) -> Tensor:
    """`table`'s first `rows` rows, followed by `fill` (at least the missing rows) when it has fewer."""
    if rows <= table.shape[0]:
        return table[:rows].clone()
    return torch.cat([table, fill[: rows - table.shape[0]].to(table)])


def init_from(model: DualTower, init: str | Path) -> list[str]:
    """Load pretrained weights into `model`; returns what had to be re-initialised or copied.

    A position table of another length keeps the positions both tables have when positions count back from
    the last item (`reverse_positions`) and is re-initialised otherwise; a repeat term of another length keeps
    its shared places and gives new, older ones the init's oldest offset (what the init applied to them); a content
    term of another length keeps its shared places, new ones at zero. Item IDs
    (`ItemIds`) are kept when the init learned them on this catalog and start at zero otherwise. A
    shared encoder fills both towers of a model with separate towers (and vice versa keeps the user side).
    """
    path = checkpoint_folder(init, DUAL_TOWER_FILES)
    state = load_file(str(path / "model.safetensors"), device=str(model.device))
    own = model.state_dict()
    notes = []
    if any(k.startswith("separate_item_encoder.") for k in own) and not any(
        k.startswith("separate_item_encoder.") for k in state
    ):
        state.update({"separate_item_encoder." + k[len("user_encoder."):]: v
                      for k, v in list(state.items()) if k.startswith("user_encoder.")})
        notes.append("item tower initialised from the shared encoder")
    if not any(k.startswith("separate_item_encoder.") for k in own):
        dropped = [k for k in state if k.startswith("separate_item_encoder.")]
        for k in dropped:
            del state[k]
        if dropped:
            notes.append("separate item tower of the checkpoint dropped (towers shared)")
    fresh = [k for k in own if k.startswith("history_correction.") and k not in state]
    if fresh:  # separate adaptor towers from a shared checkpoint: the correction starts at zero, as built
        state.update({k: own[k] for k in fresh})
        notes.append("history correction initialised at zero")
    if "last_item_weight" in own and "last_item_weight" not in state:
        state["last_item_weight"] = own["last_item_weight"]  # zero, as built: the init's own user vector
        notes.append("last-item weight initialised at zero")
    if "last_item_weight" in state and "last_item_weight" not in own:
        del state["last_item_weight"]
        notes.append("the checkpoint's last-item weight dropped (subtract_last off)")
    # Item IDs at zero leave the init's own content model; its IDs are kept only for the catalog they were learned on.
    ids = {"item_ids.weight", "item_ids.row_signature"} & set(own)
    zero_ids = {"item_ids.weight": torch.zeros_like(own["item_ids.weight"]),
                "item_ids.row_signature": own["item_ids.row_signature"]} if ids else {}
    if ids and not all(k in state and state[k].shape == own[k].shape for k in ids):
        state.update(zero_ids)
        notes.append("item IDs initialised at zero")
    elif ids and not same_rows(state["item_ids.row_signature"], own["item_ids.row_signature"]):
        state.update(zero_ids)
        notes.append("item IDs initialised at zero (the init's are another catalog's)")
    dropped = [k for k in state if k.startswith("item_ids.") and k not in own]
    for k in dropped:
        del state[k]
    if dropped:
        notes.append("the checkpoint's item IDs dropped (item_ids off)")
    key = "repeat_bias.weight"
    if key in own and key not in state:
        state[key] = own[key]  # zero, as built (a matching checkpoint brings its learned offsets)
        notes.append("repeat term initialised at zero")
    elif key in own and state[key].shape != own[key].shape:
        # The init gives every place past its window its oldest offset; the longer term starts as that rule.
        theirs, ours = state[key].shape[0], own[key].shape[0]
        state[key] = resize_table(state[key], ours, fill=state[key][-1:].expand(max(ours - theirs, 0)))
        notes.append(f"repeat term: {min(theirs, ours)} of {ours} places taken from the init"
                     + (", the older ones given its oldest offset" if ours > theirs else ""))
    if key in state and key not in own:
        del state[key]
        notes.append("the checkpoint's repeat term dropped (repeat_bias off)")
    key = "content_bias.weight"
    if key in own and key not in state:
        state[key] = own[key]
        notes.append("content term initialised at zero")
    elif key in own and state[key].shape != own[key].shape:
        theirs, ours = state[key].shape[0], own[key].shape[0]
        # Places only ours has start at zero, as built: they are older items the init never weighed.
        state[key] = resize_table(state[key], ours, fill=own[key][theirs:])
        notes.append(f"content term: {min(theirs, ours)} of {ours} places taken from the init")
    if key in state and key not in own:
        del state[key]
        notes.append("the checkpoint's content term dropped (content_lags 0)")
    for k in [k for k in state if k.endswith("position.weight")]:
        if k in own and own[k].shape != state[k].shape:
            theirs, ours = state[k].shape[0], own[k].shape[0]
            if getattr(model.get_submodule(k.rsplit(".", 2)[0]), "reverse_positions", False):
                # Positions count back from the last item, so row p means "p items ago" in both tables: the
                # shared rows keep their meaning, the rows only ours has start as built.
                state[k] = resize_table(state[k], ours, fill=own[k][theirs:])
                notes.append(f"{k}: {min(theirs, ours)} of {ours} positions taken from the init, the rest as built")
            else:
                state[k] = own[k]
                notes.append(f"{k} re-initialised ({ours} positions)")
    load_state_checked(model, state, strict=True, source=str(path))
    return notes


def write_run_record(out: str | Path, config: Any, *, resumed: bool = False, **extra: Any) -> Path:
    """Write `OUT/train_config.json`: the resolved config plus data paths, seed and git commit.

    `resumed`: the run in `out` goes on, so what its record says about the start (the init, its notes, the commit
    it began at) stays; what the continuing process gives anew replaces it, its commit as `resumed_git_commit`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"config": dataclasses.asdict(config), "git_commit": git_commit(), **extra}
    path = out / "train_config.json"
    if resumed and path.exists():
        saved = json.loads(path.read_text())
        record["resumed_git_commit"] = record.pop("git_commit")
        record = {**saved, **{k: v for k, v in record.items() if v not in (None, [], "")}}
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    return path


__all__ = [
    "CheckpointError", "init_differences", "init_from", "load_training_state", "merge_init_config", "resize_table",
    "rng_state", "save_training_state",
    "set_rng_state", "write_run_record",
]
