"""Each faceops Caffe layer, native and Python-layer form, inside a pycaffe net
agrees with the faceops op on the same inputs: loss, diffs, parameter diffs."""

import os
import subprocess
import sys

import numpy as np
import pytest

import faceops

LOSS_WEIGHT = 0.5  # Caffe sets the loss top's diff to it: every diff scales by it
N, D, CLASSES = 8, 5, 4
RTOL, ATOL = 1e-5, 1e-6


def features(seed=0):
    return np.random.default_rng(seed).standard_normal((N, D)).astype(np.float32)


LABELS = np.repeat(np.arange(CLASSES), N // CLASSES).astype(np.int64)  # P x K batch


def input_layers(*tops, label_rows=N, shapes=None):
    """Input layers: each top (N, D) or shapes[top], then "label" (label_rows,) unless 0."""
    shapes = shapes or {}
    layers = [f'layer {{ name: "{top}" type: "Input" top: "{top}" input_param {{ shape {{ '
              + " ".join(f"dim: {dim}" for dim in shapes.get(top, (N, D))) + " } } }" for top in tops]
    if label_rows:
        layers.append(f'layer {{ name: "label" type: "Input" top: "label" '
                      f'input_param {{ shape {{ dim: {label_rows} }} }} }}')
    return "force_backward: true\n" + "\n".join(layers) + "\n"


def loss_layer(kind, bottoms, native_param, python_param, form):
    bottom = " ".join(f'bottom: "{b}"' for b in bottoms)
    if form == "native":
        body = f'type: "{kind}" {native_param}'
    else:
        body = (f'type: "Python" python_param {{ module: "faceops.caffe.layers" layer: "{kind}" '
                f'param_str: "{python_param}" }}')
    return f'layer {{ name: "loss" {body} {bottom} top: "loss" loss_weight: {LOSS_WEIGHT} }}\n'


def run(net, **inputs):
    for name, value in inputs.items():
        net.blobs[name].data[...] = value
    net.forward()
    net.backward()
    return float(net.blobs["loss"].data)


FORMS = ["native", "python"]


@pytest.mark.parametrize("form", FORMS)
def test_center_loss_parity(make_net, form):
    x = features()
    centers = np.random.default_rng(1).standard_normal((CLASSES, D)).astype(np.float32)
    labels = LABELS.copy()
    labels[-2:] = 0  # class 3 absent: its centers' diff stays zero
    net = make_net(input_layers("x") + loss_layer(
        "CenterLoss", ["x", "label"], f"center_loss_param {{ num_output: {CLASSES} }}",
        f"{{'num_output': {CLASSES}}}", form))
    net.params["loss"][0].data[...] = centers
    loss = run(net, x=x, label=labels)

    expected_loss, dx, _ = faceops.center_loss(x, labels, centers)
    direction = faceops.center_update_direction(x, labels, centers)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(net.blobs["x"].diff, LOSS_WEIGHT * dx, rtol=RTOL, atol=ATOL)
    # The update direction, unscaled by loss_weight (caffe-face).
    centers_diff = net.params["loss"][0].diff
    np.testing.assert_allclose(centers_diff, direction, rtol=RTOL, atol=ATOL)
    assert not centers_diff[3].any()


@pytest.mark.parametrize("form", FORMS)
def test_center_loss_axis_parity(make_net, form):
    # axis: 2 makes (N/2, 2, D) features N samples of D values.
    x = features()
    centers = np.random.default_rng(1).standard_normal((CLASSES, D)).astype(np.float32)
    text = input_layers("x", shapes={"x": (N // 2, 2, D)}) + loss_layer(
        "CenterLoss", ["x", "label"], f"center_loss_param {{ num_output: {CLASSES} axis: 2 }}",
        f"{{'num_output': {CLASSES}, 'axis': 2}}", form)
    net = make_net(text)
    net.params["loss"][0].data[...] = centers
    loss = run(net, x=x.reshape(N // 2, 2, D), label=LABELS)

    expected_loss, dx, _ = faceops.center_loss(x, LABELS, centers)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(net.blobs["x"].diff.reshape(N, D), LOSS_WEIGHT * dx, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("mining,squared", [("semihard", True), ("hard", False), ("all", True)])
def test_triplet_loss_mining_parity(make_net, form, mining, squared):
    x = features()
    native = (f"triplet_loss_param {{ margin: 0.2 mining: {mining.upper()} "
              f"squared: {str(squared).lower()} }}")
    python = f"{{'margin': 0.2, 'mining': '{mining}', 'squared': {squared}}}"
    net = make_net(input_layers("x") + loss_layer("TripletLoss", ["x", "label"], native, python, form))
    loss = run(net, x=x, label=LABELS)

    expected_loss, dx = faceops.triplet_loss(x, LABELS, margin=0.2, mining=mining, squared=squared)
    assert expected_loss > 0
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(net.blobs["x"].diff, LOSS_WEIGHT * dx, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", FORMS)
def test_triplet_loss_explicit_parity(make_net, form):
    anchor, positive, negative = features(0), features(1), features(2)
    net = make_net(input_layers("anchor", "positive", "negative", label_rows=0) + loss_layer(
        "TripletLoss", ["anchor", "positive", "negative"], "", "{}", form))
    loss = run(net, anchor=anchor, positive=positive, negative=negative)

    expected = faceops.triplet_loss_explicit(anchor, positive, negative)  # margin 1.0 both sides
    assert expected[0] > 0
    np.testing.assert_allclose(loss, expected[0], rtol=RTOL)
    for name, grad in zip(("anchor", "positive", "negative"), expected[1:]):
        np.testing.assert_allclose(net.blobs[name].diff, LOSS_WEIGHT * grad, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("form", FORMS)
def test_pair_loss_parity(make_net, form):
    x = features()
    net = make_net(input_layers("x") + loss_layer(
        "PairLoss", ["x", "label"], "pair_loss_param { theta: 6.5 }", "{'theta': 6.5}", form))
    loss = run(net, x=x, label=LABELS)

    expected_loss, dx, dtheta = faceops.pair_loss(x, LABELS, 6.5)
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(net.blobs["x"].diff, LOSS_WEIGHT * dx, rtol=RTOL, atol=ATOL)
    assert net.params["loss"][0].data[0] == 6.5
    np.testing.assert_allclose(net.params["loss"][0].diff[0], LOSS_WEIGHT * dtheta, rtol=RTOL, atol=ATOL)


BAD_INPUT_SCRIPT = """
import caffe
net = caffe.Net({path!r}, caffe.TRAIN)
net.blobs["label"].data[...] = {labels}
net.forward()
"""
CENTER = f"center_loss_param {{ num_output: {CLASSES} }}"
BAD_INPUTS = {
    "center-label-range": (input_layers("x") + loss_layer("CenterLoss", ["x", "label"], CENTER, "", "native"),
                           [0, 1, 2, 3, 0, 1, 2, 7],
                           "CenterLoss layer 'loss': bottom[1] (label) at index 7 is out of range; "
                           "expected labels < num_output = 4"),
    "center-label-fraction": (input_layers("x") + loss_layer("CenterLoss", ["x", "label"], CENTER, "", "native"),
                              [0, 1, 2, 3, 0, 1, 2, 0.5],
                              "CenterLoss layer 'loss': bottom[1] (label) holds 0.5 at index 7; "
                              "expected class indices (whole numbers >= 0)"),
    "triplet-label-negative": (input_layers("x") + loss_layer("TripletLoss", ["x", "label"], "", "", "native"),
                               [-1, 0, 0, 1, 1, 2, 2, 3],
                               "TripletLoss layer 'loss': bottom[1] (label) holds -1 at index 0"),
    "triplet-shape": (input_layers("anchor", "positive", "negative", shapes={"positive": (N, D + 1)})
                      + loss_layer("TripletLoss", ["anchor", "positive", "negative"], "", "", "native"),
                      [0] * N,
                      "TripletLoss layer 'loss': bottom[1] (positive) has shape 8 6 (48); "
                      "expected the shape of bottom[0] (anchor), 8 5 (40)"),
    "pair-label-count": (input_layers("x", label_rows=N - 1)
                         + loss_layer("PairLoss", ["x", "label"], "", "", "native"),
                         [0] * (N - 1),
                         "PairLoss layer 'loss': bottom[1] (label) holds 7 values; "
                         "expected one per row of bottom[0] (features), 8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_stops_caffe_naming_the_blob(caffe, tmp_path, case):
    text, labels, message = BAD_INPUTS[case]
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    # A failed CHECK aborts the process: run the net in a child.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, "-c", BAD_INPUT_SCRIPT.format(path=str(path), labels=labels)],
                           env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode != 0
    assert message in child.stderr, child.stderr[-2000:]


@pytest.mark.parametrize("kind, param_str, message", [
    ("MarginSoftmaxLoss", "{'num_output': 4, 's': '64'}", "s: expected a real number, got the string '64'"),
    ("MarginSoftmaxLoss", "{'num_output': 4, 'm1': True}", "m1: expected a real number, got the bool True"),
    ("MarginSoftmaxLoss", "{'num_output': 4, 'm3': 1j}", "m3: expected a real number"),
    ("PairLoss", "{'theta': '1.0'}", "theta: expected a real number, got the string '1.0'"),
    ("PairLoss", "{'theta': 1e39}", "theta: expected a finite number, got 1e\\+?39, which is not finite in float32"),
    ("CenterLoss", "{'num_output': 4, 'axis': '1'}", "axis: expected an integer, got the string '1'"),
    ("CenterLoss", "{'num_output': 4, 'axis': 5}", r"axis: expected -2 <= axis < 2 for a bottom of shape \(8, 5\)"),
    ("CenterLoss", "{'num_output': 0}", "num_output: expected an integer >= 1, got 0"),
    ("TripletLoss", "{'squared': 1}", "squared: expected True or False"),
])
def test_python_layers_check_param_str_as_every_front_checks_hyperparameters(make_net, kind, param_str, message):
    """'64' and True passed as a scale and a margin, axis 5 of a 2-D bottom became 1, 1e39 became
    an inf theta, and others failed inside float() or a slice with messages naming nothing."""
    with pytest.raises(Exception, match=f"{kind} param_str {message}"):
        make_net(input_layers("x") + loss_layer(kind, ["x", "label"], "", param_str, "python"))
