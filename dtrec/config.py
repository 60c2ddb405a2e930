"""Dataclass configs, saved as JSON beside every checkpoint and result, and read back from checkpoint folders.

The CLI builds each training config from a JSON file and/or `--key value` flags
(`dtrec.cli`), and `asdict` gives what is written as `config.json`. A checkpoint
folder is found and its `config.json` read here (`checkpoint_folder`,
`read_checkpoint_config`), for every model type.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- model / training
OBJECTIVES = ("cloze", "causal")
# "fusion": MMSRec's FusionEncoder, one token per (position, modality), the item tower is the same
# encoder on a one-item sequence. "adaptor": UniSRec's standardise + MoE adaptor as the item tower
# and a Transformer over one token per item as the user tower (dtrec/model/adaptor.py).
TOWERS = ("fusion", "adaptor")
NEGATIVES = ("auto", "all", "in_batch", "sampled")
# How evaluation credits a target whose score ties with other items' (dtrec.eval.metrics_from_counts).
# "expected": fractional credit, the metric's expectation over a random order of the tied items;
# identical features give identical scores, and neither first nor last place among them is what a
# deployed ranking would give. "pessimistic": below all of them (a constant scorer earns nothing).
TIES = ("expected", "pessimistic")
DEFAULT_TIES = "expected"
# "auto" picks the full softmax over every item ("all", the reference) up to this catalog size and
# logQ-corrected sampled negatives beyond it: "all" re-encodes the whole catalog every step, so its
# step time grows with the catalog (docs/data.md, "Negatives").
FULL_SOFTMAX_MAX_ITEMS = 5_000


def resolve_negatives(negatives: str, num_items: int) -> str:
    """The negatives a run uses: `negatives` itself, or for "auto" the choice by catalog size."""
    if negatives != "auto":
        return negatives
    return "all" if num_items <= FULL_SOFTMAX_MAX_ITEMS else "sampled"


@dataclass
class ModelConfig:
    """The dual-tower model (docs/model.md); stored as a checkpoint's config.json."""

    encoder: str = ""
    modality_dims: dict[str, int] = field(default_factory=dict)
    d_model: int = 512
    n_layers: int = 2
    n_heads: int = 8
    d_ff: int = 1024
    dropout: float = 0.5
    emb_dropout: float = 0.2
    max_len: int = 20
    share_towers: bool = True
    objective: str = "causal"
    temperature: float = 0.05
    mask_prob: float = 0.2
    reverse_positions: bool = True
    tower: str = "fusion"
    n_experts: int = 8  # adaptor: whitening experts per modality
    adaptor_dropout: float = 0.2  # adaptor: dropout on the standardised features
    # adaptor, causal: the user vector minus a learned multiple (from 0) of the last item's own embedding
    subtract_last: bool = False
    # causal: a learned score offset for items already in the history, by recency (dtrec/model/repeat.py)
    repeat_bias: bool = False
    # causal: a learned score offset for the frozen features' cosine of an item with each of the last
    # `content_lags` history items (dtrec/model/content.py); 0 = none
    content_lags: int = 0
    # adaptor: the first `id_rows` rows of the training catalog get a learned ID vector on top of their content
    # embedding (UniSRec's transductive setting, dtrec/model/itemids.py); 0 = ID-free. Set by fine-tuning's
    # `item_ids`, not by hand.
    id_rows: int = 0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if self.tower not in TOWERS:
            raise ValueError(f"tower must be one of {TOWERS}, not {self.tower!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.subtract_last and (self.tower != "adaptor" or self.objective != "causal"):
            raise ValueError("subtract_last needs the adaptor tower and the causal objective")
        if self.repeat_bias and self.objective != "causal":
            raise ValueError("repeat_bias needs the causal objective: Cloze has no history position to read")
        if self.content_lags < 0 or (self.content_lags and self.objective != "causal"):
            raise ValueError(f"content_lags must be at least 0 and needs the causal objective (got "
                             f"{self.content_lags}, objective {self.objective!r})")
        if self.max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {self.max_len}")
        if self.id_rows < 0 or (self.id_rows and self.tower != "adaptor"):
            raise ValueError(f"id_rows must be at least 0, and item IDs need the adaptor tower (got {self.id_rows}, "
                             f"tower {self.tower!r})")
        self.modality_dims = {str(k): int(v) for k, v in dict(self.modality_dims).items()}

    @classmethod
    def from_dict(cls, config: "ModelConfig | dict[str, Any]") -> "ModelConfig":
        """`config` itself, or a ModelConfig of a dict's known fields (a checkpoint's config.json holds more)."""
        if isinstance(config, cls):
            return config
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(config).items() if k in names})


