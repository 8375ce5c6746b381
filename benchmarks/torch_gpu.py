"""The training-step comparison of benchmarks/torch_step.py on a GPU: faceops.torch
against pytorch-metric-learning and idiomatic PyTorch, CUDA tensors, the same steps,
sizes and peers; each time the median of repeated steps (synchronised) after a
warm-up, with the peak GPU memory PyTorch's allocator saw.  A peer that runs out of
GPU memory is recorded, not fatal.  And the wrapper's overhead: faceops.torch's
functional forms against the faceops op on CuPy arrays over the same memory, where
CuPy is installed.

    python benchmarks/torch_gpu.py [--quick]      (or torch_step_gpu() from benchmarks/gpu.py)

Exits with the reason where there is no GPU.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_step import IMPLEMENTATIONS, MARGIN, SCALE, cases, make_inputs, make_step, timed  # noqa: E402


def torch_step_gpu(quick=False, repeats=20):
    """Runs the comparison on torch.cuda's current device; returns the rows (and prints them)."""
    import torch

    import faceops

    if not (torch.cuda.is_available() and faceops.cuda_available()):
        raise RuntimeError("needs a CUDA device seen by PyTorch and faceops built with CUDA kernels")
    rows = []
    for loss, n, d, classes in cases(quick):
        row = {"loss": loss, "n": n, "d": d, "classes": classes}
        for impl in IMPLEMENTATIONS:
            row[impl] = _measure(torch, impl, loss, n, d, classes, repeats)
        for peer in ("pml", "torch"):
            if "ms" in row["faceops"] and "ms" in row[peer]:
                row[f"ratio_vs_{peer}"] = row["faceops"]["ms"] / row[peer]["ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.append({"overhead": overhead_gpu(torch, repeats)})
    return rows


def _measure(torch, impl, loss, n, d, classes, repeats):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    try:
        step = make_step(impl, loss, n, d, classes, device="cuda")
        if step is None:
            return {"skipped": "no such loss"}
        ms = timed(step, repeats, torch.cuda.synchronize)
    except torch.cuda.OutOfMemoryError:
        return {"skipped": "out of GPU memory"}
    finally:
        step = None
    return {"ms": ms, "peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}


def overhead_gpu(torch, repeats):
    """faceops.torch (forward + backward, check on and off) against faceops' CuPy op, N = 1024, D = 128."""
    try:
        import cupy
    except ImportError:
        return {"skipped": "CuPy not installed"}
    import faceops
    import faceops.torch as ft

    x, labels = make_inputs("triplet_hard", 1024, 128, 0, "cuda")
    x_cupy, labels_cupy = cupy.from_dlpack(x.detach()), cupy.from_dlpack(labels)
    weight = (torch.randn(1000, 128, device="cuda") * 0.01).requires_grad_()
    weight_cupy = cupy.from_dlpack(weight.detach())

    def synchronize():
        torch.cuda.synchronize()
        cupy.cuda.Device().synchronize()

    def through_torch(loss_fn, *leaves):
        def run():
            for leaf in leaves:
                leaf.grad = None
            loss_fn().backward()

        return run

    result = {}
    for name, numpy_call, torch_call in (
        ("triplet_hard", lambda: faceops.triplet_loss(x_cupy, labels_cupy, 0.2, "hard"),
         lambda check: through_torch(lambda: ft.triplet_loss(x, labels, 0.2, "hard", check=check), x)),
        ("arcface_c1000", lambda: faceops.margin_softmax_loss(x_cupy, labels_cupy % 1000, weight_cupy, SCALE),
         lambda check: through_torch(lambda: ft.arcface_loss(x, labels % 1000, weight, SCALE, check=check), x, weight)),
    ):
        cupy_ms = timed(numpy_call, repeats, synchronize)
        checked, unchecked = timed(torch_call(True), repeats, synchronize), timed(torch_call(False), repeats, synchronize)
        result[name] = {"cupy_op_ms": cupy_ms, "torch_check_ms": checked, "torch_nocheck_ms": unchecked,
                        "ratio_check": checked / cupy_ms, "ratio_nocheck": unchecked / cupy_ms}
    print(json.dumps({"overhead": result}), flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/torch_gpu.json")
    args = parser.parse_args()
    try:
        rows = torch_step_gpu(args.quick)
    except (ImportError, RuntimeError) as missing:
        sys.exit(f"nothing to measure: {missing}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"margin_rates": MARGIN, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
