"""The verification protocol: 10-fold accuracy on a hand-made case, TAR@FAR, pairs files, ROC PNG."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceops import cli
from faceops.driver import evaluate


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


def test_threshold_comes_from_the_other_folds():
    # Fold 0: genuine 0.45, 0.45, 0.45, 0.8, 0.8 and impostors 0.5, 0.5, 0.1, 0.1, 0.1;
    # its own best threshold, in (0.1, 0.45], would give 0.8.  Folds 1-9 (genuine 0.8,
    # impostors 0.1, fold 1's at 0.6) put the threshold at the midpoint 0.7, which
    # rejects fold 0's three 0.45 genuine pairs: 0.7.  Fold 1 is judged at 0.275 (best
    # on folds 0 and 2-9) and accepts its five 0.6 impostors: 0.5.
    same = np.tile([True, False], 50)
    score = np.where(same, 0.8, 0.1)
    score[[0, 2, 4]] = 0.45
    score[[1, 3]] = 0.5
    score[[11, 13, 15, 17, 19]] = 0.6
    _, _, folds, thresholds = evaluate.ten_fold_accuracy(score, same)
    assert thresholds[:2] == pytest.approx([0.7, 0.275])
    assert folds == pytest.approx([0.7, 0.5] + [1.0] * 8)


def test_ten_folds_need_ten_pairs_of_each_kind():
    with pytest.raises(ValueError, match="10 genuine and 10 impostor"):
        evaluate.ten_fold_accuracy(np.arange(30.0), np.arange(30) < 5)


def test_all_pairs_protocol():
    labels = np.array([0, 0, 1, 1, 1])
    i, j, same = evaluate.all_pairs(labels)
    assert len(i) == 10 and (i < j).all()
    assert sorted(zip(i.tolist(), j.tolist())) == [(a, b) for a in range(5) for b in range(a + 1, 5)]
    assert same.sum() == 1 + 3


def test_lfw_pairs_reader(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("1\t2\nAaron 1 2\nBob 3 Carol 4\n")
    assert evaluate.read_lfw_pairs(str(path)) == [("Aaron", 1, "Aaron", 2, True), ("Bob", 3, "Carol", 4, False)]
    assert evaluate.lfw_image_path("r", "Bob", 3) == os.path.join("r", "Bob", "Bob_0003.jpg")
    path.write_text("1\nAaron 1\n")
    with pytest.raises(ValueError, match="line 2: 'Aaron 1' is not a pair"):
        evaluate.read_lfw_pairs(str(path))


def test_roc_and_png(tmp_path):
    same = np.array([True, True, False, False])
    far, tar = evaluate.roc(np.array([0.9, 0.4, 0.5, 0.1]), same)
    np.testing.assert_array_equal(far, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(tar, [0, 0.5, 0.5, 1, 1])
    path = str(tmp_path / "roc.png")
    evaluate.save_roc_png(path, {"model": (far, tar)}, impostors=2)
    image = cv2.imread(path)
    assert image is not None and image.shape == (480, 480, 3)


# --- pairs files: what LFW's format allows, and clear errors for what it does not ---------------------------------

def _pairs_file(tmp_path, text, name="pairs.txt"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_pairs_file_without_its_count_line_keeps_its_first_pair(tmp_path):
    body = "".join(f"A {k} {k + 1}\n" for k in range(1, 16)) + "".join(f"A {k} B {k}\n" for k in range(1, 16))
    headerless = evaluate.read_lfw_pairs(_pairs_file(tmp_path, body))
    assert len(headerless) == 30 and headerless[0] == ("A", 1, "A", 2, True)
    # With LFW's count line (`N`, or `FOLDS N` as in View 2's pairs.txt) the same 30 pairs.
    assert evaluate.read_lfw_pairs(_pairs_file(tmp_path, "15\n" + body)) == headerless
    assert evaluate.read_lfw_pairs(_pairs_file(tmp_path, "1\t15\n" + body)) == headerless


@pytest.mark.parametrize("text, message", [
    # Four columns with one name: a genuine pair written in the impostor form.
    ("2\nA 1 2\nA 3 B 1\nAl_Gore 1 Al_Gore 3\n",
     r"line 4: 'Al_Gore 1 Al_Gore 3' names Al_Gore twice: a genuine pair is written `Al_Gore 1 3`"),
    # A duplicated pair (in either order) would count twice in the ten folds.
    ("3\nA 1 2\nA 3 B 1\nA 2 1\nB 1 A 3\nA 1 3\n",
     r"holds the same pair more than once: line 4 \('A 2 1'\) repeats line 2, line 5 \('B 1 A 3'\) repeats line 3"),
    ("1\nA 2 2\n", r"line 2: 'A 2 2' pairs image 2 of A with itself"),
    ("1\nA 1 2\nAl_Gore x 2\n",
     r"line 3: 'Al_Gore x 2' is not a pair: expected `name i j` \(genuine\) or `name1 i name2 j` \(impostor\)"),
    ("1\nA 1 2\nA 0 3\n", r"line 3: 'A 0 3' is not a pair: .*image numbers from 1"),
    ("1\nA 1\n", r"line 2: 'A 1' is not a pair"),
    ("1\nA 1 \u00b2\n", r"line 2: 'A 1 \u00b2' is not a pair"),  # a digit to str.isdigit, not to int()
    ("A 1\nA 1 2\n", r"line 1: 'A 1' is not a count line: expected `N` or `FOLDS N`"),
    ("10 300\n", r"holds no pairs \(only its count line\)"),
    ("\n\n", r"holds no pairs \(it is empty\)"),
])
def test_a_bad_pairs_file_is_refused_naming_the_file_and_line(tmp_path, text, message):
    path = _pairs_file(tmp_path, text)
    with pytest.raises(ValueError, match=f"^{path}(, | )" + message):
        evaluate.read_lfw_pairs(path)


def test_a_pairs_file_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=f"^{path}: not a text file"):
        evaluate.read_lfw_pairs(str(path))


# --- `faceops eval` on a run, with its output folder -------------------------------------------------------------

@pytest.fixture(scope="module")
def lfw_like(tmp_path_factory):
    """(root, pairs file) in LFW's layout: 4 synthetic identities, 12 genuine and 12 impostor pairs."""
    from faceops.driver import data
    from test_driver_runs import _lfw_format

    base = tmp_path_factory.mktemp("lfw_like")
    source = data.write_synthetic_identities(str(base / "faces"), identities=4, images_per_identity=5, size=48)
    root = str(base / "root")
    return root, _lfw_format(root, source, sorted(os.listdir(source)))


