"""The faceops ops: NumPy arrays run the CPU kernels, CuPy arrays the CUDA
kernels.  Each returns the loss as a Python float and the gradients of that
loss (scale 1), arrays of the inputs' kind, dtype and device."""

import numpy as np

from faceops import _arrays, _core, _params

MINING_MODES = {"semihard": 0, "hard": 1, "all": 2}


def _loss_buffer(xp, dtype):
    return xp.empty((1,), dtype=dtype)


def _call(kernel, device, dtype, *args, xp):
    kernel(np.dtype(dtype).name, device, *args, _arrays.current_stream(xp))


def center_loss(x, labels, centers, center_grad="dense"):
    """Center loss (Wen et al., ECCV 2016, eq. 2): L = 1/(2N) sum_i ||x_i - c_{y_i}||^2.

    x (N, D), labels (N,) in [0, C), centers (C, D).  Returns (loss, dx, dcenters) where
    dcenters depends on `center_grad`:
      "dense": a (C, D) array, zero outside the batch's classes (allocating and
               zeroing it costs O(C D) in the array library, the kernel only O(N D));
      "rows":  (classes, rows): the batch's distinct classes (K,) and their gradient
               rows (K, D), so that time and memory are O(N D) whatever C;
      None:    no center gradient (e.g. when the centers move by center_update).
    """
    if center_grad is not None and not (isinstance(center_grad, str) and center_grad in ("dense", "rows")):
        raise ValueError(f"center_grad: expected 'dense', 'rows' or None, got {center_grad!r}")
    device, xp, labels, n, d, num_classes = _check_center_inputs(x, labels, centers)
    classes = None
    if center_grad == "rows":
        # The same kernel on the batch's own classes: labels renumbered 0..K-1.
        if xp is np:
            _arrays.check_labels_in_range_cpu("labels", labels, num_classes)
        classes, labels = xp.unique(labels, return_inverse=True)
        labels = xp.ascontiguousarray(labels.reshape(-1).astype(xp.int64))
        centers = xp.ascontiguousarray(centers[classes])
        num_classes = len(classes)
    loss = _loss_buffer(xp, x.dtype)
    dx = xp.empty_like(x)
    dcenters = None if center_grad is None else xp.zeros(centers.shape, dtype=centers.dtype)
    _call(_core.center_loss, device, x.dtype, _arrays.address(x), _arrays.address(labels),
          _arrays.address(centers), n, d, num_classes, _arrays.address(loss), _arrays.address(dx),
          _arrays.address(dcenters), xp=xp)
    return float(loss[0]), dx, (classes, dcenters) if center_grad == "rows" else dcenters


def center_update_direction(x, labels, centers):
    """Wen et al. eq. 4 direction delta_j = sum_{i: y_i=j} (c_j - x_i) / (1 + n_j), (C, D),
    zero for classes absent from the batch (what Caffe's CenterLoss puts in the centers' diff)."""
    device, xp, labels, n, d, num_classes = _check_center_inputs(x, labels, centers)
    direction = xp.zeros(centers.shape, dtype=centers.dtype)
    _call(_core.center_update_direction, device, x.dtype, _arrays.address(x), _arrays.address(labels),
          _arrays.address(centers), n, d, num_classes, _arrays.address(direction), xp=xp)
    return direction


def center_update(x, labels, centers, alpha):
    """In place, Wen et al. eq. 4: c_j <- c_j - alpha * delta_j; absent classes untouched."""
    device, xp, labels, n, d, num_classes = _check_center_inputs(x, labels, centers)
    _arrays.check_writeable("centers", centers, x=x, labels=labels)
    alpha = _params.center_alpha(alpha, x.dtype)
    _call(_core.center_update, device, x.dtype, _arrays.address(x), _arrays.address(labels),
          _arrays.address(centers), n, d, num_classes, alpha, xp=xp)


def triplet_loss(x, labels, margin=0.2, mining="semihard", squared=True):
    """Triplet loss with in-batch mining ("semihard", "hard" or "all"); see
    csrc/faceops/triplet_loss.h for the exact definitions.  Returns (loss, dx)."""
    device, xp = _arrays.device_of(x=x, labels=labels)
    n, d = _arrays.check_matrix("x", x)
    labels = _arrays.check_labels("labels", labels, n, xp)
    mining = _params.choice("mining", mining, MINING_MODES)
    margin = _params.hinge_margin(margin, x.dtype)
    squared = _params.flag("squared", squared)
    checks = _arrays.device_checks(xp)
    checks.finite("x", x)
    checks.run()
    loss = _loss_buffer(xp, x.dtype)
    dx = xp.empty_like(x)
    _call(_core.triplet_loss, device, x.dtype, _arrays.address(x), _arrays.address(labels), n, d,
          margin, MINING_MODES[mining], squared, _arrays.address(loss), _arrays.address(dx),
          xp=xp)
    return float(loss[0]), dx


