"""Functional forms of the faceops losses on torch tensors: each returns the loss
as a 0-d tensor on the input's device, differentiable by autograd through the
faceops:: ops.  ``check=True`` (the default) checks device values (NaN/Inf,
label ranges) on demand; see docs/torch.md.

Hyperparameters are checked with faceops._params (real numbers only, flags only
bools, checked after the cast to the op's dtype), here in eager mode and again
inside the op, so a bad value also fails under torch.compile.
"""

import functools

import torch
import torch.nn.functional as F

from faceops import _params
from faceops.ops import MARGINS, MINING_MODES
from faceops.torch import _boundary, _library


_FLAGS = ("squared", "legacy", "check", "sparse_grad")


def _eager_checks(**values):
    """Type checks of Python hyperparameters before the schema's own coercions
    (which take True for 1.0, a tensor for a float and 1 for True).  A Python float
    or bool (flag) passes as it is, and an int once it fits a float64 (the schema's
    float): the op checks its value after the cast to its dtype.  While torch.compile
    traces, the numbers are left to the op, which checks them at run time (numpy's
    casts do not trace); flags and the mining mode are checked here in either case."""
    compiling = torch.compiler.is_compiling()
    for name, value in values.items():
        if name in _FLAGS:
            if type(value) is not bool:
                _params.flag(name, value)
        elif name == "mining":
            _params.choice(name, value, MINING_MODES)
        elif type(value) is not float and not compiling:
            _params.real(name, value)


def _sample_rate(sample_rate):
    """_params.sample_rate, or while torch.compile traces (numpy's casts do not trace) its
    range on the Python number: the rate reaches no op that could check it at run time."""
    if not torch.compiler.is_compiling():
        return _params.sample_rate(sample_rate)
    if type(sample_rate) not in (int, float) or not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate: expected 0 < sample_rate <= 1, got {sample_rate!r}")
    return sample_rate


def center_loss(x, labels, centers, *, check=True):
    """Center loss (Wen et al., ECCV 2016, eq. 2): 1/(2N) sum_i ||x_i - c_{y_i}||^2.
    centers (C, D) get a gradient (zero outside the batch's classes) when they require one."""
    _eager_checks(check=check)
    _boundary.require_tensors(centers=centers)
    centers_grad = torch.is_grad_enabled() and centers.requires_grad
    return _library.call(_library.center_loss, x, labels, centers, centers_grad, check)[0]


def center_update_direction(x, labels, centers, *, check=True):
    """Wen et al. eq. 4's delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j), (C, D)."""
    _eager_checks(check=check)
    _boundary.require_tensors(x=x, centers=centers)
    return _library.call(_library.center_update_direction, x.detach(), labels, centers.detach(), check)


def center_update_(x, labels, centers, alpha, *, check=True):
    """In place, Wen et al. eq. 4: c_j <- c_j - alpha * delta_j (no gradient flows)."""
    _eager_checks(alpha=alpha, check=check)
    _boundary.require_tensors(x=x, centers=centers)
    with torch.no_grad():
        _library.call(_library.center_update, x.detach(), labels, centers, alpha, check)


def triplet_loss(x, labels, margin=0.2, mining="semihard", squared=True, *, ref=None, ref_labels=None,
                 self_index=None, check=True):
    """Triplet loss with in-batch mining: "semihard" (FaceNet / TensorFlow semantics),
    "hard" (batch-hard) or "all" (batch-all); csrc/faceops/triplet_loss.h has the definitions.

    With a reference set ``ref`` (M, D) and ``ref_labels`` (M,), the anchors are the rows of x
    and their positives and negatives the rows of ref only (pytorch-metric-learning's
    ``ref_emb``); ``self_index`` (N,) gives the row of ref that is anchor i's own copy (-1:
    none), which is never its positive.  Gradients reach x and ref."""
    _eager_checks(margin=margin, mining=mining, squared=squared, check=check)
    if ref is None and ref_labels is None and self_index is None:
        return _library.call(_library.triplet_loss, x, labels, margin, mining, squared, check)[0]
    return triplet_loss_terms(x, labels, ref, ref_labels, margin, mining, squared, self_index, check=check)[0]


