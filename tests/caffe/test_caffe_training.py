"""The caffe-face CenterLoss snippet (issue 3), unchanged, trains in a small
pycaffe net: softmax + center loss, SGD, the center loss goes down.  The same
net with the Python-layer form trains the same way."""

import numpy as np
import pytest

CAFFE_FACE_SNIPPET = """
layer { name: "center_loss" type: "CenterLoss" bottom: "fc5" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 }
  center_loss_param { num_output: 10572 center_filler { type: "xavier" } }
  loss_weight: 0.008 }
"""

PYTHON_LAYER = """
layer { name: "center_loss" type: "Python" bottom: "fc5" bottom: "label" top: "center_loss"
  param { lr_mult: 1 decay_mult: 2 }
  python_param { module: "faceops.caffe.layers" layer: "CenterLoss"
                 param_str: "{'num_output': 10572, 'center_filler': 'xavier'}" }
  loss_weight: 0.008 }
"""

BATCH, CLASSES = 32, 4

NET = """
name: "center_loss_toy"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: %d dim: 1 dim: 4 dim: 4 } shape { dim: %d } } }
layer { name: "fc5" type: "InnerProduct" bottom: "data" top: "fc5"
  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "fc6" type: "InnerProduct" bottom: "fc5" top: "fc6"
  inner_product_param { num_output: %d weight_filler { type: "xavier" } } }
layer { name: "softmax_loss" type: "SoftmaxWithLoss" bottom: "fc6" bottom: "label" top: "softmax_loss" }
""" % (BATCH, BATCH, CLASSES)

SOLVER = """
net: "%s"
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
max_iter: 1000
display: 0
snapshot_after_train: false
random_seed: 1701
solver_mode: CPU
"""


@pytest.mark.parametrize("center_loss", [CAFFE_FACE_SNIPPET, PYTHON_LAYER], ids=["native", "python"])
def test_caffe_face_center_loss_trains(caffe, tmp_path, center_loss):
    net_path, solver_path = tmp_path / "train.prototxt", tmp_path / "solver.prototxt"
    net_path.write_text(NET + center_loss)
    solver_path.write_text(SOLVER % net_path)
    solver = caffe.SGDSolver(str(solver_path))
    assert solver.net.params["center_loss"][0].data.shape == (10572, 8)

    rng = np.random.default_rng(0)
    labels = np.arange(BATCH) % CLASSES
    means = rng.standard_normal((CLASSES, 16)) * 2
    data = (means[labels] + 0.3 * rng.standard_normal((BATCH, 16))).reshape(BATCH, 1, 4, 4)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = labels

    center, softmax = [], []
    for _ in range(30):
        solver.step(1)
        center.append(float(solver.net.blobs["center_loss"].data))
        softmax.append(float(solver.net.blobs["softmax_loss"].data))
    assert np.isfinite(center).all() and np.isfinite(softmax).all()
    assert center[-1] < 0.5 * center[0], center
    assert softmax[-1] < softmax[0], softmax


@pytest.mark.parametrize("center_loss", [CAFFE_FACE_SNIPPET, PYTHON_LAYER], ids=["native", "python"])
def test_random_seed_makes_the_centers_repeatable(caffe, tmp_path, center_loss):
    """The solver's random_seed fixes the xavier-filled centers, for the Python layer
    as for the native one (both draw from Caffe's generator)."""
    net_path = tmp_path / "train.prototxt"
    net_path.write_text(NET + center_loss)

    def centers(seed, numpy_seed):
        solver_path = tmp_path / f"solver_{seed}.prototxt"
        solver_path.write_text((SOLVER % net_path).replace("random_seed: 1701", f"random_seed: {seed}"))
        np.random.seed(numpy_seed)  # NumPy's generator must not matter
        return caffe.SGDSolver(str(solver_path)).net.params["center_loss"][0].data.copy()

    first = centers(7, numpy_seed=1)
    np.testing.assert_array_equal(centers(7, numpy_seed=2), first)
    assert not np.array_equal(centers(8, numpy_seed=1), first)
    assert np.abs(first).max() <= np.sqrt(3.0 / 8) and np.abs(first).min() > 0  # xavier, fan_in 8
