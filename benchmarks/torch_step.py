"""One training step through faceops.torch against pytorch-metric-learning (pml)
and idiomatic PyTorch autograd, and faceops.torch's overhead over the NumPy op.

    python benchmarks/torch_step.py [--quick] [--out benchmarks/results/torch_step]

A step is what a training loop does with a loss: zero the gradients, forward,
backward, optimiser step (SGD) over the embeddings (an (N, D) float32 leaf that
stands for the network's output, so that only the loss is measured) and the
loss's own parameters (class weights, centres, theta).  Sizes: N in {1024, 4096}
x D in {128, 512} for the pairwise and centre losses; ArcFace (s = 64, m = 0.5)
and ArcFace with Partial FC (r = 0.1) at N = 256, D = 512, C in {1e4, 1e5, 1e6}.
--quick: N = 1024, D = 128 and C <= 1e5, fewer repeats (a few minutes on 2 cores).

Every (loss, size, implementation) runs in its own subprocess, implementations
alternating size by size, each time the median of repeated steps after a
warm-up; ratio = faceops.torch / peer (< 1: faceops is faster), all from the same
run.  A watchdog kills a child whose resident memory passes --mem-limit-gb
(default 60% of what is available at start) or that leaves the machine under
1.5 GB available, and records it as skipped (pml's and dense PyTorch's N x N x N
triplet masks and N x C logits would take the shared machine down).

Peers (the settings under which the definitions match are tested in
tests/test_torch_pml.py):
  triplet_hard: pml TripletMarginLoss(LpDistance(power=2, no normalisation), MeanReducer) on
      BatchHardMiner's triplets; torch: a dense distance matrix and masks.
  triplet_all: pml TripletMarginLoss, same settings, all triplets (no miner).
  triplet_semihard: pml with TripletMarginMiner("semihard"): a different definition (every
      semi-hard negative, not FaceNet's one per pair), listed for scale only.
  contrastive: pml ContrastiveLoss(pos_margin=0, neg_margin=1) on the explicit pairs; torch: the formula.
  pair, center: no pml loss; torch: the formula (dense N x N for pair).
  arcface, arcface_pfc: pml ArcFaceLoss (no Partial FC); torch: benchmarks/run.py's
      torch_margin_softmax (insightface's CombinedMarginLoss + PartialFC_V2's sampling).

The overhead measurement (always run) times faceops.torch's functional forms
(forward + backward, check=True and check=False), the op through the dispatcher
and a hand-written autograd.Function over the NumPy op against the faceops
NumPy op on the same float32 memory, at N = 1024, D = 128, in one process.
"""

import argparse
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import mem_available_kb, torch_margin_softmax, watched  # noqa: E402  (shared with the CPU suite)

PAIRWISE = ("triplet_semihard", "triplet_hard", "triplet_all", "pair", "contrastive", "center")
MARGIN = {"arcface": 1.0, "arcface_pfc": 0.1}  # sample rate
SCALE, ARC_MARGIN, TRIPLET_MARGIN = 64.0, 0.5, 0.2
IMPLEMENTATIONS = ("faceops", "pml", "torch")