@dataclass
class TrainConfig:
    """What every training run shares: the model, the optimiser (AdamW), the device and the step budget."""

    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 20
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 42
    amp: bool = True  # bf16 autocast on a GPU (ignored on a CPU)
    device: str | None = None
    log_every: int = 50
    max_steps: int | None = None

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = ModelConfig(**self.model)
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be at least 1")


@dataclass
class FinetuneConfig(TrainConfig):
    """Sequential fine-tuning (dtrec.train.finetune); `model` holds the architecture."""

    epochs: int = 100
    batch_size: int = 512
    group_by_length: bool = True  # batches of similar history length: far less padding (BatchPlan)
    pad_multiple: int = 1  # round batch widths up to a multiple (a GPU then meets a few shapes, not one per length)
    patience: int = 10
    eval_every: int = 1
    eval_batch_size: int = 256
    negatives: str = "auto"  # resolved by catalog size (resolve_negatives) before the run record is written
    num_negatives: int = 1024
    evaluate_test: bool = True
    modalities: str = ""  # comma-separated subset of the features' modalities to train on ("text"); "" = all
    # With an init: refit the adaptor's feature standardisation on this catalog instead of keeping the
    # init's (UniSRec re-learns its whitening for each new domain; docs/pretraining.md measures both).
    refit_norm: bool = False
    # Comma-separated top-level modules held at their init, e.g. "sequence_encoder": UniSRec's inductive
    # fine-tuning trains only the item adaptor on a new domain. "" trains everything.
    freeze: str = ""
    # Comma-separated top-level modules left at their fresh initialisation when starting from an init, e.g.
    # "item_adaptor": the pretrained sequence encoder with a new catalog's own adaptor (docs/pretraining.md).
    reinit: str = ""
    # The item-level multi-modal views (dtrec.train.views) beside the next-item loss, with this weight, over
    # `item_batch_size` items a step: they keep an item's text-only, image-only and full embeddings together,
    # as the encoders had them (docs/model.md, "Item views in fine-tuning"). 0 = off.
    item_weight: float = 0.0
    item_batch_size: int = 512
    item_pairs: str = ""  # the view pairs ("t-vt,vt-vt"); "" = pretraining's four (dtrec.train.views)
    # A learned ID vector per training-catalog item beside its content (UniSRec's transductive setting,
    # dtrec/model/itemids.py): the model then scores that catalog only (plus new items, by content).
    item_ids: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, not {self.negatives!r}")
        if self.pad_multiple < 1:
            raise ValueError("pad_multiple must be at least 1")
        if self.item_weight < 0 or self.item_batch_size < 2:
            raise ValueError("item_weight must be at least 0 and item_batch_size at least 2")
        if self.model.id_rows and not self.item_ids:
            raise ValueError("model.id_rows is set from the catalog by item_ids=True, not by hand")


