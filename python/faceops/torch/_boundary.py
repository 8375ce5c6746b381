"""The tensor boundary of faceops.torch: what a tensor must be to reach a kernel,
and the one call that hands a kernel its raw addresses and stream.

Shared by the ops (faceops.torch._library) and faceops.torch.distributed; the
names below are stable.

- Dense, contiguous CPU or CUDA tensors only; a non-contiguous tensor is
  rejected with the argument's name, never silently copied (as the NumPy front).
- float32 and float64 reach the kernels by ``data_ptr()``.  float16 and
  bfloat16 are upcast to float32 (one copy, ``compute_input``): the kernels
  exist for float32 and float64, and the float32 accumulation is what half
  precision wants anyway.  Results are cast back to the input dtype.
- Labels are int32 or int64, never float, never requiring grad; int32 is
  widened to int64 (the one copy, as in faceops._arrays).
- Device-value checks (NaN/Inf, label range) run only when ``check`` is true:
  on CUDA as asynchronous device assertions (no host synchronisation); on the
  CPU the core already checks features and label ranges, so only the inputs it
  does not check are looked at here.
"""

import numpy as np
import torch

from faceops import _core

FLOAT_DTYPES = (torch.float32, torch.float64)
HALF_DTYPES = (torch.float16, torch.bfloat16)
LABEL_DTYPES = (torch.int32, torch.int64)


