"""Face verification as insightface and facenet report it: cosine similarity of
L2-normalised embeddings, 10-fold cross-validated accuracy (the threshold chosen on
the other nine folds), TAR at a fixed FAR, and the ROC curve; and `faceops eval`,
which measures a trained run or an exported ONNX model on an LFW-format pairs file."""

import argparse
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from faceops import _params
from faceops.driver import rundir


PAIR_FORMS = "`name i j` (genuine) or `name1 i name2 j` (impostor), image numbers from 1"


def read_lfw_pairs(path):
    """Reads LFW's pairs*.txt: returns [(name1, index1, name2, index2, same)] in file
    order.  A genuine (matched) pair is `name i j`, an impostor (mismatched) one
    `name1 i name2 j` (LFW README, section on pairs).  The first line may be LFW's
    count line (`N` in pairsDevTest.txt, `FOLDS N` in pairs.txt), which is skipped,
    not checked; a file without it starts with its first pair, as scikit-learn's
    fetch_lfw_pairs reads it (a count line has one or two fields, a pair three or
    four, so the two cannot be confused).  Errors name the file and line: a line
    that is neither form, an impostor line naming one person twice (a genuine pair
    written in the impostor form), an image paired with itself, a pair listed twice
    (in either order: it would count twice in the ten folds), and a file holding no
    pairs."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(number, line.split()) for number, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file; expected an LFW-format pairs file ({PAIR_FORMS})") from None
    header = bool(lines) and len(lines[0][1]) <= 2
    if header:
        number, row = lines.pop(0)
        if not all(re.fullmatch("[0-9]+", field) for field in row):
            raise ValueError(f"{path}, line {number}: {' '.join(row)!r} is not a count line: expected `N` or "
                             f"`FOLDS N` (LFW's first line), or a pair: {PAIR_FORMS}")
    if not lines:
        raise ValueError(f"{path} holds no pairs ({'only its count line' if header else 'it is empty'})")
    pairs, line_of, repeats = [], {}, []
    for number, row in lines:
        text = " ".join(row)
        fields = len(row)
        numbers = [row[1], row[2]] if fields == 3 else [row[1], row[3]] if fields == 4 else []
        if not numbers or not all(re.fullmatch("0*[1-9][0-9]*", n) for n in numbers):
            raise ValueError(f"{path}, line {number}: {text!r} is not a pair: expected {PAIR_FORMS}")
        first, second = (row[0], int(numbers[0])), (row[0] if fields == 3 else row[2], int(numbers[1]))
        if fields == 4 and row[0] == row[2]:
            raise ValueError(f"{path}, line {number}: {text!r} names {row[0]} twice: a genuine pair is written "
                             f"`{row[0]} {first[1]} {second[1]}`, an impostor pair names two people")
        if first == second:
            raise ValueError(f"{path}, line {number}: {text!r} pairs image {first[1]} of {first[0]} with itself")
        key = (min(first, second), max(first, second))
        if key in line_of:
            repeats.append(f"line {number} ({text!r}) repeats line {line_of[key]}")
        line_of.setdefault(key, number)
        pairs.append((*first, *second, fields == 3))
    if repeats:
        more = f", and {len(repeats) - 5} more" if len(repeats) > 5 else ""
        raise ValueError(f"{path} holds the same pair more than once: {', '.join(repeats[:5])}{more} (a repeated "
                         f"pair would count twice in the ten folds)")
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
    genuine: int = 0
    impostors: int = 0

    def summary(self):
        """One line; a TAR at a FAR below one impostor pair (1 / impostors) is the TAR at
        zero false accepts, and says so."""
        tars = []
        for far, tar in self.tar_at_far.items():
            below = f" (FAR {far:g} < 1/{self.impostors} impostor pairs: TAR at zero false accepts)" \
                if far * self.impostors < 1 else ""
            tars.append(f"TAR@FAR={far:g} {tar:.4f}{below}")
        return f"accuracy {self.accuracy:.4f} +- {self.accuracy_std:.4f} (10-fold), {', '.join(tars)}, AUC {self.auc:.4f}"

    def as_dict(self):
        return asdict(self)


def checked_scores(similarity, same):
    """(similarity, same) as a float64 and a bool array of one length, one score and one
    genuine flag per pair; a ValueError naming the argument otherwise.  A NaN or Inf score
    (a model whose embeddings are not finite) has no place on a threshold: no metrics."""
    similarity, same = np.asarray(similarity, np.float64), np.asarray(same)
    if similarity.ndim != 1 or same.shape != similarity.shape:
        raise ValueError(f"similarity, same: expected two 1-D arrays of one length (a score and a genuine flag per "
                         f"pair), got shapes {similarity.shape} and {same.shape}")
    if same.dtype != bool and (same.dtype.kind not in "iu" or not np.isin(same, (0, 1)).all()):
        raise ValueError(f"same: expected bools (or 0 and 1), one per pair, got dtype {same.dtype}")
    non_finite = int(np.count_nonzero(~np.isfinite(similarity)))
    if non_finite:
        raise ValueError(f"similarity: {non_finite} of {len(similarity)} scores are NaN or Inf; expected finite "
                         f"scores (the embeddings they come from are not finite)")
    return similarity, same.astype(bool)


def ten_fold_accuracy(similarity, same, folds=10):
    """Splits the genuine and the impostor pairs each into `folds` contiguous runs in
    protocol-file order (for LFW View 2's pairs.txt these are its ten official sets;
    View 1's pairsDevTest.txt lists all matched pairs first); each fold's accuracy uses
    the threshold that is best on the other folds."""
    similarity, same = checked_scores(similarity, same)
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
    """False and true accept rates at every threshold, from strictest to loosest: one
    point per distinct score, since pairs of equal score are accepted or rejected
    together (a model that gives every pair one score has the points (0, 0) and (1, 1)
    only: AUC 0.5, no TAR at a FAR below 1)."""
    similarity, same = checked_scores(similarity, same)
    if same.all() or not same.any():
        raise ValueError(f"same: an ROC needs genuine and impostor pairs, got {int(same.sum())} genuine and "
                         f"{int((~same).sum())} impostor")
    order = np.argsort(-similarity, kind="stable")
    similarity, same = similarity[order], same[order]
    last_of_each_score = np.append(np.flatnonzero(np.diff(similarity)), len(similarity) - 1)
    tar = np.concatenate([[0.0], np.cumsum(same)[last_of_each_score] / same.sum()])
    far = np.concatenate([[0.0], np.cumsum(~same)[last_of_each_score] / (~same).sum()])
    return far, tar


def tar_at_far(similarity, same, far_target):
    """The fraction of genuine pairs accepted at the loosest threshold whose false
    accept rate is still <= far_target."""
    return _tar_on(roc(similarity, same), far_target)


def _tar_on(curve, far_target):
    """tar_at_far on an ROC curve (far, tar) already computed."""
    far_target = _params.real("far_target", far_target, low=0.0, high=1.0)
    far, tar = curve
    return float(tar[np.flatnonzero(far <= far_target)[-1]])


def verify(embeddings_a, embeddings_b, same, fars=(1e-3, 1e-2)):
    """Verification metrics of pairs (a_k, b_k) of L2-normalised embeddings, the
    similarity summed in float64."""
    embeddings_a, embeddings_b = np.asarray(embeddings_a), np.asarray(embeddings_b)
    if embeddings_a.ndim != 2 or embeddings_b.shape != embeddings_a.shape:
        raise ValueError(f"embeddings_a, embeddings_b: expected two (pairs, dim) arrays of one shape, got "
                         f"{embeddings_a.shape} and {embeddings_b.shape}")
    for name, embeddings in (("embeddings_a", embeddings_a), ("embeddings_b", embeddings_b)):
        rows = int(np.count_nonzero(~np.isfinite(embeddings).all(axis=1)))
        if rows:
            raise ValueError(f"{name}: {rows} of {len(embeddings)} embeddings hold NaN or Inf; expected finite "
                             f"embeddings (did the model diverge?)")
    similarity, same = checked_scores(np.einsum("kd,kd->k", embeddings_a, embeddings_b, dtype=np.float64), same)
    mean, std, folds, thresholds = ten_fold_accuracy(similarity, same)
    far, tar = roc(similarity, same)
    auc = float(_trapezoid(tar, far))
    tars = {f: _tar_on((far, tar), f) for f in fars}
    return Verification(mean, std, folds, thresholds, tars, auc, int(np.sum(same)), int(np.sum(~same))), \
        (far, tar)


ROC_DECADES = (-4, -3, -2, -1, 0)  # the log-FAR axis of the ROC plot
BELOW_ONE_IMPOSTOR = (235, 235, 235)  # the plot's shading where FAR < 1 / impostors


def roc_legend(curves):
    """The ROC plot's legend: each curve's label with its AUC."""
    return [f"{label} (AUC {float(_trapezoid(tar, far)):.3f})" for label, (far, tar) in curves.items()]


def roc_pixel(far, tar, size=480):
    """Pixel (x, y) of (FAR, TAR) in the ROC plot; FAR below 1e-4 sits on the left edge."""
    x0, y0, x1, y1 = 60, size - 60, size - 20, 20
    lf = np.log10(np.clip(far, 10.0 ** ROC_DECADES[0], 1.0))
    return (x0 + (lf - ROC_DECADES[0]) / (ROC_DECADES[-1] - ROC_DECADES[0]) * (x1 - x0)), (y0 - tar * (y0 - y1))


def save_roc_png(path, curves, impostors, size=480):
    """Draws ROC curves (label -> (far, tar)) on a log-FAR axis with OpenCV: a grid, the
    AUC of each curve in the legend, and the FARs below one impostor pair (1 /
    impostors, where a curve only says the TAR at zero false accepts) shaded."""
    impostors = _params.integer("impostors", impostors, low=1)
    canvas = np.full((size, size, 3), 255, np.uint8)
    x0, y0, x1, y1 = 60, size - 60, size - 20, 20
    one_pair = 1.0 / impostors
    if one_pair > 10.0 ** ROC_DECADES[0]:
        px = int(roc_pixel(one_pair, 0, size)[0])
        cv2.rectangle(canvas, (x0, y1), (px, y0), BELOW_ONE_IMPOSTOR, -1)
        cv2.putText(canvas, f"FAR < 1/{impostors}", (x0 + 4, int(roc_pixel(1.0, 0.75, size)[1])),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.35, (90, 90, 90), 1)
    grey = (200, 200, 200)
    for d in ROC_DECADES:
        px = int(roc_pixel(10.0**d, 0, size)[0])
        cv2.line(canvas, (px, y1), (px, y0), grey, 1)
        cv2.line(canvas, (px, y0), (px, y0 + 5), (0, 0, 0), 1)
        cv2.putText(canvas, f"1e{d}", (px - 14, y0 + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for t in np.linspace(0, 1, 11):
        py = int(roc_pixel(1.0, t, size)[1])
        cv2.line(canvas, (x0, py), (x1, py), grey, 1)
        if round(t * 10) % 5 == 0:
            cv2.putText(canvas, f"{t:.1f}", (x0 - 30, py + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.rectangle(canvas, (x0, y1), (x1, y0), (0, 0, 0), 1)
    cv2.putText(canvas, "false accept rate", (size // 2 - 60, size - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.putText(canvas, "TAR", (10, size // 2), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    colours = [(200, 80, 0), (0, 0, 200), (0, 150, 0), (120, 0, 120)]
    for k, ((far, tar), label) in enumerate(zip(curves.values(), roc_legend(curves))):
        px, py = roc_pixel(np.asarray(far), np.asarray(tar), size)
        points = np.stack([px, py], axis=1).astype(np.int32)
        colour = colours[k % len(colours)]
        cv2.polylines(canvas, [points], False, colour, 2)
        cv2.putText(canvas, label, (x0 + 10, y1 + 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1)
    if not cv2.imwrite(path, canvas):
        raise OSError(f"could not write {path}")


def _trapezoid(y, x):
    return np.trapezoid(y, x) if hasattr(np, "trapezoid") else np.trapz(y, x)


def read_pair_images(root, pairs_path, size, crop):
    """(images, i, j, same) of an LFW-format pairs file over ROOT/<name>/<name>_NNNN.jpg:
    each image once, pair k is (images[i[k]], images[j[k]]).  A pair whose image is
    missing, truncated or undecodable is an error naming it."""
    from faceops.driver import data

    pairs = read_lfw_pairs(pairs_path)
    row_of, images = {}, []

    def row(name, index):
        path = lfw_image_path(root, name, index)
        if path not in row_of:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{pairs_path} names {path}, which does not exist")
            image, why = data.read_image(path, size, crop)
            if why:
                raise ValueError(f"{pairs_path} names {path}, which cannot be used: {why}")
            row_of[path] = len(images)
            images.append(image)
        return row_of[path]

    i = np.array([row(n1, i1) for n1, i1, _, _, _ in pairs])
    j = np.array([row(n2, i2) for _, _, n2, i2, _ in pairs])
    return np.stack(images), i, j, np.array([p[4] for p in pairs])


def describe_pairs(pairs_path, root, same):
    """What a pairs-file figure was measured on, for the output."""
    return (f"on the {len(same)} pairs of {pairs_path} ({int(np.sum(same))} genuine, "
            f"{int(np.sum(~np.asarray(same)))} impostor; images under {root})")


def _onnx_embedder(path):
    """(embed(inputs) -> embeddings, preprocessing) of a `faceops export` model,
    run by OpenCV DNN."""
    import onnx

    try:
        metadata = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        dnn = cv2.dnn.readNetFromONNX(path)
    except Exception as error:  # protobuf's DecodeError, cv2.error: the file is no model
        raise ValueError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    if "preprocessing" not in metadata:
        raise ValueError(f"{path}: no `preprocessing` in the model's metadata: not a model written by faceops export")
    try:
        preprocessing = json.loads(metadata["preprocessing"])
    except ValueError as error:
        raise ValueError(f"{path}: the `preprocessing` of the model's metadata is not valid JSON ({error})") from None

    def embed(inputs, batch=1024):
        """inputs: descriptors (N, F), or images (N, S, S) of a --backbone cnn model (N, 1, S, S in the graph)."""
        out = []
        for i in range(0, len(inputs), batch):
            rows = inputs[i : i + batch]
            dnn.setInput(np.ascontiguousarray(rows[:, None] if rows.ndim == 3 else rows, np.float32))
            out.append(dnn.forward().copy())
        return np.concatenate(out)

    return embed, checked_preprocessing(preprocessing, f"{path}: the `preprocessing` of the model's metadata")


def checked_preprocessing(preprocessing, source):
    """A model's preprocessing (its ONNX metadata, or its run's configuration: `source`
    says which) as `faceops eval` uses it, or a ValueError naming source and the entry:
    the descriptor, an image size and a crop `faceops train` accepts."""
    from faceops.driver.model import DESCRIPTORS
    from faceops.driver.train import MAX_IMAGE_SIZE

    if not isinstance(preprocessing, dict):
        raise ValueError(f"{source} is not a JSON object but a {type(preprocessing).__name__}")
    descriptor = "reference_descriptor" if preprocessing.get("input") == "image" else "descriptor"
    if preprocessing.get(descriptor) not in DESCRIPTORS:
        raise ValueError(f"{source}: {descriptor} is {preprocessing.get(descriptor)!r}; expected one of {DESCRIPTORS}")
    size = preprocessing.get("image_size")
    if type(size) is not int or not 16 <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"{source}: image_size is {size!r}; expected an integer from 16 to {MAX_IMAGE_SIZE}")
    crop = preprocessing.get("crop")
    if type(crop) not in (int, float) or not 0 < crop <= 1:
        raise ValueError(f"{source}: crop is {crop!r}; expected a fraction in (0, 1]")
    return preprocessing


EVAL_FILES = ("metrics.json", "roc.png")  # what `faceops eval` writes into its output folder


def check_output_folder(output, default_for=None):
    """Refuses an output folder `faceops eval` would write over (before any work): a
    file (or a path under one), a run directory (its metrics.json and roc.png would
    be replaced), or the folder of an earlier evaluation.  `default_for`: the pairs
    file whose default folder `output` is, when -o was not given."""
    existing = rundir.nearest_existing(output)
    if existing and not os.path.isdir(existing):
        raise ValueError(f"-o: {existing} is a file, not a folder; -o takes the folder to write metrics.json and "
                         f"roc.png into")
    if not os.path.isdir(output):
        return
    run_files = rundir.holds_run(output, rundir.RUN_MARKERS)
    if run_files:
        raise ValueError(f"-o: {output} is the directory of a faceops train run (it holds {', '.join(run_files)}); "
                         f"its metrics.json and roc.png are the run's: give another folder")
    earlier = [name for name in EVAL_FILES if os.path.exists(os.path.join(output, name))]
    if earlier:
        what = ""
        try:
            with open(os.path.join(output, "metrics.json")) as f:
                what = f", measured {json.load(f)['measured_on']}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        default = f" (the default folder for --pairs {default_for}: pairs files of the same name share it)" \
            if default_for else ""
        raise ValueError(f"{output}{default} already holds {' and '.join(earlier)} of an earlier evaluation{what}; "
                         f"remove it or give another folder with -o")


def evaluate_model(model_path, root, pairs_path, output):
    """`faceops eval`: the descriptor alone and the model on the pairs; prints both,
    writes OUTPUT/metrics.json and OUTPUT/roc.png.  Returns (descriptor, model) metrics."""
    from faceops.driver import export, model

    if os.path.isdir(model_path):
        net, config = export.load_run(model_path)
        if config.get("backbone") == "cnn":
            from faceops.driver import torch_model

            embed, preprocessing = (lambda images: torch_model.embed_images(net, images)), \
                torch_model.preprocessing_of(config)
        else:
            embed, preprocessing = net.embed, export.preprocessing_of(config)
        preprocessing = checked_preprocessing(preprocessing, f"{model_path}: the run's configuration")
        label = f"run {model_path}"
    elif os.path.isfile(model_path):
        embed, preprocessing = _onnx_embedder(model_path)
        label = f"ONNX model {model_path}"
    else:
        raise FileNotFoundError(f"{model_path!r} is neither a run directory nor an ONNX file")
    # A --backbone cnn model takes the image itself; its reference descriptor is reported beside it.
    takes_images = preprocessing.get("input") == "image"
    descriptor = preprocessing["reference_descriptor" if takes_images else "descriptor"]
    images, i, j, same = read_pair_images(root, pairs_path, preprocessing["image_size"], preprocessing["crop"])
    measured_on = describe_pairs(pairs_path, root, same)
    descriptors = model.describe(images, descriptor)
    embeddings = embed(images if takes_images else descriptors)
    baseline, baseline_roc = verify(descriptors[i], descriptors[j], same)
    trained, trained_roc = verify(embeddings[i], embeddings[j], same)
    print(f"{descriptor} descriptor alone, {measured_on}: {baseline.summary()}")
    print(f"{label}, {measured_on}: {trained.summary()}")
    check_output_folder(output)  # again: the evaluation may have taken minutes
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as error:
        raise ValueError(f"-o: cannot create the folder {output}: {error.strerror}") from None
    save_roc_png(os.path.join(output, "roc.png"), {f"{descriptor} descriptor": baseline_roc, "model": trained_roc},
                 trained.impostors)
    with open(os.path.join(output, "metrics.json"), "w") as f:
        json.dump({"measured_on": measured_on, "model": model_path, "preprocessing": preprocessing,
                   "descriptor": baseline.as_dict(), "trained": trained.as_dict()}, f, indent=2, default=float)
    print(f"wrote {os.path.join(output, 'metrics.json')} and {os.path.join(output, 'roc.png')}")
    return baseline, trained


def main(argv=None):
    from faceops.cli import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="faceops eval", formatter_class=HelpFormatter,
        description="Face verification of a trained run or of an exported ONNX model on an LFW-format pairs file "
                    "(pairs.txt, pairsDevTest.txt): 10-fold accuracy, TAR@FAR 1e-3 and 1e-2, AUC and the ROC plot, "
                    "for the model and for its descriptor alone, as `faceops train` reports them.")
    parser.add_argument("model", metavar="RUN_DIR_OR_MODEL.onnx",
                        help="the run directory of `faceops train` (its checkpoint) or a model written by "
                             "`faceops export`; the preprocessing (descriptor, image size, crop) comes from it")
    parser.add_argument("--root", required=True, help="image folder the pairs file names: ROOT/<name>/<name>_NNNN.jpg")
    parser.add_argument("--pairs", required=True, help="LFW-format pairs file: `name i j` (genuine) and "
                                                       "`name1 i name2 j` (impostor) lines, after LFW's count "
                                                       "line (`N` or `FOLDS N`; optional)")
    parser.add_argument("--output", "-o",
                        help="folder for metrics.json and roc.png (default: RUN_DIR/eval-<pairs file name>, or "
                             "<model name>-eval-<pairs file name> beside the ONNX file); new or empty: a run "
                             "directory or an earlier evaluation's folder is refused, never written over")
    args = parser.parse_args(argv)
    pairs_name = os.path.splitext(os.path.basename(args.pairs))[0]
    output = args.output
    if output is None:
        output = os.path.join(args.model, f"eval-{pairs_name}") if os.path.isdir(args.model) else \
            f"{os.path.splitext(args.model)[0]}-eval-{pairs_name}"
    try:
        if not os.path.isfile(args.pairs):
            raise FileNotFoundError(f"--pairs: {args.pairs!r} is not a file")
        if not os.path.isdir(args.root):
            raise FileNotFoundError(f"--root: {args.root!r} is not a directory")
        check_output_folder(output, default_for=None if args.output else args.pairs)
        evaluate_model(args.model, args.root, args.pairs, output)
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"faceops eval: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("faceops eval: interrupted", file=sys.stderr)
        return 130
    return 0
