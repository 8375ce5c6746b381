"""faceops against its peers: forward + backward time and peak extra memory.

    python benchmarks/run.py [--quick] [--out benchmarks/results]

Every (op, size, implementation) runs in a fresh subprocess, so peak memory is
that process's own (ru_maxrss after the runs minus before them) and no
allocator state leaks between implementations.  Peers run twice, as users get
them and with GLIBC_TUNABLES=glibc.malloc.mmap_max=0 (memory kept in the
allocator, which spares page faults); the faster counts.  OpenMP workers spin
(OMP_WAIT_POLICY=active) for every implementation.  Implementations
alternate size by size, and each time is the median of repeated runs after a
warm-up.  Peers: vectorised NumPy (numpy_peers.py: a dense distance matrix
and masks; faceops.reference where that is already vectorised), PyTorch autograd
written the idiomatic way, pytorch-metric-learning where it has the loss; the
ones not installed are skipped (pip install .[bench]).  Writes results.json,
a markdown table (ratio = faceops / fastest peer; < 1 is faster) and a log-log
plot when matplotlib is present.

The margin softmax (ArcFace, CosFace, ArcFace with Partial FC sampling) runs at
N = 256, D = 512, C in {1e4, 1e5, 1e6}: faceops against the NumPy reference (dense),
PyTorch autograd (F.normalize, matmul, the margin on the target logit,
cross_entropy) and pytorch-metric-learning's ArcFaceLoss / CosFaceLoss,
forward + backward including the class-weight gradient.  Its GFLOP/s count
3 x 2 N C D (logits, dX, dW: the least a dense implementation does), which
faceops does where N <= D; for N > D it recomputes the logits, 4 x 2 N C D.  A child whose
resident memory passes --mem-limit-gb (or that leaves the machine under 1.5 GB
available) is killed and recorded as skipped, so that a peer's N x C matrices
at C = 1e6 cannot take the shared machine down.

    python benchmarks/run.py --ops 'arcface*,cosface' --out benchmarks/results/margin_softmax
"""

import argparse
import fnmatch
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy_peers  # noqa: E402

MMAP_OFF = "glibc.malloc.mmap_max=0"

# insightface's combined margin (m1, m2, m3) per margin-softmax op, scale 64.
MARGIN_OPS = {
    "arcface": dict(m1=1.0, m2=0.5, m3=0.0, sample_rate=1.0),
    "cosface": dict(m1=1.0, m2=0.0, m3=0.35, sample_rate=1.0),
    "arcface_pfc": dict(m1=1.0, m2=0.5, m3=0.0, sample_rate=0.1),  # Partial FC, An et al. 2022
}
SCALE = 64.0
PAIRWISE_OPS = ("pair", "triplet_semihard", "triplet_hard", "triplet_all", "contrastive")
# The streaming size: faceops alone (a dense peer's N x N float32 distance matrix is 17 GB).
STREAMING_N = 65_536


# --------------------------------------------------------------------------- inputs
def make_inputs(op, n, d, classes=None, seed=0):
    rng = np.random.default_rng(seed)
    if op in MARGIN_OPS:
        # float32 straight from the generator: a float64 (C, D) temporary would
        # raise the process's memory high-water mark above what is measured.
        weight = rng.standard_normal((classes, d), dtype=np.float32)
        weight *= 1 / np.sqrt(d)
        x = rng.standard_normal((n, d), dtype=np.float32)
        return dict(x=x, labels=rng.integers(0, classes, n).astype(np.int64), weight=weight)
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
    """faceops, its NumPy reference and numpy_peers share their signatures."""
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

    if op in MARGIN_OPS:
        margin = MARGIN_OPS[op]
        rng = np.random.default_rng(1)  # Partial FC's class sample; unused at sample_rate 1
        return lambda i: faceops.margin_softmax_loss(i["x"], i["labels"], i["weight"], s=SCALE, rng=rng, **margin)
    if op == "center":  # the O(N D) form: gradient rows of the batch's classes only
        return lambda i: faceops.center_loss(i["x"], i["labels"], i["centers"], center_grad="rows")
    return module_impl(faceops, op)