def triplet_loss_ref(x, labels, ref, ref_labels, margin=0.2, mining="semihard", squared=True, self_index=None):
    """Triplet loss against a reference set (pytorch-metric-learning's ``ref_emb``): anchors are
    the rows of x (N, D) with ``labels``, positives and negatives the rows of ref (M, D) with
    ``ref_labels`` only (x's own rows are no candidates).  ``self_index`` (N,) integers, optional:
    self_index[i] is the row of ref that is x[i]'s own copy (e.g. after an all-gather), or -1; that
    row is neither a positive nor a negative of anchor i (it must carry labels[i], and no two anchors
    may name one row), and stays a candidate of the other anchors.  Mining and ties as
    triplet_loss, indices being ref rows; see csrc/faceops/triplet_loss.h.

    Returns (loss, count, dx, dref): the mean over this call's terms (semihard: (anchor, positive)
    pairs whose anchor has a negative; hard: anchors with a positive and a negative; all: valid
    triplets), their number as a float (0: loss 0, zero gradients), so that calls over chunks of a
    batch combine as sum(count_k * loss_k) / sum(count_k), and the gradients of the mean.
    """
    device, xp, labels, ref_labels, self_index, n, d, m = _check_reference_inputs(x, labels, ref, ref_labels,
                                                                                  self_index)
    mining = _params.choice("mining", mining, MINING_MODES)
    margin = _params.hinge_margin(margin, x.dtype)
    squared = _params.flag("squared", squared)
    out = xp.empty((2,), dtype=x.dtype)  # loss, count
    dx, dref = xp.empty_like(x), xp.empty_like(ref)
    _call(_core.triplet_loss_ref, device, x.dtype, _arrays.address(x), _arrays.address(labels), n, d,
          _arrays.address(ref), _arrays.address(ref_labels), m, _arrays.address(self_index), margin,
          MINING_MODES[mining], squared, _arrays.address(out), _arrays.address(out) + out.itemsize,
          _arrays.address(dx), _arrays.address(dref), xp=xp)
    loss, count = (float(v) for v in out.tolist())
    return loss, count, dx, dref


def pair_loss_ref(x, labels, ref, ref_labels, theta, self_index=None):
    """The Multibatch pair loss against a reference set: the ordered pairs (x_i, ref_j) less each
    anchor's own copy (``self_index`` as in triplet_loss_ref),
    L = 1/(N M - c) sum_{i, j != self_index[i]} max(0, 1 - y_ij (theta - ||x_i - ref_j||^2)), c the
    number of anchors with an own copy.  Returns (loss, count, dx, dref, dtheta); count = N M - c,
    so that chunks of a batch (ref = the batch, self_index = the chunk's rows) combine as
    sum(count_k * loss_k) / sum(count_k) into pair_loss's 1/(N^2 - N) mean.

    contrastive_loss takes explicit pairs (a_i, b_i, similar_i), so a reference set does not apply
    to it: pass the pairs you want, rows of a reference set among them."""
    device, xp, labels, ref_labels, self_index, n, d, m = _check_reference_inputs(x, labels, ref, ref_labels,
                                                                                  self_index)
    theta = _params.real("theta", theta, x.dtype)
    scalars = xp.array([theta, 0, 0, 0], dtype=x.dtype)  # theta in (by address); loss, count, dtheta out
    theta_address, loss_address, count_address, dtheta_address = _arrays.element_addresses(scalars)
    dx, dref = xp.empty_like(x), xp.empty_like(ref)
    _call(_core.pair_loss_ref, device, x.dtype, _arrays.address(x), _arrays.address(labels), n, d,
          _arrays.address(ref), _arrays.address(ref_labels), m, _arrays.address(self_index), theta_address,
          loss_address, count_address, _arrays.address(dx), _arrays.address(dref), dtheta_address, xp=xp)
    _, loss, count, dtheta = (float(v) for v in scalars.tolist())
    return loss, count, dx, dref, dtheta


