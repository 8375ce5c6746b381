"""faceops.torch with reference sets (anchors of x against the candidates of ref): the
ops against the NumPy ops (bitwise, the same kernels), gradcheck through x and ref,
torch.compile, half precision, and CrossBatchMemory against a plain queue, against
pytorch-metric-learning's CrossBatchMemory and through a state_dict round trip.
(The ops' numbers against faceops.reference: tests/test_reference_sets.py.)"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs PyTorch (pip install '.[torch]')")

import faceops  # noqa: E402
import faceops.torch as ft  # noqa: E402
from faceops.torch import CrossBatchMemory  # noqa: E402
from testing import MININGS, kink_free_batch, kink_gap_pair, kink_gap_triplet  # noqa: E402

# Half-precision inputs run the float32 kernels: the error against the float64 op on the
# same rounded inputs is the float32 accumulation plus the result's rounding (as test_torch_ops).
HALF_RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _split(x, labels, anchors):
    """x's first `anchors` rows as anchors against the whole batch as the reference set, with
    their own copies marked: the in-batch loss's terms of those anchors."""
    x, labels = torch.as_tensor(x), torch.as_tensor(labels)
    return x[:anchors].clone(), labels[:anchors].clone(), x.clone(), labels.clone(), torch.arange(anchors)


def _batch(seed, n=14, m=11, d=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    ref = (torch.randn(m, d, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    return x, torch.randint(0, 4, (n,), generator=g), ref, torch.randint(0, 4, (m,), generator=g)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mining", MININGS)
def test_triplet_ref_op_is_bitwise_the_numpy_op(mining, dtype):
    x, labels, ref, ref_labels = _batch(1, dtype=dtype)
    self_index = torch.tensor([3, -1, 0, -1, 7, -1, -1, 10, -1, -1, 1, -1, -1, -1])
    own = self_index >= 0
    ref_labels[self_index[own]] = labels[own]  # an own copy carries its anchor's label
    got = torch.ops.faceops.triplet_loss_ref(x, labels, ref, ref_labels, self_index, 0.2, mining, True, True, True)
    want = faceops.triplet_loss_ref(x.numpy(), labels.numpy(), ref.numpy(), ref_labels.numpy(), 0.2, mining, True,
                                    self_index=self_index.numpy())
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), np.asarray(w, dtype=g.numpy().dtype))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_ref_op_is_bitwise_the_numpy_op(dtype):
    x, labels, ref, ref_labels = _batch(2, dtype=dtype)
    theta = torch.tensor(1.2, dtype=dtype)
    got = torch.ops.faceops.pair_loss_ref(x, labels, ref, ref_labels, None, theta, True, True)
    want = faceops.pair_loss_ref(x.numpy(), labels.numpy(), ref.numpy(), ref_labels.numpy(), 1.2)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g.numpy(), np.asarray(w, dtype=g.numpy().dtype))


@pytest.mark.parametrize("loss", MININGS + ["pair"])
def test_ref_without_gradient_gives_the_same_dx(loss):
    """ref_grad=False (CrossBatchMemory's queue) passes dref null to the kernels: dx bitwise the one
    computed with dref, over 300 x 700 x 32 (past the one-thread threshold: private gradients)."""
    x, labels, ref, ref_labels = _batch(4, n=300, m=700, d=32)
    if loss == "pair":
        theta = torch.tensor(1.5, dtype=x.dtype)
        with_ref = torch.ops.faceops.pair_loss_ref(x, labels, ref, ref_labels, None, theta, True, True)
        without = torch.ops.faceops.pair_loss_ref(x, labels, ref, ref_labels, None, theta, False, True)
    else:
        with_ref = torch.ops.faceops.triplet_loss_ref(x, labels, ref, ref_labels, None, 0.2, loss, False, True, True)
        without = torch.ops.faceops.triplet_loss_ref(x, labels, ref, ref_labels, None, 0.2, loss, False, False, True)
    assert with_ref[3].shape == ref.shape and with_ref[3].abs().sum() > 0
    assert without[3].shape == (0, 32)
    for got, want in zip(without[:3] + without[4:], with_ref[:3] + with_ref[4:]):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("mining", MININGS)
