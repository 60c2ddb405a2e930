"""SASRec (Kang & McAuley, 2018), the ID-based baseline, as RecBole's cross-entropy variant.

Item IDs get learned embeddings (row 0 is padding, item i is row i + 1), learned
absolute positions over a left-padded window of `max_len`, causal Transformer
blocks, and a softmax over *all* items against the shared item embedding table —
the SASRec that UniSRec and MISSRec report. Being ID-based it cannot rank an item
it never saw in training: such an item keeps its random initial embedding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from safetensors.torch import load_file
from torch import nn

from dtrec.data.catalog import Dataset
from dtrec.eval import evaluate
from dtrec.model.dropout import use_fast_dropout
from dtrec.model.repeat import RepeatBias, history_offsets, repeat_offsets_at
from dtrec.model.tower import load_state_checked
from dtrec.modelcard import checkpoint_card
from dtrec.sequences import build_examples, pad, padded_width
from dtrec.train import distributed as D
from dtrec.train.batching import GROUP_BATCHES, length_grouped_batches
from dtrec.train.loop import FitConfig, Task, fit, seed_everything, train_step


@dataclass
class SASRecConfig:
    """Architecture of a SASRec checkpoint (RecBole's defaults); saved as config.json."""

    num_items: int
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 256
    dropout: float = 0.5
    attn_dropout: float = 0.5
    max_len: int = 50
    repeat_bias: bool = False  # dtrec's repeat term (dtrec/model/repeat.py), for a like-with-like comparison
    # Where position 0 is: "end" counts back from the newest item, which always sits at the last place;
    # "start" counts from the oldest item of the window, as RecBole does (its sequences are right-padded).
    positions: str = "end"
    model_type: str = "sasrec"

    def __post_init__(self):
        if self.positions not in ("end", "start"):
            raise ValueError(f"positions must be 'end' or 'start', not {self.positions!r}")


@dataclass
class SASRecTrainConfig:
    """How a SASRec baseline is trained; written beside the checkpoint."""

    epochs: int = 200
    batch_size: int = 256
    group_by_length: bool = True  # as dtrec fine-tuning: batches of similar length, less padding
    pad_multiple: int = 1  # as dtrec fine-tuning: batch widths rounded up to a multiple (fewer GPU shapes)
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    seed: int = 42
    eval_batch_size: int = 1024
    device: str | None = None
    # RecBole's training data: one example per prefix of each sequence, its loss at the last position only
    # (`training_prefixes`). Off: the causal windows every position of which predicts (`training_windows`).
    prefixes: bool = False


class SASRec(nn.Module, PyTorchModelHubMixin):
    """Causal self-attention over item IDs, predicting the next item at every position."""

    def __init__(self, config: SASRecConfig):
        super().__init__()
        if isinstance(config, dict):
            config = SASRecConfig(**config)
        if config.model_type != "sasrec":
            raise ValueError(f"config model_type is {config.model_type!r}, not 'sasrec'")
        self.config = config
        c = config
        self.item_emb = nn.Embedding(c.num_items + 1, c.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(c.max_len, c.hidden)
        self.emb_norm = nn.LayerNorm(c.hidden, eps=1e-12)
        self.emb_drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(
            c.hidden, c.n_heads, c.d_ff, dropout=c.dropout, activation="gelu", batch_first=True, norm_first=False,
            layer_norm_eps=1e-12,
        )
        # nn.TransformerEncoderLayer shares one dropout rate; RecBole's separate attention
        # dropout is applied by overriding the attention module's rate.
        layer.self_attn.dropout = c.attn_dropout
        self.encoder = nn.TransformerEncoder(layer, c.n_layers, enable_nested_tensor=False)
        use_fast_dropout(self)  # as dtrec's encoder: the benchmark compares the models, not their dropout
        self.apply(self._init_weights)
        # Logits are unnormalised dot products (tens of units), so the offsets get a larger scale than dtrec's cosines.
        self.repeat_bias = RepeatBias(c.max_len, scale=100.0) if c.repeat_bias else None

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # RecBole's initialisation; PyTorch's defaults train noticeably worse here.
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.data.normal_(0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, nn.MultiheadAttention):
            m.in_proj_weight.data.normal_(0.0, 0.02)
            m.in_proj_bias.data.zero_()
        if isinstance(m, nn.LayerNorm):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, hidden) of left-padded `seq` (B, L) of rows (item index + 1, 0 = pad)."""
        L = seq.shape[1]
        pos = torch.arange(self.config.max_len - L, self.config.max_len, device=seq.device).unsqueeze(0)
        if self.config.positions == "start":  # the first real item of each row at 0; padding clamped there too
            pos = (torch.arange(L, device=seq.device).unsqueeze(0) - (seq == 0).sum(1, keepdim=True)).clamp(min=0)
        x = self.item_emb(seq) + self.pos_emb(pos)
        x = self.emb_drop(self.emb_norm(x))
        causal = torch.triu(torch.ones(L, L, dtype=torch.bool, device=seq.device), diagonal=1)
        # Causal mask plus padding keys; every position may still see itself so that a
        # padding row never has all keys masked (which would give NaN).
        pad = seq == 0
        mask = causal.unsqueeze(0) | pad.unsqueeze(1)
        mask = mask & ~torch.eye(L, dtype=torch.bool, device=seq.device).unsqueeze(0)
        mask = mask.repeat_interleave(self.config.n_heads, dim=0)
        return self.encoder(x, mask=mask)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every item (..., N) for hidden states (..., hidden); padding excluded."""
        return hidden @ self.item_emb.weight[1:].T

    def offsets(self, seq: torch.Tensor, queries: torch.Tensor) -> torch.Tensor | None:
        """Training's repeat term (K, N) at the `queries` (B, L) positions of left-padded windows `seq`; None without one."""
        if self.repeat_bias is None:
            return None
        return repeat_offsets_at(self.repeat_bias.values(), seq - 1, seq == 0, self.config.num_items, queries)

    def encode_histories(self, histories: list[list[int]]) -> torch.Tensor:
        """Left-padded (B, L) tensor of the last `max_len` items of each history, on the model's device."""
        # Pad only to the longest history in the batch: positions count from the end, so
        # a shorter window gives the same result at a fraction of the cost.
        L = max(1, min(self.config.max_len, max((len(h) for h in histories), default=1)))
        return (pad([list(h[-L:]) for h in histories], L, left=True) + 1).to(self.item_emb.weight.device)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card `save_pretrained` writes beside the weights: what this baseline is and scores."""
        c = self.config
        return checkpoint_card(
            "SASRec baseline (dtrec)",
            f"An ID-based SASRec (hidden {c.hidden}, {c.n_layers} layers, window {c.max_len}"
            + (", with dtrec's repeat term" if c.repeat_bias else "") + f") trained by `dtrec baseline sasrec`. "
            f"It learns one embedding per item ID, so it scores only the catalog it was trained on "
            f"({c.num_items} items, in that catalog's order). `dtrec evaluate --checkpoint FOLDER --data DIR` "
            "evaluates it on that data set.",
            ["recommendation", "sequential-recommendation", "baseline"])

    @torch.no_grad()
    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, N) next-item scores for each history (item indices, oldest first)."""
        was = self.training
        self.eval()
        seq = self.encode_histories(histories)
        h = self.forward(seq)[:, -1]
        self.train(was)
        out = self.logits(h).float()
        if self.repeat_bias is None:
            return out
        whole = [list(history) for history in histories]  # the term reads past the window (model.md)
        return out + history_offsets(self.repeat_bias.values().float(), whole, self.config.num_items)


def training_windows(sequences: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) left-padded windows covering every next-item target of every sequence.

    The windows are the causal examples of `dtrec.sequences.build_examples`: a sequence longer
    than `max_len + 1` is cut into consecutive windows from its end, so each target is
    predicted once, with up to `max_len` items of context.
    """
    examples = build_examples(sequences, "causal", max_len)
    if not examples:
        raise ValueError("no training sequence has two or more items: nothing to train SASRec on")
    rows = pad(examples, max_len + 1, left=True) + 1  # item i is row i + 1, 0 is padding
    x = rows[:, :-1].contiguous()
    # a window's first item is only context: no target where the input is padding
    return x, rows[:, 1:].masked_fill(x == 0, 0)


def training_prefixes(sequences: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) as RecBole's sequential data: one left-padded example per prefix of every sequence
    (its last `max_len` items) with a target only at the last position; every next-item target once."""
    inputs = [s[max(0, t - max_len):t] for s in sequences for t in range(1, len(s))]
    if not inputs:
        raise ValueError("no training sequence has two or more items: nothing to train SASRec on")
    targets = torch.tensor([s[t] + 1 for s in sequences for t in range(1, len(s))])
    x = pad(inputs, max_len, left=True) + 1  # item i is row i + 1, 0 is padding
    y = torch.zeros_like(x)
    y[:, -1] = targets
    return x, y


def trim_padding(x: torch.Tensor, y: torch.Tensor, pad_multiple: int,
                 max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded windows without the columns that are padding in every row (width rounded up to `pad_multiple`)."""
    width = padded_width(int((x > 0).sum(1).max()), pad_multiple, max_len)
    return x[:, -width:], y[:, -width:]


def sasrec_step(model: SASRec, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
                amp: bool = False, forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """One SASRec update on windows `x` -> `y` on the model's device: softmax over all items at every target.

    `amp` runs the forward pass under bf16 autocast; `forward` replaces `model.forward` (e.g. compiled).
    Returns the loss."""
    def compute() -> torch.Tensor:
        h = (forward or model)(x)
        keep = y > 0
        logits = model.logits(h[keep]).float()
        offsets = model.offsets(x, keep)
        if offsets is not None:
            logits = logits + offsets
        return F.cross_entropy(logits, y[keep] - 1)

    return train_step(model, optimizer, compute, x.device.type, amp=amp, grad_clip=None)


class SASRecTask(Task):
    """SASRec as a `fit` task: length-grouped window batches through `sasrec_step`; the best weights kept in memory
    and, with `out`, written there as they improve (so a run cut short leaves its best epoch)."""

    name = "sasrec"

    def __init__(self, model: SASRec, optimizer: torch.optim.Optimizer, windows: tuple[torch.Tensor, torch.Tensor],
                 valid: list, train: SASRecTrainConfig, device: torch.device, out: Path | None = None):
        self.model, self.optimizer, self.valid, self.train, self.device, self.out = (
            model, optimizer, valid, train, device, out)
        self.x_all, self.y_all = windows
        self.lengths = (self.x_all > 0).sum(1).tolist()
        # One generator for the whole run (its state travels in OUT/last/, so a resumed run draws what an
        # uninterrupted one would, and a seed's batches are what they were before runs could resume).
        self.generator = torch.Generator().manual_seed(train.seed)
        self.best_state: dict[str, torch.Tensor] | None = None

    def batches(self, epoch: int) -> list[list[int]]:
        """The next epoch's batches of window indices."""
        group = GROUP_BATCHES if self.train.group_by_length else 1
        return length_grouped_batches(self.lengths, self.train.batch_size, self.generator, group)

    def step(self, idx: list[int]) -> torch.Tensor:
        """`sasrec_step` on the windows `idx`, trimmed of all-padding columns."""
        x, y = trim_padding(self.x_all[idx], self.y_all[idx], self.train.pad_multiple, self.model.config.max_len)
        return sasrec_step(self.model, self.optimizer, x.to(self.device), y.to(self.device))

    def validate(self) -> dict[str, float]:
        """Full-ranking metrics on the validation cases (NDCG@10 of 0 when there are none)."""
        self.model.eval()
        return evaluate(self.model.scores, self.valid, batch_size=self.train.eval_batch_size) if self.valid else {
            "ndcg@10": 0.0}

    def save_checkpoint(self) -> None:
        """A CPU copy of the current weights, and with `out` the checkpoint there."""
        self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        if self.out is not None:  # file by file through a temporary folder: a kill mid-write keeps the last best
            tmp = self.out / ".best.tmp"
            self.model.save_pretrained(tmp)
            for f in tmp.iterdir():
                f.replace(self.out / f.name)
            tmp.rmdir()

    def extra_state(self) -> dict[str, Any]:
        """The batch generator's state."""
        return {"generator": self.generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Continue the batch generator where the interrupted run left it."""
        if "generator" in state:
            self.generator.set_state(state["generator"])


def train_sasrec(
    dataset: Dataset,
    config: SASRecConfig | None = None,
    train: SASRecTrainConfig | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> tuple[SASRec, dict]:
    """Train SASRec on `dataset.train_sequences()`, keep the best epoch by valid NDCG@10.

    Returns the best model (on CPU) and a report with its valid metrics and the per-epoch log. With `out`, the best
    checkpoint is written there as it improves, with `OUT/last/` after every epoch (which `resume` continues from,
    drawing the same batches and dropout as an uninterrupted run), `metrics.jsonl`, `train_config.json` and at the
    end `train_log.json`.
    """
    train = train or SASRecTrainConfig()
    config = config or SASRecConfig(num_items=len(dataset.catalog))
    if config.num_items != len(dataset.catalog):
        raise ValueError(f"config has {config.num_items} items but the data set has {len(dataset.catalog)}")
    out = Path(out) if out is not None else None
    if resume and out is None:
        raise ValueError("resuming needs the output folder of the run to continue")
    seed_everything(train.seed)
    device = torch.device(train.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    layout = training_prefixes if train.prefixes else training_windows
    windows = layout(dataset.train_sequences(), config.max_len)
    model = SASRec(config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    task = SASRecTask(model, opt, windows, dataset.eval_cases("valid"), train, device, out)
    record = dict(config=train, model=asdict(config), seed=train.seed,
                  dataset=str(dataset.root) if dataset.root else dataset.name)
    fitted = fit(task, FitConfig(epochs=train.epochs, metric="ndcg@10", patience=train.patience,
                                 resumable=out is not None),
                 out=out, info=D.DistInfo(device=device), resume=resume, progress=progress,
                 record=record if out is not None else None)
    rows = fitted.rows
    if out is not None:  # a resumed run's log starts before this process did
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    log = [{"epoch": r["epoch"], "loss": r["loss"], "valid": {k[len("valid_"):]: v for k, v in r.items()
                                                             if k.startswith("valid_")},
            "seconds": r["seconds"] + r["eval_seconds"]} for r in rows]
    best_epoch = fitted.best_epoch
    if task.best_state is not None:
        model.load_state_dict(task.best_state)
    elif out is not None:  # resumed after its best epoch: the best weights are those written then
        load_state_checked(model, load_file(str(out / "model.safetensors"), device=str(device)), source=str(out))
    model = model.cpu().eval()
    report = {
        "model_type": "sasrec",
        "best_epoch": best_epoch,
        "valid": fitted.best_metrics,
        "config": asdict(config),
        "train": asdict(train),
        "log": log,
    }
    if out is not None:
        (out / "train_log.json").write_text(json.dumps(report, indent=2))
    return model, report