def _check_reference_inputs(x, labels, ref, ref_labels, self_index):
    arrays = dict(x=x, labels=labels, ref=ref, ref_labels=ref_labels)
    if self_index is not None:
        arrays["self_index"] = self_index
    device, xp = _arrays.device_of(**arrays)
    n, d = _arrays.check_matrix("x", x)
    m, _ = _arrays.check_matrix("ref", ref, dtype=x.dtype, cols=d)
    labels = _arrays.check_labels("labels", labels, n, xp)
    ref_labels = _arrays.check_labels("ref_labels", ref_labels, m, xp)
    checks = _arrays.device_checks(xp)
    if self_index is not None:
        self_index = _arrays.check_labels("self_index", self_index, n, xp)
        if xp is not np:  # the CPU core checks self_index itself
            _queue_self_index_checks(checks, self_index, labels, ref_labels, m, xp)
    checks.finite("x", x)
    checks.finite("ref", ref)
    checks.run()
    return device, xp, labels, ref_labels, self_index, n, d, m


def _queue_self_index_checks(checks, self_index, labels, ref_labels, m, xp):
    """check_self_index of csrc/checks.h, for the CUDA kernels (which rely on it), queued on
    ``checks``: rows are clipped into ref so that the later checks index safely even when the
    range check fails (it is queued first, so its message is the one raised)."""
    checks.in_range("self_index", self_index, -1, m, f"entries must be -1 (no own copy) or a row of ref, "
                    f"0 <= entry < {m}")
    owned = self_index >= 0
    rows = self_index.clip(0, m - 1)
    checks.holds(~(owned & (ref_labels[rows] != labels)).any(),
                 "self_index: an anchor's own copy has another label than the anchor; an own copy carries "
                 "its anchor's label")
    # Owned rows as keys, a distinct negative key for each anchor without one: sorted, no two adjacent equal.
    keys = xp.sort(xp.where(owned, self_index, -1 - xp.arange(len(self_index))))
    checks.holds((keys[1:] != keys[:-1]).all(),
                 "self_index: two anchors name the same ref row as their own copy; a ref row is at most one "
                 "anchor's copy")


def triplet_loss_explicit(anchor, positive, negative, margin=1.0):
    """L = 1/(2N) sum_i max(0, margin + ||a_i - p_i||^2 - ||a_i - n_i||^2) (the three-bottom
    TripletLoss of happynear's caffe-windows).  Returns (loss, da, dp, dn)."""
    device, xp = _arrays.device_of(anchor=anchor, positive=positive, negative=negative)
    n, d = _arrays.check_matrix("anchor", anchor)
    _arrays.check_matrix("positive", positive, dtype=anchor.dtype, rows=n, cols=d)
    _arrays.check_matrix("negative", negative, dtype=anchor.dtype, rows=n, cols=d)
    margin = _params.hinge_margin(margin, anchor.dtype)
    checks = _arrays.device_checks(xp)
    for name, array in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        checks.finite(name, array)
    checks.run()
    loss = _loss_buffer(xp, anchor.dtype)
    grads = [xp.empty_like(anchor) for _ in range(3)]
    _call(_core.triplet_loss_explicit, device, anchor.dtype, _arrays.address(anchor),
          _arrays.address(positive), _arrays.address(negative), n, d, margin,
          _arrays.address(loss), *map(_arrays.address, grads), xp=xp)
    return (float(loss[0]), *grads)


def pair_loss(x, labels, theta):
    """Multibatch pair loss (Tadmor et al., NIPS 2016):
    L = 1/(N^2 - N) sum_{i != j} max(0, 1 - y_ij (theta - ||x_i - x_j||^2)).
    Returns (loss, dx, dtheta) with dtheta a Python float."""
    device, xp = _arrays.device_of(x=x, labels=labels)
    n, d = _arrays.check_matrix("x", x)
    labels = _arrays.check_labels("labels", labels, n, xp)
    theta = _params.real("theta", theta, x.dtype)
    checks = _arrays.device_checks(xp)
    checks.finite("x", x)
    checks.run()
    scalars = xp.array([theta, 0, 0], dtype=x.dtype)  # theta in (by address); loss, dtheta out
    theta_address, loss_address, dtheta_address = _arrays.element_addresses(scalars)
    dx = xp.empty_like(x)
    _call(_core.pair_loss, device, x.dtype, _arrays.address(x), _arrays.address(labels), n, d, theta_address,
          loss_address, _arrays.address(dx), dtheta_address, xp=xp)
    _, loss, dtheta = (float(v) for v in scalars.tolist())
    return loss, dx, dtheta


