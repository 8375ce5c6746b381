"""Run directories of `faceops train`: which directory a run writes, what it
refuses to reuse, the checkpoint (written to a temporary file and renamed), and
the temporary files an interrupted write leaves behind.

Without --run-dir each run gets a new directory runs/YYYYmmdd-HHMMSS and
runs/latest becomes a symbolic link to it once it starts training.  A directory
that holds a run is only continued (--resume) or replaced (--overwrite), never
written over by a new run."""

import fcntl
import glob
import json
import os
import shutil
import tempfile
import time
import zipfile
import zlib

import numpy as np

RUNS = "runs"
LATEST = os.path.join(RUNS, "latest")
RESULT_FILES = ("metrics.json", "roc.png", "model.onnx")  # written when training ends
RUN_FILES = ("config.json", "log.txt", "checkpoint.npz", *RESULT_FILES)
CHECKPOINT = "checkpoint.npz"
LOCK = ".lock"
TEMPORARY_PATTERN = ".checkpoint-*.npz"


# A folder holding one of these is a run's directory (metrics.json and roc.png alone are a
# `faceops eval` output folder's).
RUN_MARKERS = ("config.json", CHECKPOINT, "log.txt")


def holds_run(path, names=RUN_FILES):
    """Which of the run files `names` are in `path` (empty when it holds none); with
    RUN_MARKERS, empty unless `path` is a run's directory."""
    return [name for name in names if os.path.exists(os.path.join(path, name))]


def check_fresh_run_dir_possible(runs=RUNS):
    """Raises ValueError when runs/ cannot hold new run directories (before any data is read)."""
    cannot = f"so a run cannot get a new {runs}/<date>-<time>/; move it, or give --run-dir"
    if os.path.islink(runs) and not os.path.exists(runs):
        raise ValueError(f"{runs!r} is a symbolic link to {os.readlink(runs)!r}, which does not exist, {cannot}")
    if os.path.exists(runs) and not os.path.isdir(runs):
        raise ValueError(f"{runs!r} exists and is not a directory, {cannot}")
    where = runs if os.path.isdir(runs) else os.path.dirname(os.path.abspath(runs))
    if not os.access(where, os.W_OK | os.X_OK):
        raise ValueError(f"{where!r} is not writable (or on a read-only file system), {cannot}")