@pytest.fixture
def run_dir(tmp_path):
    """A finished run's directory: _fake_run's config.json and checkpoint.npz, and the
    metrics.json, log.txt and roc.png training writes."""
    from test_export import _fake_run

    run = tmp_path / "run"
    _fake_run(run, np.random.default_rng(11))
    (run / "metrics.json").write_text(json.dumps({"history": [{"epoch": 1, "loss": 0.5}], "trained": {}}))
    (run / "log.txt").write_text("epoch 1/1: loss 0.5\n")
    cv2.imwrite(str(run / "roc.png"), np.zeros((8, 8, 3), np.uint8))
    return run


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _eval(capsys, *argv):
    """(exit status, stderr) of `faceops eval argv`."""
    capsys.readouterr()
    status = cli.main(["eval", *map(str, argv)])
    return status, capsys.readouterr().err


def test_eval_of_a_bad_pairs_file_exits_with_the_files_line(tmp_path, capsys, lfw_like, run_dir):
    root, _ = lfw_like
    for text, message in [("1\nid_000 1 2\nid_000 x 2\n", "line 3: 'id_000 x 2' is not a pair"),
                          ("10 300\n", "holds no pairs (only its count line)")]:
        pairs = _pairs_file(tmp_path, text)
        status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs)
        assert status == 1 and err.startswith(f"faceops eval: {pairs}") and message in err
    assert not (run_dir / "eval-pairs").exists()


def test_eval_output_must_be_a_folder(tmp_path, capsys, lfw_like, run_dir):
    root, pairs = lfw_like
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    for output in (afile, afile / "sub"):
        status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs, "-o", output)
        assert status == 1 and f"-o: {afile} is a file, not a folder" in err
    assert afile.read_text() == "mine\n"
    status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs, "-o", tmp_path / "new" / "eval")
    assert status == 0 and (tmp_path / "new" / "eval" / "metrics.json").is_file()


