"""Full-ranking metrics, batched evaluation, and `dtrec evaluate --json` (checkpoint loading: test_scoring.py)."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch

from dtrec.cli import main
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.eval import evaluate, rank_metrics, target_ranks
from dtrec.results import METRIC_KEYS

NAN = float("nan")


def test_rank_counts_higher_items_and_ties_pessimistically():
    s = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.9, 0.5, 0.5, 0.1], [0.0, 0.0, 0.0, 0.0]])
    assert target_ranks(s, torch.tensor([1, 0, 3])).tolist() == [2, 0, 3]


def test_metrics_match_hand_computed_values():
    s = torch.tensor([[0.9, 0.5, 0.5, 0.1], [0.3, 0.2, 0.1, 0.4]])
    m = rank_metrics(s, torch.tensor([1, 2]), ks=(1, 3), ties="pessimistic")  # ranks 2 and 3
    assert m["recall@1"].tolist() == [0.0, 0.0]
    assert m["recall@3"].tolist() == [1.0, 0.0]
    assert m["ndcg@3"][0].item() == pytest.approx(1 / math.log2(4))
    assert m["ndcg@3"][1].item() == 0.0
    assert m["mrr"].tolist() == pytest.approx([1 / 3, 1 / 4])


def test_nan_scores_rank_below_every_number():
    s = torch.tensor([[NAN, 0.2, NAN, -5.0], [NAN, 0.2, NAN, -5.0]])
    ranks = target_ranks(s, torch.tensor([3, 0]))
    # a real score beats both NaNs; a NaN target sits below the numbers and the other NaN
    assert ranks.tolist() == [1, 3]


def test_bad_targets_raise_value_error():
    with pytest.raises(ValueError, match="outside"):
        rank_metrics(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="targets"):
        rank_metrics(torch.zeros(2, 3), torch.tensor([0]))


def _hashed_scores(n_items: int):
    """A deterministic scorer whose scores depend only on each history."""

    def score(histories):
        rows = []
        for h in histories:
            g = torch.Generator().manual_seed(hash(tuple(h)) % (2**31))
            rows.append(torch.randn(n_items, generator=g))
        return torch.stack(rows)

    return score


def test_batching_gives_the_same_result_as_one_batch():
    rng = random.Random(0)
    cases = [([rng.randrange(30) for _ in range(rng.randrange(1, 6))], rng.randrange(30)) for _ in range(53)]
    calls: list[int] = []
    fn = _hashed_scores(30)

    def counted(h):
        calls.append(len(h))
        return fn(h)

    one = evaluate(fn, cases, batch_size=1000)
    many = evaluate(counted, cases, batch_size=7)
    assert max(calls) == 7 and sum(calls) == 53
    assert one["n"] == many["n"] == 53
    for k in METRIC_KEYS:
        assert many[k] == pytest.approx(one[k])
    assert 0 < one["mrr"] < 1


def test_standard_error_is_the_per_case_spread_over_sqrt_n_in_any_batching():
    rng = random.Random(3)
    cases = [([rng.randrange(30) for _ in range(rng.randrange(1, 6))], rng.randrange(30)) for _ in range(41)]
    fn = _hashed_scores(30)
    res = evaluate(fn, cases, batch_size=6, standard_error=True)
    assert "se" not in evaluate(fn, cases)  # off by default: the output's keys stay as they were
    scores = fn([h for h, _ in cases])
    per_case = rank_metrics(scores, torch.tensor([t for _, t in cases]))
    for k in METRIC_KEYS:
        v = per_case[k]
        assert res[k] == pytest.approx(float(v.mean()))
        assert res["se"][k] == pytest.approx(float(v.std(unbiased=True)) / math.sqrt(len(cases)))
    assert res["se"]["mrr"] > 0
    assert math.isnan(evaluate(fn, cases[:1], standard_error=True)["se"]["mrr"])  # one case has no spread


def test_exclude_history_removes_seen_items():
    # item 0 always scores highest; it is in the history, so excluding it lifts the target to rank 0
    fn = lambda hs: torch.tensor([[5.0, 1.0, 0.0]] * len(hs))  # noqa: E731
    assert evaluate(fn, [([0], 1)])["mrr"] == pytest.approx(0.5)
    assert evaluate(fn, [([0], 1)], exclude_history=True)["mrr"] == pytest.approx(1.0)


def test_perfect_scorer_gets_full_marks():
    fn = lambda hs: torch.nn.functional.one_hot(torch.tensor([h[-1] + 1 for h in hs]), 10).float()  # noqa: E731
    res = evaluate(fn, [([i], i + 1) for i in range(9)])
    assert all(res[k] == pytest.approx(1.0) for k in METRIC_KEYS)


# --------------------------------------------------------------------------- checkpoints and CLI
def _tiny_dataset(path, cold: bool) -> Dataset:
    n = 12
    rng = random.Random(1)
    seqs = [[rng.randrange(n) for _ in range(6)] for _ in range(20)]
    cold_items = sorted({s[-1] for s in seqs[:4]}) if cold else []
    ds = Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(n)]),
                 Interactions([f"u{u}" for u in range(20)], seqs), name="tiny", cold_items=cold_items)
    ds.save(path)
    return ds


@pytest.mark.parametrize("cold", [False, True])
def test_evaluate_json_contract_and_cold_start_key(tmp_path, capsys, cold):
    ds = _tiny_dataset(tmp_path / "data", cold)
    assert main(["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pop")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pop"), "--data", str(tmp_path / "data"), "--json"]) == 0
    out = capsys.readouterr().out
    res = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert set(res) == ({"valid", "test", "cold_start"} if cold else {"valid", "test"})
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pop"), "--data", str(tmp_path / "data"), "--json",
                 "--standard-error"]) == 0
    with_se = json.loads(capsys.readouterr().out)
    assert with_se["test"]["ndcg@10"] == res["test"]["ndcg@10"] and 0 < with_se["test"]["se"]["mrr"] < 1
    for split in res.values():
        for k in METRIC_KEYS:
            assert isinstance(split[k], float) and 0.0 <= split[k] <= 1.0
    assert res["test"]["n"] == len(ds.eval_cases("test"))
    if cold:
        assert res["cold_start"]["n"] == len(ds.cold_cases("test")) > 0
        assert "note" in res["cold_start"]
        # cold items are never in training, so popularity gives them zero counts and the worst ranks
        assert res["cold_start"]["recall@10"] < 1.0


def test_evaluate_rejects_a_folder_without_checkpoint(tmp_path, capsys):
    _tiny_dataset(tmp_path / "data", False)
    rc = main(["evaluate", "--checkpoint", str(tmp_path), "--data", str(tmp_path / "data"), "--json"])
    assert rc == 2
    assert "config.json" in capsys.readouterr().err


def _run_recipe(script: str, out, **env: str) -> None:
    """Run `scripts/<script>` on the real Scientific data into `out` (skips when the data is absent)."""
    repo = Path(__file__).resolve().parent.parent
    data = Path(os.environ.get("DTREC_DATA", repo.parent / "shared" / "data"))
    if not (data / "amazon-scientific" / "Scientific.item2index").exists():
        pytest.skip(f"Amazon Scientific data not found under {data} (set DTREC_DATA)")
    env = dict(os.environ, DTREC_DATA=str(data), DTREC_DEVICE="cpu", HF_HUB_OFFLINE="1", **env)
    subprocess.run(["bash", str(repo / "scripts" / script), str(out)], env=env, check=True, timeout=1200)


@pytest.mark.slow
def test_scientific_recipe_smoke_run(tmp_path):
    """The whole Scientific recipe at toy sizes writes results.json with every model and the meta record."""
    out = tmp_path / "run"
    _run_recipe("scientific.sh", out, DTREC_COLD="0", DTREC_EPOCHS="1",
                DTREC_PRETRAIN_ARGS="--max-steps 1 --d-model 32 --d-ff 64 --n-heads 2 --quiet",
                DTREC_FINETUNE_ARGS="--max-steps 1 --quiet", DTREC_SASREC_ARGS="--hidden 16")
    res = json.loads((out / "results.json").read_text())
    assert {"popularity", "sasrec", "dtrec", "meta"} <= set(res)
    for name in ("popularity", "sasrec", "dtrec"):
        assert set(res[name]) == {"valid", "test"} and res[name]["test"]["n"] == 2928
    assert res["meta"]["seed"] == 42 and any(c.startswith("dtrec finetune") for c in res["meta"]["commands"])


@pytest.mark.slow
def test_scientific_adaptor_recipe_smoke_run(tmp_path):
    """The adaptor recipe at toy sizes writes both protocols' results with every model, the echo share included."""
    out = tmp_path / "run"
    _run_recipe("scientific_adaptor.sh", out, DTREC_SEED="1", DTREC_FINETUNE_ARGS="--max-steps 1 --epochs 1",
                DTREC_SASREC_EPOCHS="1", DTREC_SASREC_ARGS="--hidden 16")
    for name, protocol in (("results.json", "reference"), ("results-serving.json", "serving")):
        res = json.loads((out / name).read_text())
        assert {"popularity", "content-knn", "sasrec", "dtrec-adaptor", "meta"} <= set(res)
        for model in ("popularity", "content-knn", "sasrec", "dtrec-adaptor"):
            assert res[model]["test"]["n"] == 2928 and res[model]["test"]["protocol"] == protocol
            assert 0.0 <= res[model]["test"]["last_item_first"] <= 1.0
        assert res["meta"]["seed"] == 1
    train = json.loads((out / "dtrec" / "train_config.json").read_text())["config"]
    assert train["model"]["tower"] == "adaptor" and train["negatives"] == "all"


