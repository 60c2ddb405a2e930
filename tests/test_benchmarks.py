"""`python -m benchmarks`: each measurement on tiny sizes, the report's structure, ratios taken from one run,
and the training steps it times being the product's own.

No timing assertions: the machine is shared and noisy. What is checked is that the
numbers are consistent with each other (ratios, extrapolations, recall, tuning).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import numpy as np
import pytest

import benchmarks.training as T
from benchmarks.__main__ import main as bench_main
from benchmarks.common import BenchError, latency_summary, machine_info, peak_memory
from benchmarks.data import synthetic_embeddings, synthetic_training_data
from benchmarks.features import measure_feature_extraction
from benchmarks.report import TARGET_TRAIN_RATIO, check_targets, render_markdown, write_report
from benchmarks.run import BenchConfig, _load_training_data, run_bench
from benchmarks.serving import measure_api, measure_cold_start, measure_index, measure_recommender, measure_startup
from benchmarks.training import measure_training, measure_training_scaling
from dtrec.baselines import sasrec
from dtrec.train import finetune
from dtrec.sequences import build_examples
from synthetic import planted_dataset, tiny_finetune_config, tiny_model_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine run far faster on one thread (no OpenMP spinning)."""
    import faiss
    import torch

    before, fbefore = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before)
    faiss.omp_set_num_threads(fbefore)


@pytest.fixture(scope="module")
def planted():
    return planted_dataset(n_items=50, n_users=60, length=(4, 8))


@pytest.fixture(scope="module")
def training(planted) -> dict:
    ds, feats = planted
    return measure_training(ds, feats, model_config=tiny_model_config(feats), batch_size=16, max_steps=2,
                              device="cpu")


@pytest.fixture(scope="module")
def index_run() -> dict:
    x = synthetic_embeddings(3000, 32, seed=0)
    q = synthetic_embeddings(30, 32, seed=1)
    return measure_index(x, q, ef_grid=(4, 16, 64), nprobe_grid=(2, 8), ivf_min_items=1000, ivf_train=3000,
                           target_recall=0.9, batch=64)


def test_training_ratio_comes_from_the_same_run(training, planted):
    ds, _ = planted
    d, s, m = (training["runs"][k] for k in ("dtrec_fp32", "sasrec_fp32", "sasrec_matched_fp32"))
    assert training["epoch_ratio_vs_default_sasrec"]["fp32"] == pytest.approx(
        d["seconds_per_epoch"] / s["seconds_per_epoch"])
    assert training["epoch_ratio_vs_matched_sasrec"]["fp32"] == pytest.approx(
        d["seconds_per_epoch"] / m["seconds_per_epoch"])
    # the matched SASRec has dtrec's width and window; the default one RecBole's
    assert (m["hidden"], m["max_len"]) == (d["d_model"], d["max_len"]) and s["hidden"] == 64
    assert m["params"] != s["params"] and training["group_by_length"] and d["group_by_length"]
    for r in (d, s, m):
        assert r["timed_steps"] == 2
        assert r["seconds_per_epoch"] == pytest.approx(r["seconds_per_step"] * r["steps_per_epoch"])
        assert r["steps_per_epoch"] == math.ceil(r["examples_per_epoch"] / training["batch_size"])
        assert r["epoch_extrapolated"] == (r["timed_steps"] < r["steps_per_epoch"])
        assert r["sequences_per_s"] > 0 and r["targets_per_s"] >= r["sequences_per_s"] * 0.99
        assert r["peak_memory_mb"] is not None and r["memory_kind"] == "rss_peak_delta"
    assert d["examples_per_epoch"] == len(build_examples(ds.train_sequences(), d["objective"], d["max_len"]))
    for r in (s, m):
        assert r["examples_per_epoch"] == len(sasrec.training_windows(ds.train_sequences(), r["max_len"])[0])
    assert "dtrec_bf16" not in training["runs"]  # measure_training runs fp32 only unless asked
    bare = training["runs"]["bare_fp32"]
    assert training["epoch_ratio_vs_bare"]["fp32"] == pytest.approx(d["seconds_per_epoch"] / bare["seconds_per_epoch"])
    assert bare["examples_per_epoch"] == d["examples_per_epoch"] and bare["timed_steps"] == 2
    assert abs(bare["params"] - d["params"]) <= 2 * d["d_model"]  # the same model, less dtrec's mask tokens


