"""Readers: MovieLens (with the poster title join), UniSRec format, items.jsonl; malformed input."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dtrec.cli import main
from dtrec.data.catalog import Dataset
from dtrec.data.errors import DataFormatError
from dtrec.data.jsonl import read_jsonl
from dtrec.data.movielens import match_posters, normalise_name, parse_movie, read_movielens, split_title
from dtrec.data.prepare import prepare
from dtrec.data.unisrec import read_unisrec, title_of
from dtrec.features import Features, cache_path
from dtrec.modelcard import movielens_release


# ----------------------------------------------------------------------------- title join
@pytest.mark.parametrize("raw,name", [
    ("Boot, Das (1981)", "das boot"),
    ("Misérables, Les (1995)", "les miserables"),
    ("Shawshank Redemption, The (1994)", "the shawshank redemption"),
    ("Enfer, L' (1994)", "l enfer"),
    ("Star Wars: Episode IV - A New Hope (1977)", "star wars episode iv a new hope"),
])
def test_normalised_main_name(raw, name):
    assert parse_movie(1, raw).names[0] == name


def test_split_title_alternates_and_year():
    assert split_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == (
        "City of Lost Children, The", ["Cité des enfants perdus, La"], 1995)
    assert split_title("Hard 8 (a.k.a. Sydney, a.k.a. Hard Eight) (1996)") == ("Hard 8", ["Sydney", "Hard Eight"], 1996)
    assert split_title("Land Before Time III: The Time of the Great Giving (1995) (V)")[2] == 1995
    assert split_title("unknown") == ("unknown", [], None)
    assert normalise_name("Alien³") == "alien3"


def test_match_posters_on_tricky_titles():
    ml100k = [parse_movie(i, t) for i, t in [
        (50, "Star Wars (1977)"), (172, "Empire Strikes Back, The (1980)"), (515, "Boot, Das (1981)"),
        (543, "Misérables, Les (1995)"), (919, "City of Lost Children, The (1995)"), (1, "Toy Story (1995)"),
        (665, "Alien 3 (1992)"), (246, "Chasing Amy (1997)"), (268, "Chasing Amy (1997)"),
        (1143, "Hard Eight (1996)"), (75, "Brother Minister: The Assassination of Malcolm X (1994)")]]
    ml1m = [parse_movie(i, t) for i, t in [
        (260, "Star Wars: Episode IV - A New Hope (1977)"),
        (1196, "Star Wars: Episode V - The Empire Strikes Back (1980)"),
        (1210, "Star Wars: Episode VI - Return of the Jedi (1983)"),
        (2628, "Star Wars: Episode I - The Phantom Menace (1999)"),
        (1233, "Boat, The (Das Boot) (1981)"), (73, "Miserables, Les (1995)"), (1873, "Mis\ufffdrables, Les (1998)"),
        (29, "City of Lost Children, The (1995)"), (1, "Toy Story (1995)"), (3114, "Toy Story 2 (1999)"),
        (1320, "Alien\ufffd (1992)"), (1214, "Alien (1979)"), (1639, "Chasing Amy (1997)"),
        (2952, "Hard 8 (a.k.a. Sydney, a.k.a. Hard Eight) (1996)")]]
    got = match_posters(ml100k, ml1m)
    assert got == {50: 260, 172: 1196, 515: 1233, 543: 73, 919: 29, 1: 1, 665: 1320, 246: 1639, 268: 1639,
                   1143: 2952}


def test_match_posters_rejects_ambiguous_candidates():
    ml100k = [parse_movie(1, "Star Wars (1977)")]
    ml1m = [parse_movie(10, "Star Wars: Episode IV - A New Hope (1977)"),
            parse_movie(11, "Star Wars: Holiday Special (1977)")]
    assert match_posters(ml100k, ml1m) == {}


# ----------------------------------------------------------------------------- MovieLens
@pytest.fixture()
def ml_fixture(fixtures_dir: Path) -> tuple[Path, Path]:
    return fixtures_dir / "movielens" / "ml-100k", fixtures_dir / "movielens" / "ml-1m-posters"


def test_read_movielens_fixture(ml_fixture, tmp_path):
    source, posters = ml_fixture
    ds = read_movielens(source, posters, tmp_path, kcore=0)
    cat = ds.catalog
    assert len(cat) == 35  # 36 listed, "Chasing Amy (1997)" twice (246 and 268): merged into 246
    assert ds.info["duplicates_merged"] == {"268": 246}
    star = cat[cat.index_of("50")]
    assert star.title == "Star Wars (1977)"
    assert star.text.startswith("Star Wars (1977). Genres: Action, Adventure")
    assert star.meta["ml100k_id"] == 50 and star.meta["year"] == 1977 and "Sci-Fi" in star.meta["genres"]
    assert cat[cat.index_of("543")].title == "Les Misérables (1995)"  # latin-1 decoded, article moved back
    assert cat[cat.index_of("515")].title == "Das Boot (1981)"
    for iid in ("50", "515", "543", "919"):
        p = cat.image_path(cat.index_of(iid))
        assert p is not None and p.is_file() and p.parent == tmp_path / "images"
    assert cat[cat.index_of("75")].image is None and cat[cat.index_of("267")].image is None
    unmatched = (tmp_path / "unmatched_posters.txt").read_text().splitlines()
    assert {ln.split("\t")[0] for ln in unmatched} == {"75", "267"}
    assert ds.info["posters"]["matched"] == 33  # of the 35 movies left after the merge
    # Histories are in time order with file order breaking ties.
    raw = [ln.split() for ln in (source / "u.data").read_text().splitlines()]
    u0 = ds.interactions.users[0]
    events = [(int(t), i) for n, (u, i, _, t) in enumerate(raw) if u == u0]
    expect = [{"268": "246"}.get(i, i) for _, i in sorted(events, key=lambda e: e[0])]
    expect = [i for n, i in enumerate(expect) if i not in expect[:n]]
    assert [cat[j].id for j in ds.interactions.sequences[0]] == expect
    assert ds.interactions.timestamps[0] == sorted(ds.interactions.timestamps[0])


def test_read_movielens_kcore(ml_fixture, tmp_path):
    source, posters = ml_fixture
    ds = read_movielens(source, posters, tmp_path, kcore=10)
    from collections import Counter

    ic = Counter(i for s in ds.interactions.sequences for i in s)
    assert min(ic.values()) >= 10 and min(len(s) for s in ds.interactions.sequences) >= 10
    assert len(ic) == len(ds.catalog) < 36  # items below the core are gone from the catalog


def test_movielens_merges_a_movie_listed_twice(ml_fixture, tmp_path):
    source, posters = ml_fixture
    src = tmp_path / "src"
    shutil.copytree(source, src)
    star = next(ln for ln in (src / "u.item").read_text(encoding="latin-1").splitlines() if ln.startswith("50|"))
    with open(src / "u.item", "a", encoding="latin-1") as fh:  # Star Wars again, under id 9000
        fh.write("9000|" + star.split("|", 1)[1] + "\n")
    raw = [ln.split() for ln in (src / "u.data").read_text().splitlines()]
    fan = next(u for u, i, _, _ in raw if i == "50")  # rated 50: their later rating of 9000 is dropped
    t50 = max(int(t) for u, i, _, t in raw if u == fan and i == "50")
    other = "999"  # a new user whose first rating is of the copy
    with open(src / "u.data", "a") as fh:
        fh.write(f"{fan}\t9000\t5\t{t50 + 1}\n{other}\t9000\t4\t1\n{other}\t1\t4\t2\n{other}\t7\t4\t3\n")
    ds = read_movielens(src, posters, tmp_path / "out", kcore=0)
    cat = ds.catalog
    assert len(cat) == 35 and "9000" not in {it.id for it in cat}
    assert ds.info["duplicates_merged"] == {"268": 246, "9000": 50}
    seq = {u: [cat[j].id for j in s] for u, s in zip(ds.interactions.users, ds.interactions.sequences)}
    assert seq[fan].count("50") == 1
    assert seq[other][0] == "50"  # time 1: the first event of that user


def test_movielens_malformed(ml_fixture, tmp_path):
    source, posters = ml_fixture
    bad = tmp_path / "src"
    shutil.copytree(source, bad)
    lines = (bad / "u.data").read_text().splitlines()
    lines[6] = lines[6].replace("\t", " ", 1).split()[0] + "\t9999\t3\t881250949"
    (bad / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"u\.data line 7: unknown item id 9999"):
        read_movielens(bad, None, tmp_path / "o1")
    lines[6] = "1\t50\tthree"
    (bad / "u.data").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError, match=r"u\.data line 7:"):
        read_movielens(bad, None, tmp_path / "o2")
    (bad / "u.item").write_bytes((bad / "u.item").read_bytes() + b"99|Broken|x\n")
    with pytest.raises(DataFormatError, match=r"u\.item line 37:"):
        read_movielens(bad, None, tmp_path / "o3")
    (bad / "u.genre").unlink()
    with pytest.raises(DataFormatError, match=r"u\.genre: file not found"):
        read_movielens(bad, None, tmp_path / "o4")


# ----------------------------------------------------------------------------- UniSRec format
@pytest.fixture()
def uni_fixture(fixtures_dir: Path) -> Path:
    return fixtures_dir / "unisrec"


def _inter_rows(path: Path) -> list[tuple[str, list[int], int]]:
    rows = []
    for line in path.read_text().splitlines()[1:]:
        u, h, t = line.split("\t")
        rows.append((u, [int(x) for x in h.split()], int(t)))
    return rows


def test_read_unisrec_reproduces_given_splits(uni_fixture, tmp_path):
    ds = read_unisrec(uni_fixture, "Tiny", tmp_path)
    users = [ln.split("\t")[0] for ln in (uni_fixture / "Tiny.user2index").read_text().splitlines()]
    for split in ("valid", "test"):
        given = {users[int(u)]: (h, t) for u, h, t in _inter_rows(uni_fixture / f"Tiny.{split}.inter")}
        got = dict(zip(ds.interactions.users, ds.eval_cases(split)))
        assert got == given
    train = sorted((users[int(u)], tuple(h), t) for u, h, t in _inter_rows(uni_fixture / "Tiny.train.inter"))
    mine = sorted((u, tuple(s[:p]), s[p]) for u, s in zip(ds.interactions.users, ds.train_sequences())
                  for p in range(1, len(s)))
    assert mine == train
    asins = [ln.split("\t")[0] for ln in (uni_fixture / "Tiny.item2index").read_text().splitlines()]
    assert [it.id for it in ds.catalog] == asins
    assert ds.catalog[0].title.startswith("Widget No. ") and ds.catalog[0].image is None

    f = Features.load(cache_path(tmp_path, "clip-vit-b-32"))
    assert f.encoder == "clip-vit-b-32" and f.dims == {"text": 512, "image": 512}
    assert f.fingerprint == ds.catalog.fingerprint()
    assert bool(f.present["text"].all()) and bool(f.present["image"].all())
    raw = np.fromfile(uni_fixture / "Tiny.feat3CLS", dtype="<f4").reshape(-1, 512)
    assert torch.equal(f.values["image"], torch.from_numpy(raw))


def _copy_uni(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_line(path: Path, n: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = new
    path.write_text("\n".join(lines) + "\n")


def test_unisrec_inconsistent_files(uni_fixture, tmp_path):
    bad = _copy_uni(uni_fixture, tmp_path / "a")
    u, h, t = _inter_rows(bad / "Tiny.valid.inter")[0]
    _edit_line(bad / "Tiny.valid.inter", 2, f"{u}\t{' '.join(map(str, h))}\t{(t + 1) % 30}")
    with pytest.raises(DataFormatError, match=r"Tiny\.valid\.inter line 2: user 0"):
        read_unisrec(bad, "Tiny", tmp_path / "o")

    bad = _copy_uni(uni_fixture, tmp_path / "b")
    u, h, t = _inter_rows(bad / "Tiny.train.inter")[1]
    _edit_line(bad / "Tiny.train.inter", 3, f"{u}\t{' '.join(map(str, h[::-1]))} {t}\t{h[0]}")
    with pytest.raises(DataFormatError, match=r"Tiny\.train\.inter line 3:"):
        read_unisrec(bad, "Tiny", tmp_path / "o")

    bad = _copy_uni(uni_fixture, tmp_path / "c")
    _edit_line(bad / "Tiny.test.inter", 4, "2\t1 2 77\t3")
    with pytest.raises(DataFormatError, match=r"Tiny\.test\.inter line 4: unknown item index 77"):
        read_unisrec(bad, "Tiny", tmp_path / "o")

    bad = _copy_uni(uni_fixture, tmp_path / "d")
    (bad / "Tiny.feat1CLS").write_bytes((bad / "Tiny.feat1CLS").read_bytes()[:-4])
    with pytest.raises(DataFormatError, match=r"Tiny\.feat1CLS: expected 30 x 512"):
        read_unisrec(bad, "Tiny", tmp_path / "o")

    with pytest.raises(DataFormatError, match=r"Nope\.item2index: file not found"):
        read_unisrec(uni_fixture, "Nope", tmp_path / "o")


def test_unisrec_title():
    assert title_of("Gorilla Glue, 8 oz. Bottle. Industrial & Scientific Tapes. Gorilla. ",
                    "Industrial & Scientific") == "Gorilla Glue, 8 oz. Bottle"
    assert title_of("Wipers, 4.4 in. 1-ply. . Kimberly-Clark.") == "Wipers, 4.4 in. 1-ply"
    assert title_of("Plain title. Tools. Acme.") == "Plain title"


# ----------------------------------------------------------------------------- items.jsonl
@pytest.fixture()
def jsonl_fixture(fixtures_dir: Path) -> Path:
    return fixtures_dir / "jsonl"


def test_read_jsonl(jsonl_fixture, tmp_path):
    ds = read_jsonl(jsonl_fixture / "items.jsonl", jsonl_fixture / "interactions.csv", tmp_path)
    cat = ds.catalog
    assert len(cat) == 12  # items without interactions stay retrievable when no k-core is asked
    imgs = [cat.image_path(i) for i in range(len(cat)) if cat[i].image]
    assert len(imgs) == 3 and all(p.is_file() and p.parent == tmp_path / "images" for p in imgs)
    assert {p.name for p in imgs}.isdisjoint({"red.png", "blue.png", "green.png"})
    with Image.open(cat.image_path(cat.index_of("sku-03"))) as im:
        assert im.getpixel((0, 0)) == (30, 200, 30)
    assert cat[cat.index_of("sku-06")].meta == {"brand": "Acme"}
    rows = [ln.split(",") for ln in (jsonl_fixture / "interactions.csv").read_text().splitlines()[1:]]
    for user, seq in zip(ds.interactions.users, ds.interactions.sequences):
        mine = sorted((int(t), i) for u, i, t in rows if u == user)
        assert [cat[j].id for j in seq] == [i for _, i in mine]


def _jsonl_case(tmp_path: Path, jsonl_fixture: Path) -> Path:
    d = tmp_path / "in"
    shutil.copytree(jsonl_fixture, d)
    return d


@pytest.mark.parametrize("line,message", [
    ("{not json", r"items\.jsonl line 7: not valid JSON"),
    ('{"title": "no id"}', r"items\.jsonl line 7: missing or empty 'id'"),
    ('{"id": "sku-01", "title": "again"}', r"items\.jsonl line 7: item id 'sku-01' already on line 1"),
    ('{"id": "x", "title": "t", "image": "missing.png"}', r"items\.jsonl line 7: image file not found"),
    ('{"id": "x", "title": "t", "image": "interactions.csv"}', r"items\.jsonl line 7: interactions\.csv is not"),
])
def test_jsonl_bad_item_line(jsonl_fixture, tmp_path, line, message):
    d = _jsonl_case(tmp_path, jsonl_fixture)
    _edit_line(d / "items.jsonl", 7, line)
    with pytest.raises(DataFormatError, match=message):
        read_jsonl(d / "items.jsonl", d / "interactions.csv", tmp_path / "out")


def test_jsonl_bad_interactions(jsonl_fixture, tmp_path):
    d = _jsonl_case(tmp_path, jsonl_fixture)
    _edit_line(d / "interactions.csv", 5, "u1,sku-99,1700000000")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 5: unknown item id 'sku-99'"):
        read_jsonl(d / "items.jsonl", d / "interactions.csv", tmp_path / "out")
    _edit_line(d / "interactions.csv", 5, "u1,sku-01,yesterday")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 5: timestamp 'yesterday'"):
        read_jsonl(d / "items.jsonl", d / "interactions.csv", tmp_path / "out")
    _edit_line(d / "interactions.csv", 1, "user,item")
    with pytest.raises(DataFormatError, match=r"interactions\.csv line 1: header lacks the column\(s\) timestamp"):
        read_jsonl(d / "items.jsonl", d / "interactions.csv", tmp_path / "out")
    with pytest.raises(DataFormatError, match=r"nothing\.csv: file not found"):
        read_jsonl(d / "items.jsonl", d / "nothing.csv", tmp_path / "out")


def _gzip_copy(src: Path, dst: Path) -> Path:
    with open(src, "rb") as fi, gzip.open(dst, "wb") as fo:
        fo.write(fi.read())
    return dst


def test_jsonl_reads_gzip_inputs(jsonl_fixture, tmp_path):
    d = _jsonl_case(tmp_path, jsonl_fixture)
    items = _gzip_copy(d / "items.jsonl", d / "items.jsonl.gz")
    inter = _gzip_copy(d / "interactions.csv", d / "events.gz")  # detected by content, not by name
    plain = read_jsonl(d / "items.jsonl", d / "interactions.csv", tmp_path / "a")
    packed = read_jsonl(items, inter, tmp_path / "b")
    assert [it.id for it in packed.catalog] == [it.id for it in plain.catalog]
    assert [it.image is not None for it in packed.catalog] == [it.image is not None for it in plain.catalog]
    assert packed.interactions.sequences == plain.interactions.sequences
    assert packed.interactions.users == plain.interactions.users


def test_jsonl_truncated_gzip_is_one_sentence(jsonl_fixture, tmp_path):
    d = _jsonl_case(tmp_path, jsonl_fixture)
    data = gzip.compress((d / "interactions.csv").read_bytes())
    (d / "cut.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.csv\.gz: cannot be read after line \d+"):
        read_jsonl(d / "items.jsonl", d / "cut.csv.gz", tmp_path / "out")


def test_catalog_without_interactions(jsonl_fixture, tmp_path, capsys):
    out = tmp_path / "cat"
    assert main(["prepare", "jsonl", "--items", str(jsonl_fixture / "items.jsonl"), "--out", str(out)]) == 0
    assert "no interactions (a catalog only" in capsys.readouterr().out
    ds = Dataset.load(out)
    assert len(ds.catalog) == 12 and len(ds.interactions) == 0
    assert ds.counts()["items_with_image"] == 3 and ds.eval_cases("test") == []
    assert all(ds.catalog.image_path(i).is_file() for i in range(12) if ds.catalog[i].image)
    for extra, message in ((["--kcore", "5"], "--kcore filters interactions"),
                           (["--cold-fraction", "0.1"], "--cold-fraction holds out items")):
        rc = main(["prepare", "jsonl", "--items", str(jsonl_fixture / "items.jsonl"), "--out", str(tmp_path / "x"),
                   *extra])
        assert rc == 2 and message in capsys.readouterr().err


def test_a_jsonl_catalog_is_named_after_its_folder_unless_named(jsonl_fixture, tmp_path):
    """The name is what a model card and a demo notice take the data's terms from (MovieLens: research use)."""
    items = str(jsonl_fixture / "items.jsonl")
    assert main(["prepare", "jsonl", "--items", items, "--out", str(tmp_path / "a")]) == 0
    assert Dataset.load(tmp_path / "a").name == jsonl_fixture.name
    assert main(["prepare", "jsonl", "--items", items, "--out", str(tmp_path / "b"), "--name", "movielens-1m"]) == 0
    assert Dataset.load(tmp_path / "b").name == "movielens-1m"
    assert movielens_release(Dataset.load(tmp_path / "b").name) == "1m"