def test_evaluate_exclude_history_is_the_serving_protocol(tmp_path, capsys):
    # Item 0 is the most popular and every user's test target, and it is already in each history:
    # nothing hidden, popularity ranks it first; history hidden, it ranks last.
    seqs = [[0, 1 + u % 5, 0, 6 + u % 3, 0] for u in range(10)]
    Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(12)]),
            Interactions([f"u{u}" for u in range(10)], seqs), name="repeat").save(tmp_path / "data")
    assert main(["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pop")]) == 0
    capsys.readouterr()
    runs = {}
    for flag in ([], ["--exclude-history"]):
        assert main(["evaluate", "--checkpoint", str(tmp_path / "pop"), "--data", str(tmp_path / "data"), "--json",
                     *flag]) == 0
        cap = capsys.readouterr()
        assert cap.err == "", "nothing but the project's own output on stderr"
        runs[bool(flag)] = json.loads(cap.out)
    assert runs[False]["test"]["protocol"] == "reference" and runs[True]["test"]["protocol"] == "serving"
    assert runs[False]["test"]["recall@10"] == 1.0 and runs[False]["test"]["mrr"] == 1.0
    assert runs[True]["test"]["recall@10"] == 0.0
    assert main(["evaluate", "--checkpoint", str(tmp_path / "pop"), "--data", str(tmp_path / "data"),
                 "--exclude-history"]) == 0
    assert "protocol: serving (history hidden)" in capsys.readouterr().out


