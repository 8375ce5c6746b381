"""The portable build: every instruction-set variant of the CPU kernels
(baseline x86-64, AVX2 + FMA, AVX-512) gives the results of the variant this
machine runs by default, none executes an instruction its CPU lacks, and the
choice is the one faceops.cpu_features() reports.

The variants run the same arithmetic in the same order and differ only where
a * b + c is one fused multiply-add (AVX2, AVX-512) or a product then a sum
(baseline): results agree within VARIANT_TOLERANCE, relative to each output's
largest magnitude.  Older CPUs are emulated with qemu-user (Debian package
`qemu-user`): Haswell (AVX2, no AVX-512) and Nehalem (SSE4.2, no AVX); those
tests skip where qemu-x86_64 is missing.  This machine cannot run the AVX-512
variant (qemu emulates no AVX-512): the disassembly test checks its code.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import faceops

VARIANT_TOLERANCE = {"float32": 2e-6, "float64": 1e-14}

# Runs every CPU op on fixed inputs, saves the outputs to argv[1] (.npz) and
# prints cpu_features() as its last line.  Sizes cross a 64-row distance tile
# and leave remainders after the 16- and 8-lane vectors; small enough for qemu.
OPS_SCRIPT = r"""
import json, sys
import numpy as np
import faceops

rng = np.random.default_rng(2024)
out = {}
for dtype in (np.float32, np.float64):
    name = np.dtype(dtype).name
    x = rng.standard_normal((72, 70)).astype(dtype)
    labels = np.repeat(np.arange(18), 4)
    for mining in ("semihard", "hard", "all"):
        for squared in (True, False):
            loss, dx = faceops.triplet_loss(x, labels, 0.3, mining, squared)
            out[f"triplet-{mining}-{squared}-{name}"] = np.append(dx.ravel(), loss)
    loss, dx, dtheta = faceops.pair_loss(x, labels, 1.5)
    out[f"pair-{name}"] = np.append(dx.ravel(), [loss, dtheta])
    ref = np.concatenate([x, rng.standard_normal((20, 70)).astype(dtype)])
    ref_labels = np.concatenate([labels, rng.integers(0, 18, 20)])
    own = np.where(np.arange(72) % 5 == 0, -1, np.arange(72))
    for mining in ("semihard", "hard", "all"):
        loss, count, dx, dref = faceops.triplet_loss_ref(x, labels, ref, ref_labels, 0.3, mining, False, own)
        out[f"triplet-ref-{mining}-{name}"] = np.concatenate([dx.ravel(), dref.ravel(), [loss, count]])
    loss, count, dx, dref, dtheta = faceops.pair_loss_ref(x, labels, ref, ref_labels, 1.5, own)
    out[f"pair-ref-{name}"] = np.concatenate([dx.ravel(), dref.ravel(), [loss, count, dtheta]])
    centers = rng.standard_normal((18, 70)).astype(dtype)
    loss, dx, dcenters = faceops.center_loss(x, labels, centers)
    out[f"center-{name}"] = np.concatenate([dx.ravel(), dcenters.ravel(), [loss]])
    b = rng.standard_normal((72, 70)).astype(dtype)
    loss, da, db = faceops.contrastive_loss(x, b, np.arange(72) % 2, 2.0)
    out[f"contrastive-{name}"] = np.concatenate([da.ravel(), db.ravel(), [loss]])
    small = rng.standard_normal((24, 70)).astype(dtype)
    weight = rng.standard_normal((10, 70)).astype(dtype)
    for margin, (m1, m2, m3) in faceops.MARGINS.items():
        loss, dx, dweight = faceops.margin_softmax_loss(small, labels[:24] % 10, weight, 16.0, m1, m2, m3)
        out[f"margin-{margin}-{name}"] = np.concatenate([dx.ravel(), dweight.ravel(), [loss]])
