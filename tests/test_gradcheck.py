"""Every op's gradients against central finite differences of its own loss
(float64, kink-free inputs): |analytic - numeric| <= 1e-6 * max|grad| + 1e-8."""

import numpy as np
import pytest

import faceops
from testing import (
    DEVICES,
    MININGS,
    kink_free_batch,
    kink_gap_pair,
    kink_gap_triplet,
    numerical_gradient,
    product,
    to_device,
    to_numpy,
)


def assert_matches_numeric(analytic, numeric):
    scale = max(np.abs(numeric).max(), 1e-3)
    np.testing.assert_allclose(to_numpy(analytic), numeric, rtol=0, atol=1e-6 * scale + 1e-8)


@pytest.mark.parametrize("device,mining,squared", product(DEVICES, MININGS, [True, False]))
def test_triplet_gradient(device, mining, squared):
    margin = 0.3
    x, labels = kink_free_batch(1, 4, 3, 5, lambda x, y: kink_gap_triplet(x, y, margin, squared))
    labels_d = to_device(labels, device)
    loss, dx = faceops.triplet_loss(to_device(x, device), labels_d, margin, mining, squared)
    assert loss > 0
    numeric = numerical_gradient(
        lambda z: faceops.triplet_loss(to_device(z, device), labels_d, margin, mining, squared)[0], x.copy()
    )
    assert_matches_numeric(dx, numeric)


@pytest.mark.parametrize("device", DEVICES)
def test_pair_gradient(device):
    theta = 1.2
    x, labels = kink_free_batch(2, 4, 3, 5, lambda x, y: kink_gap_pair(x, y, theta))
    labels_d = to_device(labels, device)
    loss, dx, dtheta = faceops.pair_loss(to_device(x, device), labels_d, theta)
    assert loss > 0
    assert_matches_numeric(dx, numerical_gradient(lambda z: faceops.pair_loss(to_device(z, device), labels_d, theta)[0], x.copy()))
    step = 1e-6
    numeric_theta = (
        faceops.pair_loss(to_device(x, device), labels_d, theta + step)[0]
        - faceops.pair_loss(to_device(x, device), labels_d, theta - step)[0]
    ) / (2 * step)
    assert dtheta == pytest.approx(numeric_theta, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_center_gradient(device):
    rng = np.random.default_rng(3)
    x, centers = rng.standard_normal((10, 4)), rng.standard_normal((6, 4))
    labels = to_device(rng.integers(0, 6, 10), device)
    loss, dx, dcenters = faceops.center_loss(to_device(x, device), labels, to_device(centers, device))
    assert_matches_numeric(dx, numerical_gradient(lambda z: faceops.center_loss(to_device(z, device), labels, to_device(centers, device))[0], x.copy()))
    assert_matches_numeric(
        dcenters,
        numerical_gradient(lambda c: faceops.center_loss(to_device(x, device), labels, to_device(c, device))[0], centers.copy()),
    )


@pytest.mark.parametrize("device,legacy", product(DEVICES, [False, True]))
def test_contrastive_gradient(device, legacy):
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
    similar = to_device(np.arange(12) % 2, device)
    margin = 2.5  # both sides of the hinge occur; no d_i within 1e-3 of it (checked)
    d = np.linalg.norm(a - b, axis=1)
    assert np.min(np.abs((d**2 if legacy else d) - margin)) > 1e-3
    loss, da, db = faceops.contrastive_loss(to_device(a, device), to_device(b, device), similar, margin, legacy)
    assert_matches_numeric(
        da, numerical_gradient(lambda z: faceops.contrastive_loss(to_device(z, device), to_device(b, device), similar, margin, legacy)[0], a.copy())
    )
    assert_matches_numeric(
        db, numerical_gradient(lambda z: faceops.contrastive_loss(to_device(a, device), to_device(z, device), similar, margin, legacy)[0], b.copy())
    )


@pytest.mark.parametrize("device", DEVICES)
def test_explicit_triplet_gradient(device):
    rng = np.random.default_rng(5)
    anchor, positive, negative = (rng.standard_normal((8, 4)) for _ in range(3))
    margin = 1.0
    hinge = margin + np.sum((anchor - positive) ** 2, 1) - np.sum((anchor - negative) ** 2, 1)
    assert np.min(np.abs(hinge)) > 1e-3 and (hinge > 0).any() and (hinge < 0).any()
    args = [to_device(v, device) for v in (anchor, positive, negative)]
    loss, *grads = faceops.triplet_loss_explicit(*args, margin=margin)
    for k, value in enumerate((anchor, positive, negative)):

        def loss_of(z, k=k):
            moved = list(args)
            moved[k] = to_device(z, device)
            return faceops.triplet_loss_explicit(*moved, margin=margin)[0]

        assert_matches_numeric(grads[k], numerical_gradient(loss_of, value.copy()))
