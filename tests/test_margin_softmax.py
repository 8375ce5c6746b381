"""The combined-margin softmax (ArcFace, CosFace, SphereFace, combined) against
finite differences of its own loss, the dense NumPy reference, the margin's
closed forms, Partial FC sampling, bounded memory at C = 10^6, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

import faceops
from faceops import reference
from testing import DEVICES, DTYPES, TOLERANCE, numerical_gradient, product, to_device, to_numpy

MARGINS = sorted(faceops.MARGINS)


def batch(seed, n=12, d=6, classes=5, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(dtype)
    weight = rng.standard_normal((classes, d)).astype(dtype)
    labels = rng.integers(0, classes, n)
    return x, labels, weight


# N > D recomputes the logits for the gradients; N <= D keeps them in dweight's rows.
SHAPES = [(12, 6, 5), (5, 8, 5)]


@pytest.mark.parametrize("device,margin,shape", product(DEVICES, MARGINS, SHAPES))
def test_gradients_match_finite_differences(device, margin, shape):
    n, d, classes = shape
    x, labels, weight = batch(1, n, d, classes)
    m = faceops.MARGINS[margin]
    labels_d = to_device(labels, device)

    def loss_of(x_value, weight_value):
        return faceops.margin_softmax_loss(to_device(x_value, device), labels_d, to_device(weight_value, device), 8.0, *m)[0]

    loss, dx, dweight = faceops.margin_softmax_loss(to_device(x, device), labels_d, to_device(weight, device), 8.0, *m)
    assert loss > 0
    numeric_dx = numerical_gradient(lambda z: loss_of(z, weight), x.copy())
    numeric_dweight = numerical_gradient(lambda w: loss_of(x, w), weight.copy())
    # Central differences of a smooth loss: |analytic - numeric| <= 1e-6 of the gradient's scale.
    np.testing.assert_allclose(to_numpy(dx), numeric_dx, rtol=0, atol=1e-6 * np.abs(numeric_dx).max())
    np.testing.assert_allclose(to_numpy(dweight), numeric_dweight, rtol=0, atol=1e-6 * np.abs(numeric_dweight).max())


@pytest.mark.parametrize("device,dtype,margin,rows", product(DEVICES, DTYPES, MARGINS, [70, 20]))
def test_matches_dense_reference(device, dtype, margin, rows):
    # 300 classes: several class blocks, a partial last one; 70 rows: two row tiles, logits
    # recomputed (N > D); 20 rows: logits kept in dweight (N <= D).
    x, labels, weight = batch(2, n=rows, d=33, classes=300)
    m = faceops.MARGINS[margin]
    expected = reference.margin_softmax_loss(x, labels, weight, 30.0, *m)
    loss, dx, dweight = faceops.margin_softmax_loss(
        to_device(x.astype(dtype), device), to_device(labels, device), to_device(weight.astype(dtype), device), 30.0, *m
    )
    # float32 kernels against the float64 reference, relative to each gradient's scale.
    tol = TOLERANCE[dtype]
    assert loss == pytest.approx(expected[0], rel=tol["rtol"])
    for got, want in ((dx, expected[1]), (dweight, expected[2])):
        np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=tol["rtol"] * np.abs(want).max())


def test_margin_closed_forms_and_monotonic_extension():
    theta = np.linspace(0.0, np.pi, 2001)
    for m1, m2, m3 in faceops.MARGINS.values():
        psi, dpsi = reference.margin_target(np.cos(theta), m1, m2, m3)
        out = faceops.ops.target_margin_forward(np.cos(theta)[:, None].copy(), np.zeros(len(theta), np.int64), m1, m2, m3)
        np.testing.assert_allclose(out[:, 0], psi, rtol=0, atol=1e-12)
        inside = m1 * theta + m2 <= np.pi
        np.testing.assert_allclose(psi[inside], np.cos(m1 * theta[inside] + m2) - m3, atol=1e-12)
        # Continuous (steps no larger than the grid's slope allows) and strictly decreasing on [0, pi].
        assert np.all(np.diff(psi) < 0)
        assert np.max(np.abs(np.diff(psi))) < 2.5 * m1 * (theta[1] - theta[0])
    # ArcFace past theta = pi - m2: SphereFace's continuation -cos(theta + m2) - 2, not insightface's jump.
    psi, _ = reference.margin_target(np.cos(np.array([2.9])), 1.0, 0.5, 0.0)
    assert psi[0] == pytest.approx(-np.cos(3.4) - 2.0)


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_past_pi_minus_m2(device):
    # ArcFace with every target at theta in (pi - m2, pi): the continued branch, k = 1.
    rng = np.random.default_rng(4)
    weight = rng.standard_normal((3, 4))
    labels = np.array([0, 1, 2, 0])
    x = -weight[labels] + 0.1 * rng.standard_normal((4, 4))
    cos_target = np.sum(x * weight[labels], 1) / np.linalg.norm(x, axis=1) / np.linalg.norm(weight[labels], axis=1)
    assert np.all(np.arccos(cos_target) > np.pi - 0.5)
    labels_d = to_device(labels, device)
    _, dx, _ = faceops.margin_softmax_loss(to_device(x, device), labels_d, to_device(weight, device), 4.0, 1.0, 0.5, 0.0)
    numeric = numerical_gradient(
        lambda z: faceops.margin_softmax_loss(to_device(z, device), labels_d, to_device(weight, device), 4.0, 1.0, 0.5, 0.0)[0],
        x.copy(),
    )
    np.testing.assert_allclose(to_numpy(dx), numeric, rtol=0, atol=1e-6 * np.abs(numeric).max())


def test_kept_and_recomputed_logits_give_the_same_dx():
    x, labels, weight = batch(15, n=30, d=40, classes=700)
    kept = faceops.margin_softmax_loss(x, labels, weight)
    recomputed = faceops.margin_softmax_loss(x, labels, weight, weight_grad=False)
    assert kept[0] == recomputed[0] and np.array_equal(kept[1], recomputed[1])


def test_target_margin_backward_is_the_derivative():
    cosine = np.random.default_rng(5).uniform(-0.99, 0.99, (6, 4))
    labels = np.array([0, 1, 2, 3, 0, 1])
    d_out = np.random.default_rng(6).standard_normal((6, 4))
    for m1, m2, m3 in faceops.MARGINS.values():
        d_cosine = faceops.ops.target_margin_backward(cosine, labels, d_out, m1, m2, m3)
        step = 1e-6
        bumped = [faceops.ops.target_margin_forward(cosine + sign * step, labels, m1, m2, m3) for sign in (1, -1)]
        np.testing.assert_allclose(d_cosine, d_out * (bumped[0] - bumped[1]) / (2 * step), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_keeps_positives_and_matches_the_restricted_reference(device):
    rng = np.random.default_rng(7)
    x, labels, weight = batch(8, n=20, d=8, classes=200)
    loss, dx, (classes, rows) = faceops.margin_softmax_loss(
        to_device(x, device), to_device(labels, device), to_device(weight, device), 16.0, sample_rate=0.25, rng=3
    )
    classes = to_numpy(classes)
    assert len(classes) == 50 and np.all(np.diff(classes) > 0)
    assert set(labels) <= set(classes.tolist())
    local = np.searchsorted(classes, labels)
    expected = reference.margin_softmax_loss(x, local, weight[classes], 16.0, 1.0, 0.5, 0.0)
    assert loss == pytest.approx(expected[0], rel=1e-12)
    np.testing.assert_allclose(to_numpy(dx), expected[1], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(to_numpy(rows), expected[2], rtol=1e-10, atol=1e-14)
    # The same seed draws the same classes; another draws others.
    again = faceops.margin_softmax_loss(to_device(x, device), to_device(labels, device), to_device(weight, device),
                                        16.0, sample_rate=0.25, rng=3)[2][0]
    other = faceops.margin_softmax_loss(to_device(x, device), to_device(labels, device), to_device(weight, device),
                                        16.0, sample_rate=0.25, rng=np.random.default_rng(4) if device == "cpu" else 4)[2][0]
    assert np.array_equal(to_numpy(again), classes) and not np.array_equal(to_numpy(other), classes)
    del rng


def test_sampling_with_more_positives_than_the_rate_keeps_them_all():
    x, labels, weight = batch(9, n=40, d=4, classes=50)
    _, _, (classes, rows) = faceops.margin_softmax_loss(x, labels, weight, sample_rate=0.02, rng=0)
    assert np.array_equal(classes, np.unique(labels)) and rows.shape == (len(classes), 4)


_PEAK_MEMORY_SCRIPT = r"""
import json, re
import numpy as np, faceops

