"""The portable build (the default: kernels for the x86-64 baseline, AVX2 and
AVX-512, chosen at run time) against FACEOPS_NATIVE=ON (-march=native) on this
machine, in one run: forward + backward time of the main CPU ops.

    python benchmarks/portable.py [--quick] [--repeats 7]

Both extension modules are built from this checkout with CMake
(FACEOPS_CUDA=OFF) into build/bench-portable and build/bench-native (an
existing build is updated, not redone), then loaded side by side into one
process; faceops.ops runs on one or the other.  Each op alternates between the
two builds round by round; a build's time is the median of its rounds, each
round the best of three calls after a warm-up.  Ratio = portable / native
(> 1: the portable build is slower).  The outputs of the two builds are
compared too (max |difference| over loss and gradients).  Run it on an idle
machine: the load average is printed with the results.
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import faceops
import faceops.ops

ROOT = Path(__file__).resolve().parents[1]


def build(native, reuse=False):
    """Path of the _core extension built from ROOT with FACEOPS_NATIVE=native."""
    import pybind11

    build_dir = ROOT / "build" / ("bench-native" if native else "bench-portable")
    if reuse:
        (module,) = build_dir.glob("_core*.so")
        return module
    subprocess.run(
        ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
         "-DSKBUILD_PROJECT_NAME=faceops", f"-DSKBUILD_PROJECT_VERSION={faceops.__version__}",
         f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         "-DFACEOPS_CUDA=OFF", f"-DFACEOPS_NATIVE={'ON' if native else 'OFF'}"],
        check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(["cmake", "--build", str(build_dir), "--target", "_core", "-j",
                    os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")], check=True, stdout=subprocess.DEVNULL)
    (module,) = build_dir.glob("_core*.so")
    return module


def load(name, path):
    """The extension at path as a module of its own (both builds live side by side).

    Its name ends in ._core (the name of its init function) and differs from
    faceops._core, which Python would hand back instead of loading the file."""
    spec = importlib.util.spec_from_file_location(f"faceops_bench_{name}._core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(quick):
    rng = np.random.default_rng(0)
    n, d = (512, 128) if quick else (2048, 128)
    x = rng.standard_normal((n, d)).astype(np.float32)
    labels = np.repeat(np.arange(n // 4), 4)
    for mining in ("semihard", "hard", "all"):
        yield f"triplet {mining}, N={n} D={d}", lambda m=mining: faceops.triplet_loss(x, labels, 0.2, m, True)
    yield f"pair, N={n} D={d}", lambda: faceops.pair_loss(x, labels, 1.0)
    n_small, d_small, classes = (128, 128, 1000) if quick else (256, 512, 2000)
    xs = rng.standard_normal((n_small, d_small)).astype(np.float32)
    weight = rng.standard_normal((classes, d_small)).astype(np.float32)
    ys = rng.integers(0, classes, n_small)
    for margin, (m1, m2, m3) in faceops.MARGINS.items():
        yield (f"margin softmax {margin}, N={n_small} D={d_small} C={classes}",
               lambda m=(m1, m2, m3): faceops.margin_softmax_loss(xs, ys, weight, 32.0, *m))


def best_of(fn, calls=3):
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def outputs(result):
    return np.concatenate([np.ravel(np.asarray(part, dtype=np.float64)) for part in result])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per build and op")
    parser.add_argument("--build-only", action="store_true", help="build both extensions and stop")
    parser.add_argument("--no-build", action="store_true", help="time the extensions an earlier run built")
    args = parser.parse_args(argv)
    paths = {"portable": build(False, args.no_build), "native": build(True, args.no_build)}
    if args.build_only:
        print("\n".join(f"{name}: {path}" for name, path in paths.items()))
        return 0
    builds = {name: load(name, path) for name, path in paths.items()}
    features = {name: module.cpu_features() for name, module in builds.items()}
    for name, module in builds.items():
        assert Path(module.__file__) == paths[name], (module.__file__, paths[name])
    print(f"portable build runs the {features['portable']['path']} path "
          f"(CPU: {', '.join(k for k, v in features['portable']['cpu'].items() if v) or 'baseline only'}); "
          f"native build: {features['native']['path']}")
    print(f"load average before: {os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'op':55s} {'portable ms':>12s} {'native ms':>10s} {'ratio':>6s} {'max |diff|':>10s}")
    ratios = []
    for name, run in cases(args.quick):
        times, results = {b: [] for b in builds}, {}
        for b, module in builds.items():  # warm-up: scratch buffers, OpenMP threads
            faceops.ops._core = module
            results[b] = outputs(run())
        for round_ in range(args.repeats):
            for b in (("portable", "native") if round_ % 2 == 0 else ("native", "portable")):
                faceops.ops._core = builds[b]
                times[b].append(best_of(run))
        portable, native = (statistics.median(times[b]) for b in ("portable", "native"))
        ratios.append(portable / native)
        difference = float(np.max(np.abs(results["portable"] - results["native"])))
        print(f"{name:55s} {portable * 1e3:12.3f} {native * 1e3:10.3f} {portable / native:6.3f} {difference:10.1e}")
    faceops.ops._core = faceops._core
    print(f"geometric mean ratio {float(np.exp(np.mean(np.log(ratios)))):.3f}; "
          f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
