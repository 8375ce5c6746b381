"""faceops CUDA kernels (CuPy inputs) against PyTorch CUDA eager on the same
inputs: median forward+backward time, ms.  Needs a GPU, CuPy and PyTorch;
exits with the reason otherwise.  The kernels carry NVTX ranges `faceops::<op>`
and are named `<loss>_<stage>_kernel`, so `nsys`/`ncu` profiles read clearly.

    python benchmarks/gpu.py
"""

import json
import sys
import time

import numpy as np

import faceops


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
    if not faceops.cuda_available():
        sys.exit("no CUDA device (faceops.cuda_available() is False): nothing to measure")
    try:
        import cupy as cp
        import torch
    except ImportError as missing:
        sys.exit(f"needs CuPy and PyTorch: {missing}")

    def synchronize():
        cp.cuda.Device().synchronize()
        torch.cuda.synchronize()

    for n, d in [(1024, 128), (4096, 128), (4096, 512), (65536, 128)]:
        rng = np.random.default_rng(0)
        x_host = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
        labels_host = np.repeat(np.arange(n // 4), 4)
        x, labels = cp.asarray(x_host), cp.asarray(labels_host)
        repeats = 3 if n == 65536 else 10
        row = {f"faceops_triplet_{m}": timed(lambda m=m: faceops.triplet_loss(x, labels, 0.2, m), synchronize, repeats)
               for m in ("semihard", "hard", "all")}
        row["faceops_pair"] = timed(lambda: faceops.pair_loss(x, labels, 1.0), synchronize, repeats)
        if n <= 4096:  # PyTorch's dense N x N matrices
            xt = torch.as_tensor(x_host, device="cuda").requires_grad_(True)
            yt = torch.as_tensor(labels_host, device="cuda")
            eye = torch.eye(n, dtype=torch.bool, device="cuda")
            same = yt[:, None] == yt[None]

            def torch_hard():
                dist = torch.cdist(xt, xt).pow(2)
                hardest_positive = dist.masked_fill(~(same & ~eye), float("-inf")).max(1).values
                hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
                xt.grad = None
                torch.relu(hardest_positive - hardest_negative + 0.2).mean().backward()

            def torch_pair():
                sign = same.float() * 2 - 1
                hinge = torch.relu(1 - sign * (1.0 - torch.cdist(xt, xt).pow(2))).masked_fill(eye, 0)
                xt.grad = None
                (hinge.sum() / (n * n - n)).backward()

            row["torch_hard"] = timed(torch_hard, synchronize, repeats)
            row["torch_pair"] = timed(torch_pair, synchronize, repeats)
        print(f"N={n} D={d}", json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    for classes in (10_000, 100_000, 1_000_000):
        centers = cp.zeros((classes, 512), cp.float32)
        x = cp.random.standard_normal((1024, 512), dtype=cp.float32)
        labels = cp.random.randint(0, classes, 1024)
        loss_ms = timed(lambda: faceops.center_loss(x, labels, centers, center_grad="rows"), synchronize, 10)
        update_ms = timed(lambda: faceops.center_update(x, labels, centers, 0.5), synchronize, 10)
        print(f"center N=1024 D=512 C={classes}: center_loss {loss_ms:.3f} ms, center_update {update_ms:.3f} ms")


if __name__ == "__main__":
    main()
