"""Reader for the UniSRec / MISSRec / DeCoRec data format (e.g. Amazon "Scientific").

Files, for a prefix NAME: `NAME.item2index`, `NAME.user2index`, `NAME.text`,
`NAME.{train,valid,test}.inter` and the precomputed CLIP ViT-B/32 features
`NAME.feat1CLS` (text) and `NAME.feat3CLS` (image), raw float32 rows in index
order. Each user's full sequence is the test row's history plus its target;
the reader checks that leave-one-out over it reproduces the given valid and
test rows and that every train row is a prefix of it, so dtrec evaluates on
exactly the published splits.

RecBole-style tools may cut histories to their last 50 items. When a test
history is that long the earlier items are unknown; the sequence is kept as
given, its valid row only has to overlap it, and its train rows (which reach
before the cut) are not checked. Scientific has no such rows (longest given
history: 35 items; `meta.json` records `longest_given_history`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.data.errors import DataFormatError, require_file
from dtrec.data.registry import PrepareOptions, register_reader
from dtrec.features import Features, cache_path

FEATURE_ENCODER = "clip-vit-b-32"
FEATURE_FILES = {"text": "feat1CLS", "image": "feat3CLS"}
FEATURE_DIM = 512
INTER_HEADER = ["user_id:token", "item_id_list:token_seq", "item_id:token"]


def _read_index(path: Path) -> list[str]:
    """Keys of a `<key>\\t<index>` file, in index order; indices must be 0..n-1."""
    rows: dict[int, str] = {}
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataFormatError(path, "expected '<id>\\t<index>'", ln)
            i = int(parts[1])
            if i in rows:
                raise DataFormatError(path, f"index {i} appears twice", ln)
            rows[i] = parts[0]
    if sorted(rows) != list(range(len(rows))):
        raise DataFormatError(path, "indices are not 0..n-1")
    return [rows[i] for i in range(len(rows))]


def _read_text(path: Path) -> dict[str, str]:
    """asin -> text of `NAME.text` (header, then `<asin>\\t<text>`)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if ln == 1 and line.startswith("item_id"):
                continue
            if not line:
                continue
            asin, sep, text = line.partition("\t")
            if not sep:
                raise DataFormatError(path, "expected '<item id>\\t<text>'", ln)
            out[asin] = text.strip()
    return out


