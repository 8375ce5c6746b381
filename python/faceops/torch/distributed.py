"""Class-sharded margin softmax over torch.distributed: model-parallel Partial FC (An et al.,
"Partial FC", CVPR 2022; insightface's partial_fc_v2), with the faceops kernel doing each rank's
work and no (N_global, C_local) logits matrix anywhere; and the pairwise losses over the global
batch (GlobalBatchLoss), each rank's anchors against every rank's rows.

Rank r of a group of W ranks owns classes [start_r, end_r) of the class weights (and so of their
optimiser state): the first C % W ranks one class more than the others.  Each step all-gathers the
embeddings (an all-gather whose backward returns each rank the gradient of its own rows) and the
labels, runs the shard kernels of csrc/faceops/margin_softmax.h over the rank's classes, and
combines the rows' log-sum-exp over ranks with an all_reduce MAX of the row maxima followed by an
all_reduce SUM of the rescaled partial sums (and of the target logits, each living on its owner's
shard).  Built on torch.distributed only (gloo on CPUs, NCCL on GPUs).
"""

import math

import torch
import torch.distributed as dist
from torch.distributed import _functional_collectives

from faceops import _core, _params, ops
from faceops.torch import _boundary, _library

Tensor = torch.Tensor
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
# Weights are drawn in blocks of this many classes, each from its own seeded generator, so the
# initial (C, D) matrix is the same for every world size (and no rank builds all of it).
_INIT_BLOCK = 4096


def _gather_rows(x, group):
    """Every rank's x concatenated in rank order, differentiable: the backward gives each rank
    the sum over ranks of the gradient of its own rows (a reduce-scatter).  torch 2.13 deprecates
    torch.distributed.nn.functional.all_gather for the functional collective."""
    gather = getattr(_functional_collectives, "all_gather_single_autograd", None)
    if gather is not None:
        return gather(x.contiguous(), 0, group if group is not None else dist.group.WORLD)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x, group=group if group is not None else dist.group.WORLD))


