"""faceops CUDA kernels (CuPy inputs) against PyTorch CUDA eager on the same
inputs: median forward+backward time, ms.  Needs a GPU, CuPy and PyTorch;
exits with the reason otherwise.  The kernels carry NVTX ranges `faceops::<op>`
and are named `<loss>_<stage>_kernel`, so `nsys`/`ncu` profiles read clearly.

    python benchmarks/gpu.py [--only pairwise|center|margin_softmax|torch_step|sharded] [--quick]

pairwise is benchmarks/gpu_pairwise.py: issue 15's protocol for the pairwise losses
(faceops.torch in float32 and bfloat16 against dense PyTorch with TF32 off and on, in
bfloat16, torch.compile and pml; CUDA events; each figure beside its bound).
torch_step is benchmarks/torch_gpu.py's training-step comparison (faceops.torch against
pytorch-metric-learning and idiomatic PyTorch on CUDA tensors) and sharded is
benchmarks/distributed_margin.py's GPU part (ShardedMarginSoftmaxLoss at world size 1
against insightface-style plain torch model parallelism), both run from here.

The margin softmax (ArcFace, CosFace, ArcFace with Partial FC r = 0.1; N = 256,
D = 512, C in {1e4, 1e5, 1e6}, float32, with the class-weight gradient) runs
against the same PyTorch autograd code as benchmarks/run.py
(torch_margin_softmax), and pytorch-metric-learning's ArcFaceLoss/CosFaceLoss
where installed; it also reports peak GPU memory: PyTorch's allocator peak,
and for faceops the bytes CuPy's pool grew by (the pool keeps what it once
held, so that is its high-water mark).  A peer that runs out of GPU memory is
recorded, not fatal.
"""

import argparse
import contextlib
import json
import os
import sys
import time

import numpy as np

import faceops

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bounds  # noqa: E402
from run import MARGIN_OPS, SCALE, torch_margin_softmax  # noqa: E402  (the peer code shared with the CPU suite)


def timed(fn, synchronize, repeats):
    fn()
    synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("pairwise", "center", "margin_softmax", "torch_step", "sharded"),
                        help="one part of the suite")
    parser.add_argument("--quick", action="store_true", help="pairwise and torch_step: the quick sizes")
    args = parser.parse_args()
    if not faceops.cuda_available():
        sys.exit("no CUDA device (faceops.cuda_available() is False): nothing to measure")
    try:
        import cupy as cp
        import torch
    except ImportError as missing:
        sys.exit(f"needs CuPy and PyTorch: {missing}")
    if not torch.cuda.is_available():
        sys.exit("PyTorch sees no CUDA device (a CPU build of torch?): the peer cannot run")

    def synchronize():
        cp.cuda.Device().synchronize()
        torch.cuda.synchronize()

    if args.only in (None, "pairwise"):
        from gpu_pairwise import cases, run

        run(cases("quick" if args.quick else "full"), out="benchmarks/results/gpu_pairwise.json")
    if args.only in (None, "center"):
        center(cp, synchronize)
    if args.only in (None, "margin_softmax"):
        margin_softmax(cp, torch, synchronize)
    if args.only in (None, "torch_step"):
        from torch_gpu import torch_step_gpu

        torch_step_gpu(quick=args.quick)
    if args.only in (None, "sharded"):
        from distributed_margin import gpu_sharded_margin_softmax

        for row in gpu_sharded_margin_softmax(synchronize):
            print(json.dumps(row), flush=True)


def center(cp, synchronize):
    for classes in (10_000, 100_000, 1_000_000):
        centers = cp.zeros((classes, 512), cp.float32)
        x = cp.random.standard_normal((1024, 512), dtype=cp.float32)
        labels = cp.random.randint(0, classes, 1024)
        loss_ms = timed(lambda: faceops.center_loss(x, labels, centers, center_grad="rows"), synchronize, 10)
        update_ms = timed(lambda: faceops.center_update(x, labels, centers, 0.5), synchronize, 10)
        print(f"center N=1024 D=512 C={classes}: center_loss {loss_ms:.3f} ms, center_update {update_ms:.3f} ms "
              f"(bound {bounds.bound_ms(bytes_moved=bounds.center_bytes(1024, 512)):.4f} ms)")