def require_tensors(**tensors):
    """A TypeError naming the first argument that is not a torch.Tensor."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")


def device_of(**tensors):
    """The device type, "cpu" or "cuda", of tensors that must all be on one device."""
    require_tensors(**tensors)
    devices = {name: tensor.device for name, tensor in tensors.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"arguments are on different devices ({where}); pass all on one device")
    name, device = next(iter(devices.items()))
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name}: expected a CPU or CUDA tensor, got a tensor on {device}")
    if device.type == "cuda" and not _core.built_with_cuda():
        raise RuntimeError(
            f"{name}: got a CUDA tensor but faceops was built without CUDA support; "
            "pass CPU tensors or rebuild faceops where nvcc is available (FACEOPS_CUDA=ON)"
        )
    return device.type


def check_matrix(name, tensor, dtype=None, rows=None, cols=None, classes=False):
    """Checks a contiguous dense (rows, cols) float tensor, one row per class when ``classes``;
    returns its shape."""
    if tensor.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {tensor.layout}")
    if tensor.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (N, D), got shape {tuple(tensor.shape)}")
    if tensor.dtype not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(f"{name}: expected dtype float16, bfloat16, float32 or float64, got {tensor.dtype}")
    if dtype is not None and tensor.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} like the features, got {tensor.dtype}")
    n, d = tensor.shape
    if rows is not None and n != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(tensor.shape)}")
    if cols is not None and d != cols:
        raise ValueError(f"{name}: expected {cols} columns, got shape {tuple(tensor.shape)}")
    if n == 0 and classes:
        raise ValueError(f"{name}: expected at least one class (num_classes > 0), got shape {tuple(tensor.shape)}")
    if n == 0:
        raise ValueError(f"{name}: empty batch (N = 0); expected at least one row")
    if d == 0:
        raise ValueError(f"{name}: expected a feature dimension D > 0, got shape {tuple(tensor.shape)}")
    check_contiguous(name, tensor)
    return n, d


def check_contiguous(name, tensor):
    if not tensor.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (strides {tensor.stride()} for shape "
                         f"{tuple(tensor.shape)}); pass {name}.contiguous()")


def check_no_overlap(name, tensor, **inputs):
    """A contiguous tensor an op writes in place must not overlap the op's (contiguous) inputs:
    the kernel would read rows it has already written."""
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    for other, value in inputs.items():
        other_start = value.data_ptr()
        other_end = other_start + value.numel() * value.element_size()
        if value.device == tensor.device and start < other_end and other_start < end:
            raise ValueError(f"{name}: shares memory with {other}, but this op updates it in place; pass a copy")


def check_labels(name, labels, n):
    """Checks (n,) integer labels (any length for n None); returns them as contiguous int64
    (int32 is widened)."""
    require_tensors(**{name: labels})
    if labels.requires_grad:
        raise TypeError(f"{name}: expected integer labels that do not require grad")
    if labels.dim() != 1 or (n is not None and labels.shape[0] != n):
        raise ValueError(f"{name}: expected shape ({'N' if n is None else n},), got {tuple(labels.shape)}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {labels.dtype}")
    check_contiguous(name, labels)
    return labels if labels.dtype == torch.int64 else labels.to(torch.int64)


def parameter_dtype(dtype):
    """A module's ``dtype`` argument: one of the float dtypes the ops take."""
    if dtype not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(f"dtype: expected torch.float16, torch.bfloat16, torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def kernel_numpy_dtype(dtype):
    """The NumPy dtype the kernels run in for tensors of ``dtype``, in which faceops._params
    checks the hyperparameters (float32 for the half dtypes)."""
    return np.float64 if compute_dtype(dtype) == torch.float64 else np.float32


def compute_dtype(dtype):
    """The dtype the kernels run in: float32 for float16/bfloat16, else the dtype itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype


def compute_input(tensor):
    """``tensor`` in its compute dtype: itself for float32/float64 (zero copy)."""
    return tensor.to(torch.float32) if tensor.dtype in HALF_DTYPES else tensor


def check_values(device, check, finite, core_checked=(), labels=None, num_classes=None, core_checks_labels=True):
    """On demand (``check``), that the float tensors in ``finite`` (name -> tensor)
    hold no NaN/Inf and, when num_classes is given, that 0 <= labels < num_classes.

    On CUDA these are device assertions queued on the current stream: no host
    synchronisation, and a failure is a device-side assert (the CUDA context is
    lost, as with any device assert) carrying the message.  On the CPU the core
    checks the inputs named in ``core_checked`` and, unless core_checks_labels is
    False, the label ranges itself; the rest raise ValueError here (RuntimeError
    from torch._assert_async inside a torch.compile graph).
    """
    if not check:
        return
    for name, tensor in finite.items():
        if device == "cuda" or name not in core_checked:
            _require(device, torch.isfinite(tensor).all(), f"{name}: contains NaN or Inf; expected finite values")
    if num_classes is not None and (device == "cuda" or not core_checks_labels):
        _require(device, ((labels >= 0) & (labels < num_classes)).all(),
                 f"labels: out of range; expected 0 <= label < {num_classes}")


def check_self_index(device, check, self_index, labels, ref_labels, m):
    """On demand (``check``), csrc/checks.h's check_self_index on CUDA, where the kernels rely on
    it (the CPU core checks it itself): every entry -1 or a row of ref carrying the anchor's
    label, no ref row named by two anchors."""
    if not check or device != "cuda" or self_index.numel() == 0:
        return
    _require(device, ((self_index >= -1) & (self_index < m)).all(),
             f"self_index: out of range; expected -1 (no own copy) or a row of ref, 0 <= entry < {m}")
    owned = self_index >= 0
    row = self_index.clamp(0, m - 1)
    _require(device, (~owned | (ref_labels[row] == labels)).all(),
             "self_index: an anchor's own copy has another label than the anchor; an own copy carries its "
             "anchor's label")
    uses = torch.zeros(m, dtype=torch.int64, device=self_index.device).index_add_(0, row, owned.to(torch.int64))
    _require(device, (uses <= 1).all(),
             "self_index: two anchors name the same ref row as their own copy; a ref row is at most one anchor's copy")


def _require(device, condition, message):
    if device == "cuda" or torch.compiler.is_compiling():
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message)


def address(tensor):
    """The data address of a tensor (0 for None: the kernels skip null outputs)."""
    return 0 if tensor is None else tensor.data_ptr()


def call_kernel(kernel, dtype, device, *args):
    """Runs ``faceops._core.<kernel>`` for ``dtype`` (float32/float64) on ``device``
    (a torch.device) with raw addresses, sizes and hyperparameters ``args``; on
    CUDA with that device current and on its torch.cuda.current_stream()."""
    name = str(dtype).removeprefix("torch.")
    if device.type == "cpu":
        kernel(name, "cpu", *args, 0)
        return
    with torch.cuda.device(device):
        kernel(name, "cuda", *args, torch.cuda.current_stream(device).cuda_stream)