def test_rounded_widths_reach_both_trainers(planted):
    ds, feats = planted
    cfg = tiny_model_config(feats)
    kw = dict(model_config=cfg, batch_size=16, max_steps=3, device="cpu")
    plain = measure_training(ds, feats, **kw)
    rounded = measure_training(ds, feats, pad_multiple=4, **kw)
    assert plain["pad_multiple"] == 1 and rounded["pad_multiple"] == 4 and "multiple of 4" in rounded["note"]
    for k in ("dtrec_fp32", "sasrec_matched_fp32", "sasrec_fp32"):
        assert rounded["runs"][k]["pad_multiple"] == 4
        # warm-up + 3 timed steps of length-grouped batches: widths 4..8 at most, so at most 2 shapes once rounded
        assert 1 <= rounded["runs"][k]["distinct_widths"] <= min(2, plain["runs"][k]["distinct_widths"]), k


def test_the_bench_times_the_steps_the_trainers_run(planted, tmp_path, monkeypatch):
    """The steps the bench times are the functions `finetune` and `train_sasrec` call per batch, not copies."""
    assert T.finetune_step is finetune.finetune_step and T.sasrec_step is sasrec.sasrec_step
    calls: Counter = Counter()

    def count(module, name: str) -> None:
        real = getattr(module, name)

        def step(*args, **kwargs):
            calls[module.__name__, name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, step)

    for module in (finetune, T):
        count(module, "finetune_step")
    for module in (sasrec, T):
        count(module, "sasrec_step")
    ds, feats = planted
    finetune.finetune(ds, feats, tiny_finetune_config(feats, epochs=1, batch_size=16, max_steps=3, evaluate_test=False),
                      tmp_path / "ft", progress=False)
    small = dict(hidden=16, n_layers=1, n_heads=2, d_ff=16, max_len=6)
    sasrec.train_sasrec(ds, sasrec.SASRecConfig(num_items=len(ds.catalog), **small),
                        sasrec.SASRecTrainConfig(epochs=1, batch_size=16, device="cpu"), progress=False)
    windows = len(sasrec.training_windows(ds.train_sequences(), small["max_len"])[0])
    assert calls["dtrec.train.finetune", "finetune_step"] == 3
    assert calls["dtrec.baselines.sasrec", "sasrec_step"] == math.ceil(windows / 16)

    kw = dict(batch_size=16, max_steps=2, warmup=1, device="cpu")
    T.train_dtrec_steps(build_examples(ds.train_sequences(), "cloze", 10), feats, tiny_model_config(feats), **kw)
    T.train_sasrec_steps(ds.train_sequences(), len(ds.catalog), **kw, **small)
    # one warm-up step and two timed ones each, all through the trainers' own step
    assert calls["benchmarks.training", "finetune_step"] == 3 and calls["benchmarks.training", "sasrec_step"] == 3


