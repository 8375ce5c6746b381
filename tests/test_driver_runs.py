"""The driver's failure modes (issue 11, items 9-14) and its command line (issue 16):
a resume takes its configuration from the run and refuses what it cannot honour, a
failed or new run never damages a good one, truncated images are skipped and named
once, verification is held out and labelled, a SIGKILL in the checkpoint write and
a Ctrl-C (real subprocesses) leave a run that resumes, and `faceops eval`."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from faceops import cli
from faceops.driver import data, evaluate, train

SHARED = os.environ.get("FACEOPS_SHARED_DATA") or os.path.normpath(
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
LFW = os.path.join(SHARED, "lfw")
needs_lfw = pytest.mark.skipif(not os.path.isdir(os.path.join(LFW, "devtest")),
                               reason=f"shared data not found at {LFW} (../shared beside the repo, or "
                                      f"FACEOPS_SHARED_DATA)")
TINY = ["--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013", "--image-size", "48", "-P", "4"]
SUBPROCESS_SECONDS = 120  # bound of every subprocess below (each takes a few seconds)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=14, images_per_identity=5,
                                           size=48)


def _train(*argv):
    return train.run(*train.configure(list(argv)))


def _read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def _files(run_dir):
    """{name: bytes} of a run directory, to show it untouched."""
    return {name: _read(os.path.join(run_dir, name), "rb") for name in sorted(os.listdir(run_dir))}


def _interrupt_the_checkpoint_of(epoch, monkeypatch):
    """Makes the checkpoint write of `epoch` a Ctrl-C; returns the real save_checkpoint."""
    real_save = train.rundir.save_checkpoint

    def save(path, state):
        if int(state["epoch"]) == epoch:
            raise KeyboardInterrupt
        real_save(path, state)

    monkeypatch.setattr(train.rundir, "save_checkpoint", save)
    return real_save


# --- item 9: resume -------------------------------------------------------------------------------------------------

def test_resume_takes_the_runs_configuration_and_names_what_it_overrides(tmp_path, synthetic_root, capsys):
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--crop", "0.8", "--loss", "pair", "--lr", "0.2",
           "--epochs", "1")
    written = json.loads(_read(os.path.join(run_dir, "config.json")))
    capsys.readouterr()
    # Only the run directory and the new length: data, crop, loss and lr come from the run.
    config, notes = train.configure(["--run-dir", run_dir, "--resume", "--epochs", "2"])
    assert (config.data, config.crop, config.loss, config.lr) == (synthetic_root, 0.8, "pair", 0.2)
    assert notes == ["--epochs 2 (the run had 1)"]
    train.run(config, notes)
    out = capsys.readouterr().out
    assert f"resumed {run_dir} after epoch 1 of 2; overriding --epochs 2 (the run had 1)" in out
    rewritten = json.loads(_read(os.path.join(run_dir, "config.json")))
    assert rewritten == {**written, "epochs": 2}
    assert len(json.loads(_read(os.path.join(run_dir, "metrics.json")))["history"]) == 2
    # Repeating the run's own options is not a change (paths compare absolute, loss terms as terms).
    relative = os.path.relpath(synthetic_root)
    config, notes = train.configure(["--run-dir", run_dir, "--resume", "--data", relative, "--loss", "1*pair",
                                     "--crop", "0.8"])
    assert notes == [] and config.epochs == 2


def test_resume_refuses_every_option_the_checkpoint_cannot_honour(tmp_path, synthetic_root):
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "2")
    before = _files(run_dir)
    other = data.write_synthetic_identities(str(tmp_path / "other"), identities=12, images_per_identity=3, size=48)
    with pytest.raises(SystemExit) as refused:
        cli.main(["train", "--run-dir", run_dir, "--resume", "--data", other, "--rank", "64", "--lr", "0.01",
                  "--loss", "cosface", "--hidden", "32"])
    message = str(refused.value.code)
    assert message.startswith(f"faceops train: --resume continues the run in {run_dir} with its own configuration")
    for expected in (f"--data {other} (the run: {synthetic_root})", "--rank 64 (the run: 128)",
                     "--lr 0.01 (the run: 0.5)", "--loss cosface (the run: triplet)", "--hidden 32 (the run: 0)"):
        assert expected in message
    with pytest.raises(SystemExit, match="--epochs 1: the run in .* has already trained 2 epochs"):
        cli.main(["train", "--run-dir", run_dir, "--resume", "--epochs", "1"])
    with pytest.raises(SystemExit, match="--resume continues a run and --overwrite replaces it"):
        cli.main(["train", "--run-dir", run_dir, "--resume", "--overwrite"])
    with pytest.raises(SystemExit, match="no run to continue at"):
        cli.main(["train", "--run-dir", str(tmp_path / "nothing"), "--resume"])
    assert _files(run_dir) == before


def test_resume_on_changed_data_names_the_identities_that_moved(tmp_path):
    root = data.write_synthetic_identities(str(tmp_path / "faces"), identities=10, images_per_identity=5, size=48)
    run_dir = str(tmp_path / "run")
    # --data alone: 8 identities trained on (the margin softmax's class weights: 8 rows), 2 held out.
    _train("--run-dir", run_dir, "--data", root, "--image-size", "48", "-P", "4", "--loss", "cosface", "--epochs", "1")
    before = _files(run_dir)
    extra = data.write_synthetic_identities(str(tmp_path / "more"), identities=12, images_per_identity=3, size=48)
    for name in ("id_010", "id_011"):
        os.rename(os.path.join(extra, name), os.path.join(root, name))  # now 12: 9 trained on, 3 held out
    with pytest.raises(SystemExit, match=r"--resume: the run in .* trained on 8 identities, the data now gives 9 "
                                         r"\(added: \['id_008'\]; gone: none\)"):
        cli.main(["train", "--run-dir", run_dir, "--resume", "--epochs", "2"])
    assert _files(run_dir) == before


def test_resume_refuses_changed_faces_and_ignores_folders_without_files(tmp_path):
    """The same identity names but an image more is refused too (the checkpoint keeps a
    digest of the faces); a folder holding no file (a runs/ folder of run directories
    inside --data) is no identity, so it moves neither the --holdout split nor a resume."""
    root = data.write_synthetic_identities(str(tmp_path / "faces"), identities=10, images_per_identity=5, size=48)
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", root, "--image-size", "48", "-P", "4", "--epochs", "1")
    os.makedirs(os.path.join(root, "runs", "20260101-000000"))
    _train("--run-dir", run_dir, "--resume", "--epochs", "2")
    assert len(json.loads(_read(os.path.join(run_dir, "metrics.json")))["history"]) == 2
    before = _files(run_dir)
    image = sorted(glob.glob(os.path.join(root, "id_000", "*")))[0]
    cv2.imwrite(os.path.join(root, "id_000", "extra.png"), np.flipud(cv2.imread(image)))
    with pytest.raises(SystemExit, match="--resume: the faces the run in .* trained or verified on changed"):
        cli.main(["train", "--run-dir", run_dir, "--resume", "--epochs", "3"])
    assert _files(run_dir) == before


def test_resume_accepts_the_defaults_the_run_took(tmp_path, synthetic_root):
    """--holdout 0.2 on a --data-alone run, --eval-root equal to --data, and the margin the
    loss took by default are the run's own values, not conflicts."""
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, "--image-size", "48", "-P", "4", "--loss", "arcface",
           "--epochs", "1")
    _train("--run-dir", run_dir, "--resume", "--epochs", "2", "--holdout", "0.2", "--m2", "0.5")
    with pytest.raises(SystemExit, match=r"--m2 0.4 \(the run: 0.5\)"):
        cli.main(["train", "--run-dir", run_dir, "--resume", "--epochs", "3", "--m2", "0.4"])
    other = str(tmp_path / "other")
    _train("--run-dir", other, "--data", synthetic_root, *TINY, "--epochs", "1")
    with pytest.raises(SystemExit, match=r"--holdout 0.2 \(the run: None\)"):
        cli.main(["train", "--run-dir", other, "--resume", "--epochs", "2", "--holdout", "0.2"])