def triplet_loss_terms(x, labels, ref, ref_labels, margin=0.2, mining="semihard", squared=True, self_index=None, *,
                       check=True):
    """(loss, count) of the reference-set triplet loss: count is the number of terms its mean
    is over (a 0-d tensor, no gradient), so that several calls combine into one mean,
    sum_k count_k loss_k / sum_k count_k (faceops.torch.distributed.GlobalBatchLoss)."""
    _eager_checks(margin=margin, mining=mining, squared=squared, check=check)
    _require_reference(ref, ref_labels)
    _boundary.require_tensors(ref=ref)
    ref_grad = torch.is_grad_enabled() and ref.requires_grad
    loss, count, _, _ = _library.call(_library.triplet_loss_ref, x, labels, ref, ref_labels, self_index, margin,
                                      mining, squared, ref_grad, check)
    return loss, count


def _require_reference(ref, ref_labels):
    if ref is None or ref_labels is None:
        given = "ref_labels without ref" if ref is None and ref_labels is not None else (
            "ref without ref_labels" if ref is not None else "self_index without ref")
        raise ValueError(f"ref, ref_labels: pass both (or neither, with no self_index), got {given}")


def triplet_loss_explicit(anchor, positive, negative, margin=1.0, *, check=True):
    """1/(2N) sum_i max(0, margin + ||a_i - p_i||^2 - ||a_i - n_i||^2)."""
    _eager_checks(margin=margin, check=check)
    return _library.call(_library.triplet_loss_explicit, anchor, positive, negative, margin, check)[0]


def pair_loss(x, labels, theta, *, ref=None, ref_labels=None, self_index=None, check=True):
    """Multibatch pair loss (Tadmor et al., NIPS 2016) with threshold theta, a 0-d tensor
    (learnable) or a number (made a 0-d tensor on x's device, kept for later calls with the same
    float).  The tensor is read by the kernel, never on the host, so a step with PairLoss's
    parameter replays as a CUDA graph.  ``ref``, ``ref_labels`` and ``self_index`` as in
    triplet_loss: the pairs are (row of x, row of ref)."""
    _eager_checks(check=check)
    _boundary.require_tensors(x=x)
    if ref is None and ref_labels is None and self_index is None:
        return _library.call(_library.pair_loss, x, labels, _theta_tensor(theta, x), check)[0]
    return pair_loss_terms(x, labels, ref, ref_labels, theta, self_index, check=check)[0]


def pair_loss_terms(x, labels, ref, ref_labels, theta, self_index=None, *, check=True):
    """(loss, count) of the reference-set pair loss; count as in triplet_loss_terms."""
    _eager_checks(check=check)
    _require_reference(ref, ref_labels)
    _boundary.require_tensors(x=x, ref=ref)
    ref_grad = torch.is_grad_enabled() and ref.requires_grad
    loss, count, _, _, _ = _library.call(_library.pair_loss_ref, x, labels, ref, ref_labels, self_index,
                                         _theta_tensor(theta, x), ref_grad, check)
    return loss, count


def _theta_tensor(theta, x):
    if isinstance(theta, torch.Tensor):
        return theta
    if torch.compiler.is_compiling():  # numpy's checks do not trace; the op checks the value
        return torch.tensor(theta, dtype=x.dtype, device=x.device)
    if type(theta) is float:
        return _constant_theta(theta, x.dtype, x.device)
    return theta_tensor(theta, x.dtype, x.device)


@functools.lru_cache(maxsize=8)
def _constant_theta(theta, dtype, device):
    """theta_tensor of a float, kept: a loop passes the same threshold call after call, and a
    fresh 0-d tensor (and, on CUDA, its copy to the device) costs more than the rest of the
    call's checks; the ops only read it."""
    return theta_tensor(theta, dtype, device)


def theta_tensor(theta, dtype, device=None):
    """A number ``theta`` as a 0-d tensor of ``dtype``, refused where it is not finite there
    (1e39 in float32, 7e4 in float16)."""
    value = torch.tensor(_params.real("theta", theta), dtype=dtype)
    if not torch.isfinite(value):
        raise ValueError(f"theta: expected a finite number, got {theta!r}, which is not finite in {dtype}")
    return value.to(device)


def contrastive_loss(a, b, similar, margin=1.0, legacy=False, *, check=True):
    """BVLC Caffe's ContrastiveLoss on pairs (a_i, b_i): 1/(2N) sum_i [s_i d_i^2 +
    (1 - s_i) max(margin - d_i, 0)^2]; legacy uses max(margin - d_i^2, 0)."""
    _eager_checks(margin=margin, legacy=legacy, check=check)
    return _library.call(_library.contrastive_loss, a, b, similar, margin, legacy, check)[0]


