"""Training: batches, fine-tuning on a planted pattern, resume, pretraining, CLI, DDP."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dtrec.config import ModelConfig, PretrainConfig
from dtrec.features import Features, cache_path
from dtrec.model import DualTower
from dtrec.sequences import build_examples, padded_width
from dtrec.train.batching import BatchPlan, Collator, length_grouped_batches
from dtrec.train.finetune import finetune
from dtrec.train.pretrain import pretrain
from synthetic import paired_features, planted_dataset, tiny_finetune_config, tiny_model_config

ROOT = Path(__file__).resolve().parents[1]


def test_collator_pads_to_the_batch_longest_and_always_masks_the_last_item():
    col = Collator("cloze", mask_prob=0.5, seed=0)
    b = col([[1, 2, 3], [4, 5]])
    assert b["items"].shape == (2, 3) and b["padding"][1].tolist() == [False, False, True]
    assert b["masked"][0, 2] and b["masked"][1, 1] and not b["masked"][1, 2]
    assert (b["targets"][b["masked"]] == b["items"][b["masked"]]).all()
    assert (b["targets"][~b["masked"]] == -1).all()
    c = Collator("causal")([[1, 2, 3], [4, 5]])
    assert c["items"].tolist() == [[1, 2], [4, -1]] and c["targets"].tolist() == [[2, 3], [5, -1]]



def _collate_reference(examples, objective, mask_prob, seed):
    """The plain per-example loop the vectorised collator replaced."""
    g = torch.Generator().manual_seed(seed)
    b = len(examples)
    causal = objective == "causal"
    length = max(len(e) for e in examples) - (1 if causal else 0)
    items = torch.full((b, length), -1, dtype=torch.long)
    targets = torch.full((b, length), -1, dtype=torch.long)
    padding = torch.ones(b, length, dtype=torch.bool)
    for i, e in enumerate(examples):
        n = len(e) - 1 if causal else len(e)
        items[i, :n] = torch.tensor(e[:-1] if causal else e)
        if causal:
            targets[i, :n] = torch.tensor(e[1:])
        padding[i, :n] = False
    if causal:
        return {"items": items, "padding": padding, "masked": None, "targets": targets}
    lengths = (~padding).sum(1)
    masked = (torch.rand(b, length, generator=g) < mask_prob) & ~padding
    masked[torch.arange(b), lengths - 1] = True
    return {"items": items, "padding": padding, "masked": masked, "targets": torch.where(masked, items, targets)}


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_vectorised_collator_matches_the_per_example_loop(objective):
    rng = torch.Generator().manual_seed(1)
    for trial in range(5):
        lens = torch.randint(2, 12, (int(torch.randint(1, 9, (1,), generator=rng)),), generator=rng).tolist()
        examples = [torch.randint(0, 500, (n,), generator=rng).tolist() for n in lens]
        got = Collator(objective, mask_prob=0.3, seed=trial)(examples)
        ref = _collate_reference(examples, objective, 0.3, trial)
        for k in ("items", "padding", "targets", "masked"):
            assert (got[k] is None) == (ref[k] is None), k
            if ref[k] is not None:
                assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), (k, examples)


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_rounded_batch_widths_leave_the_loss_unchanged(objective):
    """Extra padding columns are masked everywhere: same masks, targets and loss as the tight batch."""
    from dtrec.train.finetune import FinetuneObjective

    ds, feats = planted_dataset(seed=0)
    cfg = ModelConfig(encoder=feats.encoder, modality_dims=feats.dims, d_model=32, n_heads=2, d_ff=64, max_len=8,
                      objective=objective)
    torch.manual_seed(0)
    model = DualTower(cfg).eval()  # no dropout: both batches must see the same function
    objective_fn = FinetuneObjective(model, feats, "all", 0, None)
    examples = [e for e in build_examples(ds.train_sequences(), objective, cfg.max_len) if len(e) <= 5][:24]
    cap = cfg.max_len + (objective == "cloze")
    tight = Collator(objective, mask_prob=0.3, seed=5)(examples)
    for multiple in (3, 7, 16):  # 16: capped at the model's positions
        wide = Collator(objective, mask_prob=0.3, seed=5, pad_multiple=multiple, max_length=cap)(examples)
        width = wide["items"].shape[1]
        assert width == padded_width(tight["items"].shape[1], multiple, cap) and width > tight["items"].shape[1]
        w = tight["items"].shape[1]
        for k in ("items", "padding", "targets", "masked"):
            if tight[k] is not None:
                assert torch.equal(wide[k][:, :w], tight[k]), k
        assert wide["padding"][:, w:].all() and (wide["targets"][:, w:] == -1).all()
        with torch.no_grad():
            losses = [objective_fn(b["items"], b["padding"], b["masked"], b["targets"]) for b in (tight, wide)]
        assert torch.allclose(losses[0], losses[1], rtol=1e-5), losses


def _padding(lengths, batches):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouped_batches_cover_every_example_once_with_less_padding():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 22, (1000,), generator=g).tolist()
    grouped = length_grouped_batches(lengths, 64, torch.Generator().manual_seed(1), group=8)
    plain = length_grouped_batches(lengths, 64, torch.Generator().manual_seed(1), group=1)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert len(batches) == 16 and all(1 <= len(b) <= 64 for b in batches)
    assert _padding(lengths, grouped) < 0.3 * _padding(lengths, plain)
    # batch order is shuffled, not sorted by length, and the draw depends on the generator only
    firsts = [max(lengths[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    assert grouped == length_grouped_batches(lengths, 64, torch.Generator().manual_seed(1), group=8)
    assert grouped != length_grouped_batches(lengths, 64, torch.Generator().manual_seed(2), group=8)


def test_batch_plan_splits_each_global_batch_over_ranks():
    lengths = [2 + i % 7 for i in range(101)]
    one = BatchPlan(lengths, 10, seed=3)
    ranks = [BatchPlan(lengths, 10, seed=3, world_size=2, rank=r) for r in (0, 1)]
    for plan in (one, *ranks):
        plan.set_epoch(4)
    glob, r0, r1 = list(one), list(ranks[0]), list(ranks[1])
    assert len(glob) == len(r0) == len(r1) == len(one) == 11
    for g_, a, b in zip(glob, r0, r1):
        assert sorted(a + b) == sorted(g_ if len(g_) >= 2 else g_ * 2)  # a 1-item last batch is repeated
        assert a and b
    one.set_epoch(5)
    assert list(one) != glob  # each epoch draws again; the same epoch draws the same (exact resume)
    one.set_epoch(4)
    assert list(one) == glob
    assert sorted(i for b in BatchPlan(lengths, 10, group_by_length=False) for i in b) == list(range(101))

def test_model_learns_a_planted_next_item_pattern(tmp_path):
    ds, f = planted_dataset(n_items=40, n_users=160)
    cfg = tiny_finetune_config(f, model={"objective": "causal"}, epochs=8)
    result = finetune(ds, f, cfg, tmp_path, progress=False)
    assert result["test"]["recall@10"] >= 0.9
    assert (tmp_path / "valid.json").exists() and (tmp_path / "test.json").exists()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    best = DualTower.from_pretrained(str(tmp_path / "best"))
    assert best.config.objective == "causal" and best.config.encoder == "synthetic"


def test_finetune_on_a_subset_of_modalities(tmp_path):
    ds, f = planted_dataset(n_items=40, n_users=160)
    cfg = tiny_finetune_config(f, model={"objective": "causal"}, epochs=6, modalities="text")
    result = finetune(ds, f, cfg, tmp_path, progress=False)
    best = DualTower.from_pretrained(str(tmp_path / "best"))
    assert best.config.modality_dims == {"text": 16}
    assert result["test"]["recall@10"] > 0.5  # it learns the planted pattern from text alone (chance: 0.25)
    assert best.item_embeddings(f).shape == (40, best.config.d_model)  # evaluated over the full cache
    with pytest.raises(ValueError, match="modalities audio not among the features' text, image"):
        finetune(ds, f, tiny_finetune_config(f, epochs=1, modalities="text,audio"), tmp_path / "bad", progress=False)


@pytest.mark.parametrize("negatives", ["all", "sampled"])
def test_cold_items_take_no_part_in_the_training_loss(negatives):
    from dtrec.model.losses import item_log_frequency
    from dtrec.train.finetune import FinetuneObjective

    ds, f = planted_dataset(n_items=40, n_users=40)
    model = DualTower(tiny_model_config(f, tower="adaptor"))
    held = torch.zeros(40, dtype=torch.bool)
    held[[3, 17, 31]] = True
    log_f = item_log_frequency(ds.train_sequences(), 40)
    items = torch.tensor([[1, 2, 4, 5], [8, 9, 10, 11]])
    targets = torch.tensor([[2, 4, 5, 6], [9, 10, 11, 12]])
    padding = torch.zeros_like(items, dtype=torch.bool)

    def loss(table):
        torch.manual_seed(0)
        obj = FinetuneObjective(model, table, negatives, 64, log_f, held_out=held).eval()
        return obj(items, padding, None, targets)

    def copies_of_targets(rows):  # these items now look exactly like the targets: strong competitors
        vals = {m: v.clone() for m, v in f.values.items()}
        for v in vals.values():
            v[rows] = v[[6, 12, 5]]
        return Features(f.encoder, vals, f.present)

    assert torch.equal(loss(f), loss(copies_of_targets(held)))  # held-out items are not candidates
    assert loss(copies_of_targets([20, 21, 22])) > loss(f) + 0.05  # other items are (the gain: about 0.09)


@pytest.mark.parametrize("negatives", ["in_batch", "sampled"])
def test_cheaper_negatives_train_too(tmp_path, negatives):
    ds, f = planted_dataset(n_items=40, n_users=120)
    cfg = tiny_finetune_config(f, model={"objective": "causal"}, epochs=3, negatives=negatives, num_negatives=16,
                               evaluate_test=False)
    result = finetune(ds, f, cfg, tmp_path, progress=False)
    assert result["valid"]["recall@10"] > 0.5  # chance is 0.25


def test_resume_continues_exactly_where_training_stopped(tmp_path):
    ds, f = planted_dataset(n_items=30, n_users=40)
    kw = dict(model={"objective": "cloze", "dropout": 0.1}, evaluate_test=False)
    finetune(ds, f, tiny_finetune_config(f, epochs=2, **kw), tmp_path / "full", progress=False)
    finetune(ds, f, tiny_finetune_config(f, epochs=1, **kw), tmp_path / "part", progress=False)
    finetune(ds, f, tiny_finetune_config(f, epochs=2, **kw), tmp_path / "part", resume=True, progress=False)
    a = DualTower.from_pretrained(str(tmp_path / "full" / "last")).state_dict()
    b = DualTower.from_pretrained(str(tmp_path / "part" / "last")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [0, 1]


def test_resume_refuses_other_settings_and_keeps_the_record_of_the_start(tmp_path):
    ds, f = planted_dataset(n_items=30, n_users=40)
    kw = dict(model={"objective": "causal"}, evaluate_test=False)
    with pytest.raises(FileNotFoundError, match="holds no run to resume"):
        finetune(ds, f, tiny_finetune_config(f, epochs=1, **kw), tmp_path / "run", resume=True, progress=False)
    DualTower(tiny_model_config(f, max_len=4)).save_pretrained(tmp_path / "pre")  # a shorter window: one note
    finetune(ds, f, tiny_finetune_config(f, epochs=1, **kw), tmp_path / "run", progress=False, init=tmp_path / "pre")
    started = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert started["init_notes"]
    with pytest.raises(ValueError, match=r"cannot resume .* lr 0\.01 \(the run: 0\.003\)"):
        finetune(ds, f, tiny_finetune_config(f, epochs=2, lr=0.01, **kw), tmp_path / "run", resume=True,
                 progress=False)
    with pytest.raises(ValueError, match=r"model\.max_len 6 \(the run: 10\)"):
        finetune(ds, f, tiny_finetune_config(f, epochs=2, model={"objective": "causal", "max_len": 6},
                                             evaluate_test=False), tmp_path / "run", resume=True, progress=False)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1  # a refusal writes nothing
    # more epochs and another patience are what resuming is for; the record still names the init it started from
    finetune(ds, f, tiny_finetune_config(f, epochs=2, patience=5, **kw), tmp_path / "run", resume=True,
             progress=False)
    rec = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert rec["init"] == str(tmp_path / "pre") and rec["init_notes"] == started["init_notes"]
    assert "resumed_git_commit" in rec and rec["git_commit"] == started["git_commit"]
    assert rec["config"]["epochs"] == 2 and rec["config"]["patience"] == 5


def test_pretraining_aligns_modalities(tmp_path):
    f = paired_features(n=96)
    model = ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.1, emb_dropout=0.1, max_len=4)
    cfg = PretrainConfig(model=model, epochs=8, batch_size=48, lr=3e-3, weight_decay=0.0, amp=False, device="cpu")
    pretrain([(None, f)], cfg, tmp_path, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["text_to_image@1"] > max(0.5, rows[0]["text_to_image@1"] + 0.2)  # chance: 1/86
    assert DualTower.from_pretrained(str(tmp_path)).config.modality_dims == {"text": 16, "image": 12}


def _write_dataset(root: Path, n_users=80):
    ds, f = planted_dataset(n_items=30, n_users=n_users)
    ds.save(root)
    Features(f.encoder, f.values, f.present, ds.catalog.fingerprint()).save(cache_path(root, "synthetic"))
    return ds, f


def _cli(*args, env=None, timeout=300):
    cmd = [sys.executable, "-m", "dtrec.cli", *map(str, args)]
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=e)




@pytest.mark.slow
def test_cli_pretrain_then_finetune_from_it(tmp_path):
    _write_dataset(tmp_path / "data")
    small = ["--d-model", 32, "--n-heads", 4, "--d-ff", 64, "--n-layers", 1, "--device", "cpu", "--no-amp", "--quiet"]
    r = _cli("pretrain", "--data", tmp_path / "data", "--encoder", "synthetic", "--out", tmp_path / "pre",
             "--epochs", 1, "--batch-size", 16, "--max-len", 4, "--objective", "causal", "--repeat-bias",
             "--content-lags", 2, *small)
    assert r.returncode == 0, r.stderr
    r = _cli("finetune", "--data", tmp_path / "data", "--encoder", "synthetic", "--out", tmp_path / "ft",
             "--init", tmp_path / "pre", "--epochs", 2, "--batch-size", 32, "--max-len", 6, "--objective", "causal",
             *small)
    assert r.returncode == 0, r.stderr
    assert "settings unlike the init's" in r.stderr and "max_len 6 (the init: 4)" in r.stderr
    rec = json.loads((tmp_path / "ft" / "train_config.json").read_text())
    assert rec["config"]["model"]["max_len"] == 6 and rec["seed"] == 42 and rec["init"].endswith("pre")
    # The repeat and content terms have weights: unless given, they come with the init, as the architecture does.
    assert rec["config"]["model"]["repeat_bias"] is True and not any("dropped" in n for n in rec["init_notes"])
    assert rec["config"]["model"]["content_lags"] == 2
    assert any("position" in n for n in rec["init_notes"])
    assert json.loads((tmp_path / "ft" / "valid.json").read_text())["n"] == 80
    assert DualTower.from_pretrained(str(tmp_path / "ft" / "best")).config.max_len == 6
    # Resuming needs only the folder: data, encoder and settings come from its record; --epochs extends it.
    r = _cli("finetune", "--out", tmp_path / "ft", "--resume", "--epochs", 3, "--quiet")
    assert r.returncode == 0, r.stderr
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_cli_training_without_data_is_one_clear_error_unless_resuming(tmp_path):
    r = _cli("finetune", "--out", tmp_path / "ft")
    assert r.returncode == 2 and "--data and --encoder are required" in r.stderr and "Traceback" not in r.stderr
    r = _cli("pretrain", "--out", tmp_path / "pre", "--resume")
    assert r.returncode == 2 and "nothing to resume" in r.stderr and "Traceback" not in r.stderr


def test_cli_reports_a_missing_feature_cache_in_one_line(tmp_path):
    _write_dataset(tmp_path / "data")
    r = _cli("finetune", "--data", tmp_path / "data", "--encoder", "offline", "--out", tmp_path / "ft")
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def _loss_of_first_epoch(out: Path) -> float:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]


@pytest.mark.slow
def test_two_process_torchrun_matches_single_process(tmp_path):
    # Equal-length histories give every process the same number of predicted positions,
    # so the mean of per-process losses equals the single-process loss.
    ds, f = planted_dataset(n_items=30, n_users=64, length=(6, 6))
    ds.save(tmp_path / "data")
    Features(f.encoder, f.values, f.present, ds.catalog.fingerprint()).save(cache_path(tmp_path / "data", "synthetic"))
    args = ["finetune", "--data", tmp_path / "data", "--encoder", "synthetic", "--epochs", 2, "--batch-size", 16,
            "--objective", "causal", "--dropout", 0, "--emb-dropout", 0, "--d-model", 32, "--n-heads", 4,
            "--d-ff", 64, "--n-layers", 1, "--device", "cpu", "--no-amp", "--quiet", "--no-evaluate-test"]
    single = _cli(*args, "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dtrec.cli", *map(str, args),
           "--out", str(tmp_path / "two")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    two = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    for epoch in (0, 1):
        a = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[epoch])
        b = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[epoch])
        assert abs(a["loss"] - b["loss"]) < 1e-4 * max(1.0, abs(a["loss"]))
        assert abs(a["valid_ndcg@10"] - b["valid_ndcg@10"]) < 1e-3


_PRETRAIN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from synthetic import paired_features
from dtrec.config import ModelConfig, PretrainConfig
from dtrec.train.pretrain import pretrain
m = ModelConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, dropout=0.0, emb_dropout=0.0, max_len=4)
cfg = PretrainConfig(model=m, epochs=2, batch_size=32, lr=3e-3, amp=False, device="cpu")
pretrain([(None, paired_features(n=64))], cfg, sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_two_process_pretraining_gathers_negatives_like_one_process(tmp_path):
    script = tmp_path / "pre.py"
    script.write_text(_PRETRAIN_SCRIPT.format(tests=str(ROOT / "tests")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == 2 and all(abs(x - y) < 1e-4 for x, y in zip(a, b))


def test_auto_negatives_follow_catalog_size_and_are_recorded(tmp_path):
    from dtrec.config import FULL_SOFTMAX_MAX_ITEMS, FinetuneConfig, resolve_negatives

    assert FinetuneConfig().negatives == "auto"
    assert resolve_negatives("auto", FULL_SOFTMAX_MAX_ITEMS) == "all"
    assert resolve_negatives("auto", FULL_SOFTMAX_MAX_ITEMS + 1) == "sampled"
    assert resolve_negatives("in_batch", 10) == "in_batch"
    ds, f = planted_dataset(n_items=30, n_users=40)
    cfg = tiny_finetune_config(f, epochs=1, negatives="auto", evaluate_test=False)
    finetune(ds, f, cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "train_config.json").read_text())
    assert record["config"]["negatives"] == "all"


def test_pretraining_domains_with_the_same_item_ids_stay_apart():
    from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
    from dtrec.train.pretrain import item_table

    sources = []
    for k, name in enumerate(("food", "beauty")):
        cat = Catalog([Item(str(i), f"{name} {i}", "") for i in range(1, 4)])  # ids 1..3 in both domains
        ds = Dataset(cat, Interactions([], []), name=name, cold_items=[0] if k else [])
        text = torch.full((3, 4), float(k + 1))
        # the second domain has no images at all: its column is a broadcast zero row, as the cache loads it
        image = torch.ones(3, 2) if k == 0 else torch.zeros(1, 2).expand(3, 2)
        present = {"text": torch.ones(3, dtype=torch.bool), "image": torch.full((3,), k == 0)}
        sources.append((ds, Features("enc", {"text": text, "image": image}, present)))
    table, rows = item_table(sources)
    assert len(table) == 6 and rows == [0, 1, 2, 4, 5]  # beauty's cold item 0 is row 3
    assert table.values["text"][:3].eq(1).all() and table.values["text"][3:].eq(2).all()
    assert table.present["image"].tolist() == [True] * 3 + [False] * 3


@pytest.mark.parametrize("refit", [False, True])
def test_finetune_from_an_init_keeps_its_feature_statistics_unless_told_to_refit(tmp_path, refit):
    ds, f = planted_dataset(n_items=30, n_users=60)
    arch = dict(tower="adaptor", n_experts=2)
    init = DualTower(tiny_model_config(f, **arch))
    shifted = Features(f.encoder, {m: 4.0 + 2.0 * v for m, v in f.values.items()}, f.present)
    init.fit_feature_norm(shifted)  # the init's statistics come from another catalog
    init.save_pretrained(tmp_path / "init")
    cfg = tiny_finetune_config(f, model=arch, epochs=1, refit_norm=refit)
    finetune(ds, f, cfg, tmp_path / "out", init=tmp_path / "init", progress=False)
    tuned = DualTower.from_pretrained(str(tmp_path / "out" / "best"))
    expected = f if refit else shifted
    for m in f.modalities:
        assert torch.allclose(tuned.item_adaptor.norm[m].mean, expected.values[m].mean(0), atol=1e-5)


def test_finetune_can_hold_the_sequence_encoder_at_its_init(tmp_path):
    """UniSRec's inductive fine-tuning: only the item adaptor learns on the new domain."""
    ds, f = planted_dataset(n_items=30, n_users=60)
    arch = dict(tower="adaptor", n_experts=2)
    torch.manual_seed(0)
    DualTower(tiny_model_config(f, **arch)).save_pretrained(tmp_path / "init")
    cfg = tiny_finetune_config(f, model=arch, epochs=2, freeze="sequence_encoder")
    finetune(ds, f, cfg, tmp_path / "out", init=tmp_path / "init", progress=False)
    before = DualTower.from_pretrained(str(tmp_path / "init")).state_dict()
    after = DualTower.from_pretrained(str(tmp_path / "out" / "best")).state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("item_adaptor.") for k in moved)
    assert any(k.startswith("item_adaptor.adaptor.") for k in moved)


