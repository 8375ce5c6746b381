"""Bad input raises a Python exception whose message names the argument and
what was expected; nothing crashes and nothing is silently copied."""

from contextlib import contextmanager

import numpy as np
import pytest

import faceops

X = np.random.default_rng(0).standard_normal((6, 4))
LABELS = np.array([0, 0, 1, 1, 2, 2])
CENTERS = np.zeros((3, 4))

OPS = {
    "center_loss": lambda x, labels: faceops.center_loss(x, labels, CENTERS),
    "triplet_loss": lambda x, labels: faceops.triplet_loss(x, labels),
    "pair_loss": lambda x, labels: faceops.pair_loss(x, labels, 1.0),
    "contrastive_loss": lambda x, labels: faceops.contrastive_loss(x, x.copy(), labels),
}
FIRST_ARG = {"center_loss": "x", "triplet_loss": "x", "pair_loss": "x", "contrastive_loss": "a"}
LABEL_ARG = {"center_loss": "labels", "triplet_loss": "labels", "pair_loss": "labels", "contrastive_loss": "similar"}


@contextmanager
def raises(error, *fragments):
    with pytest.raises(error) as info:
        yield
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value!r}"


@pytest.mark.parametrize("op", OPS)
def test_wrong_rank(op):
    with raises(ValueError, FIRST_ARG[op], "2-D"):
        OPS[op](X.reshape(-1), LABELS)


@pytest.mark.parametrize("op", OPS)
def test_wrong_dtype(op):
    with raises(TypeError, FIRST_ARG[op], "float32 or float64"):
        OPS[op](X.astype(np.float16), LABELS)
    with raises(TypeError, FIRST_ARG[op], "float32 or float64"):
        OPS[op](X.astype(np.int64), LABELS)


@pytest.mark.parametrize("op", OPS)
def test_non_integer_labels(op):
    with raises(TypeError, LABEL_ARG[op], "int32 or int64"):
        OPS[op](X, LABELS.astype(np.float32))


@pytest.mark.parametrize("op", OPS)
def test_wrong_label_shape(op):
    with raises(ValueError, LABEL_ARG[op], "(6,)"):
        OPS[op](X, LABELS[:5])


@pytest.mark.parametrize("op", OPS)
def test_non_contiguous_is_rejected_not_copied(op):
    with raises(ValueError, FIRST_ARG[op], "C-contiguous"):
        OPS[op](np.asfortranarray(X), LABELS)
    with raises(ValueError, FIRST_ARG[op], "C-contiguous"):
        OPS[op](np.random.default_rng(1).standard_normal((6, 8))[:, ::2], LABELS)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf(op, bad):
    x = X.copy()
    x[2, 1] = bad
    with raises(ValueError, FIRST_ARG[op], "NaN or Inf"):
        OPS[op](x, LABELS)


@pytest.mark.parametrize("op", OPS)
def test_empty_batch(op):
    with raises(ValueError, FIRST_ARG[op], "empty batch"):
        OPS[op](np.zeros((0, 4)), np.zeros(0, np.int64))


@pytest.mark.parametrize("op", OPS)
def test_not_an_array(op):
    with raises(TypeError, FIRST_ARG[op], "numpy.ndarray or cupy.ndarray"):
        OPS[op](X.tolist(), LABELS)


@pytest.mark.parametrize("label", [-1, 3])
def test_center_labels_out_of_range(label):
    labels = LABELS.copy()
    labels[4] = label
    with raises(ValueError, "labels", f"label {label}", "0 <= label < 3"):
        faceops.center_loss(X, labels, CENTERS)
    with raises(ValueError, "labels", "0 <= label < 3"):
        faceops.center_update(X, labels, CENTERS.copy(), 0.5)


def test_center_shape_and_dtype_mismatch():
    with raises(ValueError, "centers", "4 columns"):
        faceops.center_loss(X, LABELS, np.zeros((3, 5)))
    with raises(TypeError, "centers", "float64"):
        faceops.center_loss(X, LABELS, np.zeros((3, 4), np.float32))
    with raises(ValueError, "alpha", "finite"):
        faceops.center_update(X, LABELS, CENTERS.copy(), float("nan"))


def test_contrastive_b_mismatch():
    with raises(ValueError, "b", "6 rows"):
        faceops.contrastive_loss(X, X[:5].copy(), LABELS)
    with raises(TypeError, "b", "float64"):
        faceops.contrastive_loss(X, X.astype(np.float32), LABELS)


def test_explicit_triplet_shapes():
    with raises(ValueError, "negative", "4 columns"):
        faceops.triplet_loss_explicit(X, X.copy(), np.zeros((6, 3)))


def test_bad_hyperparameters():
    with raises(ValueError, "mining", "semihard"):
        faceops.triplet_loss(X, LABELS, mining="hardest")
    with raises(ValueError, "margin", "finite"):
        faceops.triplet_loss(X, LABELS, margin=float("nan"))
    with raises(ValueError, "theta", "finite"):
        faceops.pair_loss(X, LABELS, float("inf"))


def test_cupy_array_without_cuda_build():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the mixed-device checks need it")
    if not faceops._core.built_with_cuda():
        with raises(RuntimeError, "built without CUDA"):
            faceops.triplet_loss(cupy.asarray(X), cupy.asarray(LABELS))


def test_mixed_numpy_and_cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed: the mixed-device checks need it")
    if not faceops.cuda_available():
        pytest.skip("no CUDA device: CuPy arrays cannot be created")
    with raises(TypeError, "mix NumPy (CPU) and CuPy (GPU)", "labels on cuda"):
        faceops.triplet_loss(X, cupy.asarray(LABELS))


def test_a_python_random_generator_is_refused_by_name():
    """random.Random passed the duck-typed check (it has .random) and failed later with
    'Random.random() takes no arguments'."""
    import random

    rng = np.random.default_rng(0)
    x, labels, weight = rng.standard_normal((8, 6)), np.arange(8) % 4, rng.standard_normal((40, 6))
    with pytest.raises(TypeError, match="rng: expected None, a seed .* or a NumPy or CuPy random Generator, got Random"):
        faceops.margin_softmax_loss(x, labels, weight, 8.0, sample_rate=0.5, rng=random.Random(0))
    for accepted in (np.random.RandomState(0), np.random.default_rng(0), np.random, 3):
        assert np.isfinite(faceops.margin_softmax_loss(x, labels, weight, 8.0, sample_rate=0.5, rng=accepted)[0])


@pytest.mark.parametrize("make", [lambda: faceops.CenterLoss(4, 5, xp="numpy"),
                                  lambda: faceops.MarginSoftmaxLoss(4, 5, xp=None)])
def test_loss_objects_name_an_xp_that_is_no_array_module(make):
    with pytest.raises(TypeError, match="xp: expected the numpy or the cupy module"):  # was AttributeError
        make()
