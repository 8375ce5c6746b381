"""faceops.torch against pytorch-metric-learning (pml), float64: equal where the
definitions match (the pml class and settings are named in each test), and a test
pinning each difference that docs/torch.md states."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs PyTorch (pip install '.[torch]')")
pml = pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")

import faceops.torch as ft
from faceops import reference
from pytorch_metric_learning import distances, losses, miners, reducers
from testing import kink_free_batch, kink_gap_triplet

SAME = dict(rtol=1e-9, atol=1e-12)  # float64, two formulations of one loss


def _euclidean(squared):
    """pml's distance for faceops' `squared`; faceops never normalises the embeddings."""
    return distances.LpDistance(normalize_embeddings=False, p=2, power=2 if squared else 1)


def _loss_and_grad(loss_fn, x, *args):
    x = x.detach().clone().requires_grad_()
    loss = loss_fn(x, *args)
    loss.backward()
    return loss.detach(), x.grad


def _triplet_batch(squared, margin=0.2):
    x, labels = kink_free_batch(5, 4, 4, 6, lambda x, y: kink_gap_triplet(x, y, margin, squared))
    return torch.from_numpy(x), torch.from_numpy(labels)


@pytest.mark.parametrize("squared", [True, False])
def test_batch_all_is_pml_triplet_margin_loss_over_all_triplets_with_mean_reducer(squared):
    """pml TripletMarginLoss(margin, LpDistance(power 2|1, no normalisation), MeanReducer()), no miner
    (all triplets of the batch) == faceops mining="all"."""
    x, labels = _triplet_batch(squared)
    theirs = losses.TripletMarginLoss(margin=0.2, distance=_euclidean(squared), reducer=reducers.MeanReducer())
    for got, want in zip(_loss_and_grad(lambda z: ft.triplet_loss(z, labels, 0.2, "all", squared), x),
                         _loss_and_grad(lambda z: theirs(z, labels), x)):
        torch.testing.assert_close(got, want, **SAME)


@pytest.mark.parametrize("squared", [True, False])
def test_batch_hard_is_pml_triplet_margin_loss_with_batch_hard_miner(squared):
    """pml TripletMarginLoss(margin, LpDistance, MeanReducer()) on BatchHardMiner(LpDistance)'s
    triplets == faceops mining="hard"."""
    x, labels = _triplet_batch(squared)
    theirs = losses.TripletMarginLoss(margin=0.2, distance=_euclidean(squared), reducer=reducers.MeanReducer())
    miner = miners.BatchHardMiner(distance=_euclidean(squared))
    for got, want in zip(_loss_and_grad(lambda z: ft.triplet_loss(z, labels, 0.2, "hard", squared), x),
                         _loss_and_grad(lambda z: theirs(z, labels, miner(z, labels)), x)):
        torch.testing.assert_close(got, want, **SAME)


def test_semihard_differs_from_pml_triplet_margin_miner_semihard():
    """faceops "semihard" is FaceNet's / TensorFlow's: one negative per (anchor, positive), the
    closest farther one.  pml's TripletMarginMiner(type_of_triplets="semihard") keeps every
    negative with d_ap < d_an < d_ap + margin and TripletMarginLoss's default AvgNonZeroReducer
    averages over the non-zero ones: a different loss."""
    x, labels = _triplet_batch(True)
    ours = ft.triplet_loss(x, labels, 0.2, "semihard", True)
    torch.testing.assert_close(ours, torch.tensor(reference.triplet_loss(x.numpy(), labels.numpy(), 0.2, "semihard")[0],
                                                  dtype=torch.float64), **SAME)
    miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard", distance=_euclidean(True))
    theirs = losses.TripletMarginLoss(margin=0.2, distance=_euclidean(True))(x, labels, miner(x, labels))
    assert abs(ours.item() - theirs.item()) > 1e-3


def _pml_face_loss(cls, weight, **settings):
    """pml's ArcFaceLoss/CosFaceLoss holding faceops' (C, D) class weights (pml stores W as (D, C))."""
    loss = cls(num_classes=weight.shape[0], embedding_size=weight.shape[1], **settings).double()
    loss.W.data = weight.detach().t().clone()
    return loss


def _face_batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    return x, torch.arange(12) % 5, torch.randn(5, 6, generator=g, dtype=torch.float64)


def test_arcface_is_pml_arcface_loss():
    """pml ArcFaceLoss(margin=degrees(0.5), scale=16) == faceops.torch.ArcFace(s=16, margin=0.5):
    loss, embedding gradient and class-weight gradient (pml's W is the transpose)."""
    x, labels, weight = _face_batch(0)
    theirs = _pml_face_loss(losses.ArcFaceLoss, weight, margin=math.degrees(0.5), scale=16.0)
    ours = ft.ArcFace(5, 6, s=16.0, margin=0.5, dtype=torch.float64)
    ours.weight.data.copy_(weight)
    for got, want in zip(_loss_and_grad(ours, x, labels), _loss_and_grad(theirs, x, labels)):
        torch.testing.assert_close(got, want, **SAME)
    torch.testing.assert_close(ours.weight.grad, theirs.W.grad.t(), **SAME)


def test_cosface_is_pml_cosface_loss():
    """pml CosFaceLoss(margin=0.35, scale=16) == faceops.torch.CosFace(s=16, margin=0.35)."""
    x, labels, weight = _face_batch(1)
    theirs = _pml_face_loss(losses.CosFaceLoss, weight, margin=0.35, scale=16.0)
    ours = ft.CosFace(5, 6, s=16.0, margin=0.35, dtype=torch.float64)
    ours.weight.data.copy_(weight)
    for got, want in zip(_loss_and_grad(ours, x, labels), _loss_and_grad(theirs, x, labels)):
        torch.testing.assert_close(got, want, **SAME)
    torch.testing.assert_close(ours.weight.grad, theirs.W.grad.t(), **SAME)


def test_arcface_past_pi_minus_m_differs_from_pml():
    """Where theta + m > pi, pml (as insightface) uses cos(theta) - m sin(m), a jump; faceops
    continues psi monotonically (README, margin softmax).  A target at theta ~ 3 rad shows it."""
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[-1.0, 0.14]], dtype=torch.float64)  # theta to class 0 = pi - 0.139 > pi - 0.5
    labels = torch.tensor([0])
    theirs = _pml_face_loss(losses.ArcFaceLoss, weight, margin=math.degrees(0.5), scale=4.0)(x, labels)
    ours = ft.arcface_loss(x, labels, weight, 4.0, 0.5)
    cosine = (x / x.norm()) @ weight.t()
    psi, _ = reference.margin_target(cosine[0, 0].item(), 1.0, 0.5, 0.0)
    expected = torch.logsumexp(4.0 * torch.stack([torch.tensor(float(psi), dtype=torch.float64), cosine[0, 1]]), 0) - 4.0 * psi
    torch.testing.assert_close(ours, expected, **SAME)
    assert abs(ours.item() - theirs.item()) > 0.1