def test_gpu_target_is_judged_only_on_a_gpu(training):
    row = next(t for t in check_targets({"training": training}) if "bare" in t["target"])
    assert row["met"] is None  # this run was on the CPU
    gpu = json.loads(json.dumps(training))
    gpu["device"] = "cuda:0"
    gpu["runs"]["bare_bf16"] = dict(gpu["runs"]["bare_fp32"], seconds_per_epoch=1.0)
    gpu["runs"]["dtrec_bf16"] = dict(gpu["runs"]["dtrec_fp32"], seconds_per_epoch=2.5)
    gpu["runs"]["bare_fp32"]["seconds_per_epoch"] = 3.0
    gpu["runs"]["dtrec_fp32"]["seconds_per_epoch"] = 4.0
    gpu["epoch_ratio_vs_bare"] = {"fp32": 4.0 / 3.0, "bf16": 2.5}
    row = next(t for t in check_targets({"training": gpu}) if "bare" in t["target"])
    # each side at its fastest variant: 2.5 s (dtrec bf16) against 1.0 s (bare bf16)
    assert row["met"] is False and row["value"].startswith("2.50x")


def test_synthetic_training_data_has_the_asked_size():
    ds, feats = synthetic_training_data(500, 300, dim=16, seed=1)
    seqs = ds.train_sequences()
    assert len(seqs) == 500 and len(ds.catalog) == 300 == len(feats)
    assert min(map(len, seqs)) >= 5 and max(map(len, seqs)) <= 50
    assert all(0 <= i < 300 for s in seqs for i in s) and feats.dims == {"text": 16, "image": 16}
    again, _ = synthetic_training_data(500, 300, dim=16, seed=1)
    assert again.train_sequences() == seqs
    with pytest.raises(BenchError, match="synthetic:<histories>x<items>"):
        _load_training_data(BenchConfig(data="synthetic:lots"))


def test_synthetic_embeddings_are_normalised_and_reproducible():
    a = synthetic_embeddings(70_000, 16, seed=3)[-500:]  # crosses a generation block
    b = synthetic_embeddings(70_000, 16, seed=3)[-500:]
    assert a.shape == (500, 16) and a.dtype == np.float32
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synthetic_embeddings(70_000, 16, seed=4)[-500:])


def test_index_recall_and_tuning_are_consistent(index_run):
    kinds = index_run["kinds"]
    assert kinds["flat"]["recall"] == 1.0
    for name, keys in (("hnsw", ("ef_search",)), ("ivfpq", ("nprobe", "k_factor"))):
        r = kinds[name]
        sweep = r["sweep"]
        chosen = next(s for s in sweep if all(s[k] == r["setting"][k] for k in keys))
        assert r["recall"] == chosen["recall"] and r["p50_ms"] == chosen["p50_ms"]
        assert all(0.0 <= s["recall"] <= 1.0 for s in sweep)
        reaching = [s for s in sweep if s["recall"] >= 0.9]
        if not reaching:
            assert r["recall"] == max(s["recall"] for s in sweep)
        elif name == "hnsw":  # the smallest efSearch that reaches the target recall
            assert r["setting"]["ef_search"] == min(s["ef_search"] for s in reaching)
        else:  # the fastest (nprobe, k_factor) that does
            assert r["p50_ms"] == min(s["p50_ms"] for s in reaching)
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["batched_qps"] > 0
    ivf = kinds["ivfpq"]
    assert ivf["nlist"] >= 1 and ivf["trained_on"] == 3000 and ivf["setting"]["refine"] == "sq8"
    assert ivf["bytes_per_vector"] == ivf["pq_m"] + 32
    # re-ranking more PQ candidates gains recall at the same nprobe (8-bit re-ranking may swap a tie)
    for p in {s["nprobe"] for s in ivf["sweep"]}:
        by_k = sorted((s["k_factor"], s["recall"]) for s in ivf["sweep"] if s["nprobe"] == p)
        assert by_k[-1][1] >= by_k[0][1] and all(a[1] <= b[1] + 0.02 for a, b in zip(by_k, by_k[1:])), by_k


def test_ivfpq_below_its_minimum_is_reported_as_exact():
    x = synthetic_embeddings(400, 16)
    out = measure_index(x, x[:5], kinds=("flat", "ivfpq"), ivf_min_items=1000)
    assert "skipped" in out["kinds"]["ivfpq"]
    assert out["kinds"]["flat"]["recall"] == 1.0