def numpy_impl(op):
    """Vectorised NumPy: numpy_peers for the pairwise losses (a dense distance
    matrix), faceops.reference where it is already vectorised (center loss,
    margin softmax)."""
    from faceops import reference

    if op in MARGIN_OPS:
        margin = dict(MARGIN_OPS[op])
        if margin.pop("sample_rate") != 1.0:  # the reference does not sample
            return None
        return lambda i: reference.margin_softmax_loss(i["x"], i["labels"], i["weight"], s=SCALE, **margin)
    if op == "center":
        return module_impl(reference, op)
    return module_impl(numpy_peers, op)


def torch_margin_softmax(x, labels, weight, s, m1, m2, m3, sample_rate=1.0, generator=None):
    """The combined-margin softmax as a PyTorch user writes it (insightface's
    CombinedMarginLoss with exact autograd): normalise, one matmul, the margin
    on the target logit only, cross_entropy.  With sample_rate < 1, Partial FC
    as insightface's PartialFC_V2 samples: the batch's classes plus random
    others (topk of random keys with the positives' keys raised), then the
    rows W[index] (whose autograd gradient is a dense (C, D) tensor).  Shared
    with gpu.py."""
    import torch
    import torch.nn.functional as F

    if sample_rate < 1.0:
        num_classes = weight.shape[0]
        keys = torch.rand(num_classes, generator=generator, device=weight.device)
        keys[labels] = 2.0
        index = torch.topk(keys, max(int(sample_rate * num_classes), len(labels))).indices.sort().values
        labels = torch.searchsorted(index, labels)
        weight = weight[index]
    cosine = F.normalize(x) @ F.normalize(weight).T
    target = cosine.gather(1, labels[:, None])
    if m1 == 1.0 and m2 == 0.0:
        psi = target - m3
    else:
        psi = torch.cos(m1 * torch.acos(target.clamp(-1, 1)) + m2) - m3
    logits = cosine.scatter(1, labels[:, None], psi) * s
    return F.cross_entropy(logits, labels)


def torch_impl(op):
    """PyTorch autograd as a user writes these losses: a dense distance matrix and masks."""
    import torch

    torch.set_num_threads(os.cpu_count())

    if op in MARGIN_OPS:
        generator = torch.Generator().manual_seed(1)

        def margin_softmax(i):
            x = torch.from_numpy(i["x"]).requires_grad_()
            weight = torch.from_numpy(i["weight"]).requires_grad_()  # a fresh .grad each step, as after zero_grad()
            loss = torch_margin_softmax(x, torch.from_numpy(i["labels"]), weight, SCALE, generator=generator, **MARGIN_OPS[op])
            loss.backward()
            return loss.item(), x.grad, weight.grad

        return margin_softmax

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
    if op in ("arcface", "cosface"):
        return pml_margin_softmax(op)
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


def pml_margin_softmax(op):
    """pml's ArcFaceLoss (margin in degrees) / CosFaceLoss, scale 64, its class
    weights W (D, C) set to the shared (C, D) weight, transposed without a copy
    (autograd gives W.grad the same layout).  The module is built in setup(), so
    that its construction is not counted in the peak memory."""
    import torch
    from pytorch_metric_learning import losses

    state = {}

    def setup(i):
        num_classes, dim = i["weight"].shape
        keep = lambda w: None  # noqa: E731  (W is replaced below: skip initialising (D, C) floats)
        if op == "arcface":
            loss_fn = losses.ArcFaceLoss(num_classes, dim, margin=float(np.degrees(MARGIN_OPS[op]["m2"])), scale=SCALE, weight_init_func=keep)
        else:
            loss_fn = losses.CosFaceLoss(num_classes, dim, margin=MARGIN_OPS[op]["m3"], scale=SCALE, weight_init_func=keep)
        loss_fn.W = torch.nn.Parameter(torch.from_numpy(i["weight"]).T)
        state["loss_fn"] = loss_fn

    def run(i):
        loss_fn = state["loss_fn"]
        loss_fn.W.grad = None  # as after optimizer.zero_grad()
        x = torch.from_numpy(i["x"]).requires_grad_()
        loss = loss_fn(x, torch.from_numpy(i["labels"]))
        loss.backward()
        return loss.item(), x.grad, loss_fn.W.grad

    run.setup = setup
    return run


IMPLEMENTATIONS = {"faceops": faceops_impl, "numpy": numpy_impl, "torch": torch_impl, "pml": pml_impl}