def test_an_interrupted_resume_keeps_config_json_with_the_checkpoint(tmp_path, synthetic_root, monkeypatch, capsys):
    """A resume's --epochs joins config.json with the checkpoint that holds it: interrupted
    before that, config.json still says what the checkpoint was trained with and the printed
    command carries the override; a resume rewrites a deleted or broken config.json."""
    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    real_save = _interrupt_the_checkpoint_of(2, monkeypatch)
    with pytest.raises(SystemExit):
        _train("--run-dir", str(run_dir), "--resume", "--epochs", "3")
    assert json.loads(_read(run_dir / "config.json"))["epochs"] == 1
    assert capsys.readouterr().err.strip().endswith(f"continue with: faceops train --run-dir {run_dir} --resume "
                                                    "--epochs 3")
    monkeypatch.setattr(train.rundir, "save_checkpoint", real_save)
    (run_dir / "config.json").write_text("{broken")
    _train("--run-dir", str(run_dir), "--resume", "--epochs", "3")
    assert json.loads(_read(run_dir / "config.json"))["epochs"] == 3
    with np.load(run_dir / "checkpoint.npz") as state:
        assert json.loads(str(state["config"]))["epochs"] == 3 and int(state["epoch"]) == 3


def test_a_resume_that_trains_further_removes_the_earlier_results_first(tmp_path, synthetic_root, monkeypatch):
    """Interrupted while extending a finished run, the run held epoch 1's metrics.json, roc.png,
    model.onnx and eval folder beside a later checkpoint, as if they were its results."""
    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    (run_dir / "eval-pairs").mkdir()
    (run_dir / "eval-pairs" / "metrics.json").write_text("{}")
    real_save = _interrupt_the_checkpoint_of(3, monkeypatch)
    with pytest.raises(SystemExit):
        _train("--run-dir", str(run_dir), "--resume", "--epochs", "3")
    assert sorted(os.listdir(run_dir)) == [".lock", "checkpoint.npz", "config.json", "log.txt"]
    assert "removed the results of the model after epoch 1 (metrics.json, roc.png, model.onnx, eval-pairs/); " \
           "they are written again for epoch 3" in _read(run_dir / "log.txt")
    monkeypatch.setattr(train.rundir, "save_checkpoint", real_save)
    _train("--run-dir", str(run_dir), "--resume", "--epochs", "3")
    assert {"metrics.json", "roc.png", "model.onnx"} <= set(os.listdir(run_dir))


