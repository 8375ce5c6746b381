"""Semi-Siamese Training: the prototype queue is a FIFO of the right size and
contents, the gallery is the moving average of the probe, the loss is the
symmetric margin softmax over [gallery of the other image; queue] with exact
gradients, and the driver's SST state resumes bitwise."""

import json

import numpy as np
import pytest

from faceops import reference
from faceops.driver import data, model, sst, train
from faceops.selfcheck import numerical_gradient


def _rows(labels, dim=3):
    """Queue rows that carry their identity in every component."""
    return np.repeat(np.asarray(labels, np.float32)[:, None], dim, axis=1)


def test_queue_is_fifo_of_fixed_size():
    queue = sst.PrototypeQueue(5, 3)
    queue.push(_rows([0, 1, 2]), np.array([0, 1, 2]))
    features, labels = queue.ordered()
    assert queue.count == 3 and labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(features, _rows([0, 1, 2]))
    queue.push(_rows([3, 4, 5, 6]), np.array([3, 4, 5, 6]))  # wraps: 0 and 1 leave, oldest first
    features, labels = queue.ordered()
    assert queue.count == 5 and labels.tolist() == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(features, _rows([2, 3, 4, 5, 6]))
    assert queue.features.shape == (5, 3)  # never grows
    queue.push(_rows(range(10, 17)), np.arange(10, 17))  # more rows than slots: the newest 5 stay
    features, labels = queue.ordered()
    assert labels.tolist() == [12, 13, 14, 15, 16]
    np.testing.assert_array_equal(features, _rows([12, 13, 14, 15, 16]))


def test_queue_negatives_leave_out_the_batch_identities():
    queue = sst.PrototypeQueue(6, 3)
    queue.push(_rows([4, 7, 9, 7]), np.array([4, 7, 9, 7]))
    negatives = queue.negatives(np.array([7, 11]))
    assert sorted(negatives[:, 0].tolist()) == [4, 9]
    assert len(queue.negatives(np.array([], np.int64))) == 4  # empty slots never count
    empty = sst.PrototypeQueue(0, 3)
    empty.push(_rows([1]), np.array([1]))
    assert empty.count == 0 and empty.negatives(np.array([1])).shape == (0, 3)


def test_queue_state_round_trips():
    queue = sst.PrototypeQueue(4, 3)
    queue.push(_rows([1, 2, 3]), np.arange(1, 4))
    queue.push(_rows([4, 5]), np.arange(4, 6))
    copy = sst.PrototypeQueue(4, 3)
    copy.load_state(queue.state())
    assert (copy.count, copy.next) == (queue.count, queue.next) == (4, 1)
    np.testing.assert_array_equal(copy.ordered()[0], queue.ordered()[0])
    with pytest.raises(ValueError, match="--queue-size"):
        sst.PrototypeQueue(3, 3).load_state(queue.state())


