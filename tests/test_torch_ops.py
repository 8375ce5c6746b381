"""The faceops:: torch ops on the CPU: opcheck, gradcheck (float64), bitwise parity
with the NumPy ops (the same kernels), float16/bfloat16 against the float64
reference, autocast, zero copy, and bad input.  CUDA: tests/test_torch_cuda.py."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs PyTorch (pip install '.[torch]')")

import faceops
import faceops.torch as ft
from faceops import reference
from faceops.torch import _library
from testing import MININGS, kink_free_batch, kink_gap_pair, kink_gap_triplet

# Half-precision inputs run the float32 kernels; compared with the float64 reference on the
# same (rounded) inputs, the error is the float32 accumulation plus the rounding of the
# result to the input dtype: |got - ref| <= rtol * max|ref| (per output).
HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _batch(seed, n=12, d=6, classes=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    labels = torch.arange(n) % classes
    return x.to(dtype), labels[torch.randperm(n, generator=g)]


def _op_cases(dtype):
    """One valid argument tuple per op (name -> args), float tensors in dtype."""
    x, labels = _batch(0, dtype=dtype)
    g = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)

    cosine = (torch.rand(12, 5, generator=g, dtype=torch.float64) * 1.8 - 0.9).to(dtype)
    similar = torch.arange(12) % 2
    theta = torch.tensor(1.0, dtype=dtype)
    ref, ref_labels = randn(9, 6), torch.arange(9) % 4
    self_index = torch.tensor([0, -1, 5, -1, -1, 2, -1, -1, 8, -1, -1, -1])
    ref_labels[self_index[self_index >= 0]] = labels[self_index >= 0]  # own copies carry the anchor's label
    return {
        "center_loss": (x, labels, randn(4, 6), True, True),
        "center_update_direction": (x, labels, randn(4, 6), True),
        "center_update": (x, labels, randn(4, 6), 0.5, True),
        "triplet_loss": (x, labels, 0.2, "semihard", True, True),
        "triplet_loss_explicit": (randn(12, 6), randn(12, 6), randn(12, 6), 1.0, True),
        "pair_loss": (x, labels, theta, True),
        "triplet_loss_ref": (x, labels, ref, ref_labels, self_index, 0.2, "semihard", True, True, True),
        "pair_loss_ref": (x, labels, ref, ref_labels, self_index, theta, True, True),
        "contrastive_loss": (randn(12, 6), randn(12, 6), similar, 1.0, False, True),
        "margin_softmax_loss": (x, labels, randn(5, 6), 8.0, 1.0, 0.5, 0.0, True),
        "target_margin_forward": (cosine, labels, 1.0, 0.5, 0.0, True),
        "target_margin_backward": (cosine, labels, randn(12, 5), 1.0, 0.5, 0.0, True),
    }


DIFFERENTIABLE = {  # op -> positions of its differentiable inputs
    "center_loss": (0, 2), "triplet_loss": (0,), "triplet_loss_explicit": (0, 1, 2), "pair_loss": (0, 2),
    "triplet_loss_ref": (0, 2), "pair_loss_ref": (0, 2, 5), "contrastive_loss": (0, 1), "margin_softmax_loss": (0, 2), "target_margin_forward": (0,),
}


def test_every_kernel_entry_is_an_op():
    kernels = {"center_loss", "center_update_direction", "center_update", "contrastive_loss", "margin_softmax_loss",
               "target_margin_forward", "target_margin_backward", "pair_loss", "triplet_loss",
               "triplet_loss_explicit", "triplet_loss_ref", "pair_loss_ref"}
    assert {op._qualname for op in _library.OPS} == {f"faceops::{name}" for name in kernels}
    assert set(_op_cases(torch.float64)) == kernels
    for name in kernels:
        assert getattr(torch.ops.faceops, name).default._schema.name == f"faceops::{name}"


def test_center_update_declares_its_mutation():
    (argument,) = [a for a in torch.ops.faceops.center_update.default._schema.arguments if a.alias_info]
    assert argument.name == "centers" and argument.alias_info.is_write


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(_op_cases(torch.float64)))
def test_opcheck(name, dtype):
    args = list(_op_cases(dtype)[name])
    for position in DIFFERENTIABLE.get(name, ()):
        args[position] = args[position].clone().requires_grad_()
    torch.library.opcheck(getattr(torch.ops.faceops, name).default, tuple(args))


def _gradcheck(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("squared", [True, False])
def test_gradcheck_triplet(mining, squared):
    x, labels = kink_free_batch(1, 4, 3, 5, lambda x, y: kink_gap_triplet(x, y, 0.3, squared))
    labels = torch.from_numpy(labels)
    _gradcheck(lambda z: ft.triplet_loss(z, labels, 0.3, mining, squared), torch.from_numpy(x))


def test_gradcheck_pair():
    x, labels = kink_free_batch(2, 4, 3, 5, lambda x, y: kink_gap_pair(x, y, 1.5))
    labels = torch.from_numpy(labels)
    _gradcheck(lambda z, theta: ft.pair_loss(z, labels, theta), torch.from_numpy(x), torch.tensor(1.5, dtype=torch.float64))


def test_gradcheck_center_loss():
    x, labels = _batch(3)
    _gradcheck(lambda z, c: ft.center_loss(z, labels, c), x, torch.randn(5, 6, dtype=torch.float64))


@pytest.mark.parametrize("legacy", [False, True])
def test_gradcheck_contrastive(legacy):
    a, _ = _batch(4)
    b, _ = _batch(5)
    # margin 1.3: no distance (or squared distance) of these pairs lies within 1e-3 of it
    distance = (a - b).norm(dim=1)
    assert ((distance**2 if legacy else distance) - 1.3).abs().min() > 1e-3
    similar = torch.arange(12) % 2 == 0
    _gradcheck(lambda p, q: ft.contrastive_loss(p, q, similar, 1.3, legacy), a, b)


def test_gradcheck_explicit_triplets():
    anchor, positive, negative = (_batch(seed)[0] for seed in (6, 7, 8))
    _gradcheck(lambda a, p, n: ft.triplet_loss_explicit(a, p, n, 1.0), anchor, positive, negative)


@pytest.mark.parametrize("margin", ["arcface", "cosface", "sphereface", "combined"])
def test_gradcheck_margin_softmax(margin):
    x, labels = _batch(9)
    m1, m2, m3 = faceops.MARGINS[margin]
    _gradcheck(lambda z, w: ft.margin_softmax_loss(z, labels, w, 8.0, m1, m2, m3), x,
               torch.randn(4, 6, dtype=torch.float64))


def test_gradcheck_partial_fc():
    x, labels = _batch(10)

    def loss(z, w):  # the same sample on every evaluation
        return ft.margin_softmax_loss(z, labels, w, 8.0, sample_rate=0.5,
                                      generator=torch.Generator().manual_seed(0))

    _gradcheck(loss, x, torch.randn(20, 6, dtype=torch.float64))


def test_gradcheck_target_margin_through_its_backward_op():
    cosine = torch.rand(6, 5, dtype=torch.float64) * 1.8 - 0.9
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    _gradcheck(lambda c: ft.target_margin(c, labels, 1.0, 0.5, 0.0), cosine)


# --- parity with the NumPy ops: the same kernels, so the same bits ------------------------


def _numpy(t):
    return t.detach().numpy()


def _assert_same(got, expected):
    """Equal bits: arrays of one dtype, or the kernel's loss that NumPy returns as a float."""
    got = got.detach().numpy()
    if isinstance(expected, float):
        assert got.shape == () and float(got) == expected
        return
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_losses_are_bitwise_the_numpy_ops(dtype):
    cases = _op_cases(dtype)
    x, labels, centers, _, _ = cases["center_loss"]
    loss, dx, dcenters = _library.center_loss(*cases["center_loss"])
    for got, want in zip((loss, dx, dcenters), faceops.center_loss(_numpy(x), _numpy(labels), _numpy(centers))):
        _assert_same(got, want)
    _assert_same(_library.center_update_direction(x, labels, centers, True),
                 faceops.center_update_direction(_numpy(x), _numpy(labels), _numpy(centers)))
    moved, moved_numpy = centers.clone(), _numpy(centers).copy()
    _library.center_update(x, labels, moved, 0.5, True)
    faceops.center_update(_numpy(x), _numpy(labels), moved_numpy, 0.5)
    _assert_same(moved, moved_numpy)
    for mining in MININGS:
        for squared in (True, False):
            got = _library.triplet_loss(x, labels, 0.2, mining, squared, True)
            for g, w in zip(got, faceops.triplet_loss(_numpy(x), _numpy(labels), 0.2, mining, squared)):
                _assert_same(g, w)
    explicit = cases["triplet_loss_explicit"]
    for g, w in zip(_library.triplet_loss_explicit(*explicit), faceops.triplet_loss_explicit(*map(_numpy, explicit[:3]), 1.0)):
        _assert_same(g, w)
    theta = torch.tensor(1.0, dtype=dtype)
    for g, w in zip(_library.pair_loss(x, labels, theta, True), faceops.pair_loss(_numpy(x), _numpy(labels), 1.0)):
        _assert_same(g, w)
    a, b, similar = cases["contrastive_loss"][:3]
    for legacy in (False, True):
        got = _library.contrastive_loss(a, b, similar, 1.0, legacy, True)
        for g, w in zip(got, faceops.contrastive_loss(_numpy(a), _numpy(b), _numpy(similar), 1.0, legacy)):
            _assert_same(g, w)
    weight = cases["margin_softmax_loss"][2]
    got = _library.margin_softmax_loss(x, labels, weight, 8.0, 1.0, 0.5, 0.0, True)
    for g, w in zip(got, faceops.margin_softmax_loss(_numpy(x), _numpy(labels), _numpy(weight), 8.0, 1.0, 0.5, 0.0)):
        _assert_same(g, w)
    cosine, _, d_out = cases["target_margin_backward"][:3]
    from faceops import ops

    _assert_same(_library.target_margin_forward(cosine, labels, 1.0, 0.5, 0.0, True),
                 ops.target_margin_forward(_numpy(cosine), _numpy(labels)))
    _assert_same(_library.target_margin_backward(cosine, labels, d_out, 1.0, 0.5, 0.0, True),
                 ops.target_margin_backward(_numpy(cosine), _numpy(labels), _numpy(d_out)))


