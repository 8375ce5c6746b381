"""The stateful loss objects: they own their parameters and match the ops."""

import numpy as np
import pytest

import faceops


def test_center_loss_object_moves_centers_by_eq4():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 4))
    labels = np.repeat(np.arange(3), 4)
    loss_fn = faceops.CenterLoss(num_classes=5, dim=4, alpha=0.5, dtype=np.float64)
    before = loss_fn.centers.copy()
    loss, dx = loss_fn(x, labels)
    expected_loss, expected_dx, _ = faceops.center_loss(x, labels, before)
    assert loss == expected_loss
    np.testing.assert_array_equal(dx, expected_dx)
    delta = faceops.center_update_direction(x, labels, before)
    np.testing.assert_allclose(loss_fn.centers, before - 0.5 * delta)
    assert not loss_fn.centers[3:].any()
    # Repeated calls on the same batch pull the centers to the class means.
    for _ in range(50):
        loss_fn(x, labels)
    means = np.stack([x[labels == j].mean(axis=0) for j in range(3)])
    np.testing.assert_allclose(loss_fn.centers[:3], means, atol=1e-6)


def test_center_loss_object_without_update_keeps_centers():
    centers = np.ones((2, 3), np.float32)
    loss_fn = faceops.CenterLoss(2, 3, alpha=None, centers=centers)
    loss_fn(np.zeros((2, 3), np.float32), np.array([0, 1]))
    np.testing.assert_array_equal(loss_fn.centers, np.ones((2, 3)))
    with pytest.raises(ValueError, match="centers: expected shape"):
        faceops.CenterLoss(3, 3, centers=centers)


def test_loss_objects_name_the_state_array_they_were_given():
    with pytest.raises(TypeError, match="centers: expected a NumPy or CuPy array, got list"):
        faceops.CenterLoss(2, 3, centers=[[0.0] * 3] * 2)
    with pytest.raises(TypeError, match="centers: expected float32 or float64, got float16"):
        faceops.CenterLoss(2, 3, centers=np.zeros((2, 3), np.float16))
    with pytest.raises(TypeError, match="weight: expected float32 or float64, got int64"):
        faceops.MarginSoftmaxLoss(2, 3, weight=np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int8"):
        faceops.MarginSoftmaxLoss(2, 3, dtype=np.int8)


def test_loss_objects_refuse_a_state_matrix_no_array_can_hold():
    # 2**31 x 2**30 float32 is 2**63 bytes, one more than an array can hold; float16 would fit
    with pytest.raises(ValueError, match=r"num_classes, dim: a 2147483648 x 1073741824 matrix of 4-byte elements"):
        faceops.CenterLoss(2**31, 2**30)
    with pytest.raises(ValueError, match=r"num_classes, dim: .* matrix of 8-byte elements"):
        faceops.MarginSoftmaxLoss(2**30, 2**30, dtype=np.float64)


def test_pair_loss_object_keeps_theta_gradient():
    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((8, 3)), np.repeat(np.arange(4), 2)
    loss_fn = faceops.PairLoss(theta=2.0)
    loss, dx = loss_fn(x, labels)
    expected = faceops.pair_loss(x, labels, 2.0)
    assert (loss, loss_fn.grad_theta) == (expected[0], expected[2])
    assert loss_fn.grad_theta != 0


def test_triplet_and_contrastive_objects_match_ops():
    rng = np.random.default_rng(2)
    x, labels = rng.standard_normal((9, 3)), np.repeat(np.arange(3), 3)
    assert faceops.TripletLoss(0.3, "hard", squared=False)(x, labels)[0] == faceops.triplet_loss(x, labels, 0.3, "hard", False)[0]
    with pytest.raises(ValueError, match="mining"):
        faceops.TripletLoss(mining="easy")
    similar = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1])
    assert faceops.ContrastiveLoss(2.0, legacy=True)(x, x[::-1].copy(), similar)[0] == faceops.contrastive_loss(x, x[::-1].copy(), similar, 2.0, True)[0]
