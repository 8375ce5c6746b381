"""The array boundary (faceops._arrays): zero copy, and the result of a view
is the result of its copy (the kernels read through the view's address)."""

import numpy as np
import pytest

import faceops
from faceops import _arrays


def test_address_is_the_data_pointer_of_the_view():
    base = np.random.default_rng(0).standard_normal((10, 4))
    view = base[3:]
    assert _arrays.address(view) == base.ctypes.data + 3 * 4 * base.itemsize
    assert _arrays.address(None) == 0


def test_op_on_a_row_offset_view_reads_that_view():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((12, 4))
    labels = np.repeat(np.arange(3), 3)
    loss_view, dx_view = faceops.triplet_loss(base[3:], labels, 0.5, "all")
    loss_copy, dx_copy = faceops.triplet_loss(base[3:].copy(), labels, 0.5, "all")
    assert loss_view == loss_copy
    np.testing.assert_array_equal(dx_view, dx_copy)


def test_int32_labels_widened_once_and_results_equal():
    x = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    labels = np.repeat(np.arange(4), 2)
    a = faceops.pair_loss(x, labels.astype(np.int32), 1.0)
    b = faceops.pair_loss(x, labels.astype(np.int64), 1.0)
    assert a[0] == b[0] and a[2] == b[2]
    np.testing.assert_array_equal(a[1], b[1])


def test_outputs_have_the_inputs_dtype_and_kind():
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(3).standard_normal((6, 3)).astype(dtype)
        centers = np.zeros((2, 3), dtype)
        _, dx, dcenters = faceops.center_loss(x, np.array([0, 1] * 3), centers)
        assert isinstance(dx, np.ndarray) and dx.dtype == dtype and dcenters.dtype == dtype


def test_cuda_available_is_false_without_a_device_and_never_raises():
    assert isinstance(faceops.cuda_available(), bool)
    assert isinstance(faceops.__version__, str) and faceops.__version__


def test_device_checks_raise_the_first_failure_in_the_order_queued():
    # Written for either library (the ops use it on CuPy arrays); run here on NumPy arrays.
    finite, broken = np.ones(3), np.array([1.0, np.nan])
    checks = _arrays.DeviceChecks(np)
    checks.finite("a", finite)
    checks.in_range("labels", np.array([0, 5, 2]), 0, 4, "expected 0 <= label < 4")
    checks.finite("b", broken)
    with pytest.raises(ValueError, match=r"^labels: expected 0 <= label < 4, got range \[0, 5\]$"):
        checks.run()
    checks = _arrays.DeviceChecks(np)
    checks.in_range("labels", np.array([-1, 3]), -1, 4, "expected -1 or 0 <= label < 4")
    checks.holds(np.array(True), "never raised")
    checks.finite("b", broken)
    with pytest.raises(ValueError, match="^b: contains NaN or Inf"):
        checks.run()


def test_device_checks_pass_valid_values_and_queue_nothing_for_numpy_ops():
    checks = _arrays.DeviceChecks(np)
    checks.in_range("labels", np.array([-1, 3]), -1, 4, "unused")
    checks.finite("x", np.zeros((2, 2)))
    checks.holds(np.array(True), "unused")
    checks.run()
    # The ops' instance for NumPy arrays leaves these checks to the CPU core, which makes its own.
    cpu_checks = _arrays.device_checks(np)
    cpu_checks.finite("x", np.array([np.nan]))
    cpu_checks.in_range("labels", np.array([7]), 0, 1, "unused")
    cpu_checks.run()
    with pytest.raises(ValueError, match="x"):
        faceops.triplet_loss(np.array([[np.nan], [0.0]]), np.array([0, 0]))
