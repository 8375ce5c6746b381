"""faceops.torch.distributed.ShardedMarginSoftmaxLoss on real gloo process groups of 1, 2 and 4
processes on this machine (one spawn per world size running every check, each bounded in time):
loss and gradients equal to the single-process MarginSoftmaxLoss over the global batch and all
classes, uneven shards, a shard holding no class of the batch, Partial FC sampling, bad input on one
rank raising on every rank, and checkpoints re-sharded 2 -> 4 -> 1.  Also the custom ops under
torch.library.opcheck and gradcheck in one process."""

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs torch (pip install torch==2.13.0)")

import faceops  # noqa: E402
from faceops import losses, ops  # noqa: E402
from faceops.torch import distributed as fdist  # noqa: E402
from ranks import run_ranks  # noqa: E402

ROWS, DIM, S = 5, 7, 30.0  # rows per rank


def num_classes(world_size):
    return 4 * world_size + 3  # uneven shards for W = 2 and 4


def global_batch(world_size, seed):
    """The global batch every rank slices; no label falls in the last rank's shard (W > 1)."""
    rng = np.random.default_rng(seed)
    classes = num_classes(world_size)
    last_start, _ = fdist.shard_bounds(classes, world_size, world_size - 1)
    high = last_start if world_size > 1 else classes
    return rng.standard_normal((world_size * ROWS, DIM)), rng.integers(0, high, world_size * ROWS)


def _step(module, x_all, labels_all, rank, dtype):
    x = torch.tensor(x_all[rank * ROWS:(rank + 1) * ROWS], dtype=dtype, requires_grad=True)
    labels = torch.tensor(labels_all[rank * ROWS:(rank + 1) * ROWS])
    module.weight.grad = None
    loss = module(x, labels)
    loss.backward()
    return dict(loss=loss.item(), dx=x.grad.numpy().copy(), dweight=module.weight.grad.numpy().copy(),
                weight=module.weight.detach().numpy().copy(), start=module.class_start, end=module.class_end)


