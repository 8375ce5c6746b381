"""One shard of a class-sharded margin softmax (model-parallel Partial FC) on NumPy/CuPy arrays:
the kernels of csrc/faceops/margin_softmax.h that faceops.torch.distributed combines over ranks.

A shard holds some of the classes' weights (C_r, D); ``labels`` index them, -1 marking a row whose
class lives on another shard.  The shards' forwards combine into each row's log-sum-exp
(``combine_log_sum_exp``), from which each shard's backward gives its part of the gradients."""

import numpy as np

from faceops import _arrays, _core, _params


def _check(x, labels, weight, s, m1, m2, m3):
    """The host-side checks, and the device-side ones queued on the returned DeviceChecks."""
    device, xp = _arrays.device_of(x=x, labels=labels, weight=weight)
    n, d = _arrays.check_matrix("x", x)
    num_classes, _ = _arrays.check_matrix("weight", weight, dtype=x.dtype, cols=d, classes=True)
    labels = _arrays.check_labels("labels", labels, n, xp)
    s = _params.scale(s, x.dtype)
    m1, m2, m3 = _params.margins(m1, m2, m3, x.dtype)
    checks = _arrays.device_checks(xp)
    checks.in_range("labels", labels, -1, num_classes, f"expected -1 (another shard) or 0 <= label < {num_classes}")
    checks.finite("x", x)
    checks.finite("weight", weight)
    return device, xp, labels, n, d, num_classes, (s, m1, m2, m3), checks


def margin_softmax_shard_forward(x, labels, weight, s=64.0, m1=1.0, m2=0.5, m3=0.0):
    """Per row of x (N, D) over this shard's classes: (row_max, row_sum, target_logit), each (N,):
    the largest logit, sum_j exp(logit_j - row_max), and s * psi(cos) of the row's target when it
    is on this shard (labels[i] >= 0), else 0."""
    device, xp, labels, n, d, num_classes, margin, checks = _check(x, labels, weight, s, m1, m2, m3)
    checks.run()
    row_max, row_sum, target_logit = (xp.empty((n,), dtype=x.dtype) for _ in range(3))
    _core.margin_softmax_shard_forward(
        np.dtype(x.dtype).name, device, _arrays.address(x), _arrays.address(labels), _arrays.address(weight),
        n, d, num_classes, *margin, _arrays.address(row_max), _arrays.address(row_sum),
        _arrays.address(target_logit), _arrays.current_stream(xp))
    return row_max, row_sum, target_logit


def combine_log_sum_exp(row_maxes, row_sums):
    """Each row's log-sum-exp over every shard from the shards' (row_max, row_sum), stacked
    (shards, N): M + log sum_r row_sum_r exp(row_max_r - M), M the largest row_max (stable)."""
    _, xp = _arrays.device_of(row_maxes=row_maxes, row_sums=row_sums)
    if row_maxes.ndim != 2 or row_sums.shape != row_maxes.shape:
        raise ValueError(f"row_maxes, row_sums: expected two (shards, N) arrays of one shape, the shards' stacked, "
                         f"got {tuple(row_maxes.shape)} and {tuple(row_sums.shape)}")
    top = row_maxes.max(axis=0)
    return top + xp.log((row_sums * xp.exp(row_maxes - top)).sum(axis=0))


def margin_softmax_shard_backward(x, labels, weight, log_sum_exp, loss_scale, s=64.0, m1=1.0, m2=0.5, m3=0.0,
                                  weight_grad=True):
    """This shard's part of the gradient of loss_scale * sum_i (log_sum_exp_i - target logit_i):
    (dx, dweight), dx (N, D) through this shard's classes only (the shards' dx add up to the whole),
    dweight (C_r, D) complete (None when ``weight_grad`` is False).  loss_scale = 1 / N over a
    global batch of N rows gives the mean cross-entropy's gradients."""
    _arrays.device_of(x=x, log_sum_exp=log_sum_exp)
    device, xp, labels, n, d, num_classes, margin, checks = _check(x, labels, weight, s, m1, m2, m3)
    if log_sum_exp.shape != (n,) or log_sum_exp.dtype != x.dtype or not log_sum_exp.flags.c_contiguous:
        raise ValueError(f"log_sum_exp: expected a contiguous ({n},) array of {np.dtype(x.dtype).name}, got "
                         f"{tuple(log_sum_exp.shape)} {log_sum_exp.dtype}")
    checks.finite("log_sum_exp", log_sum_exp)
    checks.run()
    loss_scale = _params.real("loss_scale", loss_scale, x.dtype)
    dx = xp.empty_like(x)
    dweight = xp.empty_like(weight) if weight_grad else None
    _core.margin_softmax_shard_backward(
        np.dtype(x.dtype).name, device, _arrays.address(x), _arrays.address(labels), _arrays.address(weight),
        n, d, num_classes, *margin, _arrays.address(log_sum_exp), loss_scale, _arrays.address(dx),
        _arrays.address(dweight), _arrays.current_stream(xp))
    return dx, dweight

