"""Triplet and pair losses against a reference set (faceops.triplet_loss_ref, pair_loss_ref):
the plain NumPy reference, finite differences, the chunk identity that makes an all-gathered
global batch exact, self_index, exact duplicates, empty cases and bad input.

Tolerances: testing.TOLERANCE (float32 kernels against the float64 reference: rtol 2e-4,
atol 2e-5 of the gradients' scale; float64: rtol 1e-10, atol 1e-12)."""

import numpy as np
import pytest

import faceops
from faceops import reference
from testing import DEVICES, DTYPES, MININGS, TOLERANCE, numerical_gradient, pk_labels, product, to_device, to_numpy


def assert_close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    scale = max(np.abs(expected).max(), 1.0)
    np.testing.assert_allclose(to_numpy(actual), expected, rtol=tol["rtol"], atol=tol["atol"] * scale)


def kink_gap(x, labels, ref, ref_labels, own, margin, squared):
    """Smallest distance to a kink: two candidate distances of one anchor tied (a mining
    decision) or a positive-negative hinge at 0."""
    gap = np.inf
    for a in range(len(x)):
        d = np.sum((ref - x[a]) ** 2, axis=1)
        d = d if squared else np.sqrt(d)
        candidate = np.arange(len(ref)) != own[a]
        values = np.sort(d[candidate])
        if len(values) > 1:
            gap = min(gap, np.min(np.diff(values)))
        pos = d[candidate & (ref_labels == labels[a])]
        neg = d[candidate & (ref_labels != labels[a])]
        if len(pos) and len(neg):
            gap = min(gap, np.min(np.abs(pos[:, None] - neg[None, :] + margin)))
    return gap


def kink_free_reference_batch(seed, margin, squared, n=7, m=11, dim=6, with_self=True):
    """x (n, dim) with labels, ref (m, dim) with labels; with_self: the first n rows of ref are
    copies of x (self_index = arange(n)), so the own-copy rule is exercised."""
    rng = np.random.default_rng(seed)
    for _ in range(200):
        labels = rng.integers(0, 3, n)
        x = rng.standard_normal((n, dim)) * 0.5
        extra = rng.standard_normal((m - n, dim)) * 0.5
        ref = np.concatenate([x, extra]) if with_self else rng.standard_normal((m, dim)) * 0.5
        ref_labels = np.concatenate([labels, rng.integers(0, 3, m - n)]) if with_self else rng.integers(0, 3, m)
        own = np.arange(n) if with_self else np.full(n, -1)
        if kink_gap(x, labels, ref, ref_labels, own, margin, squared) >= 1e-3:
            return x, labels, ref, ref_labels, (own if with_self else None)
    raise AssertionError("no kink-free batch found")


@pytest.mark.parametrize("device,dtype,mining,squared,with_self",
                         product(DEVICES, DTYPES, MININGS, [True, False], [True, False]))
def test_triplet_ref_matches_reference(device, dtype, mining, squared, with_self):
    margin = 0.5
    x, labels, ref, ref_labels, own = kink_free_reference_batch(3, margin, squared, with_self=with_self)
    x, ref = x.astype(dtype), ref.astype(dtype)
    loss, count, dx, dref = faceops.triplet_loss_ref(
        to_device(x, device), to_device(labels, device), to_device(ref, device), to_device(ref_labels, device),
        margin, mining, squared, None if own is None else to_device(own, device))
    ref_loss, ref_count, ref_dx, ref_dref = reference.triplet_loss_ref(
        x.astype(np.float64), labels, ref.astype(np.float64), ref_labels, margin, mining, squared, own)
    assert ref_loss > 0 and ref_count > 0
    assert count == ref_count
    assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"])
    assert dx.dtype == dtype and dx.shape == x.shape and dref.dtype == dtype and dref.shape == ref.shape
    assert_close(dx, ref_dx, dtype)
    assert_close(dref, ref_dref, dtype)