def _all_gather_into(output, tensor, group):
    """output (W * len,) = every rank's tensor in rank order, no gradient (all_gather_single
    replaces all_gather_into_tensor in torch 2.13)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(output, tensor, group=group)


def _every_rank(numbers, group, world_size, device):
    """Every rank's list of integers ``numbers`` (the same length on each), in rank order: the few
    numbers ranks exchange about their inputs so that every rank raises the same error."""
    mine = torch.tensor(numbers, dtype=torch.int64, device=device)
    if world_size == 1:
        return [numbers]
    every = mine.new_empty((world_size * len(numbers),))
    _all_gather_into(every, mine, group)
    return every.view(world_size, len(numbers)).tolist()


def _gather_batch(module, x, labels):
    """The global batch, (x_all, labels_all): every rank's x (differentiably) and int64 labels in
    rank order, after ``module._check_inputs_on_every_rank`` has agreed that the inputs are valid."""
    if not isinstance(x, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("x, labels: expected torch tensors")
    module._check_inputs_on_every_rank(x, labels)
    labels = labels.to(torch.int64)
    if module.world_size == 1:
        return x, labels
    labels_all = labels.new_empty((module.world_size * labels.shape[0],))
    _all_gather_into(labels_all, labels.contiguous(), module.group)
    return _gather_rows(x, module.group), labels_all


def _device_and_stream(t):
    if t.is_cuda:
        return "cuda", torch.cuda.current_stream(t.device).cuda_stream
    return "cpu", 0


# ---- the shard kernels as torch custom ops -------------------------------------------------------

def _shard_inputs(x, labels, weight, s, m1, m2, m3, log_sum_exp=None):
    """The shard ops' inputs checked as the loss ops' are (faceops.torch._boundary), for a
    direct torch.ops.faceops call too: x (N, D) float32/float64, labels (N,) integers (int64
    returned; -1 for a class of another shard), weight (C_r, D) of x's dtype with C_r >= 0,
    log_sum_exp (N,) of x's dtype; the hyperparameters in x's dtype, returned as the kernels
    take them."""
    named = dict(x=x, labels=labels, weight=weight) if log_sum_exp is None else \
        dict(x=x, labels=labels, weight=weight, log_sum_exp=log_sum_exp)
    _boundary.device_of(**named)
    if x.dtype not in _DTYPES:
        raise TypeError(f"x: expected dtype float32 or float64 (the shard kernels'), got {x.dtype}")
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x: expected a 2-D tensor (N, D) with N, D >= 1, got shape {tuple(x.shape)}")
    n, d = x.shape
    if weight.dim() != 2 or weight.shape[1] != d or weight.dtype != x.dtype:
        raise ValueError(f"weight: expected a (C_r, {d}) tensor of {x.dtype} like x, got {weight.dtype} of shape "
                         f"{tuple(weight.shape)}")
    if log_sum_exp is not None and (log_sum_exp.shape != (n,) or log_sum_exp.dtype != x.dtype):
        raise ValueError(f"log_sum_exp: expected a ({n},) tensor of {x.dtype}, got {log_sum_exp.dtype} of shape "
                         f"{tuple(log_sum_exp.shape)}")
    labels = _boundary.check_labels("labels", labels.contiguous(), n)
    dtype = _boundary.kernel_numpy_dtype(x.dtype)
    s = _library._hyperparameters(_params.scale, dtype, s)
    return labels, (s, *_library._hyperparameters(_params.margins, dtype, m1, m2, m3))


@torch.library.custom_op("faceops::margin_softmax_shard_forward", mutates_args=())
def margin_softmax_shard_forward(x: Tensor, labels: Tensor, weight: Tensor, s: float, m1: float, m2: float,
                                 m3: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per row of x (N, D) over the shard's classes weight (C_r, D): (row_max, row_sum,
    target_logit), the largest logit, sum_j exp(logit_j - row_max) and s * psi(cos) of the target
    when labels[i] >= 0 indexes it here, else 0.  labels: int64, -1 for a class on another shard.
    A shard with no classes gives (-inf, 0, 0)."""
    labels, (s, m1, m2, m3) = _shard_inputs(x, labels, weight, s, m1, m2, m3)
    n, d = x.shape
    row_max, row_sum, target_logit = (x.new_empty((n,)) for _ in range(3))
    if weight.shape[0] == 0:
        return row_max.fill_(-math.inf), row_sum.zero_(), target_logit.zero_()
    x, weight = x.contiguous(), weight.contiguous()
    device, stream = _device_and_stream(x)
    _core.margin_softmax_shard_forward(
        _DTYPES[x.dtype], device, x.data_ptr(), labels.data_ptr(), weight.data_ptr(), n, d, weight.shape[0],
        s, m1, m2, m3, row_max.data_ptr(), row_sum.data_ptr(), target_logit.data_ptr(), stream)
    return row_max, row_sum, target_logit


@margin_softmax_shard_forward.register_fake
def _(x, labels, weight, s, m1, m2, m3):
    return tuple(x.new_empty((x.shape[0],)) for _ in range(3))


@torch.library.custom_op("faceops::margin_softmax_shard_backward", mutates_args=())
def margin_softmax_shard_backward(x: Tensor, labels: Tensor, weight: Tensor, log_sum_exp: Tensor, loss_scale: float,
                                  s: float, m1: float, m2: float, m3: float) -> tuple[Tensor, Tensor]:
    """The shard's part of the gradient of loss_scale * sum_i (log_sum_exp_i - target logit_i):
    (dx, dweight), dx (N, D) through this shard's classes only, dweight (C_r, D) complete."""
    labels, (s, m1, m2, m3) = _shard_inputs(x, labels, weight, s, m1, m2, m3, log_sum_exp)
    loss_scale = _params.real("loss_scale", loss_scale, _boundary.kernel_numpy_dtype(x.dtype))
    if weight.shape[0] == 0:
        return torch.zeros_like(x), torch.empty_like(weight)
    x, weight, log_sum_exp = (t.contiguous() for t in (x, weight, log_sum_exp))
    n, d = x.shape
    dx, dweight = torch.empty_like(x), torch.empty_like(weight)
    device, stream = _device_and_stream(x)
    _core.margin_softmax_shard_backward(
        _DTYPES[x.dtype], device, x.data_ptr(), labels.data_ptr(), weight.data_ptr(), n, d, weight.shape[0],
        s, m1, m2, m3, log_sum_exp.data_ptr(), loss_scale, dx.data_ptr(), dweight.data_ptr(), stream)
    return dx, dweight


