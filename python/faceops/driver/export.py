"""ONNX export of the trained embedding network (descriptor in, L2-normalised
embedding out), built with the `onnx` package and checked by onnx.checker."""

import argparse
import json
import os

import numpy as np

from faceops.driver import rundir

INPUT_NAME, OUTPUT_NAME = "descriptor", "embedding"


def to_onnx(net, path, preprocessing):
    """Writes the network as ONNX (opset 13): descriptor (N, F) float32 ->
    embedding (N, E) float32, unit length.  `preprocessing` (a dict: descriptor
    kind, image size, crop, ...) goes into the model's metadata, since the
    descriptor itself is computed outside the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def constant(name, value):
        return numpy_helper.from_array(np.asarray(_to_numpy(value), np.float32), name)

    features = int(net.mean.shape[0])
    initializers = [
        constant("mean", net.mean),
        constant("std", net.std),
        *(constant(name, value) for name, value in net.params.items()),
    ]
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["standardized"]),
    ]
    if "W1" in net.params:
        nodes += [
            helper.make_node("MatMul", ["standardized", "W1"], ["pre_bias"]),
            helper.make_node("Add", ["pre_bias", "b1"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["hidden"]),
            helper.make_node("MatMul", ["hidden", "W2"], ["out_bias"]),
            helper.make_node("Add", ["out_bias", "b2"], ["out"]),
        ]
        dim = int(net.params["W2"].shape[1])
    else:
        nodes += [
            helper.make_node("MatMul", ["standardized", "A"], ["low_rank"]),
            helper.make_node("MatMul", ["low_rank", "B"], ["correction"]),
            helper.make_node("Add", ["standardized", "correction"], ["corrected"]),
            helper.make_node("Add", ["corrected", "b"], ["out"]),
        ]
        dim = features
    nodes.append(helper.make_node("LpNormalization", ["out"], [OUTPUT_NAME], axis=1, p=2))
    graph = helper.make_graph(
        nodes,
        "faceops_embedding",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", dim])],
        initializers,
    )
    model = helper.make_model(graph, producer_name="faceops", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    metadata = {
        "input": f"{INPUT_NAME}: (N, {features}) float32, the face descriptor of each image",
        "output": f"{OUTPUT_NAME}: (N, {dim}) float32, L2-normalised; compare faces by cosine similarity",
        "preprocessing": json.dumps(preprocessing, sort_keys=True),
    }
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()


NETWORK_PARAMETERS = ("W1", "b1", "W2", "b2", "A", "B", "b")
PREPROCESSING_OPTIONS = ("descriptor", "image_size", "crop", "backbone")


def read_config_json(path):
    """A run's config.json, or a ValueError naming it when it is not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a JSON object (a run's configuration), but a "
                         f"{type(config).__name__}")
    return config


def load_run(run_dir):
    """(network, configuration) of a `faceops train` run directory, from its
    checkpoint.npz (the last completed epoch).  The configuration is the one the
    checkpoint was trained with (stored in it); a config.json that disagrees with it
    on the preprocessing is an error, never a model with the wrong metadata.  A
    checkpoint or config.json that cannot be read is an error naming the file."""
    from faceops.driver.model import EmbeddingNet, describe

    config_path, checkpoint_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "checkpoint.npz")
    if not os.path.isfile(checkpoint_path):
        raise FileNotFoundError(f"{checkpoint_path} not found: is {run_dir!r} the run directory of a `faceops train` "
                                f"run that finished at least one epoch?")
    state = rundir.read_checkpoint(checkpoint_path)
    stored = rundir.stored_configuration(state, checkpoint_path)
    written = read_config_json(config_path) if os.path.isfile(config_path) else None
    if stored is None and written is None:
        raise FileNotFoundError(f"{config_path} not found, and {checkpoint_path} does not hold its configuration")
    config = stored or written
    missing = [name for name in PREPROCESSING_OPTIONS[:3] if name not in config]
    if missing:
        raise ValueError(f"{checkpoint_path if stored else config_path}: the run's configuration has no "
                         f"{', '.join(missing)}")
    if stored and written:
        differ = [f"{name} {written.get(name)!r} (checkpoint: {stored.get(name)!r})" for name in PREPROCESSING_OPTIONS
                  if written.get(name) != stored.get(name)]
        if differ:
            raise ValueError(f"{config_path} disagrees with the checkpoint it sits beside: {', '.join(differ)}")
    if config.get("backbone") == "cnn":
        from faceops.driver import torch_model

        return torch_model.load_run(run_dir, config)[1], config
    absent = [name for name in ("net_mean", "net_std") if name not in state]
    if absent:
        raise rundir.unreadable_checkpoint(checkpoint_path, f"it holds no {' or '.join(absent)} array (not the checkpoint "
                                                     f"of a faceops train run)")
    params = {name: state[f"param_{name}"] for name in NETWORK_PARAMETERS if f"param_{name}" in state}
    check_finite(checkpoint_path, {"net_mean": state["net_mean"], "net_std": state["net_std"],
                                   **{f"param_{name}": value for name, value in params.items()}})
    net = EmbeddingNet.from_arrays(state["net_mean"], state["net_std"], params)
    probe = describe(np.zeros((1, config["image_size"], config["image_size"]), np.float32), config["descriptor"])
    if probe.shape[1] != net.mean.shape[0]:
        raise ValueError(f"{checkpoint_path}: the network takes {net.mean.shape[0]} descriptor values, but the "
                         f"{config['descriptor']!r} descriptor at image size {config['image_size']} has "
                         f"{probe.shape[1]}")
    return net, config