# --------------------------------------------------------------------------- one measurement (child)
def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_memory():
    """Peak extra memory = VmHWM after the runs - VmRSS before them, with the
    high-water mark reset first (Linux >= 4.0), so that what input generation
    and imports left behind neither hides nor inflates it.  Falls back to
    ru_maxrss growth.  Returns a function giving the peak extra MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status_kb("VmRSS")
        return lambda: (_status_kb("VmHWM") - before) / 1024
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return lambda: (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def measure(impl, op, n, d, classes, repeats, budget_s):
    inputs = make_inputs(op, n, d, classes)
    fn = IMPLEMENTATIONS[impl](op)
    if fn is None:
        return None
    if hasattr(fn, "setup"):
        fn.setup(inputs)
    peak_extra_mb = reset_peak_memory()
    start = time.perf_counter()
    fn(inputs)  # warm-up
    warm_up = time.perf_counter() - start
    # Slow cases (a peer's seconds-long step at C = 1e6): fewer repeats, never under 3;
    # sub-millisecond ones: more, up to 50 within half a second, so that a
    # scheduler hiccup on a shared machine does not move the median.
    repeats = max(min(repeats, 3), min(repeats, int(budget_s / max(warm_up, 1e-9))))
    repeats = max(repeats, min(50, int(0.5 / max(warm_up, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(inputs)
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * float(np.median(times)), "peak_extra_mb": peak_extra_mb(), "repeats": repeats}


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


def flops(op, n, d, classes=None):
    """Useful FLOPs of forward + backward: 4 N^2 D for the pairwise losses
    (distances and the gradient product), as the issue counts them; 3 x 2 N C D
    for the margin softmax (logits, dX, dW: the least a dense implementation
    does; with Partial FC, C is the sampled classes); None where O(N D)."""
    if op in MARGIN_OPS:
        return 6.0 * n * max(MARGIN_OPS[op]["sample_rate"] * classes, n) * d
    return 4.0 * n * n * d if op in ("pair", "triplet_semihard", "triplet_hard", "triplet_all") else None


# --------------------------------------------------------------------------- orchestration (parent)
def mem_available_kb():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return None


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def child(impl, op, n, d, classes, repeats, mmap_off, timeout, mem_limit_gb=None, budget_s=60.0):
    # Spinning OpenMP workers (faceops and PyTorch both use libgomp): on a shared
    # VM a sleeping worker's wake-up can cost a scheduler tick per parallel region.
    env = dict(os.environ, OMP_WAIT_POLICY="active")
    if mmap_off:
        env["GLIBC_TUNABLES"] = MMAP_OFF
    cmd = [sys.executable, __file__, "--child", impl, op, str(n), str(d), str(classes or 0), str(repeats), str(budget_s)]
    return watched(cmd, env, timeout, mem_limit_gb)


def watched(cmd, env, timeout, mem_limit_gb=None):
    """Runs cmd, a measurement printing one JSON object, under a watchdog instead of
    communicate(timeout): it polls the child's resident memory (and the machine's) every
    20 ms (a page fault costs ~1 us per 4 KB, so nothing grows by more than ~100 MB between
    two looks) and kills it past the limits.  Returns the object, or {"skipped": why}."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, killed = time.monotonic(), None
    while proc.poll() is None:
        time.sleep(0.02)
        if time.monotonic() - start > timeout:
            killed = f"over {timeout:.0f} s"
        elif mem_limit_gb and rss_kb(proc.pid) > mem_limit_gb * 2**20:
            killed = f"over the {mem_limit_gb:.1f} GB memory limit (--mem-limit-gb)"
        else:
            available = mem_available_kb()
            if available is not None and available < 1.5 * 2**20:
                killed = "the machine had under 1.5 GB available"
        if killed:
            proc.kill()
            break
    stdout, stderr = proc.communicate()
    if killed:
        return {"skipped": killed}
    if proc.returncode != 0:
        return {"skipped": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in {256, 1024}, D = 128, C <= 1e5: a few minutes")
    parser.add_argument("--ops", default="*", help="comma-separated ops or patterns, e.g. 'arcface*,cosface' (default: all)")
    parser.add_argument("--classes", help="comma-separated C for the ops over classes (default 1e4,1e5,1e6; --quick: 1e4,1e5)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="per measurement: fewer repeats (never under 3) when the warm-up says they would take longer")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="kill a measurement whose resident memory passes this (default: 60%% of what is available at start)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, op, n, d, classes, repeats, budget_s = args.child
        print(json.dumps(measure(impl, op, int(n), int(d), int(classes) or None, int(repeats), float(budget_s))))
        return

    sizes = [(256, 128), (1024, 128)] if args.quick else [(256, 128), (1024, 128), (4096, 128), (4096, 512)]
    if not args.quick:
        sizes.append((STREAMING_N, 128))
    center_classes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    if args.classes:
        center_classes = [int(float(c)) for c in args.classes.split(",")]
    cases = [(op, n, d, None) for op in PAIRWISE_OPS for n, d in sizes if op != "contrastive" or n < STREAMING_N]
    cases += [("center", 1024, 512, c) for c in center_classes]
    cases += [(op, 256, 512, c) for c in center_classes for op in MARGIN_OPS]
    patterns = [p.strip() for p in args.ops.split(",") if p.strip()]
    cases = [case for case in cases if any(fnmatch.fnmatchcase(case[0], p) for p in patterns)]
    if not cases:
        sys.exit(f"--ops {args.ops!r} matches no op")
    mem_limit_gb = args.mem_limit_gb
    if mem_limit_gb is None and mem_available_kb():
        mem_limit_gb = 0.6 * mem_available_kb() / 2**20
    peak = matmul_peak()
    print(f"NumPy float32 matmul (4096 x 512 x 4096): {peak:.0f} GFLOP/s; memory limit per measurement "
          f"{mem_limit_gb or float('inf'):.1f} GB; load average {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for op, n, d, classes in cases:
        row = {"op": op, "n": n, "d": d, "classes": classes, "impl": {}, "load_average": os.getloadavg()[0]}
        for impl in IMPLEMENTATIONS if n < STREAMING_N else ["faceops"]:
            measure_once = lambda mmap_off: child(impl, op, n, d, classes, args.repeats, mmap_off,  # noqa: E731
                                                  args.timeout, mem_limit_gb, args.budget_s)
            runs = [measure_once(False)]
            if impl != "faceops" and runs[0] is not None and "ms" in runs[0]:
                runs.append(measure_once(True))
            measured = [r for r in runs if r and "ms" in r]
            if measured:
                best = min(measured, key=lambda r: r["ms"])
                row["impl"][impl] = dict(best, default_ms=runs[0]["ms"])
            elif runs[0]:
                row["impl"][impl] = runs[0]
            if impl == "faceops" and op in MARGIN_OPS and "ms" in (runs[0] or {}):
                # For information only (faceops counts as users get it): what the
                # page faults of its fresh (C, D) dweight cost.
                row["impl"][impl]["mmap_off_ms"] = measure_once(True).get("ms")
        ours = row["impl"].get("faceops", {})
        peers = {k: v["ms"] for k, v in row["impl"].items() if k != "faceops" and "ms" in v}
        if "ms" in ours and peers:
            row["fastest_peer"] = min(peers, key=peers.get)
            row["ratio"] = ours["ms"] / peers[row["fastest_peer"]]
        pml = row["impl"].get("pml", {})
        if "ms" in ours and "ms" in pml:
            row["time_vs_pml"] = ours["ms"] / pml["ms"]
            row["memory_vs_pml"] = ours["peak_extra_mb"] / max(pml["peak_extra_mb"], 1e-9)
        if "ms" in ours and flops(op, n, d, classes):
            row["fraction_of_matmul_peak"] = flops(op, n, d, classes) / (ours["ms"] / 1e3) / 1e9 / peak
        results.append(row)
        print(format_row(row), flush=True)
        write_results(args.out, results, peak, mem_limit_gb)  # after every row: a long run interrupted keeps its rows
    print("\n" + markdown_table(results, peak))
    plot(results, os.path.join(args.out, "time_vs_n.png"))


def write_results(out, results, peak, mem_limit_gb):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"matmul_gflops": peak, "cpu_count": os.cpu_count(), "mem_limit_gb": mem_limit_gb,
                   "command": " ".join(["python"] + sys.argv), "results": results}, f, indent=2)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(markdown_table(results, peak))


def format_row(row):
    size = f"N={row['n']} D={row['d']}" + (f" C={row['classes']:.0e}" if row["classes"] else "")
    parts = [f"{k} {v['ms']:.1f} ms/{v['peak_extra_mb']:.0f} MB" if "ms" in v else f"{k} skipped ({v['skipped']})" for k, v in row["impl"].items()]
    return f"{row['op']:17s} {size:22s} " + ", ".join(parts)


def _cell(v):
    if not v:
        return "—"
    if "ms" not in v:
        return f"skipped: {v['skipped']}"
    ms = v["ms"]
    return (f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}") + f" ({v['peak_extra_mb']:.0f})"


def markdown_table(results, peak):
    lines = [f"NumPy float32 matmul peak measured in the same run: {peak:.0f} GFLOP/s. "
             "Times: median forward+backward, ms (peak extra memory, MB); ratio = faceops / fastest peer.", ""]
    pairwise = [r for r in results if r["op"] not in MARGIN_OPS]
    margin = [r for r in results if r["op"] in MARGIN_OPS]
    if pairwise:
        lines += ["| op | N | D | C | faceops | NumPy | PyTorch | pml | ratio | of matmul peak |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in pairwise:
            cells = [_cell(row["impl"].get(impl)) for impl in IMPLEMENTATIONS]
            ratio = f"{row['ratio']:.3f} vs {row['fastest_peer']}" if "ratio" in row else "—"
            frac = f"{row['fraction_of_matmul_peak']:.0%}" if "fraction_of_matmul_peak" in row else "—"
            classes = f"{row['classes']:.0e}" if row["classes"] else ""
            lines.append(f"| {row['op']} | {row['n']} | {row['d']} | {classes} | " + " | ".join(cells) + f" | {ratio} | {frac} |")
        if any(row["n"] >= STREAMING_N for row in pairwise):
            lines += ["", f"N = {STREAMING_N:,} is faceops alone: a dense peer's N x N float32 distance matrix is "
                      f"{STREAMING_N**2 * 4 / 2**30:.0f} GiB by itself."]
        lines.append("")
    if margin:
        names = {"arcface": "ArcFace", "cosface": "CosFace", "arcface_pfc": "ArcFace, Partial FC r = 0.1"}
        lines += ["Margin softmax, s = 64 (ArcFace m2 = 0.5, CosFace m3 = 0.35), forward+backward with the class-weight "
                  "gradient; vs pml = faceops / pytorch-metric-learning (time, peak extra memory); of matmul peak "
                  "counts 3 x 2 N C D (faceops does that much where N <= D; for N > D it recomputes the logits, 4 x 2 N C D).", "",
                  "| loss | N | D | C | faceops | NumPy | PyTorch | pml | ratio | vs pml: time | vs pml: memory | of matmul peak |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in margin:
            cells = [_cell(row["impl"].get(impl)) for impl in IMPLEMENTATIONS]
            ratio = f"{row['ratio']:.3f} vs {row['fastest_peer']}" if "ratio" in row else "—"
            vs_pml = [f"{row[k]:.3f}" if k in row else "—" for k in ("time_vs_pml", "memory_vs_pml")]
            frac = f"{row['fraction_of_matmul_peak']:.0%}" if "fraction_of_matmul_peak" in row else "—"
            lines.append(f"| {names[row['op']]} | {row['n']} | {row['d']} | {row['classes']:.0e} | " + " | ".join(cells)
                         + f" | {ratio} | " + " | ".join(vs_pml) + f" | {frac} |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    # One panel per pairwise op (time vs N at D = 128), one per op over classes (time vs C).
    panels = [(op, "n") for op in sorted({r["op"] for r in results if r["classes"] is None})]
    panels += [(op, "classes") for op in dict.fromkeys(r["op"] for r in results if r["classes"] is not None)]
    if not panels:
        return
    colors = dict(zip(IMPLEMENTATIONS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))  # one per impl, every panel
    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (op, axis) in zip(axes.flat, panels):
        for impl in IMPLEMENTATIONS:
            points = [(r[axis], r["impl"][impl]["ms"]) for r in results
                      if r["op"] == op and (axis == "classes" or r["d"] == 128) and "ms" in r["impl"].get(impl, {})]
            if points:
                ax.loglog(*zip(*points), marker="o", label=impl, color=colors[impl])
        row = next(r for r in results if r["op"] == op)
        ax.set_title(f"{op} (D=128)" if axis == "n" else f"{op} (N={row['n']}, D={row['d']})")
        ax.set_xlabel("N" if axis == "n" else "C")
        ax.set_ylabel("ms")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
