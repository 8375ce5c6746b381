"""Cross-batch memory: what queue size fits, faceops.torch.CrossBatchMemory against
pytorch-metric-learning's CrossBatchMemory, on the CPU.

    python benchmarks/xbm_memory.py [--sizes 4096,16384,...] [--mem-limit-gb 8] [--out FILE]

A batch of N = 256 anchors, D = 128 (float32), against a full queue of M rows, one
step (forward + backward into the embeddings), for
  hard:  faceops TripletLoss(0.2, "hard") against pml TripletMarginLoss(0.2,
         LpDistance(power=2, no normalisation)) with BatchHardMiner as the memory's miner;
  pair:  faceops PairLoss(1.0) against pml ContrastiveLoss(pos_margin=0, neg_margin=1)
         over all (anchor, queue row) pairs, the XBM paper's (Wang et al., CVPR 2020) loss.
Each (loss, M, implementation) runs in its own subprocess under benchmarks/run.py's watchdog;
reported: the median of 3 steps and the peak resident memory the step added on top of the
queue (VmHWM after - VmRSS before).  A measurement over --mem-limit-gb is recorded as
"out of memory at the limit".
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import reset_peak_memory, watched  # noqa: E402

N, DIM = 256, 128
SIZES = (4096, 16384, 65536, 262144, 1048576)


def make_step(impl, loss, memory_size):
    import torch

    g = torch.Generator().manual_seed(0)
    queue = torch.randn(memory_size, DIM, generator=g) / DIM**0.5
    queue_labels = torch.randint(0, memory_size // 4, (memory_size,), generator=g)
    x = (torch.randn(N, DIM, generator=g) / DIM**0.5).requires_grad_()
    labels = queue_labels[torch.randint(0, memory_size, (N,), generator=g)]
    if impl == "faceops":
        import faceops.torch as ft

        inner = ft.TripletLoss(0.2, "hard", check=False) if loss == "hard" else ft.PairLoss(1.0, check=False)
        module = ft.CrossBatchMemory(inner, memory_size, DIM)
        module.embeddings.copy_(queue)
        module.labels.copy_(queue_labels)
        module.filled = memory_size
    else:
        from pytorch_metric_learning import distances, losses, miners

        distance = distances.LpDistance(normalize_embeddings=False, p=2, power=2)
        if loss == "hard":
            inner, miner = losses.TripletMarginLoss(margin=0.2, distance=distance), miners.BatchHardMiner(distance=distance)
        else:
            inner, miner = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), None
        module = losses.CrossBatchMemory(inner, DIM, memory_size=memory_size, miner=miner)
        module.embedding_memory.copy_(queue)
        module.label_memory.copy_(queue_labels)
        module.has_been_filled = True

    def step():
        x.grad = None
        module(x, labels).backward()

    return step


def child_main(impl, loss, memory_size):
    step = make_step(impl, loss, memory_size)
    peak_mb = reset_peak_memory()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    print(json.dumps({"ms": sorted(times)[1], "peak_mb": peak_mb()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="queue sizes M, comma-separated")
    parser.add_argument("--mem-limit-gb", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, loss, memory_size = args.child
        return child_main(impl, loss, int(memory_size))
    rows = []
    for loss in ("hard", "pair"):
        for memory_size in map(int, args.sizes.split(",")):
            row = {"loss": loss, "n": N, "d": DIM, "memory_size": memory_size}
            for impl in ("faceops", "pml"):
                cmd = [sys.executable, __file__, "--child", impl, loss, str(memory_size)]
                result = watched(cmd, dict(os.environ), args.timeout, args.mem_limit_gb)
                if "skipped" in result and "memory limit" in result["skipped"]:
                    result = {"skipped": f"out of memory at the {args.mem_limit_gb:.0f} GB limit"}
                row[impl] = result
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
