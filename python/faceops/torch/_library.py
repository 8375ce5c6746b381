"""The faceops:: torch ops: one op per kernel entry of faceops._core.

Each op has a schema (from the annotations, torch.library.custom_op), one
implementation for CPU and CUDA tensors (the kernel is chosen by the tensors'
device in _boundary.call_kernel), a fake kernel that checks and computes only
metadata (so torch.compile traces through it), and, for the losses, an autograd
formula.  A loss op returns the loss together with the gradients the kernel
computes in the same pass, scale 1; the backward only scales those saved
gradients by the incoming gradient.  target_margin_forward's backward is a
kernel of its own and therefore an op, target_margin_backward.  The functional
forms call the loss ops through call(), which in plain eager mode runs the same
implementation, setup_context and backward as an autograd.Function, without the
dispatcher's Python cost.

Under torch.autocast every op except center_update runs in float32 (inputs cast
by torch.library.register_autocast, as torch's own loss functions autocast to
float32).  center_update writes `centers` in place (mutates_args), so casting
it would lose the write: it is left out and its callers pass x in the centres'
dtype (faceops.torch.CenterLoss does).
"""

import functools
import inspect
from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from faceops import _core, _params
from faceops.ops import MINING_MODES
from faceops.torch import _boundary


def _loss_like(x):
    return x.new_empty((), dtype=_boundary.compute_dtype(x.dtype))


def _out(tensor, like):
    """A kernel output back in the dtype of the input it belongs to."""
    return tensor if tensor.dtype == like.dtype else tensor.to(like.dtype)


def _hyperparameters(check, dtype, *values):
    """check(*values, dtype): a faceops._params check of an op's hyperparameters in the kernels'
    NumPy dtype, returning them as the kernel takes them.  Python floats (what the schema and
    the functional forms pass) that passed once are kept: a training step passes the same ones
    every call, and each check costs about 3 us.  A refused value raises every time; 0.0 and
    -0.0 share an entry (no kernel's result depends on the sign of a zero margin or offset)."""
    if all(type(value) is float for value in values):
        return _passed_hyperparameters(check, dtype, *values)
    return check(*values, dtype)


@functools.lru_cache(maxsize=256)
def _passed_hyperparameters(check, dtype, *values):
    return check(*values, dtype)


# Whether the running backward keeps its graph (retain_graph, create_graph): the saved gradients
# are then read again.  AOTAutograd asks the same (private) question before it donates saved
# tensors; a torch without it is taken to keep the graph.
_graph_kept = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)


def _refuse_double_backward():
    """A loss op's backward runs in grad mode only under create_graph=True, whose point is a
    second derivative.  The kernels compute the gradient, not its derivative: a gradient handed
    out there would differentiate to zero, so the backward refuses instead."""
    if torch.is_grad_enabled():
        raise RuntimeError("faceops.torch: create_graph=True (double backward: Hessians, gradient penalties "
                           "through the loss) is not supported by the faceops losses; their kernels compute the "
                           "gradient, not its derivative, which would come out as zero")


def _scaled(grad_loss, gradient):
    """gradient times the loss's incoming gradient, in gradient's dtype.  An undefined
    incoming gradient (None: no gradients are materialized, see _save_gradients) is a
    zero one, and so is the result (None).

    An incoming gradient of exactly 1 on the CPU (``loss.backward()``), in a backward that does
    not keep the graph, hands out the saved gradient itself: no pass over it and no new buffer,
    which on the CPU costs page faults as well (the contrastive step was 1.3-1.5x slower than
    PyTorch's for it).  The graph frees the saved tensor after this backward, so the buffer is
    the caller's alone; a CUDA incoming gradient is never read (no host sync)."""
    _refuse_double_backward()
    if grad_loss is None:
        return None
    if (type(grad_loss) is Tensor and grad_loss.device.type == "cpu" and not _graph_kept()
            and grad_loss.item() == 1.0):
        return gradient
    scaled = grad_loss * gradient  # 0-d theta's gradient can promote to the loss's dtype
    return scaled if scaled.dtype == gradient.dtype else scaled.to(gradient.dtype)


def _computed(ctx, index, flag, name, computed):
    """Whether input ``index`` (``name``) gets its gradient: autograd wants one and the op
    computed it (``flag``).  Only a direct call of the op can ask for none where one is
    wanted; the functional forms derive the flag from requires_grad."""
    if not ctx.needs_input_grad[index]:
        return False
    if not computed:
        raise ValueError(f"{flag}: the op ran with {flag}=False, but {name} requires grad; "
                         f"pass {flag}=True or {name}.detach()")
    return True


