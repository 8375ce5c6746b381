"""Class-sharded margin softmax (model-parallel Partial FC) on torch.distributed: faceops'
ShardedMarginSoftmaxLoss against insightface-style model parallelism written in plain torch
(all_gather of the embeddings, the (N_global, C_local) logits matrix, all_reduce of the row maxima
and sums, softmax - one-hot in a custom backward).  ArcFace, float32, D = 512, world size 2 on the
CPU (gloo); per rank: median forward+backward ms and peak extra memory (VmHWM during the timed steps
minus VmRSS before them, the weights and their gradient already allocated).

    python benchmarks/distributed_margin.py [--quick] [--mem-limit-gb 6]

Full: N = 256 rows per rank, C in {1e5, 1e6}.  --quick: N = 64, same C, fewer repeats.  Every
(implementation, C) runs in two fresh rank processes watched every 20 ms: both are killed (and the
row recorded as skipped) past --mem-limit-gb per rank, when the machine has under 1.5 GB available,
or past the time limit, so the plain-torch peer cannot take the machine down.

``gpu_sharded_margin_softmax(synchronize)`` is the world-size-1 GPU measurement for
benchmarks/gpu.py.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from faceops.torch.distributed import _gather_rows

WORLD_SIZE = 2
DIM = 512
SCALE, MARGIN = 64.0, (1.0, 0.5, 0.0)  # ArcFace


# --------------------------------------------------------------------------- the plain-torch peer
def torch_sharded_loss(x, labels, weight, class_start, group=None):
    """insightface-style model parallelism in plain torch: x (N, D) and labels of this rank,
    weight (C_local, D) = classes [class_start, class_start + C_local).  Holds the (N_global,
    C_local) logits (and their gradient); without a process group it is world size 1."""
    distributed = dist.is_initialized()
    if distributed:
        x = _gather_rows(x, group)
        gathered = [torch.empty_like(labels) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, labels, group=group)
        labels = torch.cat(gathered)
    local = labels - class_start
    on_shard = (local >= 0) & (local < weight.shape[0])
    cosine = F.normalize(x) @ F.normalize(weight).T
    rows = on_shard.nonzero()[:, 0]
    m1, m2, m3 = MARGIN
    psi = torch.cos(m1 * torch.acos(cosine[rows, local[rows]].clamp(-1, 1)) + m2) - m3
    logits = cosine.index_put((rows, local[rows]), psi) * SCALE
    return DistributedCrossEntropy.apply(logits, local.where(on_shard, -1), group, distributed)


class DistributedCrossEntropy(torch.autograd.Function):
    """The softmax over every rank's logits, in place; loss = mean -log p_target; backward
    (softmax - one-hot) / N_global into the same buffer."""

    @staticmethod
    def forward(ctx, logits, local, group, distributed):
        top = logits.max(dim=1, keepdim=True).values
        if distributed:
            dist.all_reduce(top, dist.ReduceOp.MAX, group=group)
        probs = logits.sub_(top).exp_()
        total = probs.sum(dim=1, keepdim=True)
        if distributed:
            dist.all_reduce(total, group=group)
        probs.div_(total)
        rows = (local >= 0).nonzero()[:, 0]
        target = logits.new_zeros(logits.shape[0])
        target[rows] = probs[rows, local[rows]]
        if distributed:
            dist.all_reduce(target, group=group)
        ctx.save_for_backward(probs, local)
        return -torch.log(target).mean()

    @staticmethod
    def backward(ctx, grad):
        probs, local = ctx.saved_tensors
        rows = (local >= 0).nonzero()[:, 0]
        probs[rows, local[rows]] -= 1.0
        return probs.mul_(grad / probs.shape[0]), None, None, None


# --------------------------------------------------------------------------- one rank (child)
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rank_main(impl, classes, rows, repeats, rank, init_file):
    from faceops.torch.distributed import ShardedMarginSoftmaxLoss, shard_bounds

    torch.set_num_threads(1)  # two ranks on two cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    rng = np.random.default_rng(rank)
    x = torch.tensor(rng.standard_normal((rows, DIM)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(rng.integers(0, classes, rows))
    if impl == "faceops":
        module = ShardedMarginSoftmaxLoss(classes, DIM, "arcface", SCALE)
        weight = module.weight

        def step():
            module(x, labels).backward()
    else:
        start, end = shard_bounds(classes, WORLD_SIZE, rank)
        weight = torch.nn.Parameter(torch.randn(end - start, DIM) * 0.01)

        def step():
            torch_sharded_loss(x, labels, weight, start).backward()

    step()  # allocates the gradients
    dist.barrier()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    times = []
    for _ in range(repeats):
        x.grad = weight.grad = None
        dist.barrier()
        start_time = time.perf_counter()
        step()
        times.append(time.perf_counter() - start_time)
    peak_extra_mb = (_status_kb("VmHWM") - before) / 1024
    print(json.dumps({"rank": rank, "ms": 1e3 * float(np.median(times)), "peak_extra_mb": peak_extra_mb,
                      "logits_mb": rows * WORLD_SIZE * (classes // WORLD_SIZE) * 4 / 2**20}))
    dist.destroy_process_group()


# --------------------------------------------------------------------------- orchestration (parent)
def _meminfo_kb(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_pair(impl, classes, rows, repeats, mem_limit_gb, timeout_s):
    """Both ranks of one measurement under the watchdog; a dict per rank, or {"skipped": why}."""
    init_file = os.path.join(tempfile.mkdtemp(prefix="faceops_dist_bench_"), "init")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--rank", impl, str(classes), str(rows), str(repeats),
                               str(rank), init_file], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for rank in range(WORLD_SIZE)]
    start, killed = time.monotonic(), None
    while any(p.poll() is None for p in procs):
        time.sleep(0.02)
        if time.monotonic() - start > timeout_s:
            killed = f"over {timeout_s:.0f} s"
        elif any(_rss_kb(p.pid) > mem_limit_gb * 2**20 for p in procs):
            killed = f"a rank went over {mem_limit_gb:.1f} GB (--mem-limit-gb)"
        elif (_meminfo_kb("MemAvailable") or 2**40) < 1.5 * 2**20:
            killed = "the machine had under 1.5 GB available"
        if killed:
            for p in procs:
                p.kill()
            break
    outputs = [p.communicate() for p in procs]
    if killed:
        return {"skipped": killed}
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            return {"skipped": err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}"}
    return {"ranks": [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 64 rows per rank, 3 repeats")
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--mem-limit-gb", type=float, default=6.0, help="per rank (default 6)")
    parser.add_argument("--timeout-s", type=float, default=900.0, help="per measurement (default 900)")
    parser.add_argument("--rank", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank:
        impl, classes, rows, repeats, rank, init_file = args.rank
        return rank_main(impl, int(classes), int(rows), int(repeats), int(rank), init_file)
    rows, repeats = (64, 3) if args.quick else (256, 5)
    print(f"# load average {os.getloadavg()[0]:.2f}, world size {WORLD_SIZE} (gloo, one thread per rank), "
          f"N = {rows} per rank, D = {DIM}, float32 ArcFace", flush=True)
    print(f"{'C':>9} {'impl':>8} {'ms (rank 0/1)':>20} {'peak extra MB (rank 0/1)':>26} {'logits MB':>10}")
    results = []
    for classes in args.classes:
        for impl in ("faceops", "torch"):
            row = dict(classes=classes, impl=impl, rows=rows,
                       **run_pair(impl, classes, rows, repeats, args.mem_limit_gb, args.timeout_s))
            results.append(row)
            if "skipped" in row:
                print(f"{classes:>9} {impl:>8} skipped: {row['skipped']}", flush=True)
                continue
            ranks = row["ranks"]
            print(f"{classes:>9} {impl:>8} {ranks[0]['ms']:>9.1f} /{ranks[1]['ms']:>9.1f} "
                  f"{ranks[0]['peak_extra_mb']:>12.1f} /{ranks[1]['peak_extra_mb']:>12.1f} "
                  f"{ranks[0]['logits_mb']:>10.1f}", flush=True)
    print(json.dumps(results))


# --------------------------------------------------------------------------- GPU, world size 1
def gpu_sharded_margin_softmax(synchronize, n=256, d=DIM, class_counts=(100_000, 1_000_000), repeats=10):
    """ShardedMarginSoftmaxLoss on one GPU (no process group: world size 1) against the plain-torch
    peer: median ms and the PyTorch allocator's peak growth in MB (faceops' kernel scratch comes
    from cudaMallocAsync, outside that allocator: its outputs and gradients are counted, the
    scratch is not).  For benchmarks/gpu.py; returns a list of rows."""
    from faceops.torch.distributed import ShardedMarginSoftmaxLoss

    rows = []
    for classes in class_counts:
        generator = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(n, d, device="cuda", generator=generator, requires_grad=True)
        labels = torch.randint(0, classes, (n,), device="cuda", generator=generator)
        module = ShardedMarginSoftmaxLoss(classes, d, "arcface", SCALE, device="cuda")
        peer_weight = torch.nn.Parameter(module.weight.detach().clone())
        row = {"classes": classes, "n": n, "d": d}
        for name, step in (("faceops", lambda: module(x, labels).backward()),
                           ("torch", lambda: torch_sharded_loss(x, labels, peer_weight, 0).backward())):
            try:
                step()
                synchronize()
                held = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    step()
                    synchronize()
                    times.append(time.perf_counter() - start)
                row[f"{name}_ms"] = 1e3 * float(np.median(times))
                row[f"{name}_peak_mb"] = (torch.cuda.max_memory_allocated() - held) / 2**20
            except torch.cuda.OutOfMemoryError:
                row[f"{name}_ms"] = "out of memory"
            x.grad = module.weight.grad = peer_weight.grad = None
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
