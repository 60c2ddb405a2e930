"""Title look-up for the demo's search box: exact, prefix, word and fuzzy matches of a typed title.

`TitleIndex` holds item titles by store row and answers `match(query)` with the rows whose title
the query names, best first, in four tiers:

0. exact: the query is the title ("toy story" for "Toy Story (1995)", "godfather" for "The
   Godfather (1972)", "se7en" for "Seven (Se7en) (1995)");
1. prefix: a title starts with the query ("star wa");
2. word: the query starts at a word inside the title ("jedi"), for queries of 3+ characters;
3. fuzzy: a typo away from the title or from a run of its words ("toy sotry", "godfater",
   "raiders of the lost arc"), for queries of 4+ characters. A typo budget (edits, a swap of two
   neighbours counting as one) of one per 7 characters keeps descriptions out: "space adventure"
   is 4 edits from "panda adventure", although difflib rates the pair 0.8.

Titles and queries are compared as keys: accents removed, case folded, the year dropped, a trailing
article moved to the front ("Godfather, The" -> "the godfather"), punctuation turned into spaces.
Each title also yields its alternative titles in parentheses and its forms without a leading article.
Tiers 0-2 are found by one scan of all keys joined into one string; fuzzy candidates by the
character bigrams they share with the query (an inverted index), so that only a shortlist reaches
the edit distance. A look-up over ~1,400 titles takes about 2 ms.
"""

from __future__ import annotations

import difflib
import re
import unicodedata

import numpy as np

FUZZY_MIN = 0.8  # difflib ratio a fuzzy match needs besides the typo budget (a cheap first filter)
CHARS_PER_TYPO = 7  # typo budget: one edit per this many characters of the query, at least one
_FUZZY_SHORTLIST = 100  # runs of words (most bigrams shared with the query first) checked per query
_FUZZY_DICE_MIN = 0.4  # bigram overlap below which no run is checked (a typo keeps most bigrams)
_RUN_WORDS = 6  # fuzzy matches are sought among runs of up to this many words of a title (and whole titles)
_KEY_WORDS = 16  # ... taken from its first this many words
_REFREEZE_AFTER = 256  # titles added since the frozen copy before it is rebuilt
_YEAR = re.compile(r"\(\s*(?:\d{4}(?:/[ivx]+)?|\?{4})\s*\)")
_PAREN = re.compile(r"\(([^()]*)\)")
_TRAILING_ARTICLE = re.compile(r"^(.*\S),\s*(the|a|an|la|le|les|l'|il|el|los|las|der|die|das|det|den)$")
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an|la|le|les|l|il|el|los|las|der|die|das|det|den) ")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def _fold(text: str) -> str:
    """Lower case, accents removed: 'Cité' -> 'cite'."""
    text = unicodedata.normalize("NFKD", str(text).casefold())
    return "".join(c for c in text if not unicodedata.combining(c))


def _key(part: str) -> str:
    """One title (or alternative title) as a key: article to the front, punctuation as single spaces."""
    part = part.strip()
    m = _TRAILING_ARTICLE.match(part)
    if m:
        part = f"{m.group(2)} {m.group(1)}"
    return _NON_WORD.sub(" ", part).strip()


def title_keys(title: str) -> list[str]:
    """The keys a query is compared with: the title, each alternative title in parentheses, and each
    of those without its leading article ('the godfather', 'godfather')."""
    t = _YEAR.sub(" ", _fold(title))
    parts = [_PAREN.sub(" ", t)] + _PAREN.findall(t)
    keys: list[str] = []
    for p in parts:
        k = _key(p)
        for form in (k, _LEADING_ARTICLE.sub("", k)):
            if form and form not in keys:
                keys.append(form)
    return keys


def query_key(query: str) -> str:
    """A typed query as a key (year and punctuation dropped, like a title's)."""
    return _key(_YEAR.sub(" ", _fold(query)))


def typo_budget(query_key: str) -> int:
    """How many edits a fuzzy match may be away from the query key."""
    return max(1, round(len(query_key) / CHARS_PER_TYPO))


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance (insertions, deletions, substitutions and swaps of neighbours,
    one edit each) between `a` and `b`, or `limit + 1` once it is sure to exceed `limit`."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            d = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d = min(d, prev2[j - 2] + 1)
            cur[j] = d
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return min(prev[-1], limit + 1)


def _bigrams(text: str) -> set[str]:
    padded = f" {text} "
    return {padded[i:i + 2] for i in range(len(padded) - 1)}


