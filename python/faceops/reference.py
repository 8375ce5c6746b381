"""Plain NumPy references of every faceops op, written straight from the
formulas (explicit pair and triplet enumeration, direct differences, no
tiling), for tests and benchmarks.  They return what the ops return."""

import numpy as np


def _pair_distance(xi, xj, squared):
    s = float(np.sum((xi - xj) ** 2))
    return s if squared else np.sqrt(s)


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


def _distances_from(x, i, squared):
    """Distances from row i to every row, from direct differences."""
    squared_distance = np.sum((x - x[i]) ** 2, axis=1)
    return squared_distance if squared else np.sqrt(squared_distance)


def _distance_grads(xi, rows, distances, squared):
    """d(distance)/d(x_i) for each row; the non-squared gradient is 0 at distance 0."""
    if squared:
        return 2.0 * (xi - rows)
    scale = np.divide(1.0, distances, out=np.zeros_like(distances), where=distances > 0)
    return (xi - rows) * scale[:, None]


def pair_loss(x, labels, theta):
    n = x.shape[0]
    pairs = n * n - n
    loss, dtheta, dx = 0.0, 0.0, np.zeros_like(x)
    if pairs == 0:
        return 0.0, dx, 0.0
    for i in range(n):
        y = np.where(labels == labels[i], 1.0, -1.0)
        hinge = 1.0 - y * (theta - _distances_from(x, i, True))
        active = (hinge > 0) & (np.arange(n) != i)
        loss += float(hinge[active].sum())
        dtheta -= float(y[active].sum())
        # Each ordered pair (i, j) moves x_i by y * 2 (x_i - x_j) and x_j by the opposite.
        g = (y * active)[:, None] * 2.0 * (x[i] - x)
        dx[i] += g.sum(axis=0)
        dx -= g
    return loss / pairs, dx / pairs, dtheta / pairs


def _selected_triplets(mining, d_ap, d_an):
    """How many times each (positive, negative) pair of one anchor is a triplet."""
    selected = np.zeros((len(d_ap), len(d_an)))
    if mining == "semihard":
        for k in range(len(d_ap)):
            farther = np.flatnonzero(d_an > d_ap[k])
            # argmin/argmax return the first (lowest-index) extremum.
            q = farther[np.argmin(d_an[farther])] if len(farther) else np.argmax(d_an)
            selected[k, q] += 1
    elif mining == "hard":
        selected[np.argmax(d_ap), np.argmin(d_an)] = 1
    else:
        selected[:] = 1
    return selected


def triplet_loss(x, labels, margin=0.2, mining="semihard", squared=True):
    labels = np.asarray(labels)
    n = x.shape[0]
    dx = np.zeros_like(x)
    loss, count = 0.0, 0.0
    for a in range(n):
        positives = np.flatnonzero((labels == labels[a]) & (np.arange(n) != a))
        negatives = np.flatnonzero(labels != labels[a])
        if len(positives) == 0 or len(negatives) == 0:
            continue
        distances = _distances_from(x, a, squared)
        d_ap, d_an = distances[positives], distances[negatives]
        selected = _selected_triplets(mining, d_ap, d_an)
        hinge = d_ap[:, None] - d_an[None, :] + margin
        active = selected * (hinge > 0)
        count += selected.sum()
        loss += float((active * hinge).sum())
        g_ap = _distance_grads(x[a], x[positives], d_ap, squared) * active.sum(axis=1)[:, None]
        g_an = _distance_grads(x[a], x[negatives], d_an, squared) * active.sum(axis=0)[:, None]
        dx[a] += g_ap.sum(axis=0) - g_an.sum(axis=0)
        dx[positives] -= g_ap
        dx[negatives] += g_an
    if count == 0:
        return 0.0, dx
    return loss / count, dx / count


def _own_copies(self_index, n):
    return np.full(n, -1) if self_index is None else np.asarray(self_index)


def triplet_loss_ref(x, labels, ref, ref_labels, margin=0.2, mining="semihard", squared=True, self_index=None):
    """Anchors: rows of x; candidates: rows of ref less each anchor's own copy."""
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    own = _own_copies(self_index, len(labels))
    m = ref.shape[0]
    dx, dref = np.zeros_like(x), np.zeros_like(ref)
    loss, count = 0.0, 0.0
    for a in range(x.shape[0]):
        candidate = np.arange(m) != own[a]
        positives = np.flatnonzero((ref_labels == labels[a]) & candidate)
        negatives = np.flatnonzero((ref_labels != labels[a]) & candidate)
        if len(positives) == 0 or len(negatives) == 0:
            continue
        squared_distance = np.sum((ref - x[a]) ** 2, axis=1)
        distances = squared_distance if squared else np.sqrt(squared_distance)
        d_ap, d_an = distances[positives], distances[negatives]
        selected = _selected_triplets(mining, d_ap, d_an)
        hinge = d_ap[:, None] - d_an[None, :] + margin
        active = selected * (hinge > 0)
        count += selected.sum()
        loss += float((active * hinge).sum())
        g_ap = _distance_grads(x[a], ref[positives], d_ap, squared) * active.sum(axis=1)[:, None]
        g_an = _distance_grads(x[a], ref[negatives], d_an, squared) * active.sum(axis=0)[:, None]
        dx[a] += g_ap.sum(axis=0) - g_an.sum(axis=0)
        dref[positives] -= g_ap
        dref[negatives] += g_an
    if count == 0:
        return 0.0, 0.0, dx, dref
    return loss / count, float(count), dx / count, dref / count