def _error_of(call):
    try:
        call()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _checks(rank, world_size, checkpoint_dir, load_dir):
    out = {}
    classes = num_classes(world_size)
    x_all, labels_all = global_batch(world_size, seed=11)
    for name, dtype, margin in (("f64", torch.float64, "arcface"), ("f64_combined", torch.float64, "combined"),
                                ("f32", torch.float32, "arcface")):
        module = fdist.ShardedMarginSoftmaxLoss(classes, DIM, margin, S, dtype=dtype, seed=5)
        out[name] = _step(module, x_all, labels_all, rank, dtype)

    # Partial FC: two steps of one module, then a second module of the same seed, and another seed.
    big = 40 * world_size + 1
    xs, ys = global_batch(world_size, seed=12)
    ys = ys * (big // classes)
    sampled = fdist.ShardedMarginSoftmaxLoss(big, DIM, "cosface", S, sample_rate=0.3, dtype=torch.float64, seed=7)
    out["sampled"] = [dict(_step(sampled, xs, ys, rank, torch.float64), classes=sampled.sampled_classes.numpy().copy())
                      for _ in range(2)]
    again = fdist.ShardedMarginSoftmaxLoss(big, DIM, "cosface", S, sample_rate=0.3, dtype=torch.float64, seed=7)
    other = fdist.ShardedMarginSoftmaxLoss(big, DIM, "cosface", S, sample_rate=0.3, dtype=torch.float64, seed=8)
    out["sampled_again"] = []
    for _ in range(2):
        _step(again, xs, ys, rank, torch.float64)
        out["sampled_again"].append(dict(classes=again.sampled_classes.numpy().copy()))
    _step(other, xs, ys, rank, torch.float64)
    out["sampled_other_seed"] = other.sampled_classes.numpy()

    # Bad input on the last rank only: every rank raises, and the group still works afterwards.
    module = fdist.ShardedMarginSoftmaxLoss(classes, DIM, dtype=torch.float64)
    good_x = torch.tensor(x_all[rank * ROWS:(rank + 1) * ROWS])
    good_labels = torch.tensor(labels_all[rank * ROWS:(rank + 1) * ROWS])
    last = rank == world_size - 1
    bad_labels = good_labels.clone()
    if last:
        bad_labels[2] = classes
    out["error_label"] = _error_of(lambda: module(good_x, bad_labels))
    negative = good_labels.clone()
    if last:
        negative[0] = -1
    out["error_negative_label"] = _error_of(lambda: module(good_x, negative))
    nan_x = good_x.clone()
    if last:
        nan_x[1, 1] = float("nan")
    out["error_nan_x"] = _error_of(lambda: module(nan_x, good_labels))
    short = 3 if last else ROWS
    out["error_rows"] = _error_of(lambda: module(good_x[:short], good_labels[:short]))
    if last:
        with torch.no_grad():
            module.weight[0, 0] = float("inf")
    out["error_weight"] = _error_of(lambda: module(good_x, good_labels))
    out["after_errors"] = fdist.ShardedMarginSoftmaxLoss(classes, DIM, dtype=torch.float64)(good_x, good_labels).item()

    # Checkpoints: load another world size's shards, then save a changed copy of this one's.
    checkpointed = fdist.ShardedMarginSoftmaxLoss(20, DIM, dtype=torch.float64, seed=9)
    if load_dir:
        paths = sorted(os.path.join(load_dir, f) for f in os.listdir(load_dir))
        checkpointed.load_shards(paths)
        out["loaded"] = checkpointed.weight.detach().numpy().copy()
    with torch.no_grad():
        checkpointed.weight.add_(torch.arange(checkpointed.weight.numel(), dtype=torch.float64).view_as(
            checkpointed.weight) + 100.0 * checkpointed.class_start)
    torch.save(checkpointed.state_dict(), os.path.join(checkpoint_dir, f"rank{rank}.pt"))
    out["saved"] = checkpointed.weight.detach().numpy().copy()
    out["saved_bounds"] = (checkpointed.class_start, checkpointed.class_end)
    return out


def _spawn(world_size, tmp, load_dir):
    checkpoint_dir = os.path.join(tmp, f"checkpoint_w{world_size}")
    os.makedirs(checkpoint_dir)
    return run_ranks(_checks, world_size, tmp, checkpoint_dir, load_dir), checkpoint_dir


WORLD_SIZES = [1, 2, 4]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One spawn per world size, in the order 2, 4, 1: 4 loads 2's checkpoint, 1 loads 4's."""
    tmp = str(tmp_path_factory.mktemp("distributed"))
    outputs, saved_by = {}, {}
    load_dir = None
    for world_size in (2, 4, 1):
        outputs[world_size], saved_by[world_size] = _spawn(world_size, tmp, load_dir)
        load_dir = saved_by[world_size]
    return outputs


def _gathered(ranks, key):
    return np.concatenate([r[key] for r in ranks])


# float64 to 1e-10 of each gradient's scale; float32 against the float32 single process: the two
# sum in other orders (shards, then ranks), so to 1e-5 of the scale (about 100 float32 ulps).
TOLERANCES = {"f64": 1e-10, "f64_combined": 1e-10, "f32": 1e-5}


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("case", sorted(TOLERANCES))
def test_equals_single_process(runs, world_size, case):
    ranks = [r[case] for r in runs[world_size]]
    x_all, labels_all = global_batch(world_size, seed=11)
    weight = _gathered(ranks, "weight")
    dtype = np.float32 if case == "f32" else np.float64
    margin = "combined" if case == "f64_combined" else "arcface"
    single = losses.MarginSoftmaxLoss(num_classes(world_size), DIM, S, margin, dtype=dtype, weight=weight.copy())
    loss, dx = single(x_all.astype(dtype), labels_all)
    tol = TOLERANCES[case]
    for r in ranks:  # every rank returns the global loss
        np.testing.assert_allclose(r["loss"], loss, rtol=tol, atol=0)
    for got, want in ((_gathered(ranks, "dx"), dx), (_gathered(ranks, "dweight"), single.grad_weight)):
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    # Shards as shard_bounds says: uneven, covering every class once.
    assert [(r["start"], r["end"]) for r in ranks] == [fdist.shard_bounds(num_classes(world_size), world_size, k)
                                                       for k in range(world_size)]
    if world_size > 1:  # the last shard holds no class of the batch, yet its weights get a gradient
        assert np.abs(ranks[-1]["dweight"]).max() > 0


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_partial_fc_equals_single_process_over_the_sampled_classes(runs, world_size):
    big = 40 * world_size + 1
    xs, ys = global_batch(world_size, seed=12)
    ys = ys * (big // num_classes(world_size))
    for step in range(2):
        ranks = [r["sampled"][step] for r in runs[world_size]]
        weight = _gathered(ranks, "weight")
        classes = _gathered(ranks, "classes")
        assert np.all(np.diff(classes) > 0) and set(ys) <= set(classes)  # sorted, positives kept
        assert len(classes) < big
        for r in ranks:  # within each shard
            assert np.all((r["classes"] >= r["start"]) & (r["classes"] < r["end"]))
        # The single process over the same classes: the loss restricted to them.
        loss, dx, dweight = ops.margin_softmax_loss(xs, np.searchsorted(classes, ys), weight[classes], S,
                                                    *faceops.MARGINS["cosface"])
        np.testing.assert_allclose(ranks[0]["loss"], loss, rtol=1e-10)
        np.testing.assert_allclose(_gathered(ranks, "dx"), dx, rtol=0, atol=1e-10 * np.abs(dx).max())
        full_dweight = _gathered(ranks, "dweight")
        np.testing.assert_allclose(full_dweight[classes], dweight, rtol=0, atol=1e-10 * np.abs(dweight).max())
        assert not np.delete(full_dweight, classes, axis=0).any()  # unsampled classes: no gradient


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_partial_fc_sampling_is_reproducible(runs, world_size):
    for r in runs[world_size]:
        for step in range(2):
            np.testing.assert_array_equal(r["sampled"][step]["classes"], r["sampled_again"][step]["classes"])
        assert not np.array_equal(r["sampled"][0]["classes"], r["sampled"][1]["classes"]) or len(
            r["sampled"][0]["classes"]) == r["end"] - r["start"]
    seeds_differ = any(not np.array_equal(r["sampled"][0]["classes"], r["sampled_other_seed"]) for r in runs[world_size])
    assert seeds_differ


ERRORS = {
    "error_label": ("ValueError", "labels", "out of range"),
    "error_negative_label": ("ValueError", "labels", "label -1"),
    "error_nan_x": ("ValueError", "x:", "NaN"),
    "error_rows": ("ValueError", "x", "rows"),
    "error_weight": ("ValueError", "weight", "NaN or Inf"),
}


@pytest.mark.parametrize("world_size,case", [(w, case) for w in WORLD_SIZES for case in sorted(ERRORS)
                                             if not (case == "error_rows" and w == 1)])  # one rank: no other N
def test_bad_input_on_one_rank_raises_on_every_rank(runs, world_size, case):
    messages = [r[case] for r in runs[world_size]]
    kind, *words = ERRORS[case]
    for message in messages:
        assert message is not None and message.startswith(kind), messages
        for word in words:
            assert word in message, messages
        if world_size > 1:
            assert f"rank {world_size - 1}" in message, messages
    assert len(set(messages)) == 1  # the same error everywhere
    assert all(np.isfinite(r["after_errors"]) for r in runs[world_size])  # no collective left hanging


def test_checkpoints_reshard_2_to_4_to_1(runs):
    saved_by_2 = _gathered(runs[2], "saved")
    loaded_by_4 = _gathered(runs[4], "loaded")
    np.testing.assert_array_equal(loaded_by_4, saved_by_2)
    saved_by_4 = _gathered(runs[4], "saved")
    assert not np.array_equal(saved_by_4, saved_by_2)
    np.testing.assert_array_equal(runs[1][0]["loaded"], saved_by_4)
    assert [r["saved_bounds"] for r in runs[4]] == [fdist.shard_bounds(20, 4, k) for k in range(4)]


# ---- one process: the custom ops and the module without a process group ----------------------------

def test_custom_ops_pass_opcheck():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.standard_normal((6, 5)), requires_grad=True)
    weight = torch.tensor(rng.standard_normal((4, 5)), requires_grad=True)
    labels = torch.tensor([0, -1, 3, 2, -1, 1])
    hyper = (S, 1.0, 0.5, 0.0)
    torch.library.opcheck(torch.ops.faceops.margin_softmax_shard_forward, (x.detach(), labels, weight.detach(), *hyper))
    row_max, row_sum, target = torch.ops.faceops.margin_softmax_shard_forward(x.detach(), labels, weight.detach(), *hyper)
    lse = row_max + torch.log(row_sum) + 0.5
    torch.library.opcheck(torch.ops.faceops.margin_softmax_shard_backward,
                          (x.detach(), labels, weight.detach(), lse, 1 / 6, *hyper))
    torch.library.opcheck(torch.ops.faceops.margin_softmax_shard_loss, (x, labels, weight, lse, target, 1 / 6, *hyper))


def test_one_process_matches_margin_softmax_loss_and_gradcheck():
    module = fdist.ShardedMarginSoftmaxLoss(9, DIM, "sphereface", 8.0, dtype=torch.float64)
    assert module.world_size == 1 and (module.class_start, module.class_end) == (0, 9)
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.standard_normal((6, DIM)), requires_grad=True)
    labels = torch.tensor(rng.integers(0, 9, 6))
    single = losses.MarginSoftmaxLoss(9, DIM, 8.0, "sphereface", dtype=np.float64, weight=module.weight.detach().numpy().copy())
    loss, dx = single(x.detach().numpy(), labels.numpy())
    got = module(x, labels)
    got.backward()
    np.testing.assert_allclose(got.item(), loss, rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(module.weight.grad.numpy(), single.grad_weight, rtol=0, atol=1e-12)
    weight = module.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x_value, w_value: torch.func.functional_call(module, {"weight": w_value}, (x_value, labels)),
        (x.detach().clone().requires_grad_(True), weight))


def test_initial_weights_do_not_depend_on_the_world_size():
    whole = fdist._initial_rows(0, 9000, 3, 2, torch.float64)
    parts = [fdist._initial_rows(*fdist.shard_bounds(9000, 3, r), 3, 2, torch.float64) for r in range(3)]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)
    assert whole.std().item() == pytest.approx(0.01, rel=0.05)


def test_bad_hyperparameters_name_the_argument():
    with pytest.raises(ValueError, match="sample_rate"):
        fdist.ShardedMarginSoftmaxLoss(9, 4, sample_rate=0.0)
    with pytest.raises(ValueError, match="margin"):
        fdist.ShardedMarginSoftmaxLoss(9, 4, margin="arc")
    with pytest.raises(ValueError, match="s:"):
        fdist.ShardedMarginSoftmaxLoss(9, 4, s=float("nan"))
    with pytest.raises(TypeError, match="dtype"):
        fdist.ShardedMarginSoftmaxLoss(9, 4, dtype=torch.float16)
    with pytest.raises(ValueError, match="num_classes"):
        fdist.ShardedMarginSoftmaxLoss(0, 4)
    module = fdist.ShardedMarginSoftmaxLoss(9, 4)
    with pytest.raises(ValueError, match="re-shard"):
        module.load_state_dict(fdist.ShardedMarginSoftmaxLoss(10, 4).state_dict())
    with pytest.raises(ValueError, match="cover"):
        fdist.reshard_rows([(0, torch.zeros(3, 4)), (5, torch.zeros(4, 4))], 0, 9)


def _shard_case():
    rng = np.random.default_rng(5)
    x = torch.tensor(rng.standard_normal((6, 5)), dtype=torch.float32)
    return x, torch.tensor([0, -1, 3, 2, -1, 1]), torch.tensor(rng.standard_normal((4, 5)), dtype=torch.float32)


@pytest.mark.parametrize("call, error, message", [
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_forward(x, y, w[:, :2], S, 1.0, 0.5, 0.0), ValueError,
     r"weight: expected a \(C_r, 5\) tensor of torch.float32 like x, got torch.float32 of shape \(4, 2\)"),
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_forward(x, y, w.double(), S, 1.0, 0.5, 0.0), ValueError,
     "weight: expected .* of torch.float32 like x, got torch.float64"),
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_forward(torch.randn(100, 5), y, w, S, 1.0, 0.5, 0.0),
     ValueError, r"labels: expected shape \(100,\), got \(6,\)"),
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_forward(x.half(), y, w.half(), S, 1.0, 0.5, 0.0),
     TypeError, "x: expected dtype float32 or float64 .*, got torch.float16"),
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_forward(x, y, w, float("nan"), 1.0, 0.5, 0.0), ValueError,
     "s: expected a finite number, got NaN"),
    (lambda x, y, w: torch.ops.faceops.margin_softmax_shard_backward(x, y, w, torch.zeros(1), 1.0, S, 1.0, 0.5, 0.0),
     ValueError, r"log_sum_exp: expected a \(6,\) tensor of torch.float32, got torch.float32 of shape \(1,\)"),
])
def test_the_shard_ops_check_their_inputs_when_called_directly(call, error, message):
    """torch.ops.faceops.margin_softmax_shard_* read another dtype's bytes, past the end of labels
    or of log_sum_exp (garbage, or 'label 140553364298032 at index 8'), or raised KeyError."""
    with pytest.raises(error, match=message):
        call(*_shard_case())


def test_shard_ops_widen_int32_labels_as_the_loss_ops_do():
    x, labels, weight = _shard_case()
    wide = torch.ops.faceops.margin_softmax_shard_forward(x, labels, weight, S, 1.0, 0.5, 0.0)
    narrow = torch.ops.faceops.margin_softmax_shard_forward(x, labels.int(), weight, S, 1.0, 0.5, 0.0)
    for a, b in zip(wide, narrow):  # int32 was read as int64 ("label 4294967297")
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_sharded_module_refuses_what_its_constructor_does_later_too():
    x, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 5])
    with pytest.raises(TypeError, match=r"x: expected dtype float32 or float64"):  # was KeyError: torch.float16
        fdist.ShardedMarginSoftmaxLoss(9, 4).half()(x.half(), labels)
    module = fdist.ShardedMarginSoftmaxLoss(9, 4, sample_rate=0.5)
    module.sample_rate = 0.0  # silently trained on the positives alone
    with pytest.raises(ValueError, match="sample_rate: expected 0 < sample_rate <= 1"):
        module(x, labels)
    with pytest.raises(TypeError, match=r"margin: expected one of .* or \(m1, m2, m3\)"):
        fdist.ShardedMarginSoftmaxLoss(9, 4, margin=(1.0, 0.5))
    huge_seed = fdist.ShardedMarginSoftmaxLoss(9, 4, sample_rate=0.5, seed=10**14)  # OverflowError before
    assert torch.isfinite(huge_seed(x, labels))


@pytest.mark.parametrize("state", [{}, "shard", {"num_classes": 9, "class_start": "0", "class_end": 9}])
def test_a_hostile_shard_checkpoint_is_named(state):
    module = fdist.ShardedMarginSoftmaxLoss(9, 4)
    with pytest.raises(ValueError, match="checkpoint: the shard's extra state is .*; expected the dict of integers"):
        module.set_extra_state(state)
    with pytest.raises(ValueError, match="checkpoint: the shard's extra state"):
        module.load_shards([{"weight": torch.zeros(9, 4), "_extra_state": state}])
    with pytest.raises(ValueError, match=r"checkpoint: expected a state dict of ShardedMarginSoftmaxLoss holding its"):
        module.load_shards([{"weight": torch.zeros(9), "_extra_state": module.get_extra_state()}])


def test_global_batch_loss_names_non_contiguous_labels_as_labels():
    import faceops.torch as ft

    labels = torch.tensor([[0, 0], [0, 0], [1, 1], [1, 1]])[:, 0]
    with pytest.raises(ValueError, match=r"^labels: expected a contiguous tensor"):  # said ref_labels
        fdist.GlobalBatchLoss(ft.TripletLoss())(torch.randn(4, 3), labels)