def _save_gradients(ctx, output):
    """setup_context of a loss op returning (loss, *gradients): keeps the gradients,
    which are not themselves differentiable."""
    gradients = output[1:]
    # Otherwise autograd hands the backward an N x D tensor of zeros for each gradient output.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*gradients)
    ctx.mark_non_differentiable(*gradients)


def _setup_gradients(ctx, inputs, output):
    _save_gradients(ctx, output)


# --- registration, and eager calls without the dispatcher ---------------------------------

# op -> what call() runs in plain eager mode: a loss op's autograd.Function (its apply), or
# the implementation of an op without autograd.
_EAGER = {}
# The ops with autograd (_register_autograd).
_DIFFERENTIABLE = set()


def _op(name, mutates_args=()):
    """torch.library.custom_op(name), keeping the implementation (and the version bump of what
    it writes) for call()."""
    def register(implementation):
        op = torch.library.custom_op(name, mutates_args=mutates_args)(implementation)
        _EAGER[op] = _writing(implementation, mutates_args) if mutates_args else implementation
        return op

    return register


def _writing(implementation, mutates_args):
    """The implementation of an op that writes the arguments named in mutates_args, followed by
    the version bump of those tensors that the dispatcher's ADInplaceOrView kernel makes, so
    that autograd still refuses a backward that saved them before the write."""
    names = list(inspect.signature(implementation).parameters)
    positions = [names.index(name) for name in mutates_args]

    def run(*args):
        result = implementation(*args)
        torch.autograd.graph.increment_version([args[position] for position in positions])
        return result

    return run


def _register_autograd(op, backward, setup_context):
    """op.register_autograd(backward, setup_context), and the same three pieces (the op's
    implementation as forward) as an autograd.Function that call() runs in plain eager mode."""
    op.register_autograd(backward, setup_context=setup_context)
    implementation = _EAGER[op]  # _op's entry, the implementation itself: no loss op writes an argument

    # forward(ctx, ...) rather than a separate setup_context: Function.apply binds the
    # arguments of the latter form with inspect.signature, about 30 us a call.
    def forward(ctx, *inputs):
        output = implementation(*inputs)
        setup_context(ctx, inputs, output)
        return output

    _EAGER[op] = type(f"{implementation.__name__}_eager", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    }).apply
    _DIFFERENTIABLE.add(op)


# What call() asks before it leaves the dispatcher out (private torch._C functions); a
# torch without one of them always takes the dispatcher.
_MODE_PROBES = ("_get_tracing_state", "_len_torch_dispatch_stack", "_len_torch_function_stack",
                "_are_functorch_transforms_active", "_is_any_autocast_enabled")
_CAN_SKIP_DISPATCHER = (all(hasattr(torch._C, probe) for probe in _MODE_PROBES)
                        and hasattr(torch._C._autograd, "_profiler_enabled"))
_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def _needs_dispatcher(args):
    """Whether a call must go through the dispatcher: while torch.compile, torch.export or the
    JIT traces, under a dispatch or function mode, a functorch transform, autocast or a profiler
    (whose trace then names the op), and for any tensor that is not a plain CPU or CUDA tensor
    (fake, meta, a subclass) or whose data is not its values (a lazily negated or conjugated
    view, whose memory holds -x; a ZeroTensor, which has none)."""
    if (not _CAN_SKIP_DISPATCHER or torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None
            or torch._C._len_torch_dispatch_stack() or torch._C._len_torch_function_stack()
            or torch._C._are_functorch_transforms_active() or torch._C._autograd._profiler_enabled()
            or torch._C._is_any_autocast_enabled()):
        return True
    for arg in args:
        if isinstance(arg, Tensor) and (type(arg) not in _PLAIN_TENSORS or arg.device.type not in ("cpu", "cuda")
                                        or arg.is_neg() or arg.is_conj() or arg._is_zerotensor()):
            return True
    return False


