"""Face verification as insightface and facenet report it: cosine similarity of
L2-normalised embeddings, 10-fold cross-validated accuracy (the threshold chosen on
the other nine folds), TAR at a fixed FAR, and the ROC curve."""

import os
from dataclasses import dataclass, field

import cv2
import numpy as np


def read_lfw_pairs(path):
    """Reads LFW's pairs*.txt: returns [(name1, index1, name2, index2, same)].  The
    first line holds the counts; a matched pair is `name i j`, a mismatched one
    `name1 i name2 j` (LFW README, section on pairs)."""
    with open(path) as f:
        lines = [line.split() for line in f if line.strip()]
    pairs = []
    for row in lines[1:]:
        if len(row) == 3:
            pairs.append((row[0], int(row[1]), row[0], int(row[2]), True))
        elif len(row) == 4:
            pairs.append((row[0], int(row[1]), row[2], int(row[3]), False))
        else:
            raise ValueError(f"{path}: cannot parse pair line {' '.join(row)!r}")
    return pairs


def lfw_image_path(root, name, index):
    return os.path.join(root, name, f"{name}_{index:04d}.jpg")


def all_pairs(labels, seed=0):
    """Every unordered pair (i < j) of a labelled set, (i, j, same), in a fixed
    shuffled order so that each of the 10 contiguous folds mixes all identities."""
    i, j = np.triu_indices(len(labels), k=1)
    order = np.random.default_rng(seed).permutation(len(i))
    i, j = i[order], j[order]
    return i, j, labels[i] == labels[j]


def _accuracy_at(similarity, same, threshold):
    return float(np.mean((similarity >= threshold) == same))


def _best_threshold(similarity, same):
    """The threshold (midpoint between sorted scores) with the highest accuracy."""
    order = np.sort(np.unique(similarity))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    if len(candidates) > 2000:
        candidates = np.quantile(similarity, np.linspace(0, 1, 2001))
    accuracies = [_accuracy_at(similarity, same, t) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


@dataclass
class Verification:
    accuracy: float
    accuracy_std: float
    fold_accuracies: list
    thresholds: list
    tar_at_far: dict = field(default_factory=dict)
    auc: float = 0.0

    def summary(self):
        tars = ", ".join(f"TAR@FAR={far:g}: {tar:.4f}" for far, tar in self.tar_at_far.items())
        return f"accuracy {self.accuracy:.4f} +- {self.accuracy_std:.4f} (10-fold), {tars}, AUC {self.auc:.4f}"


def ten_fold_accuracy(similarity, same, folds=10):
    """Splits the genuine and the impostor pairs each into `folds` contiguous runs in
    protocol-file order (for LFW View 2's pairs.txt these are its ten official sets;
    View 1's pairsDevTest.txt lists all matched pairs first); each fold's accuracy uses
    the threshold that is best on the other folds."""
    similarity, same = np.asarray(similarity, np.float64), np.asarray(same, bool)
    if min(same.sum(), (~same).sum()) < folds:
        raise ValueError(f"need at least {folds} genuine and {folds} impostor pairs for {folds}-fold verification")
    fold_of = np.empty(len(same), np.int64)
    for group in (same, ~same):
        fold_of[group] = np.arange(group.sum()) * folds // group.sum()
    accuracies, thresholds = [], []
    for k in range(folds):
        train, test = fold_of != k, fold_of == k
        threshold = _best_threshold(similarity[train], same[train])
        thresholds.append(threshold)
        accuracies.append(_accuracy_at(similarity[test], same[test], threshold))
    return float(np.mean(accuracies)), float(np.std(accuracies)), accuracies, thresholds


def roc(similarity, same):
    """False and true accept rates at every threshold, from strictest to loosest."""
    order = np.argsort(-np.asarray(similarity))
    same = np.asarray(same, bool)[order]
    tar = np.concatenate([[0.0], np.cumsum(same) / max(1, same.sum())])
    far = np.concatenate([[0.0], np.cumsum(~same) / max(1, (~same).sum())])
    return far, tar


def tar_at_far(similarity, same, far_target):
    """The fraction of genuine pairs accepted at the loosest threshold whose false
    accept rate is still <= far_target."""
    far, tar = roc(similarity, same)
    return float(tar[np.flatnonzero(far <= far_target)[-1]])


def verify(embeddings_a, embeddings_b, same, fars=(1e-3, 1e-2)):
    """Verification metrics of pairs (a_k, b_k) of L2-normalised embeddings."""
    similarity = np.sum(embeddings_a * embeddings_b, axis=1)
    mean, std, folds, thresholds = ten_fold_accuracy(similarity, same)
    far, tar = roc(similarity, same)
    auc = float(np.trapezoid(tar, far)) if hasattr(np, "trapezoid") else float(np.trapz(tar, far))
    return Verification(mean, std, folds, thresholds, {f: tar_at_far(similarity, same, f) for f in fars}, auc), (far, tar)


def save_roc_png(path, curves, size=480):
    """Draws ROC curves (label -> (far, tar)) on a log-FAR axis with OpenCV."""
    margin = 60
    canvas = np.full((size, size, 3), 255, np.uint8)
    x0, y0, x1, y1 = margin, size - margin, size - 20, 20
    cv2.rectangle(canvas, (x0, y1), (x1, y0), (0, 0, 0), 1)
    decades = [-4, -3, -2, -1, 0]

    def to_px(far, tar):
        lf = np.log10(np.clip(far, 1e-4, 1.0))
        return (x0 + (lf - decades[0]) / (decades[-1] - decades[0]) * (x1 - x0)), (y0 - tar * (y0 - y1))

    for d in decades:
        px, _ = to_px(10.0**d, 0)
        cv2.line(canvas, (int(px), y0), (int(px), y0 + 5), (0, 0, 0), 1)
        cv2.putText(canvas, f"1e{d}", (int(px) - 14, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for t in (0.0, 0.5, 1.0):
        _, py = to_px(1.0, t)
        cv2.putText(canvas, f"{t:.1f}", (x0 - 30, int(py) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(canvas, "false accept rate", (size // 2 - 60, size - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(canvas, "TAR", (10, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    colours = [(200, 80, 0), (0, 0, 200), (0, 150, 0), (120, 0, 120)]
    for k, (label, (far, tar)) in enumerate(curves.items()):
        px, py = to_px(np.asarray(far), np.asarray(tar))
        points = np.stack([px, py], axis=1).astype(np.int32)
        cv2.polylines(canvas, [points], False, colours[k % len(colours)], 2)
        cv2.putText(canvas, label, (x0 + 10, y1 + 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colours[k % len(colours)], 1)
    if not cv2.imwrite(path, canvas):
        raise OSError(f"could not write {path}")
