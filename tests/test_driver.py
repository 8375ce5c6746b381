"""The training driver: data, sampler, descriptor, network backward, the 10-fold
protocol, checkpoint/resume, ONNX through OpenCV DNN, and short training runs on
real and synthetic images."""

import json
import os
import shutil
import warnings

import cv2
import numpy as np
import pytest

from faceops import data, evaluate, export, model, train
from faceops.selfcheck import numerical_gradient

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ORL = os.path.join(SHARED, "orl_faces")
needs_orl = pytest.mark.skipif(not os.path.isdir(ORL), reason=f"shared data not found at {ORL} (../shared beside the repo)")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=12, images_per_identity=5, size=48)


def test_reader_skips_corrupt_files_with_one_warning(synthetic_root, tmp_path):
    root = tmp_path / "people"
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
        for k in range(3):
            src = os.path.join(synthetic_root, "id_000", f"{k:02d}.png")
            shutil.copyfile(src, root / person / f"{k}.png")
    (root / "alice" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "bob" / "empty.pgm").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faces = data.load_identity_folder(str(root), size=32)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "broken.jpg" in message and "empty.pgm" in message and "2 unreadable" in message
    assert faces.images.shape == (6, 32, 32) and faces.names == ["alice", "bob"]
    np.testing.assert_array_equal(faces.labels, [0, 0, 0, 1, 1, 1])


def test_pk_sampler_guarantees():
    labels = np.array([0] * 5 + [1] * 1 + [2] * 3 + [3] * 4 + [4] * 2)
    sampler = data.PKSampler(labels, identities_per_batch=2, images_per_identity=3)
    rng = np.random.default_rng(0)
    seen = set()
    batches = list(sampler.epoch(rng))
    assert len(batches) == sampler.batches_per_epoch() == 2
    for rows in batches:
        assert len(rows) == 6
        groups = labels[rows].reshape(2, 3)
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]  # P distinct identities x K
        seen.update(groups[:, 0].tolist())
    assert len(seen) == 4  # identities are not repeated within an epoch
    with pytest.raises(ValueError, match="identities_per_batch"):
        data.PKSampler(labels, 6, 2)


def test_lbp_of_a_flat_image_is_one_uniform_bin_per_cell():
    hist = model.lbp_histograms(np.full((1, 34, 34), 0.5, np.float32), grid=4)
    cells = hist.reshape(16, 59)
    # All neighbours >= centre: code 255, a uniform pattern; one bin per cell, equal weights.
    assert (np.count_nonzero(cells, axis=1) == 1).all()
    assert len(set(np.argmax(cells, axis=1))) == 1
    np.testing.assert_allclose(np.linalg.norm(hist), 1.0, rtol=1e-6)


@pytest.mark.parametrize("hidden", [0, 7])
def test_network_backward_matches_finite_differences(hidden):
    rng = np.random.default_rng(1)
    features = rng.random((6, 10))
    net = model.EmbeddingNet(np.full(10, 0.2), np.full(10, 0.5), hidden, 4, rng)
    net.mean, net.std = net.mean.astype(np.float64), net.std.astype(np.float64)
    net.params = {k: v.astype(np.float64) + 0.1 * rng.standard_normal(v.shape) for k, v in net.params.items()}
    weights = rng.standard_normal((6, 10 if hidden == 0 else 4))  # loss = sum(weights * z)
    z, cache = net.forward(features)
    grads = net.backward(weights, cache)
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


def test_ten_fold_protocol_known_answer():
    # 100 pairs in 10 folds of 10: genuine scores 0.6-0.99, impostors 0.0-0.39, and one
    # impostor at 0.95 in each of folds 0-4.  Any threshold in (0.39, 0.6) is best on
    # every training split, so folds 0-4 score 0.9 and folds 5-9 score 1.0.
    same = np.tile([True, False], 50)
    score = np.where(same, np.linspace(0.6, 0.99, 100), np.linspace(0.0, 0.39, 100))
    for fold in range(5):
        score[fold * 10 + 1] = 0.95
    mean, std, folds, thresholds = evaluate.ten_fold_accuracy(score, same)
    assert folds == [0.9] * 5 + [1.0] * 5
    assert mean == pytest.approx(0.95) and std == pytest.approx(0.05)
    assert all(0.39 < t < 0.6 for t in thresholds)
    # At FAR 0 only the 5 genuine scores above the 0.95 impostors are accepted.
    assert evaluate.tar_at_far(score, same, far_target=0.0) == 0.1
    assert evaluate.tar_at_far(score, same, far_target=0.1) == 1.0


def test_lfw_pairs_reader(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("1\t2\nAaron 1 2\nBob 3 Carol 4\n")
    assert evaluate.read_lfw_pairs(str(path)) == [("Aaron", 1, "Aaron", 2, True), ("Bob", 3, "Carol", 4, False)]
    assert evaluate.lfw_image_path("r", "Bob", 3) == os.path.join("r", "Bob", "Bob_0003.jpg")


@pytest.mark.parametrize("hidden", [0, 16])
def test_onnx_round_trip_through_opencv_dnn(tmp_path, hidden):
    """OpenCV DNN runs the exported model; its embeddings agree with the NumPy
    forward pass to 1e-5 (float32)."""
    import onnx

    rng = np.random.default_rng(3)
    features = rng.random((9, 30)).astype(np.float32)
    net = model.EmbeddingNet(features.mean(0), features.std(0) + 0.1, hidden, 8, rng)
    net.params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in net.params.items()}
    path = export.to_onnx(net, str(tmp_path / "m.onnx"), {"descriptor": "lbp"})
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded)
    metadata = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(metadata["preprocessing"]) == {"descriptor": "lbp"}
    assert metadata["input"].startswith("descriptor") and metadata["output"].startswith("embedding")
    dnn = cv2.dnn.readNetFromONNX(path)
    dnn.setInput(features)
    np.testing.assert_allclose(dnn.forward(), net.forward(features)[0], atol=1e-5)


def _train(run_dir, *extra):
    return train.run(train.build_parser().parse_args(["--run-dir", str(run_dir), *extra]))


def test_resume_equals_uninterrupted(tmp_path):
    args = ["--epochs", "3", "--loss", "triplet+0.01*center", "-P", "8"]
    _train(tmp_path / "straight", *args)
    _train(tmp_path / "split", *args[:1], "1", *args[2:])
    _train(tmp_path / "split", *args, "--resume")
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "split" / "checkpoint.npz") as b:
        assert set(a.files) == set(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    run_files = set(os.listdir(tmp_path / "straight"))
    assert {"config.json", "log.txt", "metrics.json", "roc.png", "model.onnx", "checkpoint.npz"} <= run_files


@needs_orl
def test_short_training_on_orl_lowers_the_loss_and_raises_auc(tmp_path):
    baseline, trained = _train(
        tmp_path, "--data", ORL, "--train-identities", "s1-s30", "--eval-identities", "s31-s40",
        "-P", "10", "--epochs", "8", "--lr", "0.5",
    )
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert trained.auc > baseline.auc


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown term 'focal'"):
        train.parse_loss("softmax+focal")
    assert train.parse_loss("softmax+0.008*center") == {"softmax": 1.0, "center": 0.008}
    assert train.expand_names("s1-s3,x") == ["s1", "s2", "s3", "x"]
    assert train.expand_names("id_08-id_10") == ["id_08", "id_09", "id_10"]
