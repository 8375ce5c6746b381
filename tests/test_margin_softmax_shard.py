"""The class-shard entries of the margin softmax (faceops._shard): each shard's forward against a
dense NumPy reference, the shards combined against the single-call loss and gradients over all
classes, the backward against finite differences of the forward, and bad input."""

import numpy as np
import pytest

import faceops
from faceops import _shard, reference
from testing import DEVICES, DTYPES, TOLERANCE, numerical_gradient, product, to_device, to_numpy

MARGINS = sorted(faceops.MARGINS)
S = 30.0


def batch(seed, n, d, classes):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n), rng.standard_normal((classes, d))


def dense_shard(x, local_labels, weight, s, m1, m2, m3):
    """(row_max, row_sum, target_logit) from the dense float64 logits of one shard."""
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    logits = s * (x_hat @ w_hat.T)
    rows = np.flatnonzero(local_labels >= 0)
    psi, _ = reference.margin_target(logits[rows, local_labels[rows]] / s, m1, m2, m3)
    logits[rows, local_labels[rows]] = s * psi
    target = np.zeros(len(x))
    target[rows] = s * psi
    row_max = logits.max(axis=1)
    return row_max, np.exp(logits - row_max[:, None]).sum(axis=1), target


def local_labels(labels, start, end):
    return np.where((labels >= start) & (labels < end), labels - start, -1).astype(np.int64)


# Uneven shards of 300 classes; the last holds none of the batch's classes (labels < 290).
BOUNDS = [0, 130, 131, 290, 300]


@pytest.mark.parametrize("device,dtype,margin", product(DEVICES, DTYPES, MARGINS))
def test_shard_forward_matches_dense_reference(device, dtype, margin):
    x, labels, weight = batch(1, 70, 33, 300)
    m = faceops.MARGINS[margin]
    start, end = 100, 250  # about half the rows' classes elsewhere
    local = local_labels(labels, start, end)
    expected_max, expected_sum, expected_target = dense_shard(x, local, weight[start:end], S, *m)
    row_max, row_sum, target = (to_numpy(a) for a in _shard.margin_softmax_shard_forward(
        to_device(x.astype(dtype), device), to_device(local, device), to_device(weight[start:end].astype(dtype), device),
        S, *m))
    assert row_max.dtype == dtype and np.all(target[local < 0] == 0)
    # The pair (row_max, row_sum) is compared through the log-sum-exp it stands for (the maximum
    # is a shift; float32 rounds it): float32 to 2e-4 of the logits' scale s.
    tol = dict(rtol=0, atol=2e-4 * S) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(row_max + np.log(row_sum), expected_max + np.log(expected_sum), **tol)
    np.testing.assert_allclose(target, expected_target, **tol)


@pytest.mark.parametrize("device,dtype,margin,rows", product(DEVICES, DTYPES, MARGINS, [70, 20]))
def test_shards_combine_to_the_whole_softmax(device, dtype, margin, rows):
    # 70 rows recompute the logits in the full call (N > D), 20 keep them in dweight (N <= D);
    # the shards always recompute: both paths must agree with the shards.
    x, labels, weight = batch(2, rows, 33, 290)
    weight = np.concatenate([weight, batch(3, 1, 33, 10)[2]])  # classes 290.. hold no label
    m = faceops.MARGINS[margin]
    full_loss, full_dx, full_dweight = faceops.margin_softmax_loss(
        to_device(x.astype(dtype), device), to_device(labels, device), to_device(weight.astype(dtype), device), S, *m)
    shards = [(start, end, local_labels(labels, start, end)) for start, end in zip(BOUNDS, BOUNDS[1:])]
    args = [(to_device(x.astype(dtype), device), to_device(local, device), to_device(weight[start:end].astype(dtype), device))
            for start, end, local in shards]
    parts = [_shard.margin_softmax_shard_forward(*a, S, *m) for a in args]
    xp = np if device == "cpu" else __import__("cupy")
    lse = _shard.combine_log_sum_exp(xp.stack([p[0] for p in parts]), xp.stack([p[1] for p in parts]))
    target = sum(p[2] for p in parts)
    loss = float((lse - target).mean())
    grads = [_shard.margin_softmax_shard_backward(*a, lse, 1.0 / rows, S, *m) for a in args]
    dx = to_numpy(sum(g[0] for g in grads))
    dweight = np.concatenate([to_numpy(g[1]) for g in grads])
    expected = reference.margin_softmax_loss(x, labels, weight, S, *m)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(loss, expected[0], **tol)
    np.testing.assert_allclose(loss, full_loss, **tol)
    for got, full, want in ((dx, full_dx, expected[1]), (dweight, full_dweight, expected[2])):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=tol["rtol"] * scale)
        np.testing.assert_allclose(got, to_numpy(full), rtol=0, atol=tol["rtol"] * scale)
    # A shard whose classes no row holds still gets the softmax part of its rows' gradient.
    assert np.abs(dweight[290:]).max() > 0


