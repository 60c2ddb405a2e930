"""Losses: retrieval cross-entropy, candidate sets with logQ correction, masked symmetric InfoNCE, neighbour
distillation."""

import math

import torch
import torch.nn.functional as F

from dtrec.model.losses import (candidate_set, cross_modal_accuracy, info_nce, item_log_frequency,
                                 neighbour_distillation, retrieval_loss)


def test_retrieval_loss_matches_cosine_cross_entropy_and_skips_minus_one():
    g = torch.Generator().manual_seed(0)
    q, items = torch.randn(5, 8, generator=g), torch.randn(20, 8, generator=g)
    t = torch.tensor([3, -1, 7, 0, -1])
    logits = F.normalize(q, dim=-1) @ F.normalize(items, dim=-1).T / 0.05
    want = F.cross_entropy(logits[[0, 2, 3]], t[[0, 2, 3]])
    assert torch.allclose(retrieval_loss(q, t, items, 0.05), want, atol=1e-5)


def test_in_batch_candidates_never_use_a_copy_of_the_target_as_negative():
    t = torch.tensor([4, 9, 4, -1])
    log_f = item_log_frequency([[4, 4, 9, 1]], 10)
    cand, labels, log_q, exclude = candidate_set(t, 10, "in_batch", item_log_freq=log_f)
    assert labels.tolist() == [0, 1, 2, -1]
    assert exclude[0, 2] and exclude[2, 0] and not exclude[0, 0] and not exclude[0, 1]
    assert exclude[:3, 3].all()  # the padded slot is no real query's candidate
    assert torch.allclose(log_q, log_f[cand])
    # With the copy excluded, query 0's loss equals its loss over the duplicate-free set {4, 9}.
    q = torch.randn(4, 6)
    emb = torch.randn(10, 6)
    only_first = torch.tensor([0, -1, -1, -1])
    loss = retrieval_loss(q, only_first, emb[cand], 0.1, log_q, exclude)
    manual = F.normalize(q[0:1], dim=-1) @ F.normalize(emb[[4, 9]], dim=-1).T / 0.1 - log_f[[4, 9]]
    assert math.isclose(float(loss), float(F.cross_entropy(manual, torch.tensor([0]))), rel_tol=1e-5)


def test_sampled_candidates_add_negatives_with_mixture_correction():
    t = torch.tensor([1, 2, 3])
    log_f = item_log_frequency([[1, 2, 3, 3]], 50)
    cand, labels, log_q, exclude = candidate_set(t, 50, "sampled", num_negatives=16, item_log_freq=log_f,
                                                 generator=torch.Generator().manual_seed(0))
    assert cand.shape == (19,) and labels.tolist() == [0, 1, 2]
    assert (log_q < 0).all() and torch.isfinite(log_q).all()
    # A sampled copy of a query's own target is excluded for that query.
    for i, item in enumerate(t.tolist()):
        dup = (cand == item).nonzero().flatten().tolist()
        assert all(exclude[i, j] for j in dup if j != i)


def test_all_negatives_is_the_full_catalog():
    cand, labels, log_q, exclude = candidate_set(torch.tensor([2, 0]), 7, "all")
    assert cand.tolist() == list(range(7)) and labels.tolist() == [2, 0] and log_q is None and exclude is None


def test_held_out_items_are_never_candidates():
    held = torch.zeros(50, dtype=torch.bool)
    held[[5, 6, 7]] = True
    _, _, _, exclude = candidate_set(torch.tensor([2, 0]), 50, "all", held_out=held)
    assert exclude.expand(2, 50)[:, [5, 6, 7]].all() and not exclude.expand(2, 50)[:, :5].any()
    log_f = item_log_frequency([[1, 2, 3, 3]], 50)
    cand, _, log_q, exclude = candidate_set(torch.tensor([1, 2, 3]), 50, "sampled", num_negatives=400,
                                            item_log_freq=log_f, generator=torch.Generator().manual_seed(0),
                                            held_out=held)
    drawn = held[cand]
    assert drawn.any() and exclude[:, drawn].all() and not exclude[:, ~drawn].all(0).any()
    free = candidate_set(torch.tensor([1, 2, 3]), 50, "sampled", num_negatives=400, item_log_freq=log_f,
                         generator=torch.Generator().manual_seed(0))[2]
    assert (log_q > free).all()  # the uniform part is spread over 47 items, not 50


def test_info_nce_ignores_invalid_rows_entirely():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    valid = torch.tensor([True, True, False, True, False, True])
    base = info_nce(a, b, 0.05, valid)
    a2, b2 = a.clone(), b.clone()
    a2[2], b2[4] = torch.randn(8, generator=g) * 100, torch.randn(8, generator=g)
    assert torch.allclose(base, info_nce(a2, b2, 0.05, valid))
    idx = valid.nonzero().flatten()
    assert torch.allclose(base, info_nce(a[idx], b[idx], 0.05), atol=1e-5)


def test_info_nce_is_low_for_aligned_pairs_and_gradients_stay_finite():
    x = torch.randn(8, 16, requires_grad=True)
    aligned = info_nce(x, x, 0.05)
    shuffled = info_nce(x, x.roll(1, 0), 0.05)
    assert aligned < shuffled
    valid = torch.zeros(8, dtype=torch.bool)
    valid[:2] = True
    info_nce(x, x.roll(1, 0), 0.05, valid).backward()
    assert torch.isfinite(x.grad).all()


def test_item_log_frequency_is_a_log_distribution_and_accuracy_counts_diagonal_hits():
    lf = item_log_frequency([[0, 0, 1], [2]], 4)
    assert math.isclose(float(lf.exp().sum()), 1.0, rel_tol=1e-6) and lf[0] > lf[3]
    q = torch.eye(4)
    assert cross_modal_accuracy(q, q) == 1.0
    assert cross_modal_accuracy(q, q.roll(1, 0)) == 0.0


def test_neighbour_distillation_is_zero_for_the_teacher_geometry_and_trains_only_the_student():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(12, 6, generator=g)
    rotation = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    same = (3.0 * teacher @ rotation).requires_grad_()  # same cosines, another basis and scale
    assert neighbour_distillation(same, teacher, 0.1).abs() < 1e-5
    student = torch.randn(12, 6, generator=g, requires_grad=True)
    t = teacher.clone().requires_grad_()
    loss = neighbour_distillation(student, t, 0.1)
    assert loss > 0.1
    loss.backward()
    assert student.grad.abs().sum() > 0 and t.grad is None