def make_inputs(loss, n, d, classes, device):
    """Embeddings (an (N, D) leaf), labels (P x K, K = 4; uniform over C for the margin and
    centre losses) and, for the contrastive loss, the pair partner rows and similarity."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(n, d, generator=g) / d**0.5).to(device).requires_grad_()
    if loss in MARGIN or loss == "center":
        labels = torch.randint(0, classes, (n,), generator=g)
    else:
        labels = torch.arange(n // 4).repeat_interleave(4)[torch.randperm(n, generator=g)]
    return x, labels.to(device)


def _euclidean(squared=True):
    from pytorch_metric_learning import distances

    return distances.LpDistance(normalize_embeddings=False, p=2, power=2 if squared else 1)


def make_loss(impl, loss, n, d, classes, device):
    """(loss_fn(x, labels) -> 0-d loss, its parameters), or None where impl has no such loss."""
    import torch

    import faceops.torch as ft

    half = n // 2
    if loss in MARGIN:
        weight = torch.nn.Parameter((torch.randn(classes, d, generator=torch.Generator().manual_seed(1)) * 0.01).to(device))
        if impl == "faceops":  # ArcFace(classes, d, sample_rate=...)'s forward, on the shared weight
            return (lambda x, y: ft.arcface_loss(x, y, weight, SCALE, ARC_MARGIN, MARGIN[loss], check=False)), [weight]
        if impl == "torch":
            return (lambda x, y: torch_margin_softmax(x, y, weight, SCALE, 1.0, ARC_MARGIN, 0.0, MARGIN[loss])), [weight]
        if loss == "arcface_pfc":
            return None
        from pytorch_metric_learning import losses

        keep = lambda w: None  # noqa: E731  (W replaced below)
        head = losses.ArcFaceLoss(classes, d, margin=float(np.degrees(ARC_MARGIN)), scale=SCALE, weight_init_func=keep)
        head.W = torch.nn.Parameter(weight.detach().T)  # pml's (D, C) layout, no copy
        return head, [head.W]
    if impl == "faceops":
        if loss.startswith("triplet"):
            return ft.TripletLoss(TRIPLET_MARGIN, loss.split("_")[1], check=False), []
        if loss == "pair":
            module = ft.PairLoss(1.0, check=False).to(device)
            return module, [module.theta]
        if loss == "center":
            module = ft.CenterLoss(classes, d, check=False).to(device)
            return module, [module.centers]
        module = ft.ContrastiveLoss(1.0, check=False)
        return (lambda x, y: module(x[:half], x[half:], y[:half] == y[half:])), []
    if impl == "pml":
        return _pml_loss(loss, half)
    return _torch_loss(loss, classes, d, device, half)


def _pml_loss(loss, half):
    from pytorch_metric_learning import losses, miners, reducers

    if loss.startswith("triplet"):
        loss_fn = losses.TripletMarginLoss(margin=TRIPLET_MARGIN, distance=_euclidean(), reducer=reducers.MeanReducer())
        miner = {"triplet_hard": miners.BatchHardMiner(distance=_euclidean()),
                 "triplet_semihard": miners.TripletMarginMiner(margin=TRIPLET_MARGIN, type_of_triplets="semihard",
                                                               distance=_euclidean()),
                 "triplet_all": None}[loss]
        return (lambda x, y: loss_fn(x, y, miner(x, y)) if miner else loss_fn(x, y)), []
    if loss == "contrastive":
        loss_fn = losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0, distance=_euclidean(False))

        def contrastive(x, y):
            similar = y[:half] == y[half:]
            rows = torch_arange(half, x.device)
            pairs = (rows[similar], rows[similar], rows[~similar], rows[~similar])
            return loss_fn(x[:half], rows, pairs, ref_emb=x[half:], ref_labels=rows)

        return contrastive, []
    return None


def torch_arange(n, device):
    import torch

    return torch.arange(n, device=device)


def squared_distances(x):
    norms = (x * x).sum(1)
    return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp_min(0)


def dense_pairwise_loss(torch, loss, theta=None, per_identity=4):
    """The idiomatic dense PyTorch form of a faceops pairwise loss (csrc/faceops/triplet_loss.h,
    pair_loss.h; checked against faceops.reference in tests/test_benchmark_peers.py), for batches
    in which every identity has per_identity rows; theta (a number or a 0-d tensor) is the pair
    loss's."""
    positives = per_identity - 1

    def masks(x, y):
        same = y[:, None] == y[None, :]
        return same, same & ~torch.eye(len(y), dtype=torch.bool, device=x.device)

    def anchor_positive(dist, positive):  # (n, K - 1): each anchor's positive distances
        return dist.masked_fill(~positive, float("-inf")).topk(positives, dim=1).values

    if loss == "pair":
        def pair(x, y):
            n = len(y)
            sign = (y[:, None] == y[None, :]).to(x.dtype) * 2 - 1
            hinge = torch.relu(1 - sign * (theta - squared_distances(x)))
            return (hinge.sum() - hinge.diagonal().sum()) / (n * n - n)

        return pair
    if loss == "triplet_hard":
        def hard(x, y):
            dist = squared_distances(x)
            same, positive = masks(x, y)
            hardest_positive = dist.masked_fill(~positive, float("-inf")).max(1).values
            hardest_negative = dist.masked_fill(same, float("inf")).min(1).values
            return torch.relu(hardest_positive - hardest_negative + TRIPLET_MARGIN).mean()

        return hard
    if loss == "triplet_semihard":
        # FaceNet (Schroff et al. 2015, eq. 4 and sec. 3.2): per (anchor, positive), the nearest
        # negative farther than the positive; where there is none, the farthest negative.
        def semihard(x, y):
            dist = squared_distances(x)
            same, positive = masks(x, y)
            d_ap = anchor_positive(dist, positive)
            negatives = dist.masked_fill(same, float("inf"))
            farther = negatives[:, None, :] > d_ap[:, :, None]
            nearest_farther = torch.where(farther, negatives[:, None, :], float("inf")).min(2).values
            farthest = dist.masked_fill(same, float("-inf")).max(1, keepdim=True).values.expand_as(d_ap)
            d_an = torch.where(torch.isinf(nearest_farther), farthest, nearest_farther)
            return torch.relu(d_ap - d_an + TRIPLET_MARGIN).mean()

        return semihard
    if loss == "triplet_all":
        def batch_all(x, y):  # the mean over every triplet, active or not
            dist = squared_distances(x)
            same, positive = masks(x, y)
            d_ap = anchor_positive(dist, positive)
            negatives = dist.masked_fill(same, float("inf"))
            hinge = torch.relu(d_ap[:, :, None] - negatives[:, None, :] + TRIPLET_MARGIN)
            return hinge.sum() / (len(y) * positives * (len(y) - per_identity))

        return batch_all
    raise ValueError(f"loss: expected a pairwise loss, got {loss!r}")


