"""Behaviour pinned at ties and hinge kinks, where the loss is not
differentiable and implementations differ: ties go to the lowest index, a
hinge at exactly 0 gives no gradient, coincident points give 0 (not NaN), and
a batch without a valid pair or triplet gives loss 0 and zero gradients."""

import numpy as np
import pytest

import faceops
from testing import DEVICES, MININGS, product, to_device, to_numpy

def triplet_gradient(x, triplets):
    """Gradient of mean over the given (a, p, n) of d_ap - d_an (squared distances, all active)."""
    dx = np.zeros_like(x)
    for a, p, n in triplets:
        dx[a] += 2 * (x[a] - x[p]) - 2 * (x[a] - x[n])
        dx[p] -= 2 * (x[a] - x[p])
        dx[n] += 2 * (x[a] - x[n])
    return dx / len(triplets)


@pytest.mark.parametrize("device,mining", product(DEVICES, ["semihard", "hard"]))
def test_tied_negatives_go_to_the_lowest_index(device, mining):
    # Anchors 0 and 1 (label 0); negatives 2 and 3 (labels 1, 2: no positives, so not
    # anchors) lie at equal distance from both anchors.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    labels = np.array([0, 0, 1, 2])
    _, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), margin=10.0, mining=mining)
    np.testing.assert_allclose(to_numpy(dx), triplet_gradient(x, [(0, 1, 2), (1, 0, 2)]), atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_tied_positives_go_to_the_lowest_index(device):
    # Anchor 0's positives 1 and 2 are both at distance 1: batch-hard takes 1.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 0, 0, 1])
    _, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), margin=20.0, mining="hard")
    expected = triplet_gradient(x, [(0, 1, 3), (1, 2, 3), (2, 1, 3)])
    np.testing.assert_allclose(to_numpy(dx), expected, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_semihard_falls_back_to_the_farthest_negative(device):
    # No negative is farther than the positive: FaceNet/TensorFlow take the farthest one.
    x = np.array([[0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1, 2])
    _, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), margin=30.0, mining="semihard")
    np.testing.assert_allclose(to_numpy(dx), triplet_gradient(x, [(0, 1, 3), (1, 0, 3)]), atol=1e-12)


@pytest.mark.parametrize("device,mining", product(DEVICES, MININGS))
def test_hinge_exactly_at_zero_has_no_gradient(device, mining):
    # d_ap = 1, d_an = 4 (squared), margin 3: the only hinge is exactly 0.
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 0, 1])
    loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), margin=3.0, mining=mining)
    assert loss == 0.0
    assert not to_numpy(dx).any()


@pytest.mark.parametrize("device,mining", product(DEVICES, MININGS))
def test_coincident_points_give_zero_not_nan(device, mining):
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 0.5, mining, squared=False)
    assert np.isfinite(loss) and loss > 0
    assert np.isfinite(to_numpy(dx)).all()


@pytest.mark.parametrize("device,mining", product(DEVICES, MININGS))
def test_no_valid_triplet_gives_zero(device, mining):
    x = np.random.default_rng(0).standard_normal((4, 3))
    for labels in (np.zeros(4, int), np.arange(4)):  # no negative / no positive
        loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 0.2, mining)
        assert loss == 0.0
        assert not to_numpy(dx).any()


@pytest.mark.parametrize("device", DEVICES)
def test_pair_loss_single_row_and_kink(device):
    loss, dx, dtheta = faceops.pair_loss(to_device(np.ones((1, 3)), device), to_device(np.zeros(1, int), device), 1.0)
    assert (loss, dtheta) == (0.0, 0.0) and not to_numpy(dx).any()
    # Same-label pair at squared distance 1 with theta 0: hinge 1 - (0 - 1) = 2 > 0;
    # with theta 2 the hinge 1 - (2 - 1) is exactly 0: no loss, no gradient.
    x = np.array([[0.0], [1.0]])
    loss, dx, dtheta = faceops.pair_loss(to_device(x, device), to_device(np.zeros(2, int), device), 2.0)
    assert (loss, dtheta) == (0.0, 0.0) and not to_numpy(dx).any()


@pytest.mark.parametrize("device", DEVICES)
def test_contrastive_at_zero_distance(device):
    a = np.zeros((2, 3))
    loss, da, db = faceops.contrastive_loss(to_device(a, device), to_device(a, device), to_device(np.array([0, 1]), device), 1.0)
    assert loss == pytest.approx(1.0 / 4)  # one dissimilar pair at d = 0: margin^2 / (2N)
    assert np.isfinite(to_numpy(da)).all() and not to_numpy(da).any()