@margin_softmax_shard_backward.register_fake
def _(x, labels, weight, log_sum_exp, loss_scale, s, m1, m2, m3):
    return torch.empty_like(x), torch.empty_like(weight)


@torch.library.custom_op("faceops::margin_softmax_shard_loss", mutates_args=())
def margin_softmax_shard_loss(x: Tensor, labels: Tensor, weight: Tensor, log_sum_exp: Tensor, target_logit: Tensor,
                              loss_scale: float, s: float, m1: float, m2: float, m3: float) -> Tensor:
    """loss_scale * sum_i (log_sum_exp_i - target_logit_i), the rows' statistics combined over
    every shard (so the value is the whole loss), differentiated as the function of x and of this
    shard's weight that those statistics are: the backward is margin_softmax_shard_backward's
    part of the gradient (the other shards' parts of dx reach x through the all-gather's
    backward).  The statistics get no gradient: pass them detached."""
    return (log_sum_exp - target_logit).sum() * loss_scale


@margin_softmax_shard_loss.register_fake
def _(x, labels, weight, log_sum_exp, target_logit, loss_scale, s, m1, m2, m3):
    return x.new_empty(())


def _loss_setup_context(ctx, inputs, output):
    x, labels, weight, log_sum_exp, _, loss_scale, s, m1, m2, m3 = inputs
    ctx.save_for_backward(x, labels, weight, log_sum_exp)
    ctx.hyper = (loss_scale, s, m1, m2, m3)


def _loss_backward(ctx, grad):
    x, labels, weight, log_sum_exp = ctx.saved_tensors
    dx, dweight = margin_softmax_shard_backward(x, labels, weight, log_sum_exp, *ctx.hyper)
    # In place: the op's fresh outputs, so the backward holds one (C_r, D) gradient, not two.
    return dx.mul_(grad), None, dweight.mul_(grad), None, None, None, None, None, None, None


margin_softmax_shard_loss.register_autograd(_loss_backward, setup_context=_loss_setup_context)


# ---- shards ----------------------------------------------------------------------------------------

def _require_shard_meta(meta):
    """A shard's saved extra state (num_classes, class_start, class_end), or a ValueError."""
    keys = ("num_classes", "class_start", "class_end")
    if not isinstance(meta, dict) or not all(type(meta.get(key)) is int for key in keys):
        raise ValueError(f"checkpoint: the shard's extra state is {meta!r}; expected the dict of integers "
                         f"{', '.join(keys)} that ShardedMarginSoftmaxLoss saves")
    return meta