def test_evaluate_refuses_a_catalog_without_interactions(tmp_path, capsys):
    _tiny_dataset(tmp_path / "data", False)
    main(["baseline", "popularity", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "pop")])
    Dataset(Catalog([Item(f"i{i}", f"item {i}", "") for i in range(12)]), Interactions([], []),
            name="catalog").save(tmp_path / "catalog")
    capsys.readouterr()
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "pop"), "--data", str(tmp_path / "catalog")])
    assert rc == 2 and "catalog without interactions" in capsys.readouterr().err


def test_expected_ties_give_fractional_credit():
    # target 0 ties with 3 other items, one item scores higher: rank uniform over 1..4
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.9, 0.5, 0.1]])
    got = rank_metrics(scores, torch.tensor([0]), ks=(2, 10), ties="expected")
    ranks = [1, 2, 3, 4]
    assert got["recall@2"].item() == pytest.approx(sum(r < 2 for r in ranks) / 4)
    assert got["recall@10"].item() == pytest.approx(1.0)
    assert got["ndcg@2"].item() == pytest.approx(sum(1 / math.log2(r + 2) for r in ranks if r < 2) / 4)
    assert got["ndcg@10"].item() == pytest.approx(sum(1 / math.log2(r + 2) for r in ranks) / 4)
    assert got["mrr"].item() == pytest.approx(sum(1 / (r + 1) for r in ranks) / 4)
    # without ties both rules agree; a constant scorer earns chance, not nothing
    distinct = torch.tensor([[0.3, 0.9, 0.1, 0.5]])
    a = rank_metrics(distinct, torch.tensor([3]), ties="expected")
    b = rank_metrics(distinct, torch.tensor([3]), ties="pessimistic")
    assert all(torch.equal(a[k], b[k]) for k in a)  # exactly: an untied MRR of 1 is 1, not 1 - 1e-16
    top = rank_metrics(torch.tensor([[0.9, 0.1, 0.2]]), torch.tensor([0]), ties="expected")
    assert top["mrr"].item() == 1.0 and top["ndcg@10"].item() == 1.0
    const = rank_metrics(torch.zeros(1, 100), torch.tensor([7]), ks=(10,))  # the default rule: expected
    assert const["recall@10"].item() == pytest.approx(0.1)
    assert rank_metrics(torch.zeros(1, 100), torch.tensor([7]), ks=(10,), ties="pessimistic")["recall@10"].item() == 0.0
    with pytest.raises(ValueError, match="ties"):
        rank_metrics(distinct, torch.tensor([3]), ties="optimistic")


def test_evaluate_counts_ties_and_last_item_echoes():
    # items 0..4; the scorer puts the last history item first for histories ending in 0 or 1
    def score(histories):
        out = torch.zeros(len(histories), 5)
        for b, h in enumerate(histories):
            out[b] = torch.tensor([0.1, 0.2, 0.3, 0.3, 0.0])
            if h[-1] in (0, 1):
                out[b, h[-1]] = 1.0
        return out

    cases = [([2, 0], 1), ([1], 3), ([4], 2), ([3, 4], 4)]
    res = evaluate(score, cases, batch_size=3)
    assert res["last_item_first"] == pytest.approx(2 / 4)
    assert res["n_tied"] == 2  # targets 3 and 2 tie with each other (0.3)
    hidden = evaluate(score, cases, batch_size=3, exclude_history=True)
    assert hidden["last_item_first"] == pytest.approx(2 / 4), "measured before the history is hidden"


def test_ranked_first_agrees_with_the_rank():
    from dtrec.eval import ranked_first

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (64, 9), generator=g).float()  # many ties, at the top too
    scores[3, 2] = NAN
    scores[5] = NAN
    scores[7, :] = 1.0
    items = torch.randint(0, 9, (64,), generator=g)
    items[:10] = scores[:10].nan_to_num(-1).argmax(1)
    assert torch.equal(ranked_first(scores, items), target_ranks(scores, items) == 0)
    assert ranked_first(scores, items)[:10].any() and not ranked_first(scores, items)[7]