@pytest.mark.parametrize("device,dtype,with_self", product(DEVICES, DTYPES, [True, False]))
def test_pair_ref_matches_reference(device, dtype, with_self):
    theta = 1.5
    x, labels, ref, ref_labels, own = kink_free_reference_batch(5, 0.0, True, with_self=with_self)
    x, ref = x.astype(dtype), ref.astype(dtype)
    loss, count, dx, dref, dtheta = faceops.pair_loss_ref(
        to_device(x, device), to_device(labels, device), to_device(ref, device), to_device(ref_labels, device),
        theta, None if own is None else to_device(own, device))
    ref_loss, ref_count, ref_dx, ref_dref, ref_dtheta = reference.pair_loss_ref(
        x.astype(np.float64), labels, ref.astype(np.float64), ref_labels, theta, own)
    assert ref_loss > 0
    assert count == ref_count == len(x) * len(ref) - (0 if own is None else len(x))
    assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"])
    assert dtheta == pytest.approx(ref_dtheta, rel=TOLERANCE[dtype]["rtol"], abs=TOLERANCE[dtype]["atol"])
    assert_close(dx, ref_dx, dtype)
    assert_close(dref, ref_dref, dtype)


@pytest.mark.parametrize("mining,squared", product(MININGS, [True, False]))
def test_triplet_ref_gradients_match_finite_differences(mining, squared):
    margin = 0.5
    x, labels, ref, ref_labels, own = kink_free_reference_batch(9, margin, squared, n=5, m=8, dim=4)

    def loss_of_x(z):
        return faceops.triplet_loss_ref(z, labels, ref, ref_labels, margin, mining, squared, own)[0]

    def loss_of_ref(z):
        return faceops.triplet_loss_ref(x, labels, z, ref_labels, margin, mining, squared, own)[0]

    _, _, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, margin, mining, squared, own)
    assert np.abs(dx).max() > 0 and np.abs(dref).max() > 0
    np.testing.assert_allclose(dx, numerical_gradient(loss_of_x, x.copy()), atol=1e-7)
    np.testing.assert_allclose(dref, numerical_gradient(loss_of_ref, ref.copy()), atol=1e-7)


def test_pair_ref_gradients_match_finite_differences():
    theta = 1.5
    x, labels, ref, ref_labels, own = kink_free_reference_batch(13, 0.0, True, n=5, m=8, dim=4)
    _, _, dx, dref, dtheta = faceops.pair_loss_ref(x, labels, ref, ref_labels, theta, own)
    numeric_dx = numerical_gradient(lambda z: faceops.pair_loss_ref(z, labels, ref, ref_labels, theta, own)[0],
                                    x.copy())
    numeric_dref = numerical_gradient(lambda z: faceops.pair_loss_ref(x, labels, z, ref_labels, theta, own)[0],
                                      ref.copy())
    step = 1e-6
    numeric_dtheta = (faceops.pair_loss_ref(x, labels, ref, ref_labels, theta + step, own)[0]
                      - faceops.pair_loss_ref(x, labels, ref, ref_labels, theta - step, own)[0]) / (2 * step)
    np.testing.assert_allclose(dx, numeric_dx, atol=1e-7)
    np.testing.assert_allclose(dref, numeric_dref, atol=1e-7)
    assert dtheta == pytest.approx(numeric_dtheta, abs=1e-7)


def chunks_of(n, parts):
    """Uneven chunk boundaries for `parts` chunks of n rows."""
    if parts == 1:
        return [(0, n)]
    cuts = np.linspace(0, n, parts + 1).astype(int)
    cuts[1:-1] += np.arange(1, parts) % 2  # uneven sizes
    return list(zip(cuts[:-1], cuts[1:]))


def combine_chunks(call, x, labels, parts):
    """Runs call(chunk, chunk_labels, self_index) for each chunk against the whole batch and
    combines: loss = sum count_k loss_k / sum count_k; dx = anchor part + summed dref."""
    total, weighted, grads = 0.0, 0.0, []
    for start, stop in chunks_of(len(x), parts):
        own = np.arange(start, stop)
        loss, count, dx, dref = call(np.ascontiguousarray(x[start:stop]), labels[start:stop], own)[:4]
        total += count
        weighted += count * loss
        grads.append((start, stop, count, dx, dref))
    dx_total = np.zeros(x.shape, dtype=np.float64)
    for start, stop, count, dx, dref in grads:
        scale = count / total if total else 0.0
        dx_total[start:stop] += scale * dx
        dx_total += scale * dref
    return (weighted / total if total else 0.0), total, dx_total


