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