def _pairs_for_pml(similar):
    """pml indices_tuple (a1, p, a2, n) of the explicit pairs (a_i, b_i): embeddings a, ref_emb b."""
    rows = torch.arange(len(similar))
    return rows[similar], rows[similar], rows[~similar], rows[~similar]


def test_legacy_contrastive_is_pml_contrastive_loss_on_squared_distances_summed():
    """faceops legacy: 1/(2N) sum [s d^2 + (1 - s) max(m - d^2, 0)] == pml ContrastiveLoss(pos_margin=0,
    neg_margin=m, LpDistance(power=2, no normalisation), SumReducer()) on the pairs, / (2N)."""
    g = torch.Generator().manual_seed(2)
    a, b = (torch.randn(10, 4, generator=g, dtype=torch.float64) * 0.4 for _ in range(2))
    similar = torch.arange(10) % 3 == 0
    theirs = losses.ContrastiveLoss(pos_margin=0, neg_margin=1.0, distance=_euclidean(True),
                                    reducer=reducers.SumReducer())
    labels = torch.arange(10)
    ours = ft.contrastive_loss(a, b, similar, 1.0, legacy=True)
    want = theirs(a, labels, _pairs_for_pml(similar), ref_emb=b, ref_labels=labels) / (2 * len(similar))
    torch.testing.assert_close(ours, want, **SAME)


def test_contrastive_differs_from_pml_contrastive_loss():
    """faceops (Caffe, Hadsell et al.) squares the hinge, max(m - d, 0)^2, and averages over all N
    pairs with 1/(2N); pml ContrastiveLoss(neg_margin=m) uses max(m - d, 0) unsquared and averages
    the non-zero positive and negative terms separately (AvgNonZeroReducer)."""
    g = torch.Generator().manual_seed(3)
    a, b = (torch.randn(10, 4, generator=g, dtype=torch.float64) * 0.4 for _ in range(2))
    similar = torch.arange(10) % 3 == 0
    labels = torch.arange(10)
    ours = ft.contrastive_loss(a, b, similar, 1.0)
    torch.testing.assert_close(ours, torch.tensor(reference.contrastive_loss(a.numpy(), b.numpy(), similar.numpy(), 1.0)[0],
                                                  dtype=torch.float64), **SAME)
    theirs = losses.ContrastiveLoss(pos_margin=0, neg_margin=1.0, distance=_euclidean(False))
    theirs = theirs(a, labels, _pairs_for_pml(similar), ref_emb=b, ref_labels=labels)
    assert abs(ours.item() - theirs.item()) > 1e-2
    d = (a - b).norm(dim=1).numpy()
    negative = np.maximum(1.0 - d[~similar.numpy()], 0)
    torch.testing.assert_close(theirs.item(), d[similar.numpy()].mean() + negative[negative > 0].mean(), **SAME)