def test_autograd_gradients_are_the_kernels_scaled():
    x, labels = _batch(11, dtype=torch.float32)
    x.requires_grad_()
    (3.0 * ft.triplet_loss(x, labels, 0.2, "all")).backward()
    _, dx = faceops.triplet_loss(_numpy(x), _numpy(labels), 0.2, "all")
    torch.testing.assert_close(x.grad, torch.from_numpy(3.0 * dx), rtol=0, atol=0)


# The two ways a loss op runs: through the dispatcher, and in plain eager mode as its own
# pieces in an autograd.Function (_library.call, which the functional forms use).
CALLS = {"dispatched": lambda op, *args: op(*args), "eager": _library.call}


@pytest.mark.parametrize("path", sorted(CALLS))
@pytest.mark.parametrize("name", sorted(set(DIFFERENTIABLE) - {"target_margin_forward"}))
def test_a_unit_backward_hands_out_the_saved_gradients(name, path):
    """loss.backward() on the CPU (incoming gradient 1, graph not kept) returns the kernel's
    gradients as they are: no multiplication, no copy; the gradients stay the kernel's."""
    args = list(_op_cases(torch.float64)[name])
    for position in DIFFERENTIABLE[name]:
        args[position] = args[position].clone().requires_grad_()
    outputs = CALLS[path](getattr(_library, name), *args)
    expected = [gradient.clone() for gradient in outputs[1:]]
    loss = outputs[0]
    del outputs
    with torch.profiler.profile() as profile:
        loss.backward()
    made = {event.name for event in profile.events()}
    assert not made & {"aten::mul", "aten::copy_", "aten::clone"}, made
    grads = [args[position].grad for position in DIFFERENTIABLE[name]]
    assert any(torch.equal(grads[0], gradient) for gradient in expected)