def test_prepare_refuses_foreign_folder(jsonl_fixture, tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        prepare("jsonl", tmp_path, items=jsonl_fixture / "items.jsonl", interactions=jsonl_fixture / "interactions.csv")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------- real data
def test_real_movielens_posters(shared_data, tmp_path):
    src, posters = shared_data / "movielens-100k", shared_data / "movielens-1m-posters"
    if not (src / "u.data").exists() or not (posters / "movies.dat").exists():
        pytest.skip(f"MovieLens files not found under {shared_data}")
    ds = prepare("movielens", tmp_path / "ml", source=src, posters=posters)
    assert ds.info["posters"]["movies"] == 1682 - 18  # 18 movies listed twice, merged
    assert len(ds.info["duplicates_merged"]) == 18
    assert ds.info["posters"]["matched"] >= 1400
    loaded = Dataset.load(tmp_path / "ml")
    assert loaded.counts()["users"] == 943
    assert loaded.counts()["items_with_image"] >= 1250
    star = loaded.catalog.index_of("50")
    assert loaded.catalog[star].meta["ml1m_id"] == 260
    titles = [it.title for it in loaded.catalog]
    assert len(titles) == len(set(titles)), "a movie is listed twice"
    assert "500" not in {it.id for it in loaded.catalog}  # Fly Away Home is 304


def test_real_unisrec_scientific(shared_data, tmp_path):
    src = shared_data / "amazon-scientific"
    if not (src / "Scientific.test.inter").exists():
        pytest.skip(f"amazon-scientific not found under {shared_data}")
    ds = prepare("unisrec", tmp_path / "sci", source=src, name="Scientific")
    c = Dataset.load(tmp_path / "sci").counts()
    assert (c["users"], c["items"]) == (2928, 1585)
    users = [ln.split("\t")[0] for ln in (src / "Scientific.user2index").read_text().splitlines()]
    for split in ("valid", "test"):
        given = {users[int(u)]: (h, t) for u, h, t in _inter_rows(src / f"Scientific.{split}.inter")}
        assert dict(zip(ds.interactions.users, ds.eval_cases(split))) == given
    n_train = len((src / "Scientific.train.inter").read_text().splitlines()) - 1
    assert sum(max(len(s) - 1, 0) for s in ds.train_sequences()) == n_train
    f = Features.load(cache_path(tmp_path / "sci", "clip-vit-b-32"))
    assert f.fingerprint == Dataset.load(tmp_path / "sci").catalog.fingerprint() and len(f) == 1585


def test_unisrec_truncated_histories_are_kept_as_given():
    from dtrec.data.unisrec import build_sequences

    files = {k: Path(f"T.{k}.inter") for k in ("train", "valid", "test")}
    full = list(range(8))  # histories cut to their last 4 items, as RecBole's MAX_ITEM_LIST_LENGTH does
    test = [(0, full[3:7], 7, 2)]
    valid = [(0, full[2:6], 6, 2)]
    train = [(0, full[max(0, p - 4):p], full[p], 2 + n) for n, p in enumerate(range(5, 0, -1))]
    assert build_sequences(train, valid, test, files, cap=4) == {0: [3, 4, 5, 6, 7]}
    with pytest.raises(DataFormatError, match=r"T\.valid\.inter line 2"):
        build_sequences(train, [(0, full[2:6], 5, 2)], test, files, cap=4)
    with pytest.raises(DataFormatError, match=r"T\.valid\.inter line 2"):  # without a cap the cut is an error
        build_sequences(train, valid, test, files, cap=None)