np.savez(sys.argv[1], **out)
print(json.dumps(faceops.cpu_features()))
"""


def run_ops(tmp_path, name, env=None, prefix=(), timeout=120):
    """(cpu_features, {key: outputs}, completed process) of OPS_SCRIPT in a fresh Python."""
    script = tmp_path / "ops.py"
    script.write_text(OPS_SCRIPT)
    result_file = tmp_path / f"{name}.npz"
    process = subprocess.run(
        [*prefix, sys.executable, str(script), str(result_file)],
        env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )
    assert process.returncode == 0, (
        f"{name}: exit status {process.returncode} (-4 is SIGILL)\n{process.stdout}\n{process.stderr}"
    )
    features = json.loads(process.stdout.strip().splitlines()[-1])
    with np.load(result_file) as results:
        return features, dict(results), process


def assert_same_results(results, expected, what):
    assert results.keys() == expected.keys()
    for key, values in expected.items():
        tolerance = VARIANT_TOLERANCE["float32" if key.endswith("float32") else "float64"]
        scale = max(1.0, float(np.max(np.abs(values))))
        error = float(np.max(np.abs(results[key] - values)))
        assert error <= tolerance * scale, f"{what}, {key}: max |difference| {error:.2e} > {tolerance * scale:.1e}"


@pytest.fixture(scope="module")
def default_results(tmp_path_factory):
    """The ops on the variant this machine runs by default: the reference here."""
    return run_ops(tmp_path_factory.mktemp("default"), "default", env={"FACEOPS_CPU_PATH": ""})


def cpuinfo_flags():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    pytest.skip("no flags line in /proc/cpuinfo")


def test_cpu_features_names_the_fastest_path_the_cpu_runs(default_results):
    features, _, _ = default_results
    if features["path"] == "native":
        pytest.skip("a FACEOPS_NATIVE=ON build has one path")
    assert features["compiled"] == ["baseline", "avx2", "avx512"]
    assert features["requested"] is None
    flags = cpuinfo_flags()
    for flag in ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"):
        assert features["cpu"][flag] == (flag in flags), flag
    runs_avx2 = {"avx2", "fma"} <= flags
    runs_avx512 = runs_avx2 and {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags
    expected = ["baseline"] + ["avx2"] * runs_avx2 + ["avx512"] * runs_avx512
    assert features["supported"] == expected
    assert features["path"] == expected[-1]


@pytest.mark.parametrize("path", ["baseline", "avx2", "avx512"])
def test_every_variant_this_cpu_runs_gives_the_default_results(tmp_path, default_results, path):
    default_features, expected, _ = default_results
    if path not in default_features["supported"]:
        pytest.skip(f"this CPU cannot run the {path} variant (supported: {default_features['supported']})")
    features, results, _ = run_ops(tmp_path, path, env={"FACEOPS_CPU_PATH": path})
    assert features["path"] == path and features["requested"] == path
    assert_same_results(results, expected, f"FACEOPS_CPU_PATH={path}")


def test_a_path_the_cpu_cannot_run_is_refused_by_name(tmp_path):
    process = subprocess.run(
        [sys.executable, "-c", "import faceops, numpy as np; faceops.triplet_loss(np.ones((4, 2)), np.arange(4) % 2)"],
        env={**os.environ, "FACEOPS_CPU_PATH": "sse9"}, capture_output=True, text=True, timeout=60,
    )
    assert process.returncode == 1
    assert "RuntimeError: FACEOPS_CPU_PATH=sse9: expected one of the paths this build has" in process.stderr


QEMU = shutil.which("qemu-x86_64")
EMULATED = [("Haswell", "avx2"), ("Nehalem", "baseline")]


@pytest.mark.skipif(QEMU is None, reason="qemu-x86_64 not found (Debian: apt-get install qemu-user)")
@pytest.mark.parametrize("cpu, path", EMULATED, ids=[cpu for cpu, _ in EMULATED])
def test_ops_and_selfcheck_on_an_emulated_older_cpu(tmp_path, default_results, cpu, path):
    _, expected, _ = default_results
    # The OpenBLAS in NumPy's wheels reads qemu's Nehalem model as a newer core and runs AVX
    # code in `import numpy` (SIGILL before faceops loads; NumPy 2.2-2.4, qemu 7.2): name the
    # core, as OpenBLAS documents for a CPU it misdetects.
    emulated = {"FACEOPS_CPU_PATH": "", "OPENBLAS_CORETYPE": cpu}
    features, results, _ = run_ops(tmp_path, cpu, env=emulated, prefix=(QEMU, "-cpu", cpu), timeout=900)
    assert features["path"] == path, features
    assert_same_results(results, expected, f"qemu -cpu {cpu}")
    selfcheck = subprocess.run(
        [QEMU, "-cpu", cpu, sys.executable, "-m", "faceops.selfcheck"],
        env={**os.environ, "OMP_NUM_THREADS": "2", **emulated},
        capture_output=True, text=True, timeout=900,
    )
    assert selfcheck.returncode == 0, f"exit status {selfcheck.returncode}\n{selfcheck.stdout}\n{selfcheck.stderr}"
    assert f"CPU kernels: {path} path" in selfcheck.stdout


# Instructions an x86-64 baseline CPU lacks: VEX/EVEX encoded (AVX, AVX2, FMA,
# AVX-512: every such mnemonic starts with v), BMI1/2, MOVBE, POPCNT, LZCNT.
NEWER_THAN_BASELINE = re.compile(
    r"^(v(?!err|erw)\w+|andn|bextr|blsi|blsmsk|blsr|bzhi|mulx|pdep|pext|rorx|sarx|shlx|shrx|movbe|popcnt|lzcnt)$"
)
AVX512_ONLY = re.compile(r"%zmm|%k[0-7]")


def exported_functions(shared_object):
    """{demangled name: [instruction lines]} of the functions in the dynamic symbol table.

    Those are the global and weak (inline, template) functions, the ones the
    linker merges across translation units; TU-local code is never merged, so
    the baseline's own cannot be another variant's.  Ranges come from nm -S, as
    the installed extension has no other symbol table (it is stripped)."""
    symbols = subprocess.run(["nm", "-D", "-C", "-S", "--defined-only", str(shared_object)],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    ranges = []
    for line in symbols.splitlines():
        fields = line.split(maxsplit=3)
        if len(fields) == 4 and fields[2] in "TtWw":
            ranges.append((int(fields[0], 16), int(fields[0], 16) + int(fields[1], 16), fields[3]))
    ranges.sort()
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(shared_object)],
                             capture_output=True, text=True, timeout=300, check=True).stdout
    functions, index = {}, 0
    for line in listing.splitlines():
        instruction = re.match(r"^\s+([0-9a-f]+):\t(.*)$", line)
        if not instruction:
            continue
        address = int(instruction.group(1), 16)
        while index < len(ranges) and ranges[index][1] <= address:
            index += 1
        if index < len(ranges) and ranges[index][0] <= address:
            functions.setdefault(ranges[index][2], []).append(instruction.group(2).strip())
    return functions


@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None,
                    reason="objdump or nm (binutils) not found")
def test_only_the_avx2_and_avx512_variants_contain_newer_instructions():
    if faceops.cpu_features()["path"] == "native":
        pytest.skip("a FACEOPS_NATIVE=ON build is all native code")
    functions = exported_functions(faceops._core.__file__)
    baseline_with_newer, avx2_with_avx512, variant_functions = [], [], {"avx2": 0, "avx512": 0}
    for name, instructions in functions.items():
        mnemonics = {instruction.split()[0] for instruction in instructions if instruction}
        newer = sorted(m for m in mnemonics if NEWER_THAN_BASELINE.match(m))
        # A variant's own code: a name in its namespace (lambdas carry their
        # function's name), unique to that variant.
        variant = re.search(r"faceops_(avx2|avx512)::", name)
        if variant:
            variant_functions[variant.group(1)] += bool(newer)
            if variant.group(1) == "avx2" and any(AVX512_ONLY.search(i) for i in instructions):
                avx2_with_avx512.append(name)
        elif newer:
            baseline_with_newer.append(f"{name}: {' '.join(newer[:5])}")
    assert not baseline_with_newer, "code outside the AVX2/AVX-512 variants uses newer instructions:\n" + "\n".join(
        baseline_with_newer[:20]
    )
    assert not avx2_with_avx512, "AVX2 variant code uses AVX-512 registers:\n" + "\n".join(avx2_with_avx512[:20])
    assert variant_functions["avx2"] > 10 and variant_functions["avx512"] > 10, variant_functions
