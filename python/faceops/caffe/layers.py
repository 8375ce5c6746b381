"""The faceops losses as Caffe Python layers, for a Caffe that cannot be
rebuilt (it needs WITH_PYTHON_LAYER / -DBUILD_python_layer=ON):

    layer { name: "center_loss" type: "Python" bottom: "fc5" bottom: "label"
      top: "center_loss" param { lr_mult: 1 decay_mult: 2 }
      python_param { module: "faceops.caffe.layers" layer: "CenterLoss"
                     param_str: "{'num_output': 10572}" }
      loss_weight: 0.008 }

param_str is a Python dict literal with the fields of the native layer's
parameter message (caffe_layers/proto/faceops_layers.proto): CenterLoss
``num_output`` (required), ``axis`` (1), ``center_filler`` ('zero', the
native default, or 'xavier'); TripletLoss ``margin`` (1.0), ``mining`` ('semihard', 'hard', 'all'),
``squared`` (True); PairLoss ``theta`` (1.0); MarginSoftmaxLoss ``num_output``
(required), ``axis`` (1), ``s`` (64), ``m1`` (1), ``m2`` (0.5), ``m3`` (0),
``weight_filler`` ('xavier', the native default, or 'gaussian': std 0.01).  They compute what the native
layers compute, with the faceops ops (CPU, the NumPy arrays pycaffe exposes).
The fillers are Caffe's own, drawn from Caffe's random generator: a solver's
random_seed makes the initial centers and weights repeatable.
Python layers are not loss layers to Caffe: give the top a loss_weight.  The
labels take no gradient: their diff is set to zero when Caffe asks for it.
"""

import ast
import os
import tempfile

import caffe
import numpy as np

import faceops
from faceops import _params as hyper


def _params(layer, defaults, required=()):
    """param_str's fields over `defaults`, each of its default's kind (a real number, an
    integer, a flag or a string; the required fields are counts >= 1), checked as every
    faceops front checks its hyperparameters: '64' or True is no scale."""
    given = ast.literal_eval(layer.param_str) if layer.param_str.strip() else {}
    if not isinstance(given, dict):
        raise ValueError(f"{type(layer).__name__}: param_str must be a dict literal, got {layer.param_str!r}")
    unknown = sorted(set(given) - set(defaults) - set(required))
    missing = [name for name in required if name not in given]
    if unknown or missing:
        raise ValueError(f"{type(layer).__name__}: param_str {layer.param_str!r}: "
                         f"unknown {unknown}, missing {missing}; accepted: {sorted(defaults) + list(required)}")
    checked = dict(defaults)
    for name, value in given.items():
        field = f"{type(layer).__name__} param_str {name}"
        default = defaults.get(name)
        if name in required:
            checked[name] = hyper.integer(field, value, low=1)
        elif isinstance(default, bool):
            checked[name] = hyper.flag(field, value)
        elif isinstance(default, float):
            checked[name] = hyper.real(field, value, np.float32)  # pycaffe's blobs are float32
        elif isinstance(default, int):
            checked[name] = hyper.integer(field, value)
        elif not isinstance(value, str):
            raise TypeError(f"{field}: expected a string, got {value!r}")
        else:
            checked[name] = value
    return checked


def _axis(layer, axis, shape):
    """Caffe's CanonicalAxisIndex: -len(shape) <= axis < len(shape), negative from the end."""
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"{type(layer).__name__} param_str axis: expected -{len(shape)} <= axis < {len(shape)} for "
                         f"a bottom of shape {tuple(shape)}, got {axis}")
    return axis % len(shape)


def _caffe_filled(shape, filler):
    """An array of `shape` filled by Caffe's own filler (`filler`: the body of a
    FillerParameter), drawn from Caffe's random generator, so that the solver's
    random_seed (or caffe.set_random_seed) makes it repeatable, as for the native
    layers.  (A one-layer DummyData net: pycaffe exposes no filler.)"""
    dims = " ".join(f"dim: {d}" for d in shape)
    text = (f'layer {{ name: "fill" type: "DummyData" top: "fill" dummy_data_param {{ '
            f'shape {{ {dims} }} data_filler {{ {filler} }} }} }}')
    handle, path = tempfile.mkstemp(suffix=".prototxt")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        net = caffe.Net(path, caffe.TEST)
        net.forward()
        return net.blobs["fill"].data.copy()
    finally:
        os.unlink(path)


def _labels(layer, blob, rows):
    """Caffe's float labels as the int64 class indices the ops take."""
    values = blob.data.reshape(-1)
    if values.size != rows:
        raise ValueError(f"{type(layer).__name__}: bottom[1] (label) holds {values.size} values; "
                         f"expected one per row of bottom[0] (features), {rows}")
    labels = values.astype(np.int64)
    if not np.array_equal(labels, values) or (labels < 0).any():
        raise ValueError(f"{type(layer).__name__}: bottom[1] (label) must hold class indices "
                         "(whole numbers >= 0)")
    return labels


def _no_label_gradient(propagate_down, bottom):
    # A Python layer cannot refuse force_backward for its label bottom, as the
    # native layers do: the labels' gradient is zero.
    if propagate_down[1]:
        bottom[1].diff[...] = 0


