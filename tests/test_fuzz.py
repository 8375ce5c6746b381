"""Property-based fuzz of every op against faceops.reference (hypothesis).

The strategies favour what breaks kernels: duplicated rows (the same image twice, or under two
identities), integer and dyadic grids (distances computed exactly, so every tie and every hinge
at exactly 0 is a real one and must follow the header's rules), degenerate label layouts (one
class, every row its own class, a singleton beside a pair) and batches of one row.  On such
grids the mined losses are compared with the reference exactly as the rules say, not only where
the input is kink-free.

Profiles (FACEOPS_FUZZ_PROFILE): "ci" (the default, derandomised, 250 cases per test, 2,750 in
all, a minute or two on two cores) and "release" (2,500 per test, random seeds; docs/testing.md).
"""

import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install '.[test]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import faceops  # noqa: E402
from faceops import reference  # noqa: E402
from testing import TOLERANCE  # noqa: E402

_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=250, derandomize=True, **_COMMON)
settings.register_profile("release", max_examples=2500, **_COMMON)
settings.load_profile(os.environ.get("FACEOPS_FUZZ_PROFILE", "ci"))

DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def labels_of(draw, n, classes=None):
    """Labels for n rows: one class, all distinct, a singleton beside pairs, or random."""
    most = classes if classes is not None else max(n, 1)
    layout = draw(st.sampled_from(["one", "distinct", "singleton", "random"]))
    if layout == "one":
        labels = np.zeros(n, np.int64)
    elif layout == "distinct":
        labels = np.arange(n, dtype=np.int64) % most
    elif layout == "singleton":
        labels = np.array([0] + [1 + i // 2 for i in range(n - 1)], np.int64) % most
    else:
        labels = np.array(draw(st.lists(st.integers(0, most - 1), min_size=n, max_size=n)), np.int64)
    if classes is not None and draw(st.booleans()):
        labels = (labels + draw(st.integers(0, classes - 1))) % classes
    return labels


@st.composite
def grid_rows(draw, n, d, scale_bits=3):
    """n rows on a dyadic grid (integers in [-3, 3] over 2^k, k <= scale_bits: every distance and
    dot product exact), some of them copies of others."""
    values = draw(st.lists(st.integers(-3, 3), min_size=n * d, max_size=n * d))
    x = np.array(values, np.float64).reshape(n, d) / 2.0 ** draw(st.integers(0, scale_bits))
    for source, target in draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n)):
        x[target] = x[source]
    return x


