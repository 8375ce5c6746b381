"""faceops.torch.distributed.GlobalBatchLoss on real gloo process groups of 1, 2 and 4 processes
(one spawn per world size running every check, bounded in time): the triplet losses (semi-hard,
batch-hard, batch-all, squared or not) and the pair loss over the global batch equal the
single-process NumPy op over the concatenated batch, loss on every rank and each rank's gradient
of its own rows (and the ranks' dtheta summed); a batch with no term anywhere; bad input on one
rank raising the same error on every rank; CrossBatchMemory over ranks as one queue of the
global batches."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs torch (pip install torch==2.13.0)")

import faceops  # noqa: E402
import faceops.torch as ft  # noqa: E402
from faceops.torch import distributed as fdist  # noqa: E402
from ranks import run_ranks  # noqa: E402

ROWS, DIM, MARGIN, THETA = 6, 5, 0.3, 1.2  # rows per rank
WORLD_SIZES = [1, 2, 4]
XBM_STEPS = 3


def memory_size(world_size):
    return 2 * world_size * ROWS + 3  # the third step's batch wraps around
TRIPLETS = [(mining, squared) for mining in ("semihard", "hard", "all") for squared in (True, False)]


def global_batch(world_size, seed=21):
    """Labels from few classes, so each anchor has positives on other ranks too."""
    rng = np.random.default_rng(seed + world_size)
    return rng.standard_normal((world_size * ROWS, DIM)) * 0.5, rng.integers(0, 2 + world_size, world_size * ROWS)


def _mine(array, rank):
    return array[rank * ROWS:(rank + 1) * ROWS]


def _step(module, x_all, labels_all, rank, dtype):
    x = torch.tensor(_mine(x_all, rank), dtype=dtype, requires_grad=True)
    loss = fdist.GlobalBatchLoss(module)(x, torch.tensor(_mine(labels_all, rank)))
    loss.backward()
    return {"loss": loss.item(), "dx": x.grad.numpy().copy()}


def _error_of(call):
    try:
        call()
    except (ValueError, TypeError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _checks(rank, world_size):
    out = {}
    x_all, labels_all = global_batch(world_size)
    for mining, squared in TRIPLETS:
        out[("triplet", mining, squared, "f64")] = _step(ft.TripletLoss(MARGIN, mining, squared), x_all, labels_all,
                                                         rank, torch.float64)
    out[("triplet", "hard", True, "f32")] = _step(ft.TripletLoss(MARGIN, "hard"), x_all, labels_all, rank,
                                                  torch.float32)
    pair = ft.PairLoss(THETA, dtype=torch.float64)
    out["pair"] = _step(pair, x_all, labels_all, rank, torch.float64)
    out["pair"]["dtheta"] = pair.theta.grad.item()
    distinct = np.arange(world_size * ROWS)  # every label once: no positive anywhere
    out["no_terms"] = _step(ft.TripletLoss(MARGIN, "semihard"), x_all, distinct, rank, torch.float64)

    memory = ft.CrossBatchMemory(ft.TripletLoss(MARGIN, "hard"), memory_size(world_size), DIM,
                                 dtype=torch.float64)
    out["xbm"] = []
    for step in range(XBM_STEPS):
        xs, ys = global_batch(world_size, seed=40 + step)
        x = torch.tensor(_mine(xs, rank), requires_grad=True)
        loss = memory(x, torch.tensor(_mine(ys, rank)))
        loss.backward()
        out["xbm"].append({"loss": loss.item(), "dx": x.grad.numpy().copy(), "queue": memory.embeddings.numpy().copy()})

    loss_fn = fdist.GlobalBatchLoss(ft.TripletLoss(MARGIN, "hard"))
    good_x = torch.tensor(_mine(x_all, rank))
    good_labels = torch.tensor(_mine(labels_all, rank))
    last = rank == world_size - 1
    nan_x = good_x.clone()
    if last:
        nan_x[2, 1] = float("nan")
    out["error_nan"] = _error_of(lambda: loss_fn(nan_x, good_labels))
    rows = 4 if last else ROWS
    out["error_rows"] = _error_of(lambda: loss_fn(good_x[:rows], good_labels[:rows]))
    out["error_labels"] = _error_of(lambda: loss_fn(good_x, good_labels.double() if last else good_labels))
    out["after_errors"] = loss_fn(good_x, good_labels).item()
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("distributed_pairwise"))
    return {world_size: run_ranks(_checks, world_size, tmp) for world_size in WORLD_SIZES}


def _assert_matches(ranks, loss, dx, rtol):
    for r in ranks:  # every rank returns the global loss
        np.testing.assert_allclose(r["loss"], loss, rtol=rtol, atol=rtol * 1e-3)
    got = np.concatenate([r["dx"] for r in ranks])
    np.testing.assert_allclose(got, dx, rtol=0, atol=rtol * max(np.abs(dx).max(), 1e-30))


# float64 to 1e-10; float32 against the float32 single process: the ranks sum their terms in
# another order, so to 1e-5 of each quantity's scale (about 100 float32 ulps).
@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("mining,squared", TRIPLETS)
def test_triplet_equals_single_process(runs, world_size, mining, squared):
    x_all, labels_all = global_batch(world_size)
    loss, dx = faceops.triplet_loss(x_all, labels_all, MARGIN, mining, squared)
    assert loss > 0
    _assert_matches([r[("triplet", mining, squared, "f64")] for r in runs[world_size]], loss, dx, 1e-10)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_triplet_float32_equals_single_process(runs, world_size):
    x_all, labels_all = global_batch(world_size)
    loss, dx = faceops.triplet_loss(x_all.astype(np.float32), labels_all, MARGIN, "hard", True)
    _assert_matches([r[("triplet", "hard", True, "f32")] for r in runs[world_size]], loss, dx, 1e-5)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_pair_equals_single_process_with_theta_summed_over_ranks(runs, world_size):
    x_all, labels_all = global_batch(world_size)
    loss, dx, dtheta = faceops.pair_loss(x_all, labels_all, THETA)
    ranks = [r["pair"] for r in runs[world_size]]
    _assert_matches(ranks, loss, dx, 1e-10)
    np.testing.assert_allclose(sum(r["dtheta"] for r in ranks), dtheta, rtol=1e-10)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_cross_batch_memory_over_ranks_is_one_queue_of_the_global_batches(runs, world_size):
    """Every rank's queue holds every rank's batches, the same on every rank, and the loss and
    gradients are those of one process's CrossBatchMemory fed the concatenated batches."""
    single = ft.CrossBatchMemory(ft.TripletLoss(MARGIN, "hard"), memory_size(world_size), DIM, dtype=torch.float64)
    for step in range(XBM_STEPS):
        xs, ys = global_batch(world_size, seed=40 + step)
        x = torch.tensor(xs, requires_grad=True)
        loss = single(x, torch.tensor(ys))
        loss.backward()
        ranks = [r["xbm"][step] for r in runs[world_size]]
        _assert_matches(ranks, loss.item(), x.grad.numpy(), 1e-10)
        for r in ranks:
            np.testing.assert_array_equal(r["queue"], single.embeddings.numpy())


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_no_term_anywhere_gives_zero_loss_and_gradients(runs, world_size):
    for r in runs[world_size]:
        assert r["no_terms"]["loss"] == 0.0
        assert not np.any(r["no_terms"]["dx"])


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("case,message", [
    ("error_nan", "ValueError: x: rank {last}: contains NaN or Inf"),
    ("error_rows", "ValueError: x: rank {last}: shape (4, 5), rank 0 has (6, 5)"),
    ("error_labels", "TypeError: labels: rank {last}: expected an integer tensor"),
])
def test_bad_input_on_one_rank_raises_on_every_rank(runs, world_size, case, message):
    expected = message.format(last=world_size - 1)
    for r in runs[world_size]:
        assert r[case] is not None and r[case].startswith(expected), r[case]
    x_all, labels_all = global_batch(world_size)
    want, _ = faceops.triplet_loss(x_all, labels_all, MARGIN, "hard", True)
    for r in runs[world_size]:  # the group still works after the errors
        np.testing.assert_allclose(r["after_errors"], want, rtol=1e-12)


def test_global_batch_loss_takes_only_reference_set_losses():
    with pytest.raises(TypeError, match="loss: expected a faceops.torch loss that takes a reference set"):
        fdist.GlobalBatchLoss(ft.CenterLoss(4, 3))
