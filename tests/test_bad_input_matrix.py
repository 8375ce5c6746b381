"""Every op against every class of bad input: a clear exception naming the argument, never a
crash and never a silent result.

OPS is the table: an op gets the whole matrix by being listed with its arguments (float arrays,
label arrays, the one it writes in place, and its hyperparameters with their kinds and
out-of-range values).  The cases of each op run in a subprocess (a segfault, e.g. a write
through a read-only np.memmap, fails that op's cases instead of killing pytest); the subprocess
prints one JSON line per case, so a crash names the case it happened in.

Run one op by hand: python tests/test_bad_input_matrix.py center_update
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

N, D, C = 6, 4, 3


def _batch():
    rng = np.random.default_rng(0)
    return dict(
        x=rng.standard_normal((N, D)),
        labels=np.array([0, 0, 1, 1, 2, 2]),
        centers=rng.standard_normal((C, D)),
        weight=rng.standard_normal((C, D)),
        cosine=np.clip(rng.standard_normal((N, C)) * 0.3, -1, 1),
        d_out=rng.standard_normal((N, C)),
    )


def _op(call, floats, labels=(), writes=(), reals=None, flags=(), choices=None, integers=None, classes=None,
        extra=None):
    """An op of the table: call(**args); floats: float matrices (the first sets N and D);
    labels: {name: number of classes or None}; reals: {name: (valid value, out-of-range values)};
    choices: {name: (valid value, bad values)}; integers: {name: (valid value, bad values)}."""
    return dict(call=call, floats=list(floats), labels=dict(labels), writes=list(writes), reals=reals or {},
                flags=list(flags), choices=choices or {}, integers=integers or {}, extra=extra or {})


def _ops():
    import faceops
    from faceops import ops

    margins = dict(m1=(1.0, [0.0, -1.0, 100.0]), m2=(0.5, [4.0, -4.0]), m3=(0.0, [3.0, -3.0]))
    triplet = lambda mining: _op(  # noqa: E731
        lambda x, labels, margin, squared: faceops.triplet_loss(x, labels, margin, mining, squared),
        ["x"], {"labels": None}, reals=dict(margin=(0.2, [-0.1])), flags=["squared"])
    triplet_ref = lambda mining: _op(  # noqa: E731
        lambda x, labels, ref, ref_labels, margin, squared: faceops.triplet_loss_ref(
            x, labels, ref, ref_labels, margin, mining, squared),
        ["x", "ref"], {"labels": None, "ref_labels": None}, reals=dict(margin=(0.2, [-0.1])), flags=["squared"])
    softmax = lambda rate: _op(  # noqa: E731
        lambda x, labels, weight, s, m1, m2, m3, weight_grad, sample_rate=rate: faceops.margin_softmax_loss(
            x, labels, weight, s, m1, m2, m3, sample_rate, 0, weight_grad),
        ["x", "weight"], {"labels": C}, reals=dict(s=(16.0, [0.0, -1.0]), **margins), flags=["weight_grad"])
    table = {
        "center_loss_dense": _op(lambda x, labels, centers: faceops.center_loss(x, labels, centers, "dense"),
                                 ["x", "centers"], {"labels": C}),
        "center_loss_rows": _op(lambda x, labels, centers: faceops.center_loss(x, labels, centers, "rows"),
                                ["x", "centers"], {"labels": C}),
        "center_loss_none": _op(lambda x, labels, centers, center_grad: faceops.center_loss(x, labels, centers,
                                                                                            center_grad),
                                ["x", "centers"], {"labels": C}, choices=dict(center_grad=(None, ["sparse", 1]))),
        "center_update": _op(faceops.center_update, ["x", "centers"], {"labels": C}, writes=["centers"],
                             reals=dict(alpha=(0.5, [-0.1, 1.5]))),
        "center_update_direction": _op(faceops.center_update_direction, ["x", "centers"], {"labels": C}),
        "triplet_semihard": triplet("semihard"),
        "triplet_hard": triplet("hard"),
        "triplet_all": triplet("all"),
        "triplet_mining": _op(lambda x, labels, mining: faceops.triplet_loss(x, labels, 0.2, mining), ["x"],
                              {"labels": None}, choices=dict(mining=("hard", ["hardest", None, 1]))),
        "triplet_loss_explicit": _op(faceops.triplet_loss_explicit, ["anchor", "positive", "negative"],
                                     reals=dict(margin=(1.0, [-1.0]))),
        "pair_loss": _op(faceops.pair_loss, ["x"], {"labels": None}, reals=dict(theta=(1.0, []))),
        "triplet_ref_semihard": triplet_ref("semihard"),
        "triplet_ref_hard": triplet_ref("hard"),
        "triplet_ref_all": triplet_ref("all"),
        "pair_loss_ref": _op(faceops.pair_loss_ref, ["x", "ref"], {"labels": None, "ref_labels": None},
                             reals=dict(theta=(1.0, []))),
        "contrastive_loss": _op(faceops.contrastive_loss, ["a", "b"], {"similar": None},
                                reals=dict(margin=(1.0, [-1.0])), flags=["legacy"]),
        "margin_softmax_loss": softmax(1.0),
        "margin_softmax_sampled": softmax(0.5),
        "margin_softmax_sample_rate": _op(
            lambda x, labels, weight, sample_rate: faceops.margin_softmax_loss(x, labels, weight,
                                                                               sample_rate=sample_rate),
            ["x", "weight"], {"labels": C}, reals=dict(sample_rate=(0.5, [0.0, -0.5, 1.5]))),
        "target_margin_forward": _op(ops.target_margin_forward, ["cosine"], {"labels": "columns"}, reals=margins),
        "target_margin_backward": _op(ops.target_margin_backward, ["cosine", "d_out"], {"labels": "columns"},
                                      reals=margins),
        "CenterLoss": _op(lambda x, labels, num_classes, dim, alpha: faceops.CenterLoss(
            num_classes, dim, alpha, _dtype_of(x))(x, labels),
            ["x"], {"labels": C}, reals=dict(alpha=(0.5, [-0.1, 1.5])),
            integers=dict(num_classes=(C, [0, -1, 2.5, "3", None, True]), dim=(D, [0, 2.5, None])),
            extra=dict(none_is_valid=["alpha"])),  # alpha=None: the centers do not move
        "TripletLoss": _op(lambda x, labels, margin, mining, squared: faceops.TripletLoss(margin, mining, squared)(
            x, labels), ["x"], {"labels": None}, reals=dict(margin=(0.2, [-0.1])), flags=["squared"],
            choices=dict(mining=("hard", ["hardest", None]))),
        "PairLoss": _op(lambda x, labels, theta: faceops.PairLoss(theta)(x, labels), ["x"], {"labels": None},
                        reals=dict(theta=(1.0, []))),
        "ContrastiveLoss": _op(lambda a, b, similar, margin, legacy: faceops.ContrastiveLoss(margin, legacy)(
            a, b, similar), ["a", "b"], {"similar": None}, reals=dict(margin=(1.0, [-1.0])), flags=["legacy"]),
        "MarginSoftmaxLoss": _op(lambda x, labels, num_classes, dim, s, sample_rate: faceops.MarginSoftmaxLoss(
            num_classes, dim, s, "arcface", sample_rate, _dtype_of(x))(x, labels),
            ["x"], {"labels": C}, reals=dict(s=(16.0, [0.0]), sample_rate=(1.0, [0.0, 1.5])),
            integers=dict(num_classes=(C, [0, 2.5, None]), dim=(D, [0, "4"]))),
    }
    return table


def _dtype_of(x):
    dtype = getattr(x, "dtype", None)
    return dtype if dtype in (np.float32, np.float64) else np.float64


def _valid_args(spec, dtype=np.float64):
    base = _batch()
    args = {}
    for i, name in enumerate(spec["floats"]):
        source = {"anchor": "x", "positive": "x", "negative": "x", "a": "x", "b": "x", "ref": "x"}.get(name, name)
        value = base[source] if i == 0 or source != "x" else base["x"] + i
        args[name] = value.astype(dtype)
    for name in spec["labels"]:
        args[name] = base["labels"].copy()
    for table in ("reals", "choices", "integers"):
        for name, (valid, _) in spec[table].items():
            args[name] = valid
    for name in spec["flags"]:
        args[name] = False
    return args


def _class_count(spec, name, args):
    count = spec["labels"][name]
    return args["cosine"].shape[1] if count == "columns" else count


def cases(op):
    """(case id, args, expected exception types, fragments the message must contain); expected
    None: the call must succeed."""
    spec = _ops()[op]
    out = [("valid", _valid_args(spec), None, ())]
    readonly = _valid_args(spec)
    for name in spec["floats"] + list(spec["labels"]):
        readonly[name].flags.writeable = False
    if not spec["writes"]:
        out.append(("read-only inputs are accepted", readonly, None, ()))
    first = spec["floats"][0]
    for name in spec["floats"] + list(spec["labels"]):
        args = _valid_args(spec)
        args[name] = args[name].tolist()
        out.append((f"{name}: a list", args, TypeError, (name, "numpy.ndarray")))
    for name in spec["floats"]:
        for label, change in [("1-D", lambda v: v.reshape(-1)), ("3-D", lambda v: v[None])]:
            args = _valid_args(spec)
            args[name] = change(args[name])
            out.append((f"{name}: {label}", args, ValueError, (name, "2-D")))
        for dtype in (np.float16, np.int64, np.complex128):
            args = _valid_args(spec)
            args[name] = args[name].astype(dtype)
            out.append((f"{name}: {np.dtype(dtype).name}", args, TypeError, (name, "float32 or float64")))
        for label, change in [("Fortran order", np.asfortranarray), ("strided", lambda v: np.repeat(v, 2, 1)[:, ::2])]:
            args = _valid_args(spec)
            if change(args[name]).flags.c_contiguous:
                continue  # one column: Fortran order is C order too
            args[name] = change(args[name])
            out.append((f"{name}: {label}", args, ValueError, (name, "C-contiguous")))
        for bad in (np.nan, np.inf, -np.inf):
            args = _valid_args(spec)
            args[name] = args[name].copy()
            args[name][0, 0] = bad  # row 0 is class 0, a class of the batch
            out.append((f"{name}: {bad} inside", args, ValueError, (name, "NaN or Inf")))
        if name != first:
            args = _valid_args(spec)
            args[name] = args[name].astype(np.float32)
            out.append((f"{name}: float32 beside float64", args, TypeError, (name, "float64")))
            args = _valid_args(spec)
            args[name] = np.concatenate([args[name], args[name][:, :1]], axis=1)
            out.append((f"{name}: one column too many", args, ValueError, (name, "columns")))
    args = _valid_args(spec)
    for name in spec["floats"]:
        if name in ("x", "anchor", "a", "cosine"):
            args[name] = args[name][:0]
    for name in spec["labels"]:
        args[name] = args[name][:0]
    if "d_out" in args:
        args["d_out"] = args["d_out"][:0]
    if spec["floats"][1:2] and spec["floats"][1] in ("positive", "b"):
        for name in spec["floats"][1:]:
            args[name] = args[name][:0]
    out.append(("empty batch", args, ValueError, (first, "N = 0")))
    for name in ("centers", "weight"):
        if name in spec["floats"]:
            args = _valid_args(spec)
            args[name] = args[name][:0]
            out.append((f"{name}: no class", args, ValueError, (name, "at least one class")))
    for name in spec["labels"]:
        for label, change, error, fragment in [
            ("float32", lambda v: v.astype(np.float32), TypeError, "int32 or int64"),
            ("bool", lambda v: v.astype(bool), TypeError if name != "similar" else None, "int32 or int64"),
            ("one too few", lambda v: v[:-1], ValueError, f"({N},)"),
            ("2-D", lambda v: v[:, None], ValueError, f"({N},)"),
            ("strided", lambda v: np.repeat(v, 2)[::2], ValueError, "C-contiguous"),
        ]:
            args = _valid_args(spec)
            args[name] = change(args[name])
            out.append((f"{name}: {label}", args, error, (name, fragment) if error else ()))
        count = _class_count(spec, name, _valid_args(spec))
        if count is not None:
            for bad in (-1, count, 2**40):
                args = _valid_args(spec)
                args[name] = args[name].copy()
                args[name][3] = bad
                out.append((f"{name}: label {bad}", args, ValueError, (name, f"< {count}")))
    for name in spec["writes"]:
        args = _valid_args(spec)
        args[name].flags.writeable = False
        out.append((f"{name}: read-only", args, ValueError, (name, "read-only")))
        args = _valid_args(spec)
        args[name] = ("memmap", args[name])  # made read-only np.memmap in the subprocess
        out.append((f"{name}: read-only np.memmap", args, ValueError, (name, "read-only")))
        args = _valid_args(spec)
        args[name] = args[first][:C]  # the input's own memory
        out.append((f"{name}: aliases {first}", args, ValueError, (name, "shares memory")))
    bad_reals = [(None, TypeError), ("0.3", TypeError), (1j, TypeError), (np.ones(2), TypeError), (True, TypeError),
                 (np.nan, ValueError), (np.inf, ValueError), (-np.inf, ValueError), (10**400, ValueError)]
    for name, (valid, out_of_range) in spec["reals"].items():
        for bad, error in bad_reals:
            args = _valid_args(spec)
            args[name] = bad
            if bad is None and name in spec["extra"].get("none_is_valid", ()):
                out.append((f"{name} = None is accepted", args, None, ()))
                continue
            out.append((f"{name} = {bad!r}", args, error, (name,)))
        args = _valid_args(spec, np.float32)
        args[name] = 1e39
        out.append((f"{name} = 1e39 in float32", args, ValueError, (name, "float32")))
        for bad in out_of_range:
            args = _valid_args(spec)
            args[name] = bad
            out.append((f"{name} = {bad!r} (out of range)", args, ValueError, (name, "expected")))
        args = _valid_args(spec)
        args[name] = np.float32(valid)
        out.append((f"{name}: a NumPy scalar is accepted", args, None, ()))
    for name in spec["flags"]:
        for bad in ("false", "True", 1, 0, None, 1.0):
            args = _valid_args(spec)
            args[name] = bad
            out.append((f"{name} = {bad!r}", args, TypeError, (name, "True or False")))
    for name, (_, bads) in spec["choices"].items():
        for bad in bads:
            args = _valid_args(spec)
            args[name] = bad
            out.append((f"{name} = {bad!r}", args, ValueError, (name, "expected")))
    for name, (_, bads) in spec["integers"].items():
        for bad in bads:
            args = _valid_args(spec)
            args[name] = bad
            out.append((f"{name} = {bad!r}", args, (TypeError, ValueError), (name, "integer")))
    return out


def _run_cases(op):
    """The subprocess: one JSON line per case, [index, exception type or null, message]."""
    spec = _ops()[op]
    with tempfile.TemporaryDirectory() as folder:
        for index, (_, args, _, _) in enumerate(cases(op)):
            for name, value in list(args.items()):
                if isinstance(value, tuple) and value and isinstance(value[0], str) and value[0] == "memmap":
                    path = os.path.join(folder, f"{index}.bin")
                    value[1].tofile(path)
                    args[name] = np.memmap(path, dtype=value[1].dtype, mode="r", shape=value[1].shape)
            try:
                spec["call"](**args)
                result = [index, None, ""]
            except Exception as error:  # noqa: BLE001 (the test judges the type)
                result = [index, type(error).__name__, str(error)]
            print(json.dumps(result), flush=True)


_RESULTS = {}


def _results(op):
    if op not in _RESULTS:
        run = subprocess.run([sys.executable, __file__, op], capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("[")]
        _RESULTS[op] = ({index: (kind, message) for index, kind, message in lines}, run.returncode,
                        run.stderr[-2000:])
    return _RESULTS[op]


def _case_params():
    params = []
    for op in _ops():
        for index, (case_id, _, _, _) in enumerate(cases(op)):
            params.append(pytest.param(op, index, id=f"{op}-{case_id}"))
    return params


@pytest.mark.parametrize("op,index", _case_params())
def test_bad_input(op, index):
    case_id, _, error, fragments = cases(op)[index]
    results, returncode, stderr = _results(op)
    assert index in results, f"{op}: the subprocess died at case {case_id!r} (exit {returncode}): {stderr}"
    kind, message = results[index]
    if error is None:
        assert kind is None, f"{case_id}: expected success, got {kind}: {message}"
        return
    expected = tuple(e.__name__ for e in (error if isinstance(error, tuple) else (error,)))
    assert kind in expected, f"{case_id}: expected {expected}, got {kind}: {message}"
    for fragment in fragments:
        assert fragment in message, f"{case_id}: {fragment!r} not in {message!r}"


if __name__ == "__main__":
    _run_cases(sys.argv[1])