def check_finite(checkpoint_path, arrays):
    """A ValueError naming the first of a checkpoint's network arrays (name -> array) that
    holds NaN or Inf: the network of a run that diverged, of which no model is made."""
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fiu":
            raise ValueError(f"{checkpoint_path}: its {name} is a {value.dtype} array, not a network's numbers")
        if not np.isfinite(value).all():
            raise ValueError(f"{checkpoint_path}: its {name} holds NaN or Inf (the run diverged before this "
                             f"checkpoint); no model is made of it")


def check_output_file(output, run_dir):
    """Refuses an ONNX output path (-o) that cannot be written or that would replace a
    run's file: a folder, a path under a file or in a missing folder, any run's
    config.json, checkpoint.npz, log.txt, metrics.json or roc.png, and another run's
    model.onnx.  The exported run's own model.onnx (the default) is written again
    from the same checkpoint."""

    if os.path.isdir(output):
        raise ValueError(f"-o: {output} is a folder; give the ONNX file to write, e.g. "
                         f"{os.path.join(output, 'model.onnx')}")
    folder = os.path.dirname(output)
    existing = rundir.nearest_existing(folder)
    if existing and not os.path.isdir(existing):
        raise ValueError(f"-o: {existing} is a file, not a folder")
    if folder and not os.path.isdir(folder):
        raise ValueError(f"-o: the folder {folder} does not exist")
    # The file written is the one a symbolic link points to: it is checked, not the link.
    written = os.path.realpath(output)
    name, folder = os.path.basename(written), os.path.dirname(written)
    if rundir.holds_run(folder, rundir.RUN_MARKERS) and name in rundir.RUN_FILES and os.path.exists(written):
        if name == "model.onnx" and folder == os.path.realpath(run_dir):
            return
        linked = f" (a link to {written})" if written != os.path.abspath(output) else ""
        raise ValueError(f"-o: {output}{linked} is the {name} of the run {folder}; give another path for the ONNX "
                         f"model")


def export_run(run_dir, output=None):
    """Writes the ONNX model of a `faceops train` run directory (see load_run) to
    `output` (default RUN_DIR/model.onnx), refused as check_output_file says."""
    if output:  # before the checkpoint is read; a missing run is load_run's message, not -o's
        check_output_file(output, run_dir)
    net, config = load_run(run_dir)
    output = output or os.path.join(run_dir, "model.onnx")
    try:
        if config.get("backbone") == "cnn":
            from faceops.driver import torch_model

            return torch_model.to_onnx(net, output, torch_model.preprocessing_of(config))
        return to_onnx(net, output, preprocessing_of(config))
    except OSError as error:  # a full disk, no permission
        raise ValueError(f"-o: cannot write {output}: {error.strerror or error}") from None


def preprocessing_of(config):
    """What a caller must do to an image before the graph: the metadata's `preprocessing`."""
    return {"descriptor": config["descriptor"], "image_size": config["image_size"], "crop": config["crop"],
            "grey": True, "pixel_scale": "1/255",
            "steps": "grey, centre crop keeping `crop` of each side, resize to image_size (INTER_AREA), "
                     "scale to [0, 1], then faceops.driver.model.describe(images, descriptor)"}


def main(argv=None):
    from faceops.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="faceops export", formatter_class=HelpFormatter,
                                     description="Export a trained run's embedding network (its last checkpoint) to "
                                                 "ONNX; the preprocessing it was trained with goes into the metadata.")
    parser.add_argument("run_dir", help="the run directory of a `faceops train` run (holds checkpoint.npz)")
    parser.add_argument("--output", "-o", help="ONNX file to write (default: RUN_DIR/model.onnx, written again from "
                                               "the checkpoint); a run's other files are refused, never written over")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run_dir, args.output)
    except (FileNotFoundError, KeyError, ValueError) as error:
        raise SystemExit(f"faceops export: {error}")
    print(f"wrote {path}")
    return 0