@pytest.mark.parametrize("dtype,mining,squared,parts", product(DTYPES, MININGS, [True, False], [1, 2, 4]))
def test_triplet_chunks_against_the_batch_equal_the_in_batch_op(dtype, mining, squared, parts):
    rng = np.random.default_rng([parts, MININGS.index(mining)])
    labels = pk_labels(5, 4, rng)
    x = (rng.standard_normal((20, 16)) * 0.5).astype(dtype)
    x[7] = x[3]  # an exact duplicate: a tie the chunks must break as the batch does
    margin = 0.3

    def call(chunk, chunk_labels, own):
        return faceops.triplet_loss_ref(chunk, chunk_labels, x, labels, margin, mining, squared, own)

    loss, count, dx = combine_chunks(call, x, labels, parts)
    batch_loss, batch_dx = faceops.triplet_loss(x, labels, margin, mining, squared)
    assert count == {"semihard": 20 * 3, "hard": 20, "all": 20 * 3 * 16}[mining]
    tol = TOLERANCE[dtype]
    assert batch_loss > 0
    assert loss == pytest.approx(batch_loss, rel=tol["rtol"] if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dx, batch_dx, rtol=tol["rtol"] if dtype == np.float32 else 1e-11,
                               atol=tol["atol"] if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("mining,squared", product(MININGS, [True, False]))
def test_chunks_over_several_tiles_and_threads(mining, squared):
    # Chunks of 200 x 400 x 64 multiply-adds: past the kernels' one-thread threshold (2^22), 4 x 7 tiles of 64.
    rng = np.random.default_rng(3)
    labels = pk_labels(80, 5, rng)
    x = rng.standard_normal((400, 64))

    def call(chunk, chunk_labels, own):
        return faceops.triplet_loss_ref(chunk, chunk_labels, x, labels, 0.3, mining, squared, own)

    loss, _, dx = combine_chunks(call, x, labels, 2)
    batch_loss, batch_dx = faceops.triplet_loss(x, labels, 0.3, mining, squared)
    assert loss == pytest.approx(batch_loss, rel=1e-12)
    np.testing.assert_allclose(dx, batch_dx, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("op,n,m", [(op, n, m) for op in ("pair", "all") for n, m in ((96, 700), (700, 96))])
def test_threads_split_the_longer_side_and_both_gradients_match_the_reference(op, n, m):
    # n x m x 64 past the one-thread threshold (2^22); the threads split the side with more tiles of 64
    # (ref, then x) and keep a private copy of the other side's gradient.
    rng = np.random.default_rng(n)
    x, ref = rng.standard_normal((n, 64)) * 0.2, rng.standard_normal((m, 64)) * 0.2
    labels, ref_labels = rng.integers(0, 8, n), rng.integers(0, 8, m)
    if op == "pair":
        loss, count, dx, dref, _ = faceops.pair_loss_ref(x, labels, ref, ref_labels, 1.5)
        expected = reference.pair_loss_ref(x, labels, ref, ref_labels, 1.5)
    else:
        loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, 0.3, "all")
        expected = reference.triplet_loss_ref(x, labels, ref, ref_labels, 0.3, "all")
    assert count == expected[1] > 0
    assert loss == pytest.approx(expected[0], rel=1e-12)
    np.testing.assert_allclose(dx, expected[2], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dref, expected[3], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype,parts", product(DTYPES, [1, 2, 4]))
def test_pair_chunks_against_the_batch_equal_the_in_batch_op(dtype, parts):
    rng = np.random.default_rng(parts)
    labels = pk_labels(5, 4, rng)
    x = (rng.standard_normal((20, 16)) * 0.3).astype(dtype)
    theta = 2.0

    def call(chunk, chunk_labels, own):
        return faceops.pair_loss_ref(chunk, chunk_labels, x, labels, theta, own)

    loss, count, dx = combine_chunks(call, x, labels, parts)
    batch_loss, batch_dx, _ = faceops.pair_loss(x, labels, theta)
    assert count == 20 * 19
    tol = TOLERANCE[dtype]
    assert batch_loss > 0
    assert loss == pytest.approx(batch_loss, rel=tol["rtol"] if dtype == np.float32 else 1e-12)
    np.testing.assert_allclose(dx, batch_dx, rtol=tol["rtol"] if dtype == np.float32 else 1e-11,
                               atol=tol["atol"] if dtype == np.float32 else 1e-13)


@pytest.mark.parametrize("mining", MININGS)
def test_own_copy_is_never_a_positive(mining):
    # Each anchor's only row of its label in ref is its own copy: no positive anywhere.
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    labels = np.arange(4)
    ref = np.concatenate([rng.standard_normal((2, 3)), x])
    ref_labels = np.concatenate([[7, 8], labels])
    own = np.arange(2, 6)
    loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, 100.0, mining, True, own)
    assert (loss, count) == (0.0, 0.0)
    assert not dx.any() and not dref.any()
    # Without self_index the copies are positives at distance 0 (with this margin every hinge is active).
    loss, count, _, _ = faceops.triplet_loss_ref(x, labels, ref, ref_labels, 100.0, mining, True)
    assert count == {"semihard": 4, "hard": 4, "all": 4 * 5}[mining] and loss > 0


@pytest.mark.parametrize("mining", MININGS)
def test_own_copy_stays_a_candidate_of_other_anchors(mining):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4))
    labels = np.array([0, 0, 1])
    ref = x.copy()
    own = np.array([0, -1, 2])  # anchor 1 has no own copy: ref row 1 is its positive at distance 0
    loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, labels, 0.5, mining, True, own)
    ref_loss, ref_count, ref_dx, ref_dref = reference.triplet_loss_ref(x, labels, ref, labels, 0.5, mining, True, own)
    assert count == ref_count == {"semihard": 3, "hard": 2, "all": 3}[mining]
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(dx, ref_dx, atol=1e-12)
    np.testing.assert_allclose(dref, ref_dref, atol=1e-12)


