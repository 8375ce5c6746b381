"""Every op against the plain NumPy reference (faceops.reference), in float32
and float64, on every device.  The reference runs in float64 on the same
values; tolerances are testing.TOLERANCE (float32: rtol 2e-4, atol 2e-5)."""

import numpy as np
import pytest

import faceops
from faceops import reference
from testing import (
    DEVICES,
    DTYPES,
    MININGS,
    TOLERANCE,
    kink_free_batch,
    kink_gap_pair,
    kink_gap_triplet,
    pk_labels,
    product,
    to_device,
    to_numpy,
)


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("device,dtype,mining,squared", product(DEVICES, DTYPES, MININGS, [True, False]))
def test_triplet_matches_reference(device, dtype, mining, squared):
    margin = 0.5
    x, labels = kink_free_batch(11, 4, 3, 8, lambda x, y: kink_gap_triplet(x, y, margin, squared))
    x = x.astype(dtype)
    loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels.astype(np.int32), device), margin, mining, squared)
    ref_loss, ref_dx = reference.triplet_loss(x.astype(np.float64), labels, margin, mining, squared)
    assert ref_loss > 0
    assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"])
    assert dx.dtype == dtype and dx.shape == x.shape
    assert_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("device,dtype", product(DEVICES, DTYPES))
def test_pair_matches_reference(device, dtype):
    theta = 1.5
    x, labels = kink_free_batch(12, 5, 4, 8, lambda x, y: kink_gap_pair(x, y, theta))
    x = x.astype(dtype)
    loss, dx, dtheta = faceops.pair_loss(to_device(x, device), to_device(labels, device), theta)
    ref_loss, ref_dx, ref_dtheta = reference.pair_loss(x.astype(np.float64), labels, theta)
    assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"])
    assert dtheta == pytest.approx(ref_dtheta, rel=TOLERANCE[dtype]["rtol"])
    assert_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("device,dtype", product(DEVICES, DTYPES))
def test_center_matches_reference(device, dtype):
    rng = np.random.default_rng(13)
    x, centers = rng.standard_normal((40, 16)).astype(dtype), rng.standard_normal((7, 16)).astype(dtype)
    labels = rng.integers(0, 5, 40)  # classes 5 and 6 absent
    loss, dx, dcenters = faceops.center_loss(to_device(x, device), to_device(labels, device), to_device(centers, device))
    ref = reference.center_loss(x.astype(np.float64), labels, centers.astype(np.float64))
    assert loss == pytest.approx(ref[0], rel=TOLERANCE[dtype]["rtol"])
    assert_close(dx, ref[1], dtype)
    assert_close(dcenters, ref[2], dtype)
    assert not to_numpy(dcenters)[5:].any()

    direction = faceops.center_update_direction(to_device(x, device), to_device(labels, device), to_device(centers, device))
    ref_direction = reference.center_update_direction(x.astype(np.float64), labels, centers.astype(np.float64))
    assert_close(direction, ref_direction, dtype)

    updated = to_device(centers, device)
    faceops.center_update(to_device(x, device), to_device(labels, device), updated, 0.3)
    expected = centers.astype(np.float64)
    reference.center_update(x.astype(np.float64), labels, expected, 0.3)
    assert_close(updated, expected, dtype)
    np.testing.assert_array_equal(to_numpy(updated)[5:], centers[5:])


@pytest.mark.parametrize("device,dtype,legacy", product(DEVICES, DTYPES, [False, True]))
def test_contrastive_matches_reference(device, dtype, legacy):
    rng = np.random.default_rng(14)
    a, b = rng.standard_normal((30, 6)).astype(dtype), rng.standard_normal((30, 6)).astype(dtype)
    similar = rng.integers(0, 2, 30).astype(bool)
    margin = 3.0
    loss, da, db = faceops.contrastive_loss(to_device(a, device), to_device(b, device), to_device(similar, device), margin, legacy)
    ref = reference.contrastive_loss(a.astype(np.float64), b.astype(np.float64), similar, margin, legacy)
    assert loss == pytest.approx(ref[0], rel=TOLERANCE[dtype]["rtol"])
    assert_close(da, ref[1], dtype)
    assert_close(db, ref[2], dtype)


@pytest.mark.parametrize("device,dtype", product(DEVICES, DTYPES))
def test_explicit_triplet_matches_reference(device, dtype):
    rng = np.random.default_rng(15)
    a, p, n = (rng.standard_normal((25, 6)).astype(dtype) for _ in range(3))
    loss, *grads = faceops.triplet_loss_explicit(*(to_device(v, device) for v in (a, p, n)), margin=2.0)
    ref = reference.triplet_loss_explicit(*(v.astype(np.float64) for v in (a, p, n)), margin=2.0)
    assert loss == pytest.approx(ref[0], rel=TOLERANCE[dtype]["rtol"])
    for got, expected in zip(grads, ref[1:]):
        assert_close(got, expected, dtype)