def test_eval_never_writes_over_a_runs_files_or_an_earlier_evaluation(tmp_path, capsys, lfw_like, run_dir):
    root, pairs = lfw_like
    before = _files(run_dir)
    status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs, "-o", run_dir)
    assert status == 1 and f"-o: {run_dir} is the directory of a faceops train run" in err
    assert _files(run_dir) == before
    # Two pairs files of the same name share the default folder RUN/eval-good: the second is refused.
    for folder in ("pf", "pf2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "good.txt").write_text(Path(pairs).read_text())
    assert _eval(capsys, run_dir, "--root", root, "--pairs", tmp_path / "pf" / "good.txt")[0] == 0
    first = _files(run_dir / "eval-good")
    assert set(first) == {"metrics.json", "roc.png"}
    status, err = _eval(capsys, run_dir, "--root", root, "--pairs", tmp_path / "pf2" / "good.txt")
    assert status == 1 and err.startswith(f"faceops eval: {run_dir / 'eval-good'} (the default folder for --pairs "
                                          f"{tmp_path / 'pf2' / 'good.txt'}: pairs files of the same name share it) "
                                          f"already holds metrics.json and roc.png of an earlier evaluation, measured "
                                          f"on the 24 pairs of {tmp_path / 'pf' / 'good.txt'} (")
    assert err.endswith("; remove it or give another folder with -o\n")
    assert _files(run_dir / "eval-good") == first
    assert _files(run_dir) == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "npy"])
def test_eval_of_a_run_with_a_damaged_checkpoint_names_it(tmp_path, capsys, lfw_like, run_dir, damage):
    root, pairs = lfw_like
    checkpoint = run_dir / "checkpoint.npz"
    content = checkpoint.read_bytes()
    if damage == "npy":  # a NumPy file, but a single array, not the checkpoint's archive
        with open(checkpoint, "wb") as f:
            np.save(f, np.zeros(3))
    else:
        checkpoint.write_bytes({"empty": b"", "truncated": content[: len(content) // 2],
                                "garbage": b"not a checkpoint\n" * 10}[damage])
    status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs)
    assert status == 1 and f"faceops eval: {checkpoint} is not a readable faceops checkpoint" in err


def test_eval_of_a_run_whose_config_json_is_not_json_names_it(tmp_path, capsys, lfw_like, run_dir):
    root, pairs = lfw_like
    (run_dir / "config.json").write_text('{"descriptor": "pixels",')
    status, err = _eval(capsys, run_dir, "--root", root, "--pairs", pairs)
    assert status == 1 and f"faceops eval: {run_dir / 'config.json'} is not valid JSON" in err


# --- scores no threshold can split, and scores that are no scores ---------------------------------------------------

def test_a_model_giving_every_pair_one_score_verifies_at_chance():
    """A collapsed model (every embedding the same) used to score TAR 1.0 and AUC 1.0 on a file
    listing its genuine pairs first: tied scores were ranked in file order."""
    same = np.arange(40) < 20
    score = np.full(40, 0.7)
    far, tar = evaluate.roc(score, same)
    np.testing.assert_array_equal(far, [0.0, 1.0])
    np.testing.assert_array_equal(tar, [0.0, 1.0])
    assert evaluate.tar_at_far(score, same, 1e-3) == 0.0
    embeddings = np.tile([0.6, 0.8], (40, 1))
    metrics, _ = evaluate.verify(embeddings, embeddings, same)
    assert metrics.accuracy == 0.5 and metrics.auc == 0.5 and metrics.tar_at_far == {1e-3: 0.0, 1e-2: 0.0}