@st.composite
def float_rows(draw, n, d):
    """n rows of general floats (normal draws from a seed), some of them copies of others."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((n, d)) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    for _ in range(draw(st.integers(0, n))):
        source, target = rng.integers(0, n, 2)
        x[target] = x[source]
    return x


@st.composite
def batches(draw, max_rows=10, max_dim=6, classes=None, general=False):
    """(x, labels, dtype); general: general floats as well as grids."""
    n, d = draw(st.integers(1, max_rows)), draw(st.integers(1, max_dim))
    if general and draw(st.booleans()):  # D past a SIMD vector: dot products summed in other orders
        return draw(float_rows(n, draw(st.sampled_from([17, 33, 40])))), draw(labels_of(n, classes)), draw(DTYPES)
    return draw(grid_rows(n, d)), draw(labels_of(n, classes)), draw(DTYPES)


def assert_close(actual, expected, dtype, what):
    tol = TOLERANCE[dtype]
    scale = max(float(np.abs(expected).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=what)


def assert_loss(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    assert actual == pytest.approx(expected, rel=tol["rtol"], abs=tol["atol"] * max(1.0, abs(expected)))


MARGINS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0])


@given(batches(max_rows=14, classes=3, general=True), st.sampled_from(["semihard", "hard", "all"]), st.booleans(), MARGINS)
def test_triplet_loss(batch, mining, squared, margin):
    x, labels, dtype = batch
    loss, dx = faceops.triplet_loss(x.astype(dtype), labels, margin, mining, squared)
    ref_loss, ref_dx = reference.triplet_loss(x.astype(dtype).astype(np.float64), labels, margin, mining, squared)
    assert_loss(loss, ref_loss, dtype)
    assert_close(dx, ref_dx, dtype, "dx")


@st.composite
def reference_sets(draw):
    """(x, labels, ref, ref_labels, self_index, dtype): the first n rows of a batch as anchors,
    against either the whole batch with their own copies marked (the global-batch form) or the
    other rows only, self_index None (the memory-queue form)."""
    z, z_labels, dtype = draw(batches(max_rows=14, classes=3, general=True))
    n = draw(st.integers(1, len(z)))
    if n == len(z) or draw(st.booleans()):
        return z[:n], z_labels[:n], z, z_labels, np.arange(n), dtype
    return z[:n], z_labels[:n], z[n:], z_labels[n:], None, dtype


@given(reference_sets(), st.sampled_from(["semihard", "hard", "all"]), st.booleans(), MARGINS)
def test_triplet_loss_ref(case, mining, squared, margin):
    x, labels, ref, ref_labels, self_index, dtype = case
    x, ref = x.astype(dtype), ref.astype(dtype)
    loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, margin, mining, squared,
                                                     self_index=self_index)
    want = reference.triplet_loss_ref(x.astype(np.float64), labels, ref.astype(np.float64), ref_labels, margin,
                                      mining, squared, self_index=self_index)
    assert_loss(loss, want[0], dtype)
    assert count == want[1]
    assert_close(dx, want[2], dtype, "dx")
    assert_close(dref, want[3], dtype, "dref")


@given(reference_sets(), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 4.0]))
def test_pair_loss_ref(case, theta):
    x, labels, ref, ref_labels, self_index, dtype = case
    x, ref = x.astype(dtype), ref.astype(dtype)
    loss, count, dx, dref, dtheta = faceops.pair_loss_ref(x, labels, ref, ref_labels, theta, self_index=self_index)
    want = reference.pair_loss_ref(x.astype(np.float64), labels, ref.astype(np.float64), ref_labels, theta,
                                   self_index=self_index)
    assert_loss(loss, want[0], dtype)
    assert count == want[1]
    assert_close(dx, want[2], dtype, "dx")
    assert_close(dref, want[3], dtype, "dref")
    assert dtheta == pytest.approx(want[4], abs=TOLERANCE[dtype]["atol"])


@given(st.data(), DTYPES, MARGINS)
def test_triplet_loss_explicit(data, dtype, margin):
    n, d = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 6))
    rows = data.draw(grid_rows(3 * n, d))
    anchor, positive, negative = (rows[k * n:(k + 1) * n].astype(dtype) for k in range(3))
    out = faceops.triplet_loss_explicit(anchor, positive, negative, margin)
    ref = reference.triplet_loss_explicit(*(v.astype(np.float64) for v in (anchor, positive, negative)), margin)
    assert_loss(out[0], ref[0], dtype)
    for actual, expected, name in zip(out[1:], ref[1:], ("da", "dp", "dn")):
        assert_close(actual, expected, dtype, name)


@given(batches(), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 4.0]))
def test_pair_loss(batch, theta):
    x, labels, dtype = batch
    loss, dx, dtheta = faceops.pair_loss(x.astype(dtype), labels, theta)
    ref_loss, ref_dx, ref_dtheta = reference.pair_loss(x.astype(dtype).astype(np.float64), labels, theta)
    assert_loss(loss, ref_loss, dtype)
    assert_close(dx, ref_dx, dtype, "dx")
    assert dtheta == pytest.approx(ref_dtheta, abs=TOLERANCE[dtype]["atol"])


@given(st.data(), DTYPES, MARGINS, st.booleans())
def test_contrastive_loss(data, dtype, margin, legacy):
    n, d = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 6))
    rows = data.draw(grid_rows(2 * n, d)).astype(dtype)
    a, b = rows[:n], rows[n:]
    similar = np.array(data.draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), np.int64)
    loss, da, db = faceops.contrastive_loss(a, b, similar, margin, legacy)
    ref_loss, ref_da, ref_db = reference.contrastive_loss(a.astype(np.float64), b.astype(np.float64), similar,
                                                          margin, legacy)
    assert_loss(loss, ref_loss, dtype)
    assert_close(da, ref_da, dtype, "da")
    assert_close(db, ref_db, dtype, "db")


@given(st.data(), st.sampled_from(["dense", "rows", None]))
def test_center_loss(data, center_grad):
    classes = data.draw(st.integers(1, 5))
    x, labels, dtype = data.draw(batches(classes=classes))
    centers = data.draw(grid_rows(classes, x.shape[1])).astype(dtype)
    x = x.astype(dtype)
    loss, dx, dcenters = faceops.center_loss(x, labels, centers, center_grad)
    ref_loss, ref_dx, ref_dcenters = reference.center_loss(x.astype(np.float64), labels, centers.astype(np.float64))
    assert_loss(loss, ref_loss, dtype)
    assert_close(dx, ref_dx, dtype, "dx")
    if center_grad == "dense":
        assert_close(dcenters, ref_dcenters, dtype, "dcenters")
    elif center_grad == "rows":
        rows_classes, rows = dcenters
        np.testing.assert_array_equal(rows_classes, np.unique(labels))
        assert_close(rows, ref_dcenters[rows_classes], dtype, "dcenters rows")
    else:
        assert dcenters is None


@given(st.data(), st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_center_update(data, alpha):
    classes = data.draw(st.integers(1, 5))
    x, labels, dtype = data.draw(batches(classes=classes))
    x = x.astype(dtype)
    centers = data.draw(grid_rows(classes, x.shape[1])).astype(dtype)
    direction = faceops.center_update_direction(x, labels, centers)
    expected = reference.center_update_direction(x.astype(np.float64), labels, centers.astype(np.float64))
    assert_close(direction, expected, dtype, "direction")
    moved = centers.copy()
    faceops.center_update(x, labels, moved, alpha)
    assert_close(moved, centers.astype(np.float64) - alpha * expected, dtype, "centers")


@given(st.data(), st.sampled_from(sorted(faceops.MARGINS)), st.sampled_from([1.0, 16.0, 64.0]))
def test_margin_softmax_loss(data, margin, scale):
    classes = data.draw(st.integers(1, 6))
    n, d = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 6))
    labels = data.draw(labels_of(n, classes))
    dtype = data.draw(DTYPES)
    rows = data.draw(st.one_of(grid_rows(n + classes, d), float_rows(n + classes, d))).astype(dtype)
    x, weight = rows[:n], rows[n:]
    if data.draw(st.booleans()):  # some rows exactly on their class weight: cos = +-1
        x[: min(n, classes)] = weight[labels[: min(n, classes)]] * dtype(data.draw(st.sampled_from([1.0, -2.0])))
    m = faceops.MARGINS[margin]
    loss, dx, dweight = faceops.margin_softmax_loss(x, labels, weight, scale, *m)
    ref_loss, ref_dx, ref_dweight = reference.margin_softmax_loss(x.astype(np.float64), labels,
                                                                  weight.astype(np.float64), scale, *m)
    # Near |cos| = 1 the cosine's rounding reaches the gradient as sqrt(epsilon) of its scale
    # s / (n |x|) (csrc/faceops/margin_softmax.h); elsewhere the usual tolerances hold.
    relative = 5e-3 if dtype == np.float32 else 1e-6
    assert loss == pytest.approx(ref_loss, rel=relative, abs=relative)
    for actual, expected, norms in ((dx, ref_dx, np.linalg.norm(x, axis=1)),
                                    (dweight, ref_dweight, np.linalg.norm(weight, axis=1))):
        floor = np.maximum(norms.min(), 1e-12)
        grad_scale = max(scale / n / floor, float(np.abs(expected).max(initial=0.0)))
        np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * grad_scale)


@given(st.data(), st.sampled_from(sorted(faceops.MARGINS)))
def test_margin_softmax_sampled(data, margin):
    # Partial FC: the sampled loss is the dense loss over the sampled classes.
    classes = data.draw(st.integers(2, 12))
    n, d = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5))
    labels = data.draw(labels_of(n, classes))
    x, weight = np.split(data.draw(float_rows(n + classes, d)), [n])
    rate = data.draw(st.sampled_from([0.1, 0.5, 0.9]))
    seed = data.draw(st.integers(0, 1000))
    m = faceops.MARGINS[margin]
    loss, dx, (sampled, rows) = faceops.margin_softmax_loss(x, labels, weight, 16.0, *m, sample_rate=rate, rng=seed)
    assert set(np.unique(labels)) <= set(sampled.tolist()) and np.all(np.diff(sampled) > 0)
    ref_loss, ref_dx, ref_dweight = reference.margin_softmax_loss(x, np.searchsorted(sampled, labels), weight[sampled],
                                                                  16.0, *m)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-9)
    # At D = 1 every cosine is +-1: rounding reaches the gradient as sqrt(epsilon) of s / (n |row|).
    for actual, expected, norms in ((dx, ref_dx, np.linalg.norm(x, axis=1)),
                                    (rows, ref_dweight, np.linalg.norm(weight[sampled], axis=1))):
        grad_scale = max(16.0 / n / max(norms.min(), 1e-12), float(np.abs(expected).max(initial=0.0)))
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6 * grad_scale)


COSINES = st.one_of(st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0]), st.floats(-1.0, 1.0))


@given(st.data(), st.sampled_from(sorted(faceops.MARGINS)))
def test_target_margin(data, margin):
    n, classes = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5))
    cosine = np.array(data.draw(st.lists(COSINES, min_size=n * classes, max_size=n * classes))).reshape(n, classes)
    labels = data.draw(labels_of(n, classes))
    d_out = np.random.default_rng(data.draw(st.integers(0, 1000))).standard_normal((n, classes))
    m = faceops.MARGINS[margin]
    out = faceops.ops.target_margin_forward(cosine, labels, *m)
    d_cosine = faceops.ops.target_margin_backward(cosine, labels, d_out, *m)
    psi, dpsi = reference.margin_target(cosine[np.arange(n), labels], *m)
    expected_out, expected_d = cosine.copy(), d_out.copy()
    expected_out[np.arange(n), labels] = psi
    expected_d[np.arange(n), labels] *= dpsi
    np.testing.assert_allclose(out, expected_out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(d_cosine, expected_d, rtol=1e-9, atol=1e-9)
    assert np.abs(d_cosine).max() <= np.abs(d_out).max() * (m[0] / reference.margin_sin_floor() + 2)