def call(op, *args):
    """op(*args), positional arguments only.  In plain eager mode a loss op runs as its own
    implementation, setup_context and backward in an autograd.Function, and an op without
    autograd as its implementation: the same code and results as the dispatched op, without
    the dispatcher's Python cost (about 0.1 ms of torch.library's dispatch and autograd
    wrapping per forward + backward, docs/torch.md).  Anything watching (see
    _needs_dispatcher) gets the op."""
    if forward_ad._current_level >= 0:
        _refuse_forward_ad(args)
    if _needs_dispatcher(args) or (op not in _DIFFERENTIABLE and _wants_grad(args)):
        return op(*args)  # without autograd: the dispatcher's error in a backward, never no gradient
    return _EAGER[op](*args)


def _refuse_forward_ad(args):
    """Inside a forward-mode AD level (torch.func.jvp, torch.autograd.forward_ad), a tensor
    carrying a tangent: the ops have no forward derivative, and the dispatched op would hand
    back a zero or missing tangent without a word."""
    if any(isinstance(arg, Tensor) and forward_ad.unpack_dual(arg).tangent is not None for arg in args):
        raise NotImplementedError("faceops.torch: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) is not "
                                  "supported by the faceops losses, which have no forward derivative; use reverse "
                                  "mode (backward, torch.autograd.grad)")


def _wants_grad(args):
    return torch.is_grad_enabled() and any(isinstance(arg, Tensor) and arg.requires_grad for arg in args)


# --- center loss (csrc/faceops/center_loss.h) ---------------------------------------------


def _center_inputs(x, labels, centers):
    device = _boundary.device_of(x=x, labels=labels, centers=centers)
    n, d = _boundary.check_matrix("x", x)
    num_classes, _ = _boundary.check_matrix("centers", centers, dtype=x.dtype, cols=d, classes=True)
    return device, n, d, num_classes, _boundary.check_labels("labels", labels, n)


@_op("faceops::center_loss")
def center_loss(x: Tensor, labels: Tensor, centers: Tensor, centers_grad: bool, check: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dx, dcenters); dcenters is (C, D), zero outside the batch's classes, or
    (0, D) when centers_grad is False (the kernel then skips it)."""
    device, n, d, num_classes, labels = _center_inputs(x, labels, centers)
    _boundary.check_values(device, check, {"x": x, "centers": centers}, ("x", "centers"), labels, num_classes)
    x_in, centers_in = _boundary.compute_input(x), _boundary.compute_input(centers)
    loss, dx = _loss_like(x), torch.empty_like(x_in)
    dcenters = torch.zeros_like(centers_in) if centers_grad else centers_in.new_empty((0, d))
    _boundary.call_kernel(_core.center_loss, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(),
                          centers_in.data_ptr(), n, d, num_classes, loss.data_ptr(), dx.data_ptr(),
                          _boundary.address(dcenters if centers_grad else None))
    return _out(loss, x), _out(dx, x), _out(dcenters, centers)


@center_loss.register_fake
def _(x, labels, centers, centers_grad, check):
    _, _, d, _, _ = _center_inputs(x, labels, centers)
    return x.new_empty(()), torch.empty_like(x), centers.new_empty(centers.shape if centers_grad else (0, d))


def _center_loss_setup(ctx, inputs, output):
    _save_gradients(ctx, output)
    ctx.centers_grad = inputs[3]


def _center_loss_backward(ctx, grad_loss, _grad_dx, _grad_dcenters):
    dx, dcenters = ctx.saved_tensors
    dcenters = _scaled(grad_loss, dcenters) if _computed(ctx, 2, "centers_grad", "centers", ctx.centers_grad) else None
    return _scaled(grad_loss, dx), None, dcenters, None, None


_register_autograd(center_loss, _center_loss_backward, _center_loss_setup)


@_op("faceops::center_update_direction")
def center_update_direction(x: Tensor, labels: Tensor, centers: Tensor, check: bool) -> Tensor:
    """Wen et al. eq. 4's delta (C, D), zero for classes absent from the batch."""
    device, n, d, num_classes, labels = _center_inputs(x, labels, centers)
    _boundary.check_values(device, check, {"x": x, "centers": centers}, ("x", "centers"), labels, num_classes)
    x_in, centers_in = _boundary.compute_input(x), _boundary.compute_input(centers)
    direction = torch.zeros_like(centers_in)
    _boundary.call_kernel(_core.center_update_direction, x_in.dtype, x.device, x_in.data_ptr(),
                          labels.data_ptr(), centers_in.data_ptr(), n, d, num_classes, direction.data_ptr())
    return _out(direction, centers)


@center_update_direction.register_fake
def _(x, labels, centers, check):
    _center_inputs(x, labels, centers)
    return torch.empty_like(centers)


