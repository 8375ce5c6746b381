"""`faceops train` end to end: resume equals an uninterrupted run, every learned
parameter of every loss moves and is checkpointed, Partial FC, a short training run on
real faces (ORL), and clear errors for bad command lines.  The run directory, resume
policy and interrupts are in test_driver_runs.py."""

import json
import os

import cv2
import numpy as np
import pytest

import faceops
from faceops import cli
from faceops.driver import data, model, rundir, train

SHARED = os.environ.get("FACEOPS_SHARED_DATA") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
ORL = os.path.join(SHARED, "orl_faces")
needs_orl = pytest.mark.skipif(not os.path.isdir(ORL),
                               reason=f"shared data not found at {ORL} (../shared beside the repo, or "
                                      f"FACEOPS_SHARED_DATA)")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=14, images_per_identity=5, size=48)


def _train(run_dir, *extra):
    return train.run(*train.configure(["--run-dir", str(run_dir), *extra]))


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


TINY = ["--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013", "--image-size", "48", "-P", "4"]
MARGIN_LOSSES = ["arcface", "cosface", "sphereface", "combined", "normface", "arcface+0.01*center"]


@pytest.mark.parametrize("loss", ["pair", "contrastive", "triplet", "softmax+0.008*center", "triplet+0.1*pair",
                                  *MARGIN_LOSSES, "sst"])
def test_every_learned_parameter_moves_and_is_checkpointed(tmp_path, synthetic_root, loss):
    """Every parameter the optimiser owns (the network's, the softmax head's, the pair
    loss's theta, the margin-softmax class weights), the centres and SST's gallery move
    in training, and the checkpoint holds each of them as the run left it."""
    method = ["--method", "sst", "--max-images-per-identity", "2"] if loss == "sst" else ["--loss", loss]
    extra = ["--mining", "all"] if "triplet" in loss else ["--lr", "0.05"] if loss in MARGIN_LOSSES else []
    argv = ["--data", synthetic_root, *TINY, *method, *extra, "--epochs", "3"]
    _train(tmp_path / "run", *argv)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(history) == 3 and all(np.isfinite(h["loss"]) for h in history)
    if loss in MARGIN_LOSSES and loss != "sphereface":  # m1 = 4 without SphereFace's annealing needs longer
        assert history[-1]["loss"] < history[0]["loss"]
    # The same run's state before its first step: same configuration, data and seed.
    config, _ = train.configure(["--run-dir", str(tmp_path / "unused"), *argv])
    train_set = train.load_faces(config, synthetic_root, synthetic_root)[0]
    initial = train.Trainer(config, train_set, np)
    with np.load(tmp_path / "run" / "checkpoint.npz") as state:
        assert {k[len("param_"):] for k in state.files if k.startswith("param_")} == set(initial.parameters())
        for name, value in initial.parameters().items():
            assert np.any(state[f"param_{name}"] != value), f"{name} never moved"
            assert np.any(state[f"velocity_{name}"] != 0), f"{name} has no momentum"
        if initial.pair:
            assert float(state["param_theta"][0]) != 1.0
        if initial.class_weight is not None:
            assert state["param_Wm"].shape == (10, 3776)
            assert np.all(np.any(state["param_Wm"] != initial.class_weight, axis=1))  # every class's weight moved
        if initial.center:
            assert np.any(state["centers"] != initial.center.centers)
        if initial.sst:
            for name, value in initial.sst.gallery.params.items():
                assert np.any(state[f"gallery_{name}"] != value), f"gallery {name} never moved"
        # The checkpoint's network is the network the run verified and exported.
        trained = train.Trainer(config, train_set, np)
        trained.load_state(dict(state))
    features = model.describe(train_set.images[:5], "lbp")
    dnn = cv2.dnn.readNetFromONNX(str(tmp_path / "run" / "model.onnx"))
    dnn.setInput(features)
    np.testing.assert_allclose(dnn.forward(), trained.net.forward(features)[0], atol=1e-5)


def test_margin_overrides_reach_the_loss():
    config = train.build_parser().parse_args(["--loss", "arcface", "--m2", "0.3", "--m3", "0.1"])
    train.resolve_defaults(config)
    assert train.margins_of(config) == (1.0, 0.3, 0.1) and config.scale == 64.0
    config = train.build_parser().parse_args(["--loss", "0.5*sphereface+center", "--scale", "30"])
    train.check_arguments(config)
    assert train.margins_of(config) == (4.0, 0.0, 0.0) and config.scale == 30.0