@pytest.mark.parametrize("device,margin", product(DEVICES, MARGINS))
def test_shard_backward_matches_finite_differences(device, margin):
    # With log_sum_exp held fixed, the backward is the gradient of
    # loss_scale * sum_i (sum_j exp(logit_ij - lse_i) - target_logit_i) over this shard's classes.
    x, labels, weight = batch(4, 9, 6, 12)
    m = faceops.MARGINS[margin]
    start, end = 3, 9
    local = to_device(local_labels(labels, start, end), device)
    lse = to_device(np.log(12.0) + np.linspace(0.0, 3.0, 9), device)
    loss_scale = 1.0 / 27

    def shard_objective(x_value, weight_value):
        row_max, row_sum, target = (to_numpy(a) for a in _shard.margin_softmax_shard_forward(
            to_device(x_value, device), local, to_device(weight_value, device), 8.0, *m))
        return loss_scale * float(np.sum(row_sum * np.exp(row_max - to_numpy(lse)) - target))

    dx, dweight = _shard.margin_softmax_shard_backward(
        to_device(x, device), local, to_device(weight[start:end], device), lse, loss_scale, 8.0, *m)
    numeric_dx = numerical_gradient(lambda z: shard_objective(z, weight[start:end]), x.copy())
    numeric_dweight = numerical_gradient(lambda w: shard_objective(x, w), weight[start:end].copy())
    np.testing.assert_allclose(to_numpy(dx), numeric_dx, rtol=0, atol=1e-6 * np.abs(numeric_dx).max())
    np.testing.assert_allclose(to_numpy(dweight), numeric_dweight, rtol=0, atol=1e-6 * np.abs(numeric_dweight).max())
    _, no_dweight = _shard.margin_softmax_shard_backward(
        to_device(x, device), local, to_device(weight[start:end], device), lse, loss_scale, 8.0, *m, weight_grad=False)
    assert no_dweight is None


@pytest.mark.parametrize("device,dtype", product(DEVICES, DTYPES))
def test_shard_rows_past_overflow_of_the_sum_of_squares(device, dtype):
    # Rows of x and of the shard's weight scaled past the point where their sum of squares
    # overflows (as tests/test_margin_softmax.py does for the whole softmax): the forward is
    # unchanged, and a scaled row's gradient times its factor is the unscaled row's.
    x, labels, weight = batch(6, 9, 6, 12)
    x, weight = x.astype(dtype), weight[3:9].astype(dtype)  # the shard of classes [3, 9)
    factor = dtype(2.0**100 if dtype == np.float32 else 2.0**1000)
    rows, classes = [0, 4], [1, 4]
    big_x, big_weight = x.copy(), weight.copy()
    big_x[rows] *= factor
    big_weight[classes] *= factor
    local = to_device(local_labels(labels, 3, 9), device)
    lse = to_device((np.log(12.0) + np.linspace(0.0, 3.0, 9)).astype(dtype), device)

    def shard(x_value, weight_value):
        args = to_device(x_value, device), local, to_device(weight_value, device)
        forward = _shard.margin_softmax_shard_forward(*args, 8.0)
        return [to_numpy(a) for a in (*forward, *_shard.margin_softmax_shard_backward(*args, lse, 1.0 / 9, 8.0))]

    want = shard(x, weight)
    got = shard(big_x, big_weight)
    assert all(np.isfinite(value).all() for value in got)
    got[3][rows] *= factor
    got[4][classes] *= factor
    tol = 1e-5 if dtype == np.float32 else 1e-13  # as for the whole softmax
    for got_value, want_value in zip(got, want):
        np.testing.assert_allclose(got_value, want_value, rtol=0, atol=tol * np.abs(want_value).max())


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_names_the_argument(device):
    x, labels, weight = batch(5, 8, 4, 6)
    x_d, w_d = to_device(x, device), to_device(weight, device)
    lse = to_device(np.zeros(8), device)
    for bad in (-2, 6):
        local = labels.copy()
        local[3] = bad
        with pytest.raises(ValueError, match="labels"):
            _shard.margin_softmax_shard_forward(x_d, to_device(local, device), w_d)
        with pytest.raises(ValueError, match="labels"):
            _shard.margin_softmax_shard_backward(x_d, to_device(local, device), w_d, lse, 0.1)
    good = to_device(labels, device)
    with pytest.raises(ValueError, match="log_sum_exp"):
        _shard.margin_softmax_shard_backward(x_d, good, w_d, to_device(np.full(8, np.nan), device), 0.1)
    with pytest.raises(ValueError, match="log_sum_exp"):
        _shard.margin_softmax_shard_backward(x_d, good, w_d, to_device(np.zeros(7), device), 0.1)
    with pytest.raises(ValueError, match="loss_scale"):
        _shard.margin_softmax_shard_backward(x_d, good, w_d, lse, float("inf"))
    with pytest.raises(ValueError, match="s:"):
        _shard.margin_softmax_shard_forward(x_d, good, w_d, s=-1.0)
    nan_x = x.copy()
    nan_x[0, 0] = np.nan
    with pytest.raises(ValueError, match="x"):
        _shard.margin_softmax_shard_forward(to_device(nan_x, device), good, w_d)
    with pytest.raises(ValueError, match="weight"):
        _shard.margin_softmax_shard_forward(x_d, good, to_device(weight[:, :3].copy(), device))


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y, w: _shard.margin_softmax_shard_backward(x, y, w, list(range(6)), 1.0), TypeError, "log_sum_exp: "),
    (lambda x, y, w: _shard.margin_softmax_shard_forward(x, y, w[:0]), ValueError,
     r"weight: expected at least one class \(num_classes > 0\)"),
    (lambda x, y, w: _shard.combine_log_sum_exp(np.zeros(6), np.ones(6)), ValueError,
     r"row_maxes, row_sums: expected two \(shards, N\) arrays"),
])
def test_shard_functions_name_hostile_arguments(call, error, message):
    """A list log_sum_exp was an AttributeError, an empty shard 'empty batch (N = 0)', and unstacked
    (N,) statistics combined silently into one number."""
    rng = np.random.default_rng(6)
    x, labels, weight = rng.standard_normal((6, 5)), np.array([0, -1, 3, 2, -1, 1]), rng.standard_normal((4, 5))
    with pytest.raises(error, match=message):
        call(x, labels, weight)
