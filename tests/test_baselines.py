"""Popularity and SASRec baselines: fitting, learning, saving, and the `dtrec baseline` command."""

from __future__ import annotations

import json
import random

import pytest
import torch

from dtrec.baselines import load_baseline
from dtrec.baselines.popularity import PopularityModel
from dtrec.baselines.sasrec import (SASRec, SASRecConfig, SASRecTask, SASRecTrainConfig, train_sasrec,
                                   training_prefixes, training_windows)
from dtrec.cli import main
from dtrec.config import checkpoint_type
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.eval import evaluate


def _dataset(seqs: list[list[int]], n: int, cold: list[int] | None = None) -> Dataset:
    return Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(n)]),
                   Interactions([f"u{u}" for u in range(len(seqs))], seqs), name="tiny", cold_items=cold or [])


def _planted(n_items: int = 40, n_users: int = 300, length: int = 10, seed: int = 0) -> Dataset:
    """Histories where the next item is always (7 * last + 3) mod n_items."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n_users):
        s = [rng.randrange(n_items)]
        while len(s) < length:
            s.append((s[-1] * 7 + 3) % n_items)
        seqs.append(s)
    return _dataset(seqs, n_items)


def test_popularity_counts_training_part_only_and_skips_cold_items():
    # last two items of each history are valid/test; item 4 is cold
    ds = _dataset([[0, 0, 1, 4, 2, 3], [1, 4, 2, 3]], 5, cold=[4])
    m = PopularityModel.fit(ds)
    assert m.counts.tolist() == [2.0, 2.0, 0.0, 0.0, 0.0]
    s = m.scores([[0], [1, 2]])
    assert s.shape == (2, 5) and torch.equal(s[0], s[1])


def test_popularity_save_load_round_trip(tmp_path):
    m = PopularityModel.fit(_dataset([[0, 2, 2, 1, 1], [2, 0, 1, 1]], 3))
    m.save_pretrained(tmp_path / "pop")
    assert checkpoint_type(tmp_path / "pop") == "popularity"
    back = load_baseline(tmp_path / "pop")
    assert isinstance(back, PopularityModel) and torch.equal(back.counts, m.counts)


def test_training_windows_cover_every_target_once():
    seq = list(range(12))
    x, y = training_windows([seq, [5], [3, 4]], max_len=4)
    targets = sorted(int(t) - 1 for t in y.flatten() if t > 0)
    assert targets == sorted(list(range(1, 12)) + [4])
    # in these consecutive sequences each input position holds the item just before its target
    keep = y > 0
    assert torch.all(y[keep] - x[keep] == 1)
    assert torch.all(x[~keep] == 0)


def test_training_prefixes_are_recboles_examples():
    seq = list(range(12))
    x, y = training_prefixes([seq, [5], [3, 4]], max_len=4)
    assert x.shape == y.shape == (11 + 1, 4)
    assert torch.all(y[:, :-1] == 0)  # the loss only at the last position
    assert sorted(int(t) - 1 for t in y[:, -1]) == sorted(list(range(1, 12)) + [4])
    # the prefix before target 9 is its last four items, left-padded prefixes for the first targets
    row = int((y[:, -1] == 9 + 1).nonzero())
    assert x[row].tolist() == [6, 7, 8, 9]  # items 5..8, as rows (item + 1)
    row = int((y[:, -1] == 1 + 1).nonzero())
    assert x[row].tolist() == [0, 0, 0, 1]  # item 0 alone, after padding
    # every example's last input is the item just before its target in these consecutive sequences
    assert torch.all(y[:, -1] - x[:, -1] == 1)


def test_sasrec_learns_a_planted_pattern_from_either_layout():
    for prefixes in (False, True):
        torch.manual_seed(0)
        ds = _planted(n_users=160, length=8)
        cfg = SASRecConfig(num_items=40, hidden=32, n_layers=1, dropout=0.1, attn_dropout=0.1, max_len=8)
        train = SASRecTrainConfig(epochs=12, lr=1e-2, batch_size=32, patience=3, device="cpu", seed=0,
                                  prefixes=prefixes)
        model, report = train_sasrec(ds, cfg, train, progress=False)
        res = evaluate(model.scores, ds.eval_cases("test"))
        assert res["recall@10"] >= 0.9, (prefixes, res)
        assert report["valid"]["ndcg@10"] == max(e["valid"]["ndcg@10"] for e in report["log"])
        assert report["train"]["prefixes"] is prefixes


def test_sasrec_with_the_repeat_term_learns_to_rank_history_down_and_reloads(tmp_path):
    torch.manual_seed(0)
    ds = _planted(n_users=160, length=8)  # the planted next item is never one the user had
    cfg = SASRecConfig(num_items=40, hidden=32, n_layers=1, dropout=0.1, attn_dropout=0.1, max_len=8, repeat_bias=True)
    train = SASRecTrainConfig(epochs=6, lr=1e-2, batch_size=32, patience=3, device="cpu", seed=0)
    model, _ = train_sasrec(ds, cfg, train, out=tmp_path / "s", progress=False)
    w = model.repeat_bias.values().detach()
    assert w[0] < -0.02
    h = [[1, 2, 3], [8], []]
    plain = model.logits(model.forward(model.encode_histories(h))[:, -1]).float()
    torch.testing.assert_close(model.scores(h)[0, 3] - plain[0, 3], w[0])  # the last item's offset
    torch.testing.assert_close(model.scores(h)[2], plain[2])  # an empty history has nothing to offset
    back = load_baseline(tmp_path / "s")
    assert back.config.repeat_bias and torch.allclose(back.scores(h), model.scores(h))


def test_sasrec_positions_count_from_the_newest_or_as_recbole_from_the_oldest_item(tmp_path):
    inputs = {}
    for positions in ("end", "start"):
        torch.manual_seed(0)
        model = SASRec(SASRecConfig(num_items=9, hidden=16, max_len=5, positions=positions)).eval()
        model.emb_norm.register_forward_hook(lambda m, args, out, p=positions: inputs.__setitem__(p, args[0]))
        seq = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])  # rows: item index + 1, 0 = padding
        model(seq)
        e, p = model.item_emb.weight, model.pos_emb.weight
        if positions == "end":  # the newest item at the last place, in every row
            torch.testing.assert_close(inputs[positions][0, 2:], e[[3, 4]] + p[[3, 4]])
            torch.testing.assert_close(inputs[positions][1], e[[1, 2, 3, 4]] + p[[1, 2, 3, 4]])
        else:  # the oldest real item at place 0, however much padding precedes it
            torch.testing.assert_close(inputs[positions][0, 2:], e[[3, 4]] + p[[0, 1]])
            torch.testing.assert_close(inputs[positions][1], e[[1, 2, 3, 4]] + p[[0, 1, 2, 3]])
            # trimming padding columns (as training batches do) changes nothing
            torch.testing.assert_close(model(seq[:1, 2:])[0, -1], model(seq[:1])[0, -1])
            model.save_pretrained(tmp_path / "s")
            assert load_baseline(tmp_path / "s").config.positions == "start"
    with pytest.raises(ValueError, match="positions"):
        SASRecConfig(num_items=9, positions="middle")


def test_sasrec_scores_are_finite_for_empty_and_long_histories():
    model = SASRec(SASRecConfig(num_items=7, hidden=16, max_len=4)).eval()
    s = model.scores([[], list(range(7)) * 3, [1]])
    assert s.shape == (3, 7) and torch.isfinite(s).all()
    # only the last max_len items matter
    assert torch.allclose(model.scores([[0, 1, 2, 3, 4, 5]]), model.scores([[2, 3, 4, 5]]), atol=1e-5)


def test_sasrec_save_load_gives_identical_scores(tmp_path):
    model = SASRec(SASRecConfig(num_items=9, hidden=16, max_len=5)).eval()
    model.save_pretrained(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["model_type"] == "sasrec" and cfg["num_items"] == 9
    back = load_baseline(tmp_path / "s")
    h = [[1, 2, 3], [8]]
    assert torch.allclose(back.scores(h), model.scores(h))


def test_baseline_command_writes_checkpoint_and_valid_json(tmp_path, capsys):
    _planted(n_items=20, n_users=40, length=6).save(tmp_path / "data")
    rc = main(["baseline", "sasrec", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "sas"),
               "--epochs", "2", "--hidden", "16", "--d-ff", "32", "--max-len", "8", "--seed", "3", "--device", "cpu",
               "--no-group-by-length"])
    assert rc == 0
    valid = json.loads((tmp_path / "sas" / "valid.json").read_text())
    assert valid["n"] == 40 and 0.0 <= valid["ndcg@10"] <= 1.0
    log = json.loads((tmp_path / "sas" / "train_log.json").read_text())
    assert log["train"]["seed"] == 3 and len(log["log"]) == 2 and log["train"]["group_by_length"] is False
    back = load_baseline(tmp_path / "sas")
    assert back.config.max_len == 8 and back.config.d_ff == 32


def test_sasrec_resumed_run_is_the_uninterrupted_run_and_a_cut_run_leaves_its_best_epoch(tmp_path, monkeypatch):
    _planted(n_items=20, n_users=40, length=6).save(tmp_path / "data")
    args = ["baseline", "sasrec", "--data", str(tmp_path / "data"), "--hidden", "16", "--d-ff", "32",
            "--max-len", "8", "--seed", "3", "--device", "cpu", "--lr", "0.01", "--batch-size", "8", "--epochs", "4"]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "train_log.json").read_text())

    # the same run killed while validating its third epoch (epochs 0 and 1 done)
    validate, calls = SASRecTask.validate, []
    def validate_then_die(task):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return validate(task)
    monkeypatch.setattr(SASRecTask, "validate", validate_then_die)
    with pytest.raises(KeyboardInterrupt):
        main([*args, "--out", str(tmp_path / "cut")])
    monkeypatch.setattr(SASRecTask, "validate", validate)
    # what it leaves is its best epoch so far: the model a two-epoch run returns
    two, _ = train_sasrec(Dataset.load(tmp_path / "data"),
                          SASRecConfig(num_items=20, hidden=16, d_ff=32, max_len=8),
                          SASRecTrainConfig(epochs=2, seed=3, device="cpu", lr=0.01, batch_size=8), progress=False)
    h = [[1, 2, 3], [8], []]
    assert torch.equal(load_baseline(tmp_path / "cut").scores(h), two.scores(h))

    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = json.loads((tmp_path / "cut" / "train_log.json").read_text())
    # the same batches and dropout draws: the same losses and validation, epoch by epoch, and the same weights
    assert [(r["loss"], r["valid"]) for r in resumed["log"]] == [(r["loss"], r["valid"]) for r in whole["log"]]
    assert len(resumed["log"]) == 4 and resumed["best_epoch"] == whole["best_epoch"]
    assert torch.equal(load_baseline(tmp_path / "cut").scores(h), load_baseline(tmp_path / "whole").scores(h))
    assert json.loads((tmp_path / "cut" / "valid.json").read_text()) == whole["valid"]


def test_sasrec_refuses_to_resume_with_other_settings_or_without_a_run(tmp_path):
    ds = _planted(n_items=20, n_users=40, length=6)
    cfg = SASRecConfig(num_items=20, hidden=16, d_ff=32, max_len=8)
    train = SASRecTrainConfig(epochs=1, batch_size=8, device="cpu", seed=0)
    with pytest.raises(FileNotFoundError, match="holds no run to resume"):
        train_sasrec(ds, cfg, train, out=tmp_path / "s", progress=False, resume=True)
    train_sasrec(ds, cfg, train, out=tmp_path / "s", progress=False)
    with pytest.raises(ValueError, match=r"lr 0\.01 \(the run: 0\.001\)"):
        train_sasrec(ds, cfg, SASRecTrainConfig(epochs=2, batch_size=8, device="cpu", seed=0, lr=0.01),
                     out=tmp_path / "s", progress=False, resume=True)
    with pytest.raises(ValueError, match="hidden 32"):
        train_sasrec(ds, SASRecConfig(num_items=20, hidden=32, d_ff=32, max_len=8), train, out=tmp_path / "s",
                     progress=False, resume=True)
    # more epochs and another patience are what resuming is for
    _, report = train_sasrec(ds, cfg, SASRecTrainConfig(epochs=2, batch_size=8, device="cpu", seed=0, patience=3),
                             out=tmp_path / "s", progress=False, resume=True)
    assert [r["epoch"] for r in report["log"]] == [0, 1]


def test_a_saved_sasrec_carries_a_card_that_says_it_scores_its_own_catalog_only(tmp_path):
    SASRec(SASRecConfig(num_items=20, hidden=16, d_ff=32, max_len=8, repeat_bias=True)).save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "scores only the catalog it was trained on (20 items" in card and "with dtrec's repeat term" in card
    assert "license" not in card.split("---")[1] and "More Information Needed" not in card


def test_baseline_resume_is_refused_for_a_kind_with_no_training_to_continue(tmp_path, capsys):
    _planted(n_items=20, n_users=40, length=6).save(tmp_path / "data")
    args = ["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pop")]
    assert main([*args, "--resume"]) == 2
    assert "popularity baseline has no training to resume (--resume applies to sasrec)" in capsys.readouterr().err
    assert not (tmp_path / "pop").exists()  # nothing was started afresh in its place
    assert main(args) == 0


def test_baseline_command_rejects_unknown_model(tmp_path):
    with pytest.raises(SystemExit):
        main(["baseline", "bpr", "--data", str(tmp_path), "--out", str(tmp_path / "x")])


def test_content_knn_ranks_by_the_frozen_features(tmp_path, capsys):
    from dtrec.features import Features, cache_path

    # items 2k and 2k+1 are near-duplicates in text: the next item is always the last one's twin
    n = 12
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n // 2, 8, generator=g)
    text = torch.repeat_interleave(base, 2, 0) + 0.01 * torch.randn(n, 8, generator=g)
    seqs = [[(2 * u) % n, (2 * u + 5) % n, (2 * u + 6) % n, (2 * u + 7) % n] for u in range(n // 2)]
    ds = Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(n)]),
                 Interactions([f"u{u}" for u in range(n // 2)], seqs), name="twins")
    ds.save(tmp_path / "data")
    Features("toy", {"text": text, "image": torch.randn(n, 4, generator=g)},
             {"text": torch.ones(n, dtype=torch.bool), "image": torch.zeros(n, dtype=torch.bool)},
             ds.catalog.fingerprint()).save(cache_path(tmp_path / "data", "toy"))
    assert main(["baseline", "content-knn", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "knn"),
                 "--encoder", "toy"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "knn"), "--data", str(tmp_path / "data"), "--json",
                 "--exclude-history"]) == 0
    res = json.loads(capsys.readouterr().out)
    # with the history (and so the last item itself) hidden, the twin is the nearest item
    assert res["test"]["recall@10"] == 1.0 and res["test"]["mrr"] == 1.0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "knn"), "--data", str(tmp_path / "data"), "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert ref["test"]["last_item_first"] == 1.0  # nothing hidden: an item is its own nearest neighbour
    assert main(["baseline", "content-knn", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "k2")]) == 2
    assert "needs --encoder" in capsys.readouterr().err
    assert main(["baseline", "content-knn", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "k3"),
                 "--encoder", "toy", "--epochs", "3"]) == 2
    assert "no option(s) epochs" in capsys.readouterr().err