@pytest.mark.parametrize("device,mining", product(DEVICES, MININGS))
def test_triplet_large_batch(device, mining):
    """N = 1024 crosses many distance tiles and thread blocks (float64)."""
    rng = np.random.default_rng(16)
    labels = pk_labels(256, 4, rng)
    x = rng.standard_normal((1024, 16))
    loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 0.5, mining, squared=False)
    ref_loss, ref_dx = reference.triplet_loss(x, labels, 0.5, mining, squared=False)
    assert loss == pytest.approx(ref_loss, rel=1e-9)
    assert_close(dx, ref_dx, np.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_pair_large_batch(device):
    rng = np.random.default_rng(17)
    labels = pk_labels(128, 8, rng)
    x = rng.standard_normal((1024, 16))
    loss, dx, dtheta = faceops.pair_loss(to_device(x, device), to_device(labels, device), 32.0)
    ref_loss, ref_dx, ref_dtheta = reference.pair_loss(x, labels, 32.0)
    assert (loss, dtheta) == (pytest.approx(ref_loss, rel=1e-9), pytest.approx(ref_dtheta, rel=1e-9))
    assert_close(dx, ref_dx, np.float64)


@pytest.mark.parametrize("n,d", [(200, 3), (130, 1), (300, 40)])
def test_partial_tiles_and_random_labels(n, d):
    """Sizes that leave partial tiles and blocks, labels not in P x K order (float64, CPU)."""
    rng = np.random.default_rng(n + d)
    x, labels = rng.standard_normal((n, d)), rng.integers(0, 20, n)
    loss, dx, dtheta = faceops.pair_loss(x, labels, 1.0)
    ref = reference.pair_loss(x, labels, 1.0)
    assert (loss, dtheta) == (pytest.approx(ref[0], rel=1e-9), pytest.approx(ref[2], rel=1e-9, abs=1e-12))
    assert_close(dx, ref[1], np.float64)
    for mining in MININGS:
        loss, dx = faceops.triplet_loss(x, labels, 0.3, mining, squared=False)
        ref_loss, ref_dx = reference.triplet_loss(x, labels, 0.3, mining, squared=False)
        assert loss == pytest.approx(ref_loss, rel=1e-9)
        assert_close(dx, ref_dx, np.float64)


@pytest.mark.parametrize("device", DEVICES)
def test_center_loss_with_a_million_classes(device):
    """C = 10^6: only the batch's rows of dcenters are non-zero, the rest untouched."""
    rng = np.random.default_rng(18)
    num_classes, d = 1_000_000, 8
    centers = np.zeros((num_classes, d), np.float32)
    labels = np.array([0, 999_999, 500_000, 999_999, 7])
    centers[labels] = rng.standard_normal((5, d))
    x = rng.standard_normal((5, d)).astype(np.float32)
    loss, dx, dcenters = faceops.center_loss(to_device(x, device), to_device(labels, device), to_device(centers, device))
    ref = reference.center_loss(x.astype(np.float64), labels, centers.astype(np.float64))
    assert loss == pytest.approx(ref[0], rel=1e-5)
    dcenters = to_numpy(dcenters)
    touched = np.unique(labels)
    assert_close(dcenters[touched], ref[2][touched], np.float32)
    assert np.count_nonzero(np.abs(dcenters).sum(axis=1)) == len(touched)


def test_results_are_bitwise_reproducible():
    """Per-thread partial sums are added in a fixed order: same input, same bits."""
    rng = np.random.default_rng(19)
    x, labels = rng.standard_normal((1000, 24)).astype(np.float32), pk_labels(250, 4, rng)
    for op in (lambda: faceops.pair_loss(x, labels, 20.0), lambda: faceops.triplet_loss(x, labels, 0.5, "all")):
        first, second = op(), op()
        assert first[0] == second[0]
        np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize("device", DEVICES)
def test_center_loss_gradient_forms(device):
    """center_grad="rows" gives the dense gradient's non-zero rows; None gives none."""
    rng = np.random.default_rng(23)
    x, centers = rng.standard_normal((12, 5)), rng.standard_normal((50, 5))
    labels = rng.choice([3, 17, 41, 8], 12)
    args = [to_device(v, device) for v in (x, labels, centers)]
    loss, dx, dense = faceops.center_loss(*args)
    loss_rows, dx_rows, (classes, rows) = faceops.center_loss(*args, center_grad="rows")
    loss_none, _, nothing = faceops.center_loss(*args, center_grad=None)
    assert loss == pytest.approx(loss_rows, rel=1e-12) and loss == pytest.approx(loss_none, rel=1e-12) and nothing is None
    np.testing.assert_array_equal(to_numpy(classes), [3, 8, 17, 41])
    np.testing.assert_allclose(to_numpy(rows), to_numpy(dense)[[3, 8, 17, 41]], atol=1e-14)
    np.testing.assert_allclose(to_numpy(dx_rows), to_numpy(dx), atol=1e-14)
    with pytest.raises(ValueError, match="center_grad"):
        faceops.center_loss(*args, center_grad="sparse")
    bad = labels.copy()
    bad[0] = 50
    with pytest.raises(ValueError, match="labels.*0 <= label < 50"):
        faceops.center_loss(args[0], to_device(bad, device), args[2], center_grad="rows")


# Exact duplicates (the same image under two identities, or twice in a batch) and the triplet
# header's rules: a negative equal to a positive is not "farther" (semi-hard), ties go to the
# lowest index, and a hinge exactly at 0 is inactive (margin 0).  Each pair has one distance
# whichever role it plays, so the op agrees with the reference on every such batch.
def duplicated_batch(rng, dtype):
    n, d = int(rng.integers(4, 10)), int(rng.choice([1, 2, 3, 5, 8, 17, 40]))
    x = rng.standard_normal((n, d))
    for _ in range(int(rng.integers(1, n))):
        source, target = rng.integers(0, n, 2)
        x[target] = x[source]
    return x.astype(dtype), rng.integers(0, 3, n)


@pytest.mark.parametrize("device,dtype,mining,squared", product(DEVICES, DTYPES, MININGS, [True, False]))
def test_triplet_duplicated_rows_follow_the_rules(device, dtype, mining, squared):
    rng = np.random.default_rng([MININGS.index(mining), int(squared)])
    for _ in range(400):
        x, labels = duplicated_batch(rng, dtype)
        margin = 0.0 if rng.random() < 0.5 else 0.2
        loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), margin, mining, squared)
        ref_loss, ref_dx = reference.triplet_loss(x.astype(np.float64), labels, margin, mining, squared)
        assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"], abs=TOLERANCE[dtype]["atol"])
        assert_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("device,dtype,squared", product(DEVICES, DTYPES, [True, False]))