def make_fresh_run_dir(runs=RUNS):
    """Creates and returns a new directory runs/YYYYmmdd-HHMMSS (-2, -3, ... when that
    name is taken, also by a run starting at the same moment: mkdir decides)."""
    os.makedirs(runs, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, k = os.path.join(runs, stamp), 1
    while True:
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            k += 1
            path = os.path.join(runs, f"{stamp}-{k}")


def nearest_existing(path):
    """`path` itself, or its nearest ancestor that exists ("" for a relative path none of
    whose parts exists): where creating `path` would start."""
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def check_new_run_dir(path, overwrite):
    """Raises ValueError when a new run may not write `path`."""
    if os.path.islink(path) and not os.path.exists(path):
        raise ValueError(f"--run-dir: {path!r} is a symbolic link to {os.readlink(path)!r}, which does not exist")
    if not os.path.exists(path):
        ancestor = nearest_existing(os.path.dirname(os.path.abspath(path)))
        if not os.path.isdir(ancestor):
            raise ValueError(f"--run-dir: {path!r} cannot be created: {ancestor!r} is a file, not a directory")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ValueError(f"--run-dir: {path!r} cannot be created: {ancestor!r} is not writable")
        return
    if not os.path.isdir(path):
        raise ValueError(f"--run-dir: {path!r} exists and is not a directory")
    files = holds_run(path)
    if files and not overwrite:
        raise ValueError(f"--run-dir: {path} holds a run ({', '.join(files)}); continue it with --resume, replace it "
                         f"with --overwrite, or give another --run-dir")
    folders = [name for name in files if os.path.isdir(os.path.join(path, name))]
    if folders:  # --overwrite would stop half-way, the run's other files removed
        raise ValueError(f"--run-dir: in {path}, {', '.join(folders)} is a folder, not a run's file; move it away")
    if not files and set(os.listdir(path)) - {LOCK}:
        raise ValueError(f"--run-dir: {path} is not empty and holds no faceops run; give a new or empty directory")


def lock(path):
    """Creates `path` and takes an exclusive lock on path/.lock for as long as the
    returned file stays open (the operating system drops it when the process ends,
    however it ends).  Raises ValueError when another process holds it: two runs never
    write one directory."""
    try:
        os.makedirs(path, exist_ok=True)
        held = open(os.path.join(path, LOCK), "a")
    except OSError as error:
        raise ValueError(f"--run-dir: cannot create {error.filename or path}: {error.strerror}") from None
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        raise ValueError(f"--run-dir: {path} is in use by another faceops train (it holds {os.path.join(path, LOCK)}); "
                         "let it finish, or give another --run-dir") from None
    return held


def claim(path, replace):
    """Makes `path` the run's directory once training starts: creates it, or with
    `replace` removes the earlier run's files (and its `faceops eval` results,
    eval-*/); removes temporary checkpoints of an interrupted write.  Returns the
    names of the temporary files removed."""
    os.makedirs(path, exist_ok=True)
    if replace:
        for name in RUN_FILES:
            if os.path.exists(os.path.join(path, name)):
                os.unlink(os.path.join(path, name))
        remove_evaluations(path)
    return remove_temporaries(path)


def remove_results(path):
    """Removes a run's results (metrics.json, roc.png, model.onnx) and its `faceops eval`
    folders, eval-*/, before a resume trains further: they are of the model of an earlier
    epoch, which an interrupted resume would otherwise leave labelled as the run's.
    Returns the names removed."""
    removed = [name for name in RESULT_FILES if os.path.exists(os.path.join(path, name))]
    for name in removed:
        os.unlink(os.path.join(path, name))
    return removed + remove_evaluations(path)


def remove_evaluations(path):
    evaluations = sorted(glob.glob(os.path.join(glob.escape(path), "eval-*", "")))
    for evaluation in evaluations:
        shutil.rmtree(evaluation)
    return [os.path.basename(os.path.dirname(evaluation)) + "/" for evaluation in evaluations]


def remove_temporaries(path):
    """Removes `.checkpoint-*.npz` files (a write killed before its rename); returns their names."""
    removed = []
    for temporary in sorted(glob.glob(os.path.join(glob.escape(path), TEMPORARY_PATTERN))):
        os.unlink(temporary)
        removed.append(os.path.basename(temporary))
    return removed


def link_latest(path, runs=RUNS):
    """Points runs/latest at `path` when `path` is a directory directly under runs/
    (replacing an earlier link, never a real directory).  Returns whether it did."""
    latest = os.path.join(runs, "latest")
    if os.path.dirname(os.path.normpath(path)) != os.path.normpath(runs) or os.path.basename(path) == "latest":
        return False
    if os.path.exists(latest) and not os.path.islink(latest):
        return False
    temporary = f"{latest}.{os.getpid()}"
    if os.path.lexists(temporary):  # left by a run of the same process id killed right here
        os.unlink(temporary)
    os.symlink(os.path.basename(os.path.normpath(path)), temporary)
    os.replace(temporary, latest)
    return True


def unreadable_checkpoint(path, why):
    return ValueError(f"{path} is not a readable faceops checkpoint: {why}")


def stored_configuration(state, checkpoint):
    """The configuration a checkpoint holds (a dict), None for one of faceops 0.1.0 without
    it, or a ValueError naming the checkpoint when it is not a JSON object."""
    if "config" not in state:
        return None
    try:
        stored = json.loads(str(state["config"]))
    except ValueError:
        raise unreadable_checkpoint(checkpoint, "its config array is not valid JSON") from None
    if not isinstance(stored, dict):
        raise unreadable_checkpoint(checkpoint, f"its config array is a JSON {type(stored).__name__}, not "
                                                f"an object of the run's options")
    return stored


def read_checkpoint(path):
    """{name: array} of a run's checkpoint.npz, every array read (a damaged member
    fails here, not half-way through a resume or an export).  A file NumPy cannot read
    as an .npz archive (empty, truncated, another format) is a ValueError naming it,
    not zipfile's, NumPy's or pickle's exception."""
    size = os.path.getsize(path)
    if size == 0:
        raise unreadable_checkpoint(path, "the file is empty (0 bytes)")
    if not zipfile.is_zipfile(path):  # a truncated archive loses its central directory at the end
        raise unreadable_checkpoint(path, f"the file ({size} bytes) is no .npz (zip) archive: truncated, or not "
                                          f"written by faceops train")
    try:
        with np.load(path) as state:
            return {name: state[name] for name in state.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise unreadable_checkpoint(path, f"{type(error).__name__}: {error}") from None


def save_checkpoint(path, state):
    """Writes to a temporary file in the same folder, then renames it over the old
    checkpoint: a crash mid-write never leaves a truncated checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make it the one run file others cannot read
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
