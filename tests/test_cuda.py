"""CUDA kernels against the CPU kernels (the ground truth), CuPy's current
stream, and GPU-side bad input.  Everything here skips, with the reason, where
no GPU is present; CI compiles the CUDA code but cannot run it."""

import numpy as np
import pytest

import faceops
from faceops import _shard
from testing import DTYPES, MININGS, TOLERANCE, kink_free_batch, kink_gap_pair, pk_labels, product

pytestmark = pytest.mark.skipif(
    not faceops.cuda_available(), reason="CUDA kernels not built or no CUDA device present (faceops.cuda_available() is False)"
)


@pytest.fixture(scope="module")
def cupy():
    return pytest.importorskip("cupy", reason="CuPy is not installed (pip install .[cuda])")


def assert_same(gpu, cpu, dtype):
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(gpu.get(), cpu, rtol=tol["rtol"], atol=tol["atol"] * max(1.0, np.abs(cpu).max()))


# float64: at N = 1024 float32 distances from differently ordered sums can flip a
# mining choice between near-tied negatives (float32 is covered on kink-free
# batches in test_reference.py).
@pytest.mark.parametrize("dtype,mining,squared", product([np.float64], MININGS, [True, False]))
def test_triplet_gpu_matches_cpu(cupy, dtype, mining, squared):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((1024, 64)).astype(dtype)
    labels = pk_labels(256, 4, rng)
    cpu_loss, cpu_dx = faceops.triplet_loss(x, labels, 0.3, mining, squared)
    gpu_loss, gpu_dx = faceops.triplet_loss(cupy.asarray(x), cupy.asarray(labels), 0.3, mining, squared)
    assert isinstance(gpu_dx, cupy.ndarray) and gpu_dx.dtype == dtype
    assert gpu_loss == pytest.approx(cpu_loss, rel=TOLERANCE[dtype]["rtol"])
    assert_same(gpu_dx, cpu_dx, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_center_contrastive_gpu_match_cpu(cupy, dtype):
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1024, 32)).astype(dtype)
    labels = pk_labels(128, 8, rng)
    cpu = faceops.pair_loss(x, labels, 60.0)
    gpu = faceops.pair_loss(cupy.asarray(x), cupy.asarray(labels), 60.0)
    assert (gpu[0], gpu[2]) == (pytest.approx(cpu[0], rel=1e-4), pytest.approx(cpu[2], rel=1e-4))
    assert_same(gpu[1], cpu[1], dtype)

    centers = rng.standard_normal((1000, 32)).astype(dtype)
    cpu = faceops.center_loss(x, labels, centers)
    gpu = faceops.center_loss(cupy.asarray(x), cupy.asarray(labels), cupy.asarray(centers))
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-5)
    assert_same(gpu[1], cpu[1], dtype)
    assert_same(gpu[2], cpu[2], dtype)
    gpu_centers = cupy.asarray(centers)
    faceops.center_update(cupy.asarray(x), cupy.asarray(labels), gpu_centers, 0.5)
    faceops.center_update(x, labels, centers, 0.5)
    assert_same(gpu_centers, centers, dtype)

    b = rng.standard_normal((1024, 32)).astype(dtype)
    similar = (labels % 2).astype(np.int64)
    cpu = faceops.contrastive_loss(x, b, similar, 8.0)
    gpu = faceops.contrastive_loss(cupy.asarray(x), cupy.asarray(b), cupy.asarray(similar), 8.0)
    assert gpu[0] == pytest.approx(cpu[0], rel=1e-5)
    assert_same(gpu[1], cpu[1], dtype)


# docs/ops.md says every CUDA result is free of float atomics; on a GPU the
# blocks run in a different order every time, so repeated calls must agree bit
# for bit (cuda/emulation checks the same with a reversed block order).
# Semi-hard and batch-all add in fixed point: both dtypes (one or two int64
# words per element for float32, two for float64), one round of positives
# (K = 8) and several (K = 32), within the batch and against reference sets.
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_results_bitwise_reproducible(cupy, dtype):
    rng = np.random.default_rng(23)
    x = cupy.asarray(rng.standard_normal((1024, 64)).astype(dtype))  # 16 candidate splits
    labels = cupy.asarray(pk_labels(128, 8, rng))
    few_classes = cupy.asarray(pk_labels(32, 32, rng))
    ref = cupy.asarray(rng.standard_normal((700, 64)).astype(dtype))
    ref_labels = cupy.asarray(rng.integers(0, 40, 700))
    centers = cupy.asarray(rng.standard_normal((1000, 64)).astype(dtype))
    ops = {
        "pair_loss": lambda: faceops.pair_loss(x, labels, 60.0),
        "center_loss": lambda: faceops.center_loss(x, labels, centers),
    }
    for mining in MININGS:
        for squared in (True, False):
            ops[f"triplet_loss {mining} squared={squared}"] = (
                lambda m=mining, s=squared: faceops.triplet_loss(x, labels, 0.3, m, s))
        ops[f"triplet_loss {mining} K=32"] = (
            lambda m=mining: faceops.triplet_loss(x, few_classes, 0.3, m, False))
        ops[f"triplet_loss_ref {mining}"] = (
            lambda m=mining: faceops.triplet_loss_ref(x[:300], few_classes[:300] % 40, ref,
                                                      ref_labels, 0.3, m, False))
    # Batch-all against 24,000 rows: a count bound past 2^29, where float32 takes
    # two words per element too (fixed_point_words in cuda/fixed_point.cuh).
    many = cupy.asarray(rng.standard_normal((24000, 64)).astype(dtype))
    many_labels = cupy.asarray(rng.integers(0, 40, 24000))
    ops["triplet_loss_ref all, 24,000 candidates"] = lambda: faceops.triplet_loss_ref(
        x[:64], few_classes[:64] % 40, many, many_labels, 0.3, "all", False)
    for name, op in ops.items():
        first = [cupy.asnumpy(cupy.asarray(r)) for r in op()]
        for _ in range(4):
            again = [cupy.asnumpy(cupy.asarray(r)) for r in op()]
            for a, b in zip(first, again):
                assert a.tobytes() == b.tobytes(), name