def test_partial_fc_moves_only_the_sampled_class_weights(tmp_path, synthetic_root):
    config = train.build_parser().parse_args(["--loss", "cosface", "--sample-rate", "0.3", "-P", "2", "-K", "2",
                                              "--image-size", "48"])
    faces = data.load_identity_folder(synthetic_root, 48, identities=[f"id_{k:03d}" for k in range(10)])
    trainer = train.Trainer(config, faces, np)
    before = trainer.class_weight.copy()
    rows = np.concatenate([np.flatnonzero(faces.labels == 0)[:2], np.flatnonzero(faces.labels == 5)[:2]])
    z, cache = trainer.net.forward(model.describe(faces.images[rows], "lbp"))
    _, dz, head_grads = trainer.loss_and_grad(z, faces.labels[rows])
    classes, grad_rows = head_grads["Wm"]
    assert len(classes) == 3 and {0, 5} <= set(classes.tolist())  # round(0.3 * 10) classes, positives always in
    grads = trainer.net.backward(dz, cache)
    grads.update(head_grads)
    trainer.step(grads, 0.1)
    moved = np.flatnonzero(np.any(trainer.class_weight != before, axis=1))
    np.testing.assert_array_equal(moved, classes)
    np.testing.assert_array_equal(np.flatnonzero(np.any(trainer.velocity["Wm"] != 0, axis=1)), classes)
    np.testing.assert_allclose(trainer.class_weight[classes], before[classes] - 0.1 * grad_rows, rtol=1e-6)


def test_partial_fc_run_resumes_bitwise(tmp_path, synthetic_root):
    args = ["--data", synthetic_root, "--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013",
            "--image-size", "48", "-P", "4", "--loss", "arcface", "--sample-rate", "0.5", "--lr", "0.05", "--epochs", "2"]
    _train(tmp_path / "straight", *args)
    _train(tmp_path / "split", *args[:-1], "1")
    _train(tmp_path / "split", *args, "--resume")
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "split" / "checkpoint.npz") as b:
        assert "param_Wm" in a.files and set(a.files) == set(b.files)
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


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
        (["--loss", "arcface+cosface"], "--loss: at most one margin-softmax term"),
        (["--loss", "arcface", "--scale", "0"], "--scale: expected a positive number"),
        (["--loss", "arcface", "--sample-rate", "1.5"], "--sample-rate: expected a fraction in (0, 1]"),
        (["--loss", "arcface", "--m1", "0"], "--m1: expected a positive number"),
        (["--loss", "arcface", "--m2", "-0.1"], "--m2: expected a non-negative angle"),
        (["--loss", "triplet", "--m3", "0.2"], "--m3: applies to the margin-softmax losses"),
        (["--sample-rate", "0.5"], "--sample-rate: applies to the margin-softmax losses"),
        (["--method", "sst", "--loss", "triplet"], "--method sst: --loss must be one margin-softmax term"),
        (["--method", "sst", "--loss", "arcface+0.01*center"], "--method sst: --loss must be one margin-softmax term"),
        (["--method", "sst", "-K", "4"], "--images-per-identity must be 2"),
        (["--method", "sst", "--sample-rate", "0.5"], "--sample-rate: class-centre sampling has no place"),
        (["--method", "sst", "--ema", "1"], "--ema: expected a moving-average rate in [0, 1)"),
        (["--method", "sst", "--queue-size", "-1"], "--queue-size: expected a non-negative integer"),
        (["--ema", "0.99"], "--ema: an option of --method sst"),
        (["--loss", "arcface", "--queue-size", "64"], "--queue-size: an option of --method sst"),
        (["--method", "siamese"], "invalid choice"),
        (["--max-images-per-identity", "1"], "--max-images-per-identity: expected at least 2"),
        (["--lr", "nan"], "--lr: expected a finite number, got NaN"),
        (["--loss", "nan*triplet"], "--loss: the weight of 'triplet' must be a finite number > 0, got 'nan'"),
        (["--loss", "0*triplet"], "--loss: the weight of 'triplet' must be a finite number > 0, got '0'"),
        (["--loss=-1*triplet"], "--loss: the weight of 'triplet' must be a finite number > 0"),
        (["--loss", "triplet+triplet"], "--loss: the term 'triplet' appears twice"),
        (["--loss", "softmax+abc*center"], "--loss: the weight 'abc' of 'center' is not a number"),
        (["--loss", "arcface", "--m3", "inf"], "--m3: expected a finite number"),
        (["--data", "/tmp", "--holdout", "1"], "--holdout: expected a fraction in [0, 1)"),
        pytest.param(["--device", "cuda"], "--device cuda: faceops has no CUDA device here",
                     marks=pytest.mark.skipif(faceops.cuda_available(), reason="a CUDA device is present")),
        (["--holdout", "0.2"], "--holdout: applies to --data"),
        (["--image-size", "100000"], "--image-size: expected 16 to 1024 pixels, got 100000"),
        (["--seed", "-1"], "--seed: expected an integer in [0, 2^63), got -1"),
        (["--seed", str(2**64)], "--seed: expected an integer in [0, 2^63)"),
        (["--rank", "100000"], "--rank: expected 1 to 4096, got 100000"),
        (["--rank", "0"], "--rank: expected a positive integer, got 0"),
        (["--hidden", "-5"], "--hidden: expected 0 (no hidden layer) to 4096 units, got -5"),
        (["--hidden", "5000"], "--hidden: expected 0 (no hidden layer) to 4096 units, got 5000"),
    ],
)
def test_bad_command_lines_exit_with_a_message(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--run-dir", str(tmp_path), *argv])
    if message == "invalid choice":  # argparse's own: usage and the message on stderr, exit status 2
        assert exit_info.value.code == 2 and "--method: invalid choice: 'siamese'" in capsys.readouterr().err
        return
    assert message in str(exit_info.value.code) and str(exit_info.value.code).startswith("faceops train:")


def test_a_run_dir_that_cannot_be_created_is_named(tmp_path):
    # Where the checks before training cannot tell (root passes os.access everywhere, /proc refuses
    # mkdir), the error names --run-dir and the path, with the system's reason.
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match=r"--run-dir: cannot create .*file.*: Not a directory"):
        rundir.lock(str(blocker / "run"))


