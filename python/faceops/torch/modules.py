"""nn.Module forms of the faceops losses, called as users of pytorch-metric-learning
(``loss = loss_fn(embeddings, labels)``) and of insightface's margin heads
(``loss = head(embeddings, labels)``) call theirs.  Learnable state (centres, theta,
class weights) is an nn.Parameter, so optimisers, .to(), state_dict and DDP see it.
"""

import functools

import torch
from torch import nn

from faceops import _params
from faceops.torch import _boundary, functional


def _naming_embeddings(method):
    """A module method called with ``embeddings``: the functional forms and the ops name their
    first matrix x, so an error that names x is raised again naming embeddings."""
    @functools.wraps(method)
    def run(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ValueError, TypeError) as error:
            message = str(error)
            if type(error) not in (ValueError, TypeError) or not message.startswith("x: "):
                raise
            renamed = "embeddings: " + message[3:].replace("x.contiguous()", "embeddings.contiguous()")
            raise type(error)(renamed) from None

    return run


def _check_dim(embeddings, dim):
    """Embeddings of another width than a module's parameter are named as the culprit (the ops
    name the second matrix, the parameter)."""
    if isinstance(embeddings, torch.Tensor) and embeddings.dim() == 2 and embeddings.shape[1] != dim:
        raise ValueError(f"embeddings: expected shape (N, {dim}), the module's dim, got {tuple(embeddings.shape)}")


class TripletLoss(nn.Module):
    """Triplet loss with in-batch mining ("semihard", "hard" or "all")."""

    def __init__(self, margin=0.2, mining="semihard", squared=True, *, check=True):
        super().__init__()
        self.margin = _params.hinge_margin(margin)
        self.mining = _params.choice("mining", mining, functional.MINING_MODES)
        self.squared = _params.flag("squared", squared)
        self.check = _params.flag("check", check)

    @_naming_embeddings
    def forward(self, embeddings, labels, ref=None, ref_labels=None, self_index=None):
        """The loss of the batch, or of its rows as anchors against a reference set (see
        functional.triplet_loss)."""
        return functional.triplet_loss(embeddings, labels, self.margin, self.mining, self.squared, ref=ref,
                                       ref_labels=ref_labels, self_index=self_index, check=self.check)

    @_naming_embeddings
    def reference_terms(self, embeddings, labels, ref, ref_labels, self_index=None):
        """(loss, count) against a reference set: functional.triplet_loss_terms."""
        return functional.triplet_loss_terms(embeddings, labels, ref, ref_labels, self.margin, self.mining,
                                             self.squared, self_index, check=self.check)

    def extra_repr(self):
        return f"margin={self.margin}, mining={self.mining!r}, squared={self.squared}"


class PairLoss(nn.Module):
    """Multibatch pair loss with a learned threshold ``theta`` (a 0-d nn.Parameter)."""

    def __init__(self, theta=1.0, *, dtype=torch.float32, check=True):
        super().__init__()
        self.theta = nn.Parameter(functional.theta_tensor(theta, _boundary.parameter_dtype(dtype)))
        self.check = _params.flag("check", check)

    @_naming_embeddings
    def forward(self, embeddings, labels, ref=None, ref_labels=None, self_index=None):
        return functional.pair_loss(embeddings, labels, self.theta, ref=ref, ref_labels=ref_labels,
                                    self_index=self_index, check=self.check)

    @_naming_embeddings
    def reference_terms(self, embeddings, labels, ref, ref_labels, self_index=None):
        """(loss, count) against a reference set: functional.pair_loss_terms."""
        return functional.pair_loss_terms(embeddings, labels, ref, ref_labels, self.theta, self_index,
                                          check=self.check)