def test_tied_scores_are_one_point_of_the_roc():
    same = np.array([True, True, False, False])
    far, tar = evaluate.roc(np.array([0.9, 0.5, 0.5, 0.1]), same)
    np.testing.assert_array_equal(far, [0, 0, 0.5, 1])
    np.testing.assert_array_equal(tar, [0, 0.5, 1, 1])
    # In either file order of the tied pair: no threshold accepts the genuine 0.5 without the impostor.
    far_swapped, tar_swapped = evaluate.roc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, False, True, False]))
    np.testing.assert_array_equal(far_swapped, far)
    np.testing.assert_array_equal(tar_swapped, tar)
    assert evaluate.tar_at_far(np.array([0.9, 0.5, 0.5, 0.1]), same, 0.4) == 0.5


def test_non_finite_scores_and_embeddings_give_no_metrics():
    same = np.arange(40) < 20
    score = np.linspace(0, 1, 40)
    score[[3, 30]] = [np.nan, np.inf]
    for call in (evaluate.roc, evaluate.ten_fold_accuracy, lambda s, y: evaluate.tar_at_far(s, y, 0.01)):
        with pytest.raises(ValueError, match="similarity: 2 of 40 scores are NaN or Inf"):
            call(score, same)
    embeddings = np.tile([0.6, 0.8], (40, 1))
    diverged = embeddings.copy()
    diverged[5] = np.nan
    with pytest.raises(ValueError, match="embeddings_b: 1 of 40 embeddings hold NaN or Inf"):
        evaluate.verify(embeddings, diverged, same)


@pytest.mark.parametrize("call, message", [
    (lambda s, y: evaluate.roc(s[:30], y), r"similarity, same: expected two 1-D arrays of one length.*\(30,\) and \(40,\)"),
    (lambda s, y: evaluate.ten_fold_accuracy(s[:, None], y), r"similarity, same: expected two 1-D arrays"),
    (lambda s, y: evaluate.roc(s, y.astype(float) * 2), "same: expected bools"),
    (lambda s, y: evaluate.roc(s, np.ones(40, bool)), "same: an ROC needs genuine and impostor pairs, got 40 genuine"),
    (lambda s, y: evaluate.tar_at_far(s, y, float("nan")), "far_target: expected a finite number, got NaN"),
    (lambda s, y: evaluate.tar_at_far(s, y, -0.1), r"far_target: expected 0.0 <= value <= 1.0, got -0.1"),
    (lambda s, y: evaluate.verify(np.ones((40, 2)), np.ones((40, 3)), y), r"embeddings_a, embeddings_b: expected two"),
    (lambda s, y: evaluate.save_roc_png("unused.png", {"model": evaluate.roc(s, y)}, impostors=0),
     "impostors: expected an integer >= 1, got 0"),
])
def test_bad_verification_arguments_name_the_argument(call, message):
    same = np.arange(40) < 20
    with pytest.raises(ValueError, match=message):
        call(np.linspace(0, 1, 40), same)


@pytest.mark.parametrize("preprocessing, message", [
    ('{"descriptor": "lbp", "image_size": 0, "crop": 1.0}', "image_size is 0; expected an integer from 16 to 1024"),
    ('{"descriptor": "lbp", "image_size": "abc", "crop": 1.0}', "image_size is 'abc'; expected an integer"),
    ('{"descriptor": "lbp", "image_size": 32, "crop": NaN}', r"crop is nan; expected a fraction in \(0, 1\]"),
    ('{"descriptor": "hog", "image_size": 32, "crop": 1.0}', "descriptor is 'hog'; expected one of"),
    ('{"descriptor": "lbp", "image_size": 32, ', "the `preprocessing` of the model's metadata is not valid JSON"),
    ('[32]', "the `preprocessing` of the model's metadata is not a JSON object but a list"),
])
def test_an_onnx_model_with_hostile_preprocessing_metadata_is_refused_naming_it(tmp_path, preprocessing, message):
    """cv2's resize used to raise on image_size 0 or 'abc', int() on a NaN crop."""
    import onnx

    from faceops.driver import export, model

    rng = np.random.default_rng(0)
    net = model.EmbeddingNet(np.zeros(8, np.float32), np.ones(8, np.float32), 0, 4, rng)
    path = export.to_onnx(net, str(tmp_path / "m.onnx"), {})
    loaded = onnx.load(path)
    onnx.helper.set_model_props(loaded, {"preprocessing": preprocessing})
    onnx.save(loaded, path)
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        evaluate._onnx_embedder(path)
