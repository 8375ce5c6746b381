"""`faceops train` end to end: resume equals an uninterrupted run, the run directory,
a short training run on real faces (ORL), and clear errors for bad command lines."""

import json
import os

import numpy as np
import pytest

from faceops import cli, data, train

SHARED = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
ORL = os.path.join(SHARED, "orl_faces")
needs_orl = pytest.mark.skipif(not os.path.isdir(ORL), reason=f"shared data not found at {ORL} (../shared beside the repo)")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=14, images_per_identity=5, size=48)


def _train(run_dir, *extra):
    return train.run(train.build_parser().parse_args(["--run-dir", str(run_dir), *extra]))


def test_resume_equals_uninterrupted(tmp_path, synthetic_root):
    args = ["--data", synthetic_root, "--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013",
            "--image-size", "48", "-P", "4", "--loss", "triplet+0.01*center+0.1*softmax", "--epochs", "3"]
    _train(tmp_path / "straight", *args)
    # A 1-epoch run leaves exactly the checkpoint of a 3-epoch run stopped after its
    # first epoch: the cosine learning rate of epoch 0 does not depend on --epochs.
    _train(tmp_path / "split", *args[:-1], "1")
    _train(tmp_path / "split", *args, "--resume")
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "split" / "checkpoint.npz") as b:
        assert set(a.files) == set(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert straight["trained"] == split["trained"]
    assert straight["history"] == split["history"] and len(split["history"]) == 3
    run_files = set(os.listdir(tmp_path / "straight"))
    assert {"config.json", "log.txt", "metrics.json", "roc.png", "model.onnx", "checkpoint.npz"} <= run_files
    assert not [f for f in run_files if f.startswith(".checkpoint-")]  # no temporary file left behind


@pytest.mark.parametrize("loss", ["pair", "contrastive", "triplet", "softmax+0.008*center"])
def test_every_loss_trains_on_a_tiny_set(tmp_path, synthetic_root, loss):
    mining = ["--mining", "all"] if loss == "triplet" else []
    _train(tmp_path, "--data", synthetic_root, "--train-identities", "id_000-id_009", "--eval-identities",
           "id_010-id_013", "--image-size", "48", "-P", "4", "--loss", loss, "--epochs", "2", *mining)
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


@needs_orl
def test_short_training_on_orl_lowers_the_loss_and_raises_accuracy(tmp_path):
    baseline, trained = _train(
        tmp_path, "--data", ORL, "--train-identities", "s1-s30", "--eval-identities", "s31-s40", "-P", "10",
        "--descriptor", "pixels", "--augment", "photometric", "--mining", "hard", "--margin", "0.5", "--epochs", "40",
    )
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    assert np.mean([h["loss"] for h in history[-5:]]) < np.mean([h["loss"] for h in history[:5]])
    assert trained.accuracy > baseline.accuracy
    assert trained.auc > baseline.auc + 0.02


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--loss", "softmax+focal"], "unknown term 'focal'"),
        (["--epochs", "0"], "--epochs: expected a positive integer"),
        (["-K", "1"], "--images-per-identity: expected at least 2"),
        (["--crop", "1.5"], "--crop: expected a fraction"),
        (["--data", "/nonexistent/faces"], "is not a directory"),
        (["--eval-pairs", "/nonexistent/pairs.txt"], "--eval-pairs: '/nonexistent/pairs.txt' is not a file"),
    ],
)
def test_bad_command_lines_exit_with_a_message(tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--run-dir", str(tmp_path), *argv])
    assert message in str(exit_info.value.code) and str(exit_info.value.code).startswith("faceops train:")


def test_unknown_command_and_help(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out


def test_name_ranges_and_loss_terms():
    assert train.parse_loss("softmax+0.008*center") == {"softmax": 1.0, "center": 0.008}
    assert train.expand_names("s1-s3,x") == ["s1", "s2", "s3", "x"]
    assert train.expand_names("id_08-id_10") == ["id_08", "id_09", "id_10"]