def test_latency_summary_matches_numpy():
    ms = list(np.random.default_rng(0).exponential(5.0, 101))
    s = latency_summary(ms)
    assert s["n"] == 101
    assert s["p50_ms"] == pytest.approx(np.percentile(ms, 50))
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99))
    assert s["min_ms"] <= s["p50_ms"] <= s["p95_ms"] <= s["p99_ms"]
    assert latency_summary([]) == {"n": 0}


def test_peak_memory_sees_an_allocation():
    with peak_memory("cpu") as small:
        pass
    with peak_memory("cpu") as big:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        block[::512] += 1
        time.sleep(0.1)  # RSS is sampled every 5 ms: hold the peak long enough to be seen on a busy machine
        del block
    assert big["peak_mb"] >= 40 > small["peak_mb"]


def test_training_scaling_rows_cover_the_grid():
    out = measure_training_scaling((60, 120), (3, 6), base_catalog=60, batch_size=4, steps=1, dims={"text": 8},
                                     model=dict(d_model=16, n_heads=2, d_ff=16), device="cpu")
    assert [r["catalog"] for r in out["by_catalog"]] == [60, 120]
    assert [r["history_length"] for r in out["by_length"]] == [3, 6]
    for r in out["by_catalog"] + out["by_length"]:
        assert all(r[k] > 0 for k in ("dtrec_all_step_ms", "dtrec_sampled_step_ms", "sasrec_step_ms"))


def test_feature_extraction_counts_items_per_second():
    out = measure_feature_extraction("tiny-clip", n_items=4, batch_size=2, device="cpu", image_px=(40, 60))
    assert out["dims"] == {"text": 32, "image": 32} or set(out["dims"]) == {"text", "image"}
    for key in ("text_items_per_s", "image_items_per_s", "both_items_per_s"):
        assert out[key] > 0


def test_recommender_and_cold_start_on_the_tiny_demo(tiny_demo):
    rec = measure_recommender(tiny_demo, requests=5, batch=8)
    assert rec["recommend"]["n"] == 5 and rec["items"] > 0 and rec["batched_per_s"] > 0
    cold = measure_cold_start(tiny_demo, n=1, image_px=(60, 90))
    assert set(cold["stages_timed"]) >= {"encode", "item_tower", "store", "index"}
    assert cold["with_image"]["stages_mean_ms"]["decode"] > 0
    assert cold["without_image"]["stages_mean_ms"]["decode"] == 0
    for label in ("with_image", "without_image"):
        stages = cold[label]["stages_mean_ms"]
        # the stages and the remainder add up to the measured total
        assert sum(stages.values()) == pytest.approx(cold[label]["mean_ms"], rel=1e-6)


def _results(training: dict, index_run: dict) -> dict:
    return {"quick": True, "machine": machine_info(), "training": training,
            "serving": {"user_tower": {"single": latency_summary([1.0, 2.0]), "batched_per_s": 100.0,
                                       "batch": 8, "device": "cpu"}, "dim": 32, "generator": "test",
                        "sizes": [index_run]},
            "errors": {}}