@_op("faceops::center_update", mutates_args=("centers",))
def center_update(x: Tensor, labels: Tensor, centers: Tensor, alpha: float, check: bool) -> None:
    """In place, Wen et al. eq. 4: c_j <- c_j - alpha * delta_j; absent classes untouched.
    float16/bfloat16 centres are updated through a float32 copy written back."""
    device, n, d, num_classes, labels = _center_inputs(x, labels, centers)
    alpha = _hyperparameters(_params.center_alpha, _boundary.kernel_numpy_dtype(x.dtype), alpha)
    _boundary.check_no_overlap("centers", centers, x=x, labels=labels)
    _boundary.check_values(device, check, {"x": x, "centers": centers}, ("x", "centers"), labels, num_classes)
    x_in, centers_in = _boundary.compute_input(x), _boundary.compute_input(centers)
    _boundary.call_kernel(_core.center_update, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(),
                          centers_in.data_ptr(), n, d, num_classes, alpha)
    if centers_in is not centers:
        centers.copy_(centers_in)


@center_update.register_fake
def _(x, labels, centers, alpha, check):
    _center_inputs(x, labels, centers)


# --- triplet losses (csrc/faceops/triplet_loss.h) -----------------------------------------


def _triplet_inputs(x, labels):
    device = _boundary.device_of(x=x, labels=labels)
    n, d = _boundary.check_matrix("x", x)
    return device, n, d, _boundary.check_labels("labels", labels, n)


@_op("faceops::triplet_loss")
def triplet_loss(x: Tensor, labels: Tensor, margin: float, mining: str, squared: bool, check: bool) -> tuple[Tensor, Tensor]:
    """(loss, dx) of the triplet loss with in-batch mining."""
    device, n, d, labels = _triplet_inputs(x, labels)
    margin = _hyperparameters(_params.hinge_margin, _boundary.kernel_numpy_dtype(x.dtype), margin)
    mining = _params.choice("mining", mining, MINING_MODES)
    _boundary.check_values(device, check, {"x": x}, ("x",))
    x_in = _boundary.compute_input(x)
    loss, dx = _loss_like(x), torch.empty_like(x_in)
    _boundary.call_kernel(_core.triplet_loss, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(), n, d,
                          margin, MINING_MODES[mining], squared, loss.data_ptr(), dx.data_ptr())
    return _out(loss, x), _out(dx, x)


@triplet_loss.register_fake
def _(x, labels, margin, mining, squared, check):
    _triplet_inputs(x, labels)
    return x.new_empty(()), torch.empty_like(x)


def _loss_backward_x(ctx, grad_loss, *_grad_gradients):
    (dx,) = ctx.saved_tensors
    return _scaled(grad_loss, dx), *([None] * ctx.other_inputs)


def _setup_x_only(other_inputs):
    def setup(ctx, inputs, output):
        _save_gradients(ctx, output)
        ctx.other_inputs = other_inputs

    return setup


_register_autograd(triplet_loss, _loss_backward_x, _setup_x_only(5))


def _explicit_inputs(anchor, positive, negative):
    device = _boundary.device_of(anchor=anchor, positive=positive, negative=negative)
    n, d = _boundary.check_matrix("anchor", anchor)
    _boundary.check_matrix("positive", positive, dtype=anchor.dtype, rows=n, cols=d)
    _boundary.check_matrix("negative", negative, dtype=anchor.dtype, rows=n, cols=d)
    return device, n, d