def shard_bounds(num_classes, world_size, rank):
    """[start, end) of the classes rank ``rank`` of ``world_size`` owns: the first
    num_classes % world_size ranks own one class more."""
    base, extra = divmod(num_classes, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def reshard_rows(pieces, start, end):
    """Rows [start, end) of a class-indexed matrix saved as shards: ``pieces`` is a list of
    (class_start, rows) from the saved ranks, in any order and of any world size (the weights, or
    an optimiser's per-row state such as SGD momentum).  Raises when they do not cover the range."""
    parts, covered = [], start
    for piece_start, rows in sorted(pieces, key=lambda p: p[0]):
        lo, hi = max(piece_start, covered), min(piece_start + rows.shape[0], end)
        if lo < hi:
            if lo != covered:
                break
            parts.append(rows[lo - piece_start:hi - piece_start])
            covered = hi
    if covered != end:
        raise ValueError(f"checkpoint: the saved shards do not cover classes [{covered}, {end})")
    return torch.cat(parts) if parts else pieces[0][1][:0]


def _generator_seed(seed, stream):
    """(seed, stream) as one torch generator seed, which torch takes below 2**63."""
    return (seed * 1_000_003 + stream) % 2**63


def _initial_rows(start, end, dim, seed, dtype):
    """Rows [start, end) of the N(0, 0.01) initial weights (insightface's), world-size independent."""
    rows = torch.empty((end - start, dim), dtype=dtype)
    for first in range(start - start % _INIT_BLOCK, end, _INIT_BLOCK):
        generator = torch.Generator().manual_seed(_generator_seed(seed, first // _INIT_BLOCK))
        block = torch.randn((_INIT_BLOCK, dim), generator=generator, dtype=torch.float64) * 0.01
        lo, hi = max(start, first), min(end, first + _INIT_BLOCK)
        rows[lo - start:hi - start] = block[lo - first:hi - first]
    return rows


def sum_gradients_hook(state, bucket):
    """A DistributedDataParallel communication hook that sums the ranks' gradients (DDP's default
    averages them, dividing by the world size): with it, a backbone trained on this module's loss
    gets the gradient of the global-batch loss, as one process would.
    ``ddp.register_comm_hook(None, sum_gradients_hook)``.

    The reduction is issued on the calling thread and the hook returns an already completed future:
    a ``.then`` callback (torch's own hooks use one) would run Python on the backend's thread, and
    DDP keeps the process group alive past ``destroy_process_group``, so a callback still in flight
    when the interpreter shuts down aborts the process (tests/test_distributed_recipe.py).  With
    NCCL the collective is ordered on the stream and the host does not wait; with gloo each
    bucket's reduction blocks the backward instead of overlapping it."""
    gradients = bucket.buffer()
    dist.all_reduce(gradients)
    done = torch.futures.Future(devices=[gradients.device] if gradients.is_cuda else None)
    done.set_result(gradients)
    return done


# ---- the loss ----------------------------------------------------------------------------------------

class ShardedMarginSoftmaxLoss(torch.nn.Module):
    """Combined-margin softmax (ArcFace / CosFace / SphereFace, ``faceops.MARGINS``) over
    ``num_classes`` classes sharded across the ranks of ``group`` (the default process group; a
    single process when torch.distributed is not initialised).  ``self.weight`` holds this rank's
    classes [class_start, class_end) (``shard_bounds``).

    Normalisation: ``loss(x, labels)`` returns, on every rank, the mean cross-entropy over the
    global batch, the concatenation in rank order of every rank's (N, dim) ``x``:
    L = 1/(W N) sum over all W N rows of [log sum_j exp(logit_ij) - logit_iy].  Its backward
    gives each rank exactly dL/dx for its own rows and dL/dweight for its own classes: the
    gradients of one process holding the whole batch and all the classes, with no world-size
    factor to apply.  (A DistributedDataParallel backbone averages its gradients over ranks, i.e.
    divides this L's gradient by W: see docs/distributed.md.)  Every rank must pass the same N.

    ``sample_rate < 1`` is Partial FC: each rank keeps, of its classes, those of the global batch's
    labels (positives) plus random others, max(#positives, round(sample_rate * C_r)) in all,
    drawn from a generator seeded by (``seed``, rank): reproducible for a fixed seed and world
    size.  The loss is then the softmax over the sampled classes of every rank;
    ``sampled_classes`` holds this rank's (global indices, sorted) after each call.

    Bad input on any rank (labels out of [0, num_classes), NaN/Inf, a shape or dtype that differs
    between ranks) raises the same ValueError on every rank, naming the rank: the ranks first
    exchange a few numbers about their inputs, so none is left waiting in a collective.

    Checkpoints: ``state_dict()`` holds the shard and its bounds; ``load_shards`` takes every
    rank's saved state dict (any world size) and keeps this rank's rows.
    """

    def __init__(self, num_classes, dim, margin="arcface", s=64.0, sample_rate=1.0, *, group=None, seed=0,
                 dtype=torch.float32, device=None):
        super().__init__()
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        self.num_classes, self.dim = _params.matrix_shape("num_classes", num_classes, "dim", dim, dtype.itemsize)
        m1, m2, m3 = _params.margin_triple(margin, ops.MARGINS)
        self.m1, self.m2, self.m3 = _params.margins(m1, m2, m3, _DTYPES[dtype])
        self.s = _params.scale(s, _DTYPES[dtype])
        self.sample_rate = _params.sample_rate(sample_rate)
        self.seed = _params.integer("seed", seed, low=0)
        self.group = group
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if distributed else 1
        self.rank = dist.get_rank(group) if distributed else 0
        if self.num_classes < self.world_size:
            raise ValueError(f"num_classes: expected at least one class per rank ({self.world_size}), "
                             f"got {self.num_classes}")
        self.class_start, self.class_end = shard_bounds(self.num_classes, self.world_size, self.rank)
        self.weight = torch.nn.Parameter(
            _initial_rows(self.class_start, self.class_end, self.dim, self.seed, dtype).to(device))
        self._generator = torch.Generator(device=self.weight.device).manual_seed(_generator_seed(self.seed, self.rank))
        self.sampled_classes = None

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, dim={self.dim}, classes=[{self.class_start}, {self.class_end}) "
                f"of rank {self.rank}/{self.world_size}, s={self.s}, margin=({self.m1}, {self.m2}, {self.m3}), "
                f"sample_rate={self.sample_rate}")

    # -- checkpoints
    def get_extra_state(self):
        return {"num_classes": self.num_classes, "class_start": self.class_start, "class_end": self.class_end}

    def set_extra_state(self, state):
        _require_shard_meta(state)
        if (state["num_classes"], state["class_start"], state["class_end"]) != (
                self.num_classes, self.class_start, self.class_end):
            raise ValueError(f"checkpoint: saved shard [{state['class_start']}, {state['class_end']}) of "
                             f"{state['num_classes']} classes, this rank owns [{self.class_start}, {self.class_end}) "
                             f"of {self.num_classes}: use load_shards to re-shard")

    def load_shards(self, states):
        """Loads this rank's classes from ``states``: every rank's saved ``state_dict()`` (or a
        path to one, memory-mapped), saved at any world size."""
        pieces = []
        for state in states:
            if not isinstance(state, dict):
                state = torch.load(state, map_location="cpu", mmap=True, weights_only=True)
            if not isinstance(state.get("weight"), Tensor) or state["weight"].dim() != 2:
                raise ValueError("checkpoint: expected a state dict of ShardedMarginSoftmaxLoss holding its (C_r, D) "
                                 f"weight, got {sorted(state)}")
            meta = _require_shard_meta(state.get("_extra_state"))
            if meta["num_classes"] != self.num_classes or state["weight"].shape[1] != self.dim:
                raise ValueError(f"checkpoint: saved {meta['num_classes']} classes of dim {state['weight'].shape[1]}, "
                                 f"expected {self.num_classes} of dim {self.dim}")
            pieces.append((meta["class_start"], state["weight"]))
        rows = reshard_rows(pieces, self.class_start, self.class_end)
        with torch.no_grad():
            self.weight.copy_(rows)

    # -- the loss
    def forward(self, x, labels):
        self.sample_rate = _params.sample_rate(self.sample_rate)  # as the local modules, checked each call
        x_all, labels_all = _gather_batch(self, x, labels)
        local = labels_all - self.class_start
        on_shard = (local >= 0) & (local < self.weight.shape[0])
        weight = self.weight
        if self.sample_rate < 1:
            chosen = self._sample(local[on_shard])
            self.sampled_classes = chosen + self.class_start
            weight = self.weight.index_select(0, chosen)
            local = torch.searchsorted(chosen, local.clamp(0, self.weight.shape[0] - 1))
        local = torch.where(on_shard, local, -1).contiguous()
        hyper = (self.s, self.m1, self.m2, self.m3)
        row_max, row_sum, target_logit = margin_softmax_shard_forward(x_all.detach(), local, weight.detach(), *hyper)
        if self.world_size > 1:
            top = row_max.clone()
            dist.all_reduce(top, dist.ReduceOp.MAX, group=self.group)
            sums = torch.stack([row_sum * torch.exp(row_max - top), target_logit])
            dist.all_reduce(sums, dist.ReduceOp.SUM, group=self.group)
            log_sum_exp, target_logit = top + torch.log(sums[0]), sums[1]
        else:
            log_sum_exp = row_max + torch.log(row_sum)
        return margin_softmax_shard_loss(x_all, local, weight, log_sum_exp, target_logit,
                                         1.0 / labels_all.shape[0], *hyper)

    def _sample(self, positives):
        """Sorted local indices: the positives, then random others, up to the Partial FC count."""
        classes = self.weight.shape[0]
        positives = torch.unique(positives)
        count = max(positives.shape[0], int(round(self.sample_rate * classes)))
        scores = torch.rand(classes, generator=self._generator, device=self.weight.device)
        scores[positives] = 2.0  # above every uniform draw: positives are always kept
        return torch.topk(scores, count).indices.sort().values

    def _check_inputs_on_every_rank(self, x, labels):
        """Each rank describes its inputs in a few numbers; every rank checks every rank's, so a
        bad input anywhere raises the same error everywhere (before any large collective)."""
        shape_ok = x.dim() == 2 and labels.dim() == 1
        n = x.shape[0] if x.dim() >= 1 else -1
        bad_row, bad_label = -1, 0
        labels_ok = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
        if shape_ok and labels_ok and labels.numel() > 0:
            outside = ((labels < 0) | (labels >= self.num_classes)).nonzero()
            if outside.numel() > 0:
                bad_row = int(outside[0, 0])
                bad_label = int(labels[bad_row])
        about = [
            n, x.shape[1] if x.dim() == 2 else -1, labels.shape[0] if labels.dim() == 1 else -1,
            int(shape_ok), int(labels_ok), int(x.dtype == self.weight.dtype), int(x.device == self.weight.device),
            int(x.device == labels.device), bad_row, bad_label,
            int(bool(torch.isfinite(x).all())) if x.is_floating_point() else 1,
            int(bool(torch.isfinite(self.weight).all())),
        ]
        every = _every_rank(about, self.group, self.world_size, self.weight.device)
        for rank, (rows, cols, label_rows, shape_ok, labels_ok, dtype_ok, device_ok, labels_device_ok, bad_row,
                   bad_label, x_finite, weight_finite) in enumerate(every):
            where = f"rank {rank}: " if self.world_size > 1 else ""
            if not shape_ok or cols != self.dim or rows < 1 or label_rows != rows:
                raise ValueError(f"x, labels: {where}expected x (N, {self.dim}) with N >= 1 and labels (N,), got x of "
                                 f"{rows} rows x {cols} and {label_rows} labels")
            if rows != every[0][0]:
                raise ValueError(f"x: {where}{rows} rows, rank 0 has {every[0][0]}: every rank must pass the same N")
            if not labels_ok:
                raise TypeError(f"labels: {where}expected an integer tensor")
            if not dtype_ok:
                raise TypeError(f"x: {where}expected the weights' dtype {self.weight.dtype}")
            if not device_ok or not labels_device_ok:
                raise ValueError(f"x, labels: {where}expected tensors on the weights' device {self.weight.device}")
            if bad_row >= 0:
                raise ValueError(f"labels: {where}label {bad_label} at row {bad_row} is out of range; expected "
                                 f"0 <= label < {self.num_classes}")
            if not x_finite:
                raise ValueError(f"x: {where}contains NaN or Inf; expected finite values")
            if not weight_finite:
                raise ValueError(f"weight: {where}the shard contains NaN or Inf")


# ---- pairwise losses over the global batch --------------------------------------------------------

class GlobalBatchLoss(torch.nn.Module):
    """A pairwise loss over the global batch: ``GlobalBatchLoss(faceops.torch.TripletLoss(0.2,
    "hard"))(x, labels)`` on every rank of ``group`` (the default process group; one process when
    torch.distributed is not initialised).  ``loss``: a faceops.torch TripletLoss or PairLoss.

    Each rank all-gathers every rank's (N, D) ``x`` and labels (rank order; an all-gather whose
    backward returns each rank the gradient of its own rows) and runs the loss's kernel with its
    own rows as anchors and the gathered batch as the reference set, its own copies marked (a row
    is never its own positive).  So the terms of rank r are exactly the terms of the single-process
    loss whose anchors are rank r's rows.

    Normalisation: every rank returns L = sum_r count_r L_r / sum_r count_r, the mean over all
    terms of all ranks, which is the single-process loss over the concatenated batch (mean over
    its pairs, anchors or triplets as the loss defines them); its backward gives each rank exactly
    dL/dx for its own rows (and each rank its share of dL/dtheta for a PairLoss, summed over ranks
    to the whole).  No world-size factor to apply.  (A DistributedDataParallel backbone averages
    its gradients over ranks, i.e. divides dL/dparameters by W: register ``sum_gradients_hook``,
    see docs/distributed.md.)  Every rank must pass the same N; bad input on any rank raises the
    same ValueError on every rank, naming the rank.
    """

    def __init__(self, loss, *, group=None):
        super().__init__()
        if not callable(getattr(loss, "reference_terms", None)):
            raise TypeError(f"loss: expected a faceops.torch loss that takes a reference set (TripletLoss, "
                            f"PairLoss), got {type(loss).__name__}")
        self.loss = loss
        self.group = group
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if distributed else 1
        self.rank = dist.get_rank(group) if distributed else 0

    def forward(self, x, labels):
        x_all, labels_all = _gather_batch(self, x, labels)
        n = x.shape[0]
        self_index = torch.arange(self.rank * n, (self.rank + 1) * n, device=x.device)
        loss, count = self.loss.reference_terms(x, labels_all[self_index], x_all, labels_all, self_index)
        return mean_over_ranks(loss, count, self.group, self.world_size)

    def _check_inputs_on_every_rank(self, x, labels):
        check_batch_on_every_rank(x, labels, self.group, self.world_size)


def mean_over_ranks(loss, count, group, world_size):
    """sum_r count_r loss_r / sum_r count_r from every rank's mean ``loss`` over ``count`` terms:
    the value of the mean over all ranks' terms on every rank, with the gradient of this rank's
    share, count_r / sum_r count_r times dloss_r (no term anywhere: loss 0, zero gradients)."""
    totals = torch.stack([loss.detach().to(count.dtype) * count, count])
    if world_size > 1:
        dist.all_reduce(totals, dist.ReduceOp.SUM, group=group)
    terms = totals[1].clamp_min(1)
    local = loss * (count / terms).to(loss.dtype)
    return local + (totals[0] / terms).to(loss.dtype).detach() - local.detach()


def check_batch_on_every_rank(x, labels, group, world_size):
    """x (N, D) and (N,) integer labels, finite, with the same N and D on every rank; a bad input
    on any rank raises the same error on every rank, naming it."""
    labels_ok = not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool
    about = [
        x.dim(), x.shape[0] if x.dim() == 2 else -1, x.shape[1] if x.dim() == 2 else -1,
        labels.shape[0] if labels.dim() == 1 else -1, int(labels_ok), int(x.device == labels.device),
        int(bool(torch.isfinite(x).all())) if x.is_floating_point() else 1, int(labels.is_contiguous()),
    ]
    every = _every_rank(about, group, world_size, x.device)
    for rank, (dims, rows, cols, label_rows, labels_ok, same_device, finite, labels_contiguous) in enumerate(every):
        where = f"rank {rank}: " if world_size > 1 else ""
        if dims != 2 or rows < 1 or label_rows != rows:
            raise ValueError(f"x, labels: {where}expected x (N, D) with N >= 1 and labels (N,), got x of "
                             f"{rows} rows and {label_rows} labels")
        if (rows, cols) != tuple(every[0][1:3]):
            raise ValueError(f"x: {where}shape ({rows}, {cols}), rank 0 has ({every[0][1]}, {every[0][2]}): "
                             "every rank must pass the same N and D")
        if not labels_ok:
            raise TypeError(f"labels: {where}expected an integer tensor")
        if not same_device:
            raise ValueError(f"x, labels: {where}expected both on one device")
        if not finite:
            raise ValueError(f"x: {where}contains NaN or Inf; expected finite values")
        if not labels_contiguous:
            raise ValueError(f"labels: {where}expected a contiguous tensor; pass labels.contiguous()")