def _leaf_arguments(name, dtype):
    """_op_cases' arguments of op ``name`` with fresh leaves at its differentiable positions."""
    args = list(_op_cases(dtype)[name])
    for position in DIFFERENTIABLE[name]:
        args[position] = args[position].clone().requires_grad_()
    return args


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(DIFFERENTIABLE))
def test_plain_eager_calls_leave_out_the_dispatcher_with_the_same_bits(name, dtype):
    """_library.call runs a loss op in plain eager mode as an autograd.Function of the op's own
    implementation, setup_context and backward: outputs and gradients (also scaled by an
    incoming gradient of 3) are the dispatched op's, bit for bit."""
    op = getattr(_library, name)
    results = {}
    for path, run in CALLS.items():
        args = _leaf_arguments(name, dtype)
        outputs = run(op, *args)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        backward_name = type(outputs[0].grad_fn).__name__
        assert backward_name.endswith("_eagerBackward") == (path == "eager"), (path, backward_name)
        (3.0 * outputs[0].sum()).backward()
        results[path] = [t.detach() for t in outputs] + [args[p].grad for p in DIFFERENTIABLE[name]]
    for got, expected in zip(results["eager"], results["dispatched"]):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_modes_tracers_and_autocast_get_the_dispatched_op():
    """Whatever may watch or transform a call (a dispatch mode, a function mode such as
    torch.device, fake tensors, autocast, a profiler) sees torch.ops.faceops.*, as before."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, labels = _batch(28)
    x.requires_grad_()
    with Recorder() as recorder:
        ft.triplet_loss(x, labels, 0.2, "hard")
    assert "faceops.triplet_loss.default" in recorder.ops
    for context in (torch.device("cpu"), torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile()):
        with context as watcher:
            loss = ft.triplet_loss(x, labels, 0.2, "hard")
        assert "faceops_triplet_loss" in type(loss.grad_fn).__name__
        if isinstance(watcher, torch.profiler.profile):
            assert "faceops::triplet_loss" in {event.name for event in watcher.events()}
    with FakeTensorMode():
        fake = ft.triplet_loss(torch.empty(12, 6), torch.zeros(12, dtype=torch.int64))
    assert type(fake).__name__ == "FakeTensor" and fake.shape == ()
    assert ft.triplet_loss(x, labels, 0.2, "hard").grad_fn.__class__.__name__ == "triplet_loss_eagerBackward"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_plain_eager_centre_updates_are_the_dispatched_ops_and_bump_the_version(dtype):
    """center_update_direction and center_update run as their implementations in plain eager
    mode: the same bits as through the dispatcher, and center_update bumps the centres' version
    as the dispatcher does, so a backward that saved them before the write is refused."""
    results = {}
    for path, run in CALLS.items():
        x, labels, centers, alpha, check = _op_cases(dtype)["center_update"]
        direction = run(_library.center_update_direction, x, labels, centers, check)
        saved = centers.clone().requires_grad_()
        product = (saved * saved).sum()  # saves `saved` for its backward
        version = saved._version
        with torch.no_grad():
            run(_library.center_update, x, labels, saved, alpha, check)
        assert saved._version > version, path
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            product.backward()
        results[path] = (direction, saved.detach())
    for got, expected in zip(results["eager"], results["dispatched"]):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_an_op_without_autograd_keeps_the_dispatchers_refusal_of_a_backward():
    """center_update_direction has no gradient: with an input that requires grad, call() takes
    the dispatcher, whose backward says so, rather than returning a tensor without a gradient."""
    x, labels, centers, check = _op_cases(torch.float64)["center_update_direction"]
    direction = _library.call(_library.center_update_direction, x.clone().requires_grad_(), labels, centers, check)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        direction.sum().backward()


@pytest.mark.parametrize("path", sorted(CALLS))
def test_a_second_backward_without_the_graph_is_refused(path):
    """The saved gradients are saved tensors on both paths: freed by the first backward, so a
    second one fails as autograd's own do, instead of handing out the first one's buffer again."""
    args = _leaf_arguments("triplet_loss", torch.float64)
    loss = CALLS[path](_library.triplet_loss, *args)[0]
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


@pytest.mark.parametrize("loss_name", ["triplet_all", "contrastive"])
def test_a_retained_graph_never_hands_out_the_saved_gradients(loss_name):
    """With retain_graph the saved gradients are read again: what one backward returns is the
    caller's to change, and a second backward still gives the kernel's gradient."""
    x, labels = _batch(12, dtype=torch.float32)
    x.requires_grad_()
    if loss_name == "contrastive":
        loss = ft.contrastive_loss(x[:6], x[6:], (labels[:6] == labels[6:]).long())
    else:
        loss = ft.triplet_loss(x, labels, 0.2, "all")
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    expected = first.clone()
    first.zero_()
    (second,) = torch.autograd.grad(loss, x, retain_graph=True)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    loss.backward(retain_graph=True)
    x.grad.zero_()
    loss.backward()
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)
    assert expected.abs().max() > 0


@pytest.mark.parametrize("path", sorted(CALLS))
@pytest.mark.parametrize("name", sorted(set(DIFFERENTIABLE) - {"target_margin_forward"}))
def test_backward_makes_no_zero_gradients_for_the_gradient_outputs(name, path):
    """A loss op returns its gradients beside the loss; they get no gradient themselves, and
    autograd must not build N x D zeros for them on every backward (materialize_grads off)."""
    args = list(_op_cases(torch.float64)[name])
    for position in DIFFERENTIABLE[name]:
        args[position] = args[position].clone().requires_grad_()
    loss = CALLS[path](getattr(_library, name), *args)[0]
    with torch.profiler.profile() as profile:
        loss.backward()
    made = {event.name for event in profile.events()}
    assert not made & {"aten::zeros", "aten::zero_", "aten::zeros_like"}, made
    for position in DIFFERENTIABLE[name]:
        assert args[position].grad is not None and torch.isfinite(args[position].grad).all()


def test_int32_labels_and_bool_similar_match_int64():
    x, labels = _batch(12)
    assert torch.equal(ft.triplet_loss(x, labels.int()), ft.triplet_loss(x, labels))
    a, b = _batch(13)[0], _batch(14)[0]
    similar = torch.arange(12) % 3 == 0
    assert torch.equal(ft.contrastive_loss(a, b, similar), ft.contrastive_loss(a, b, similar.long()))


# --- half precision ------------------------------------------------------------------------


def _reference_outputs(name, args):
    """The float64 reference's outputs on the same (rounded) inputs, as the op orders them."""
    wide = [a.double().numpy() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    wide = [a.numpy() if isinstance(a, torch.Tensor) else a for a in wide]
    if name == "center_loss":
        return reference.center_loss(*wide[:3])
    if name == "center_update_direction":
        return (reference.center_update_direction(*wide[:3]),)
    if name == "center_update":
        centers = wide[2].copy()
        reference.center_update(wide[0], wide[1], centers, wide[3])
        return (centers,)
    if name == "triplet_loss":
        return reference.triplet_loss(*wide[:5])
    if name == "triplet_loss_explicit":
        return reference.triplet_loss_explicit(*wide[:4])
    if name == "triplet_loss_ref":
        return reference.triplet_loss_ref(*wide[:4], *wide[5:8], self_index=wide[4])
    if name == "pair_loss_ref":
        return reference.pair_loss_ref(*wide[:4], float(wide[5]), self_index=wide[4])
    if name == "pair_loss":
        return reference.pair_loss(wide[0], wide[1], float(wide[2]))
    if name == "contrastive_loss":
        return reference.contrastive_loss(*wide[:5])
    if name == "margin_softmax_loss":
        return reference.margin_softmax_loss(*wide[:7])
    cosine, labels = wide[0], wide[1]
    rows = np.arange(len(labels))
    psi, dpsi = reference.margin_target(cosine[rows, labels], *wide[-4:-1])
    if name == "target_margin_forward":
        out = cosine.copy()
        out[rows, labels] = psi
        return (out,)
    d_cosine = wide[2].copy()
    d_cosine[rows, labels] *= dpsi
    return (d_cosine,)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(_op_cases(torch.float64)))
