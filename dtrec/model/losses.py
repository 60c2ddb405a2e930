"""Training losses: the retrieval loss of fine-tuning, the InfoNCE and neighbour distillation of pretraining.

All functions avoid data-dependent shapes (no boolean indexing, no `unique`), so
they run on a GPU without host synchronisation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Finite stand-in for -inf: masked logits then carry zero probability without NaN gradients.
_NEG = -1e9


def retrieval_loss(
    queries: Tensor,
    targets: Tensor,
    candidates: Tensor,
    temperature: float,
    log_q: Tensor | None = None,
    exclude: Tensor | None = None,
    offsets: Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy of cosine(query, candidate) / temperature; `targets` index `candidates` (-1: skip).

    `log_q` (C,) subtracts each candidate's log sampling probability (logQ
    correction); `exclude` (P, C) bool hides candidates from a query's softmax;
    `offsets` (P, C) are added to the cosines (the repeat term, `dtrec.model.repeat`).
    """
    # float32 even under autocast: bf16 cannot resolve cosines divided by a small temperature.
    with torch.autocast(queries.device.type, enabled=False):
        scores = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
        if offsets is not None:
            scores = scores + offsets.float()
        logits = scores / temperature
        if log_q is not None:
            logits = logits - log_q.float()
        if exclude is not None:
            logits = logits.masked_fill(exclude, _NEG)
        return F.cross_entropy(logits, targets, ignore_index=-1)


def candidate_set(
    targets: Tensor,
    num_items: int,
    negatives: str = "all",
    num_negatives: int = 1024,
    item_log_freq: Tensor | None = None,
    generator: torch.Generator | None = None,
    held_out: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Candidates for `retrieval_loss`: (candidate item ids, label columns, log_q, exclude).

    `targets` (P,) holds item ids, -1 where a position predicts nothing (its label
    is then -1, ignored by the loss). `all`: every item, no correction (the
    reference). `in_batch`: the batch's own targets, corrected by their log
    training frequency `item_log_freq`. `sampled`: the batch's targets plus
    `num_negatives` uniform samples, corrected by the log of the mixture they
    were drawn from. Copies of a query's own target are never its negatives.
    `held_out` (num_items,) bool marks items kept out of training (the cold-start
    items): they are never candidates, so the model cannot learn to rank them down.
    """
    device = targets.device
    if negatives == "all":
        exclude = held_out.to(device).unsqueeze(0) if held_out is not None else None
        return torch.arange(num_items, device=device), targets, None, exclude
    if negatives not in ("in_batch", "sampled"):
        raise ValueError(f"negatives must be 'all', 'in_batch' or 'sampled', not {negatives!r}")
    if item_log_freq is None:
        raise ValueError(f"negatives={negatives!r} needs item_log_freq for the logQ correction")
    p = targets.shape[0]
    valid = targets >= 0
    log_f = item_log_freq.to(device)
    cand = targets.clamp(min=0)
    cand_ok = valid
    if negatives == "in_batch":
        log_q = log_f[cand]
    else:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        neg = torch.randint(num_items, (num_negatives,), generator=generator, device=gen_device).to(device)
        cand = torch.cat([cand, neg])
        cand_ok = torch.cat([valid, torch.ones(num_negatives, dtype=torch.bool, device=device)])
        if held_out is not None:  # a held-out draw is dropped, as if the uniform draw were over the rest
            cand_ok = cand_ok & ~held_out.to(device)[cand]
        n_uniform = num_items - (int(held_out.sum()) if held_out is not None else 0)
        # Candidates are n_valid draws from the training frequency and S from the uniform distribution.
        n_valid = valid.sum().float()
        mix = (n_valid * log_f.exp() + num_negatives / max(n_uniform, 1)) / (n_valid + num_negatives)
        log_q = mix[cand].log()
    cols = torch.arange(p, device=device)
    exclude = (cand.unsqueeze(0) == targets.unsqueeze(1)) | ~cand_ok.unsqueeze(0)
    exclude[cols, cols] = False
    labels = torch.where(valid, cols, torch.full_like(cols, -1))
    return cand, labels, log_q, exclude


def item_log_frequency(sequences: list[list[int]], num_items: int) -> Tensor:
    """Log of each item's (add-one smoothed) share of training interactions."""
    counts = torch.ones(num_items, dtype=torch.float64)
    flat = [i for s in sequences for i in s]
    if flat:
        counts += torch.bincount(torch.tensor(flat, dtype=torch.long), minlength=num_items).double()
    return (counts / counts.sum()).log().float()


def info_nce(a: Tensor, b: Tensor, temperature: float, valid: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: row i of `a` and of `b` are a positive pair, other rows negatives.

    Rows with `valid[i] == False` take no part, neither as anchor nor as negative.
    """
    with torch.autocast(a.device.type, enabled=False):
        return _info_nce(a.float(), b.float(), temperature, valid)


def _info_nce(a: Tensor, b: Tensor, temperature: float, valid: Tensor | None) -> Tensor:
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    n = logits.shape[0]
    labels = torch.arange(n, device=logits.device)
    if valid is None:
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    valid = valid.bool()
    pair_ok = valid.unsqueeze(0) & valid.unsqueeze(1)
    # Invalid rows keep their own diagonal so their (zero-weighted) loss stays finite.
    pair_ok = pair_ok | torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(~pair_ok, _NEG)
    per_row = 0.5 * (F.cross_entropy(logits, labels, reduction="none")
                     + F.cross_entropy(logits.T, labels, reduction="none"))
    w = valid.float()
    return (per_row * w).sum() / w.sum().clamp(min=1.0)


def cross_modal_accuracy(queries: Tensor, keys: Tensor) -> float:
    """Top-1 accuracy of retrieving row i of `keys` from row i of `queries` by cosine."""
    if queries.shape[0] == 0:
        return math.nan
    sims = F.normalize(queries.float(), dim=-1) @ F.normalize(keys.float(), dim=-1).T
    return float((sims.argmax(1) == torch.arange(sims.shape[0], device=sims.device)).float().mean())


def neighbour_distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """KL(teacher || student) between each row's softmax over the other rows' cosines / temperature, mean over rows.

    Keeps the student space's neighbourhoods (the item tower) those of the teacher (the frozen features), so
    what a pretrained item tower learns from its domains does not cost the content similarity a new domain
    needs. Rows are never their own neighbours."""
    with torch.autocast(student.device.type, enabled=False):
        n = student.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=student.device)

        def logits(x: Tensor) -> Tensor:
            x = F.normalize(x.float(), dim=-1)
            return (x @ x.T / temperature).masked_fill(self_mask, _NEG)

        target = F.softmax(logits(teacher.detach()), dim=-1)
        return F.kl_div(F.log_softmax(logits(student), dim=-1), target, reduction="batchmean")