def test_finetune_can_take_the_sequence_encoder_from_the_init_and_a_fresh_adaptor(tmp_path):
    """`reinit="item_adaptor"`: the init's user side, a new adaptor with this catalog's own statistics."""
    ds, f = planted_dataset(n_items=30, n_users=60)
    arch = dict(tower="adaptor", n_experts=2)
    torch.manual_seed(0)
    init = DualTower(tiny_model_config(f, **arch))
    init.fit_feature_norm(Features(f.encoder, {m: 4.0 + 2.0 * v for m, v in f.values.items()}, f.present))
    with torch.no_grad():  # an init adaptor no fresh one could be mistaken for
        for p in init.item_adaptor.parameters():
            p.mul_(100.0)
    init.save_pretrained(tmp_path / "init")
    cfg = tiny_finetune_config(f, model=arch, epochs=1, reinit="item_adaptor", freeze="sequence_encoder")
    finetune(ds, f, cfg, tmp_path / "out", init=tmp_path / "init", progress=False)
    tuned = DualTower.from_pretrained(str(tmp_path / "out" / "best"))
    before = init.state_dict()
    after = tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("sequence_encoder."))
    big = max(float(p.detach().abs().max()) for p in init.item_adaptor.adaptor.parameters())
    assert max(float(p.detach().abs().max()) for p in tuned.item_adaptor.adaptor.parameters()) < big / 10
    for m in f.modalities:  # a fresh adaptor is fitted on this catalog, not given the init's statistics
        assert torch.allclose(tuned.item_adaptor.norm[m].mean, f.values[m].mean(0), atol=1e-5)
    notes = json.loads((tmp_path / "out" / "train_config.json").read_text())["init_notes"]
    assert any("item_adaptor re-initialised" in n for n in notes)


def test_reinit_needs_an_init_and_a_module_the_model_has(tmp_path):
    ds, f = planted_dataset(n_items=20, n_users=30)
    arch = dict(tower="adaptor")
    with pytest.raises(ValueError, match="needs an init checkpoint"):
        finetune(ds, f, tiny_finetune_config(f, model=arch, epochs=1, reinit="item_adaptor"), tmp_path / "a",
                 progress=False)
    DualTower(tiny_model_config(f, **arch)).save_pretrained(tmp_path / "init")
    with pytest.raises(ValueError, match="cannot re-initialise user_head"):
        finetune(ds, f, tiny_finetune_config(f, model=arch, epochs=1, reinit="user_head"), tmp_path / "b",
                 init=tmp_path / "init", progress=False)


def test_freezing_an_unknown_module_is_one_clear_error(tmp_path):
    ds, f = planted_dataset(n_items=20, n_users=30)
    cfg = tiny_finetune_config(f, model=dict(tower="adaptor"), epochs=1, freeze="sequence_encoder, user_head")
    with pytest.raises(ValueError, match="cannot freeze user_head: the model's modules are item_adaptor"):
        finetune(ds, f, cfg, tmp_path / "out", progress=False)