# FACEOPS_CUDA_GRAM=tf32x3 (cuda/tensor_cores.cuh, opt-in): the float32 kernels that take the
# tensor-core Gram (pair, batch-hard, margin softmax) against the float64 CPU kernels at float32's
# tolerance, which 3xTF32 keeps (one TF32 product would be off by about 5e-4 of |x_i| |x_j|), on
# kink-free batches so that no mining choice hangs on the last bits; bitwise reproducible too.
def _batch_hard_gap(x, labels, margin=0.3):
    """Smallest distance of batch-hard's decisions to a tie: the farthest positive and the
    closest negative of every anchor from their runners-up, and the hinge from 0."""
    d = np.sum((x[:, None] - x[None]) ** 2, axis=2)
    gap = np.inf
    for a in range(len(x)):
        same = labels == labels[a]
        same[a] = False
        positives, negatives = np.sort(d[a][same])[::-1], np.sort(d[a][labels != labels[a]])
        gap = min(gap, positives[0] - positives[1], negatives[1] - negatives[0],
                  abs(positives[0] - negatives[0] + margin))
    return gap


def _tensor_core_cases():
    x, labels = kink_free_batch(31, 64, 4, 96, _batch_hard_gap)
    px, plabels = kink_free_batch(32, 64, 4, 96, lambda x, y: kink_gap_pair(x, y, 60.0), min_gap=1e-4)
    rng = np.random.default_rng(33)
    return {
        "hard": (lambda a, y: faceops.triplet_loss(a, y, 0.3, "hard", True), (x, labels)),
        "pair": (lambda a, y: faceops.pair_loss(a, y, 60.0), (px, plabels)),
        "margin_softmax": (faceops.margin_softmax_loss, (rng.standard_normal((300, 96)), rng.integers(0, 1000, 300),
                                                          rng.standard_normal((1000, 96)))),
    }


@pytest.mark.parametrize("loss", ["hard", "pair", "margin_softmax"])
def test_tensor_core_gram_keeps_float32_accuracy(cupy, monkeypatch, loss):
    op, arrays = _tensor_core_cases()[loss]
    expected = op(*arrays)  # float64 on the CPU
    monkeypatch.setenv("FACEOPS_CUDA_GRAM", "tf32x3")
    on_gpu = [cupy.asarray(a.astype(np.float32) if a.dtype.kind == "f" else a) for a in arrays]
    first = [cupy.asnumpy(cupy.asarray(r)) for r in op(*on_gpu)]
    for got, want in zip(first, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * max(np.abs(want).max(), 1e-30))
    again = [cupy.asnumpy(cupy.asarray(r)) for r in op(*on_gpu)]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, again))


def _duplicate_tie_case():
    """The kink-free batch-hard batch with the closest negative of anchor 0 copied into a row of
    its identity with a higher index: anchors that had it as their closest negative now have
    two, exactly tied, and the CPU rule gives the tie to the lower index."""
    x, labels = kink_free_batch(31, 64, 4, 96, _batch_hard_gap)
    distances = np.sum((x - x[0]) ** 2, axis=1)
    original = int(np.flatnonzero(labels != labels[0])[np.argmin(distances[labels != labels[0]])])
    copy = int(np.flatnonzero(labels == labels[original]).max())
    assert copy > original
    x[copy] = x[original]
    return x, labels


@pytest.mark.parametrize("gram", ["fma", "tf32x3"])
def test_ties_between_duplicated_rows_go_to_the_lower_index(cupy, monkeypatch, gram):
    # On the tensor cores the two copies sit in other columns of an mma: their distances to an
    # anchor must still be the same bits, or the tie would go to the copy.
    x, labels = _duplicate_tie_case()
    expected = faceops.triplet_loss(x, labels, 0.3, "hard", True)  # float64 on the CPU
    monkeypatch.setenv("FACEOPS_CUDA_GRAM", gram)
    loss, dx = faceops.triplet_loss(cupy.asarray(x.astype(np.float32)), cupy.asarray(labels), 0.3, "hard", True)
    assert float(loss) == pytest.approx(expected[0], rel=2e-4)
    np.testing.assert_allclose(cupy.asnumpy(dx), expected[1], rtol=0, atol=2e-4 * np.abs(expected[1]).max())