def test_out_of_memory_exits_with_a_message(tmp_path, monkeypatch):
    # numpy's allocation failure deep inside a run: one line naming it and what to lower, no traceback.
    def allocate(*args):
        raise MemoryError("Unable to allocate 37.3 GiB for an array with shape (100000, 100000)")

    monkeypatch.setattr(train, "_run", allocate)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--run-dir", str(tmp_path / "run")])
    message = str(exit_info.value.code)
    assert message.startswith("faceops train: out of memory (Unable to allocate 37.3 GiB")
    assert "--image-size" in message


def test_selfcheck_refuses_options_it_does_not_have(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["selfcheck", "--quick"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --quick" in capsys.readouterr().err


def test_unknown_command_and_help(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert cli.main([]) == 0
    assert "train" in capsys.readouterr().out


def test_name_ranges_and_loss_terms():
    assert train.parse_loss("softmax+0.008*center") == {"softmax": 1.0, "center": 0.008}
    assert train.parse_loss("arcface+0.01*center") == {"arcface": 1.0, "center": 0.01}
    assert train.expand_names("s1-s3,x") == ["s1", "s2", "s3", "x"]
    assert train.expand_names("id_08-id_10") == ["id_08", "id_09", "id_10"]


@pytest.mark.parametrize("options, message", [
    (["--train-identities", "id_000-id_099"], "--train-identities: not found under .*: id_014, id_015, id_016, id_017, "
                                              r"id_018 and 81 more \(it has 14 identity folders, id_000 to id_013\)"),
    (["--eval-identities", "id_013,nobody"], "--eval-identities: not found under .*: nobody"),
    (["--train-identities", "id_009-id_001"], "--train-identities: the range 'id_009-id_001' runs backwards; "
                                              "expected id_001-id_009"),
    (["--train-identities", " , "], "--train-identities: ' , ' names no identity"),
])
def test_identity_lists_that_name_nobody_or_missing_folders_say_so(tmp_path, synthetic_root, options, message):
    """They said "covers every identity ... leaving none to verify on", or "no readable images"."""
    with pytest.raises(SystemExit, match=f"faceops train: {message}"):
        cli.main(["train", "--data", synthetic_root, "--run-dir", str(tmp_path / "run"), *options, "--epochs", "1"])
    assert not (tmp_path / "run").exists()


def test_data_without_identity_folders_says_so(tmp_path):
    (tmp_path / "empty_identity").mkdir()
    with pytest.raises(SystemExit, match=f"--data: '{tmp_path}' holds no identity folder"):
        cli.main(["train", "--data", str(tmp_path), "--run-dir", str(tmp_path / "run"), "--epochs", "1"])


def test_selfcheck_names_a_cpu_path_it_cannot_run():
    """FACEOPS_CPU_PATH=bogus gave a traceback.  A fresh process: the path is chosen once per process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "faceops", "selfcheck"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, FACEOPS_CPU_PATH="bogus"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "faceops selfcheck: FACEOPS_CPU_PATH=bogus: expected one of the paths" in done.stderr