@_op("faceops::triplet_loss_explicit")
def triplet_loss_explicit(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float,
                          check: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, danchor, dpositive, dnegative) of explicit triplets."""
    device, n, d = _explicit_inputs(anchor, positive, negative)
    margin = _hyperparameters(_params.hinge_margin, _boundary.kernel_numpy_dtype(anchor.dtype), margin)
    rows = {"anchor": anchor, "positive": positive, "negative": negative}
    _boundary.check_values(device, check, rows, tuple(rows))
    inputs = [_boundary.compute_input(t) for t in (anchor, positive, negative)]
    loss, grads = _loss_like(anchor), [torch.empty_like(t) for t in inputs]
    _boundary.call_kernel(_core.triplet_loss_explicit, inputs[0].dtype, anchor.device,
                          *(t.data_ptr() for t in inputs), n, d, margin, loss.data_ptr(),
                          *(g.data_ptr() for g in grads))
    return _out(loss, anchor), *(_out(g, anchor) for g in grads)


@triplet_loss_explicit.register_fake
def _(anchor, positive, negative, margin, check):
    _explicit_inputs(anchor, positive, negative)
    return anchor.new_empty(()), *(torch.empty_like(anchor) for _ in range(3))


def _explicit_backward(ctx, grad_loss, *_grad_gradients):
    return *(_scaled(grad_loss, g) for g in ctx.saved_tensors), None, None


_register_autograd(triplet_loss_explicit, _explicit_backward, _setup_gradients)


# --- reference sets (triplet_loss.h, pair_loss.h: anchors of x, candidates of ref) ---------


def _reference_inputs(x, labels, ref, ref_labels, self_index):
    tensors = dict(x=x, labels=labels, ref=ref, ref_labels=ref_labels)
    if self_index is not None:
        tensors["self_index"] = self_index
    device = _boundary.device_of(**tensors)
    n, d = _boundary.check_matrix("x", x)
    m, _ = _boundary.check_matrix("ref", ref, dtype=x.dtype, cols=d)
    labels = _boundary.check_labels("labels", labels, n)
    ref_labels = _boundary.check_labels("ref_labels", ref_labels, m)
    if self_index is not None:
        self_index = _boundary.check_labels("self_index", self_index, n)
    return device, n, d, m, labels, ref_labels, self_index


def _reference_checks(device, check, x, ref, labels, ref_labels, self_index, m):
    _boundary.check_values(device, check, {"x": x, "ref": ref}, ("x", "ref"))
    if self_index is not None:
        _boundary.check_self_index(device, check, self_index, labels, ref_labels, m)


def _reference_setup(ref_grad_index):
    """setup_context of a reference-set op returning (loss, count, dx, dref, *rest) whose
    ref_grad flag is input ``ref_grad_index``: keeps the gradients; the count of terms is
    piecewise constant and gets none."""
    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[2:])
        ctx.ref_grad = inputs[ref_grad_index]
    return setup


@_op("faceops::triplet_loss_ref")
def triplet_loss_ref(x: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor, self_index: Optional[Tensor],
                     margin: float, mining: str, squared: bool, ref_grad: bool,
                     check: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss, count, dx, dref) of the triplet loss of the anchors x against the candidates ref;
    count is the number of terms in the mean; dref is (0, D) when ref_grad is False."""
    device, n, d, m, labels, ref_labels, self_index = _reference_inputs(x, labels, ref, ref_labels, self_index)
    margin = _hyperparameters(_params.hinge_margin, _boundary.kernel_numpy_dtype(x.dtype), margin)
    mining = _params.choice("mining", mining, MINING_MODES)
    _reference_checks(device, check, x, ref, labels, ref_labels, self_index, m)
    x_in, ref_in = _boundary.compute_input(x), _boundary.compute_input(ref)
    loss, count, dx = _loss_like(x), _loss_like(x), torch.empty_like(x_in)
    dref = torch.empty_like(ref_in) if ref_grad else ref_in.new_empty((0, d))
    _boundary.call_kernel(_core.triplet_loss_ref, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(), n, d,
                          ref_in.data_ptr(), ref_labels.data_ptr(), m, _boundary.address(self_index), margin,
                          MINING_MODES[mining], squared, loss.data_ptr(), count.data_ptr(), dx.data_ptr(),
                          _boundary.address(dref if ref_grad else None))
    return _out(loss, x), count, _out(dx, x), _out(dref, ref)


@triplet_loss_ref.register_fake
def _(x, labels, ref, ref_labels, self_index, margin, mining, squared, ref_grad, check):
    _, _, d, _, _, _, _ = _reference_inputs(x, labels, ref, ref_labels, self_index)
    return x.new_empty(()), _loss_like(x), torch.empty_like(x), ref.new_empty(ref.shape if ref_grad else (0, d))


def _triplet_ref_backward(ctx, grad_loss, *_grad_outputs):
    dx, dref = ctx.saved_tensors
    dref = _scaled(grad_loss, dref) if _computed(ctx, 2, "ref_grad", "ref", ctx.ref_grad) else None
    return _scaled(grad_loss, dx), None, dref, None, None, None, None, None, None, None


_register_autograd(triplet_loss_ref, _triplet_ref_backward, _reference_setup(8))


# --- pair loss (csrc/faceops/pair_loss.h) -------------------------------------------------


