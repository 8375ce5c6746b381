"""faceops against its peers: forward + backward time and peak extra memory.

    python benchmarks/run.py [--quick] [--out benchmarks/results]

Every (op, size, implementation) runs in a fresh subprocess, so peak memory is
that process's own (ru_maxrss after the runs minus before them) and no
allocator state leaks between implementations.  Peers run twice, as users get
them and with GLIBC_TUNABLES=glibc.malloc.mmap_max=0 (memory kept in the
allocator, which spares page faults); the faster counts.  OpenMP workers spin
(OMP_WAIT_POLICY=active) for every implementation.  Implementations
alternate size by size, and each time is the median of repeated runs after a
warm-up.  Peers: the NumPy reference (faceops.reference), PyTorch autograd
written the idiomatic way, pytorch-metric-learning where it has the loss; the
ones not installed are skipped (pip install .[bench]).  Writes results.json,
a markdown table (ratio = faceops / fastest peer; < 1 is faster) and a log-log
plot when matplotlib is present.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

MMAP_OFF = "glibc.malloc.mmap_max=0"


# --------------------------------------------------------------------------- inputs
def make_inputs(op, n, d, classes=None, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, d)) / np.sqrt(d)).astype(np.float32)
    labels = rng.permutation(np.repeat(np.arange(n // 4), 4)).astype(np.int64)  # P x K, K = 4
    if op == "center":
        labels = rng.integers(0, classes, n).astype(np.int64)
        return dict(x=x, labels=labels, centers=np.zeros((classes, d), np.float32))
    if op == "contrastive":
        return dict(a=x, b=np.roll(x, 1, axis=0).copy(), similar=(labels % 2).astype(np.int64))
    return dict(x=x, labels=labels)


# --------------------------------------------------------------------------- implementations
def module_impl(module, op):
    """faceops and its NumPy reference share their signatures."""
    return {
        "pair": lambda i: module.pair_loss(i["x"], i["labels"], 1.0),
        "triplet_semihard": lambda i: module.triplet_loss(i["x"], i["labels"], 0.2, "semihard"),
        "triplet_hard": lambda i: module.triplet_loss(i["x"], i["labels"], 0.2, "hard"),
        "triplet_all": lambda i: module.triplet_loss(i["x"], i["labels"], 0.2, "all"),
        "contrastive": lambda i: module.contrastive_loss(i["a"], i["b"], i["similar"], 1.0),
        "center": lambda i: module.center_loss(i["x"], i["labels"], i["centers"]),
    }[op]


def faceops_impl(op):
    import faceops

    if op == "center":  # the O(N D) form: gradient rows of the batch's classes only
        return lambda i: faceops.center_loss(i["x"], i["labels"], i["centers"], center_grad="rows")
    return module_impl(faceops, op)


def numpy_impl(op):
    from faceops import reference

    return module_impl(reference, op)


def torch_impl(op):
    """PyTorch autograd as a user writes these losses: a dense distance matrix and masks."""
    import torch

    torch.set_num_threads(os.cpu_count())

    def squared_distances(x):
        norms = (x * x).sum(1)
        return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)

    def pair(i):
        x = torch.from_numpy(i["x"]).requires_grad_()
        y = torch.from_numpy(i["labels"])
        n = len(y)
        sign = (y[:, None] == y[None, :]).float() * 2 - 1
        hinge = torch.relu(1 - sign * (1.0 - squared_distances(x)))
        loss = (hinge.sum() - hinge.diagonal().sum()) / (n * n - n)
        loss.backward()
        return loss.item(), x.grad

    def hard(i):
        x = torch.from_numpy(i["x"]).requires_grad_()
        y = torch.from_numpy(i["labels"])
        dist = squared_distances(x)
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool)
        hardest_positive = dist.masked_fill(~same | eye, float("-inf")).max(1).values
        hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
        loss = torch.relu(hardest_positive - hardest_negative + 0.2).mean()
        loss.backward()
        return loss.item(), x.grad

    def contrastive(i):
        a = torch.from_numpy(i["a"]).requires_grad_()
        b = torch.from_numpy(i["b"]).requires_grad_()
        s = torch.from_numpy(i["similar"]).float()
        dist = (a - b).norm(dim=1)
        loss = (s * dist**2 + (1 - s) * torch.relu(1.0 - dist) ** 2).sum() / (2 * len(s))
        loss.backward()
        return loss.item(), a.grad

    def center(i):
        x = torch.from_numpy(i["x"]).requires_grad_()
        centers = torch.from_numpy(i["centers"]).requires_grad_()
        loss = ((x - centers[torch.from_numpy(i["labels"])]) ** 2).sum() / (2 * len(x))
        loss.backward()
        return loss.item(), x.grad

    return {"pair": pair, "triplet_hard": hard, "contrastive": contrastive, "center": center}.get(op)


def pml_impl(op):
    import torch
    from pytorch_metric_learning import losses, miners

    torch.set_num_threads(os.cpu_count())
    if op.startswith("triplet"):
        mining = op.split("_")[1]
        loss_fn = losses.TripletMarginLoss(margin=0.2)
        miner = miners.TripletMarginMiner(margin=0.2, type_of_triplets={"semihard": "semihard", "hard": "hard", "all": "all"}[mining])
    elif op == "contrastive":
        loss_fn, miner = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), None
    else:
        return None

    def run(i):
        x = torch.from_numpy(i["x"] if "x" in i else i["a"]).requires_grad_()
        y = torch.from_numpy(i["labels"] if "labels" in i else i["similar"])
        loss = loss_fn(x, y, miner(x, y)) if miner else loss_fn(x, y)
        loss.backward()
        return loss.item(), x.grad

    return run


IMPLEMENTATIONS = {"faceops": faceops_impl, "numpy": numpy_impl, "torch": torch_impl, "pml": pml_impl}


# --------------------------------------------------------------------------- one measurement (child)
def measure(impl, op, n, d, classes, repeats):
    inputs = make_inputs(op, n, d, classes)
    fn = IMPLEMENTATIONS[impl](op)
    if fn is None:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(inputs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(inputs)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms": 1e3 * float(np.median(times)), "peak_extra_mb": (peak - before) / 1024}


def matmul_peak():
    """float32 GFLOP/s of NumPy's matmul at 4096 x 512 x 4096 (the issue's yardstick)."""
    a = np.random.default_rng(0).standard_normal((4096, 512)).astype(np.float32)
    a @ a.T
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ a.T
        times.append(time.perf_counter() - start)
    return 2 * 4096 * 4096 * 512 / min(times) / 1e9


def flops(op, n, d):
    """Useful FLOPs of forward + backward counted as the issue does: 4 N^2 D for the
    pairwise losses (distances and the gradient product); None where O(N D)."""
    return 4.0 * n * n * d if op in ("pair", "triplet_semihard", "triplet_hard", "triplet_all") else None


# --------------------------------------------------------------------------- orchestration (parent)
def child(impl, op, n, d, classes, repeats, mmap_off, timeout):
    # Spinning OpenMP workers (faceops and PyTorch both use libgomp): on a shared
    # VM a sleeping worker's wake-up can cost a scheduler tick per parallel region.
    env = dict(os.environ, OMP_WAIT_POLICY="active")
    if mmap_off:
        env["GLIBC_TUNABLES"] = MMAP_OFF
    cmd = [sys.executable, __file__, "--child", impl, op, str(n), str(d), str(classes or 0), str(repeats)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"over {timeout} s"}
    if out.returncode != 0:
        return {"skipped": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {256, 1024}, D = 128, C <= 1e5: a few minutes")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, op, n, d, classes, repeats = args.child
        print(json.dumps(measure(impl, op, int(n), int(d), int(classes) or None, int(repeats))))
        return

    sizes = [(256, 128), (1024, 128)] if args.quick else [(256, 128), (1024, 128), (4096, 128), (4096, 512)]
    center_classes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    cases = [(op, n, d, None) for op in ("pair", "triplet_semihard", "triplet_hard", "triplet_all", "contrastive") for n, d in sizes]
    cases += [("center", 1024, 512, c) for c in center_classes]
    peak = matmul_peak()
    print(f"NumPy float32 matmul (4096 x 512 x 4096): {peak:.0f} GFLOP/s", flush=True)
    results = []
    for op, n, d, classes in cases:
        row = {"op": op, "n": n, "d": d, "classes": classes, "impl": {}}
        for impl in IMPLEMENTATIONS:
            runs = [child(impl, op, n, d, classes, args.repeats, False, args.timeout)]
            if impl != "faceops" and runs[0] is not None and "ms" in runs[0]:
                runs.append(child(impl, op, n, d, classes, args.repeats, True, args.timeout))
            measured = [r for r in runs if r and "ms" in r]
            if measured:
                best = min(measured, key=lambda r: r["ms"])
                row["impl"][impl] = dict(best, default_ms=runs[0]["ms"])
            elif runs[0]:
                row["impl"][impl] = runs[0]
        ours = row["impl"].get("faceops", {}).get("ms")
        peers = {k: v["ms"] for k, v in row["impl"].items() if k != "faceops" and "ms" in v}
        if ours and peers:
            row["fastest_peer"] = min(peers, key=peers.get)
            row["ratio"] = ours / peers[row["fastest_peer"]]
        if ours and flops(op, n, d):
            row["fraction_of_matmul_peak"] = flops(op, n, d) / (ours / 1e3) / 1e9 / peak
        results.append(row)
        print(format_row(row), flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"matmul_gflops": peak, "cpu_count": os.cpu_count(), "results": results}, f, indent=2)
    table = markdown_table(results, peak)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table)
    print("\n" + table)
    plot(results, os.path.join(args.out, "time_vs_n.png"))


def format_row(row):
    size = f"N={row['n']} D={row['d']}" + (f" C={row['classes']:.0e}" if row["classes"] else "")
    parts = [f"{k} {v['ms']:.1f} ms/{v['peak_extra_mb']:.0f} MB" if "ms" in v else f"{k} skipped ({v['skipped']})" for k, v in row["impl"].items()]
    return f"{row['op']:17s} {size:22s} " + ", ".join(parts)


def markdown_table(results, peak):
    lines = [
        f"NumPy float32 matmul peak measured in the same run: {peak:.0f} GFLOP/s. "
        "Times: median forward+backward, ms (peak extra memory, MB); ratio = faceops / fastest peer.",
        "",
        "| op | N | D | C | faceops | NumPy ref. | PyTorch | pml | ratio | of matmul peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results:
        cells = []
        for impl in IMPLEMENTATIONS:
            v = row["impl"].get(impl)
            cells.append(f"{v['ms']:.1f} ({v['peak_extra_mb']:.0f})" if v and "ms" in v else ("—" if not v else "skipped"))
        ratio = f"{row['ratio']:.3f} vs {row['fastest_peer']}" if "ratio" in row else "—"
        frac = f"{row['fraction_of_matmul_peak']:.0%}" if "fraction_of_matmul_peak" in row else "—"
        classes = f"{row['classes']:.0e}" if row["classes"] else ""
        lines.append(f"| {row['op']} | {row['n']} | {row['d']} | {classes} | " + " | ".join(cells) + f" | {ratio} | {frac} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    ops = sorted({r["op"] for r in results if r["op"] != "center"})
    fig, axes = plt.subplots(1, len(ops), figsize=(4 * len(ops), 3.5), squeeze=False)
    for ax, op in zip(axes[0], ops):
        for impl in IMPLEMENTATIONS:
            points = [(r["n"], r["impl"][impl]["ms"]) for r in results if r["op"] == op and r["d"] == 128 and "ms" in r["impl"].get(impl, {})]
            if points:
                ax.loglog(*zip(*points), marker="o", label=impl)
        ax.set_title(f"{op} (D=128)")
        ax.set_xlabel("N")
        ax.set_ylabel("ms")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