def margin_softmax(cp, torch, synchronize, n=256, d=512, class_counts=(10_000, 100_000, 1_000_000)):
    try:
        from pytorch_metric_learning import losses as pml_losses
    except ImportError:
        pml_losses = None
    pool = cp.get_default_memory_pool()
    skip_init = lambda w: None  # noqa: E731  (pml's own W is replaced by the shared weight)
    for classes in class_counts:
        rng = np.random.default_rng(0)
        weight_host = rng.standard_normal((classes, d), dtype=np.float32)
        weight_host *= 1 / np.sqrt(d)
        x_host = rng.standard_normal((n, d), dtype=np.float32)
        labels_host = rng.integers(0, classes, n).astype(np.int64)
        x, labels, weight = cp.asarray(x_host), cp.asarray(labels_host), cp.asarray(weight_host)
        xt = torch.as_tensor(x_host, device="cuda").requires_grad_(True)
        wt = torch.as_tensor(weight_host, device="cuda").requires_grad_(True)
        yt = torch.as_tensor(labels_host, device="cuda")
        for op, margin in MARGIN_OPS.items():
            row = {"bound_ms": bounds.bound_ms(bounds.margin_softmax_flops(n, d, classes),
                                               bounds.margin_softmax_bytes(n, d, classes, "float32"))}
            sample_rng = cp.random.default_rng(1)
            synchronize()
            pool.free_all_blocks()
            held = pool.total_bytes()
            row["faceops_ms"] = timed(lambda: faceops.margin_softmax_loss(x, labels, weight, s=SCALE, rng=sample_rng, **margin),
                                      synchronize, 10)
            row["faceops_peak_mb"] = (pool.total_bytes() - held) / 2**20
            with tensor_core_gram():
                row["faceops_tf32x3_ms"] = timed(
                    lambda: faceops.margin_softmax_loss(x, labels, weight, s=SCALE, rng=sample_rng, **margin),
                    synchronize, 10)
            generator = torch.Generator(device="cuda").manual_seed(1)

            def torch_step():
                xt.grad = wt.grad = None
                torch_margin_softmax(xt, yt, wt, SCALE, generator=generator, **margin).backward()

            row.update(torch_peak(torch, "torch", torch_step, synchronize))
            if pml_losses is not None and op in ("arcface", "cosface"):
                if op == "arcface":
                    loss_fn = pml_losses.ArcFaceLoss(classes, d, margin=float(np.degrees(margin["m2"])), scale=SCALE, weight_init_func=skip_init)
                else:
                    loss_fn = pml_losses.CosFaceLoss(classes, d, margin=margin["m3"], scale=SCALE, weight_init_func=skip_init)
                loss_fn.W = torch.nn.Parameter(wt.detach().T)  # the shared weight, (D, C) without a copy

                def pml_step():
                    xt.grad = loss_fn.W.grad = None
                    loss_fn(xt, yt).backward()

                row.update(torch_peak(torch, "pml", pml_step, synchronize))
                del loss_fn
            xt.grad = wt.grad = None
            torch.cuda.empty_cache()
            print(f"margin_softmax {op} N={n} D={d} C={classes}",
                  json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        del x, labels, weight, xt, wt, yt
        pool.free_all_blocks()
        torch.cuda.empty_cache()


@contextlib.contextmanager
def tensor_core_gram():
    """FACEOPS_CUDA_GRAM=tf32x3 (cuda/tensor_cores.cuh) for the calls inside."""
    before = os.environ.get("FACEOPS_CUDA_GRAM")
    os.environ["FACEOPS_CUDA_GRAM"] = "tf32x3"
    try:
        yield
    finally:
        if before is None:
            del os.environ["FACEOPS_CUDA_GRAM"]
        else:
            os.environ["FACEOPS_CUDA_GRAM"] = before


def torch_peak(torch, name, step, synchronize):
    """Median ms and the allocator's peak growth (MB) of a PyTorch step; an
    out-of-memory is recorded as such."""
    synchronize()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    try:
        ms = timed(step, synchronize, 10)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {f"{name}_ms": "out of GPU memory"}
    return {f"{name}_ms": ms, f"{name}_peak_mb": (torch.cuda.max_memory_allocated() - held) / 2**20}


if __name__ == "__main__":
    main()