def _pair_inputs(x, labels, theta):
    device, n, d, labels = _triplet_inputs(x, labels)
    _check_theta(x, theta)
    return device, n, d, labels


def _check_theta(x, theta):
    _boundary.device_of(x=x, theta=theta)
    if theta.dim() != 0 or not theta.is_floating_point():
        raise ValueError(f"theta: expected a 0-d floating-point tensor, got shape {tuple(theta.shape)} "
                         f"and dtype {theta.dtype}")


def _theta_input(theta, x_in):
    """theta in the kernels' dtype, on its device: the kernels read it by address, so it is
    never read on the host (no synchronisation on CUDA; a CUDA graph replays its current value)."""
    return theta.detach().to(x_in.dtype)


@_op("faceops::pair_loss")
def pair_loss(x: Tensor, labels: Tensor, theta: Tensor, check: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dx, dtheta) of the Multibatch pair loss; theta is a 0-d tensor."""
    device, n, d, labels = _pair_inputs(x, labels, theta)
    x_in = _boundary.compute_input(x)
    theta_in = _theta_input(theta, x_in)
    _boundary.check_values(device, check, {"x": x, "theta": theta_in}, ("x", "theta"))
    loss, dx, dtheta = _loss_like(x), torch.empty_like(x_in), _loss_like(x)
    _boundary.call_kernel(_core.pair_loss, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(), n, d,
                          theta_in.data_ptr(), loss.data_ptr(), dx.data_ptr(), dtheta.data_ptr())
    return _out(loss, x), _out(dx, x), _out(dtheta, theta)


@pair_loss.register_fake
def _(x, labels, theta, check):
    _pair_inputs(x, labels, theta)
    return x.new_empty(()), torch.empty_like(x), torch.empty_like(theta)


def _pair_backward(ctx, grad_loss, *_grad_gradients):
    dx, dtheta = ctx.saved_tensors
    return _scaled(grad_loss, dx), None, _scaled(grad_loss, dtheta), None


_register_autograd(pair_loss, _pair_backward, _setup_gradients)


@_op("faceops::pair_loss_ref")
def pair_loss_ref(x: Tensor, labels: Tensor, ref: Tensor, ref_labels: Tensor, self_index: Optional[Tensor],
                  theta: Tensor, ref_grad: bool, check: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss, count, dx, dref, dtheta) of the pair loss of the anchors x against the candidates
    ref; theta is a 0-d tensor."""
    device, n, d, m, labels, ref_labels, self_index = _reference_inputs(x, labels, ref, ref_labels, self_index)
    _check_theta(x, theta)
    _reference_checks(device, check, x, ref, labels, ref_labels, self_index, m)
    x_in, ref_in = _boundary.compute_input(x), _boundary.compute_input(ref)
    theta_in = _theta_input(theta, x_in)
    _boundary.check_values(device, check, {"theta": theta_in}, ("theta",))
    loss, count, dx, dtheta = _loss_like(x), _loss_like(x), torch.empty_like(x_in), _loss_like(x)
    dref = torch.empty_like(ref_in) if ref_grad else ref_in.new_empty((0, d))
    _boundary.call_kernel(_core.pair_loss_ref, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(), n, d,
                          ref_in.data_ptr(), ref_labels.data_ptr(), m, _boundary.address(self_index), theta_in.data_ptr(),
                          loss.data_ptr(), count.data_ptr(), dx.data_ptr(),
                          _boundary.address(dref if ref_grad else None), dtheta.data_ptr())
    return _out(loss, x), count, _out(dx, x), _out(dref, ref), _out(dtheta, theta)


@pair_loss_ref.register_fake
def _(x, labels, ref, ref_labels, self_index, theta, ref_grad, check):
    _, _, d, _, _, _, _ = _reference_inputs(x, labels, ref, ref_labels, self_index)
    _check_theta(x, theta)
    return (x.new_empty(()), _loss_like(x), torch.empty_like(x), ref.new_empty(ref.shape if ref_grad else (0, d)),
            torch.empty_like(theta))


def _pair_ref_backward(ctx, grad_loss, *_grad_outputs):
    dx, dref, dtheta = ctx.saved_tensors
    dref = _scaled(grad_loss, dref) if _computed(ctx, 2, "ref_grad", "ref", ctx.ref_grad) else None
    return _scaled(grad_loss, dx), None, dref, None, None, _scaled(grad_loss, dtheta), None, None