@dataclass
class PretrainConfig(TrainConfig):
    """Self-supervised multi-modal pretraining over items (dtrec.train.pretrain)."""

    epochs: int = 20
    batch_size: int = 1024  # items per batch of the item views
    # Multi-domain sequence pretraining (UniSRec-style): every source's training histories also teach
    # next-item prediction, each batch drawn from one source with that source's items as candidates.
    sequences: bool = False
    sequence_batch_size: int = 256
    steps_per_epoch: int = 0  # sequence batches per epoch (0: one pass over every source's histories)
    item_weight: float = 1.0  # the item views' loss beside the sequence loss
    item_pairs: str = ""  # the view pairs ("t-vt,vt-vt"); "" = the paper's four (dtrec.train.views)
    # Sequence pretraining: weight of neighbour distillation, which keeps each item's nearest neighbours in the
    # item tower those of its frozen features (a batch of `batch_size` items of every source per step; 0: off).
    geometry_weight: float = 0.0
    negatives: str = "auto"  # sequence candidates of each source, resolved by its catalog size
    num_negatives: int = 1024
    valid_users: int = 1000  # validation histories per source (sequence pretraining; 0: all)
    patience: int = 0  # sequence pretraining: stop after this many epochs without better validation (0: never)

    def __post_init__(self):
        super().__post_init__()
        if self.batch_size < 2:
            raise ValueError("pretraining needs batch_size >= 2 (the other items of a batch are the negatives)")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {NEGATIVES}, not {self.negatives!r}")
        if self.model.id_rows:
            raise ValueError("item IDs belong to one catalog: they are learned in fine-tuning (item_ids), not pretraining")
        if self.geometry_weight < 0 or (self.geometry_weight and not self.sequences):
            raise ValueError("geometry_weight must be at least 0, and it is a term of sequence pretraining "
                             "(--sequences)")
        if self.sequence_batch_size < 1 or self.steps_per_epoch < 0 or self.valid_users < 0 or self.patience < 0:
            raise ValueError("sequence_batch_size must be at least 1; steps_per_epoch, valid_users and patience "
                             "at least 0")


# --------------------------------------------------------------------------- checkpoint folders
# A checkpoint's config.json names its `model_type`: a registered baseline (dtrec.baselines.registry), or for a
# DualTower none (or "dtrec").
DUAL_TOWER_FILES = ("config.json", "model.safetensors")


def checkpoint_folder(path: str | Path, needs: tuple[str, ...] = ("config.json",)) -> Path:
    """The checkpoint folder holding the files `needs`: `path` itself, or `path/best` (a training run's output)."""
    path = Path(path)
    for folder in (path, path / "best"):
        if all((folder / name).is_file() for name in needs):
            return folder
    raise FileNotFoundError(f"{path} holds no {' + '.join(needs)} (nor best/ does): is it a checkpoint folder?")


def read_checkpoint_config(path: str | Path, needs: tuple[str, ...] = ("config.json",)) -> dict[str, Any]:
    """The `config.json` of `checkpoint_folder(path, needs)` (a model config nested under "config" or "model"
    by extra init kwargs is returned flat); `json.JSONDecodeError` when it is not valid JSON."""
    cfg = json.loads((checkpoint_folder(path, needs) / "config.json").read_text())
    for key in ("config", "model"):
        if isinstance(cfg, dict) and "encoder" not in cfg and isinstance(cfg.get(key), dict) and "encoder" in cfg[key]:
            return cfg[key]
    return cfg