def high_water_kb():  # this process's peak RSS (ru_maxrss would include the parent's from before exec)
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))

n, d, c = 64, 16, 1_000_000
rng = np.random.default_rng(0)
x = rng.standard_normal((n, d), dtype=np.float32)
weight = rng.standard_normal((c, d), dtype=np.float32)  # no float64 temporary to raise the high-water mark
labels = rng.integers(0, c, n)
faceops.margin_softmax_loss(x, labels % 1000, weight[:1000].copy(), weight_grad=False)  # threads, libraries loaded
before = high_water_kb()
loss, dx, dweight = faceops.margin_softmax_loss(x, labels, weight)
after = high_water_kb()
print(json.dumps({"extra_kb": after - before, "loss": loss, "dweight_kb": dweight.nbytes // 1024}))
"""


def test_a_million_classes_in_bounded_memory():
    # An N x C float32 logit matrix would be 64 x 10^6 x 4 B = 250 MB; the kernel holds one
    # block per thread, so the peak grows by the (C, D) gradient (61 MB) and a few MB more.
    result = json.loads(subprocess.run([sys.executable, "-c", _PEAK_MEMORY_SCRIPT], check=True,
                                       capture_output=True, text=True).stdout)
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    # The gradient itself shows in the peak: the measurement sees allocations of this size.
    assert result["dweight_kb"] * 0.9 < result["extra_kb"] < result["dweight_kb"] + 40 * 1024, result


def test_margin_softmax_loss_object_trains():
    rng = np.random.default_rng(10)
    centers = rng.standard_normal((6, 8))
    labels = np.repeat(np.arange(6), 5)
    x = (centers[labels] + 0.3 * rng.standard_normal((30, 8))).astype(np.float32)
    loss_fn = faceops.MarginSoftmaxLoss(6, 8, s=16.0, margin="cosface", seed=1)
    losses = []
    for _ in range(30):
        loss, dx = loss_fn(x, labels)
        losses.append(loss)
        loss_fn.weight -= 0.5 * loss_fn.grad_weight
        assert dx.shape == x.shape and dx.dtype == np.float32
    assert losses[-1] < 0.5 * losses[0]
    sampled = faceops.MarginSoftmaxLoss(100, 8, margin=(1.0, 0.3, 0.2), sample_rate=0.1)
    sampled(x, labels)
    classes, rows = sampled.grad_weight
    assert len(classes) == 10 and rows.shape == (10, 8)
    with pytest.raises(ValueError, match="margin: expected one of"):
        faceops.MarginSoftmaxLoss(6, 8, margin="arc")


@pytest.mark.parametrize(
    "change,error,message",
    [
        (dict(weight=np.zeros((5, 7))), ValueError, "weight: expected 6 columns"),
        (dict(weight=np.zeros((5, 6), np.float32)), TypeError, "weight: expected dtype float64"),
        (dict(labels=np.array([0, 1, 2, 3, 4, 5] * 2)), ValueError, "labels"),
        (dict(labels=np.zeros(11, np.int64)), ValueError, r"labels: expected shape \(12,\)"),
        (dict(s=0.0), ValueError, "s: expected a scale > 0"),
        (dict(s=np.nan), ValueError, "s: expected a finite number"),
        (dict(m1=0.0), ValueError, "m1: expected a multiplicative margin > 0"),
        (dict(m2=np.inf), ValueError, "m2: expected a finite number"),
        (dict(sample_rate=0.0), ValueError, "sample_rate: expected 0 < sample_rate <= 1"),
        (dict(sample_rate=1.5), ValueError, "sample_rate"),
        (dict(x=np.zeros((0, 6))), ValueError, "x: empty batch"),
    ],
)
def test_bad_input(change, error, message):
    x, labels, weight = batch(11)
    args = dict(x=x, labels=labels, weight=weight)
    args.update(change)
    if "x" in change and len(change["x"]) == 0:
        args["labels"] = np.zeros(0, np.int64)
    with pytest.raises(error, match=message):
        faceops.margin_softmax_loss(**args)


@pytest.mark.parametrize("where", ["x", "weight"])
def test_nan_is_rejected(where):
    x, labels, weight = batch(12)
    (x if where == "x" else weight)[1, 2] = np.nan
    with pytest.raises(ValueError, match=f"{where}: contains NaN or Inf"):
        faceops.margin_softmax_loss(x, labels, weight)
    with pytest.raises(ValueError, match=f"{where}: contains NaN or Inf"):
        faceops.margin_softmax_loss(x, labels, weight, sample_rate=0.5)


def test_labels_out_of_range_are_rejected_with_sampling_too():
    x, labels, weight = batch(13)
    labels[3] = 5
    for rate in (1.0, 0.5):
        with pytest.raises(ValueError, match="labels: label 5 .*out of range"):
            faceops.margin_softmax_loss(x, labels, weight, sample_rate=rate)


def test_zero_rows_follow_normalize_semantics():
    # F.normalize: x / max(||x||, 1e-12); a zero row has cosine 0 with every class.
    x, labels, weight = batch(14)
    x[0] = 0.0
    loss, dx, _ = faceops.margin_softmax_loss(x, labels, weight, 8.0, *faceops.MARGINS["cosface"])
    expected = reference.margin_softmax_loss(x, labels, weight, 8.0, *faceops.MARGINS["cosface"])
    assert loss == pytest.approx(expected[0], rel=1e-12)
    np.testing.assert_allclose(dx, expected[1], rtol=1e-10)


# Factors past the point where a row's sum of squares overflows (float32 entries near 1e19,
# float64 near 1e154) while its norm does not: one well inside the range, one with norms near the
# largest finite value (1 / norm subnormal).  Powers of two, so the scaled rows are exact.
SCALES = {np.float32: [2.0**70, 2.0**124], np.float64: [2.0**530, 2.0**1020]}


@pytest.mark.parametrize("device,dtype,where,shape", product(DEVICES, DTYPES, ["x", "weight"], SHAPES))
def test_scaled_rows_past_overflow_of_the_sum_of_squares(device, dtype, where, shape):
    # The loss depends on the directions of the rows only: scaling x (or weight) by a factor leaves
    # it unchanged and divides that argument's gradient by the factor, also where ||row||^2
    # overflows (it used to give a norm of inf, cosines of 0 and a clean, wrong loss).
    n, d, classes = shape
    x, labels, weight = batch(15, n, d, classes, dtype)
    m = faceops.MARGINS["arcface"]
    labels_d = to_device(labels, device)
    loss, dx, dweight = faceops.margin_softmax_loss(to_device(x, device), labels_d, to_device(weight, device), 8.0, *m)
    base = float(loss), to_numpy(dx), to_numpy(dweight)
    # The two paths sum the squares in other orders (about an ulp apart, as measured), and in
    # float32 dx / 2^124 lies near the subnormals, where fewer bits are left: 1e-5 and 1e-13.
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for factor in SCALES[dtype]:
        scaled = dict(x=x, weight=weight)
        scaled[where] = scaled[where] * dtype(factor)
        with np.errstate(over="ignore"):
            assert np.isinf(np.sum(scaled[where] ** 2, axis=1)).all()
        loss, dx, dweight = faceops.margin_softmax_loss(to_device(scaled["x"], device), labels_d,
                                                        to_device(scaled["weight"], device), 8.0, *m)
        dx, dweight = to_numpy(dx), to_numpy(dweight)
        assert loss == pytest.approx(base[0], rel=tol)
        want_dx = base[1] / factor if where == "x" else base[1]
        want_dweight = base[2] / factor if where == "weight" else base[2]
        for got, want in ((dx, want_dx), (dweight, want_dweight)):
            assert np.isfinite(got).all()
            np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
            assert np.abs(got).max() > 0


@pytest.mark.parametrize("factor", SCALES[np.float64])
def test_reference_past_overflow_of_the_sum_of_squares(factor):
    # The float64 reference the kernels are checked against holds there too: the kernel on the
    # scaled rows agrees with the reference on them (it would give a norm of inf and cosines of 0).
    x, labels, weight = batch(17, 9, 6, 5, np.float64)
    m = faceops.MARGINS["arcface"]
    scaled = x * factor
    expected = reference.margin_softmax_loss(scaled, labels, weight, 8.0, *m)
    unscaled = reference.margin_softmax_loss(x, labels, weight, 8.0, *m)
    assert expected[0] == pytest.approx(unscaled[0], rel=1e-13)
    loss, dx, dweight = faceops.margin_softmax_loss(scaled, labels, weight, 8.0, *m)
    assert loss == pytest.approx(expected[0], rel=1e-12)
    np.testing.assert_allclose(dx, expected[1], rtol=0, atol=1e-12 * np.abs(expected[1]).max())
    np.testing.assert_allclose(dweight, expected[2], rtol=0, atol=1e-12 * np.abs(expected[2]).max())


@pytest.mark.parametrize("device,dtype,where", product(DEVICES, DTYPES, ["x", "weight"]))
def test_a_norm_past_the_dtype_range_gives_nan(device, dtype, where):
    # Every entry finite, the norm itself beyond the largest finite value: no right answer exists
    # in the dtype, so the loss and the gradients are NaN, never a clean number.
    x, labels, weight = batch(16, 12, 6, 5, dtype)
    (x if where == "x" else weight)[1] = np.finfo(dtype).max / 2
    loss, dx, dweight = faceops.margin_softmax_loss(to_device(x, device), to_device(labels, device),
                                                    to_device(weight, device), 8.0, *faceops.MARGINS["arcface"])
    assert np.isnan(loss)
    assert np.isnan(to_numpy(dx if where == "x" else dweight)[1]).all()


def test_target_margin_bad_input():
    cosine = np.zeros((4, 3))
    with pytest.raises(ValueError, match="labels: label 3 .*out of range"):
        faceops.ops.target_margin_forward(cosine, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"d_out: expected 4 rows"):
        faceops.ops.target_margin_backward(cosine, np.array([0, 1, 2, 0]), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="m1: expected a multiplicative margin > 0"):
        faceops.ops.target_margin_forward(cosine, np.array([0, 1, 2, 0]), m1=-1.0)


@pytest.mark.parametrize("device,dtype,d", product(DEVICES, DTYPES, [1, 2, 3]))
def test_gradients_at_cosine_plus_minus_one_are_bounded(device, dtype, d):
    # Rows exactly parallel to their class weight (cos = +-1 up to the cosine's rounding):
    # dpsi/dc is infinite there for m2 > 0; the floor sqrt(epsilon) on sin(theta) bounds it, so the
    # rounding of the cosine reaches the gradient at most as sqrt(epsilon) of its scale s / (n |x|)
    # (a fixed 1e-6 floor gave 9% of it in float32 at D = 2).
    rng = np.random.default_rng(d)
    tolerance = 3e-3 if dtype == np.float32 else 1e-6
    for _ in range(20):
        weight = rng.standard_normal((4, d)).astype(dtype)
        x = weight * np.array([[2.0], [-0.5], [4.0], [1.0]], dtype=dtype)  # exact multiples
        labels = np.arange(4)
        loss, dx, dweight = faceops.margin_softmax_loss(to_device(x, device), to_device(labels, device),
                                                        to_device(weight, device), 64.0, 1.0, 0.5, 0.0)
        expected = reference.margin_softmax_loss(x.astype(np.float64), labels, weight.astype(np.float64), 64.0,
                                                 1.0, 0.5, 0.0)
        scale = 64.0 / 4 / np.linalg.norm(x, axis=1).min()
        assert np.isfinite(loss) and np.isfinite(to_numpy(dx)).all() and np.isfinite(to_numpy(dweight)).all()
        np.testing.assert_allclose(to_numpy(dx), expected[1], rtol=0, atol=tolerance * scale)
        np.testing.assert_allclose(to_numpy(dweight), expected[2], rtol=0, atol=tolerance * scale)


@pytest.mark.parametrize("device,dtype", product(DEVICES, DTYPES))
def test_target_margin_derivative_is_bounded_at_cosine_one(device, dtype):
    # |dpsi/dc| <= m1 / sqrt(epsilon) (csrc/faceops/margin_softmax.h), also at c = +-1 exactly.
    bound = reference.margin_sin_floor(dtype)
    one_ulp_below = np.nextafter(dtype(1), dtype(0))
    cosine = np.array([[1.0], [-1.0], [one_ulp_below], [-one_ulp_below]], dtype=dtype)
    labels = np.zeros(4, np.int64)
    d_out = np.ones_like(cosine)
    for m1, m2, m3 in faceops.MARGINS.values():
        d_cosine = to_numpy(faceops.ops.target_margin_backward(to_device(cosine, device), to_device(labels, device),
                                                               to_device(d_out, device), m1, m2, m3))
        assert np.isfinite(d_cosine).all()
        assert np.abs(d_cosine).max() <= m1 / bound * (1 + 1e-6)