def test_a_full_disk_is_one_message_and_a_line_of_log_txt(tmp_path, synthetic_root, monkeypatch):
    def full(path, state):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(train.rundir, "save_checkpoint", full)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"^faceops train: cannot write {run_dir / 'checkpoint.npz'}: No space left "
                                         f"on device$"):
        cli.main(["train", "--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1"])
    assert _read(run_dir / "log.txt").endswith(f"faceops train: cannot write {run_dir / 'checkpoint.npz'}: No space "
                                               f"left on device\n")


def test_a_run_directory_that_cannot_be_made_is_refused_before_the_data_is_read(tmp_path, synthetic_root,
                                                                                 monkeypatch):
    """A dangling runs/ or --run-dir link failed with a traceback (or "File exists") after loading."""
    monkeypatch.chdir(tmp_path)
    os.symlink("gone", "runs")
    monkeypatch.setattr(train, "load_faces", lambda *args: pytest.fail("the data was read"))
    with pytest.raises(SystemExit, match="faceops train: 'runs' is a symbolic link to 'gone', which does not exist, "
                                         "so a run cannot get a new runs/<date>-<time>/"):
        cli.main(["train", "--data", synthetic_root, *TINY, "--epochs", "1"])
    os.symlink("also-gone", "dangling")
    with pytest.raises(SystemExit, match="--run-dir: 'dangling' is a symbolic link to 'also-gone', which does not"):
        cli.main(["train", "--run-dir", "dangling", "--data", synthetic_root, *TINY, "--epochs", "1"])


def test_overwrite_refuses_a_run_whose_file_is_a_folder_before_removing_anything(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    (run_dir / "metrics.json").unlink()
    (run_dir / "metrics.json").mkdir()
    before = {name: _read(run_dir / name, "rb") for name in ("config.json", "log.txt", "checkpoint.npz")}
    with pytest.raises(SystemExit, match=f"--run-dir: in {run_dir}, metrics.json is a folder, not a run's file"):
        cli.main(["train", "--run-dir", str(run_dir), "--overwrite", "--data", synthetic_root, *TINY, "--epochs", "1"])
    assert {name: _read(run_dir / name, "rb") for name in before} == before


def test_a_run_directory_inside_the_data_is_no_identity_and_the_run_resumes(tmp_path, synthetic_root):
    """Its files made --run-dir DATA/zrun an identity, so the resume found the data changed."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root)
    run_dir = root / "zrun"
    _train("--run-dir", str(run_dir), "--data", str(root), *TINY, "--epochs", "1")
    assert "zrun" not in data.identity_folders(str(root))
    _train("--run-dir", str(run_dir), "--resume", "--epochs", "2")
    with np.load(run_dir / "checkpoint.npz") as state:
        assert int(state["epoch"]) == 2


def test_the_checkpoint_has_the_permissions_of_the_other_run_files(tmp_path, one_epoch_checkpoint):
    """mkstemp made it 0600, readable by its owner alone."""
    run_dir, state = one_epoch_checkpoint
    mode = lambda name: os.stat(run_dir / name).st_mode & 0o777  # noqa: E731
    assert mode("checkpoint.npz") == mode("config.json") == mode("metrics.json")
    previous = os.umask(0o027)
    try:
        train.rundir.save_checkpoint(str(tmp_path / "checkpoint.npz"), state)
    finally:
        os.umask(previous)
    assert os.stat(tmp_path / "checkpoint.npz").st_mode & 0o777 == 0o640


def test_a_stale_latest_link_of_the_same_process_id_is_replaced(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    os.symlink("old", runs / f"latest.{os.getpid()}")  # a run killed inside link_latest
    assert train.rundir.link_latest(str(runs / "a"), runs=str(runs))
    assert os.readlink(runs / "latest") == "a" and not os.path.lexists(runs / f"latest.{os.getpid()}")


def test_a_data_folder_whose_name_is_not_utf8_is_logged_with_escapes(tmp_path, synthetic_root):
    """Log.attach's strict UTF-8 failed on the surrogate of a Latin-1 byte, after the run had claimed its folder."""
    import shutil

    root = os.path.join(str(tmp_path), "d\udce9")
    shutil.copytree(synthetic_root, root)
    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", root, *TINY, "--epochs", "1")
    assert "d\\udce9" in _read(run_dir / "log.txt") and (run_dir / "model.onnx").is_file()


def test_unreadable_checkpoints_and_impossible_run_dirs_are_named(tmp_path, synthetic_root, monkeypatch):
    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    checkpoint = run_dir / "checkpoint.npz"
    whole = checkpoint.read_bytes()
    for damaged, why in ((whole[:1000], r"the file \(1000 bytes\) is no .npz \(zip\) archive"),
                         (b"", r"the file is empty \(0 bytes\)"), (b"hello\n", r"the file \(6 bytes\) is no .npz")):
        checkpoint.write_bytes(damaged)
        with pytest.raises(SystemExit, match=f"{checkpoint} is not a readable faceops checkpoint: {why}"):
            cli.main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2"])
    with np.load(__import__("io").BytesIO(whole)) as state:
        partial = {name: state[name] for name in state.files if name != "epoch"}
    np.savez(checkpoint, **partial)
    with pytest.raises(SystemExit, match="not a complete faceops checkpoint \\(it has no 'epoch'\\)"):
        cli.main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2"])
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit, match="--run-dir: .* cannot be created: .*afile' is a file, not a directory"):
        cli.main(["train", "--run-dir", str(tmp_path / "afile" / "sub")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("")
    with pytest.raises(SystemExit, match="'runs' exists and is not a directory"):
        cli.main(["train"])


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory, synthetic_root):
    run_dir = tmp_path_factory.mktemp("one_epoch") / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    with np.load(run_dir / "checkpoint.npz") as state:
        return run_dir, {name: state[name] for name in state.files}


@pytest.mark.parametrize("edit, message", [
    (lambda s: {"config": np.asarray("[]")}, "is not a readable faceops checkpoint: its config array is a JSON list"),
    (lambda s: {"config": np.asarray("{rank")}, "is not a readable faceops checkpoint: its config array is not valid"),
    (lambda s: {"config": np.asarray(json.dumps(json.loads(str(s["config"])) | {"rank": "abc"}))},
     "the run's --rank is 'abc'; expected an integer"),
    (lambda s: {"config": np.asarray(json.dumps(json.loads(str(s["config"])) | {"loss": 3}))},
     "the run's --loss is 3; expected a string"),
    (lambda s: {"config": np.asarray(json.dumps(json.loads(str(s["config"])) | {"schedule": "linear"}))},
     "the run's --schedule is 'linear'; expected one of cosine, step"),
    (lambda s: {"history": np.asarray("not json")}, r"not a checkpoint this run can continue from \(Expecting value"),
    (lambda s: {"epoch": np.asarray("two")}, r"not a checkpoint this run can continue from \(invalid literal"),
    (lambda s: {"epoch": np.asarray(-3)}, r"not a checkpoint this run can continue from \(its epoch is -3"),
    (lambda s: {"rng": np.asarray('{"bit_generator": "MT19937"}')}, "not a checkpoint this run can continue from"),
])
def test_a_checkpoint_with_hostile_content_is_named_on_resume(tmp_path, one_epoch_checkpoint, edit, message):
    """Each was a traceback (AttributeError, TypeError) or a bare JSON or int() message, or (epoch -3) a resume."""
    import shutil

    source, state = one_epoch_checkpoint
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    np.savez(run_dir / "checkpoint.npz", **(state | edit(state)))
    with pytest.raises(SystemExit, match=f"^faceops train: {run_dir / 'checkpoint.npz'}.*{message}"):
        cli.main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2"])


def test_a_run_directory_in_use_by_another_run_is_refused(tmp_path, synthetic_root):
    """A second faceops train into a directory that a live one holds (--overwrite or
    --resume) is refused before it touches a file; the lock ends with its holder."""
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "1")
    before = _files(run_dir)
    held = train.rundir.lock(run_dir)  # what a live run holds
    try:
        for extra in (["--overwrite", "--data", synthetic_root, *TINY, "--epochs", "1"], ["--resume", "--epochs", "2"]):
            with pytest.raises(SystemExit, match=f"--run-dir: {run_dir} is in use by another faceops train"):
                cli.main(["train", "--run-dir", run_dir, *extra])
            assert _files(run_dir) == before
    finally:
        held.close()
    _train("--run-dir", run_dir, "--resume", "--epochs", "2")