def _setup(alpha=0.9, queue_size=6, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    net = model.EmbeddingNet(np.full(10, 0.1), np.full(10, 0.5), 0, 4, rng)
    net.mean, net.std = net.mean.astype(dtype), net.std.astype(dtype)
    net.params = {k: (v + 0.3 * rng.standard_normal(v.shape)).astype(dtype) for k, v in net.params.items()}
    semi = sst.SemiSiamese(net, queue_size, alpha, scale=8.0, margins=(1.0, 0.0, 0.35))
    semi.queue.features = semi.queue.features.astype(dtype)
    return net, semi, rng


def test_gallery_is_the_moving_average_of_the_probe():
    alpha, lr = 0.9, 0.5
    net, semi, rng = _setup(alpha)
    history = [{k: v.copy() for k, v in net.params.items()}]
    for step in range(4):
        x1, x2 = rng.random((3, 10)), rng.random((3, 10))
        _, grads = semi.loss_and_grads(net, x1, x2, np.array([0, 1, 2]) + 3 * step)
        for name, value in net.params.items():
            value -= lr * grads[name]
        semi.update(net, rng)
        history.append({k: v.copy() for k, v in net.params.items()})
    # After T steps: g_T = alpha^T p_0 + sum_t (1 - alpha) alpha^(T - t) p_t (paper eq. 6 unrolled).
    steps = len(history) - 1
    for name in net.params:
        expected = alpha**steps * history[0][name]
        expected += sum((1 - alpha) * alpha ** (steps - t) * history[t][name] for t in range(1, steps + 1))
        np.testing.assert_allclose(semi.gallery.params[name], expected, rtol=1e-12, atol=1e-14, err_msg=name)
    assert not np.allclose(semi.gallery.params["B"], net.params["B"])  # it lags: not a copy of the probe
    assert semi.gallery.params["B"] is not net.params["B"]


def test_update_enqueues_the_gallery_features_of_the_batch():
    net, semi, rng = _setup(queue_size=5)
    x1, x2 = rng.random((3, 10)), rng.random((3, 10))
    gallery_before = semi.gallery.copy()
    semi.loss_and_grads(net, x1, x2, np.array([10, 11, 12]))
    coin = np.random.default_rng(7)
    expected_first = coin.random() < 0.5
    semi.update(net, np.random.default_rng(7))
    features, labels = semi.queue.ordered()
    assert labels.tolist() == [10, 11, 12]
    enqueued = gallery_before.forward(x1 if expected_first else x2)[0]
    np.testing.assert_array_equal(features, enqueued)  # features of the gallery before its EMA step


def test_loss_is_the_symmetric_margin_softmax_over_gallery_and_queue():
    net, semi, rng = _setup()
    queued = np.array([5, 1, 6])  # identity 1 is also in the batch: a positive, not a negative
    semi.queue.push(model.l2_normalize(rng.standard_normal((3, 10))), queued)
    x1, x2, ids = rng.random((4, 10)), rng.random((4, 10)), np.array([0, 1, 2, 3])
    loss, grads = semi.loss_and_grads(net, x1, x2, ids)
    p1, p2 = net.forward(x1)[0], net.forward(x2)[0]
    g1, g2 = semi.gallery.forward(x1)[0], semi.gallery.forward(x2)[0]
    negatives = semi.queue.features[[0, 2]]
    targets = np.arange(4)
    expected = (reference.margin_softmax_loss(p1, targets, np.concatenate([g2, negatives]), 8.0, 1.0, 0.0, 0.35)[0] +
                reference.margin_softmax_loss(p2, targets, np.concatenate([g1, negatives]), 8.0, 1.0, 0.0, 0.35)[0]) / 2
    assert loss == pytest.approx(expected, rel=1e-10)
    with_false_negative = reference.margin_softmax_loss(
        p1, targets, np.concatenate([g2, semi.queue.features[:3]]), 8.0, 1.0, 0.0, 0.35)[0]
    assert abs(with_false_negative - expected) > 1e-3
    # Probe gradients (the gallery and the queue are constants of the step).
    for name, value in net.params.items():
        numeric = numerical_gradient(lambda _: semi.loss_and_grads(net, x1, x2, ids)[0], value)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-7, err_msg=name)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=14, images_per_identity=4, size=48)


def _train(run_dir, *extra):
    return train.run(*train.configure(["--run-dir", str(run_dir), *extra]))


def test_sst_run_resumes_bitwise_and_checkpoints_its_state(tmp_path, synthetic_root):
    args = ["--data", synthetic_root, "--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013",
            "--image-size", "48", "-P", "4", "--method", "sst", "--queue-size", "6", "--ema", "0.9",
            "--max-images-per-identity", "2", "--epochs", "3"]
    _train(tmp_path / "straight", *args)
    _train(tmp_path / "split", *args[:-1], "1")
    _train(tmp_path / "split", *args, "--resume")
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "split" / "checkpoint.npz") as b:
        assert set(a.files) == set(b.files)
        assert {"gallery_A", "gallery_B", "gallery_b", "queue_features", "queue_labels", "queue_next"} <= set(a.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
        # 3 epochs x 2 batches x 4 identities pushed through 6 slots: full, 24 % 6 = 0 next.
        assert int(a["queue_count"]) == 6 and int(a["queue_next"]) == 0
        assert set(a["queue_labels"].tolist()) <= set(range(10))
        assert not np.array_equal(a["gallery_B"], a["param_B"])
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert straight["trained"] == split["trained"] and len(split["history"]) == 3
    assert all(np.isfinite(h["loss"]) for h in split["history"])
    assert "trained (SST: cosface over gallery prototypes), on all" in (tmp_path / "straight" / "log.txt").read_text()
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert (config["loss"], config["images_per_identity"], config["scale"]) == ("cosface", 2, 32.0)