def contrastive_loss(a, b, similar, margin=1.0, legacy=False):
    """BVLC Caffe's ContrastiveLoss: L = 1/(2N) sum_i [s_i d_i^2 + (1 - s_i) max(margin - d_i, 0)^2],
    d_i = ||a_i - b_i||; legacy uses max(margin - d_i^2, 0).  similar: (N,) bool or integer,
    non-zero = similar.  Returns (loss, da, db)."""
    device, xp = _arrays.device_of(a=a, b=b, similar=similar)
    n, d = _arrays.check_matrix("a", a)
    _arrays.check_matrix("b", b, dtype=a.dtype, rows=n, cols=d)
    if similar.dtype == np.bool_:
        similar = similar.astype(xp.int64)
    similar = _arrays.check_labels("similar", similar, n, xp)
    margin = _params.hinge_margin(margin, a.dtype)
    legacy = _params.flag("legacy", legacy)
    checks = _arrays.device_checks(xp)
    checks.finite("a", a)
    checks.finite("b", b)
    checks.run()
    loss = _loss_buffer(xp, a.dtype)
    da, db = xp.empty_like(a), xp.empty_like(b)
    _call(_core.contrastive_loss, device, a.dtype, _arrays.address(a), _arrays.address(b),
          _arrays.address(similar), n, d, margin, legacy, _arrays.address(loss),
          _arrays.address(da), _arrays.address(db), xp=xp)
    return float(loss[0]), da, db


# (m1, m2, m3) of the combined margin psi(c) = cos(m1 theta + m2) - m3.
MARGINS = {
    "arcface": (1.0, 0.5, 0.0),  # Deng et al., CVPR 2019
    "cosface": (1.0, 0.0, 0.35),  # Wang et al., CVPR 2018 (AM-softmax)
    "sphereface": (4.0, 0.0, 0.0),  # Liu et al., CVPR 2017, with its monotonic extension
    "combined": (1.0, 0.3, 0.2),  # insightface's combined margin
    "normface": (1.0, 0.0, 0.0),  # normalised softmax, no margin (Wang et al., 2017)
}


def margin_softmax_loss(x, labels, weight, s=64.0, m1=1.0, m2=0.5, m3=0.0, sample_rate=1.0, rng=None,
                        weight_grad=True):
    """Combined-margin softmax (ArcFace/CosFace/SphereFace, insightface's form): cosines between
    the L2-normalised rows of x (N, D) and of weight (C, D), target logit s * psi(cos) with
    psi = cos(m1 theta + m2) - m3 (continued monotonically past m1 theta + m2 = pi, see
    csrc/faceops/margin_softmax.h), other logits s * cos; the loss is the mean cross-entropy.
    Logits are computed in class blocks and never held as an N x C matrix.

    sample_rate < 1 is Partial FC's class-centre sampling (An et al., 2022): the softmax runs over
    the batch's classes plus a uniform random subset of the others, max(#positives,
    round(sample_rate * C)) classes in all, drawn with ``rng`` (a Generator of x's array library,
    or a seed).  Returns (loss, dx, dweight): dweight is the dense (C, D) gradient when
    sample_rate == 1, else (classes, rows), the sampled class indices (K,) sorted and their
    gradient rows (K, D) (other rows' gradient is zero); None when ``weight_grad`` is False.
    """
    device, xp = _arrays.device_of(x=x, labels=labels, weight=weight)
    n, d = _arrays.check_matrix("x", x)
    num_classes, _ = _arrays.check_matrix("weight", weight, dtype=x.dtype, cols=d, classes=True)
    labels = _arrays.check_labels("labels", labels, n, xp)
    s = _params.scale(s, x.dtype)
    m1, m2, m3 = _params.margins(m1, m2, m3, x.dtype)
    sample_rate = _params.sample_rate(sample_rate, x.dtype)
    rng = _params.generator("rng", rng)
    weight_grad = _params.flag("weight_grad", weight_grad)
    checks = _arrays.device_checks(xp)
    checks.in_range("labels", labels, 0, num_classes, _label_range_expected(num_classes))
    checks.finite("x", x)
    checks.finite("weight", weight)
    checks.run()
    classes = None
    if sample_rate < 1:
        if xp is np:
            _arrays.check_labels_in_range_cpu("labels", labels, num_classes)
        classes = _sample_classes(labels, num_classes, sample_rate, rng, xp)
        labels = xp.ascontiguousarray(xp.searchsorted(classes, labels).astype(xp.int64))
        weight = xp.ascontiguousarray(weight[classes])
        num_classes = len(classes)
    loss = _loss_buffer(xp, x.dtype)
    dx = xp.empty_like(x)
    dweight = xp.empty_like(weight) if weight_grad else None
    _call(_core.margin_softmax_loss, device, x.dtype, _arrays.address(x), _arrays.address(labels),
          _arrays.address(weight), n, d, num_classes, s, m1, m2, m3, _arrays.address(loss),
          _arrays.address(dx), _arrays.address(dweight), xp=xp)
    if classes is not None and weight_grad:
        dweight = (classes, dweight)
    return float(loss[0]), dx, dweight