def test_a_diverged_run_writes_no_metrics_and_logs_why(tmp_path, synthetic_root):
    """At --lr 1e6 the network's output overflows its norm and every embedding is zero: the
    run stops before verifying on them (accuracy would be the impostor share)."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match="training diverged: after 2 epochs, .* verification embeddings are not "
                                         "finite unit vectors"):
        cli.main(["train", "--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "2",
                  "--lr", "1e6"])
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model.onnx").exists()
    assert _read(run_dir / "log.txt").splitlines()[-1].startswith("faceops train: training diverged")


def test_a_copy_of_the_training_faces_is_not_called_held_out(tmp_path, synthetic_root):
    """--eval-root another folder whose identities carry training identities' names: the
    label says so instead of "held out from training"."""
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(synthetic_root, copy)
    config, notes = train.configure(["--run-dir", str(tmp_path / "run"), "--data", synthetic_root, "--eval-root",
                                     copy, "--image-size", "48", "--epochs", "1"])
    train.resolve_defaults(config)
    _, _, measured_on, _ = train.load_faces(config, synthetic_root, synthetic_root)
    assert "held out" not in measured_on
    assert f"14 of them named like training identities of {synthetic_root} (trained on)" in measured_on


# --- item 10: a new or failed run never damages a good one ----------------------------------------------------------

def test_a_new_run_never_reuses_a_run_directory_unless_told(tmp_path, synthetic_root):
    run_dir = str(tmp_path / "good")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--crop", "0.5", "--epochs", "1")
    good = _files(run_dir)
    with pytest.raises(SystemExit, match=f"--run-dir: {run_dir} holds a run .*--resume.*--overwrite"):
        cli.main(["train", "--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "1"])
    # A run that fails after reading its data (no P x K batch of 11 identities fits) writes nothing either.
    with pytest.raises(SystemExit, match="--identities-per-batch: 11 exceeds the 10 identities"):
        cli.main(["train", "--run-dir", run_dir, "--overwrite", "--data", synthetic_root, *TINY[:-2], "-P", "11",
                  "--epochs", "1"])
    assert _files(run_dir) == good
    with pytest.raises(SystemExit, match="--identities-per-batch: 11 exceeds"):
        cli.main(["train", "--run-dir", str(tmp_path / "new"), "--data", synthetic_root, *TINY[:-2], "-P", "11"])
    assert not os.path.exists(tmp_path / "new")
    with pytest.raises(SystemExit, match="--overwrite replaces the run in --run-dir: give --run-dir"):
        cli.main(["train", "--overwrite", "--data", synthetic_root, *TINY])
    with pytest.raises(SystemExit, match="is not empty and holds no faceops run"):
        cli.main(["train", "--run-dir", str(tmp_path), "--data", synthetic_root, *TINY, "--epochs", "1"])
    # The good run's export carries the crop it was trained with.
    assert cli.main(["export", run_dir, "-o", str(tmp_path / "good.onnx")]) == 0
    import onnx

    metadata = {p.key: p.value for p in onnx.load(str(tmp_path / "good.onnx")).metadata_props}
    assert json.loads(metadata["preprocessing"])["crop"] == 0.5
    # --overwrite replaces it: the new run's files, no trace of the old log or of the old run's evaluations.
    os.makedirs(os.path.join(run_dir, "eval-pairs"))
    _train("--run-dir", run_dir, "--overwrite", "--data", synthetic_root, *TINY, "--epochs", "1")
    assert not os.path.exists(os.path.join(run_dir, "eval-pairs"))
    assert json.loads(_read(os.path.join(run_dir, "config.json")))["crop"] == 1.0
    assert _read(os.path.join(run_dir, "log.txt")).count("untrained") == 1


def test_without_run_dir_each_run_gets_its_own_directory_and_latest_links_it(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _train("--data", synthetic_root, *TINY, "--epochs", "1")
    _train("--data", synthetic_root, *TINY, "--epochs", "1", "--seed", "1")
    runs = sorted(d for d in os.listdir("runs") if d != "latest")
    assert len(runs) == 2 and all(os.path.isfile(os.path.join("runs", d, "checkpoint.npz")) for d in runs)
    assert os.path.islink("runs/latest") and os.readlink("runs/latest") == runs[1]
    assert json.loads(_read("runs/latest/config.json"))["seed"] == 1
    # --resume without --run-dir continues runs/latest, and names the run itself.
    config, _ = train.configure(["--resume", "--epochs", "2"])
    assert config.run_dir == os.path.join("runs", runs[1]) and config.seed == 1


def test_runs_starting_together_get_their_own_directories(tmp_path):
    from faceops.driver import rundir

    made = [rundir.make_fresh_run_dir(str(tmp_path / "runs")) for _ in range(3)]
    assert len(set(made)) == 3 and all(os.path.isdir(d) for d in made)
    assert rundir.link_latest(made[2], str(tmp_path / "runs")) and os.readlink(tmp_path / "runs" / "latest") == \
        os.path.basename(made[2])


def test_a_run_of_faceops_0_1_resumes_with_its_config_json(tmp_path, synthetic_root):
    """0.1.0 checkpoints hold no configuration and its --data alone verified on the training identities."""
    run_dir = str(tmp_path / "old")
    _train("--run-dir", run_dir, "--data", synthetic_root, "--image-size", "48", "-P", "4", "--holdout", "0",
           "--epochs", "1")
    config = json.loads(_read(os.path.join(run_dir, "config.json")))
    del config["holdout"], config["faceops_version"]
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config, f)
    state = dict(np.load(os.path.join(run_dir, "checkpoint.npz")))
    del state["config"]
    np.savez(os.path.join(run_dir, "checkpoint.npz"), **state)
    resumed, notes = train.configure(["--run-dir", run_dir, "--resume", "--epochs", "2"])
    assert resumed.holdout == 0.0 and resumed.data == synthetic_root and notes == ["--epochs 2 (the run had 1)"]
    train.run(resumed, notes)
    assert len(json.loads(_read(os.path.join(run_dir, "metrics.json")))["history"]) == 2


# --- items 11 and 12: truncated images, held-out verification, every figure labelled ---------------------------------

def test_truncated_images_are_skipped_and_named_once(tmp_path, synthetic_root, capfd):
    root = tmp_path / "faces"
    for k in range(12):
        os.makedirs(root / f"p{k:02d}")
        for j in range(4):
            face = data.draw_synthetic_face(np.random.default_rng(k), np.random.default_rng([k, j]), 64)
            cv2.imwrite(str(root / f"p{k:02d}" / f"{j}.jpg"), (face * 255).astype(np.uint8))
    cut = root / "p03" / "1.jpg"
    jpeg = cut.read_bytes()
    cut.write_bytes(jpeg[: len(jpeg) // 2])  # OpenCV's imread would decode the top half and grey the rest
    capfd.readouterr()
    _train("--run-dir", str(tmp_path / "run"), "--data", str(root), "--image-size", "48", "-P", "4", "--epochs", "1")
    out, err = capfd.readouterr()
    skipped = [line for line in out.splitlines() if "skipped" in line]
    assert skipped == [f"skipped 1 image file(s): {cut} (truncated JPEG (no end-of-image marker after the image data))"]
    assert err == ""  # no Python warning with its source line, no libjpeg message
    assert _read(tmp_path / "run" / "log.txt").count("skipped 1 image file") == 1


def test_data_alone_holds_out_identities_and_labels_every_figure(tmp_path, synthetic_root, capsys):
    _train("--run-dir", str(tmp_path / "held"), "--data", synthetic_root, "--image-size", "48", "-P", "4",
           "--epochs", "1")
    out = capsys.readouterr().out
    # 14 identities: the last ceil(0.2 * 14) = 3 by name are held out.
    assert "train: 55 images of 11 identities" in out
    held = f"on all 105 pairs (30 genuine) of the 3 identities of {synthetic_root} held out from training"
    assert f"untrained (lbp descriptor alone), {held}: accuracy" in out
    assert f"trained (triplet), {held}: accuracy" in out
    assert "training loss" in out and "(mean over the epoch's batches)" in out
    metrics = json.loads(_read(tmp_path / "held" / "metrics.json"))
    assert metrics["measured_on"] == held and metrics["trained"]["impostors"] == 75
    assert train.split_identities(train.configure(["--data", synthetic_root])[0], synthetic_root)[1] == \
        ["id_011", "id_012", "id_013"]
    _train("--run-dir", str(tmp_path / "same"), "--data", synthetic_root, "--image-size", "48", "-P", "4",
           "--holdout", "0", "--epochs", "1")
    out = capsys.readouterr().out
    assert f"trained (triplet), on the training images: all 2415 pairs (140 genuine) of the 14 training identities " \
           f"of {synthetic_root}" in out
    # --train-identities alone verifies on the other identities.
    config, _ = train.configure(["--data", synthetic_root, "--train-identities", "id_000-id_010"])
    assert train.split_identities(config, synthetic_root) == ([f"id_{k:03d}" for k in range(11)],
                                                             ["id_011", "id_012", "id_013"])
    with pytest.raises(SystemExit, match="--holdout: only with --data alone"):
        cli.main(["train", "--data", synthetic_root, "--holdout", "0.3", "--eval-identities", "id_013"])


def test_tar_below_one_impostor_pair_says_zero_false_accepts_and_the_roc_shows_it(tmp_path):
    rng = np.random.default_rng(0)
    same = np.arange(600) < 100  # 100 genuine, 500 impostor pairs
    similarity = np.where(same, rng.normal(0.6, 0.2, 600), rng.normal(0.2, 0.2, 600))
    embeddings_a = np.stack([similarity, np.sqrt(1 - np.clip(similarity, -1, 1) ** 2)], axis=1)
    embeddings_b = np.tile([1.0, 0.0], (600, 1))
    metrics, (far, tar) = evaluate.verify(embeddings_a, embeddings_b, same)
    assert (metrics.genuine, metrics.impostors) == (100, 500)
    summary = metrics.summary()
    assert "TAR@FAR=0.001 " in summary and "(FAR 0.001 < 1/500 impostor pairs: TAR at zero false accepts)" in summary
    assert "TAR@FAR=0.01 " in summary and "FAR 0.01 <" not in summary
    assert metrics.tar_at_far[1e-3] == evaluate.tar_at_far(similarity, same, 0.0)
    curves = {"model": (far, tar)}
    assert evaluate.roc_legend(curves) == [f"model (AUC {metrics.auc:.3f})"]
    path = str(tmp_path / "roc.png")
    evaluate.save_roc_png(path, curves, metrics.impostors)
    image = cv2.imread(path)
    inside = evaluate.roc_pixel(10**-3.5, 0.65)  # FAR < 1/500: shaded (off the grid lines, no curve there)
    outside = evaluate.roc_pixel(5e-3, 0.65)
    assert tuple(image[int(inside[1]), int(inside[0])]) == evaluate.BELOW_ONE_IMPOSTOR
    assert tuple(image[int(outside[1]), int(outside[0]) + 3]) == (255, 255, 255)
    grid_x = int(evaluate.roc_pixel(1e-2, 0.5)[0])
    assert tuple(image[int(evaluate.roc_pixel(1e-2, 0.97)[1]), grid_x]) == (200, 200, 200)  # the grid


# --- items 13 and 14: a SIGKILL in the checkpoint write, Ctrl-C (real subprocesses) ----------------------------------

def _start(run_dir, root, epochs=40):
    """`python -m faceops train` in a subprocess; rank 128 makes a 7.8 MB checkpoint, whose write takes long
    enough to be hit."""
    command = [sys.executable, "-m", "faceops", "train", "--run-dir", str(run_dir), "--data", root, *TINY,
               "--epochs", str(epochs)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process, seconds=SUBPROCESS_SECONDS, pause=0.0005):
    deadline = time.time() + seconds
    while not condition():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            out, err = process.communicate(timeout=30)
            pytest.fail(f"the run ended or timed out first (rc {process.returncode}):\n{out}\n{err}")
        time.sleep(pause)


def test_a_kill_during_the_checkpoint_write_leaves_a_run_that_resumes_and_is_cleaned(tmp_path, synthetic_root):
    for attempt in range(8):
        run_dir = tmp_path / f"run{attempt}"
        process = _start(run_dir, synthetic_root)
        try:
            checkpoint = run_dir / "checkpoint.npz"
            _wait_for(checkpoint.exists, process)  # the first checkpoint is complete; kill inside a later write
            _wait_for(lambda: glob.glob(str(run_dir / ".checkpoint-*.npz")), process)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.communicate(timeout=30)
        orphans = glob.glob(str(run_dir / ".checkpoint-*.npz"))
        if orphans:
            break
    assert orphans, "no SIGKILL landed inside a checkpoint write in 8 attempts"
    with np.load(checkpoint) as state:  # the renamed checkpoint is whole
        epoch = int(state["epoch"])
    assert epoch >= 1
    resume = subprocess.run([sys.executable, "-m", "faceops", "train", "--run-dir", str(run_dir), "--resume",
                             "--epochs", str(epoch + 1)], capture_output=True, text=True, timeout=SUBPROCESS_SECONDS)
    assert resume.returncode == 0, resume.stderr
    assert f"removed 1 temporary checkpoint file(s) of an interrupted write: {os.path.basename(orphans[0])}" \
        in resume.stdout
    assert f"resumed {run_dir} after epoch {epoch} of {epoch + 1}" in resume.stdout
    assert not glob.glob(str(run_dir / ".checkpoint-*.npz"))
    assert len(json.loads(_read(run_dir / "metrics.json"))["history"]) == epoch + 1


def test_ctrl_c_prints_one_line_naming_the_checkpoint_and_the_resume_command(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    # A Ctrl-C in a terminal reaches a run whose SIGINT is at its default. A shell that starts pytest in the
    # background ignores SIGINT, and an ignored signal stays ignored through fork and exec, so the run would
    # finish normally; a handled one is reset to the default in the child.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = _start(run_dir, synthetic_root)
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        _wait_for((run_dir / "checkpoint.npz").exists, process, pause=0.01)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=SUBPROCESS_SECONDS)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err
    [line] = err.splitlines()
    with np.load(run_dir / "checkpoint.npz") as state:
        epoch = int(state["epoch"])
    assert line.startswith(f"faceops train: interrupted in epoch {epoch + 1}/40; the last checkpoint is "
                           f"{run_dir / 'checkpoint.npz'} (after epoch {epoch}); continue with: ")
    command = line.split("continue with: ")[1]
    assert command == f"faceops train --run-dir {run_dir} --resume"
    assert not glob.glob(str(run_dir / ".checkpoint-*.npz"))  # a write that Ctrl-C stopped removes its file
    resume = subprocess.run([sys.executable, "-m", "faceops", *command.split()[1:], "--epochs", str(epoch + 1)],
                            capture_output=True, text=True, timeout=SUBPROCESS_SECONDS)
    assert resume.returncode == 0, resume.stderr
    assert len(json.loads(_read(run_dir / "metrics.json"))["history"]) == epoch + 1


@pytest.mark.parametrize("where", ["writing", "written"])
def test_ctrl_c_around_a_checkpoint_write_names_the_epoch_that_is_on_disk(tmp_path, synthetic_root, monkeypatch,
                                                                          capsys, where):
    """Ctrl-C in epoch 2's checkpoint write (epoch 2 is not on disk: it was in epoch 2) and in the log line
    just after it (epoch 2 is on disk: it was in epoch 3), which a signal sent when the file appears can hit."""
    real_save, real_log = train.rundir.save_checkpoint, train.Log.__call__

    def save(path, state):
        if where == "writing" and int(state["epoch"]) == 2:
            raise KeyboardInterrupt
        real_save(path, state)

    def log(self, message):
        if where == "written" and message.startswith("epoch 2/"):
            raise KeyboardInterrupt
        real_log(self, message)

    monkeypatch.setattr(train.rundir, "save_checkpoint", save)
    monkeypatch.setattr(train.Log, "__call__", log)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "4")
    on_disk, in_epoch = (1, 2) if where == "writing" else (2, 3)
    assert stopped.value.code == 130
    assert (f"interrupted in epoch {in_epoch}/4; the last checkpoint is {run_dir / 'checkpoint.npz'} "
            f"(after epoch {on_disk})") in capsys.readouterr().err

# --- issue 16: a command line that explains itself -------------------------------------------------------------------

def test_version_and_help_explain_every_option(capsys):
    import faceops

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"faceops {faceops.__version__}"
    parser = train.build_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{action.option_strings[0]} has no help text"
            if action.default not in (None, False):
                assert f"(default: {action.default})" in " ".join(action.help.split()) or \
                    f"(default: {action.default})" in " ".join(text.split()), action.option_strings[0]
    assert train.DEFAULT_RUN_TIME in " ".join(text.split())
    for written in ("config.json", "log.txt", "checkpoint.npz", "metrics.json", "roc.png", "model.onnx", "runs/latest"):
        assert written in text
    assert "(default: None)" not in text
    assert cli.main([]) == 0
    usage = capsys.readouterr().out
    assert train.DEFAULT_RUN_TIME in usage and "eval" in usage
    for command in ("eval", "export"):
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert done.value.code == 0 and "--output" in out and "(default: None)" not in out


def test_progress_lines_are_plain_without_a_terminal(tmp_path, synthetic_root):
    result = subprocess.run([sys.executable, "-m", "faceops", "train", "--run-dir", str(tmp_path / "run"), "--data",
                             synthetic_root, *TINY, "--epochs", "2"], capture_output=True, text=True,
                            timeout=SUBPROCESS_SECONDS)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and result.stderr == ""
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("images/s" in line and "training loss" in line for line in epochs)


def test_progress_bar_on_a_terminal(tmp_path, synthetic_root):
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty has 0 x 0 cells
    process = subprocess.Popen([sys.executable, "-m", "faceops", "train", "--run-dir", str(tmp_path / "run"),
                                "--data", synthetic_root, *TINY, "--epochs", "2"], stdout=follower,
                               stderr=follower, close_fds=True)
    os.close(follower)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the run ended
                break
            if not chunk:
                break
            output += chunk
        process.wait(timeout=SUBPROCESS_SECONDS)
    finally:
        process.kill()
        os.close(leader)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "epoch 1/2:" in text and "batch" in text and "img/s" in text and "s left" in text and "\r" in text


# --- faceops eval ----------------------------------------------------------------------------------------------------

def _lfw_format(root, source, identities):
    """source's images as ROOT/<name>/<name>_NNNN.jpg (LFW's layout) and a pairs file over them."""
    lines = []
    for k, name in enumerate(identities):
        os.makedirs(os.path.join(root, name))
        for j, file in enumerate(sorted(os.listdir(os.path.join(source, name)))):
            image = cv2.imread(os.path.join(source, name, file))
            cv2.imwrite(os.path.join(root, name, f"{name}_{j + 1:04d}.jpg"), image)
        lines += [f"{name}\t1\t{j}" for j in (2, 3, 4)]
        lines += [f"{name}\t{j}\t{identities[(k + 1) % len(identities)]}\t{j}" for j in (1, 2, 3)]
    pairs = os.path.join(root, "pairs.txt")
    with open(pairs, "w") as f:
        f.write("\n".join([f"1\t{len(lines)}", *lines]) + "\n")
    return pairs


def test_eval_of_a_run_and_of_its_onnx_model_reproduces_the_training_runs_figures(tmp_path, synthetic_root, capsys):
    root = str(tmp_path / "lfw_like")
    pairs = _lfw_format(root, synthetic_root, [f"id_{k:03d}" for k in range(10, 14)])
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, "--train-identities", "id_000-id_009", "--eval-root", root,
           "--eval-pairs", pairs, "--image-size", "48", "-P", "4", "--crop", "0.8", "--epochs", "2")
    trained = json.loads(_read(os.path.join(run_dir, "metrics.json")))
    capsys.readouterr()
    assert cli.main(["eval", run_dir, "--root", root, "--pairs", pairs]) == 0
    out = capsys.readouterr().out
    measured_on = f"on the 24 pairs of {pairs} (12 genuine, 12 impostor; images under {root})"
    assert f"run {run_dir}, {measured_on}: accuracy" in out and f"lbp descriptor alone, {measured_on}" in out
    evaluated = json.loads(_read(os.path.join(run_dir, "eval-pairs", "metrics.json")))
    assert evaluated["measured_on"] == trained["measured_on"] == measured_on
    assert evaluated["trained"] == trained["trained"] and evaluated["descriptor"] == trained["descriptor"]
    assert evaluated["preprocessing"]["crop"] == 0.8
    assert cv2.imread(os.path.join(run_dir, "eval-pairs", "roc.png")) is not None
    # The exported model, run by OpenCV DNN: the same figures up to float32 summation order.
    onnx_out = str(tmp_path / "onnx_eval")
    assert cli.main(["eval", os.path.join(run_dir, "model.onnx"), "--root", root, "--pairs", pairs,
                     "-o", onnx_out]) == 0
    from_onnx = json.loads(_read(os.path.join(onnx_out, "metrics.json")))
    assert from_onnx["trained"]["auc"] == pytest.approx(trained["trained"]["auc"], abs=1e-3)
    assert from_onnx["trained"]["accuracy"] == pytest.approx(trained["trained"]["accuracy"], abs=0.05)
    # A truncated image in the pairs is an error naming it; so is a model that is no model.
    cut = os.path.join(root, "id_010", "id_010_0002.jpg")
    with open(cut, "r+b") as f:
        f.truncate(os.path.getsize(cut) // 2)
    assert cli.main(["eval", run_dir, "--root", root, "--pairs", pairs, "-o", str(tmp_path / "cut_eval")]) == 1
    assert f"names {cut}, which cannot be used: truncated JPEG" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "cut_eval")
    assert cli.main(["eval", pairs, "--root", root, "--pairs", pairs]) == 1
    assert "not an ONNX model" in capsys.readouterr().err


@needs_lfw
def test_eval_on_lfw_devtest_pairs(tmp_path, synthetic_root, capsys):
    run_dir = str(tmp_path / "run")
    devtest, pairs = os.path.join(LFW, "devtest"), os.path.join(LFW, "pairsDevTest.txt")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--crop", "0.5", "--epochs", "1")
    capsys.readouterr()
    assert cli.main(["eval", run_dir, "--root", devtest, "--pairs", pairs, "-o", str(tmp_path / "run_eval")]) == 0
    assert cli.main(["eval", os.path.join(run_dir, "model.onnx"), "--root", devtest, "--pairs", pairs,
                     "-o", str(tmp_path / "onnx_eval")]) == 0
    out = capsys.readouterr().out
    assert out.count(f"on the 1000 pairs of {pairs} (500 genuine, 500 impostor; images under {devtest})") == 4
    assert "(FAR 0.001 < 1/500 impostor pairs: TAR at zero false accepts)" in out
    run_metrics = json.loads(_read(tmp_path / "run_eval" / "metrics.json"))
    onnx_metrics = json.loads(_read(tmp_path / "onnx_eval" / "metrics.json"))
    assert run_metrics["descriptor"] == onnx_metrics["descriptor"]  # the same images and descriptor
    assert onnx_metrics["trained"]["auc"] == pytest.approx(run_metrics["trained"]["auc"], abs=1e-3)
    assert 0.55 < run_metrics["descriptor"]["accuracy"] < 0.75  # LBP alone on LFW View 1 (0.683 at crop 0.5, 64 px)