_register_autograd(pair_loss_ref, _pair_ref_backward, _reference_setup(6))


# --- contrastive loss (csrc/faceops/contrastive_loss.h) -----------------------------------


def _contrastive_inputs(a, b, similar):
    device = _boundary.device_of(a=a, b=b, similar=similar)
    n, d = _boundary.check_matrix("a", a)
    _boundary.check_matrix("b", b, dtype=a.dtype, rows=n, cols=d)
    if similar.dtype == torch.bool:
        similar = similar.to(torch.int64)
    return device, n, d, _boundary.check_labels("similar", similar, n)


@_op("faceops::contrastive_loss")
def contrastive_loss(a: Tensor, b: Tensor, similar: Tensor, margin: float, legacy: bool,
                     check: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, da, db) of BVLC Caffe's contrastive loss on pairs (a_i, b_i)."""
    device, n, d, similar = _contrastive_inputs(a, b, similar)
    margin = _hyperparameters(_params.hinge_margin, _boundary.kernel_numpy_dtype(a.dtype), margin)
    _boundary.check_values(device, check, {"a": a, "b": b}, ("a", "b"))
    a_in, b_in = _boundary.compute_input(a), _boundary.compute_input(b)
    loss, da, db = _loss_like(a), torch.empty_like(a_in), torch.empty_like(b_in)
    _boundary.call_kernel(_core.contrastive_loss, a_in.dtype, a.device, a_in.data_ptr(), b_in.data_ptr(),
                          similar.data_ptr(), n, d, margin, legacy, loss.data_ptr(), da.data_ptr(), db.data_ptr())
    return _out(loss, a), _out(da, a), _out(db, a)


@contrastive_loss.register_fake
def _(a, b, similar, margin, legacy, check):
    _contrastive_inputs(a, b, similar)
    return a.new_empty(()), torch.empty_like(a), torch.empty_like(b)


def _contrastive_backward(ctx, grad_loss, *_grad_gradients):
    da, db = ctx.saved_tensors
    return _scaled(grad_loss, da), _scaled(grad_loss, db), None, None, None, None


_register_autograd(contrastive_loss, _contrastive_backward, _setup_gradients)


# --- margin softmax (csrc/faceops/margin_softmax.h) ---------------------------------------


def _margin_softmax_inputs(x, labels, weight):
    device = _boundary.device_of(x=x, labels=labels, weight=weight)
    n, d = _boundary.check_matrix("x", x)
    num_classes, _ = _boundary.check_matrix("weight", weight, dtype=x.dtype, cols=d, classes=True)
    return device, n, d, num_classes, _boundary.check_labels("labels", labels, n)


