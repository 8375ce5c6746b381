"""The pairwise losses as a NumPy user writes them (the issue's "plain NumPy"
peer): one dense N x N distance matrix from a matmul, masks, and the gradient
through dL/dD as two more matmuls.  They return what faceops' ops return
(tests/test_benchmark_peers.py checks them against faceops.reference); the
per-row loops of faceops.reference are far slower and are not timed.  Semi-hard
and batch-all work on chunks of (anchor, positive) pairs, so no N x N x N
tensor is held."""

import numpy as np

PAIR_CHUNK = 1024  # (anchor, positive) pairs per chunk of the triplet miners


def squared_distances(x):
    norms = np.einsum("ij,ij->i", x, x)
    distances = norms[:, None] + norms[None, :] - 2 * (x @ x.T)
    np.maximum(distances, 0, out=distances)
    np.fill_diagonal(distances, 0)
    return distances


def gradient_from_distances(x, dloss_ddistance):
    """dL/dx for L(D), D_ij = ||x_i - x_j||^2: dx_i = 2 sum_j (G + G^T)_ij (x_i - x_j)."""
    symmetric = dloss_ddistance + dloss_ddistance.T
    return 2 * (symmetric.sum(1)[:, None] * x - symmetric @ x)


def pair_loss(x, labels, theta):
    n = len(x)
    sign = np.where(labels[:, None] == labels[None, :], 1, -1).astype(x.dtype)
    hinge = 1 - sign * (theta - squared_distances(x))
    np.fill_diagonal(hinge, 0)
    active = hinge > 0
    pairs = n * n - n
    dloss_ddistance = np.where(active, sign, 0).astype(x.dtype) / pairs
    loss = float(hinge[active].sum()) / pairs
    return loss, gradient_from_distances(x, dloss_ddistance), -float(dloss_ddistance.sum())


def _anchor_positive_pairs(labels):
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    anchors, positives = np.nonzero(same)  # grouped by anchor, positives ascending
    return anchors, positives


def triplet_loss(x, labels, margin=0.2, mining="semihard"):
    """Squared distances; the selection rules of faceops.reference.triplet_loss."""
    n = len(x)
    distances = squared_distances(x)
    negative = labels[:, None] != labels[None, :]
    dloss_ddistance = np.zeros_like(distances)
    if mining == "hard":
        has_positive = np.zeros(n, bool)
        anchors, positives = _anchor_positive_pairs(labels)
        has_positive[anchors] = True
        valid = has_positive & negative.any(1)
        farthest_positive = np.where(labels[:, None] == labels[None, :], distances, -np.inf)
        np.fill_diagonal(farthest_positive, -np.inf)
        p = farthest_positive.argmax(1)
        q = np.where(negative, distances, np.inf).argmin(1)
        rows = np.arange(n)
        hinge = distances[rows, p] - distances[rows, q] + margin
        active = valid & (hinge > 0)
        count = valid.sum()
        if count == 0:
            return 0.0, np.zeros_like(x)
        np.add.at(dloss_ddistance, (rows[active], p[active]), 1 / count)
        np.add.at(dloss_ddistance, (rows[active], q[active]), -1 / count)
        return float(hinge[active].sum()) / count, gradient_from_distances(x, dloss_ddistance)

    anchors, positives = _anchor_positive_pairs(labels)
    keep = negative[anchors].any(1)
    anchors, positives = anchors[keep], positives[keep]
    count = len(anchors) if mining == "semihard" else int((negative.sum(1)[anchors]).sum())
    if count == 0:
        return 0.0, np.zeros_like(x)
    loss = 0.0
    for start in range(0, len(anchors), PAIR_CHUNK):
        a, p = anchors[start:start + PAIR_CHUNK], positives[start:start + PAIR_CHUNK]
        to_anchor = distances[a]  # (chunk, N)
        anchor_positive = distances[a, p][:, None]
        if mining == "semihard":
            farther = np.where(negative[a] & (to_anchor > anchor_positive), to_anchor, np.inf)
            q = farther.argmin(1)
            none_farther = np.isinf(farther[np.arange(len(a)), q])
            q[none_farther] = np.where(negative[a], to_anchor, -np.inf).argmax(1)[none_farther]
            hinge = anchor_positive[:, 0] - to_anchor[np.arange(len(a)), q] + margin
            active = hinge > 0
            loss += float(hinge[active].sum())
            np.add.at(dloss_ddistance, (a[active], p[active]), 1 / count)
            np.add.at(dloss_ddistance, (a[active], q[active]), -1 / count)
        else:
            hinge = np.where(negative[a], anchor_positive - to_anchor + margin, 0)
            active = hinge > 0
            loss += float(hinge[active].sum())
            np.add.at(dloss_ddistance, (a, p), active.sum(1) / count)
            # Rows of a chunk are grouped by anchor: sum each group's active negatives.
            starts = np.flatnonzero(np.r_[True, a[1:] != a[:-1]])
            dloss_ddistance[a[starts]] -= np.add.reduceat(active, starts, axis=0) / count
    return loss / count, gradient_from_distances(x, dloss_ddistance)


def contrastive_loss(a, b, similar, margin=1.0):
    n = len(a)
    difference = a - b
    distance = np.sqrt(np.einsum("ij,ij->i", difference, difference))
    similar = similar.astype(bool)
    gap = np.maximum(margin - distance, 0)
    loss = float(np.where(similar, distance**2, gap**2).sum()) / (2 * n)
    scale = np.where(similar, 1.0, -np.divide(gap, distance, out=np.zeros_like(gap), where=distance > 0))
    da = (scale[:, None] * difference / n).astype(a.dtype)
    return loss, da, -da