def margin_softmax_loss(x, labels, weight, s=64.0, m1=1.0, m2=0.5, m3=0.0, sample_rate=1.0, *,
                        sparse_grad=False, generator=None, check=True):
    """Combined-margin softmax (insightface's form; ArcFace m2, CosFace m3, SphereFace m1) of
    x (N, D) against class weights (C, D): mean cross-entropy, no N x C matrix.

    sample_rate < 1 is Partial FC: the softmax runs over the classes of sample_classes(),
    and only those rows of weight get a gradient; with sparse_grad=True that gradient is a
    sparse (C, D) tensor holding only them (torch.optim.SparseAdam, or SGD without momentum
    and weight decay, then leave every other row and its optimiser state untouched).
    """
    _eager_checks(s=s, m1=m1, m2=m2, m3=m3, sparse_grad=sparse_grad, check=check)
    sample_rate = _sample_rate(sample_rate)
    if sample_rate >= 1.0 and not sparse_grad:
        return _library.call(_library.margin_softmax_loss, x, labels, weight, s, m1, m2, m3, check)[0]
    device = _boundary.device_of(x=x, labels=labels, weight=weight)
    n, d = _boundary.check_matrix("x", x)
    num_classes, _ = _boundary.check_matrix("weight", weight, dtype=x.dtype, cols=d, classes=True)
    labels = _boundary.check_labels("labels", labels, n)
    classes = sample_classes(labels, num_classes, sample_rate, generator=generator, check=check)
    # index_select's backward is an index_add (no host sync on CUDA, unlike embedding's dense
    # backward); the sparse form is embedding's sparse gradient.
    rows = F.embedding(classes, weight, sparse=True) if sparse_grad else weight.index_select(0, classes)
    sampled_labels = torch.searchsorted(classes, labels)
    return _library.call(_library.margin_softmax_loss, x, sampled_labels, rows, s, m1, m2, m3, check)[0]


def sample_classes(labels, num_classes, sample_rate, generator=None, *, check=True):
    """Partial FC's class sample (An et al., 2022) without host synchronisation: the batch's
    classes plus uniformly drawn others, k = min(C, max(round(sample_rate * C), N)) classes in
    all, returned sorted (int64).  k is known without reading the labels (N bounds the number
    of distinct labels), which keeps it sync-free; faceops.margin_softmax_loss (NumPy) takes
    max(#distinct labels, round(sample_rate * C)), which differs only when that is below N.

    The labels must lie in [0, C): a label the kernels would see only after the renumbering
    (a negative one would pass as class C - 1) is refused here, on the CPU always and on
    CUDA with ``check`` (a device assertion, as for the other device-value checks)."""
    _eager_checks(check=check)
    num_classes = _params.integer("num_classes", num_classes, low=1)
    sample_rate = _sample_rate(sample_rate)
    device = _boundary.device_of(labels=labels)
    labels = _boundary.check_labels("labels", labels, None)
    _boundary.check_values(device, check or device == "cpu", {}, labels=labels, num_classes=num_classes,
                           core_checks_labels=False)
    count = min(num_classes, max(round(sample_rate * num_classes), labels.shape[0]))
    scores = torch.rand(num_classes, device=labels.device, generator=generator)
    scores.index_fill_(0, labels, 2.0)  # above every uniform draw: the batch's classes are kept
    return torch.topk(scores, count, sorted=False).indices.sort().values


def arcface_loss(x, labels, weight, s=64.0, margin=0.5, sample_rate=1.0, **options):
    """ArcFace (Deng et al., CVPR 2019): target logit s cos(theta + margin)."""
    return margin_softmax_loss(x, labels, weight, s, 1.0, margin, 0.0, sample_rate, **options)


def cosface_loss(x, labels, weight, s=64.0, margin=0.35, sample_rate=1.0, **options):
    """CosFace (Wang et al., CVPR 2018): target logit s (cos(theta) - margin)."""
    return margin_softmax_loss(x, labels, weight, s, 1.0, 0.0, margin, sample_rate, **options)


def target_margin(cosine, labels, m1=1.0, m2=0.5, m3=0.0, *, check=True):
    """The margin alone on (N, C) cosines (the legacy Caffe layers' form): a copy with entry
    (i, labels[i]) replaced by psi(c) = cos(m1 theta + m2) - m3; differentiable in cosine."""
    _eager_checks(m1=m1, m2=m2, m3=m3, check=check)
    return _library.call(_library.target_margin_forward, cosine, labels, m1, m2, m3, check)


def resolve_margin(margin):
    """(m1, m2, m3) from a name of faceops.MARGINS or a triple (the ops check them again in
    their dtype)."""
    return _params.margin_triple(margin, MARGINS)
