"""Stateful forms of the ops for training loops: each object owns what a
Caffe layer would own (centers, theta), is called like a pytorch-metric-learning
loss, ``loss, dx = loss_fn(x, labels)``, and keeps the gradients of its own
parameters."""

import numpy as np

from faceops import _params, ops


class CenterLoss:
    """Owns the class centers (num_classes, dim); each call returns (loss, dx) and,
    when ``alpha`` is not None, moves the centers of the batch's classes by Wen et al.
    eq. 4 (c_j <- c_j - alpha * delta_j) after computing the loss, as in the paper.

    ``xp`` is numpy or cupy: it decides where the centers live.
    """

    def __init__(self, num_classes, dim, alpha=0.5, dtype=np.float32, xp=np, centers=None):
        xp = _params.array_module("xp", xp)
        dtype = _state_dtype("centers", centers, dtype)
        num_classes, dim = _params.matrix_shape("num_classes", num_classes, "dim", dim, np.dtype(dtype).itemsize)
        if alpha is not None:
            alpha = _params.center_alpha(alpha, dtype)
        if centers is None:
            centers = xp.zeros((num_classes, dim), dtype=dtype)
        elif tuple(centers.shape) != (num_classes, dim):
            raise ValueError(f"centers: expected shape ({num_classes}, {dim}), got {tuple(centers.shape)}")
        if alpha is not None:
            ops._arrays.check_writeable("centers", centers)
        self.centers = centers
        self.alpha = alpha

    def __call__(self, x, labels):
        loss, dx, _ = ops.center_loss(x, labels, self.centers, center_grad=None)
        if self.alpha is not None:
            ops.center_update(x, labels, self.centers, self.alpha)
        return loss, dx


class TripletLoss:
    """In-batch mined triplet loss; mining is "semihard", "hard" or "all"."""

    def __init__(self, margin=0.2, mining="semihard", squared=True):
        self.margin = _params.hinge_margin(margin)
        self.mining = _params.choice("mining", mining, ops.MINING_MODES)
        self.squared = _params.flag("squared", squared)

    def __call__(self, x, labels):
        return ops.triplet_loss(x, labels, self.margin, self.mining, self.squared)


class PairLoss:
    """Multibatch pair loss with a learned threshold ``theta``: each call stores
    dL/dtheta in ``grad_theta`` for the optimiser that owns the step."""

    def __init__(self, theta=1.0):
        self.theta = _params.real("theta", theta)
        self.grad_theta = 0.0

    def __call__(self, x, labels):
        loss, dx, self.grad_theta = ops.pair_loss(x, labels, self.theta)
        return loss, dx


class ContrastiveLoss:
    """Contrastive loss on pairs (a_i, b_i); returns (loss, da, db)."""

    def __init__(self, margin=1.0, legacy=False):
        self.margin = _params.hinge_margin(margin)
        self.legacy = _params.flag("legacy", legacy)

    def __call__(self, a, b, similar):
        return ops.contrastive_loss(a, b, similar, self.margin, self.legacy)


class MarginSoftmaxLoss:
    """Owns the class weights (num_classes, dim) of a combined-margin softmax; ``margin`` is a
    name of ``faceops.MARGINS`` ("arcface", "cosface", ...) or (m1, m2, m3).  Each call returns
    (loss, dx) and stores ``grad_weight``: the dense (C, D) gradient, or with sample_rate < 1
    Partial FC's (classes, rows).  Sampling draws from a generator seeded by ``seed``.

    ``xp`` is numpy or cupy: it decides where the weights live.  The default weights are
    N(0, 0.01) as in insightface.
    """

    def __init__(self, num_classes, dim, s=64.0, margin="arcface", sample_rate=1.0, dtype=np.float32, xp=np,
                 weight=None, seed=0):
        xp = _params.array_module("xp", xp)
        dtype = _state_dtype("weight", weight, dtype)
        num_classes, dim = _params.matrix_shape("num_classes", num_classes, "dim", dim, np.dtype(dtype).itemsize)
        self.m1, self.m2, self.m3 = _params.margin_triple(margin, ops.MARGINS, dtype)
        self.s = _params.scale(s, dtype)
        self.sample_rate = _params.sample_rate(sample_rate, dtype)
        seed = _params.integer("seed", seed, low=0)
        if weight is None:
            weight = (xp.random.default_rng(seed).standard_normal((num_classes, dim)) * 0.01).astype(dtype)
        elif tuple(weight.shape) != (num_classes, dim):
            raise ValueError(f"weight: expected shape ({num_classes}, {dim}), got {tuple(weight.shape)}")
        self.weight = weight
        self.rng = xp.random.default_rng(seed)
        self.grad_weight = None

    def __call__(self, x, labels):
        loss, dx, self.grad_weight = ops.margin_softmax_loss(
            x, labels, self.weight, self.s, self.m1, self.m2, self.m3, self.sample_rate, self.rng)
        return loss, dx


def _state_dtype(name, array, dtype):
    """The dtype of a loss object's state: ``dtype``, or that of the ``array`` passed as it."""
    if array is None:
        return _check_dtype("dtype", dtype)
    if not isinstance(array, np.ndarray) and not type(array).__module__.startswith("cupy"):
        raise TypeError(f"{name}: expected a NumPy or CuPy array, got {type(array).__name__}")
    return _check_dtype(name, array.dtype)


def _check_dtype(name, dtype):
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{name}: expected float32 or float64, got {dtype!r}") from None
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    return dtype
