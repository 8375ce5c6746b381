"""What the core tests run over: dtypes, devices (CUDA only where a GPU is
present, otherwise skipped with the reason), tolerances, and kink-free inputs."""

import itertools

import numpy as np
import pytest

import faceops
from faceops.selfcheck import numerical_gradient  # noqa: F401  (re-exported for the tests)

DTYPES = [np.float32, np.float64]
MININGS = ["semihard", "hard", "all"]

_NO_GPU = "CUDA kernels not built or no CUDA device present (faceops.cuda_available() is False)"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not faceops.cuda_available(), reason=_NO_GPU)),
]

# float32 kernels against float64 references: relative to the gradients' scale.
TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _case_id(value):
    return getattr(value, "__name__", str(value))


def product(*axes):
    """itertools.product over parametrize axes, keeping each value's marks."""
    cases = []
    for combo in itertools.product(*axes):
        values, marks = [], []
        for item in combo:
            if isinstance(item, type(pytest.param(None))):
                values.extend(item.values)
                marks.extend(item.marks)
            else:
                values.append(item)
        cases.append(pytest.param(*values, marks=marks, id="-".join(map(_case_id, values))))
    return cases


def to_device(array, device):
    if device == "cpu":
        return np.array(array, order="C", copy=True)
    import cupy

    return cupy.asarray(array)


def to_numpy(array):
    return array if isinstance(array, np.ndarray) else array.get()


def pk_labels(identities, per_identity, rng=None):
    """P x K labels, shuffled when rng is given."""
    labels = np.repeat(np.arange(identities), per_identity)
    return labels if rng is None else rng.permutation(labels)


def kink_gap_triplet(x, labels, margin, squared):
    """Smallest distance of the input to a kink of any triplet loss: a hinge at 0
    or a tie between two distances from the same anchor (a mining decision)."""
    n = len(labels)
    gap = np.inf
    for a in range(n):
        d = np.sum((x - x[a]) ** 2, axis=1)
        d = d if squared else np.sqrt(d)
        others = np.sort(np.delete(d, a))
        gap = min(gap, np.min(np.diff(others)) if len(others) > 1 else np.inf)
        pos = d[(labels == labels[a]) & (np.arange(n) != a)]
        neg = d[labels != labels[a]]
        if len(pos) and len(neg):
            gap = min(gap, np.min(np.abs(pos[:, None] - neg[None, :] + margin)))
    return gap


def kink_gap_pair(x, labels, theta):
    d = np.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=2)
    y = np.where(labels[:, None] == labels[None, :], 1.0, -1.0)
    hinge = 1.0 - y * (theta - d)
    return np.min(np.abs(hinge[~np.eye(len(labels), dtype=bool)]))


def kink_free_batch(seed, identities, per_identity, dim, gap_of, min_gap=1e-3):
    """A shuffled P x K batch whose distance to every kink (gap_of(x, labels)) is
    at least min_gap, so finite differences and float32 mining are exact there."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        labels = pk_labels(identities, per_identity, rng)
        x = rng.standard_normal((identities * per_identity, dim)) * 0.5
        if gap_of(x, labels) >= min_gap:
            return x, labels
    raise AssertionError("no kink-free batch found: loosen min_gap or change the sizes")