def test_half_precision_against_float64_reference(name, dtype):
    args = _op_cases(dtype)[name]
    if name == "triplet_loss":  # kink-free after rounding: float32 mining decides as float64 does
        x, labels = kink_free_batch(3, 4, 3, 6, lambda x, y: kink_gap_triplet(x, y, 0.2, True))
        args = (torch.from_numpy(x).to(dtype), torch.from_numpy(labels), *args[2:])
        assert kink_gap_triplet(args[0].double().numpy(), labels, 0.2, True) > 1e-4
    if name == "pair_loss":
        x, labels = kink_free_batch(4, 4, 3, 6, lambda x, y: kink_gap_pair(x, y, 1.0))
        args = (torch.from_numpy(x).to(dtype), torch.from_numpy(labels), *args[2:])
        assert kink_gap_pair(args[0].double().numpy(), labels, 1.0) > 1e-4
    if name in ("triplet_loss_ref", "pair_loss_ref"):  # anchors: the first 7 rows of such a batch
        gap = (lambda x, y: kink_gap_triplet(x, y, 0.2, True)) if name == "triplet_loss_ref" else (
            lambda x, y: kink_gap_pair(x, y, 1.0))
        x, labels = kink_free_batch(5, 4, 3, 6, gap)
        ref = torch.from_numpy(x).to(dtype)
        args = (ref[:7].clone(), torch.from_numpy(labels[:7]), ref, torch.from_numpy(labels), torch.arange(7),
                *args[5:])
        assert gap(ref.double().numpy(), labels) > 1e-4
    expected = _reference_outputs(name, args)
    if name == "center_update":
        _library.center_update(*args)
        got = (args[2],)
    else:
        got = getattr(_library, name)(*args)
        got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        e = np.asarray(e, dtype=np.float64)
        # a reference-set op's count of terms stays in the float32 it was counted in
        assert g.dtype == (torch.float32 if name.endswith("_ref") and index == 1 else dtype)
        assert tuple(g.shape) == e.shape
        scale = max(np.abs(e).max(), 1e-3)
        np.testing.assert_allclose(g.double().numpy(), e, rtol=0, atol=HALF_RTOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_gradients_come_back_in_the_input_dtype(dtype):
    x, labels = _batch(15, dtype=dtype)
    x.requires_grad_()
    head = ft.ArcFace(4, 6, s=8.0, dtype=dtype)
    loss = head(x, labels)
    loss.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype and head.weight.grad.dtype == dtype
    # the float32 kernels on the upcast inputs, the result rounded to dtype
    _, dx, dweight = faceops.margin_softmax_loss(x.detach().float().numpy(), labels.numpy(),
                                                 head.weight.detach().float().numpy(), 8.0, 1.0, 0.5, 0.0)
    assert torch.equal(x.grad, torch.from_numpy(dx).to(dtype))
    assert torch.equal(head.weight.grad, torch.from_numpy(dweight).to(dtype))


def test_autocast_runs_the_losses_in_float32():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 6)
    x, labels = torch.randn(12, 8), torch.arange(12) % 4
    head, centers = ft.ArcFace(4, 6, s=8.0), ft.CenterLoss(4, 6, alpha=0.5)
    before = centers.centers.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = model(x)
        assert embeddings.dtype == torch.bfloat16
        arcface, center, triplet = head(embeddings, labels), centers(embeddings, labels), ft.triplet_loss(embeddings, labels)
    for loss in (arcface, center, triplet):
        assert loss.dtype == torch.float32
    wide = embeddings.detach().float()
    assert torch.equal(arcface, ft.margin_softmax_loss(wide, labels, head.weight, 8.0))
    assert torch.equal(triplet, ft.triplet_loss(wide, labels))
    moved = before.clone()
    ft.center_update_(wide, labels, moved, 0.5)
    assert torch.equal(centers.centers, moved) and not torch.equal(moved, before)
    (arcface + center + triplet).backward()
    assert model.weight.grad.dtype == torch.float32 and torch.isfinite(model.weight.grad).all()


# --- zero copy, output placement -----------------------------------------------------------


def test_float32_tensors_reach_the_kernel_by_their_own_address(monkeypatch):
    seen = []
    kernel = faceops._core.margin_softmax_loss

    def spy(dtype, device, x, labels, weight, *rest):
        seen.append((dtype, device, x, labels, weight, rest[-1]))
        return kernel(dtype, device, x, labels, weight, *rest)

    monkeypatch.setattr(faceops._core, "margin_softmax_loss", spy)
    x, labels = _batch(16, dtype=torch.float32)
    weight = torch.randn(4, 6)
    loss = ft.margin_softmax_loss(x, labels, weight, 8.0)
    assert seen == [("float32", "cpu", x.data_ptr(), labels.data_ptr(), weight.data_ptr(), 0)]
    assert loss.dim() == 0 and loss.device == x.device and loss.dtype == torch.float32