@pytest.mark.parametrize("dtype,mining,squared", product(DTYPES, MININGS, [True, False]))
def test_exact_duplicates_follow_the_rules(dtype, mining, squared):
    rng = np.random.default_rng([MININGS.index(mining), int(squared)])
    for _ in range(150):
        m, d = int(rng.integers(2, 9)), int(rng.choice([1, 3, 17, 40]))
        n = int(rng.integers(1, m + 1))
        ref = rng.standard_normal((m, d))
        for _ in range(int(rng.integers(1, m))):
            source, target = rng.integers(0, m, 2)
            ref[target] = ref[source]
        ref_labels = rng.integers(0, 3, m)
        rows = rng.permutation(m)[:n]
        x, labels = ref[rows].copy(), ref_labels[rows].copy()
        own = np.where(rng.random(n) < 0.5, rows, -1)
        x, ref = x.astype(dtype), ref.astype(dtype)
        margin = 0.0 if rng.random() < 0.5 else 0.2
        loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, margin, mining, squared, own)
        ref_loss, ref_count, ref_dx, ref_dref = reference.triplet_loss_ref(
            x.astype(np.float64), labels, ref.astype(np.float64), ref_labels, margin, mining, squared, own)
        assert count == ref_count
        assert loss == pytest.approx(ref_loss, rel=TOLERANCE[dtype]["rtol"], abs=TOLERANCE[dtype]["atol"])
        assert_close(dx, ref_dx, dtype)
        assert_close(dref, ref_dref, dtype)


def test_no_positive_anywhere_gives_zero():
    x = np.ones((3, 2))
    ref = np.zeros((4, 2))
    for mining in MININGS:
        loss, count, dx, dref = faceops.triplet_loss_ref(x, np.arange(3), ref, np.arange(10, 14), 0.2, mining)
        assert (loss, count) == (0.0, 0.0) and not dx.any() and not dref.any()
    # One anchor whose only candidate is its own copy: no pair at all.
    loss, count, dx, dref, dtheta = faceops.pair_loss_ref(x[:1], np.zeros(1, np.int64), x[:1], np.zeros(1, np.int64),
                                                          1.0, np.zeros(1, np.int64))
    assert (loss, count, dtheta) == (0.0, 0.0, 0.0) and not dx.any() and not dref.any()


