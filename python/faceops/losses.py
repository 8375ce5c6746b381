"""Stateful forms of the ops for training loops: each object owns what a
Caffe layer would own (centers, theta), is called like a pytorch-metric-learning
loss, ``loss, dx = loss_fn(x, labels)``, and keeps the gradients of its own
parameters."""

import numpy as np

from faceops import ops


class CenterLoss:
    """Owns the class centers (num_classes, dim); each call returns (loss, dx) and,
    when ``alpha`` is not None, moves the centers of the batch's classes by Wen et al.
    eq. 4 (c_j <- c_j - alpha * delta_j) after computing the loss, as in the paper.

    ``xp`` is numpy or cupy: it decides where the centers live.
    """

    def __init__(self, num_classes, dim, alpha=0.5, dtype=np.float32, xp=np, centers=None):
        if centers is None:
            centers = xp.zeros((num_classes, dim), dtype=dtype)
        elif tuple(centers.shape) != (num_classes, dim):
            raise ValueError(f"centers: expected shape ({num_classes}, {dim}), got {tuple(centers.shape)}")
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
        if mining not in ops.MINING_MODES:
            raise ValueError(f"mining: expected one of {sorted(ops.MINING_MODES)}, got {mining!r}")
        self.margin, self.mining, self.squared = margin, mining, squared

    def __call__(self, x, labels):
        return ops.triplet_loss(x, labels, self.margin, self.mining, self.squared)


class PairLoss:
    """Multibatch pair loss with a learned threshold ``theta``: each call stores
    dL/dtheta in ``grad_theta`` for the optimiser that owns the step."""

    def __init__(self, theta=1.0):
        self.theta = float(theta)
        self.grad_theta = 0.0

    def __call__(self, x, labels):
        loss, dx, self.grad_theta = ops.pair_loss(x, labels, self.theta)
        return loss, dx


class ContrastiveLoss:
    """Contrastive loss on pairs (a_i, b_i); returns (loss, da, db)."""

    def __init__(self, margin=1.0, legacy=False):
        self.margin, self.legacy = margin, legacy

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
        if isinstance(margin, str):
            if margin not in ops.MARGINS:
                raise ValueError(f"margin: expected one of {sorted(ops.MARGINS)} or (m1, m2, m3), got {margin!r}")
            margin = ops.MARGINS[margin]
        self.m1, self.m2, self.m3 = (float(m) for m in margin)
        if weight is None:
            weight = (xp.random.default_rng(seed).standard_normal((num_classes, dim)) * 0.01).astype(dtype)
        elif tuple(weight.shape) != (num_classes, dim):
            raise ValueError(f"weight: expected shape ({num_classes}, {dim}), got {tuple(weight.shape)}")
        self.weight = weight
        self.s, self.sample_rate = float(s), float(sample_rate)
        self.rng = xp.random.default_rng(seed)
        self.grad_weight = None

    def __call__(self, x, labels):
        loss, dx, self.grad_weight = ops.margin_softmax_loss(
            x, labels, self.weight, self.s, self.m1, self.m2, self.m3, self.sample_rate, self.rng)
        return loss, dx
