"""ONNX export of the trained embedding network (descriptor in, L2-normalised
embedding out), built with the `onnx` package and checked by onnx.checker."""

import json

import numpy as np

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