@_op("faceops::margin_softmax_loss")
def margin_softmax_loss(x: Tensor, labels: Tensor, weight: Tensor, s: float, m1: float, m2: float, m3: float,
                        check: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, dx, dweight) of the combined-margin softmax over all rows of weight."""
    device, n, d, num_classes, labels = _margin_softmax_inputs(x, labels, weight)
    s = _hyperparameters(_params.scale, _boundary.kernel_numpy_dtype(x.dtype), s)
    m1, m2, m3 = _hyperparameters(_params.margins, _boundary.kernel_numpy_dtype(x.dtype), m1, m2, m3)
    _boundary.check_values(device, check, {"x": x, "weight": weight}, ("x", "weight"), labels, num_classes)
    x_in, weight_in = _boundary.compute_input(x), _boundary.compute_input(weight)
    loss, dx, dweight = _loss_like(x), torch.empty_like(x_in), torch.empty_like(weight_in)
    _boundary.call_kernel(_core.margin_softmax_loss, x_in.dtype, x.device, x_in.data_ptr(), labels.data_ptr(),
                          weight_in.data_ptr(), n, d, num_classes, s, m1, m2, m3, loss.data_ptr(),
                          dx.data_ptr(), dweight.data_ptr())
    return _out(loss, x), _out(dx, x), _out(dweight, weight)


@margin_softmax_loss.register_fake
def _(x, labels, weight, s, m1, m2, m3, check):
    _margin_softmax_inputs(x, labels, weight)
    return x.new_empty(()), torch.empty_like(x), torch.empty_like(weight)


def _margin_softmax_backward(ctx, grad_loss, *_grad_gradients):
    dx, dweight = ctx.saved_tensors
    return _scaled(grad_loss, dx), None, _scaled(grad_loss, dweight), None, None, None, None, None


_register_autograd(margin_softmax_loss, _margin_softmax_backward, _setup_gradients)


def _target_margin_inputs(cosine, labels, d_out=None):
    tensors = dict(cosine=cosine, labels=labels) if d_out is None else dict(cosine=cosine, labels=labels, d_out=d_out)
    device = _boundary.device_of(**tensors)
    n, num_classes = _boundary.check_matrix("cosine", cosine)
    if d_out is not None:
        _boundary.check_matrix("d_out", d_out, dtype=cosine.dtype, rows=n, cols=num_classes)
    return device, n, num_classes, _boundary.check_labels("labels", labels, n)


@_op("faceops::target_margin_forward")
def target_margin_forward(cosine: Tensor, labels: Tensor, m1: float, m2: float, m3: float, check: bool) -> Tensor:
    """A copy of the (N, C) cosines with entry (i, labels[i]) replaced by psi of it."""
    device, n, num_classes, labels = _target_margin_inputs(cosine, labels)
    margin = _hyperparameters(_params.margins, _boundary.kernel_numpy_dtype(cosine.dtype), m1, m2, m3)
    _boundary.check_values(device, check, {"cosine": cosine}, ("cosine",), labels, num_classes)
    cosine_in = _boundary.compute_input(cosine)
    out = torch.empty_like(cosine_in)
    _boundary.call_kernel(_core.target_margin_forward, cosine_in.dtype, cosine.device, cosine_in.data_ptr(),
                          labels.data_ptr(), n, num_classes, *margin, out.data_ptr())
    return _out(out, cosine)


@target_margin_forward.register_fake
def _(cosine, labels, m1, m2, m3, check):
    _target_margin_inputs(cosine, labels)
    return torch.empty_like(cosine)


@_op("faceops::target_margin_backward")
def target_margin_backward(cosine: Tensor, labels: Tensor, d_out: Tensor, m1: float, m2: float, m3: float,
                           check: bool) -> Tensor:
    """d_cosine = d_out with entry (i, labels[i]) multiplied by dpsi/dc at the cosine."""
    device, n, num_classes, labels = _target_margin_inputs(cosine, labels, d_out)
    margin = _hyperparameters(_params.margins, _boundary.kernel_numpy_dtype(cosine.dtype), m1, m2, m3)
    _boundary.check_values(device, check, {"cosine": cosine, "d_out": d_out}, ("cosine", "d_out"), labels, num_classes)
    cosine_in, d_out_in = _boundary.compute_input(cosine), _boundary.compute_input(d_out)
    d_cosine = torch.empty_like(cosine_in)
    _boundary.call_kernel(_core.target_margin_backward, cosine_in.dtype, cosine.device, cosine_in.data_ptr(),
                          labels.data_ptr(), d_out_in.data_ptr(), n, num_classes, *margin, d_cosine.data_ptr())
    return _out(d_cosine, cosine)


@target_margin_backward.register_fake
def _(cosine, labels, d_out, m1, m2, m3, check):
    _target_margin_inputs(cosine, labels, d_out)
    return torch.empty_like(cosine)


def _target_margin_setup(ctx, inputs, output):
    cosine, labels, m1, m2, m3, _check = inputs
    ctx.save_for_backward(cosine, labels)
    ctx.margin = (m1, m2, m3)


def _target_margin_backward(ctx, grad_out):
    cosine, labels = ctx.saved_tensors
    # The backward op's own inputs were checked by the forward; the incoming gradient
    # may be non-contiguous (an expanded sum's), which the kernel cannot read.
    try:
        d_cosine = target_margin_backward(cosine, labels, grad_out.contiguous(), *ctx.margin, False)
    except ValueError as error:  # the CPU core checks d_out whatever `check` says
        raise ValueError(f"target_margin's backward: the gradient arriving from the layers above it ({error}); "
                         "the loss above the margin is not finite") from None
    return d_cosine, None, None, None, None, None


_register_autograd(target_margin_forward, _target_margin_backward, _target_margin_setup)


OPS = (center_loss, center_update_direction, center_update, triplet_loss, triplet_loss_explicit, triplet_loss_ref,
       pair_loss, pair_loss_ref, contrastive_loss, margin_softmax_loss, target_margin_forward, target_margin_backward)

for _op in OPS:
    if _op is not center_update:
        for _device_type in ("cpu", "cuda"):
            torch.library.register_autocast(_op, _device_type, torch.float32)