def _read_inter(path: Path, n_users: int, n_items: int) -> list[tuple[int, list[int], int, int]]:
    """Rows (user, history, target, line) of a `.inter` file, indices range-checked."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for ln, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if ln == 1:
                if line.split("\t") != INTER_HEADER:
                    raise DataFormatError(path, f"expected the header {chr(9).join(INTER_HEADER)!r}", ln)
                continue
            if not line:
                continue
            parts = line.split("\t")
            try:
                if len(parts) != 3:
                    raise ValueError
                user, hist, target = int(parts[0]), [int(x) for x in parts[1].split()], int(parts[2])
            except ValueError:
                raise DataFormatError(path, "expected '<user>\\t<item item ...>\\t<item>' of integer indices",
                                      ln) from None
            if not 0 <= user < n_users:
                raise DataFormatError(path, f"user index {user} is not in the user2index file", ln)
            for i in (*hist, target):
                if not 0 <= i < n_items:
                    raise DataFormatError(path, f"unknown item index {i}", ln)
            if not hist:
                raise DataFormatError(path, "empty history", ln)
            rows.append((user, hist, target, ln))
    return rows


def category_root(texts: list[str]) -> str | None:
    """The words most category segments start with ("Industrial & Scientific"), when most items share them."""
    from collections import Counter

    heads = Counter()
    for t in texts:
        parts = t.strip().split(". ")
        if len(parts) >= 3 and parts[-2]:
            heads[" ".join(parts[-2].split()[:3])] += 1
    if not heads:
        return None
    head, n = heads.most_common(1)[0]
    return head if n > len(texts) / 2 else None


def title_of(text: str, root: str | None = None) -> str:
    """Product title of a 'title. category. brand.' text; titles and brands may themselves hold '. '."""
    t = text.strip()
    cuts = [i for i in (t.find(". . "), t.find(f". {root}") if root else -1) if i > 0]
    if cuts:  # an empty category (". . ") or the known category root ends the title
        return t[: min(cuts)].strip()
    return t.split(". ", 1)[0].strip().rstrip(".") or t


def build_sequences(train, valid, test, files: dict[str, Path], cap: int | None = None) -> dict[int, list[int]]:
    """Full sequence per user (test history + target), verified against the valid and train rows.

    With `cap` set (histories were cut to their last `cap` items), users whose test
    history has `cap` items are checked only for the valid row's target and overlap:
    their train rows refer to items before the cut.
    """
    seqs: dict[int, list[int]] = {}
    for user, hist, target, ln in test:
        if user in seqs:
            raise DataFormatError(files["test"], f"user {user} has two test rows", ln)
        seqs[user] = hist + [target]
    cut = {u for u, s in seqs.items() if cap is not None and len(s) - 1 >= cap}
    seen_valid = set()
    for user, hist, target, ln in valid:
        s = seqs.get(user)
        if s is None:
            raise DataFormatError(files["valid"], f"user {user} has no test row", ln)
        if user in seen_valid:
            raise DataFormatError(files["valid"], f"user {user} has two valid rows", ln)
        seen_valid.add(user)
        if user in cut:
            n = min(len(hist), len(s) - 2)
            ok = s[-2] == target and hist[len(hist) - n:] == s[len(s) - 2 - n: len(s) - 2]
        else:
            ok = s[-2] == target and hist == s[:-2]
        if not ok:
            raise DataFormatError(files["valid"], f"user {user}: valid row is not the test history minus its "
                                                  "last item", ln)
    if len(seen_valid) != len(seqs):
        missing = sorted(set(seqs) - seen_valid)[:3]
        raise DataFormatError(files["valid"], f"users {missing} have a test row but no valid row")
    covered: dict[int, set[int]] = {}
    for user, hist, target, ln in train:
        s = seqs.get(user)
        if s is None:
            raise DataFormatError(files["train"], f"user {user} has no test row", ln)
        if user in cut:
            continue
        pos = len(hist)  # the row predicts item `pos` of the sequence from the items before it
        if not (pos < len(s) - 2 and s[pos] == target and s[:pos] == hist):
            raise DataFormatError(files["train"], f"user {user}: train row is not a prefix of the user's "
                                                  "test sequence", ln)
        if pos in covered.setdefault(user, set()):
            raise DataFormatError(files["train"], f"user {user}: the prefix of length {pos} appears twice", ln)
        covered[user].add(pos)
    for user, s in seqs.items():
        got = covered.get(user, set())
        if user not in cut and got != set(range(1, len(s) - 2)):
            lacking = sorted(set(range(1, len(s) - 2)) - got)
            raise DataFormatError(files["train"], f"user {user}: no train row for the prefixes of length {lacking}")
    return seqs


def read_features(path: Path, n_items: int) -> torch.Tensor:
    """A raw float32 (n_items, 512) feature file."""
    size = path.stat().st_size
    if size != n_items * FEATURE_DIM * 4:
        raise DataFormatError(path, f"expected {n_items} x {FEATURE_DIM} float32 values ({n_items * FEATURE_DIM * 4} "
                                    f"bytes), found {size} bytes")
    arr = np.fromfile(path, dtype="<f4").reshape(n_items, FEATURE_DIM)
    if not np.isfinite(arr).all():
        raise DataFormatError(path, "holds NaN or infinite values")
    return torch.from_numpy(arr.copy())


def read_unisrec(source: str | Path, name: str, out: str | Path, max_len: int = 50) -> Dataset:
    """Read `source/NAME.*`, write its CLIP features into `out`'s feature cache, return the Dataset.

    `max_len` is the history cap the files may have been cut to (RecBole's default, 50).
    """
    source, out = Path(source), Path(out)
    f = {k: require_file(source / f"{name}.{k}") for k in ("item2index", "user2index", "text")}
    files = {k: require_file(source / f"{name}.{k}.inter") for k in ("train", "valid", "test")}
    feats = {m: require_file(source / f"{name}.{suffix}") for m, suffix in FEATURE_FILES.items()}

    asins = _read_index(f["item2index"])
    users = _read_index(f["user2index"])
    texts = _read_text(f["text"])
    missing = [a for a in asins if a not in texts]
    if missing:
        raise DataFormatError(f["text"], f"{len(missing)} items of the item2index file have no text, e.g. {missing[0]}")

    rows = {k: _read_inter(p, len(users), len(asins)) for k, p in files.items()}
    longest = max((len(h) for r in rows.values() for _, h, _, _ in r), default=0)
    cap = max_len if longest >= max_len else None
    seqs = build_sequences(rows["train"], rows["valid"], rows["test"], files, cap)

    root = category_root([texts[a] for a in asins])
    items = [Item(id=a, title=title_of(texts[a], root), text=texts[a], image=None, meta={"index": i})
             for i, a in enumerate(asins)]
    catalog = Catalog(items, root=out)
    order = sorted(seqs)
    inter = Interactions([users[u] for u in order], [seqs[u] for u in order], None)
    info = {"source": {"kind": "unisrec", "folder": str(source.resolve()), "name": name},
            "kcore": 0, "history_cap_reached": longest >= max_len, "longest_given_history": longest,
            # No image files, but precomputed image features: say so where `dtrec info` readers look.
            "precomputed_features": {"encoder": FEATURE_ENCODER, "modalities": list(FEATURE_FILES)}}
    dataset = Dataset(catalog, inter, name=name, info=info, root=out)

    values = {m: read_features(p, len(asins)) for m, p in feats.items()}
    present = {m: torch.ones(len(asins), dtype=torch.bool) for m in values}
    out.mkdir(parents=True, exist_ok=True)
    Features(FEATURE_ENCODER, values, present, catalog.fingerprint()).save(cache_path(out, FEATURE_ENCODER))
    return dataset


@dataclass(kw_only=True)
class UniSRecOptions(PrepareOptions):
    """The options of `dtrec prepare unisrec`."""

    source: Path
    name: str = field(metadata={"help": "file prefix, e.g. Scientific"})


@register_reader("unisrec", "UniSRec/MISSRec/DeCoRec format (*.inter, item2index, .text, feat*CLS)", UniSRecOptions)
def read(options: UniSRecOptions, out: Path) -> Dataset:
    """`read_unisrec` with the options of `dtrec prepare unisrec` (no k-core: the splits are given)."""
    if options.kcore:
        raise ValueError("--kcore is not supported for the unisrec format: its splits are given and fixed")
    return read_unisrec(options.source, options.name, out)