def _core_reference_call(op, x, labels, ref, ref_labels, self_index, want_dx, want_dref):
    """The core kernel through the bindings with a null dx or dref where not wanted (the torch
    front passes dref null when ref takes no gradient; the NumPy front always asks for both).
    The gradients are pre-filled with NaN, so a gradient the kernel fails to write shows."""
    from faceops import _core

    n, d = x.shape
    m = len(ref)
    out = np.full(3, np.nan, x.dtype)  # loss, count, dtheta
    dx = np.full_like(x, np.nan) if want_dx else None
    dref = np.full_like(ref, np.nan) if want_dref else None

    def address(a):
        return 0 if a is None else a.ctypes.data

    common = (x.dtype.name, "cpu", x.ctypes.data, labels.ctypes.data, n, d, ref.ctypes.data, ref_labels.ctypes.data,
              m, address(self_index))
    loss, count, dtheta = (address(out) + k * out.itemsize for k in range(3))
    if op == "pair":
        theta = np.array([1.5], x.dtype)  # by address, as the kernels take it
        _core.pair_loss_ref(*common, theta.ctypes.data, loss, count, address(dx), address(dref), dtheta, 0)
    else:
        _core.triplet_loss_ref(*common, 0.3, faceops.ops.MINING_MODES[op[0]], op[1], loss, count, address(dx),
                               address(dref), 0)
    return out, dx, dref


@pytest.mark.parametrize("dtype,op,size", product(
    DTYPES, [(mining, squared) for mining in MININGS for squared in (True, False)] + ["pair"],
    # (300, 700, 32): past the kernels' one-thread threshold, where each thread has private gradients.
    [(9, 20, 5), (300, 700, 32)]))
def test_one_gradient_alone_is_bitwise_the_one_of_both(dtype, op, size):
    """dref null (a queue that takes no gradient) or dx null: no buffer is written for the
    gradient not asked for (writing through the null pointer would crash this process), and the
    one asked for is bitwise the one computed with both."""
    n, m, d = size
    rng = np.random.default_rng(n)
    ref = rng.standard_normal((m, d)).astype(dtype)
    ref_labels = rng.integers(0, 6, m)
    x = np.concatenate([ref[:4], rng.standard_normal((n - 4, d)).astype(dtype)])
    labels = np.concatenate([ref_labels[:4], rng.integers(0, 6, n - 4)])
    self_index = np.concatenate([np.arange(4), np.full(n - 4, -1)])
    both = _core_reference_call(op, x, labels, ref, ref_labels, self_index, True, True)
    dx_alone = _core_reference_call(op, x, labels, ref, ref_labels, self_index, True, False)
    dref_alone = _core_reference_call(op, x, labels, ref, ref_labels, self_index, False, True)
    assert np.isfinite(both[1]).all() and np.isfinite(both[2]).all() and both[2].any()
    np.testing.assert_array_equal(dx_alone[0], both[0])
    np.testing.assert_array_equal(dref_alone[0], both[0])
    np.testing.assert_array_equal(dx_alone[1], both[1])
    np.testing.assert_array_equal(dref_alone[2], both[2])


def test_overflowing_rows_give_nan():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    ref = np.array([[1e200, 0.0], [0.0, 1.0], [1.0, 1.0]])
    loss, count, dx, dref = faceops.triplet_loss_ref(x, np.array([0, 1]), ref, np.array([0, 1, 0]), 0.2, "hard")
    assert np.isnan(loss) and np.isnan(count) and np.isnan(dx).all() and np.isnan(dref).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_explicit_triplets_whose_two_distances_overflow_give_nan_not_a_clean_zero(device, dtype):
    """Both squared distances inf: the hinge inf - inf was read as inactive, loss 0 and zero
    gradients, where the mined triplet losses give NaN (csrc/faceops/triplet_loss.h)."""
    big = 1e160 if dtype == np.float64 else 1e20
    anchor = np.zeros((2, 2), dtype)
    positive = np.array([[big, big], [1.0, 0.0]], dtype)
    negative = np.array([[big, big], [3.0, 0.0]], dtype)
    with np.errstate(over="ignore"):  # the reference's squares overflow, as they should
        expected = reference.triplet_loss_explicit(anchor, positive, negative, 1.0)
    for result in (faceops.triplet_loss_explicit(*(to_device(a, device) for a in (anchor, positive, negative)), 1.0),
                   expected):
        loss, *gradients = (to_numpy(r) if not isinstance(r, float) else r for r in result)
        assert np.isnan(loss) and all(np.isnan(g[0]).all() and np.isfinite(g[1]).all() for g in gradients)
    # One distance overflowing has a sign: an infinitely far positive is an active hinge, an
    # infinitely far negative an inactive one.
    far_positive = faceops.triplet_loss_explicit(anchor[:1], positive[:1], np.zeros((1, 2), dtype), 1.0)
    far_negative = faceops.triplet_loss_explicit(anchor[:1], np.zeros((1, 2), dtype), negative[:1], 1.0)
    assert far_positive[0] == np.inf and far_negative[0] == 0.0 and not far_negative[1].any()