@pytest.mark.parametrize("squared", [True, False])
def test_gradcheck_triplet_through_x_and_ref(mining, squared):
    x, labels = kink_free_batch(3, 4, 3, 5, lambda x, y: kink_gap_triplet(x, y, 0.3, squared))
    anchors, anchor_labels, ref, ref_labels, self_index = _split(x, labels, 7)
    inputs = [t.requires_grad_() for t in (anchors, ref)]
    assert torch.autograd.gradcheck(
        lambda a, r: ft.triplet_loss(a, anchor_labels, 0.3, mining, squared, ref=r, ref_labels=ref_labels,
                                     self_index=self_index), inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_gradcheck_pair_through_x_ref_and_theta():
    x, labels = kink_free_batch(4, 4, 3, 5, lambda x, y: kink_gap_pair(x, y, 1.5))
    anchors, anchor_labels, ref, ref_labels, self_index = _split(x, labels, 5)
    theta = torch.tensor(1.5, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (anchors, ref, theta)]
    assert torch.autograd.gradcheck(
        lambda a, r, t: ft.pair_loss(a, anchor_labels, t, ref=r, ref_labels=ref_labels, self_index=self_index),
        inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("mining", MININGS)
def test_whole_batch_as_its_own_reference_is_the_in_batch_loss(mining):
    """Every row an anchor against the batch with its own copy marked: the in-batch definition."""
    x, labels = kink_free_batch(5, 4, 3, 5, lambda x, y: kink_gap_triplet(x, y, 0.2, True))
    x = torch.from_numpy(x)
    labels = torch.from_numpy(labels)
    anchors = x.clone().requires_grad_()
    loss = ft.triplet_loss(anchors, labels, 0.2, mining, ref=x, ref_labels=labels, self_index=torch.arange(len(x)))
    in_batch = x.clone().requires_grad_()
    want = ft.triplet_loss(in_batch, labels, 0.2, mining)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    # Not the whole in-batch gradient: the candidates' part went to ref, which is a constant here.
    loss.backward()
    assert anchors.grad is not None and torch.isfinite(anchors.grad).all()


def test_reference_losses_compile_fullgraph_like_eager():
    x, labels, ref, ref_labels = _batch(6, dtype=torch.float32)
    module = ft.PairLoss(1.0)

    def step(x, ref):
        triplet = ft.triplet_loss(x, labels, 0.2, "hard", ref=ref, ref_labels=ref_labels)
        return triplet + module(x, labels, ref=ref, ref_labels=ref_labels)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (step, compiled):
        a, r = x.clone().requires_grad_(), ref.clone().requires_grad_()
        loss = fn(a, r)
        loss.backward()
        results.append((loss.detach(), a.grad, r.grad))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_reference_sets_against_float64(dtype):
    x, labels, ref, ref_labels = _batch(7, dtype=dtype)
    a, r = x.clone().requires_grad_(), ref.clone().requires_grad_()
    loss = ft.triplet_loss(a, labels, 0.2, "all", ref=r, ref_labels=ref_labels)
    loss.backward()
    assert loss.dtype == dtype and a.grad.dtype == dtype and r.grad.dtype == dtype
    want = faceops.triplet_loss_ref(x.double().numpy(), labels.numpy(), ref.double().numpy(), ref_labels.numpy(),
                                    0.2, "all")
    for got, w in ((loss, want[0]), (a.grad, want[2]), (r.grad, want[3])):
        w = np.asarray(w)
        assert np.abs(got.detach().double().numpy() - w).max() <= HALF_RTOL[dtype] * max(np.abs(w).max(), 1e-30)


def test_reference_arguments_are_checked_by_name():
    x, labels, ref, ref_labels = _batch(8)
    with pytest.raises(ValueError, match="ref, ref_labels: pass both"):
        ft.triplet_loss(x, labels, ref=ref)
    with pytest.raises(ValueError, match="ref, ref_labels: pass both"):
        ft.pair_loss(x, labels, 1.0, self_index=torch.arange(len(x)))
    with pytest.raises(ValueError, match="ref: expected 6 columns"):
        ft.triplet_loss(x, labels, ref=ref[:, :5].contiguous(), ref_labels=ref_labels)
    with pytest.raises(TypeError, match="ref: expected dtype"):
        ft.triplet_loss(x, labels, ref=ref.float(), ref_labels=ref_labels)
    with pytest.raises(ValueError, match=r"ref_labels: expected shape \(11,\)"):
        ft.triplet_loss(x, labels, ref=ref, ref_labels=ref_labels[:5])
    with pytest.raises(ValueError, match="self_index: .*out of range"):
        ft.triplet_loss(x, labels, ref=ref, ref_labels=ref_labels, self_index=torch.full((len(x),), 11))
    bad = ref.clone()
    bad[2, 3] = float("nan")
    with pytest.raises(ValueError, match="ref: .*NaN"):
        ft.triplet_loss(x, labels, ref=bad, ref_labels=ref_labels)


# ---- CrossBatchMemory ---------------------------------------------------------------------------------


def _batches(count, n=6, d=5, classes=5, seed=9):
    rng = np.random.default_rng(seed)
    return [(torch.from_numpy(rng.standard_normal((n, d)) * 0.5), torch.from_numpy(rng.integers(0, classes, n)))
            for _ in range(count)]


@pytest.mark.parametrize("mining", MININGS)
def test_cross_batch_memory_is_the_loss_against_a_fifo_queue(mining):
    """Memory of 14 rows, batches of 6: the queue fills, then wraps (the batch's slots split)."""
    memory = CrossBatchMemory(ft.TripletLoss(0.3, mining), 14, 5, dtype=torch.float64)
    queue, queue_labels = np.zeros((14, 5)), np.zeros(14, dtype=np.int64)
    position, filled = 0, 0
    for x, labels in _batches(5):
        slots = (position + np.arange(len(x))) % 14
        queue[slots], queue_labels[slots] = x.numpy(), labels.numpy()
        position, filled = (position + len(x)) % 14, min(filled + len(x), 14)
        anchors = x.clone().requires_grad_()
        loss = memory(anchors, labels)
        loss.backward()
        want, _, want_dx, _ = faceops.triplet_loss_ref(x.numpy(), labels.numpy(), queue[:filled], queue_labels[:filled],
                                                       0.3, mining, True, self_index=slots)
        assert loss.item() == want
        np.testing.assert_array_equal(anchors.grad.numpy(), want_dx)
        assert not memory.embeddings.requires_grad
        np.testing.assert_array_equal(memory.embeddings.numpy(), queue)


def test_cross_batch_memory_state_dict_round_trip_continues_the_same_queue():
    batches = _batches(4)
    first = CrossBatchMemory(ft.PairLoss(1.0, dtype=torch.float64), 10, 5, dtype=torch.float64)
    for x, labels in batches[:3]:
        first(x, labels)
    second = CrossBatchMemory(ft.PairLoss(1.0, dtype=torch.float64), 10, 5, dtype=torch.float64)
    second.load_state_dict(first.state_dict())
    assert (second.next_slot, second.filled) == (first.next_slot, first.filled) == (8, 10)
    x, labels = batches[3]
    assert second(x, labels).item() == first(x, labels).item()
    with pytest.raises(ValueError, match="checkpoint: saved a memory of 10 rows"):
        CrossBatchMemory(ft.PairLoss(1.0), 12, 5, dtype=torch.float64).load_state_dict(first.state_dict())
    for bad in ({"filled": 10**6}, {"next_slot": 10}, {"next_slot": -1}, {"filled": 4, "next_slot": 7}):
        state = first.state_dict()
        state["_extra_state"] = {**state["_extra_state"], **bad}
        with pytest.raises(ValueError, match="checkpoint"):
            CrossBatchMemory(ft.PairLoss(1.0, dtype=torch.float64), 10, 5, dtype=torch.float64).load_state_dict(state)


def test_a_batch_the_loss_refuses_leaves_the_queue_as_it_was():
    """A NaN batch or a non-contiguous one fails in the loss after the write: the queue, its
    labels and its position are restored, so the next calls match a memory that never saw it."""
    batches = _batches(3)
    for loss in (ft.TripletLoss(0.3, "hard"), ft.PairLoss(1.0, dtype=torch.float64)):
        memory = CrossBatchMemory(loss, 14, 5, dtype=torch.float64)
        clean = CrossBatchMemory(loss, 14, 5, dtype=torch.float64)
        for x, labels in batches[:2]:
            memory(x, labels)
            clean(x, labels)
        x, labels = batches[2]
        poisoned = x.clone()
        poisoned[0, 0] = float("nan")
        with pytest.raises(ValueError, match="embeddings: contains NaN or Inf"):
            memory(poisoned, labels)
        with pytest.raises(ValueError, match="embeddings: expected a contiguous tensor"):
            memory(x.t().contiguous().t(), labels)
        assert (memory.next_slot, memory.filled) == (clean.next_slot, clean.filled)
        assert torch.equal(memory.embeddings, clean.embeddings) and torch.equal(memory.labels, clean.labels)
        assert memory(x, labels).item() == clean(x, labels).item()


def test_cross_batch_memory_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="loss: expected a faceops.torch loss"):
        CrossBatchMemory(torch.nn.MSELoss(), 8, 5)
    memory = CrossBatchMemory(ft.TripletLoss(), 8, 5, dtype=torch.float64)
    x, labels = _batches(1, n=9)[0]
    with pytest.raises(ValueError, match=r"embeddings: expected 1 <= N <= memory_size \(8\)"):
        memory(x, labels)
    with pytest.raises(ValueError, match=r"embeddings: expected shape \(N, 5\)"):
        memory(x[:4, :4], labels[:4])
    with pytest.raises(ValueError, match="labels: expected an integer tensor"):
        memory(x[:4], labels[:4].double())


@pytest.mark.parametrize("squared", [True, False])
def test_cross_batch_memory_matches_pml_with_all_triplets(squared):
    """pml CrossBatchMemory(TripletMarginLoss(margin, LpDistance(power 2|1, no normalisation),
    MeanReducer()), no miner: every triplet of (batch anchor, queue positive, queue negative),
    self comparisons removed) == faceops CrossBatchMemory(TripletLoss(margin, "all"))."""
    pytest.importorskip("pytorch_metric_learning", reason="pytorch-metric-learning is not installed")
    from pytorch_metric_learning import distances, losses, reducers

    distance = distances.LpDistance(normalize_embeddings=False, p=2, power=2 if squared else 1)
    theirs = losses.CrossBatchMemory(losses.TripletMarginLoss(margin=0.3, distance=distance,
                                                              reducer=reducers.MeanReducer()), 5, memory_size=14)
    ours = CrossBatchMemory(ft.TripletLoss(0.3, "all", squared), 14, 5, dtype=torch.float64)
    for x, labels in _batches(5, seed=10):
        results = []
        for loss_fn in (ours, theirs):
            anchors = x.clone().requires_grad_()
            loss = loss_fn(anchors, labels)
            loss.backward()
            results.append((loss.detach(), anchors.grad))
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("embeddings, message", [
    (lambda x: (x * 10).long(), "embeddings: expected a float tensor"),
    (lambda x: x > 0, "embeddings: expected a float tensor"),
    (lambda x: x.to(torch.complex64), "embeddings: expected a float tensor"),
    (lambda x: x.double(), "embeddings: expected dtype torch.float32, the memory's .* got torch.float64"),
])
def test_cross_batch_memory_refuses_embeddings_its_queue_would_cast(embeddings, message):
    """int, bool and complex batches were cast into the float queue and trained on (loss 177.0)."""
    memory = CrossBatchMemory(ft.TripletLoss(0.2, "all"), 16, 4)
    x, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(TypeError, match=message):
        memory(embeddings(x), labels)
    assert memory.filled == 0
    assert torch.isfinite(memory(x.half(), labels))  # half against a float32 queue: upcast, as documented


@pytest.mark.parametrize("state", [{}, "queue", {"next_slot": 0, "filled": 0}])
def test_cross_batch_memory_names_a_hostile_extra_state(state):
    with pytest.raises(ValueError, match="checkpoint: the memory's extra state is .*; expected the dict of next_slot"):
        CrossBatchMemory(ft.TripletLoss(), 16, 4).set_extra_state(state)
