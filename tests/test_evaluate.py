"""The verification protocol: 10-fold accuracy on a hand-made case, TAR@FAR, pairs files, ROC PNG."""

import os

import cv2
import numpy as np
import pytest

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
    with pytest.raises(ValueError, match="cannot parse"):
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
