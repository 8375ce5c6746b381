"""The margin softmax layers inside pycaffe nets (issue 6): the native
MarginSoftmaxLoss (and its Python-layer form) agrees with
faceops.margin_softmax_loss; the legacy forms of the forks (CombinedMargin,
CosinAddm, LabelSpecificAdd, Normalize) agree with faceops.ops.target_margin_*
and the row normalisation; the fork parameters faceops does not support stop
Caffe with a message; fork-style prototxts train."""

import os
import subprocess
import sys

import numpy as np
import pytest

import faceops
import faceops.ops

from test_caffe_layers import FORMS, LOSS_WEIGHT, input_layers, loss_layer, run

N, D, CLASSES = 8, 6, 5
RTOL, ATOL = 1e-4, 1e-6
LABELS = np.array([0, 1, 2, 3, 4, 0, 1, 2], dtype=np.int64)
SETTINGS = {  # name: (s, m1, m2, m3)
    "arcface": (64.0, 1.0, 0.5, 0.0),
    "cosface": (30.0, 1.0, 0.0, 0.35),
    "sphereface": (16.0, 4.0, 0.0, 0.0),
}


def features(seed=0, shape=(N, D)):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_margin_softmax_parity(make_net, form, setting):
    s, m1, m2, m3 = SETTINGS[setting]
    x = features()
    weight = features(1, (CLASSES, D))
    native = f"margin_softmax_loss_param {{ num_output: {CLASSES} s: {s} m1: {m1} m2: {m2} m3: {m3} }}"
    python = f"{{'num_output': {CLASSES}, 's': {s}, 'm1': {m1}, 'm2': {m2}, 'm3': {m3}}}"
    net = make_net(input_layers("x", shapes={"x": (N, D)})
                   + loss_layer("MarginSoftmaxLoss", ["x", "label"], native, python, form))
    assert net.params["loss"][0].data.shape == (CLASSES, D)
    net.params["loss"][0].data[...] = weight
    loss = run(net, x=x, label=LABELS)

    expected_loss, dx, dweight = faceops.margin_softmax_loss(x, LABELS, weight, s=s, m1=m1, m2=m2, m3=m3)
    assert expected_loss > 0
    np.testing.assert_allclose(loss, expected_loss, rtol=RTOL)
    np.testing.assert_allclose(net.blobs["x"].diff, LOSS_WEIGHT * dx, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(net.params["loss"][0].diff, LOSS_WEIGHT * dweight, rtol=RTOL, atol=ATOL)


def test_margin_softmax_default_is_arcface_with_xavier_weight(make_net):
    net = make_net(input_layers("x", shapes={"x": (N, D)}) + loss_layer(
        "MarginSoftmaxLoss", ["x", "label"], f"margin_softmax_loss_param {{ num_output: {CLASSES} }}", "",
        "native"))
    weight = net.params["loss"][0].data.copy()
    assert weight.shape == (CLASSES, D)
    limit = np.sqrt(3.0 / D)
    assert np.abs(weight).max() <= limit and np.abs(weight).min() > 0  # xavier, not zeros
    x = features()
    loss = run(net, x=x, label=LABELS)
    np.testing.assert_allclose(loss, faceops.margin_softmax_loss(x, LABELS, weight)[0], rtol=RTOL)


LEGACY = {  # type: (parameter text, (m1, m2, m3))
    "CombinedMargin": ("combined_margin_param { m1: 1.2 m2: 0.3 m3: 0.2 }", (1.2, 0.3, 0.2)),
    "CombinedMargin-defaults": ("", (4.0, 0.5, 0.35)),
}


def cosin_addm_reference(c, m=0.5):
    """xialuxi/arcface-caffe's CPU CosinAddm at the targets: (psi, dpsi/dc as it back-propagates)."""
    c = np.minimum(c.astype(np.float64), 1.0)
    fallback = c <= np.cos(np.pi - m)
    sin = np.sqrt(np.maximum(1 - c * c, 0))
    psi = np.where(fallback, c - m * np.sin(m), c * np.cos(m) - sin * np.sin(m))
    with np.errstate(divide="ignore", invalid="ignore"):
        dpsi = np.where(fallback | (sin == 0), 1.0, np.cos(m) + np.sin(m) * c / sin)
    return psi, dpsi


FORK_MARGINS = {  # type: (parameter text, target reference (psi, dpsi))
    "CosinAddm": ("cosin_add_m_param { m: 0.5 }", cosin_addm_reference),
    # happynear's: the bias is added only where cos > -bias.
    "LabelSpecificAdd": ("label_specific_add_param { bias: -0.35 }",
                         lambda c: (np.where(c > 0.35, c - 0.35, c), np.ones_like(c))),
}


@pytest.mark.parametrize("kind", sorted(FORK_MARGINS))
def test_fork_margin_parity(make_net, kind):
    param, reference = FORK_MARGINS[kind]
    # Past both edges of CosinAddm: below cos(pi - m) and above 1 (a bottom
    # that is not a true cosine).
    cosine = np.random.default_rng(2).uniform(-0.95, 0.95, (N, CLASSES)).astype(np.float32)
    rows = np.arange(N)
    cosine[0, LABELS[0]], cosine[1, LABELS[1]] = 1.3, -0.93
    net = make_net(input_layers("cosine", shapes={"cosine": (N, CLASSES)})
                   + f'layer {{ name: "margin" type: "{kind}" bottom: "cosine" bottom: "label" '
                   f'top: "margined" {param} }}\n')
    net.blobs["cosine"].data[...] = cosine
    net.blobs["label"].data[...] = LABELS
    net.forward()
    d_out = np.random.default_rng(3).standard_normal((N, CLASSES)).astype(np.float32)
    net.backward(margined=d_out)

    psi, dpsi = reference(cosine[rows, LABELS])
    expected, expected_diff = cosine.astype(np.float64), d_out.astype(np.float64)
    expected[rows, LABELS], expected_diff[rows, LABELS] = psi, d_out[rows, LABELS] * dpsi
    np.testing.assert_allclose(net.blobs["margined"].data, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(net.blobs["cosine"].diff, expected_diff, rtol=RTOL, atol=1e-5)
    assert np.isfinite(net.blobs["cosine"].diff).all()


@pytest.mark.parametrize("case", sorted(LEGACY))
def test_legacy_margin_parity(make_net, case):
    kind = case.split("-")[0]
    param, (m1, m2, m3) = LEGACY[case]
    cosine = np.random.default_rng(2).uniform(-0.9, 0.95, (N, CLASSES)).astype(np.float32)
    net = make_net(input_layers("cosine", shapes={"cosine": (N, CLASSES)})
                   + f'layer {{ name: "margin" type: "{kind}" bottom: "cosine" bottom: "label" '
                   f'top: "margined" {param} }}\n')
    net.blobs["cosine"].data[...] = cosine
    net.blobs["label"].data[...] = LABELS
    net.forward()
    d_out = np.random.default_rng(3).standard_normal((N, CLASSES)).astype(np.float32)
    net.backward(margined=d_out)

    expected = faceops.ops.target_margin_forward(cosine, LABELS, m1=m1, m2=m2, m3=m3)
    np.testing.assert_allclose(net.blobs["margined"].data, expected, rtol=RTOL, atol=ATOL)
    rows = np.arange(N)
    np.testing.assert_array_equal(np.delete(net.blobs["margined"].data.ravel(), rows * CLASSES + LABELS),
                                  np.delete(cosine.ravel(), rows * CLASSES + LABELS))
    d_cosine = faceops.ops.target_margin_backward(cosine, LABELS, d_out, m1=m1, m2=m2, m3=m3)
    np.testing.assert_allclose(net.blobs["cosine"].diff, d_cosine, rtol=RTOL, atol=1e-5)


def test_legacy_margin_passes_through_in_test_phase(caffe, tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(input_layers("cosine", shapes={"cosine": (N, CLASSES)})
                    + 'layer { name: "margin" type: "CosinAddm" bottom: "cosine" bottom: "label" '
                    'top: "margined" cosin_add_m_param { m: 0.5 } }\n')
    net = caffe.Net(str(path), caffe.TEST)
    cosine = np.random.default_rng(2).uniform(-0.9, 0.95, (N, CLASSES)).astype(np.float32)
    net.blobs["cosine"].data[...] = cosine
    net.blobs["label"].data[...] = LABELS
    net.forward()
    np.testing.assert_array_equal(net.blobs["margined"].data, cosine)


@pytest.mark.parametrize("bp_norm", [False, True])
def test_normalize_parity(make_net, bp_norm):
    x = features(4)
    tops = 'top: "normalized" top: "norm"' if bp_norm else 'top: "normalized"'
    net = make_net(input_layers("x", label_rows=0, shapes={"x": (N, D)})
                   + f'layer {{ name: "norm" type: "Normalize" bottom: "x" {tops} '
                   f'normalize_param {{ bp_norm: {str(bp_norm).lower()} }} }}\n')
    net.blobs["x"].data[...] = x
    net.forward()
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    normalized = x / norms
    np.testing.assert_allclose(net.blobs["normalized"].data, normalized, rtol=1e-5, atol=1e-7)
    g = features(5)
    diffs = {"normalized": g}
    expected = (g - normalized * (normalized * g).sum(axis=1, keepdims=True)) / norms
    if bp_norm:
        np.testing.assert_allclose(net.blobs["norm"].data.reshape(N, 1), norms, rtol=1e-5)
        g_norm = features(6, (N, 1))
        diffs["norm"] = g_norm
        expected = expected + g_norm * normalized
    net.backward(**diffs)
    np.testing.assert_allclose(net.blobs["x"].diff, expected, rtol=1e-4, atol=1e-6)


CHILD = """
import caffe
caffe.Net({path!r}, caffe.TRAIN).forward()
"""
UNSUPPORTED = {
    "channel-scale-global": (
        'layer { name: "scale" type: "ChannelScale" bottom: "cosine" bottom: "label" top: "s" '
        "channel_scale_param { global_scale: true } }",
        "ChannelScale layer 'scale': channel_scale_param.global_scale is not supported"),
    "inner-product-normalize-transpose": (
        'layer { name: "fc" type: "InnerProduct" bottom: "cosine" top: "f" '
        "inner_product_param { num_output: 3 normalize: true transpose: true } }",
        "InnerProduct layer 'fc': inner_product_param.normalize normalises weight rows"),
    "normalize-l1": (
        'layer { name: "norm" type: "Normalize" bottom: "cosine" top: "n" normalize_param { normalize_type: "L1" } }',
        "Normalize layer 'norm': normalize_param.normalize_type must be \"L2\""),
    "normalize-fix-gradient": (
        'layer { name: "norm" type: "Normalize" bottom: "cosine" top: "n" normalize_param { fix_gradient: true } }',
        "Normalize layer 'norm': normalize_param.fix_gradient"),
    "normalize-spatial": (
        'layer { name: "norm" type: "Normalize" bottom: "map" top: "n" }',
        "Normalize layer 'norm': bottom[0] (features) has shape 8 5 2 2 (160); expected one vector per sample"),
    "margin-softmax-no-classes": (
        'layer { name: "loss" type: "MarginSoftmaxLoss" bottom: "cosine" bottom: "label" top: "l" }',
        "MarginSoftmaxLoss layer 'loss': expected margin_softmax_loss_param { num_output: <number of classes> }"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_unsupported_fork_parameters_stop_caffe(caffe, tmp_path, case):
    layer, message = UNSUPPORTED[case]
    path = tmp_path / "net.prototxt"
    path.write_text(input_layers("cosine", "map", shapes={"cosine": (N, CLASSES), "map": (N, 5, 2, 2)})
                    + layer + "\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.run([sys.executable, "-c", CHILD.format(path=str(path))],
                           env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode != 0
    assert message in child.stderr, child.stderr[-2000:]


BATCH, TRAIN_CLASSES = 32, 4
TRUNK = """
name: "margin_toy"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: %d dim: 1 dim: 4 dim: 4 } shape { dim: %d } } }
layer { name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
""" % (BATCH, BATCH)
NATIVE_HEAD = """
layer { name: "loss" type: "MarginSoftmaxLoss" bottom: "fc5" bottom: "label" top: "loss"
  param { lr_mult: 1 decay_mult: 1 }
  margin_softmax_loss_param { num_output: %d s: 30 m2: 0.3 weight_filler { type: "xavier" } } }
""" % TRAIN_CLASSES
# The forks' heads (happynear/AMSoftmax's face_train_test.prototxt,
# xialuxi/arcface-caffe's cosin_add_m.prototxt), with the forks'
# `inner_product_param { normalize: true }` that faceops' installer adds to
# Caffe's InnerProduct.
LEGACY_HEAD = """
layer { name: "norm1" type: "Normalize" bottom: "fc5" top: "norm1" %s }
layer { name: "fc6_l2" type: "InnerProduct" bottom: "norm1" top: "fc6"
  param { lr_mult: 1 }
  inner_product_param { num_output: %d normalize: true weight_filler { type: "xavier" }
    bias_term: false } }
%s
layer { name: "fc6_margin_scale" type: "Scale" bottom: "fc6_margin" top: "fc6_margin_scale"
  param { lr_mult: 0 decay_mult: 0 }
  scale_param { filler { type: "constant" value: 30 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc6_margin_scale" bottom: "label" top: "loss" }
"""
AM_SOFTMAX = LEGACY_HEAD % ("", TRAIN_CLASSES, """
layer { name: "label_specific_margin" type: "LabelSpecificAdd" bottom: "fc6" bottom: "label" top: "fc6_margin"
  label_specific_add_param { bias: -0.35 } }""")
ARCFACE = LEGACY_HEAD % ("normalize_param { bp_norm: true }", TRAIN_CLASSES, """
layer { name: "cosin_add_m" type: "CosinAddm" bottom: "fc6" bottom: "label" top: "fc6_margin"
  cosin_add_m_param { m: 0.5 } }""")
COMBINED = LEGACY_HEAD % ("", TRAIN_CLASSES, """
layer { name: "combined_margin" type: "CombinedMargin" bottom: "fc6" bottom: "label" top: "fc6_margin"
  combined_margin_param { m1: 1 m2: 0 m3: 0.35 } }""")
SOLVER = """
net: "%s"
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
max_iter: 1000
display: 0
snapshot_after_train: false
random_seed: 1701
solver_mode: CPU
"""


@pytest.mark.parametrize("head", [NATIVE_HEAD, AM_SOFTMAX, ARCFACE, COMBINED],
                         ids=["native", "LabelSpecificAdd", "CosinAddm", "CombinedMargin"])
def test_margin_prototxt_trains(caffe, tmp_path, head):
    net_path, solver_path = tmp_path / "train.prototxt", tmp_path / "solver.prototxt"
    net_path.write_text(TRUNK + head)
    solver_path.write_text(SOLVER % net_path)
    solver = caffe.SGDSolver(str(solver_path))

    rng = np.random.default_rng(0)
    labels = np.arange(BATCH) % TRAIN_CLASSES
    means = rng.standard_normal((TRAIN_CLASSES, 16)) * 2
    data = (means[labels] + 0.3 * rng.standard_normal((BATCH, 16))).reshape(BATCH, 1, 4, 4)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = labels

    losses = []
    for _ in range(30):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