class CenterLoss(caffe.Layer):
    """Wen et al., ECCV 2016: loss sum_i ||x_i - c_{y_i}||^2 / (2N); blobs[0] are the
    centers, whose diff accumulates the eq. 4 update direction (see the native
    CenterLossLayer, caffe_layers/include/caffe/layers/center_loss_layer.hpp)."""

    def setup(self, bottom, top):
        params = _params(self, {"axis": 1, "center_filler": "zero"}, required=("num_output",))
        self.axis = _axis(self, params["axis"], bottom[0].shape)
        dim = int(np.prod(bottom[0].shape[self.axis:]))
        if len(self.blobs) == 0:
            self.blobs.add_blob(params["num_output"], dim)
            if params["center_filler"] == "xavier":  # Caffe's XavierFiller, fan_in = dim
                self.blobs[0].data[...] = _caffe_filled(self.blobs[0].data.shape, 'type: "xavier"')
            elif params["center_filler"] == "zero":
                self.blobs[0].data[...] = 0
            else:
                raise ValueError(f"CenterLoss: center_filler must be 'zero' or 'xavier', "
                                 f"got {params['center_filler']!r}")

    def reshape(self, bottom, top):
        self.rows = int(np.prod(bottom[0].shape[:self.axis]))
        top[0].reshape()

    def forward(self, bottom, top):
        self.x = bottom[0].data.reshape(self.rows, -1)
        self.labels = _labels(self, bottom[1], self.rows)
        top[0].data[...], self.dx, _ = faceops.center_loss(self.x, self.labels, self.blobs[0].data)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(propagate_down, bottom)
        self.blobs[0].diff[...] += faceops.center_update_direction(self.x, self.labels, self.blobs[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.dx.reshape(bottom[0].diff.shape)


class TripletLoss(caffe.Layer):
    """Two bottoms (features, label): faceops.triplet_loss with in-batch mining;
    three (anchor, positive, negative): faceops.triplet_loss_explicit."""

    def setup(self, bottom, top):
        params = _params(self, {"margin": 1.0, "mining": "semihard", "squared": True})
        self.margin, self.mining, self.squared = params["margin"], params["mining"], params["squared"]
        if len(bottom) not in (2, 3):
            raise ValueError(f"TripletLoss: expected 2 bottoms (features, label) or 3 (anchor, "
                             f"positive, negative), got {len(bottom)}")

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        rows = bottom[0].shape[0]
        if len(bottom) == 2:
            x = bottom[0].data.reshape(rows, -1)
            loss, dx = faceops.triplet_loss(x, _labels(self, bottom[1], rows), self.margin,
                                            self.mining, self.squared)
            self.diffs = [dx]
        else:
            loss, *self.diffs = faceops.triplet_loss_explicit(
                *(bottom[i].data.reshape(rows, -1) for i in range(3)), margin=self.margin)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if len(bottom) == 2:
            _no_label_gradient(propagate_down, bottom)
        for i, diff in enumerate(self.diffs):  # pycaffe's blob vectors only index
            if propagate_down[i]:
                bottom[i].diff[...] = top[0].diff * diff.reshape(bottom[i].diff.shape)


class PairLoss(caffe.Layer):
    """Tadmor et al., NIPS 2016 (faceops.pair_loss); blobs[0] is the learned
    threshold theta, whose diff accumulates dL/dtheta times the top diff."""

    def setup(self, bottom, top):
        params = _params(self, {"theta": 1.0})
        if len(self.blobs) == 0:
            self.blobs.add_blob(1)
            self.blobs[0].data[0] = params["theta"]

    def reshape(self, bottom, top):
        top[0].reshape()

    def forward(self, bottom, top):
        rows = bottom[0].shape[0]
        x = bottom[0].data.reshape(rows, -1)
        top[0].data[...], self.dx, self.dtheta = faceops.pair_loss(
            x, _labels(self, bottom[1], rows), float(self.blobs[0].data[0]))

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(propagate_down, bottom)
        self.blobs[0].diff[0] += top[0].diff * self.dtheta
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.dx.reshape(bottom[0].diff.shape)


class MarginSoftmaxLoss(caffe.Layer):
    """The combined margin softmax (faceops.margin_softmax_loss: ArcFace by
    default, CosFace with m2 = 0, m3 = 0.35, SphereFace with m1 = 4, m2 = 0);
    blobs[0] is the class weight (num_output x D), whose diff accumulates
    dL/dweight times the top diff (see the native MarginSoftmaxLossLayer)."""

    def setup(self, bottom, top):
        params = _params(self, {"axis": 1, "s": 64.0, "m1": 1.0, "m2": 0.5, "m3": 0.0,
                                "weight_filler": "xavier"}, required=("num_output",))
        self.axis = _axis(self, params["axis"], bottom[0].shape)
        self.margins = {name: params[name] for name in ("s", "m1", "m2", "m3")}
        dim = int(np.prod(bottom[0].shape[self.axis:]))
        if len(self.blobs) == 0:
            self.blobs.add_blob(params["num_output"], dim)
            shape = self.blobs[0].data.shape
            if params["weight_filler"] == "xavier":  # Caffe's XavierFiller, fan_in = dim
                self.blobs[0].data[...] = _caffe_filled(shape, 'type: "xavier"')
            elif params["weight_filler"] == "gaussian":
                self.blobs[0].data[...] = _caffe_filled(shape, 'type: "gaussian" std: 0.01')
            else:
                raise ValueError(f"MarginSoftmaxLoss: weight_filler must be 'xavier' or 'gaussian', "
                                 f"got {params['weight_filler']!r}")

    def reshape(self, bottom, top):
        self.rows = int(np.prod(bottom[0].shape[:self.axis]))
        top[0].reshape()

    def forward(self, bottom, top):
        x = bottom[0].data.reshape(self.rows, -1)
        labels = _labels(self, bottom[1], self.rows)
        top[0].data[...], self.dx, self.dweight = faceops.margin_softmax_loss(
            x, labels, self.blobs[0].data, **self.margins)

    def backward(self, top, propagate_down, bottom):
        _no_label_gradient(propagate_down, bottom)
        self.blobs[0].diff[...] += top[0].diff * self.dweight
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.dx.reshape(bottom[0].diff.shape)
