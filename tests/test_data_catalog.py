"""The data model round trip, and `dtrec prepare` / `dtrec info` end to end on the fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dtrec.cli import main
from dtrec.data.catalog import Catalog, Dataset, Interactions, Item


def test_save_load_round_trip(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(b"not really an image, but hashed")
    cat = Catalog([Item("a", "Alpha", "Alpha, a thing.", "images/0.png", {"year": 1999}),
                   Item("b", "Beta", "", None, {})], root=tmp_path)
    ds = Dataset(cat, Interactions(["u1", "u2"], [[0, 1, 0], [1, 0, 1, 1]], [[1, 2, 3], [4, 5, 6, 7]]),
                 name="tiny", cold_items=[1], info={"kcore": 0})
    fp = cat.fingerprint()
    ds.save(tmp_path)
    back = Dataset.load(tmp_path)
    assert [(it.id, it.title, it.text, it.image, it.meta) for it in back.catalog] == \
        [(it.id, it.title, it.text, it.image, it.meta) for it in cat]
    assert back.interactions.sequences == [[0, 1, 0], [1, 0, 1, 1]]
    assert back.interactions.timestamps == [[1, 2, 3], [4, 5, 6, 7]]
    assert back.cold_items == [1] and back.info["kcore"] == 0 and back.name == "tiny"
    assert back.catalog.fingerprint() == fp
    (tmp_path / "images" / "0.png").write_bytes(b"changed")
    assert back.catalog.fingerprint() != fp
    assert back.train_sequences() == [[0], [0]]  # last two held out, then cold item 1 removed


def test_load_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Dataset.load(tmp_path)


def test_cli_prepare_and_info_json(fixtures_dir: Path, tmp_path, capsys):
    ml = fixtures_dir / "movielens"
    out = tmp_path / "ml"
    rc = main(["prepare", "movielens", "--source", str(ml / "ml-100k"), "--posters", str(ml / "ml-1m-posters"),
               "--out", str(out), "--kcore", "3", "--cold-fraction", "0.2", "--seed", "7"])
    assert rc == 0
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("prepared ml100k") and "posters matched 33/35" in summary

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ds = Dataset.load(out)
    assert info["items"] == len(ds.catalog) and info["users"] == len(ds.interactions)
    assert info["interactions"] == sum(len(s) for s in ds.interactions.sequences)
    assert info["items_with_image"] == sum(1 for it in ds.catalog if it.image) > 0
    assert info["items_with_text"] == len(ds.catalog)

    meta = json.loads((out / "meta.json").read_text())
    assert meta["kcore"] == 3 and meta["seed"] == 7 and meta["cold_fraction"] == 0.2
    assert meta["posters"]["matched"] == 33 and meta["source"]["kind"] == "movielens" and meta["created"]
    cold = set(ds.cold_items)
    assert len(cold) == round(0.2 * len(ds.catalog))
    assert all(not cold & set(s) for s in ds.train_sequences())
    assert len(ds.cold_cases("test")) >= len(cold)


def test_cli_prepare_reports_bad_input(fixtures_dir: Path, tmp_path, capsys):
    rc = main(["prepare", "jsonl", "--items", str(tmp_path / "none.jsonl"), "--interactions",
               str(fixtures_dir / "jsonl" / "interactions.csv"), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "none.jsonl: file not found" in capsys.readouterr().err


def test_cli_prepare_unisrec_and_jsonl(fixtures_dir: Path, tmp_path, capsys):
    assert main(["prepare", "unisrec", "--source", str(fixtures_dir / "unisrec"), "--name", "Tiny",
                 "--out", str(tmp_path / "u")]) == 0
    assert main(["prepare", "jsonl", "--items", str(fixtures_dir / "jsonl" / "items.jsonl"), "--interactions",
                 str(fixtures_dir / "jsonl" / "interactions.csv"), "--out", str(tmp_path / "j")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "u"), "--json"]) == 0
    u = json.loads(capsys.readouterr().out)
    assert (u["items"], u["users"], u["items_with_image"]) == (30, 12, 0)
    assert main(["info", str(tmp_path / "j"), "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    assert (j["items"], j["items_with_image"], j["items_with_text"]) == (12, 3, 12)
    # Preparing again into a prepared folder is allowed; into a foreign one is not.
    assert main(["prepare", "unisrec", "--source", str(fixtures_dir / "unisrec"), "--name", "Tiny",
                 "--out", str(tmp_path / "u")]) == 0
    assert main(["prepare", "unisrec", "--source", str(fixtures_dir / "unisrec"), "--name", "Tiny",
                 "--out", str(tmp_path / "u"), "--kcore", "5"]) == 2


def test_prepare_again_replaces_the_folder_whole_and_keeps_feature_caches(fixtures_dir: Path, tmp_path):
    from dtrec.data.prepare import _exclusive, prepare

    src = dict(items=fixtures_dir / "jsonl" / "items.jsonl", interactions=fixtures_dir / "jsonl" / "interactions.csv")
    out = tmp_path / "data"
    first = prepare("jsonl", out, **src)
    (out / "images" / "stale.jpg").write_bytes(b"left over from an earlier preparation")
    (out / "features").mkdir()
    (out / "features" / "offline.safetensors").write_bytes(b"a cache; checked against the catalog when read")
    (out / "notes.txt").write_text("a user's own file: not ours to delete")
    again = prepare("jsonl", out, **src)
    assert not (out / "images" / "stale.jpg").exists(), "no file of the earlier preparation is left"
    assert (out / "features" / "offline.safetensors").is_file(), "feature caches survive a re-preparation"
    assert (out / "notes.txt").read_text().startswith("a user's own file")
    assert again.root == out and again.catalog.fingerprint() == first.catalog.fingerprint()
    assert Dataset.load(out).counts() == first.counts()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".data.prepare.lock", "data"]  # no staging left

    # a failed preparation leaves the earlier one as it was
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(Exception):
        prepare("jsonl", out, items=tmp_path / "missing.jsonl", interactions=src["interactions"])
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert Dataset.load(out).counts() == first.counts()

    # two preparations into one folder: the second is refused in one sentence
    with _exclusive(out):
        with pytest.raises(ValueError, match="another `dtrec prepare` is writing"):
            prepare("jsonl", out, **src)
    assert Dataset.load(out).counts() == first.counts()
