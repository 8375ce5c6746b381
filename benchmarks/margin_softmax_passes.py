"""Where faceops' margin softmax spends its time: the CPU kernel's two passes
timed apart, next to what the same work costs in NumPy/OpenBLAS.

    python benchmarks/margin_softmax_passes.py [--classes 100000] [--n 256] [--d 512]

The kernel skips pass 2 when given neither dx nor dweight, so calling it
through faceops._core with null gradient pointers times pass 1 (logits +
log-sum-exp) alone; dx only and dweight only split pass 2.  Yardsticks, each
the median of a few runs: one N x C x D float32 product in NumPy (what one
logit pass costs at the matmul peak), np.exp over an N x C float32 matrix
(what the softmax's exponentials cost vectorised), and normalising W (C x D,
done in each pass).
"""

import argparse
import time

import numpy as np


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import faceops
    from faceops import _arrays, _core

    n, d, c = args.n, args.d, args.classes
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((c, d), dtype=np.float32)
    weight *= 1 / np.sqrt(d)
    x = rng.standard_normal((n, d), dtype=np.float32)
    labels = rng.integers(0, c, n).astype(np.int64)
    loss, dx, dweight = np.empty(1, np.float32), np.empty_like(x), np.empty_like(weight)

    def kernel(with_dx, with_dweight):
        _core.margin_softmax_loss("float32", "cpu", x.ctypes.data, labels.ctypes.data, weight.ctypes.data, n, d, c,
                                  64.0, 1.0, 0.5, 0.0, loss.ctypes.data, dx.ctypes.data if with_dx else 0,
                                  dweight.ctypes.data if with_dweight else 0, _arrays.current_stream(np))

    rows = {
        "faceops.margin_softmax_loss (ArcFace, full)": lambda: faceops.margin_softmax_loss(x, labels, weight),
        "kernel, pass 1 only (logits, log-sum-exp)": lambda: kernel(False, False),
        "kernel, pass 1 + pass 2 with dx only": lambda: kernel(True, False),
        "kernel, pass 1 + pass 2 with dweight only": lambda: kernel(False, True),
        "kernel, both passes, dx and dweight": lambda: kernel(True, True),
    }
    x_hat = x / np.linalg.norm(x, axis=1, keepdims=True)
    w_hat = weight / np.linalg.norm(weight, axis=1, keepdims=True)
    logits = x_hat @ w_hat.T
    out = np.empty_like(logits)
    yardsticks = {
        "NumPy: one N x C x D product (x_hat @ w_hat.T)": lambda: np.matmul(x_hat, w_hat.T, out=out),
        "NumPy: np.exp over N x C": lambda: np.exp(logits, out=out),
        "NumPy: normalise W (C x D)": lambda: weight / np.linalg.norm(weight, axis=1, keepdims=True),
    }
    gflop = 2 * n * c * d / 1e9
    print(f"N = {n}, D = {d}, C = {c}; one N x C x D product = {gflop:.1f} GFLOP")
    print("| what | ms | GFLOP/s counting the products it does |")
    print("| --- | --- | --- |")
    products = {"pass 1 only": 1, "dx only": 3, "dweight only": 3, "both passes": 4, "full": 4}
    for name, fn in {**rows, **yardsticks}.items():
        ms = median_ms(fn, args.repeats)
        count = next((k for key, k in products.items() if key in name), 1 if "product" in name else None)
        rate = f"{count * gflop / ms * 1e3:.0f}" if count else ""
        print(f"| {name} | {ms:.1f} | {rate} |", flush=True)


if __name__ == "__main__":
    main()
