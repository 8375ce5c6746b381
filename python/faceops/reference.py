"""Plain NumPy references of every faceops op, written straight from the
formulas (explicit pair and triplet enumeration, direct differences, no
tiling), for tests and benchmarks.  They return what the ops return."""

import numpy as np


def _pair_distance(xi, xj, squared):
    s = float(np.sum((xi - xj) ** 2))
    return s if squared else np.sqrt(s)


def _distance_grad(xi, xj, distance, squared):
    """d(distance)/d(x_i); the non-squared gradient is taken as 0 at distance 0."""
    if squared:
        return 2.0 * (xi - xj)
    return (xi - xj) / distance if distance > 0 else np.zeros_like(xi)


def center_loss(x, labels, centers):
    n = x.shape[0]
    residual = x - centers[labels]
    loss = float(np.sum(residual**2)) / (2 * n)
    dx = residual / n
    dcenters = np.zeros_like(centers)
    np.add.at(dcenters, labels, -residual / n)
    return loss, dx, dcenters


def center_update_direction(x, labels, centers):
    direction = np.zeros_like(centers)
    for j in np.unique(labels):
        members = x[labels == j]
        direction[j] = np.sum(centers[j] - members, axis=0) / (1 + len(members))
    return direction


def center_update(x, labels, centers, alpha):
    centers -= alpha * center_update_direction(x, labels, centers)


def contrastive_loss(a, b, similar, margin=1.0, legacy=False):
    n = a.shape[0]
    loss, da = 0.0, np.zeros_like(a)
    for i in range(n):
        diff = a[i] - b[i]
        dist_sq = float(diff @ diff)
        dist = np.sqrt(dist_sq)
        if similar[i]:
            loss += dist_sq
            da[i] = 2 * diff
        elif legacy:
            if margin - dist_sq > 0:
                loss += margin - dist_sq
                da[i] = -2 * diff
        elif margin - dist > 0:
            loss += (margin - dist) ** 2
            da[i] = -2 * (margin - dist) * diff / dist if dist > 0 else 0
    da /= 2 * n
    return loss / (2 * n), da, -da


def pair_loss(x, labels, theta):
    n = x.shape[0]
    pairs = n * n - n
    loss, dtheta, dx = 0.0, 0.0, np.zeros_like(x)
    if pairs == 0:
        return 0.0, dx, 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            y = 1.0 if labels[i] == labels[j] else -1.0
            hinge = 1.0 - y * (theta - _pair_distance(x[i], x[j], True))
            if hinge > 0:
                loss += hinge
                dtheta -= y
                g = y * 2.0 * (x[i] - x[j])
                dx[i] += g
                dx[j] -= g
    return loss / pairs, dx / pairs, dtheta / pairs


def _triplets_semihard(dist, labels):
    """(a, p, n) per ordered positive pair, TensorFlow triplet_semihard_loss semantics."""
    n = len(labels)
    out = []
    for a in range(n):
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [k for k in negatives if dist[a, k] > dist[a, p]]
            if farther:
                chosen = min(farther, key=lambda k: (dist[a, k], k))
            else:
                chosen = max(negatives, key=lambda k: (dist[a, k], -k))
            out.append((a, p, chosen))
    return out


def _triplets_hard(dist, labels):
    n = len(labels)
    out = []
    for a in range(n):
        positives = [k for k in range(n) if k != a and labels[k] == labels[a]]
        negatives = [k for k in range(n) if labels[k] != labels[a]]
        if positives and negatives:
            p = max(positives, key=lambda k: (dist[a, k], -k))
            q = min(negatives, key=lambda k: (dist[a, k], k))
            out.append((a, p, q))
    return out


def _triplets_all(dist, labels):
    n = len(labels)
    return [
        (a, p, q)
        for a in range(n)
        for p in range(n)
        if p != a and labels[p] == labels[a]
        for q in range(n)
        if labels[q] != labels[a]
    ]


TRIPLET_MINERS = {"semihard": _triplets_semihard, "hard": _triplets_hard, "all": _triplets_all}


def triplet_loss(x, labels, margin=0.2, mining="semihard", squared=True):
    n = x.shape[0]
    dist = np.array([[_pair_distance(x[i], x[j], squared) for j in range(n)] for i in range(n)])
    triplets = TRIPLET_MINERS[mining](dist, np.asarray(labels))
    dx = np.zeros_like(x)
    if not triplets:
        return 0.0, dx
    loss = 0.0
    for a, p, q in triplets:
        hinge = dist[a, p] - dist[a, q] + margin
        if hinge <= 0:
            continue
        loss += hinge
        gap = _distance_grad(x[a], x[p], dist[a, p], squared)
        gan = _distance_grad(x[a], x[q], dist[a, q], squared)
        dx[a] += gap - gan
        dx[p] -= gap
        dx[q] += gan
    return loss / len(triplets), dx / len(triplets)


def triplet_loss_explicit(anchor, positive, negative, margin=1.0):
    n = anchor.shape[0]
    loss = 0.0
    da, dp, dn = (np.zeros_like(anchor) for _ in range(3))
    for i in range(n):
        hinge = margin + _pair_distance(anchor[i], positive[i], True) - _pair_distance(anchor[i], negative[i], True)
        if hinge > 0:
            loss += hinge
            da[i] = 2 * (negative[i] - positive[i])
            dp[i] = 2 * (positive[i] - anchor[i])
            dn[i] = 2 * (anchor[i] - negative[i])
    scale = 1.0 / (2 * n)
    return loss * scale, da * scale, dp * scale, dn * scale
