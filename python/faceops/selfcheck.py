"""A tiny synthetic batch through every op: prints each loss and whether its
gradient agrees with central finite differences (float64) and, when a GPU is
present, whether the CUDA kernels agree with the CPU ones.

    python -m faceops.selfcheck
"""

import argparse
import sys

import numpy as np

import faceops


def numerical_gradient(loss_of, x, step=1e-6):
    """Central finite differences of a scalar function of x (float64), x restored after."""
    grad = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        saved = x[k]
        x[k] = saved + step
        plus = loss_of(x)
        x[k] = saved - step
        minus = loss_of(x)
        x[k] = saved
        grad[k] = (plus - minus) / (2 * step)
    return grad


def _cases():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 6))
    labels = np.repeat(np.arange(4), 3)
    centers = rng.standard_normal((4, 6))
    b = rng.standard_normal((12, 6))
    similar = np.arange(12) % 2
    for mining in faceops.ops.MINING_MODES:
        for squared in (True, False):
            name = f"triplet_loss(mining={mining!r}, squared={squared})"
            yield name, x, lambda z, m=mining, s=squared: faceops.triplet_loss(z, labels, 0.5, m, s)[:2]
    yield "pair_loss(theta=20)", x, lambda z: faceops.pair_loss(z, labels, 20.0)[:2]
    yield "center_loss", x, lambda z: faceops.center_loss(z, labels, centers)[:2]
    yield "contrastive_loss", x, lambda z: faceops.contrastive_loss(z, b, similar, 4.0)[:2]
    weight = rng.standard_normal((5, 6))
    for margin, (m1, m2, m3) in faceops.MARGINS.items():
        yield (f"margin_softmax_loss({margin}, s=8)", x,
               lambda z, m=(m1, m2, m3): faceops.margin_softmax_loss(z, labels, weight, 8.0, *m)[:2])


def main(argv=()):
    argparse.ArgumentParser(prog="faceops selfcheck", description=__doc__.split("\n\n")[0]).parse_args(list(argv))
    print(f"faceops {faceops.__version__}; CUDA kernels built: {faceops._core.built_with_cuda()}; "
          f"GPU available: {faceops.cuda_available()}")
    try:
        features = faceops.cpu_features()
    except RuntimeError as error:  # a FACEOPS_CPU_PATH this build or CPU has not
        print(f"faceops selfcheck: {error}", file=sys.stderr)
        return 2
    print(f"CPU kernels: {features['path']} path (this CPU runs: {', '.join(features['supported'])})")
    failures = 0
    for name, x, loss_and_grad in _cases():
        loss, grad = loss_and_grad(x)
        numeric = numerical_gradient(lambda z: loss_and_grad(z)[0], x.copy())
        error = float(np.max(np.abs(grad - numeric)))
        ok = error <= 1e-6 * max(1.0, float(np.max(np.abs(numeric))))
        failures += not ok
        print(f"  {name:45s} loss {loss:10.6f}   max |grad - finite diff| {error:.1e}  {'ok' if ok else 'FAILED'}")
    print("gradient check:", "all ops agree with finite differences" if not failures else f"{failures} op(s) FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
