"""Issue 15's pairwise protocol: every pairwise loss (pair, semi-hard, batch-hard,
batch-all), forward + backward, through faceops.torch against each peer at its
fastest setting, in one run, each figure beside its bound (benchmarks/bounds.py).

    python benchmarks/gpu_pairwise.py [--sizes full|quick] [--repeats 20] [--no-compile] [--out FILE]
    (or --only pairwise from benchmarks/gpu.py)

Sizes: N in {1024, 4096, 16384} x D in {128, 512}, and N = 65,536, D = 128 for
semi-hard and batch-hard (--sizes quick: N = 1024, D = 128).  Batches are P x 4
(every identity has 4 rows, shuffled), rows of unit length, margin 0.2, squared
distances (faceops' default), pair loss theta = 1.

Implementations, each timed with CUDA events as the median of --repeats steps
(x.grad = None, forward, backward) after 3 warm-ups, with the peak memory the
step added (PyTorch's allocator, plus for faceops the high-water mark of CUDA's
stream-ordered pool its kernels take scratch from, where cuda.bindings can read it):
  faceops_fp32, faceops_bf16   faceops.torch (check=False) on float32 / bfloat16 embeddings
  faceops_fp32_tf32x3          the same float32 step with FACEOPS_CUDA_GRAM=tf32x3 (the Gram tiles on
                               the tensor cores, cuda/tensor_cores.cuh: the pair loss, batch-hard's
                               distances; semi-hard and batch-all stay on FMA), with tf32x3_max_rel_diff: the largest
                               difference of its loss and gradient from faceops_fp32's, over the largest
                               element (float32's rounding: about 1e-6)
  torch_fp32, torch_tf32       dense PyTorch eager (the same definitions, tests/test_benchmark_peers.py)
                               with torch.backends.cuda.matmul.allow_tf32 off / on
  torch_bf16                   the same on bfloat16 embeddings
  torch_compile                torch.compile(dynamic=True) of the float32 code, TF32 off (--no-compile skips it)
  pml                          pytorch-metric-learning's TripletMarginLoss and miners, as in
                               benchmarks/torch_step.py (its semi-hard miner keeps every semi-hard
                               negative: another definition, for scale only), where installed
The dense peers hold (N, N) matrices, and (N, 3, N) for semi-hard and batch-all; an
out-of-memory is recorded, not fatal.  ratio_fp32 = fastest float32 peer / faceops_fp32
and ratio_bf16 = torch_bf16 / faceops_bf16 (> 1: faceops is faster; the target is >= 3).
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bounds  # noqa: E402
from torch_step import TRIPLET_MARGIN, _pml_loss, dense_pairwise_loss  # noqa: E402  (the CPU step's peers)

LOSSES = ("pair", "triplet_semihard", "triplet_hard", "triplet_all")
PER_IDENTITY = 4
THETA = 1.0
FULL_SIZES = [(n, d) for n in (1024, 4096, 16384) for d in (128, 512)]
LARGE = (65536, 128)  # semi-hard and batch-hard only
WARMUPS = 3


def make_batch(torch, n, d, device, dtype=None, seed=0):
    """(x, labels): n unit rows as a leaf in dtype (float32 by default), P x 4 shuffled labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    labels = torch.arange(n // PER_IDENTITY).repeat_interleave(PER_IDENTITY)[torch.randperm(n, generator=g)]
    return x.to(device=device, dtype=dtype or torch.float32).requires_grad_(), labels.to(device)


def faceops_loss(loss):
    import faceops.torch as ft

    if loss == "pair":
        return lambda x, y: ft.pair_loss(x, y, THETA, check=False)
    return lambda x, y: ft.triplet_loss(x, y, TRIPLET_MARGIN, loss.split("_")[1], check=False)


class PoolHighWater:
    """The high-water mark of the device's default stream-ordered memory pool (faceops'
    kernels take their scratch from it with cudaMallocAsync); None where it cannot be read
    (cuda.bindings missing, or a call fails: the benchmark goes on without it)."""

    def __init__(self, device):
        self.pool = None
        try:
            from cuda.bindings import driver, runtime
        except ImportError:
            return
        self.runtime, self.uint64 = runtime, driver.cuuint64_t
        self.attribute = runtime.cudaMemPoolAttr.cudaMemPoolAttrUsedMemHigh
        error, pool = runtime.cudaDeviceGetDefaultMemPool(device)
        if error == runtime.cudaError_t.cudaSuccess:
            self.pool = pool

    def reset(self):
        if self.pool is not None:
            (error,) = self.runtime.cudaMemPoolSetAttribute(self.pool, self.attribute, self.uint64(0))
            if error != self.runtime.cudaError_t.cudaSuccess:
                self.pool = None

    def read_mb(self):
        if self.pool is None:
            return None
        error, value = self.runtime.cudaMemPoolGetAttribute(self.pool, self.attribute)
        return int(value) / 2**20 if error == self.runtime.cudaError_t.cudaSuccess else None


def measure(torch, loss_fn, x, labels, repeats, pool=None):
    """{"ms": median, "peak_mb": ...} of x.grad = None, forward, backward; or {"skipped": why}."""
    cuda = x.device.type == "cuda"

    def step():
        x.grad = None
        loss_fn(x, labels).backward()

    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            if pool:
                pool.reset()
        base = torch.cuda.memory_allocated() if cuda else 0
        for _ in range(WARMUPS):
            step()
        synchronize()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                step()
                times.append(1e3 * (time.perf_counter() - begin))
    except torch.cuda.OutOfMemoryError:
        x.grad = None
        torch.cuda.empty_cache()
        return {"skipped": "out of GPU memory"}
    except Exception as error:  # one failing implementation (a compile error, say) must not end the run
        x.grad = None
        return {"skipped": f"{type(error).__name__}: {error}"[:300]}
    row = {"ms": statistics.median(times)}
    if cuda:
        row["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        pool_mb = pool.read_mb() if pool else None
        if pool_mb is not None:
            row["pool_peak_mb"] = pool_mb
    x.grad = None
    return row


def implementations(torch, loss, compiled, pml):
    """name -> (loss_fn, embedding dtype, allow_tf32)."""
    dense = dense_pairwise_loss(torch, loss, THETA, PER_IDENTITY)
    impls = {"faceops_fp32": (faceops_loss(loss), torch.float32, False),
             "faceops_fp32_tf32x3": (faceops_loss(loss), torch.float32, False),
             "faceops_bf16": (faceops_loss(loss), torch.bfloat16, False),
             "torch_fp32": (dense, torch.float32, False),
             "torch_tf32": (dense, torch.float32, True),
             "torch_bf16": (dense, torch.bfloat16, False)}
    if compiled is not None:
        impls["torch_compile"] = (compiled[loss], torch.float32, False)
    if pml and loss != "pair":
        pml_fn, _ = _pml_loss(loss, None)
        impls["pml"] = (pml_fn, torch.float32, False)
    return impls


def tensor_core_difference(torch, loss, n, d, device):
    """max |a - b| / max |b| over the loss and the gradient, a from FACEOPS_CUDA_GRAM=tf32x3,
    b from the FMA Gram, on one batch; None when a run fails."""
    results = []
    for gram in ("tf32x3", "fma"):
        os.environ["FACEOPS_CUDA_GRAM"] = gram
        x, labels = make_batch(torch, n, d, device)
        try:
            loss_value = faceops_loss(loss)(x, labels)
            loss_value.backward()
        except Exception:  # out of memory at the largest sizes: the timing row says so
            return None
        finally:
            os.environ.pop("FACEOPS_CUDA_GRAM")
        results.append(torch.cat([loss_value.detach().reshape(1), x.grad.reshape(-1)]).double())
        del x
    return float((results[0] - results[1]).abs().max() / results[1].abs().max().clamp_min(1e-300))


def run_case(torch, loss, n, d, device, repeats, compiled=None, pml=False, pool=None):
    """One (loss, N, D) row: every implementation, its bound and the ratios."""
    flops = bounds.pairwise_flops(loss, n, d)
    row = {"loss": loss, "n": n, "d": d,
           "bound_ms": {p: bounds.bound_ms(flops, bounds.pairwise_bytes(n, d, p), p)
                        for p in ("float32", "tf32", "bfloat16")}}
    for name, (loss_fn, dtype, tf32) in implementations(torch, loss, compiled, pml).items():
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        os.environ["FACEOPS_CUDA_GRAM"] = "tf32x3" if name.endswith("_tf32x3") else "fma"
        x, labels = make_batch(torch, n, d, device, dtype)
        row[name] = measure(torch, loss_fn, x, labels, repeats, pool if name.startswith("faceops") else None)
        del x
    os.environ.pop("FACEOPS_CUDA_GRAM")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    row["tf32x3_max_rel_diff"] = tensor_core_difference(torch, loss, n, d, device)
    peers = [row[p]["ms"] for p in ("torch_fp32", "torch_tf32", "torch_compile", "pml") if "ms" in row.get(p, {})]
    if peers and "ms" in row["faceops_fp32"]:
        row["ratio_fp32"] = min(peers) / row["faceops_fp32"]["ms"]
    if "ms" in row["torch_bf16"] and "ms" in row["faceops_bf16"]:
        row["ratio_bf16"] = row["torch_bf16"]["ms"] / row["faceops_bf16"]["ms"]
    if "ms" in row["faceops_fp32"]:
        row["faceops_fp32_of_bound"] = row["bound_ms"]["float32"] / row["faceops_fp32"]["ms"]
    return row


def cases(sizes):
    if sizes == "quick":
        return [(loss, 1024, 128) for loss in LOSSES]
    return [(loss, n, d) for n, d in FULL_SIZES for loss in LOSSES] + \
        [(loss, *LARGE) for loss in ("triplet_semihard", "triplet_hard")]


def run(case_list, device="cuda", repeats=20, compile_peer=True, out=None):
    """Measures every case; prints and returns the rows (and writes them to out as JSON)."""
    import torch

    try:
        import pytorch_metric_learning  # noqa: F401
        pml = True
    except ImportError:
        pml = False
    compiled = {loss: torch.compile(dense_pairwise_loss(torch, loss, THETA, PER_IDENTITY), dynamic=True)
                for loss in LOSSES} if compile_peer else None
    pool = PoolHighWater(torch.cuda.current_device()) if device == "cuda" else None
    rows = []
    for loss, n, d in case_list:
        rows.append(run_case(torch, loss, n, d, device, repeats, compiled, pml, pool))
        print(json.dumps(rows[-1]), flush=True)
        if out:
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            with open(out, "w") as f:
                json.dump({"rates": bounds.H200, "pml": pml, "rows": rows}, f, indent=1)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", choices=("full", "quick"), default="full")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile peer")
    parser.add_argument("--out", default="benchmarks/results/gpu_pairwise.json")
    args = parser.parse_args()
    import torch

    import faceops

    if not (torch.cuda.is_available() and faceops.cuda_available()):
        sys.exit("nothing to measure: needs a CUDA device seen by PyTorch and faceops built with CUDA kernels")
    run(cases(args.sizes), "cuda", args.repeats, not args.no_compile, args.out)


if __name__ == "__main__":
    main()
