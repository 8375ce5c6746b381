"""The array boundary: checks what crosses into the kernels and hands them raw
addresses.

NumPy arrays go to the CPU kernels, CuPy arrays to the CUDA kernels on CuPy's
current stream; nothing is copied (a non-contiguous array is rejected, not
silently copied) except integer labels of another width, which are widened to
int64.  Outputs are allocated by the caller's own array library.
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
LABEL_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))


def _is_cupy(array):
    return type(array).__module__.split(".")[0] == "cupy"


def device_of(**arrays):
    """Returns ("cpu", numpy) or ("cuda", cupy) for the arrays, all on one device."""
    kinds = {}
    for name, array in arrays.items():
        if isinstance(array, np.ndarray):
            kinds[name] = "cpu"
        elif _is_cupy(array):
            kinds[name] = "cuda"
        else:
            raise TypeError(f"{name}: expected a numpy.ndarray or cupy.ndarray, got {type(array).__name__}")
    devices = set(kinds.values())
    if len(devices) > 1:
        where = ", ".join(f"{name} on {kind}" for name, kind in kinds.items())
        raise TypeError(f"arguments mix NumPy (CPU) and CuPy (GPU) arrays ({where}); pass all on one device")
    device = devices.pop()
    if device == "cpu":
        return device, np
    from faceops import _core

    if not _core.built_with_cuda():
        raise RuntimeError(
            f"{next(iter(arrays))}: got a CuPy array but faceops was built without CUDA support; "
            "pass NumPy arrays or rebuild faceops where nvcc is available"
        )
    import cupy

    return device, cupy


def check_matrix(name, array, dtype=None, rows=None, cols=None, classes=False):
    """Checks a C-contiguous (rows, cols) float32/float64 matrix; returns its shape.
    ``classes``: the rows are classes (centers, weights), so zero rows means no class."""
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (N, D), got shape {tuple(array.shape)}")
    if np.dtype(array.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {array.dtype}")
    if dtype is not None and np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)} like the features, got {array.dtype}")
    n, d = array.shape
    if rows is not None and n != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(array.shape)}")
    if cols is not None and d != cols:
        raise ValueError(f"{name}: expected {cols} columns, got shape {tuple(array.shape)}")
    if n == 0 and classes:
        raise ValueError(f"{name}: expected at least one class (num_classes > 0), got shape {tuple(array.shape)}")
    if n == 0:
        raise ValueError(f"{name}: empty batch (N = 0); expected at least one row")
    if d == 0:
        raise ValueError(f"{name}: expected a feature dimension D > 0, got shape {tuple(array.shape)}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array; pass an ascontiguousarray copy")
    return n, d


def check_writeable(name, array, **inputs):
    """An array an op writes in place must be writeable (a read-only NumPy array or
    np.memmap would be written through its pointer) and must not overlap the op's inputs."""
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        raise ValueError(f"{name}: the array is read-only (flags.writeable is False), but this op "
                         "updates it in place; pass a writeable array")
    for other, value in inputs.items():
        if isinstance(array, np.ndarray) and isinstance(value, np.ndarray) and np.shares_memory(array, value):
            raise ValueError(f"{name}: shares memory with {other}, but this op updates it in place; pass a copy")


def check_labels(name, labels, n, xp):
    """Checks (n,) integer labels; returns them as int64 (the only copy made: int32 widening).
    Their range is the core's to check on the CPU, DeviceChecks.in_range's on the GPU."""
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    if np.dtype(labels.dtype) not in LABEL_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {labels.dtype}")
    if not labels.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array")
    return labels.astype(xp.int64, copy=False)


class DeviceChecks:
    """The checks of device values that the CUDA kernels rely on (the CPU core makes its own),
    read back with one host synchronisation in all: each check queues device scalars and a
    verdict on their values (an error message, or None); run() copies every queued scalar to the
    host in one transfer and raises the first failure in the order queued.  Written for either
    array library; device_checks(xp) gives the ops one that queues nothing on NumPy arrays."""

    def __init__(self, xp, enabled=True):
        self._xp = xp
        self._enabled = enabled
        self._scalars = []
        self._verdicts = []  # (number of scalars, verdict)

    def _queue(self, scalars, verdict):
        if self._enabled:
            self._scalars.extend(scalars)
            self._verdicts.append((len(scalars), verdict))

    def finite(self, name, array):
        if self._enabled:
            self._queue([self._xp.isfinite(array).all()],
                        lambda ok: None if ok else f"{name}: contains NaN or Inf; expected finite values")

    def in_range(self, name, values, low, high, expected):
        """low <= every value < high; ``expected`` says so in the message, before the range found."""
        if self._enabled:
            self._queue([values.min(), values.max()],
                        lambda least, most: None if low <= least and most < high else
                        f"{name}: {expected}, got range [{least}, {most}]")

    def holds(self, condition, message):
        """A 0-d boolean device array that must be True."""
        self._queue([condition], lambda ok: None if ok else message)

    def run(self):
        if not self._scalars:
            return
        values = self._xp.stack([scalar.astype(self._xp.int64) for scalar in self._scalars]).tolist()
        start = 0
        for count, verdict in self._verdicts:
            message = verdict(*values[start:start + count])
            start += count
            if message is not None:
                raise ValueError(message)


def device_checks(xp):
    return DeviceChecks(xp, enabled=xp is not np)


def check_labels_in_range_cpu(name, labels, num_classes):
    """The CPU core checks label ranges itself, but a caller that renumbers labels
    first (center_loss's "rows" form) must check the original ones."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(f"{name}: label {bad} is out of range; expected 0 <= label < {num_classes}")


def address(array):
    """The data address of a NumPy or CuPy array (0 for None)."""
    if array is None:
        return 0
    if isinstance(array, np.ndarray):
        return array.__array_interface__["data"][0]
    return array.__cuda_array_interface__["data"][0]


def element_addresses(vector):
    """The address of each element of a contiguous 1-D array."""
    start = address(vector)
    return [start + k * vector.itemsize for k in range(vector.shape[0])]


def current_stream(xp):
    """CuPy's current stream (the kernels queue on it); 0 on the CPU."""
    return 0 if xp is np else xp.cuda.get_current_stream().ptr