def read_model_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a DualTower checkpoint folder (a training output's `best/` is found too)."""
    return ModelConfig.from_dict(read_checkpoint_config(path, DUAL_TOWER_FILES))


def checkpoint_type(path: str | Path) -> str:
    """Which model a checkpoint folder (or a training output's `best/`) holds: its `model_type`, "dtrec" when none
    (`dtrec.baselines.baseline_of` checks that a baseline's is registered)."""
    return read_checkpoint_config(checkpoint_folder(path)).get("model_type", "dtrec")


# --------------------------------------------------------------------------- nearest-neighbour index (dtrec.index)
INDEX_KINDS = ("flat", "hnsw", "ivfpq")
INDEX_REFINE = ("none", "sq8", "flat")


@dataclass(frozen=True)
class IndexSpec:
    """One FAISS index of item embeddings: its kind and the parameters of that kind (dtrec.index.ItemIndex).

    "flat": exact. "hnsw": graph of `hnsw_m` links, built with `ef_construction`, searched with
    `ef_search`. "ivfpq": trained from `ivfpq_min_items` vectors (exact below), `nprobe` lists searched,
    the `k_factor * k` best PQ candidates re-ranked with "sq8" | "flat" vectors (`refine`, or "none").
    """

    kind: str = "flat"
    ef_search: int = 64
    hnsw_m: int = 32
    ef_construction: int = 80
    nprobe: int = 16
    ivfpq_min_items: int = 10_000
    refine: str = "sq8"
    k_factor: int = 32

    def __post_init__(self):
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind must be one of {', '.join(INDEX_KINDS)}, not {self.kind!r}")
        if self.refine not in INDEX_REFINE:
            raise ValueError(f"refine must be one of {', '.join(INDEX_REFINE)}, not {self.refine!r}")
        if int(self.k_factor) < 1:
            raise ValueError(f"k_factor must be at least 1, not {self.k_factor}")
        for name in ("ef_search", "hnsw_m", "ef_construction", "nprobe", "ivfpq_min_items", "k_factor"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def params(self) -> dict[str, Any]:
        """The parameters without the kind, as `ItemIndex.params` holds them."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kind"}


# --------------------------------------------------------------------------- serving (dtrec.service)
@dataclass
class ServeConfig:
    """The Recommender service (dtrec.service): where things live and the limits on user input."""

    model: str = ""  # checkpoint folder or Hub repo id
    catalog: str = ""  # catalog folder (items.parquet, images/, features/)
    store_dir: str = ""  # writable folder for the SQLite store, uploaded images and the index
    index: str = "flat"  # the index kind, one of INDEX_KINDS
    index_params: dict[str, Any] = field(default_factory=dict)  # IndexSpec fields other than `kind`; unset: defaults
    device: str | None = None  # None: CUDA when available, else CPU
    max_upload_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_title_chars: int = 200
    max_text_chars: int = 2000
    max_history: int = 200
    max_uploads: int = 1000  # uploaded items kept at most (all sessions together)
    max_upload_total_bytes: int = 200 * 1024 * 1024  # stored upload images + text, all sessions together
    upload_overflow: str = "refuse"  # past a cap: "refuse" with a message | "evict" the oldest uploads
    # "public": every visitor sees every upload | "session": only the session that made it |
    # "auto": session on a Hugging Face Space ($SPACE_ID set), public elsewhere
    upload_visibility: str = "auto"
    # Per-visitor limits under session visibility (a public demo), so that no one visitor can crowd
    # out the others: live uploads one browser session may hold, uploads one client address may make
    # per `client_window_s`, and how long a session may stay idle before its private uploads expire.
    max_uploads_per_session: int = 20
    max_uploads_per_client: int = 30
    client_window_s: float = 600.0
    session_ttl_s: float = 3600.0
    max_k: int = 100
    thumbnail_px: int = 256
    encoder_device: str | None = None  # frozen encoder for uploads/search; None: same as `device`

    def __post_init__(self):
        if "kind" in self.index_params:
            raise ValueError("ServeConfig.index names the index kind; index_params holds the other IndexSpec fields")
        IndexSpec(self.index, **self.index_params)  # an unknown kind or parameter fails here, not at start-up
        for name in ("max_upload_bytes", "max_pixels", "max_title_chars", "max_text_chars", "max_history",
                     "max_uploads", "max_upload_total_bytes", "max_k", "thumbnail_px",
                     "max_uploads_per_session", "max_uploads_per_client"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeConfig.{name} must be at least 1")
        if self.client_window_s <= 0 or self.session_ttl_s <= 0:
            raise ValueError("ServeConfig.client_window_s and session_ttl_s must be positive")
        if self.upload_overflow not in ("refuse", "evict"):
            raise ValueError(f"upload_overflow must be 'refuse' or 'evict', not {self.upload_overflow!r}")
        if self.upload_visibility not in ("auto", "public", "session"):
            raise ValueError(f"upload_visibility must be 'auto', 'public' or 'session', not {self.upload_visibility!r}")

    @property
    def index_spec(self) -> IndexSpec:
        """The index the service builds: kind `index` with `index_params`."""
        return IndexSpec(self.index, **self.index_params)