def _valid():
    rng = np.random.default_rng(0)
    return dict(x=rng.standard_normal((3, 2)), labels=np.array([0, 1, 0]), ref=rng.standard_normal((4, 2)),
                ref_labels=np.array([0, 1, 1, 0]), self_index=np.array([0, -1, 3]))


BAD = [
    ("ref", lambda a: a["ref"].astype(np.float32), TypeError, "ref: expected dtype float64"),
    ("ref", lambda a: a["ref"][:, :1].copy(), ValueError, "ref: expected 2 columns"),
    ("ref", lambda a: np.where(np.arange(2) == 0, np.nan, a["ref"]), ValueError, "ref: contains NaN"),
    ("ref", lambda a: a["ref"][:0], ValueError, "ref: empty"),
    ("ref", lambda a: a["ref"].tolist(), TypeError, "ref: expected a numpy.ndarray"),
    ("ref_labels", lambda a: a["ref_labels"][:3], ValueError, "ref_labels: expected shape (4,)"),
    ("ref_labels", lambda a: a["ref_labels"].astype(np.float64), TypeError, "ref_labels: expected dtype int32"),
    ("self_index", lambda a: np.array([0, -1]), ValueError, "self_index: expected shape (3,)"),
    ("self_index", lambda a: np.array([0.0, -1.0, 3.0]), TypeError, "self_index: expected dtype int32"),
    ("self_index", lambda a: np.array([0, -2, 3]), ValueError, "self_index: entry -2 at index 1 is out of range"),
    ("self_index", lambda a: np.array([0, -1, 4]), ValueError, "self_index: entry 4 at index 2 is out of range"),
    ("self_index", lambda a: np.array([0, -1, 0]), ValueError, "self_index: anchors 0 and 2 both name ref row 0"),
    ("self_index", lambda a: np.array([0, 3, -1]), ValueError, "self_index: anchor 1's own copy, ref row 3, has label 0"),
    ("x", lambda a: np.where(np.arange(2) == 1, np.inf, a["x"]), ValueError, "x: contains NaN or Inf"),
]


@pytest.mark.parametrize("name,change,error,message", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
@pytest.mark.parametrize("op", ["triplet", "pair"])
def test_bad_input_names_the_argument(op, name, change, error, message):
    args = _valid()
    args[name] = change(args)
    with pytest.raises(error) as raised:
        if op == "triplet":
            faceops.triplet_loss_ref(args["x"], args["labels"], args["ref"], args["ref_labels"], 0.2, "semihard", True,
                                     args["self_index"])
        else:
            faceops.pair_loss_ref(args["x"], args["labels"], args["ref"], args["ref_labels"], 1.0, args["self_index"])
    assert message in str(raised.value)


def test_valid_arguments_pass_and_a_list_is_refused():
    args = _valid()
    faceops.triplet_loss_ref(**{k: args[k] for k in ("x", "labels", "ref", "ref_labels", "self_index")})
    with pytest.raises(TypeError, match="self_index: expected a numpy.ndarray"):
        faceops.pair_loss_ref(args["x"], args["labels"], args["ref"], args["ref_labels"], 1.0, [0, -1, 3])
    with pytest.raises(ValueError, match="mining: expected one of"):
        faceops.triplet_loss_ref(args["x"], args["labels"], args["ref"], args["ref_labels"], mining="hardest")


@pytest.mark.parametrize("self_index,message", [
    ([0, -1, 3], None),
    ([0, -2, 3], "self_index: entries must be -1"),
    ([0, -1, 4], "self_index: entries must be -1"),
    ([0, 3, -1], "another label than the anchor"),
    ([0, -1, 0], "two anchors name the same ref row"),
])
def test_the_gpu_front_checks_self_index_as_the_cpu_core(self_index, message):
    # The CUDA kernels rely on this check (run here on NumPy arrays: it is written for either library).
    args = _valid()
    checks = faceops._arrays.DeviceChecks(np)
    faceops.ops._queue_self_index_checks(checks, np.array(self_index), args["labels"], args["ref_labels"], 4, np)
    if message is None:
        checks.run()
        return
    with pytest.raises(ValueError, match=message):
        checks.run()
