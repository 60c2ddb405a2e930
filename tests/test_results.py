"""Results files and their one Markdown renderer: metric names, seed statistics, tables."""

from __future__ import annotations

import math

from dtrec.results import (METRIC_KEYS, METRIC_NAMES, PROVENANCE_KEY, markdown_table, metric_keys, metric_table,
                           results_table, seed_summary, seed_table)


def test_metric_keys_in_report_order():
    assert METRIC_KEYS == ("recall@10", "recall@50", "ndcg@10", "ndcg@50", "mrr")
    assert metric_keys((1, 3)) == ["recall@1", "recall@3", "ndcg@1", "ndcg@3", "mrr"]
    assert all(k in METRIC_NAMES for k in METRIC_KEYS)


def test_markdown_table_aligns_numbers_right():
    assert markdown_table(["model", "MRR"], [["a", "0.5000"]], "lr") == [
        "| model | MRR |", "| --- | ---: |", "| a | 0.5000 |"]
    assert markdown_table(["k", "v"], [])[1] == "| --- | --- |"


def test_results_table_bolds_the_main_model_and_skips_provenance():
    results = {"dtrec": {"test": {"recall@10": 0.25, "mrr": 0.125, "n": 8}},
               "sasrec": {"test": {"recall@10": 0.5}}, PROVENANCE_KEY: {"seed": 1}}
    assert metric_table(results).keys() == {"dtrec", "sasrec"}
    assert results_table(results, "test", "dtrec") == [
        "| model | Recall@10 | MRR |", "| --- | ---: | ---: |",
        "| **dtrec** (n=8) | 0.2500 | 0.1250 |", "| sasrec | 0.5000 | – |"]
    assert results_table(results, "valid") == []


def test_seed_summary_means_and_sample_deviations():
    def run(r10, cold=None):
        out = {"dtrec": {"test": {"recall@10": r10, "mrr": r10 / 2, "n": 9}}, "meta": {"seed": 0}}
        if cold is not None:
            out["dtrec"]["cold_start"] = {"recall@10": cold}
        return out

    runs = [run(0.1, 0.0), run(0.2), run(0.3, 0.5), {"sasrec": {"test": {"recall@10": 0.4}}}]
    s = seed_summary(runs)
    assert set(s) == {"dtrec", "sasrec"}  # meta is not a model
    mean, sd, n = s["dtrec"]["recall@10"]
    assert n == 3 and math.isclose(mean, 0.2) and math.isclose(sd, 0.1)  # sample (n - 1) deviation
    assert math.isclose(s["dtrec"]["mrr"][0], 0.1) and "ndcg@10" not in s["dtrec"]
    assert s["sasrec"]["recall@10"] == (0.4, 0.0, 1)
    cold = seed_summary(runs, "cold_start")["dtrec"]["recall@10"]  # runs without the split are left out
    assert cold[2] == 2 and math.isclose(cold[0], 0.25)


def test_seed_table_adds_the_echo_column_when_runs_report_it():
    runs = [{"dtrec": {"test": {k: 0.5 for k in METRIC_KEYS}}, "meta": {}},
            {"dtrec": {"test": {**{k: 0.25 for k in METRIC_KEYS}, "last_item_first": 0.5}}}]
    lines = seed_table(runs)
    assert lines[0].endswith("| MRR | last item first |") and lines[1].count("---:") == 6
    assert lines[2].startswith("| dtrec (2) | 0.3750 ± 0.1768 |") and lines[2].endswith("| 0.5000 ± 0.0000 |")
