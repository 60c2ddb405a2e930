"""Windows and padding (dtrec.sequences): examples cover every transition once; `pad` and the layouts built on it
equal the per-sequence loops they replaced (dtrec's user-tower input, SASRec's windows and histories)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dtrec.baselines.sasrec import SASRec, SASRecConfig, training_windows
from dtrec.sequences import build_examples, history_batch, pad, padded_width


def test_examples_cover_every_transition_once():
    seqs = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10]]
    cloze = build_examples(seqs, "cloze", max_len=3)
    assert [e[-1] for e in cloze] == [2, 3, 4, 5, 6, 7, 10] and max(map(len, cloze)) == 4
    causal = build_examples(seqs, "causal", max_len=3)
    pairs = sorted((e[i], e[i + 1]) for e in causal for i in range(len(e) - 1))
    assert pairs == [(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (9, 10)]
    assert max(map(len, causal)) == 4


def test_padded_width_rounds_up_within_the_cap():
    assert [padded_width(w, 4) for w in (1, 4, 5, 8)] == [4, 4, 8, 8]
    assert [padded_width(w, 8, cap=20) for w in (3, 13, 17, 20)] == [8, 16, 20, 20]
    assert padded_width(7, 1) == 7 and padded_width(21, 8, cap=20) == 21  # never below the width itself
    with pytest.raises(ValueError):
        padded_width(3, 0)


def test_pad_puts_items_first_or_last():
    seqs = [[5, 6, 7], [], [8]]
    assert pad(seqs, 4).tolist() == [[5, 6, 7, -1], [-1] * 4, [8, -1, -1, -1]]
    assert pad(seqs, 3, fill=0, left=True).tolist() == [[5, 6, 7], [0, 0, 0], [0, 0, 8]]
    assert pad([], 2).shape == (0, 2)
    with pytest.raises(ValueError, match="does not fit"):
        pad(seqs, 2)


def _random_sequences(g: torch.Generator, n: int, longest: int, lowest: int = 0) -> list[list[int]]:
    lens = torch.randint(lowest, longest + 1, (n,), generator=g).tolist()
    return [torch.randint(0, 50, (k,), generator=g).tolist() for k in lens]


def _history_batch_reference(histories, max_len, objective):
    """The per-history loop `history_batch` replaced."""
    hs = [list(map(int, h))[-max_len:] for h in histories]
    extra = 1 if objective == "cloze" else 0
    length = max((len(h) for h in hs), default=0) + extra
    b = len(hs)
    items = torch.full((b, length), -1, dtype=torch.long)
    padding = torch.ones(b, length, dtype=torch.bool)
    masked = torch.zeros(b, length, dtype=torch.bool) if extra else None
    read = torch.zeros(b, dtype=torch.long)
    for i, h in enumerate(hs):
        items[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        padding[i, : len(h) + extra] = False
        if masked is not None:
            masked[i, len(h)] = True
        read[i] = len(h) - 1 + extra
    return {"items": items, "padding": padding, "masked": masked, "read": read}


@pytest.mark.parametrize("objective", ["causal", "cloze"])
def test_history_batch_matches_the_per_history_loop(objective):
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        histories = _random_sequences(g, 1 + trial, 12, lowest=1)
        got, ref = history_batch(histories, 8, objective), _history_batch_reference(histories, 8, objective)
        for k in ref:
            assert (got[k] is None) == (ref[k] is None), k
            if ref[k] is not None:
                assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), (k, histories)
    with pytest.raises(ValueError, match="empty"):
        history_batch([[1], []], 8, objective)


def _training_windows_reference(sequences, max_len):
    """SASRec's own window loop before it used `build_examples` and `pad`."""
    inputs, targets = [], []
    for s in sequences:
        if len(s) < 2:
            continue
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            w = s[start:end]
            x = np.zeros(max_len, dtype=np.int64)
            y = np.zeros(max_len, dtype=np.int64)
            x[max_len - len(w) + 1:] = np.asarray(w[:-1]) + 1
            y[max_len - len(w) + 1:] = np.asarray(w[1:]) + 1
            inputs.append(x)
            targets.append(y)
            end = start + 1
            if start == 0:
                break
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def _encode_histories_reference(histories, max_len):
    """SASRec's own left-padding loop before it used `pad`."""
    L = max(1, min(max_len, max((len(h) for h in histories), default=1)))
    out = torch.zeros(len(histories), L, dtype=torch.long)
    for b, h in enumerate(histories):
        h = h[-L:]
        if h:
            out[b, L - len(h):] = torch.tensor(h, dtype=torch.long) + 1
    return out


def test_sasrec_layouts_match_their_former_loops():
    g = torch.Generator().manual_seed(1)
    model = SASRec(SASRecConfig(num_items=50, hidden=8, n_heads=2, max_len=6))
    for trial in range(5):
        seqs = _random_sequences(g, 6, 15) + [[1, 2]]
        x, y = training_windows(seqs, 6)
        rx, ry = _training_windows_reference(seqs, 6)
        assert x.dtype == rx.dtype and torch.equal(x, rx) and torch.equal(y, ry), seqs
        assert torch.equal(model.encode_histories(seqs), _encode_histories_reference(seqs, 6)), seqs
    assert torch.equal(model.encode_histories([[], []]), torch.zeros(2, 1, dtype=torch.long))