def test_report_files_and_targets(tmp_path, training, index_run):
    results = _results(training, index_run)
    paths = write_report(results, tmp_path / "bench")
    data = json.loads(paths["json"].read_text())
    assert data["machine"]["cpu"] and data["machine"]["cores"] >= 1 and data["machine"]["torch"]
    assert data["machine"]["git_commit"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "## Targets" in md and "## Training" in md and "## Serving" in md and "bench.png" in md
    targets = {t["target"].split(":")[0]: t for t in data["targets"]}
    assert len(data["targets"]) == 5
    train_t = next(t for t in data["targets"] if "SASRec" in t["target"])
    assert train_t["met"] == (training["epoch_ratio_vs_matched_sasrec"]["fp32"] <= TARGET_TRAIN_RATIO)
    ann = next(t for t in data["targets"] if "10^6" in t["target"])
    assert ann["met"] is None  # no 10^6 catalog in this run
    assert targets


def test_ann_target_is_judged_at_a_million_items():
    def size(p50: float, recall: float) -> dict:
        return {"n": 1_000_000, "kinds": {"flat": {"p50_ms": 90.0, "recall": 1.0, "setting": None},
                                          "hnsw": {"p50_ms": p50, "recall": recall, "setting": {"ef_search": 64}}}}

    met = check_targets({"serving": {"sizes": [size(2.0, 0.97)]}})[0]
    slow = check_targets({"serving": {"sizes": [size(7.0, 0.97)]}})[0]
    poor = check_targets({"serving": {"sizes": [size(2.0, 0.90)]}})[0]
    assert (met["met"], slow["met"], poor["met"]) == (True, False, False)
    assert "2.00 ms" in met["value"]


def test_run_bench_writes_a_report_for_one_section(tmp_path):
    cfg = BenchConfig(quick=True, out=str(tmp_path / "out"), only=("features",), encoders=("tiny-clip",),
                        device="cpu")
    res = run_bench(cfg, log=lambda m: None)
    assert not res["errors"]
    assert (tmp_path / "out" / "bench.json").is_file() and (tmp_path / "out" / "bench.md").is_file()
    saved = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert saved["features"]["encoders"][0]["encoder"] == "tiny-clip"
    assert set(saved["seconds"]) == {"features"}


def test_merge_keeps_sections_of_an_earlier_report(tmp_path, training):
    out = tmp_path / "out"
    write_report({"quick": True, "machine": machine_info(), "training": training, "errors": {},
                    "seconds": {"training": 1.5}}, out)
    cfg = BenchConfig(quick=True, out=str(out), only=("features",), encoders=("tiny-clip",), device="cpu",
                        merge=True)
    res = run_bench(cfg, log=lambda m: None)
    saved = json.loads((out / "bench.json").read_text())
    assert saved["training"]["epoch_ratio_vs_matched_sasrec"] == pytest.approx(
        training["epoch_ratio_vs_matched_sasrec"])
    assert set(saved["merged"]) == {"training"} and "features" in saved
    assert res["seconds"]["training"] == 1.5
    assert "comes from an earlier run" in (out / "bench.md").read_text()
    # a section that an earlier merge kept, once measured again, is this run's own
    saved["merged"]["features"] = saved["merged"]["training"]
    (out / "bench.json").write_text(json.dumps(saved))
    again = run_bench(cfg, log=lambda m: None)
    assert set(again["merged"]) == {"training"}
    assert "Section `features` comes from" not in (out / "bench.md").read_text()


def test_bad_section_is_one_clear_error(capsys):
    assert bench_main(["--only", "training,bogus"]) == 2
    err = capsys.readouterr().err
    assert "unknown bench section(s) bogus" in err and len(err.strip().splitlines()) == 1
    assert bench_main(["--sizes", "1e3,many"]) == 2
    err = capsys.readouterr().err
    assert "--sizes" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_api_through_gradio(tiny_demo):
    out = measure_api(tiny_demo, clients=2, requests=3)
    assert out["concurrent"]["n"] == 6 and out["single_client"]["n"] == 3
    assert out["throughput_rps"] > 0 and out["items"] > 0
    json.dumps(out)  # plain data only: it goes straight into bench.json


@pytest.mark.slow
def test_startup_times_a_first_start_and_a_restart_beside_import_gradio(tiny_demo):
    out = measure_startup(tiny_demo, repetitions=1)
    for part in ("first", "restart", "import_gradio"):
        assert len(out[part]["runs"]) == 1 and out[part]["median_s"] > 0
    assert out["first_vs_import_gradio"] > 0 and out["restart_vs_import_gradio"] > 0
    json.dumps(out)
    assert "## Start-up (time-to-ready)" in render_markdown({"startup": out})