class ContrastiveLoss(nn.Module):
    """BVLC Caffe's contrastive loss on explicit pairs: ``loss_fn(a, b, similar)``.
    (pytorch-metric-learning's ContrastiveLoss forms all pairs of one batch and uses
    an unsquared hinge; see docs/torch.md.)"""

    def __init__(self, margin=1.0, legacy=False, *, check=True):
        super().__init__()
        self.margin = _params.hinge_margin(margin)
        self.legacy = _params.flag("legacy", legacy)
        self.check = _params.flag("check", check)

    def forward(self, a, b, similar):
        return functional.contrastive_loss(a, b, similar, self.margin, self.legacy, check=self.check)

    def extra_repr(self):
        return f"margin={self.margin}, legacy={self.legacy}"


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016) owning the centres (num_classes, dim), an nn.Parameter.

    alpha=None: the centres are trained by your optimiser from dL/dc (give it
    ``center_loss.parameters()``; Wen et al. eq. 2 gradient, zero outside the batch's classes).
    alpha given: the centres do not require grad and, in training mode, each forward moves
    the batch's classes by Wen et al. eq. 4 (c_j <- c_j - alpha delta_j) after computing the
    loss, as caffe-face does; the optimiser must not own them.
    """

    def __init__(self, num_classes, dim, alpha=None, *, dtype=torch.float32, check=True):
        super().__init__()
        dtype = _boundary.parameter_dtype(dtype)
        num_classes, dim = _params.matrix_shape("num_classes", num_classes, "dim", dim, dtype.itemsize)
        self.alpha = None if alpha is None else _params.center_alpha(alpha)
        self.centers = nn.Parameter(torch.zeros(num_classes, dim, dtype=dtype), requires_grad=alpha is None)
        self.check = _params.flag("check", check)

    @_naming_embeddings
    def forward(self, embeddings, labels):
        _check_dim(embeddings, self.centers.shape[1])
        loss = functional.center_loss(embeddings, labels, self.centers, check=self.check)
        if self.alpha is not None and self.training:
            # x in the centres' dtype: under autocast the embeddings may be half.
            functional.center_update_(embeddings.detach().to(self.centers.dtype), labels, self.centers,
                                      self.alpha, check=self.check)
        return loss

    def extra_repr(self):
        return f"num_classes={self.centers.shape[0]}, dim={self.centers.shape[1]}, alpha={self.alpha}"


class MarginSoftmaxLoss(nn.Module):
    """Combined-margin softmax head owning the class weights (num_classes, dim), an
    nn.Parameter initialised N(0, 0.01) as in insightface; ``margin`` is a name of
    faceops.MARGINS ("arcface", "cosface", "sphereface", "combined", "normface") or
    (m1, m2, m3).

    sample_rate < 1 is Partial FC (the batch's classes plus uniformly drawn others, from
    torch's default generator, no host synchronisation).  Only the sampled rows get a
    gradient; with sparse_grad=True it is a sparse tensor of those rows, and an optimiser
    that updates only the rows present (torch.optim.SparseAdam, or SGD without momentum
    and weight decay) leaves every other row and its state untouched.  With the default
    dense gradient the other rows' gradient is zero, but momentum and weight decay still
    move them (as in insightface's partial_fc_v2).
    """

    def __init__(self, num_classes, dim, s=64.0, margin="arcface", sample_rate=1.0, *, sparse_grad=False,
                 dtype=torch.float32, check=True):
        super().__init__()
        dtype = _boundary.parameter_dtype(dtype)
        num_classes, dim = _params.matrix_shape("num_classes", num_classes, "dim", dim, dtype.itemsize)
        self.s = _params.scale(s)
        self.m1, self.m2, self.m3 = functional.resolve_margin(margin)
        self.sample_rate = _params.sample_rate(sample_rate)
        self.sparse_grad = _params.flag("sparse_grad", sparse_grad)
        self.check = _params.flag("check", check)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (num_classes, dim)).to(dtype))

    @_naming_embeddings
    def forward(self, embeddings, labels):
        _check_dim(embeddings, self.weight.shape[1])
        return functional.margin_softmax_loss(embeddings, labels, self.weight, self.s, self.m1, self.m2,
                                              self.m3, self.sample_rate, sparse_grad=self.sparse_grad,
                                              check=self.check)

    def extra_repr(self):
        return (f"num_classes={self.weight.shape[0]}, dim={self.weight.shape[1]}, s={self.s}, "
                f"margin=({self.m1}, {self.m2}, {self.m3}), sample_rate={self.sample_rate}")


class ArcFace(MarginSoftmaxLoss):
    """ArcFace head: target logit s cos(theta + margin)."""

    def __init__(self, num_classes, dim, s=64.0, margin=0.5, sample_rate=1.0, **options):
        super().__init__(num_classes, dim, s, (1.0, margin, 0.0), sample_rate, **options)


class CosFace(MarginSoftmaxLoss):
    """CosFace head: target logit s (cos(theta) - margin)."""

    def __init__(self, num_classes, dim, s=64.0, margin=0.35, sample_rate=1.0, **options):
        super().__init__(num_classes, dim, s, (1.0, 0.0, margin), sample_rate, **options)
