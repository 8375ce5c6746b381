"""benchmarks/numpy_peers.py is a timed peer: it must compute what faceops
computes, or the benchmark's ratios compare different numbers.  Checked against
faceops.reference (float64) on P x K batches and on labels with singletons."""

import importlib
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from faceops import reference
from testing import MININGS, pk_labels

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "numpy_peers.py"
_SPEC = importlib.util.spec_from_file_location("numpy_peers", _PATH)
numpy_peers = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(numpy_peers)


def batches():
    rng = np.random.default_rng(40)
    yield rng.standard_normal((48, 6)) / 2, pk_labels(12, 4, rng)
    # A singleton class (no positive), one class of 9, and a batch split over chunks.
    labels = np.r_[np.zeros(9, int), np.arange(1, 40) // 3]
    yield rng.standard_normal((len(labels), 5)) / 2, rng.permutation(labels)


@pytest.mark.parametrize("mining", MININGS)
def test_triplet_peer_matches_reference(mining, monkeypatch):
    monkeypatch.setattr(numpy_peers, "PAIR_CHUNK", 7)  # chunks that split anchors' groups
    for x, labels in batches():
        loss, dx = numpy_peers.triplet_loss(x, labels, 0.3, mining)
        ref_loss, ref_dx = reference.triplet_loss(x, labels, 0.3, mining)
        assert ref_loss > 0
        assert loss == pytest.approx(ref_loss, rel=1e-10)
        np.testing.assert_allclose(dx, ref_dx, rtol=1e-9, atol=1e-12)


def test_pair_peer_matches_reference():
    for x, labels in batches():
        got, expected = numpy_peers.pair_loss(x, labels, 1.0), reference.pair_loss(x, labels, 1.0)
        assert got[0] == pytest.approx(expected[0], rel=1e-10)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-9, atol=1e-12)
        assert got[2] == pytest.approx(expected[2], rel=1e-10)


def test_contrastive_peer_matches_reference():
    rng = np.random.default_rng(41)
    a, b = rng.standard_normal((64, 5)) / 3, rng.standard_normal((64, 5)) / 3
    similar = rng.integers(0, 2, 64)
    got, expected = numpy_peers.contrastive_loss(a, b, similar, 1.0), reference.contrastive_loss(a, b, similar, 1.0)
    assert got[0] == pytest.approx(expected[0], rel=1e-10)
    for g, e in zip(got[1:], expected[1:]):
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12)


# benchmarks/gpu_pairwise.py's dense PyTorch peers: the same definitions as faceops, or its
# GPU ratios compare different losses.
torch = pytest.importorskip("torch")
sys.path.insert(0, str(_PATH.parent))
gpu_pairwise = importlib.import_module("gpu_pairwise")
GPU_PEERS = {"pair": ("pair", None), "triplet_semihard": ("triplet", "semihard"), "triplet_hard": ("triplet", "hard"),
             "triplet_all": ("triplet", "all")}


@pytest.mark.parametrize("loss", gpu_pairwise.LOSSES)
def test_gpu_dense_peer_matches_reference(loss):
    """float64: loss to 1e-12 and dx to 1e-10 against faceops.reference on a P x 4 batch,
    with rows close enough together that the semi-hard fallback (no farther negative) occurs."""
    x, labels = gpu_pairwise.make_batch(torch, 48, 6, "cpu", torch.float64, seed=3)
    with torch.no_grad():
        x.mul_(0.6)
    value = gpu_pairwise.dense_pairwise_loss(torch, loss, gpu_pairwise.THETA)(x, labels)
    value.backward()
    kind, mining = GPU_PEERS[loss]
    x_np, labels_np = x.detach().numpy(), labels.numpy()
    if kind == "pair":
        expected_loss, expected_dx = reference.pair_loss(x_np, labels_np, gpu_pairwise.THETA)[:2]
    else:
        expected_loss, expected_dx = reference.triplet_loss(x_np, labels_np, gpu_pairwise.TRIPLET_MARGIN, mining)
    assert expected_loss > 0
    assert value.item() == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), expected_dx, rtol=1e-10, atol=1e-13)


def test_gpu_pairwise_protocol_measures_every_implementation_on_the_cpu():
    """The protocol's own code path (timing, ratios, bounds) at a tiny size on the CPU, so
    that a GPU session spends its time measuring, not debugging the script."""
    rows = gpu_pairwise.run([(loss, 32, 8) for loss in gpu_pairwise.LOSSES], "cpu", repeats=2, compile_peer=False)
    for row in rows:
        for name in ("faceops_fp32", "faceops_bf16", "torch_fp32", "torch_tf32", "torch_bf16"):
            assert row[name]["ms"] > 0, (row["loss"], name)
        assert row["ratio_fp32"] > 0 and row["ratio_bf16"] > 0
        assert 0 < row["bound_ms"]["bfloat16"] < row["bound_ms"]["float32"]