def _torch_loss(loss, classes, d, device, half):
    import torch

    if loss == "triplet_hard":
        return dense_pairwise_loss(torch, loss), []
    if loss == "pair":
        theta = torch.nn.Parameter(torch.tensor(1.0, device=device))
        return dense_pairwise_loss(torch, loss, theta), [theta]
    if loss == "contrastive":
        def contrastive(x, y):
            s = (y[:half] == y[half:]).to(x.dtype)
            dist = (x[:half] - x[half:]).norm(dim=1)
            return (s * dist**2 + (1 - s) * torch.relu(1.0 - dist) ** 2).sum() / (2 * half)

        return contrastive, []
    if loss == "center":
        centers = torch.nn.Parameter(torch.zeros(classes, d, device=device))
        return (lambda x, y: ((x - centers[y]) ** 2).sum() / (2 * len(x))), [centers]
    return None  # semi-hard and batch-all: dense, (N, 3, N) (gpu_pairwise.py times them on the GPU)


def make_step(impl, loss, n, d, classes, device="cpu"):
    """A function running one training step (zero_grad, forward, backward, SGD step), or None."""
    import torch

    made = make_loss(impl, loss, n, d, classes, device)
    if made is None:
        return None
    loss_fn, parameters = made
    x, labels = make_inputs(loss, n, d, classes, device)
    optimiser = torch.optim.SGD([x, *parameters], lr=0.01)

    def step():
        optimiser.zero_grad()
        value = loss_fn(x, labels)
        value.backward()
        optimiser.step()
        return value

    return step


