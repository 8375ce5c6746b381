"""The descriptors and the hand-written backward passes (central finite differences, float64)."""

import numpy as np
import pytest

from faceops.driver import model
from faceops.selfcheck import numerical_gradient


def test_lbp_of_a_flat_image_is_one_uniform_bin_per_cell():
    hist = model.lbp_histograms(np.full((1, 34, 34), 0.5, np.float32), grid=4)
    cells = hist.reshape(16, 59)
    # All neighbours >= centre: code 255, a uniform pattern; one bin per cell, equal weights.
    assert (np.count_nonzero(cells, axis=1) == 1).all()
    assert len(set(np.argmax(cells, axis=1))) == 1
    np.testing.assert_allclose(np.linalg.norm(hist), 1.0, rtol=1e-6)


def test_uniform_lbp_table_has_58_uniform_codes():
    table = model._uniform_lbp_table()
    assert np.count_nonzero(table < 58) == 58  # Ojala et al. 2002: P (P - 1) + 2 uniform codes for P = 8
    assert table[0] != table[255] and table[0b00001111] < 58 and table[0b01010101] == 58


def test_lbp_is_invariant_to_monotonic_brightness_changes():
    images = np.random.default_rng(0).random((2, 40, 40)).astype(np.float32)
    np.testing.assert_allclose(model.lbp_histograms(images), model.lbp_histograms(0.5 * images**2 + 0.1), rtol=1e-6)


def test_raw_pixels_are_centred_and_unit_length():
    images = np.random.default_rng(1).random((3, 48, 48)).astype(np.float32)
    features = model.describe(images, "pixels")
    assert features.shape == (3, 32 * 32)
    np.testing.assert_allclose(features.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="descriptor"):
        model.describe(images, "hog")


@pytest.mark.parametrize("hidden", [0, 7])
def test_network_backward_matches_finite_differences(hidden):
    rng = np.random.default_rng(1)
    features = rng.random((6, 10))
    net = model.EmbeddingNet(np.full(10, 0.2), np.full(10, 0.5), hidden, 4, rng)
    net.mean, net.std = net.mean.astype(np.float64), net.std.astype(np.float64)
    net.params = {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape) for k, v in net.params.items()}
    weights = rng.standard_normal((6, 10 if hidden == 0 else 4))  # loss = sum(weights * z)
    z, cache = net.forward(features)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0)
    grads = net.backward(weights, cache)
    assert set(grads) == set(net.params)
    for name, value in net.params.items():
        numeric = numerical_gradient(lambda _: float(np.sum(weights * net.forward(features)[0])), value)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-7, err_msg=name)


def test_softmax_head_backward_matches_finite_differences():
    rng = np.random.default_rng(2)
    head = model.SoftmaxHead(5, 4, rng, scale=4.0)
    head.params["Wc"] = head.params["Wc"].astype(np.float64) * 50
    z = model.l2_normalize(rng.standard_normal((6, 5)))
    labels = np.array([0, 1, 2, 3, 0, 1])
    _, dz, grads = head.loss_and_grads(z, labels)
    np.testing.assert_allclose(dz, numerical_gradient(lambda v: head.loss_and_grads(v, labels)[0], z.copy()), atol=1e-7)
    numeric = numerical_gradient(lambda _: head.loss_and_grads(z, labels)[0], head.params["Wc"])
    np.testing.assert_allclose(grads["Wc"], numeric, atol=1e-7)


def test_network_rebuilt_from_its_arrays_computes_the_same():
    rng = np.random.default_rng(4)
    features = rng.random((5, 12)).astype(np.float32)
    net = model.EmbeddingNet(np.zeros(12), np.ones(12), 6, 3, rng)
    copy = model.EmbeddingNet.from_arrays(net.mean, net.std, net.params)
    np.testing.assert_array_equal(copy.forward(features)[0], net.forward(features)[0])


def test_network_copy_is_independent_and_keeps_dtypes():
    net = model.EmbeddingNet(np.zeros(12), np.ones(12), 0, 3, np.random.default_rng(5))
    net.params["A"] = net.params["A"].astype(np.float64)
    copy = net.copy()
    assert copy.output_dim == net.output_dim == 12 and copy.params["A"].dtype == np.float64
    copy.params["B"] += 1.0  # the SST gallery must not move its probe
    assert not np.any(net.params["B"])
    assert model.EmbeddingNet(np.zeros(12), np.ones(12), 6, 3, np.random.default_rng(5)).output_dim == 3