def test_half_tensors_reach_the_kernel_as_float32_copies(monkeypatch):
    seen = []
    kernel = faceops._core.triplet_loss

    def spy(dtype, device, x, *rest):
        seen.append((dtype, x))
        return kernel(dtype, device, x, *rest)

    monkeypatch.setattr(faceops._core, "triplet_loss", spy)
    x, labels = _batch(17, dtype=torch.float16)
    ft.triplet_loss(x, labels)
    assert seen[0][0] == "float32" and seen[0][1] != x.data_ptr()


# --- bad input -----------------------------------------------------------------------------


def test_labels_that_require_grad_or_are_float_are_refused():
    x, labels = _batch(18)
    with pytest.raises(TypeError, match="labels: expected integer labels that do not require grad"):
        ft.triplet_loss(x, labels.double().requires_grad_())
    with pytest.raises(TypeError, match="labels: expected dtype int32 or int64, got torch.float32"):
        ft.triplet_loss(x, labels.float())
    with pytest.raises(TypeError, match="labels: expected dtype int32 or int64"):
        ft.margin_softmax_loss(x, labels.float(), torch.randn(4, 6, dtype=torch.float64), sample_rate=0.5)


def test_wrong_shapes_name_the_argument():
    x, labels = _batch(19)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \(N, D\), got shape \(72,\)"):
        ft.triplet_loss(x.reshape(-1), labels)
    with pytest.raises(ValueError, match=r"labels: expected shape \(12,\), got \(11,\)"):
        ft.triplet_loss(x, labels[:11])
    with pytest.raises(ValueError, match="centers: expected 6 columns"):
        ft.center_loss(x, labels, torch.zeros(4, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight: expected dtype torch.float64 like the features, got torch.float32"):
        ft.margin_softmax_loss(x, labels, torch.zeros(4, 6))
    with pytest.raises(ValueError, match=r"b: expected 12 rows"):
        ft.contrastive_loss(x, x[:6], labels)
    with pytest.raises(ValueError, match="x: empty batch"):
        ft.triplet_loss(x[:0], labels[:0])
    with pytest.raises(ValueError, match="theta: expected a 0-d floating-point tensor"):
        ft.pair_loss(x, labels, torch.ones(1, dtype=torch.float64))
    with pytest.raises(TypeError, match="x: expected dtype float16, bfloat16, float32 or float64, got torch.int64"):
        ft.triplet_loss(labels[:, None].expand(12, 2).contiguous(), labels)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor, got ndarray"):
        ft.triplet_loss(x.numpy(), labels)
    with pytest.raises(RuntimeError, match="for argument 'x' but instead found type 'ndarray'"):
        torch.ops.faceops.triplet_loss(x.numpy(), labels, 0.2, "semihard", True, True)


def test_non_contiguous_tensors_are_refused_not_copied():
    x, labels = _batch(20)
    wide = torch.randn(6, 12, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x: expected a contiguous tensor .*pass x.contiguous\(\)"):
        ft.triplet_loss(wide.t(), labels)
    with pytest.raises(ValueError, match="labels: expected a contiguous tensor"):
        ft.triplet_loss(x, (torch.arange(24) % 4)[::2])
    with pytest.raises(ValueError, match="weight: expected a contiguous tensor"):
        ft.margin_softmax_loss(x, labels, torch.randn(6, 4, dtype=torch.float64).t())
    with pytest.raises(ValueError, match="centers: expected a contiguous tensor"):
        ft.center_update_(x, labels, torch.zeros(6, 4, dtype=torch.float64).t(), 0.5)
    # the documented way out gives the loss of the same values
    loss, _ = faceops.triplet_loss(np.ascontiguousarray(wide.numpy().T), labels.numpy())
    assert ft.triplet_loss(wide.t().contiguous(), labels).item() == loss


def test_tensors_on_different_devices_are_refused():
    x, labels = _batch(21)
    with pytest.raises(ValueError, match=r"arguments are on different devices \(x on cpu, labels on meta\)"):
        ft.triplet_loss(x, labels.to("meta"))
    with pytest.raises(ValueError, match=r"x on cpu, labels on cpu, weight on meta"):
        ft.margin_softmax_loss(x, labels, torch.zeros(4, 6, dtype=torch.float64, device="meta"))


def test_nan_is_refused_with_checks_on():
    x, labels = _batch(22)
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        ft.triplet_loss(bad, labels)  # the CPU core's own check, always on
    centers = torch.zeros(4, 6, dtype=torch.float64)
    centers[1, 0] = float("inf")
    with pytest.raises(ValueError, match="centers: .*NaN or Inf"):
        ft.center_loss(x, labels, centers)
    cosine = torch.zeros(12, 4, dtype=torch.float64)
    cosine[0, 0] = float("nan")
    with pytest.raises(ValueError, match="cosine: contains NaN or Inf"):
        ft.target_margin(cosine, labels)
    # check=False switches off only the front's own checks: the CPU core checks every float input itself
    with pytest.raises(ValueError, match="centers: .*NaN or Inf"):
        ft.center_loss(x, labels, centers, check=False)


def test_labels_out_of_range_are_refused():
    x, labels = _batch(23)
    with pytest.raises(ValueError, match="labels: label 3 at index .* out of range; expected 0 <= label < 3"):
        ft.margin_softmax_loss(x, labels, torch.randn(3, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="labels: out of range; expected 0 <= label < 3"):
        ft.margin_softmax_loss(x, labels, torch.randn(3, 6, dtype=torch.float64), sample_rate=0.5)
    with pytest.raises(ValueError, match="labels: label -1 at index 0 is out of range"):
        ft.center_loss(x, torch.cat([torch.tensor([-1]), labels[1:]]), torch.zeros(4, 6, dtype=torch.float64))


def test_partial_fc_refuses_labels_out_of_range_on_the_cpu_even_with_check_off():
    """Partial FC renumbers the labels before the kernel sees them (a -1 would pass as class
    C - 1), so on the CPU the op checks them itself, whatever check says."""
    x, labels = _batch(23)
    weight = torch.randn(4, 6, dtype=torch.float64)
    for bad in (-1, -4, 4):
        wrong = torch.cat([torch.tensor([bad]), labels[1:]])
        with pytest.raises(ValueError, match="labels: out of range; expected 0 <= label < 4"):
            ft.margin_softmax_loss(x, wrong, weight, sample_rate=0.5, check=False)
        with pytest.raises(ValueError, match="labels: out of range; expected 0 <= label < 4"):
            ft.sample_classes(wrong, 4, 0.5, check=False)
    with pytest.raises(ValueError, match=r"labels: expected shape \(N,\), got \(3, 4\)"):
        ft.sample_classes(labels.reshape(3, 4), 4, 0.5)
    with pytest.raises(ValueError, match="sample_rate: expected 0 < sample_rate <= 1"):
        ft.sample_classes(labels, 4, 0.0)


def test_center_update_refuses_x_that_shares_memory_with_the_centers():
    """x a view of the centres would be read while the kernel writes them (as the NumPy front)."""
    centers = torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([1, 2, 0])
    before = centers.clone()
    with pytest.raises(ValueError, match="centers: shares memory with x"):
        ft.center_update_(centers[:3], labels, centers, 0.5)
    assert torch.equal(centers, before)
    x = centers[3:].clone()
    ft.center_update_(x, labels, centers[:3], 0.5)  # a view of other rows of the same storage is fine
    expected = before[:3].numpy().copy()
    reference.center_update(x.numpy(), labels.numpy(), expected, 0.5)
    np.testing.assert_allclose(centers[:3].numpy(), expected, rtol=1e-12)


def test_direct_op_calls_that_turn_a_wanted_gradient_off_are_refused():
    """torch.ops.faceops.* with centers_grad / ref_grad False while that input requires grad:
    a clear error in the backward instead of a dropped gradient or autograd's shape error."""
    x, labels = _batch(25)
    x.requires_grad_(True)
    centers = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    ref_labels = torch.arange(9) % 4
    calls = {
        "centers_grad": lambda: torch.ops.faceops.center_loss(x, labels, centers, False, True),
        "ref_grad": lambda: torch.ops.faceops.triplet_loss_ref(x, labels, ref, ref_labels, None, 0.2, "hard", True,
                                                               False, True),
        "ref_grad ": lambda: torch.ops.faceops.pair_loss_ref(x, labels, ref, ref_labels, None,
                                                             torch.tensor(1.0, dtype=torch.float64), False, True),
    }
    for flag, call in calls.items():
        with pytest.raises(ValueError, match=f"{flag.strip()}: the op ran with {flag.strip()}=False, but"):
            call()[0].backward()


# The same hyperparameter gets the same check and message from the NumPy op and the torch
# function (faceops._params): (name, NumPy call, torch call, message) on x, labels.
_ZERO_WEIGHT = np.zeros((4, 6))
_SAME_CHECK_CASES = [
    ("triplet margin < 0", lambda x, y: faceops.triplet_loss(x, y, -1.0),
     lambda x, y: ft.triplet_loss(x, y, -1.0), "margin: expected a number >= 0.0, got -1.0"),
    ("contrastive margin < 0", lambda x, y: faceops.contrastive_loss(x[:6], x[6:], y[:6] % 2, -1.0),
     lambda x, y: ft.contrastive_loss(x[:6], x[6:], y[:6] % 2, -1.0), "margin: expected a number >= 0.0"),
    ("explicit margin < 0", lambda x, y: faceops.triplet_loss_explicit(x[:4], x[4:8], x[8:], -1.0),
     lambda x, y: ft.triplet_loss_explicit(x[:4], x[4:8], x[8:], -1.0), "margin: expected a number >= 0.0"),
    ("alpha > 1", lambda x, y: faceops.center_update(x, y, np.zeros((4, 6)), 7.0),
     lambda x, y: ft.center_update_(x, y, torch.zeros(4, 6, dtype=x.dtype), 7.0),
     r"alpha: expected 0.0 <= value <= 1.0, got 7.0"),
    ("alpha < 0", lambda x, y: faceops.center_update(x, y, np.zeros((4, 6)), -5.0),
     lambda x, y: ft.center_update_(x, y, torch.zeros(4, 6, dtype=x.dtype), -5.0), "alpha: expected 0.0 <= value"),
    ("s underflows to 0 in float32", lambda x, y: faceops.margin_softmax_loss(x.astype(np.float32), y,
                                                                             _ZERO_WEIGHT.astype(np.float32), s=1e-46),
     lambda x, y: ft.margin_softmax_loss(x.float(), y, torch.zeros(4, 6), s=1e-46),
     "s: expected a scale > 0, got 1e-46, which is 0.0 in float32"),
    ("huge integer margin", lambda x, y: faceops.triplet_loss(x, y, 2**1100),
     lambda x, y: ft.TripletLoss(2**1100)(x, y), "margin: expected a finite number, got an integer beyond float64"),
    ("huge integer margin, functional", lambda x, y: faceops.triplet_loss(x, y, 2**1100),
     lambda x, y: ft.triplet_loss(x, y, 2**1100), "margin: expected a finite number, got an integer beyond float64"),
]


@pytest.mark.parametrize("case", _SAME_CHECK_CASES, ids=[case[0] for case in _SAME_CHECK_CASES])
def test_numpy_and_torch_fronts_check_hyperparameters_alike(case):
    _, numpy_call, torch_call, message = case
    x, labels = _batch(26)
    with pytest.raises(ValueError, match=message):
        numpy_call(x.numpy(), labels.numpy())
    with pytest.raises(ValueError, match=message):
        torch_call(x, labels)


def test_a_range_bound_itself_passes_in_float32():
    """m2 = pi is an angle in [-pi, pi] although float32's pi lies just above it; 2**1023 is a
    finite float64."""
    x, labels = _batch(27)
    weight = torch.randn(4, 6, dtype=torch.float64)
    for m2 in (np.pi, -np.pi):
        got = ft.margin_softmax_loss(x.float(), labels, weight.float(), m2=m2)
        ours = faceops.margin_softmax_loss(x.float().numpy(), labels.numpy(), weight.float().numpy(), m2=m2)[0]
        assert torch.isfinite(got) and float(got) == pytest.approx(float(ours), rel=1e-6)
    assert faceops._params.hinge_margin(2**1023) == 2.0**1023


@pytest.mark.parametrize("call_op", ["functional", "dispatched"])
def test_kept_hyperparameters_are_kept_per_dtype_and_never_when_refused(call_op):
    """The ops keep the hyperparameters that passed their check (_library._hyperparameters):
    1e39 passing for float64 must not pass for float32 after it, and a refused value is
    refused again on the next call."""
    x, labels = _batch(28)

    def triplet(features, margin):
        if call_op == "functional":
            return ft.triplet_loss(features, labels, margin, "hard")
        return torch.ops.faceops.triplet_loss(features, labels, margin, "hard", True, True)[0]

    assert torch.isfinite(triplet(x, 1e39))
    for _ in range(2):
        with pytest.raises(ValueError, match="margin: .*1e[+]?39, which is not finite in float32"):
            triplet(x.float(), 1e39)
    assert torch.isfinite(triplet(x.float(), 1e38))


def test_modules_name_the_embeddings_and_check_parameter_dtypes():
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(N, 6\), the module's dim, got \(4, 5\)"):
        ft.ArcFace(3, 6)(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(N, 6\)"):
        ft.CenterLoss(3, 6)(torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(TypeError, match="dtype: expected torch.float16, torch.bfloat16, torch.float32 or"):
        ft.PairLoss(dtype=torch.int32)
    with pytest.raises(ValueError, match="theta: expected a finite number, got 70000.0, which is not finite in "
                                         "torch.float16"):
        ft.PairLoss(theta=7e4, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"weight: expected at least one class \(num_classes > 0\)"):
        ft.margin_softmax_loss(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), torch.randn(0, 6))
    with pytest.raises(ValueError, match=r"centers: expected at least one class"):
        ft.center_loss(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]), torch.randn(0, 6))
    with pytest.raises(ValueError, match="m2: expected an angle in"):
        ft.MarginSoftmaxLoss(3, 6, margin=(1.0, 10.0, 0.0))
    with pytest.raises(TypeError, match=r"margin: expected one of .* or \(m1, m2, m3\), got tuple"):
        ft.MarginSoftmaxLoss(3, 6, margin=(1.0, 0.5))


@pytest.mark.parametrize("call,error,message", [
    (lambda x, y: ft.triplet_loss(x, y, margin="0.3"), TypeError, "margin: expected a real number, got the string '0.3'"),
    (lambda x, y: ft.triplet_loss(x, y, margin=True), TypeError, "margin: expected a real number, got the bool True"),
    (lambda x, y: ft.triplet_loss(x, y, margin=torch.tensor(0.3)), TypeError, "margin: expected a real number"),
    (lambda x, y: ft.triplet_loss(x.float(), y, margin=1e39), ValueError, "margin: .*not finite in float32"),
    (lambda x, y: ft.triplet_loss(x.half(), y, margin=1e39), ValueError, "margin: .*not finite in float32"),
    (lambda x, y: ft.triplet_loss(x, y, mining="hardest"), ValueError, "mining: expected one of"),
    (lambda x, y: ft.triplet_loss(x, y, squared=1), TypeError, "squared: expected True or False"),
    (lambda x, y: ft.margin_softmax_loss(x, y, torch.zeros(4, 6, dtype=x.dtype), s=0.0), ValueError, "s: expected"),
    (lambda x, y: ft.margin_softmax_loss(x, y, torch.zeros(4, 6, dtype=x.dtype), m1=-1.0), ValueError, "m1: expected"),
    (lambda x, y: ft.margin_softmax_loss(x, y, torch.zeros(4, 6, dtype=x.dtype), sample_rate=1.5), ValueError,
     "sample_rate: expected 0 < sample_rate <= 1"),
    (lambda x, y: ft.center_update_(x, y, torch.zeros(4, 6, dtype=x.dtype), float("nan")), ValueError,
     "alpha: expected a finite number, got NaN"),
    (lambda x, y: ft.pair_loss(x, y, torch.tensor(float("inf"), dtype=x.dtype)), ValueError, "theta: expected a finite"),
    (lambda x, y: ft.triplet_loss(x, y, check="yes"), TypeError, "check: expected True or False"),
    # the op itself checks values too (torch.ops.faceops.* called directly, or under torch.compile)
    (lambda x, y: torch.ops.faceops.triplet_loss(x, y, float("nan"), "all", True, True), ValueError,
     "margin: expected a finite number, got NaN"),
    (lambda x, y: torch.ops.faceops.triplet_loss(x, y, 0.2, "most", True, True), ValueError, "mining: expected one of"),
])
def test_bad_hyperparameters_name_the_argument(call, error, message):
    x, labels = _batch(24)
    with pytest.raises(error, match=message):
        call(x, labels)


@pytest.mark.parametrize("make", [
    lambda: ft.TripletLoss(margin=None), lambda: ft.TripletLoss(mining="semi"), lambda: ft.CenterLoss(4.0, 6),
    lambda: ft.CenterLoss(4, 6, alpha="0.5"), lambda: ft.ArcFace(10, 6, sample_rate=0.0),
    lambda: ft.MarginSoftmaxLoss(10, 6, margin="arc"), lambda: ft.PairLoss(theta=float("nan")),
    lambda: ft.ContrastiveLoss(legacy="no"),
])
def test_modules_check_their_hyperparameters(make):
    with pytest.raises((TypeError, ValueError)):
        make()


@pytest.mark.parametrize("make,names", [
    (lambda: ft.ArcFace(2**40, 2**30), "num_classes, dim"),
    (lambda: ft.CenterLoss(2**31, 2**30, dtype=torch.float64), "num_classes, dim"),
    (lambda: ft.CrossBatchMemory(ft.TripletLoss(), 2**62, 2), "memory_size, dim"),
    (lambda: faceops.torch.distributed.ShardedMarginSoftmaxLoss(2**62, 4), "num_classes, dim"),
])
def test_modules_refuse_a_parameter_matrix_no_tensor_can_hold(make, names):
    # torch's own error ("Storage size calculation overflowed") names neither argument
    with pytest.raises(ValueError, match=f"{names}: a .* matrix of .*-byte elements is .* bytes, more than an array"):
        make()


def test_faceops_works_without_torch_and_faceops_torch_says_what_it_needs():
    import subprocess
    import sys

    script = ("import sys; sys.modules['torch'] = None\n"  # torch absent: importing it raises ImportError
              "import faceops, numpy as np\n"
              "assert faceops.triplet_loss(np.eye(4), np.array([0, 0, 1, 1]))[0] >= 0\n"
              "try:\n    import faceops.torch\nexcept ImportError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "faceops.torch needs PyTorch: pip install 'faceops[torch]'" in result.stdout


def test_a_float_theta_becomes_one_kept_tensor_and_is_still_checked():
    """pair_loss(x, labels, 1.25) makes theta a 0-d tensor once per (value, dtype, device) and
    reuses it: the same loss as a tensor theta, and a value not finite in the dtype is refused
    on every call, never kept."""
    from faceops.torch import functional

    x, labels = _batch(29)
    loss = ft.pair_loss(x, labels, 1.25)
    assert torch.equal(loss, ft.pair_loss(x, labels, 1.25))
    assert torch.equal(loss, ft.pair_loss(x, labels, torch.tensor(1.25, dtype=x.dtype)))
    assert functional._theta_tensor(1.25, x) is functional._theta_tensor(1.25, x)
    assert functional._theta_tensor(1.25, x.float()).dtype == torch.float32
    for _ in range(2):
        with pytest.raises(ValueError, match="theta: expected a finite number, got 70000.0, which is not finite"):
            ft.pair_loss(x.half(), labels, 7e4)


# --- derivatives the ops do not have, and views the eager path must not read raw -----------------------------------

@pytest.mark.parametrize("path", sorted(CALLS))
@pytest.mark.parametrize("name", sorted(set(DIFFERENTIABLE) - {"target_margin_forward"}))
def test_a_double_backward_is_refused_not_zero(name, path):
    """The backward hands out the kernel's gradient, which is not differentiable: under
    create_graph=True it came back detached, so Hessians and gradient penalties were 0."""
    args = _leaf_arguments(name, torch.float64)
    outputs = CALLS[path](getattr(_library, name), *args)
    leaves = [args[position] for position in DIFFERENTIABLE[name]]
    with pytest.raises(RuntimeError, match="create_graph=True .* is not supported by the faceops losses"):
        torch.autograd.grad(outputs[0], leaves, create_graph=True)
    # Without create_graph the same call differentiates as before.
    outputs = CALLS[path](getattr(_library, name), *args)
    assert all(g is not None for g in torch.autograd.grad(outputs[0], leaves))


def test_a_hessian_of_a_faceops_loss_is_refused():
    x, labels = _batch(29)
    centers = torch.zeros(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.functional.hessian(lambda x: ft.center_loss(x, labels, centers), x)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func.jvp's own
def test_forward_mode_ad_is_refused_not_a_zero_tangent():
    """torch.func.jvp returned a tangent of 0 (torch's custom_op has no forward rule)."""
    from torch.autograd import forward_ad

    x, labels = _batch(30)
    with pytest.raises(NotImplementedError, match="forward-mode AD .* is not supported by the faceops losses"):
        torch.func.jvp(lambda x: ft.triplet_loss(x, labels, 0.2, "all"), (x,), (torch.randn_like(x),))
    with forward_ad.dual_level():
        with pytest.raises(NotImplementedError, match="forward-mode AD"):
            ft.center_loss(forward_ad.make_dual(x, torch.ones_like(x)), labels, torch.zeros(4, 6, dtype=x.dtype))
        assert torch.isfinite(ft.triplet_loss(x, labels, 0.2, "all"))  # no tangent, no forward AD


def test_lazily_negated_views_and_zero_tensors_are_read_as_their_values():
    """The eager path read a neg-bit view's memory (-W) as W, and segfaulted on a ZeroTensor's null data."""
    x, labels = _batch(31)
    weight = torch.randn(4, 6, dtype=torch.float64)
    negated = torch._neg_view(weight)
    assert negated.is_neg()
    assert float(ft.arcface_loss(x, labels, negated)) == float(ft.arcface_loss(x, labels, -weight))
    with pytest.raises(ValueError, match="x: expected a contiguous tensor"):
        ft.center_loss(torch._efficientzerotensor((12, 6), dtype=torch.float64), labels, torch.ones(4, 6))


@pytest.mark.parametrize("call", [
    lambda x, y: ft.center_loss(x, y, np.zeros((4, 6))),
    lambda x, y: ft.center_update_direction(x.numpy(), y, torch.zeros(4, 6)),
    lambda x, y: ft.center_update_(x.numpy(), y, torch.zeros(4, 6), 0.5),
    lambda x, y: ft.triplet_loss(x, y, ref=x.numpy(), ref_labels=y),
    lambda x, y: ft.pair_loss(x, y, 1.0, ref=x.numpy(), ref_labels=y),
    lambda x, y: ft.pair_loss(x.numpy(), y, 1.0),
])
def test_functional_forms_name_an_argument_that_is_no_tensor(call):
    """They raised AttributeError ('numpy.ndarray' object has no attribute 'requires_grad')."""
    x, labels = _batch(32)
    with pytest.raises(TypeError, match=r"^(centers|x|ref): expected a torch.Tensor, got ndarray"):
        call(x, labels)


@pytest.mark.parametrize("call, message", [
    (lambda x, y, w: ft.arcface_loss(x, y, w, sample_rate=0.0), "sample_rate: expected 0 < sample_rate <= 1"),
    (lambda x, y, w: ft.arcface_loss(x, y, w, sample_rate=float("inf")), "sample_rate: expected (0 <|a finite)"),
    (lambda x, y, w: ft.sample_classes(y, 4, -1.0), "sample_rate: expected 0 < sample_rate <= 1"),
    (lambda x, y, w: ft.arcface_loss(x, y, w, sparse_grad=1), "sparse_grad: expected True or False"),
    (lambda x, y, w: ft.triplet_loss(x, y, check=0), "check: expected True or False"),
])
def test_torch_compile_refuses_what_eager_mode_refuses(call, message):
    """Under torch.compile the functional forms skipped these checks (sample_rate reaches no op,
    and the schema makes 1 a bool): sample_rate 0 trained on the positives alone."""
    x, labels = _batch(33)
    weight = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(Exception, match=message):
        call(x, labels, weight)
    torch._dynamo.reset()
    with pytest.raises(Exception, match=message):  # fullgraph: Dynamo's error carries the ValueError
        torch.compile(lambda a: call(a, labels, weight), fullgraph=True, backend="aot_eager")(x)


def test_target_margin_names_a_non_finite_incoming_gradient_as_such():
    """It said only "d_out: contains NaN or Inf", an argument the caller never passes."""
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    cosine = torch.rand(8, 4, requires_grad=True)
    with pytest.raises(ValueError, match="target_margin's backward: the gradient arriving from the layers above it"):
        (ft.target_margin(cosine, labels, check=False) * float("nan")).sum().backward()