def target_margin_forward(cosine, labels, m1=1.0, m2=0.5, m3=0.0):
    """The margin alone on an (N, C) cosine matrix (the legacy Caffe layers' form): a copy with
    entry (i, labels[i]) replaced by psi of it."""
    device, xp, labels, n, num_classes, margin = _check_target_margin(cosine, labels, m1, m2, m3)
    out = xp.empty_like(cosine)
    _call(_core.target_margin_forward, device, cosine.dtype, _arrays.address(cosine), _arrays.address(labels), n,
          num_classes, *margin, _arrays.address(out), xp=xp)
    return out


def target_margin_backward(cosine, labels, d_out, m1=1.0, m2=0.5, m3=0.0):
    """d_cosine = d_out, with entry (i, labels[i]) multiplied by dpsi/dc at cosine."""
    device, xp, labels, n, num_classes, margin = _check_target_margin(cosine, labels, m1, m2, m3, d_out)
    d_cosine = xp.empty_like(cosine)
    _call(_core.target_margin_backward, device, cosine.dtype, _arrays.address(cosine), _arrays.address(labels),
          _arrays.address(d_out), n, num_classes, *margin, _arrays.address(d_cosine), xp=xp)
    return d_cosine


def _check_target_margin(cosine, labels, m1, m2, m3, d_out=None):
    arrays = dict(cosine=cosine, labels=labels) if d_out is None else dict(cosine=cosine, labels=labels, d_out=d_out)
    device, xp = _arrays.device_of(**arrays)
    n, num_classes = _arrays.check_matrix("cosine", cosine)
    if d_out is not None:
        _arrays.check_matrix("d_out", d_out, dtype=cosine.dtype, rows=n, cols=num_classes)
    labels = _arrays.check_labels("labels", labels, n, xp)
    margin = _params.margins(m1, m2, m3, cosine.dtype)
    checks = _arrays.device_checks(xp)
    checks.in_range("labels", labels, 0, num_classes, _label_range_expected(num_classes))
    checks.finite("cosine", cosine)
    if d_out is not None:
        checks.finite("d_out", d_out)
    checks.run()
    return device, xp, labels, n, num_classes, margin


def _check_center_inputs(x, labels, centers):
    device, xp = _arrays.device_of(x=x, labels=labels, centers=centers)
    n, d = _arrays.check_matrix("x", x)
    num_classes, _ = _arrays.check_matrix("centers", centers, dtype=x.dtype, cols=d, classes=True)
    labels = _arrays.check_labels("labels", labels, n, xp)
    checks = _arrays.device_checks(xp)
    checks.in_range("labels", labels, 0, num_classes, _label_range_expected(num_classes))
    checks.finite("x", x)
    if xp is not np:  # the rows the batch reads, clipped: an out-of-range label fails the check above first
        checks.finite("centers", centers[labels.clip(0, num_classes - 1)])
    checks.run()
    return device, xp, labels, n, d, num_classes


def _label_range_expected(num_classes):
    return f"labels must satisfy 0 <= label < {num_classes}"


def _sample_classes(labels, num_classes, sample_rate, rng, xp):
    """Partial FC's sample: every positive class, then the others in random order, up to
    max(#positives, round(sample_rate * C)) classes; returned sorted, as int64."""
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = xp.random.default_rng(rng)
    positives = xp.unique(labels)
    count = max(len(positives), int(round(sample_rate * num_classes)))
    scores = rng.random(num_classes)
    scores[positives] = 2.0  # above every uniform draw: positives are always kept
    chosen = xp.argpartition(-scores, count - 1)[:count]
    return xp.sort(chosen).astype(xp.int64)

