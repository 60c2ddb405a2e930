"""The training loop (dtrec.train.loop): the three trainers reproduce the numbers of a recorded run, and `fit`'s
early stopping, evaluation schedule and step budget.

tests/fixtures/golden_training.json holds the per-epoch losses and validation metrics of tiny CPU runs of
fine-tuning (causal and Cloze), pretraining and SASRec, written by the trainers' separate loops before they
shared one; regenerate it (only for an intended change of numbers) with

    PYTHONPATH=. python tests/test_loop.py

On the machine that wrote it the runs match it bit for bit; elsewhere a CPU's kernels may round differently,
so the comparison allows float noise.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dtrec.baselines.sasrec import SASRecConfig, SASRecTrainConfig, train_sasrec
from dtrec.config import ModelConfig, PretrainConfig
from dtrec.eval import evaluate
from dtrec.train.finetune import finetune
from dtrec.train.pretrain import pretrain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import paired_features, planted_dataset, tiny_finetune_config  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_training.json"
VOLATILE = ("seconds", "eval_seconds")  # wall-clock times


def _rows(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(x).items() if k not in VOLATILE} for x in path.read_text().splitlines()]


def golden_runs(tmp: Path) -> dict[str, Any]:
    """Tiny seeded CPU runs of every trainer: per-epoch rows without timings, best epoch, valid and test metrics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: CPU reductions then split the same way on every run
    try:
        out: dict[str, Any] = {}
        ds, f = planted_dataset(n_items=30, n_users=40)
        runs = {
            # evaluated every second epoch; a step too large to improve twice stops it early (patience 1)
            "finetune_causal": dict(model={"objective": "causal", "dropout": 0.1, "emb_dropout": 0.1}, epochs=8,
                                    eval_every=2, batch_size=16, lr=0.1, patience=1),
            # sampled negatives (their logQ table) and a step budget that ends the second epoch early
            "finetune_cloze": dict(model={"objective": "cloze", "dropout": 0.1}, epochs=3, batch_size=16,
                                   negatives="sampled", num_negatives=8, max_steps=20),
        }
        for name, kw in runs.items():
            result = finetune(ds, f, tiny_finetune_config(f, **kw), tmp / name, progress=False)
            out[name] = {"rows": _rows(tmp / name / "metrics.jsonl"), **result}

        m = ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.1, emb_dropout=0.1, max_len=4)
        cfg = PretrainConfig(model=m, epochs=2, batch_size=32, lr=3e-3, amp=False, device="cpu", max_steps=3)
        pretrain([(None, paired_features(n=64))], cfg, tmp / "pretrain", progress=False)
        out["pretrain"] = {"rows": _rows(tmp / "pretrain" / "metrics.jsonl")}

        sas = SASRecConfig(num_items=len(ds.catalog), hidden=16, n_layers=1, n_heads=2, d_ff=32, max_len=8,
                           dropout=0.1, attn_dropout=0.1)
        train = SASRecTrainConfig(epochs=8, batch_size=16, lr=0.1, patience=1, device="cpu", seed=0)  # stops early
        model, report = train_sasrec(ds, sas, train, progress=False)
        out["sasrec"] = {"rows": [{k: v for k, v in r.items() if k not in VOLATILE} for r in report["log"]],
                         "best_epoch": report["best_epoch"], "valid": report["valid"],
                         "test": evaluate(model.scores, ds.eval_cases("test"))}
        return out
    finally:
        torch.set_num_threads(threads)


def _close(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (where, sorted(got), sorted(want))
        for k in want:
            _close(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (where, got, want)
        for i, (a, b) in enumerate(zip(got, want)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(want, float):
        assert math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6), (where, got, want)
    else:
        assert got == want, (where, got, want)


def test_trainers_reproduce_the_recorded_runs(tmp_path):
    _close(golden_runs(tmp_path), json.loads(GOLDEN.read_text()), "golden")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        data = golden_runs(Path(d))
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else GOLDEN
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}")
