"""MovieLens-100K reader, with posters joined from MovieLens-1M by normalised title and year.

Movies listed twice (same title, release date and genres under two ids) are merged into the
smaller id at reading (`duplicate_movies`, `merge_duplicates`).

MovieLens-100K (`u.data`, `u.item`, `u.genre`) has no images; the posters are
keyed by MovieLens-1M ids, whose titles differ in details ("Boot, Das (1981)"
vs "Boat, The (Das Boot) (1981)", "Star Wars (1977)" vs "Star Wars: Episode IV
- A New Hope (1977)"). `match_posters` joins the two lists in stages, from
exact to loose, and only ever accepts a unique candidate.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dtrec.data.catalog import Catalog, Dataset, Interactions, Item
from dtrec.data.errors import DataFormatError, require_file
from dtrec.data import preprocess
from dtrec.data.registry import PrepareOptions, register_reader

# Articles that MovieLens moves behind the title ("Shawshank Redemption, The").
ARTICLES = {"the", "a", "an", "les", "la", "le", "l'", "los", "las", "el", "il", "lo", "i", "gli", "der", "die",
            "das", "den", "det", "de", "het", "o", "os", "as", "un", "une", "ein", "eine"}
_YEAR = re.compile(r"\s*\((\d{4})(?:/[IVX]+)?\)\s*$")
_TRAILING_NOTE = re.compile(r"\s*\((?:V|TV)\)\s*$")
_AKA = re.compile(r"(?:^|,\s*)a\.k\.a\.\s*", re.I)


@dataclass
class Movie:
    """One movie of a MovieLens list: id, raw title, year and the name variants used for matching."""

    id: int
    title: str
    year: int | None
    names: list[str] = field(default_factory=list)  # normalised; names[0] is the main title
    genres: list[str] = field(default_factory=list)
    released: str = ""  # release date as the source writes it ("13-Sep-1996"); "" when not given


def strip_accents(s: str) -> str:
    """`s` without diacritics ("Misérables" -> "Miserables")."""
    return "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))


def normalise_name(name: str) -> str:
    """Lowercase, accent-free, article-first, punctuation-free form of a title (no year)."""
    s = strip_accents(name).replace("\ufffd", "_").lower().strip()
    m = re.match(r"^(.*),\s*([a-z']+)$", s)
    if m and m.group(2) in ARTICLES:
        art = m.group(2)
        s = f"{art}{'' if art.endswith(chr(39)) else ' '}{m.group(1)}"
    s = s.replace("&", " and ")
    s = re.sub(r"[^a-z0-9_]+", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def split_title(raw: str) -> tuple[str, list[str], int | None]:
    """("Main title", [alternate titles in parentheses], year) of a MovieLens title."""
    t = raw.strip()
    while True:  # "(V)" after the year
        m = _TRAILING_NOTE.search(t)
        if not m or m.start() == 0:
            break
        t = t[: m.start()]
    year = None
    m = _YEAR.search(t)
    if m:
        year = int(m.group(1))
        t = t[: m.start()]
    alts: list[str] = []
    # Alternate titles sit in trailing parentheses: "City of Lost Children, The (Cité des enfants perdus, La)".
    while t.endswith(")"):
        depth, start = 0, None
        for i in range(len(t) - 1, -1, -1):
            depth += t[i] == ")"
            depth -= t[i] == "("
            if depth == 0:
                start = i
                break
        if not start:
            break
        inner = t[start + 1 : -1].strip()
        # "(a.k.a. Sydney, a.k.a. Hard Eight)" holds several alternates.
        parts = [p.strip() for p in _AKA.split(inner)] if _AKA.search(inner) else [inner]
        alts.extend(p for p in parts if p)
        t = t[:start].rstrip()
    return t, alts, year


def parse_movie(mid: int, raw: str, genres: list[str] | None = None) -> Movie:
    """A `Movie` with its normalised name variants."""
    main, alts, year = split_title(raw)
    names = []
    for n in [main, *alts]:
        nn = normalise_name(n)
        if nn and nn not in names:
            names.append(nn)
    return Movie(mid, raw, year, names, list(genres or []))


_GENERIC_PARTS = {"the movie", "movie", "part ii", "part 2", "the series"}


def _parts(m: Movie) -> set[str]:
    """Name variants plus the pieces of the main title around ':' and ' - ' (for "Star Wars: Episode IV - ...")."""
    main = split_title(m.title)[0]
    pieces = {normalise_name(p) for p in re.split(r":|\s-\s", main)}
    return {p for p in pieces if len(p) >= 4 and p not in _GENERIC_PARTS} | set(m.names)


def _compact(m: Movie) -> set[str]:
    return {n.replace(" ", "") for n in m.names}


# Stages from strict to loose; each maps a movie to the names it may be known by.
_STAGES = [
    ("exact", lambda m: set(m.names[:1]), 0),
    ("alternate", lambda m: set(m.names), 0),
    ("spacing", _compact, 0),
    ("title part", _parts, 0),
    ("year +-1", lambda m: set(m.names), 1),
]


def match_posters(ml100k: list[Movie], ml1m: list[Movie]) -> dict[int, int]:
    """Map ML-100K id -> ML-1M id by title and year, from exact to loose; a stage accepts only a unique candidate.

    Several ML-100K ids may map to one ML-1M id: ML-100K lists a few movies twice.
    """
    result: dict[int, int] = {}
    for _, keys, slack in _STAGES:
        index: dict[tuple[str, int | None], set[int]] = {}
        for m in ml1m:
            for n in keys(m):
                if n:
                    index.setdefault((n, m.year), set()).add(m.id)
        for m in ml100k:
            if m.id in result:
                continue
            years = [m.year] if slack == 0 or m.year is None else range(m.year - slack, m.year + slack + 1)
            cands = set().union(*[index.get((n, y), set()) for n in keys(m) for y in years])
            if len(cands) == 1:
                result[m.id] = next(iter(cands))
    # Last, titles that ML-1M stores with a broken character (U+FFFD, kept as "_"): a wildcard, same year.
    for m1 in ml1m:
        pats = [re.compile(n.replace(" ", "").replace("_", "[a-z0-9]{0,2}") + "$") for n in m1.names if "_" in n]
        if not pats:
            continue
        hits = [m.id for m in ml100k if m.id not in result and m.year == m1.year
                and any(p.match(c) for p in pats for c in _compact(m))]
        if len(hits) == 1:
            result[hits[0]] = m1.id
    return result


def _read_text(path: Path) -> list[str]:
    """Lines of a MovieLens text file; each line utf-8 when valid, else latin-1 (the files mix both)."""
    out = []
    for raw in path.read_bytes().splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(raw.decode("latin-1"))
    return out


def read_genres(path: Path) -> list[str]:
    """Genre names in flag order from `u.genre` (`name|index`)."""
    names: dict[int, str] = {}
    for ln, line in enumerate(_read_text(path), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 2 or not parts[1].strip().isdigit():
            raise DataFormatError(path, f"expected 'name|index', got {line!r}", ln)
        names[int(parts[1])] = parts[0]
    return [names[i] for i in sorted(names)]


def read_items(path: Path, genre_names: list[str]) -> list[Movie]:
    """Movies of `u.item` (`id|title (year)|release date||url|19 genre flags`, latin-1)."""
    movies = []
    for ln, line in enumerate(path.read_bytes().decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) != 5 + len(genre_names) or not parts[0].isdigit():
            raise DataFormatError(path, f"expected id|title|date||url|{len(genre_names)} genre flags, "
                                        f"got {len(parts)} fields", ln)
        flags = parts[5:]
        if any(f not in ("0", "1") for f in flags):
            raise DataFormatError(path, "genre flags must be 0 or 1", ln)
        genres = [g for g, f in zip(genre_names, flags) if f == "1" and g != "unknown"]
        movie = parse_movie(int(parts[0]), parts[1], genres)
        movie.released = parts[2].strip()
        movies.append(movie)
    return movies


def duplicate_movies(movies: list[Movie]) -> dict[int, int]:
    """Map each duplicate id to the smallest id of its movie: same title, release date and genres.

    MovieLens-100K lists 18 movies twice under two ids ("Fly Away Home (1996)" is 304 and 500).
    """
    first: dict[tuple, int] = {}
    dup: dict[int, int] = {}
    for m in sorted(movies, key=lambda m: m.id):
        key = (m.title.strip(), m.released, tuple(m.genres))
        if key in first:
            dup[m.id] = first[key]
        else:
            first[key] = m.id
    return dup


def merge_duplicates(users: list[int], items: list[int], ts: list[int],
                     dup: dict[int, int]) -> tuple[list[int], list[int], list[int]]:
    """Events with duplicate ids renamed to their movie's first id; a user's later events on the same movie dropped.

    A user who rated both copies of a movie keeps the earlier rating only, so no history names a movie twice.
    """
    renamed = [dup.get(i, i) for i in items]
    seen: set[tuple[int, int]] = set()
    keep = [False] * len(users)
    for e in sorted(range(len(users)), key=lambda e: (users[e], ts[e], e)):
        if (users[e], renamed[e]) not in seen:
            seen.add((users[e], renamed[e]))
            keep[e] = True
    return ([u for u, k in zip(users, keep) if k], [i for i, k in zip(renamed, keep) if k],
            [t for t, k in zip(ts, keep) if k])


def read_ml1m_movies(path: Path) -> list[Movie]:
    """Movies of MovieLens-1M `movies.dat` (`id::Title (year)::Genre|Genre`)."""
    movies = []
    for ln, line in enumerate(_read_text(path), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3 or not parts[0].isdigit():
            raise DataFormatError(path, "expected 'id::Title (year)::Genres'", ln)
        movies.append(parse_movie(int(parts[0]), parts[1], parts[2].split("|")))
    return movies


def read_ratings(path: Path, known: set[int] | None = None) -> tuple[list[int], list[int], list[int]]:
    """(users, item ids, timestamps) of `u.data` (`user\\titem\\trating\\ttime`), in file order.

    Every rating counts as an interaction, whatever its value. Item ids outside `known` are an error.
    """
    users, items, ts = [], [], []
    with open(path, encoding="latin-1") as fh:
        for ln, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
                raise DataFormatError(path, f"expected 4 integer fields 'user item rating time', got {line.strip()!r}",
                                      ln)
            if known is not None and int(parts[1]) not in known:
                raise DataFormatError(path, f"unknown item id {parts[1]} (not in u.item)", ln)
            users.append(int(parts[0]))  # ints, so users sort numerically
            items.append(int(parts[1]))
            ts.append(int(parts[3]))
    return users, items, ts


def display_title(raw: str, year: int | None) -> str:
    """"Title (year)" with a trailing article moved to the front ("Shawshank Redemption, The" -> "The ...")."""
    main, _, _ = split_title(raw)
    main = main or raw.strip()
    m = re.match(r"^(.*),\s*([A-Za-z']+)$", main)
    if m and m.group(2).lower() in ARTICLES:
        art = m.group(2)
        main = f"{art}{'' if art.endswith(chr(39)) else ' '}{m.group(1)}"
    return f"{main} ({year})" if year else main


def movie_text(raw: str, year: int | None, genres: list[str]) -> str:
    """Item text: "Title (year). Genres: A, B."."""
    head = display_title(raw, year)
    return f"{head}. Genres: {', '.join(genres)}." if genres else f"{head}."


def read_movielens(source: str | Path, posters: str | Path | None, out: str | Path, kcore: int = 5,
                   min_len: int = 3) -> Dataset:
    """Read MovieLens-100K from `source`, join posters from `posters` (movies.dat + posters/), copy them to `out`."""
    source, out = Path(source), Path(out)
    genre_names = read_genres(require_file(source / "u.genre"))
    movies = read_items(require_file(source / "u.item"), genre_names)
    by_id = {m.id: m for m in movies}
    if len(by_id) != len(movies):
        raise DataFormatError(source / "u.item", "duplicate movie ids")
    users, item_ids, ts = read_ratings(require_file(source / "u.data"), set(by_id))
    dup = duplicate_movies(movies)
    if dup:
        users, item_ids, ts = merge_duplicates(users, item_ids, ts, dup)
        movies = [m for m in movies if m.id not in dup]

    matches: dict[int, int] = {}
    poster_dir = None
    if posters is not None:
        posters = Path(posters)
        poster_dir = posters / "posters"
        if not poster_dir.is_dir():
            raise DataFormatError(poster_dir, f"folder not found ({poster_dir})")
        have = {int(p.stem) for p in poster_dir.glob("*.jpg") if p.stem.isdigit()}
        ml1m = [m for m in read_ml1m_movies(require_file(posters / "movies.dat")) if m.id in have]
        matches = match_posters(movies, ml1m)

    mask = preprocess.kcore(users, item_ids, kcore)
    index = {m.id: i for i, m in enumerate(movies)}
    inter = Interactions.from_events([u for u, k in zip(users, mask) if k],
                                     [index[i] for i, k in zip(item_ids, mask) if k],
                                     [t for t, k in zip(ts, mask) if k])
    inter = preprocess.drop_short(inter, min_len)

    out.mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(exist_ok=True)
    used = {i for s in inter.sequences for i in s}
    items = []
    for i, m in enumerate(tqdm(movies, desc="movies", unit="movie", disable=None)):
        image = None
        if m.id in matches and i in used:
            image = f"images/{m.id}.jpg"
            shutil.copyfile(poster_dir / f"{matches[m.id]}.jpg", out / image)
        items.append(Item(id=str(m.id), title=display_title(m.title, m.year),
                          text=movie_text(m.title, m.year, m.genres), image=image,
                          meta={"year": m.year, "genres": m.genres, "ml100k_id": m.id,
                                "ml1m_id": matches.get(m.id)}))
    if posters is not None:
        with open(out / "unmatched_posters.txt", "w", encoding="utf-8") as fh:
            for m in movies:
                if m.id not in matches:
                    fh.write(f"{m.id}\t{m.title}\n")

    catalog, inter = preprocess.compact(Catalog(items, root=out), inter)
    info = {
        "source": {"kind": "movielens", "ratings": str(source.resolve()),
                   "posters": str(Path(posters).resolve()) if posters is not None else None},
        "kcore": kcore,
        "duplicates_merged": {str(k): v for k, v in sorted(dup.items())},
    }
    if posters is not None:
        info["posters"] = {"matched": len(matches), "movies": len(movies), "unmatched_list": "unmatched_posters.txt"}
    return Dataset(catalog, inter, name="ml100k", info=info, root=out)


@dataclass(kw_only=True)
class MovieLensOptions(PrepareOptions):
    """The options of `dtrec prepare movielens`."""

    source: Path = field(metadata={"help": "folder holding u.data and u.item"})
    posters: Path | None = field(default=None, metadata={"help": "folder holding movies.dat and posters/<id>.jpg"})
    kcore: int = 5


@register_reader("movielens", "MovieLens-100K (u.data, u.item) with MovieLens-1M posters", MovieLensOptions)
def read(options: MovieLensOptions, out: Path) -> Dataset:
    """`read_movielens` with the options of `dtrec prepare movielens`."""
    return read_movielens(options.source, options.posters, out, kcore=options.kcore)