class TitleIndex:
    """Titles by row; `match` finds the rows whose title a query names (tiers in the module docstring).

    Look-ups run over a frozen copy (one string of all keys, bigram postings as arrays) plus the few
    titles added since, scanned one by one, so that an upload costs no rebuild; after
    `_REFREEZE_AFTER` additions the copy is rebuilt.
    """

    def __init__(self) -> None:
        self._keys: dict[int, list[str]] = {}
        self._spans: list[tuple[int, str, int]] = []  # (row, run of a key's words, its number of bigrams)
        self._spans_of: dict[int, tuple[int, int]] = {}  # row -> its span ids, start:stop
        self._postings: dict[str, list[int]] = {}  # bigram -> span ids (a removed row's stay until compacted)
        self._dead = 0  # spans of removed rows still in the lists
        self._frozen: dict | None = None
        self._recent: list[int] = []  # rows added since the frozen copy was made

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, row: int, title: str) -> None:
        """Index the title of `row` (replacing what the row had)."""
        self.remove(row)
        self._add_keys(row, title_keys(title))
        if self._frozen is not None:
            self._recent.append(row)

    def _add_keys(self, row: int, keys: list[str]) -> None:
        self._keys[row] = keys
        # runs of up to _RUN_WORDS words of the first _KEY_WORDS words: a long title costs no more
        runs = set(keys)
        for words in (k.split(" ")[:_KEY_WORDS] for k in keys):
            runs.update(" ".join(words[i:j]) for i in range(len(words))
                        for j in range(i + 1, min(len(words), i + _RUN_WORDS) + 1))
        start = len(self._spans)
        for run in sorted(runs):
            grams = _bigrams(run)
            for g in grams:
                self._postings.setdefault(g, []).append(len(self._spans))
            self._spans.append((row, run, len(grams)))
        self._spans_of[row] = (start, len(self._spans))

    def remove(self, row: int) -> None:
        """Forget the title of `row` (no-op when it has none)."""
        if self._keys.pop(row, None) is None:
            return
        start, stop = self._spans_of.pop(row)
        self._dead += stop - start
        if self._dead > max(1000, len(self._spans) // 2):  # uploads come and go: keep the lists lean
            keys = self._keys
            self._keys, self._spans, self._spans_of, self._postings, self._dead = {}, [], {}, {}, 0
            self._frozen, self._recent = None, []
            for r, k in keys.items():
                self._add_keys(r, k)

    def freeze(self) -> None:
        """Build the frozen copy of everything indexed now (else the next `match` builds it)."""
        lines = [(row, k, keys) for row, keys in self._keys.items() for k in keys]
        # one line per key, each starting with a space: " q" found at a line start is a prefix
        starts = np.cumsum([0] + [len(k) + 2 for _, k, _ in lines])
        self._frozen = {
            "text": "".join(f" {k}\n" for _, k, _ in lines), "starts": starts, "lines": lines,
            "postings": {g: np.asarray(ids, dtype=np.int64) for g, ids in self._postings.items()},
            "n_spans": len(self._spans),
            "sizes": np.asarray([n for _, _, n in self._spans], dtype=np.int64),
        }
        self._recent = []

    def match(self, query: str) -> list[tuple[int, int, float]]:
        """(row, tier, similarity) of every row whose title matches `query`, best first.

        Similarity: for tiers 0-2 the share of the matched key that the query covers (so "star wars"
        comes before "star wars: the special edition" for "star wa"); for tier 3 difflib's ratio, ties
        going to the title the query covers more of ("friady": "Friday" before "His Girl Friday").
        """
        q = query_key(query)
        if not q:
            return []
        if self._frozen is None or len(self._recent) > _REFREEZE_AFTER:
            self.freeze()
        fz = self._frozen
        best: dict[int, tuple[int, float, float]] = {}  # row -> (tier, similarity, share of the title covered)

        def consider(row: int, k: str, at: int) -> None:
            if at == 0:
                tier = 0 if len(k) == len(q) else 1
            elif len(q) >= 3:
                tier = 2
            else:
                return
            hit, old = (tier, len(q) / len(k), len(q) / len(k)), best.get(row)
            if old is None or (hit[0], -hit[1]) < (old[0], -old[1]):
                best[row] = hit

        for m in re.finditer(re.escape(f" {q}"), fz["text"]):
            line = int(np.searchsorted(fz["starts"], m.start(), side="right")) - 1
            row, k, keys = fz["lines"][line]
            if self._keys.get(row) is keys:  # else removed or retitled since the copy was made
                consider(row, k, m.start() - int(fz["starts"][line]))
        for row in self._recent:
            for k in self._keys.get(row, ()):
                at = f" {k}".find(f" {q}")
                if at >= 0:
                    consider(row, k, at)
        if len(q) >= 4:
            for row, (sim, cover) in self._fuzzy(q, fz).items():
                if row not in best:
                    best[row] = (3, sim, cover)
        order = sorted(best.items(), key=lambda rb: (rb[1][0], -rb[1][1], -rb[1][2], rb[0]))
        return [(row, tier, sim) for row, (tier, sim, _) in order]

    def _fuzzy(self, q: str, fz: dict) -> dict[int, tuple[float, float]]:
        """Rows with a key or run of words within the typo budget of `q`: (difflib ratio, share of the
        shortest key covered by the run) of the best run of each."""
        grams = _bigrams(q)
        lists = [fz["postings"][g] for g in grams if g in fz["postings"]]
        sizes = fz["sizes"]
        shared = np.bincount(np.concatenate(lists), minlength=len(sizes)) if lists else np.zeros(len(sizes))
        dice = 2.0 * shared / (len(grams) + sizes)
        top = np.flatnonzero(dice >= _FUZZY_DICE_MIN)
        if len(top) > _FUZZY_SHORTLIST:
            top = top[np.argpartition(-dice[top], _FUZZY_SHORTLIST)[:_FUZZY_SHORTLIST]]
        sids = top.tolist()
        for sid in range(fz["n_spans"], len(self._spans)):  # added since the copy was made
            _, run, n = self._spans[sid]
            if 2.0 * len(grams & _bigrams(run)) / (len(grams) + n) >= _FUZZY_DICE_MIN:
                sids.append(sid)
        budget = typo_budget(q)
        out: dict[int, tuple[float, float]] = {}
        sm = difflib.SequenceMatcher(autojunk=False)
        sm.set_seq2(q)
        for sid in sids:
            row, run, _ = self._spans[sid]
            live = self._spans_of.get(row)
            if live is None or not live[0] <= sid < live[1]:
                continue  # a removed row's (or a replaced title's) span
            sm.set_seq1(run)
            if sm.real_quick_ratio() < FUZZY_MIN or sm.quick_ratio() < FUZZY_MIN:
                continue
            r = sm.ratio()
            if r < FUZZY_MIN or edit_distance(q, run, budget) > budget:
                continue
            hit = (r, len(run) / min(len(k) for k in self._keys[row]))
            if hit > out.get(row, (0.0, 0.0)):
                out[row] = hit
        return out