def timed(fn, repeats, synchronize=lambda: None, budget_s=60.0):
    """Median wall time of fn() in ms after one warm-up; fewer repeats (never under 3)
    when the warm-up says they would pass budget_s."""
    start = time.perf_counter()
    fn()
    synchronize()
    warm = time.perf_counter() - start
    repeats = max(3, min(repeats, int(budget_s / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def overhead(repeats):
    """faceops.torch's functional forms (forward + backward, check on and off), the same op
    called through the dispatcher (torch.ops.faceops, check off) and a hand-written
    autograd.Function over the NumPy op (the glue faceops.torch replaces, and about the least a
    torch wrapper costs) against the faceops NumPy op on the same float32 memory, N = 1024,
    D = 128, in one process, the five calls interleaved one by one in a shuffled order; median
    and minimum ms, and their ratios."""
    import torch

    import faceops
    import faceops.torch as ft

    n, d = 1024, 128
    x, labels = make_inputs("triplet_hard", n, d, 0, "cpu")
    x_numpy, labels_numpy = x.detach().numpy(), labels.numpy()
    weight = torch.randn(1000, d).requires_grad_()
    weight_numpy = weight.detach().numpy()
    half = n // 2
    a, b = x.detach()[:half].clone().requires_grad_(), x.detach()[half:].clone().requires_grad_()
    similar = labels[:half] == labels[half:]
    a_numpy, b_numpy, similar_numpy = a.detach().numpy(), b.detach().numpy(), similar.numpy()

    def through_torch(loss_fn, *leaves):
        def run():
            for leaf in leaves:
                leaf.grad = None
            loss_fn().backward()

        return run

    class Glue(torch.autograd.Function):
        """What faceops.torch replaces: a hand-written autograd.Function around the NumPy op,
        its gradients kept on ctx and scaled by the incoming gradient in the backward."""

        @staticmethod
        def forward(ctx, numpy_call, *leaves):
            loss, *gradients = numpy_call()
            ctx.gradients = [torch.from_numpy(gradient) for gradient in gradients[:len(leaves)]]
            return torch.tensor(loss, dtype=leaves[0].dtype)

        @staticmethod
        def backward(ctx, grad_loss):
            return None, *(grad_loss * gradient for gradient in ctx.gradients)

    ops = torch.ops.faceops
    theta = torch.tensor(1.0)
    # name -> (the NumPy op, the functional form given check, the op through the dispatcher, check=False)
    cases = {
        "triplet_semihard": (lambda: faceops.triplet_loss(x_numpy, labels_numpy, 0.2, "semihard"),
                             lambda check: ft.triplet_loss(x, labels, 0.2, "semihard", check=check),
                             lambda: ops.triplet_loss(x, labels, 0.2, "semihard", True, False)[0], (x,)),
        "triplet_hard": (lambda: faceops.triplet_loss(x_numpy, labels_numpy, 0.2, "hard"),
                         lambda check: ft.triplet_loss(x, labels, 0.2, "hard", check=check),
                         lambda: ops.triplet_loss(x, labels, 0.2, "hard", True, False)[0], (x,)),
        "pair": (lambda: faceops.pair_loss(x_numpy, labels_numpy, 1.0),
                 lambda check: ft.pair_loss(x, labels, 1.0, check=check),
                 lambda: ops.pair_loss(x, labels, theta, False)[0], (x,)),
        "contrastive": (lambda: faceops.contrastive_loss(a_numpy, b_numpy, similar_numpy),
                        lambda check: ft.contrastive_loss(a, b, similar, check=check),
                        lambda: ops.contrastive_loss(a, b, similar, 1.0, False, False)[0], (a, b)),
        "arcface_c1000": (lambda: faceops.margin_softmax_loss(x_numpy, labels_numpy % 1000, weight_numpy, SCALE),
                          lambda check: ft.arcface_loss(x, labels % 1000, weight, SCALE, ARC_MARGIN, check=check),
                          lambda: ops.margin_softmax_loss(x, labels % 1000, weight, SCALE, 1.0, ARC_MARGIN, 0.0,
                                                          False)[0],
                          (x, weight)),
    }
    rows = {}
    for name, (numpy_call, functional_call, dispatched_call, leaves) in cases.items():
        variants = {"numpy_op": numpy_call,
                    "torch_check": through_torch(lambda: functional_call(True), *leaves),
                    "torch_nocheck": through_torch(lambda: functional_call(False), *leaves),
                    "torch_dispatched": through_torch(dispatched_call, *leaves),
                    "torch_glue": through_torch(lambda: Glue.apply(numpy_call, *leaves), *leaves)}
        times = {key: [] for key in variants}
        for call in variants.values():
            call()  # warm-up
        order = random.Random(0)
        for _ in range(repeats):  # interleaved one by one, so drifting load hits all alike, in a
            keys = list(variants)  # new order each round: a call pays for what the one before it
            order.shuffle(keys)  # left (freed buffers, evicted caches), which a fixed order biases
            for key in keys:
                call = variants[key]
                start = time.perf_counter()
                call()
                times[key].append(1e3 * (time.perf_counter() - start))
        row = {f"{key}_ms": float(np.median(t)) for key, t in times.items()}
        row.update({f"{key}_min_ms": float(np.min(t)) for key, t in times.items()})
        for key in ("torch_check", "torch_nocheck", "torch_dispatched", "torch_glue"):
            row[f"ratio_{key}"] = row[f"{key}_ms"] / row["numpy_op_ms"]
            row[f"ratio_{key}_min"] = row[f"{key}_min_ms"] / row["numpy_op_min_ms"]
        rows[name] = row
        print(f"overhead {name:17s} numpy op {row['numpy_op_ms']:8.3f} ms | faceops.torch check=True "
              f"{row['torch_check_ms']:8.3f} ms ({row['ratio_torch_check']:.3f}x, min {row['ratio_torch_check_min']:.3f}x)"
              f" | check=False {row['torch_nocheck_ms']:8.3f} ms ({row['ratio_torch_nocheck']:.3f}x, "
              f"min {row['ratio_torch_nocheck_min']:.3f}x) | the op through the dispatcher "
              f"{row['torch_dispatched_ms']:8.3f} ms ({row['ratio_torch_dispatched']:.3f}x) | a hand-written "
              f"autograd.Function over the NumPy op {row['torch_glue_ms']:8.3f} ms ({row['ratio_torch_glue']:.3f}x)",
              flush=True)
    return rows


def child_main(impl, loss, n, d, classes, repeats, budget_s):
    import torch

    torch.set_num_threads(os.cpu_count())
    step = make_step(impl, loss, n, d, classes)
    if step is None:
        print(json.dumps({"skipped": "no such loss"}))
        return
    print(json.dumps({"ms": timed(step, repeats, budget_s=budget_s)}))


def run_child(impl, loss, n, d, classes, repeats, mem_limit_gb, timeout, budget_s):
    env = dict(os.environ, OMP_WAIT_POLICY="active")
    cmd = [sys.executable, __file__, "--child", impl, loss, str(n), str(d), str(classes), str(repeats), str(budget_s)]
    return watched(cmd, env, timeout, mem_limit_gb)


def cases(quick, losses):
    sizes = [(1024, 128)] if quick else [(1024, 128), (1024, 512), (4096, 128), (4096, 512)]
    for n, d in sizes:
        for loss in PAIRWISE:
            if loss in losses:
                yield loss, n, d, 1000 if loss == "center" else 0
    for classes in ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000]):
        for loss in MARGIN:
            if loss in losses:
                yield loss, 256, 512, classes


def loss_list(text):
    """--losses: comma-separated names of PAIRWISE and MARGIN."""
    names = text.split(",")
    unknown = [name for name in names if name not in (*PAIRWISE, *MARGIN)]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; expected names of "
                                         f"{', '.join((*PAIRWISE, *MARGIN))}")
    return names


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1024, D = 128, C <= 1e5, fewer repeats")
    parser.add_argument("--overhead-only", action="store_true", help="only the wrapper-overhead measurement")
    parser.add_argument("--losses", type=loss_list, default=[*PAIRWISE, *MARGIN],
                        help="comma-separated losses to time (default: all), e.g. contrastive,triplet_hard")
    parser.add_argument("--out", default="benchmarks/results/torch_step")
    parser.add_argument("--mem-limit-gb", type=float, default=0.6 * (mem_available_kb() or 0) / 2**20)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, loss, n, d, classes, repeats, budget_s = args.child
        child_main(impl, loss, int(n), int(d), int(classes), int(repeats), float(budget_s))
        return
    os.makedirs(args.out, exist_ok=True)
    repeats = 5 if args.quick else 10
    results = {"load_average_start": os.getloadavg(), "overhead": overhead(200 if args.quick else 500), "steps": []}
    if not args.overhead_only:
        for loss, n, d, classes in cases(args.quick, args.losses):
            row = {"loss": loss, "n": n, "d": d, "classes": classes, "load_average": os.getloadavg()[0]}
            for impl in IMPLEMENTATIONS:
                row[impl] = run_child(impl, loss, n, d, classes, repeats, args.mem_limit_gb, args.timeout, 30.0)
            for peer in ("pml", "torch"):
                if "ms" in row["faceops"] and "ms" in row[peer]:
                    row[f"ratio_vs_{peer}"] = row["faceops"]["ms"] / row[peer]["ms"]
            results["steps"].append(row)
            print(format_row(row), flush=True)
    results["load_average_end"] = os.getloadavg()
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"load average {results['load_average_start']} -> {results['load_average_end']}; wrote {args.out}/results.json")


def format_row(row):
    def cell(result):
        return f"{result['ms']:9.2f} ms" if "ms" in result else f"skipped ({result['skipped']})"

    size = f"N={row['n']} D={row['d']}" + (f" C={row['classes']:.0e}" if row["loss"] in MARGIN else "")
    ratios = "  ".join(f"/{p} {row[f'ratio_vs_{p}']:.3f}" for p in ("pml", "torch") if f"ratio_vs_{p}" in row)
    return (f"{row['loss']:17s} {size:24s} faceops {cell(row['faceops'])}  pml {cell(row['pml'])}  "
            f"torch {cell(row['torch'])}  {ratios}")


if __name__ == "__main__":
    main()