def test_an_unknown_cuda_gram_is_refused(cupy, monkeypatch):
    monkeypatch.setenv("FACEOPS_CUDA_GRAM", "tf32")
    x = cupy.asarray(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match="FACEOPS_CUDA_GRAM: expected 'fma' or 'tf32x3', got 'tf32'"):
        faceops.pair_loss(x, cupy.asarray(np.array([0, 0, 1, 1])), 1.0)


def test_runs_on_cupys_current_stream(cupy):
    rng = np.random.default_rng(22)
    x = rng.standard_normal((512, 32)).astype(np.float32)
    labels = pk_labels(128, 4, rng)
    expected = faceops.triplet_loss(x, labels, 0.3, "all")
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        x_gpu, labels_gpu = cupy.asarray(x), cupy.asarray(labels)
        loss, dx = faceops.triplet_loss(x_gpu, labels_gpu, 0.3, "all")
        # Work queued after ours on the same stream sees the finished gradient.
        total = float(dx.sum())
    assert loss == pytest.approx(expected[0], rel=1e-4)
    assert total == pytest.approx(float(expected[1].sum()), abs=1e-3)


def test_gpu_bad_input(cupy):
    x = cupy.zeros((4, 3), cupy.float32)
    with pytest.raises(ValueError, match="labels.*0 <= label < 2"):
        faceops.center_loss(x, cupy.asarray([0, 1, 2, 0]), cupy.zeros((2, 3), cupy.float32))
    bad = x.copy()
    bad[1, 1] = cupy.nan
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        faceops.triplet_loss(bad, cupy.asarray([0, 0, 1, 1]))
    with pytest.raises(TypeError, match="mix NumPy"):
        faceops.triplet_loss(x, np.array([0, 0, 1, 1]))


def _gpu_bad_calls(cupy):
    """(call, message) for each device-value check the CUDA kernels rely on."""
    x = cupy.asarray(np.random.default_rng(5).standard_normal((4, 3)), cupy.float32)
    labels, weight = cupy.asarray([0, 0, 1, 1]), cupy.ones((2, 3), cupy.float32)
    nan_row = cupy.ones((3, 3), cupy.float32)
    nan_row[2, 0] = cupy.nan
    ref, ref_labels = x.copy(), labels.copy()
    cosine = cupy.zeros((4, 2), cupy.float32)
    return [
        (lambda: faceops.margin_softmax_loss(x, cupy.asarray([0, 2, 1, 1]), weight),
         r"labels.*0 <= label < 2.*\[0, 2\]"),
        (lambda: faceops.margin_softmax_loss(x, labels, nan_row[1:]), "weight: contains NaN"),
        # A NaN in a centre row that the batch reads (rows it does not read are not checked).
        (lambda: faceops.center_loss(x, cupy.asarray([0, 2, 1, 1]), nan_row), "centers: contains NaN"),
        (lambda: faceops.center_loss(x, cupy.asarray([-1, 0, 1, 1]), nan_row), r"labels.*\[-1, 1\]"),
        (lambda: faceops.target_margin_backward(cosine, labels, cupy.full((4, 2), cupy.nan, cupy.float32)),
         "d_out: contains NaN"),
        (lambda: faceops.triplet_loss_ref(x, labels, ref, ref_labels, self_index=cupy.asarray([0, -1, 4, -1])),
         "self_index: entries must be -1"),
        (lambda: faceops.triplet_loss_ref(x, labels, ref, ref_labels, self_index=cupy.asarray([2, -1, -1, -1])),
         "another label than the anchor"),
        (lambda: faceops.pair_loss_ref(x, labels, ref, ref_labels, 1.0, cupy.asarray([0, 0, -1, -1])),
         "two anchors name the same ref row"),
        (lambda: faceops.contrastive_loss(x, cupy.full((4, 3), cupy.nan, cupy.float32), labels), "b: contains NaN"),
        (lambda: _shard.margin_softmax_shard_forward(x, cupy.asarray([0, -2, 1, 1]), weight),
         r"labels: expected -1 \(another shard\).*\[-2, 1\]"),
    ]


def test_gpu_device_value_checks_name_the_argument(cupy):
    for call, message in _gpu_bad_calls(cupy):
        with pytest.raises(ValueError, match=message):
            call()
    # The valid calls beside them pass the same checks.
    x = cupy.asarray(np.random.default_rng(5).standard_normal((4, 3)), cupy.float32)
    faceops.triplet_loss_ref(x, cupy.asarray([0, 0, 1, 1]), x.copy(), cupy.asarray([0, 0, 1, 1]),
                             self_index=cupy.asarray([0, 1, -1, 3]))