def pair_loss_ref(x, labels, ref, ref_labels, theta, self_index=None):
    """The ordered pairs (x_i, ref_j), j not x_i's own copy."""
    labels, ref_labels = np.asarray(labels), np.asarray(ref_labels)
    own = _own_copies(self_index, len(labels))
    m = ref.shape[0]
    pairs = x.shape[0] * m - int(np.sum(own >= 0))
    loss, dtheta, dx, dref = 0.0, 0.0, np.zeros_like(x), np.zeros_like(ref)
    if pairs == 0:
        return 0.0, 0.0, dx, dref, 0.0
    for i in range(x.shape[0]):
        y = np.where(ref_labels == labels[i], 1.0, -1.0)
        hinge = 1.0 - y * (theta - np.sum((ref - x[i]) ** 2, axis=1))
        active = (hinge > 0) & (np.arange(m) != own[i])
        loss += float(hinge[active].sum())
        dtheta -= float(y[active].sum())
        g = (y * active)[:, None] * 2.0 * (x[i] - ref)
        dx[i] += g.sum(axis=0)
        dref -= g
    return loss / pairs, float(pairs), dx / pairs, dref / pairs, dtheta / pairs


def triplet_loss_explicit(anchor, positive, negative, margin=1.0):
    n = anchor.shape[0]
    loss = 0.0
    da, dp, dn = (np.zeros_like(anchor) for _ in range(3))
    for i in range(n):
        positive_distance = _pair_distance(anchor[i], positive[i], True)
        negative_distance = _pair_distance(anchor[i], negative[i], True)
        if np.isinf(positive_distance) and np.isinf(negative_distance):  # inf - inf: no sign, no value
            loss, da[i], dp[i], dn[i] = np.nan, np.nan, np.nan, np.nan
            continue
        hinge = margin + positive_distance - negative_distance
        if hinge > 0:
            loss += hinge
            da[i] = 2 * (negative[i] - positive[i])
            dp[i] = 2 * (positive[i] - anchor[i])
            dn[i] = 2 * (anchor[i] - negative[i])
    scale = 1.0 / (2 * n)
    return loss * scale, da * scale, dp * scale, dn * scale


def _normalize(rows):
    # Each row scaled by the power of two of its largest entry (exact), so that the sum of
    # squares cannot overflow where the norm does not (entries near 1e154 in float64).
    _, exponents = np.frexp(np.max(np.abs(rows), axis=1, initial=0.0))
    scaled = np.ldexp(rows, -exponents[:, None])
    norms = np.ldexp(np.sqrt(np.sum(scaled**2, axis=1)), exponents)
    return rows / np.maximum(norms, 1e-12)[:, None], norms


def _normalize_backward(normalized, norms, grad):
    projected = (grad - normalized * np.sum(normalized * grad, axis=1, keepdims=True)) / np.maximum(norms, 1e-12)[:, None]
    return np.where((norms > 1e-12)[:, None], projected, grad / 1e-12)


def margin_sin_floor(dtype=np.float64):
    """The floor on sin(theta) in dpsi/dc (csrc/faceops/margin_softmax.h): sqrt(epsilon)."""
    return float(np.sqrt(np.finfo(dtype).eps))


def margin_target(c, m1, m2, m3):
    """psi(c) and dpsi/dc of csrc/faceops/margin_softmax.h, elementwise (float64's floor)."""
    c = np.clip(np.asarray(c, dtype=np.float64), -1.0, 1.0)
    if m1 == 1.0 and m2 == 0.0:
        return c - m3, np.ones_like(c)
    theta = np.arccos(c)
    angle = m1 * theta + m2
    k = np.floor(angle / np.pi)
    sign = np.where(k % 2 == 0, 1.0, -1.0)
    sin_theta = np.maximum(np.sqrt(1.0 - c * c), margin_sin_floor())
    return sign * np.cos(angle) - 2.0 * k - m3, sign * m1 * np.sin(angle) / sin_theta


def margin_softmax_loss(x, labels, weight, s=64.0, m1=1.0, m2=0.5, m3=0.0):
    """The combined-margin softmax with a dense N x C logit matrix."""
    n = x.shape[0]
    rows = np.arange(n)
    x_hat, x_norm = _normalize(x)
    w_hat, w_norm = _normalize(weight)
    cosine = x_hat @ w_hat.T
    psi, dpsi = margin_target(cosine[rows, labels], m1, m2, m3)
    logits = s * cosine
    logits[rows, labels] = s * psi
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_sum_exp = np.log(np.exp(shifted).sum(axis=1)) + logits.max(axis=1)
    loss = float(np.mean(log_sum_exp - logits[rows, labels]))
    grad = np.exp(logits - log_sum_exp[:, None])
    grad[rows, labels] -= 1.0
    grad *= s / n
    grad[rows, labels] *= dpsi
    dx = _normalize_backward(x_hat, x_norm, grad @ w_hat)
    dweight = _normalize_backward(w_hat, w_norm, grad.T @ x_hat)
    return loss, dx, dweight