def test_triplet_negative_duplicating_a_positive_is_not_semihard(device, dtype, squared):
    # Anchor 0, positive 1, negative 2 a copy of the positive, negative 3 farther: the semi-hard
    # negative of (0, 1) is 3; the copy is only its fallback if nothing is farther.
    rng = np.random.default_rng(7)
    for _ in range(300):
        # D = 40: the positives' SIMD dot product and the tiles' GEMM sum in different orders.
        a, p = rng.standard_normal(40), rng.standard_normal(40)
        far = a + 3 * (p - a) + rng.standard_normal(40)
        x = np.stack([a, p, p, far]).astype(dtype)
        labels = np.array([0, 0, 1, 2])
        _, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 100.0, "semihard", squared)
        _, ref_dx = reference.triplet_loss(x.astype(np.float64), labels, 100.0, "semihard", squared)
        assert_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("device,dtype,mining", product(DEVICES, DTYPES, ["hard", "semihard"]))
def test_triplet_identical_candidates_go_to_the_lowest_index(device, dtype, mining):
    # Copies of the nearest negative in different tiles and GEMM paths (rows 5, 37, 70, 79 of 80):
    # the gradient goes to the first copy alone.
    rng = np.random.default_rng(8)
    copies = [5, 37, 70, 79]
    for _ in range(40):
        x = rng.standard_normal((80, 40)) * 3
        x[1] = x[0] + rng.standard_normal(40) * 0.5
        x[copies] = x[0] + rng.standard_normal(40)
        labels = np.arange(80) % 20 + 1
        labels[:2] = 0
        x = x.astype(dtype)
        _, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 100.0, mining)
        _, ref_dx = reference.triplet_loss(x.astype(np.float64), labels, 100.0, mining)
        assert_close(dx, ref_dx, dtype)


@pytest.mark.parametrize("device,dtype,squared", product(DEVICES, DTYPES, [True, False]))
def test_triplet_batch_all_hinge_exactly_at_zero_is_inactive(device, dtype, squared):
    # Every negative is a copy of a positive and the margin is 0: those hinges are exactly 0.
    rng = np.random.default_rng(9)
    for _ in range(200):
        base = rng.standard_normal((3, 40))
        x = np.concatenate([base, base[1:], base[1:]]).astype(dtype)  # rows 3, 4 and 5, 6 copy 1, 2
        labels = np.array([0, 0, 0, 1, 1, 2, 2])
        loss, dx = faceops.triplet_loss(to_device(x, device), to_device(labels, device), 0.0, "all", squared)
        ref_loss, ref_dx = reference.triplet_loss(x.astype(np.float64), labels, 0.0, "all", squared)
        assert loss == pytest.approx(ref_loss, abs=TOLERANCE[dtype]["atol"])
        assert_close(dx, ref_dx, dtype)
