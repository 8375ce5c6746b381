"""`faceops train`: trains the embedding network on a folder of face images with
faceops losses, verifies it before and after on held-out faces, checkpoints every
epoch, and exports the model to ONNX.  `faceops train --help` lists the options."""

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import types

import numpy as np

import faceops
from faceops import _params
from faceops.cli import HelpFormatter
from faceops.driver import data, evaluate, export, model, rundir, sst, torch_model

# Combined-margin softmax losses (insightface; the margins are faceops.MARGINS).
MARGIN_LOSSES = ("arcface", "cosface", "sphereface", "combined", "normface")
LOSS_NAMES = ("softmax", "center", "triplet", "pair", "contrastive") + MARGIN_LOSSES
METHODS = ("standard", "sst")
BACKBONES = ("descriptor", "cnn")
MAX_IMAGE_SIZE = 1024  # face crops are 64-256 pixels; a batch of 1024^2 images is already 0.25 GB
# --rank and --hidden: face embeddings are 128-512 wide, the descriptors 3776 (lbp) and 1024 (pixels);
# 4096 keeps the exported ONNX model far below protobuf's 2 GiB (a --rank 100000 run trained, then failed there).
MAX_WIDTH = 4096
AUGMENTATIONS = {"full": {}, "photometric": {"max_shift": 0.0, "max_angle": 0.0, "occlusion": 0.0}, "none": None}


def expand_names(spec, option="identities"):
    """'s1-s3,s7' -> ['s1', 's2', 's3', 's7']; 'id_08-id_10' keeps the zero padding.  A
    range that runs backwards, or a list naming nobody, is a ValueError naming `option`."""
    names = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = re.fullmatch(r"(\D*)(\d+)-\1(\d+)", part)
        if match:
            prefix, first, last = match.groups()
            if int(last) < int(first):
                raise ValueError(f"{option}: the range {part!r} runs backwards; expected {prefix}{last}-{prefix}{first}")
            width = len(first) if first.startswith("0") else 0
            names.extend(f"{prefix}{k:0{width}d}" for k in range(int(first), int(last) + 1))
        else:
            names.append(part)
    if not names:
        raise ValueError(f"{option}: {spec!r} names no identity; expected names or ranges such as s1-s3,s7")
    return names


def parse_loss(spec):
    """'softmax+0.008*center' -> {'softmax': 1.0, 'center': 0.008}: each term once, each
    weight a finite number > 0."""
    weights = {}
    for term in spec.split("+"):
        weight, _, name = term.strip().rpartition("*")
        if name not in LOSS_NAMES:
            raise ValueError(f"--loss: unknown term {name!r}; expected terms of {LOSS_NAMES}, e.g. softmax+0.008*center")
        if name in weights:
            raise ValueError(f"--loss: the term {name!r} appears twice in {spec!r}; give each term once, with one weight")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--loss: the weight {weight!r} of {name!r} is not a number; expected e.g. "
                             "softmax+0.008*center") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--loss: the weight of {name!r} must be a finite number > 0, got {weight!r}")
        weights[name] = value
    if len(set(weights) & set(MARGIN_LOSSES)) > 1:
        raise ValueError(f"--loss: at most one margin-softmax term ({', '.join(MARGIN_LOSSES)}), got {spec!r}")
    return weights


def margin_term(weights):
    """The margin-softmax term of parsed --loss weights, or None."""
    return next((name for name in weights if name in MARGIN_LOSSES), None)


def margins_of(config):
    """(m1, m2, m3) of the run's margin-softmax term: faceops.MARGINS, then --m1/--m2/--m3."""
    defaults = faceops.MARGINS[margin_term(parse_loss(config.loss))]
    return tuple(float(d if given is None else given) for d, given in zip(defaults, (config.m1, config.m2, config.m3)))


def resolve_defaults(config):
    """Fills the options whose default depends on --method (idempotent)."""
    sst_run = config.method == "sst"
    if config.loss is None:
        config.loss = "cosface" if sst_run else "triplet"
    if config.images_per_identity is None:
        config.images_per_identity = 2 if sst_run else 4
    if config.scale is None and margin_term(parse_loss(config.loss)):
        config.scale = 32.0 if sst_run else 64.0
    if sst_run and config.ema is None:
        config.ema = 0.999
    if sst_run and config.queue_size is None:
        config.queue_size = 512
    if getattr(config, "backbone", None) is None:  # a run of faceops 0.2 or earlier
        config.backbone = "descriptor"
    if config.lr is None:
        config.lr = 0.1 if config.backbone == "cnn" else 0.5
    if config.flip_test is None:
        config.flip_test = config.backbone == "cnn"


# Measured on this project's 2-core machine (docs/driver.md says how): the built-in default run.
DEFAULT_RUN_TIME = "about 15 s on 2 CPU cores"
DESCRIPTION = f"""Train a face embedding with faceops losses on a folder of face images,
verify it before and after training, and export it to ONNX.

Without --data, the run draws a built-in synthetic identity set (60 identities
x 8 images, with OpenCV), trains on 40 of them for 60 epochs and verifies all
pairs of the other 20: {DEFAULT_RUN_TIME}.  With --data alone, the last
--holdout of the identities (by name) are held out of training and verified on.

A run writes its directory only once training starts: config.json, log.txt and
checkpoint.npz (after every epoch), then metrics.json, roc.png and model.onnx.
Without --run-dir that is a new runs/YYYYmmdd-HHMMSS/, and runs/latest links to
it.  A directory holding a run is continued with --resume (with the run's own
configuration) or replaced with --overwrite, never reused otherwise."""

# Options of the invocation, not of the run: never stored, never compared on --resume.
INVOCATION_OPTIONS = ("run_dir", "resume", "overwrite")
# What --resume may change: the length of the run, and where it computes.
RESUME_OVERRIDES = ("epochs", "device")


def build_parser():
    p = argparse.ArgumentParser(prog="faceops train", description=DESCRIPTION, formatter_class=HelpFormatter)
    data_options = p.add_argument_group("data and verification")
    data_options.add_argument("--data", help="training images, ROOT/<identity>/<image> (LFW, CASIA-WebFace, ORL "
                                             "layout); default: the built-in synthetic set")
    data_options.add_argument("--train-identities",
                              help="train on these identity folders only, e.g. s1-s30 (default: all but the "
                                   "held-out ones); without --eval-*, the other identities are verified on")
    data_options.add_argument("--holdout", type=float,
                              help="with --data alone: the fraction of identities (the last by name) held out of "
                                   "training and verified on (default 0.2; 0 verifies on the training images)")
    data_options.add_argument("--eval-root", help="images to verify on (default: --data)")
    data_options.add_argument("--eval-pairs",
                              help="LFW-format pairs file (pairs.txt, pairsDevTest.txt) over --eval-root; without "
                                   "it, all pairs of --eval-identities")
    data_options.add_argument("--eval-identities",
                              help="identity folders of --eval-root to verify on, all pairs, e.g. s31-s40 (default: "
                                   "those not trained on)")
    data_options.add_argument("--image-size", type=int, default=64, help=f"side of the square grey image, pixels (16 to {MAX_IMAGE_SIZE})")
    data_options.add_argument("--crop", type=float, default=1.0,
                              help="centre crop, the fraction of each side kept (LFW deep-funneled: 0.5)")
    data_options.add_argument("--max-images-per-identity", type=int,
                              help="train on only the first N images (sorted file order) of each identity, "
                                   "shallow data (default: all)")
    data_options.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="full",
                              help="full: flips, brightness/contrast, shifts, rotations, occlusion patches; "
                                   "photometric: flips and brightness/contrast only (raw pixels of unaligned faces); "
                                   "none")
    net = p.add_argument_group("model")
    net.add_argument("--backbone", choices=BACKBONES, default="descriptor",
                     help="descriptor: the fixed --descriptor and a learned projection (NumPy, no torch); cnn: a "
                          "small residual CNN on the grey crop itself, trained with faceops.torch (needs "
                          f"{torch_model.INSTALL_HINT})")
    net.add_argument("--descriptor", choices=model.DESCRIPTORS, default="lbp",
                     help="the fixed face descriptor the network starts from: uniform LBP histograms or raw pixels "
                          "(--backbone cnn: only the reference reported beside the trained model)")
    net.add_argument("--hidden", type=int, default=0,
                     help=f"0: the descriptor plus a learned low-rank correction; >0: an MLP with this many ReLU units "
                          f"(at most {MAX_WIDTH})")
    net.add_argument("--flip-test", action=argparse.BooleanOptionalAction,
                     help="--backbone cnn: verify (and export) the sum of the embeddings of the image and of its "
                          "horizontal mirror, L2-normalised, as insightface's flip test (default: on with "
                          "--backbone cnn)")
    net.add_argument("--rank", type=int, default=128,
                     help=f"rank of the correction, or the MLP's (or the cnn's) embedding size (1 to {MAX_WIDTH})")
    losses = p.add_argument_group("losses")
    losses.add_argument("--loss", help="'+'-joined weighted terms of " + ", ".join(LOSS_NAMES) +
                        ", e.g. softmax+0.008*center (default: triplet; with --method sst one margin-softmax term, "
                        "default cosface)")
    losses.add_argument("--mining", choices=sorted(faceops.ops.MINING_MODES), default="semihard",
                        help="triplet mining within each P x K batch")
    losses.add_argument("--margin", type=float, default=0.2, help="triplet margin (contrastive uses 1.0)")
    losses.add_argument("--center-alpha", type=float, default=0.5, help="center update rate (Wen et al. 2016, eq. 4)")
    losses.add_argument("--theta", type=float, default=1.0,
                        help="initial threshold of the pair loss (learned with the network)")
    losses.add_argument("--scale", type=float,
                        help="margin softmax: the scale s of the logits (default 64, as insightface; 32 with "
                             "--method sst, as FaceX-Zoo)")
    for k, meaning in ((1, "multiplicative angular"), (2, "additive angular"), (3, "additive cosine")):
        losses.add_argument(f"--m{k}", type=float,
                            help=f"margin softmax: the {meaning} margin m{k} of cos(m1 theta + m2) - m3 "
                                 f"(default: the loss's own, faceops.MARGINS)")
    losses.add_argument("--sample-rate", type=float, default=1.0,
                        help="margin softmax: Partial FC class-centre sampling, the fraction of classes in each "
                             "batch's softmax (the batch's own classes always; only their weights move)")
    method = p.add_argument_group("training")
    method.add_argument("--method", choices=METHODS, default="standard",
                        help="standard: the losses on P x K batches; sst: Semi-Siamese Training for shallow data "
                             "(Du et al. ECCV 2020): probe net, moving-average gallery net, prototype queue, two "
                             "images per identity")
    method.add_argument("--ema", type=float, help="sst: the gallery's moving-average rate alpha (default 0.999)")
    method.add_argument("--queue-size", type=int,
                        help="sst: how many gallery features of earlier batches are kept as negative prototypes "
                             "(FIFO; default 512)")
    method.add_argument("--epochs", type=int,
                        help=f"default: 15 with --data (--backbone cnn: {CNN_EPOCHS}), 60 on the built-in synthetic "
                             f"set; with --resume, a larger value extends the run")
    method.add_argument("--identities-per-batch", "-P", type=int, default=16, help="identities in each batch")
    method.add_argument("--images-per-identity", "-K", type=int,
                        help="images of each identity in each batch (default 4; --method sst: 2, the only value)")
    method.add_argument("--lr", type=float, help="learning rate of SGD at the first epoch (default 0.5; "
                                                 "--backbone cnn: 0.1)")
    method.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    method.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay of the network's weights")
    method.add_argument("--schedule", choices=("cosine", "step"), default="cosine",
                        help="learning-rate schedule over the epochs (step: x0.1 at each third)")
    method.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and augmentation")
    method.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: the network and the losses on the GPU (CuPy; --backbone cnn: torch)")
    run = p.add_argument_group("run directory")
    run.add_argument("--run-dir", help="where the run writes (default: a new runs/YYYYmmdd-HHMMSS, linked from "
                                       "runs/latest; with --resume: runs/latest)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir from its checkpoint, with the run's own configuration "
                          "(only --epochs and --device may change)")
    run.add_argument("--overwrite", action="store_true", help="replace the run that --run-dir holds")
    return p


def options_given(argv):
    """The options present on the command line argv, with their parsed values."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def run_configuration(config):
    """What config.json and the checkpoint store: every option of the run, paths
    absolute (a resume may start elsewhere), the invocation's own options left out."""
    stored = {k: v for k, v in vars(config).items() if k not in INVOCATION_OPTIONS}
    for name in ("data", "eval_root", "eval_pairs"):
        if stored[name] is not None:
            stored[name] = os.path.abspath(stored[name])
    stored["faceops_version"] = faceops.__version__
    return stored


def _comparable(name, value):
    if value is None:
        return None
    if name in ("data", "eval_root", "eval_pairs"):
        return os.path.abspath(value)
    if name == "loss":
        return parse_loss(value)
    if name in ("train_identities", "eval_identities"):
        return expand_names(value, _option(name))
    return value


def _effective(name, config):
    """The value an option of a run stands for: its own, or for one left at None the
    default it took (so that a resume may repeat --holdout 0.2, say)."""
    value = getattr(config, name)
    if value is not None:
        return value
    if name == "holdout" and config.data and not any(
            getattr(config, k) for k in ("train_identities", "eval_root", "eval_pairs", "eval_identities")):
        return 0.2
    if name in ("m1", "m2", "m3") and config.loss and margin_term(parse_loss(config.loss)):
        return margins_of(config)[("m1", "m2", "m3").index(name)]
    if name == "eval_root":
        return config.data
    return None


def _option(name):
    return "--" + name.replace("_", "-")


def resume_configuration(config, given):
    """The configuration of the run in config.run_dir (default runs/latest), with the
    overrides of RESUME_OVERRIDES taken from the command line.  Raises ValueError
    naming every other option the command line gives a different value.  Returns
    (configuration, [notes on the overrides])."""
    run_dir = config.run_dir or rundir.LATEST
    if os.path.islink(run_dir):  # runs/latest: name the run itself, which a later run will not move
        run_dir = os.path.join(os.path.dirname(run_dir), os.readlink(run_dir))
    checkpoint = os.path.join(run_dir, rundir.CHECKPOINT)
    if not os.path.isfile(checkpoint):
        if os.path.isdir(run_dir) and rundir.holds_run(run_dir):
            raise ValueError(f"--resume: {run_dir} holds no checkpoint yet (its run stopped before its first epoch "
                             f"ended); start it again with --run-dir {run_dir} --overwrite")
        raise ValueError(f"--resume: no run to continue at {run_dir} (no {rundir.CHECKPOINT})")
    state = rundir.read_checkpoint(checkpoint)
    stored, source = rundir.stored_configuration(state, checkpoint), checkpoint
    if stored is None:  # a checkpoint of faceops 0.1.0 without its configuration
        from faceops.driver import export

        source = os.path.join(run_dir, "config.json")
        stored = export.read_config_json(source)
    check_stored_options(stored, source)
    resumed = build_parser().parse_args([])
    for name in vars(resumed):
        if name in stored and name not in INVOCATION_OPTIONS:
            setattr(resumed, name, stored[name])
    if "holdout" not in stored and stored.get("data") and not any(
            stored.get(k) for k in ("train_identities", "eval_root", "eval_pairs", "eval_identities")):
        resumed.holdout = 0.0  # faceops 0.1.0 trained and verified on all identities of --data alone
    if "flip_test" not in stored:
        resumed.flip_test = False  # a run from before --flip-test: verified without it
    resumed.run_dir, resumed.resume, resumed.overwrite = run_dir, True, False
    if given.get("overwrite"):
        raise ValueError("--resume continues a run and --overwrite replaces it: give one")
    conflicts, notes = [], []
    for name, value in given.items():
        if name in INVOCATION_OPTIONS:
            continue
        if name in RESUME_OVERRIDES:
            if value != getattr(resumed, name):
                notes.append(f"{_option(name)} {value} (the run had {getattr(resumed, name)})")
                setattr(resumed, name, value)
        elif _comparable(name, value) != _comparable(name, _effective(name, resumed)):
            was = _effective(name, resumed)
            was = SYNTHETIC_NAME if name == "data" and was is None else was
            conflicts.append(f"{_option(name)} {value} (the run: {was})")
    if conflicts:
        raise ValueError(f"--resume continues the run in {run_dir} with its own configuration, and these options "
                         f"differ from it: {'; '.join(conflicts)}.  Leave them out, or start a new run (without "
                         f"--resume).  Only {', '.join(map(_option, RESUME_OVERRIDES))} may change on --resume")
    return resumed, notes


def check_stored_options(stored, source):
    """A stored configuration holds values of the types and choices the command line
    gives, or a ValueError names `source` (the checkpoint or config.json) and the option:
    an edited or foreign file, never a TypeError deep in the run."""
    for action in build_parser()._actions:
        value = stored.get(action.dest)
        if value is None or action.dest == "help":
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
            fits, expected = type(value) is bool, "true or false"
        elif action.type is int:
            fits, expected = type(value) is int, "an integer"
        elif action.type is float:
            fits, expected = type(value) in (int, float), "a number"
        else:
            fits, expected = type(value) is str, "a string"
        if action.choices:
            fits, expected = fits and value in action.choices, f"one of {', '.join(map(str, action.choices))}"
        if not fits:
            raise ValueError(f"{source}: the run's {_option(action.dest)} is {value!r}; expected {expected} (an "
                             f"edited or foreign file?)")


class Log:
    """Prints each line and keeps it for RUN_DIR/log.txt: held in memory until the run
    directory is claimed (`attach`), appended to the file from then on."""

    def __init__(self):
        self.pending, self.file = [], None

    def attach(self, path):
        # A path that is not UTF-8 (a --data folder named in Latin-1) is written with \x escapes.
        self.file = open(path, "a", encoding="utf-8", errors="backslashreplace")
        self.file.writelines(line + "\n" for line in self.pending)
        self.file.flush()
        self.pending = []

    def close(self):
        if self.file:
            self.file.close()

    def failed(self, error):
        """Puts the error a run stops with into log.txt (main prints it), unless log.txt
        itself cannot be written (a full disk)."""
        if self.file:
            try:
                self.file.write(f"faceops train: {error}\n")
                self.file.flush()
            except OSError:
                pass

    def __call__(self, message):
        print(message.encode("utf-8", "backslashreplace").decode("utf-8"), flush=True)
        if self.file:
            self.file.write(message + "\n")
            self.file.flush()
        else:
            self.pending.append(message)


def learning_rate(config, epoch):
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs))
    return config.lr * 0.1 ** (epoch // max(1, config.epochs // 3))



class Trainer:
    """Owns the network, the loss state (centers, theta, classifiers, SST's gallery
    and queue) and the optimiser state; `state()`/`load_state()` are what a
    checkpoint holds.  (--backbone cnn: torch_model.TorchTrainer.)"""

    uses_descriptor = True

    def __init__(self, config, train_set, xp):
        resolve_defaults(config)
        self.config, self.xp = config, xp
        self.weights = parse_loss(config.loss)
        self.rng = np.random.default_rng(config.seed)
        features = model.describe(train_set.images, config.descriptor)
        # No centring (the descriptors' cosine geometry is what makes them work) and
        # one scale for all features (per-feature scaling would blow up the noise of
        # rarely used histogram bins).
        mean = np.zeros(features.shape[1], np.float32)
        std = np.full_like(mean, np.sqrt(np.mean(features**2)))
        self.net = model.EmbeddingNet(mean, std, config.hidden, config.rank, self.rng, xp)
        classes = len(train_set.names)
        dim = int(self.net.forward(features[:1])[0].shape[1])
        self.head = model.SoftmaxHead(dim, classes, self.rng, xp=xp) if "softmax" in self.weights else None
        self.center = faceops.CenterLoss(classes, dim, config.center_alpha, np.float32, xp) if "center" in self.weights else None
        self.pair = faceops.PairLoss(config.theta) if "pair" in self.weights else None
        # The pair loss's learned threshold: one array that the optimiser moves in place.
        self.theta = xp.asarray([config.theta], xp.float32) if self.pair else None
        self.margin = margin_term(self.weights)
        self.margins = margins_of(config) if self.margin else None
        self.sst = None
        self.class_weight = None
        if config.method == "sst":
            self.sst = sst.SemiSiamese(self.net, config.queue_size, config.ema, config.scale, self.margins, xp)
        elif self.margin:
            # Margin-softmax class weights (C, D), a parameter of the run; N(0, 0.01^2) as insightface.
            self.class_weight = xp.asarray(self.rng.standard_normal((classes, dim)) * 0.01, xp.float32)
        self.velocity = {name: xp.zeros_like(value) for name, value in self.parameters().items()}
        self.epoch = 0
        self.history = []  # per epoch: mean loss, learning rate

    def parameters(self):
        params = dict(self.net.params)
        if self.head:
            params.update(self.head.params)
        if self.pair:
            params["theta"] = self.theta
        if self.class_weight is not None:
            params["Wm"] = self.class_weight
        return params

    def loss_and_grad(self, z, labels):
        """Weighted sum of the selected losses and its gradient w.r.t. z; parameter
        gradients of the heads go to the returned dict."""
        xp, w, c = self.xp, self.weights, self.config
        total, dz, head_grads = 0.0, xp.zeros_like(z), {}
        if self.head:
            loss, g, head_grads = self.head.loss_and_grads(z, labels)
            total, dz = total + w["softmax"] * loss, dz + w["softmax"] * g
            head_grads = {k: w["softmax"] * v for k, v in head_grads.items()}
        if self.class_weight is not None:
            m1, m2, m3 = self.margins
            # The sample's seed comes from the run's generator, so a resumed run draws the same classes.
            sampled = dict(sample_rate=c.sample_rate, rng=int(self.rng.integers(2**63))) if c.sample_rate < 1 else {}
            loss, g, dweight = faceops.margin_softmax_loss(z, labels, self.class_weight, c.scale, m1, m2, m3, **sampled)
            total, dz = total + w[self.margin] * loss, dz + w[self.margin] * g
            # Partial FC: (sampled classes, their gradient rows); otherwise dense (C, D).
            head_grads["Wm"] = (dweight[0], w[self.margin] * dweight[1]) if isinstance(dweight, tuple) \
                else w[self.margin] * dweight
        if self.center:
            loss, g = self.center(z, labels)
            total, dz = total + w["center"] * loss, dz + w["center"] * g
        if "triplet" in w:
            loss, g = faceops.triplet_loss(z, labels, c.margin, c.mining)
            total, dz = total + w["triplet"] * loss, dz + w["triplet"] * g
        if self.pair:
            self.pair.theta = float(self.theta[0])
            loss, g = self.pair(z, labels)
            total, dz = total + w["pair"] * loss, dz + w["pair"] * g
            head_grads["theta"] = xp.asarray([w["pair"] * self.pair.grad_theta], xp.float32)
        if "contrastive" in w:
            # P x K batches: row i pairs with its identity neighbour (similar) and
            # with the row K places on (another identity: dissimilar).
            k = c.images_per_identity
            same_partner = xp.arange(len(z)) ^ 1 if k % 2 == 0 else (xp.arange(len(z)) // k) * k + (xp.arange(len(z)) + 1) % k
            other_partner = (xp.arange(len(z)) + k) % len(z)
            a = xp.concatenate([z, z])
            b = xp.ascontiguousarray(xp.concatenate([z[same_partner], z[other_partner]]))
            similar = xp.concatenate([xp.ones(len(z), xp.int64), xp.zeros(len(z), xp.int64)])
            loss, da, db = faceops.contrastive_loss(xp.ascontiguousarray(a), b, similar, 1.0)
            g = da[: len(z)] + da[len(z) :]
            xp.add.at(g, same_partner, db[: len(z)])
            xp.add.at(g, other_partner, db[len(z) :])
            total, dz = total + w["contrastive"] * loss, dz + w["contrastive"] * g
        return total, dz, head_grads

    def step(self, grads, lr):
        """SGD with momentum and weight decay (not on biases, theta or the classifiers,
        whose rows are normalised).  A gradient given as (rows, values) moves only
        those rows and their momentum (Partial FC's sampled class centres)."""
        c = self.config
        for name, value in self.parameters().items():
            grad = grads[name]
            if isinstance(grad, tuple):
                rows, grad = grad
                self.velocity[name][rows] = c.momentum * self.velocity[name][rows] + grad
                value[rows] -= lr * self.velocity[name][rows]
                continue
            if name in ("W1", "W2", "A", "B"):
                grad = grad + c.weight_decay * value
            self.velocity[name] = c.momentum * self.velocity[name] + grad
            value -= lr * self.velocity[name]

    def state(self):
        state = {f"param_{k}": _np(v) for k, v in self.parameters().items()}
        state.update({f"velocity_{k}": _np(v) for k, v in self.velocity.items()})
        if self.center:
            state["centers"] = _np(self.center.centers)
        if self.sst:
            state.update(self.sst.state())
        state["net_mean"], state["net_std"] = _np(self.net.mean), _np(self.net.std)
        state["epoch"] = np.asarray(self.epoch)
        state["history"] = np.asarray(json.dumps(self.history))
        state["rng"] = np.asarray(json.dumps(self.rng.bit_generator.state))
        state["config"] = np.asarray(json.dumps(run_configuration(self.config), sort_keys=True))
        return state

    def load_state(self, state):
        """Restores a checkpoint; an array it lacks or holds in another shape (the
        data changed since the run started, say) is an error naming it."""
        xp = self.xp
        arrays = {f"param_{k}": v for k, v in self.parameters().items()}
        arrays.update({f"velocity_{k}": v for k, v in self.velocity.items()})
        if self.center:
            arrays["centers"] = self.center.centers
        if self.sst:
            arrays.update({f"gallery_{k}": v for k, v in self.sst.gallery.params.items()})
        for key, value in arrays.items():
            if key not in state:
                raise ValueError(f"the checkpoint has no {key}: it was written by a run with other options")
            if tuple(state[key].shape) != tuple(value.shape):
                raise ValueError(f"the checkpoint's {key} has shape {tuple(state[key].shape)}, this run's "
                                 f"{tuple(value.shape)}: the training data (its identities) changed since the run "
                                 f"started")
        for name, value in self.parameters().items():
            value[...] = xp.asarray(state[f"param_{name}"])
            self.velocity[name] = xp.asarray(state[f"velocity_{name}"])
        if self.center:
            self.center.centers[...] = xp.asarray(state["centers"])
        if self.sst:
            self.sst.load_state(state)
        self.epoch = int(state["epoch"])
        self.history = json.loads(str(state["history"]))
        self.rng.bit_generator.state = json.loads(str(state["rng"]))


CNN_EPOCHS = 36
SYNTHETIC = dict(identities=60, images_per_identity=8, train="id_000-id_039", eval="id_040-id_059", epochs=60)
SYNTHETIC_NAME = "the built-in synthetic set"


def split_identities(config, root):
    """(training identities, verification identities) of root, each None for all.
    Without --eval-pairs on --data itself, verification uses the identities not
    trained on: the last --holdout (default 0.2) by name, or those outside
    --train-identities, or training uses those outside --eval-identities."""
    train = expand_names(config.train_identities, "--train-identities") if config.train_identities else None
    held = expand_names(config.eval_identities, "--eval-identities") if config.eval_identities else None
    if config.eval_pairs or (config.eval_root and os.path.realpath(config.eval_root) != os.path.realpath(root)):
        return train, held
    folders = data.identity_folders(root)
    if not folders:
        raise ValueError(f"--data: {root!r} holds no identity folder (a folder of image files, ROOT/<identity>/<image>)")
    present = set(folders)
    for option, names in (("--train-identities", train), ("--eval-identities", held)):
        missing = [name for name in names or () if name not in present]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(f"{option}: not found under {root!r}: {', '.join(missing[:5])}{more} (it has "
                             f"{len(folders)} identity folders, {folders[0]} to {folders[-1]})")
    if train is None and held is None:
        fraction = 0.2 if config.holdout is None else config.holdout
        if fraction == 0:
            return None, None
        count = math.ceil(fraction * len(folders))
        if count >= len(folders):
            raise ValueError(f"--holdout {fraction}: holds out all {len(folders)} identities of {root}")
        return folders[: len(folders) - count], folders[len(folders) - count :]
    if train is None:
        return [f for f in folders if f not in set(held)], held
    if held is None:
        held = [f for f in folders if f not in set(train)]
        if not held:
            raise ValueError(f"--train-identities covers every identity of {root}, leaving none to verify on: "
                             f"give --eval-identities, --eval-pairs or --eval-root")
    return train, held


def load_faces(config, root, root_name):
    """(training set, (images, i, j, same) of the verification pairs (pair k is images[i[k]]
    and images[j[k]], each image once), what the verification is measured on, [(path, why)
    of every skipped file])."""
    train_names, eval_names = split_identities(config, root)
    train_set = data.load_identity_folder(root, config.image_size, config.crop, train_names, min_images=2,
                                          max_images=config.max_images_per_identity)
    skipped = list(train_set.skipped)
    eval_root = config.eval_root or root
    same_root = os.path.realpath(eval_root) == os.path.realpath(root)
    eval_name = root_name if same_root else eval_root
    if config.eval_pairs:
        images, i, j, same = evaluate.read_pair_images(eval_root, config.eval_pairs, config.image_size, config.crop)
        measured_on = evaluate.describe_pairs(config.eval_pairs, eval_name, same)
        names = {n for p in evaluate.read_lfw_pairs(config.eval_pairs) for n in (p[0], p[2])}
        trained_on = len(names & set(train_set.names))
        if trained_on:
            measured_on += f", {trained_on} of their {len(names)} identities {_trained_on(same_root, root_name)}"
        return train_set, (images, i, j, same), measured_on, skipped
    eval_set = data.load_identity_folder(eval_root, config.image_size, config.crop, eval_names)
    skipped += [s for s in eval_set.skipped if s not in skipped]
    i, j, same = evaluate.all_pairs(eval_set.labels)
    counts = f"all {len(same)} pairs ({int(same.sum())} genuine)"
    trained_on = len(set(eval_set.names) & set(train_set.names))
    if trained_on == 0:
        measured_on = f"on {counts} of the {len(eval_set.names)} identities of {eval_name} held out from training"
    elif not same_root:
        measured_on = (f"on {counts} of {len(eval_set.names)} identities of {eval_name}, {trained_on} of them "
                       f"{_trained_on(same_root, root_name)}")
    elif trained_on == len(eval_set.names):
        images = "the training identities" if config.max_images_per_identity else "the training images"
        measured_on = f"on {images}: {counts} of the {trained_on} training identities of {eval_name}"
    else:
        measured_on = (f"on {counts} of {len(eval_set.names)} identities of {eval_name}, {trained_on} of them "
                       f"trained on")
    return train_set, (eval_set.images, i, j, same), measured_on, skipped


def _trained_on(same_root, root_name):
    """How verification identities that share a training identity's name are described:
    under another root the same name is taken to be the same person, but said as a name."""
    return "trained on" if same_root else f"named like training identities of {root_name} (trained on)"


def faces_digest(train_set, verification):
    """SHA-256 of the faces a run trains and verifies on: the training images and labels,
    the verification images and pairs (whatever paths they are read from)."""
    digest = hashlib.sha256()
    for array in (train_set.images, train_set.labels, *verification):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def check_same_faces(state, train_names, faces, run_dir):
    """A resume trains and verifies on the faces the run started with (older checkpoints
    do not record them)."""
    if "train_identity_names" in state:
        before = [str(n) for n in state["train_identity_names"]]
        if before != list(train_names):
            added, removed = sorted(set(train_names) - set(before)), sorted(set(before) - set(train_names))
            raise ValueError(f"--resume: the run in {run_dir} trained on {len(before)} identities, the data now gives "
                             f"{len(train_names)} (added: {added[:5] or 'none'}; gone: {removed[:5] or 'none'}); a "
                             "resume needs the faces the run started with: restore them, or start a new run")
    if "faces_digest" in state and str(state["faces_digest"]) != faces:
        raise ValueError(f"--resume: the faces the run in {run_dir} trained or verified on changed since it started "
                         "(the same identities, but images added, removed or edited, or other verification pairs); a "
                         "resume needs the faces the run started with: restore them, or start a new run")


def method_label(config, short=False):
    """What the trained model was trained with, for the output (short: the ROC legend)."""
    if config.method == "sst":
        return f"SST, {config.loss}" if short else f"SST: {config.loss} over gallery prototypes"
    if config.backbone == "cnn":
        return f"cnn, {config.loss}"
    return config.loss


class Progress:
    """Per batch when stderr is a terminal (tqdm: images/s, loss, time left of the epoch
    and of the run); nothing per batch otherwise, where the per-epoch lines on stdout are
    the record."""

    def __init__(self, epochs, batches, enabled):
        self.epochs, self.batches, self.enabled = epochs, batches, enabled
        self.epoch_seconds = []
        self.bar = None

    def start(self, epoch):
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.batches, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", leave=False,
                            dynamic_ncols=True, file=sys.stderr)

    def update(self, epoch, loss, images_per_second, elapsed):
        if self.bar:
            epoch_left = elapsed / max(self.bar.n + 1, 1) * (self.batches - self.bar.n - 1)
            per_epoch = np.mean(self.epoch_seconds) if self.epoch_seconds else elapsed + epoch_left
            run_left = epoch_left + per_epoch * (self.epochs - epoch - 1)
            self.bar.set_postfix_str(f"loss {loss:.4f}, {images_per_second:.0f} img/s, run {run_left:.0f} s left",
                                     refresh=False)
            self.bar.update(1)

    def end(self, seconds):
        self.epoch_seconds.append(seconds)
        if self.bar:  # the epoch's last state, which tqdm's rate limit may have left undrawn
            self.bar.refresh()
        self.close()

    def close(self):
        if self.bar:
            self.bar.close()
            self.bar = None


def run(config, notes=()):
    """Trains, verifies and exports one run (config and notes from configure).
    Returns the (descriptor, trained) verification metrics."""
    log = Log()
    status = types.SimpleNamespace(run_dir=None, claimed=False, epoch=0, progress=None, lock=None)
    try:
        return _run(config, log, status, notes)
    except (ValueError, FileNotFoundError, MemoryError) as error:
        if status.progress:
            status.progress.close()
        log.failed(error)
        raise
    except OSError as error:  # a full disk, a read-only or vanished run directory
        if status.progress:
            status.progress.close()
        failure = ValueError(f"cannot {'write' if status.claimed else 'read or write'} "
                             f"{error.filename or 'a file'}: {error.strerror or error}")
        log.failed(failure)
        raise failure from None
    except KeyboardInterrupt:
        if status.progress:
            status.progress.close()
        print(interrupted_message(config, status), file=sys.stderr, flush=True)
        raise SystemExit(130)
    finally:
        log.close()
        if status.lock:
            status.lock.close()


def write_config(run_dir, stored):
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(stored, f, indent=2, sort_keys=True)


def interrupted_message(config, status):
    if not status.claimed:
        return "faceops train: interrupted before training started; nothing was written"
    checkpoint = os.path.join(status.run_dir, rundir.CHECKPOINT)
    if not os.path.isfile(checkpoint):
        return (f"faceops train: interrupted in epoch {status.epoch + 1}/{config.epochs}, before the first checkpoint; "
                f"nothing to resume (start again with --run-dir {status.run_dir} --overwrite)")
    state = rundir.read_checkpoint(checkpoint)
    done = int(state["epoch"])
    stored = rundir.stored_configuration(state, checkpoint) or {}
    where = f"in epoch {status.epoch + 1}/{config.epochs}" if status.epoch < config.epochs else \
        "after the last epoch, before the metrics and the ONNX model were written"
    # A resume's overrides that no checkpoint holds yet go into the command that continues it.
    overrides = "".join(f" {_option(name)} {getattr(config, name)}" for name in RESUME_OVERRIDES
                        if name in stored and stored[name] != getattr(config, name))
    return (f"faceops train: interrupted {where}; the last checkpoint is {checkpoint} (after epoch {done}); "
            f"continue with: faceops train --run-dir {status.run_dir} --resume{overrides}")


def _run(config, log, status, notes=()):
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="faceops-synthetic-") as scratch:
        if config.data is None:
            root, root_name = scratch, SYNTHETIC_NAME
            data.write_synthetic_identities(root, SYNTHETIC["identities"], SYNTHETIC["images_per_identity"],
                                            size=config.image_size, seed=config.seed)
            config.train_identities = config.train_identities or SYNTHETIC["train"]
            config.eval_identities = config.eval_identities or SYNTHETIC["eval"]
            config.epochs = config.epochs or SYNTHETIC["epochs"]
            log(f"no --data: drew {SYNTHETIC_NAME} ({SYNTHETIC['identities']} identities x "
                f"{SYNTHETIC['images_per_identity']} images); training on {SYNTHETIC['train']}, verifying on "
                f"{SYNTHETIC['eval']}")
        else:
            root, root_name = config.data, config.data
        # The cnn's default: its best measured length on LFW DevTrain (docs/driver.md, "On LFW DevTest").
        config.epochs = config.epochs or (CNN_EPOCHS if config.backbone == "cnn" else 15)
        resolve_defaults(config)
        train_set, (eval_images, eval_i, eval_j, same), measured_on, skipped = load_faces(config, root, root_name)
    if skipped:
        log(data.describe_skipped(skipped))
    xp = np
    if config.device == "cuda":
        import cupy as xp

    shallow = f" (at most {config.max_images_per_identity} each)" if config.max_images_per_identity else ""
    log(f"train: {len(train_set.labels)} images of {len(train_set.names)} identities{shallow}; "
        f"verification {measured_on}")
    genuine, impostors = int(np.sum(same)), int(np.sum(~same))
    if min(genuine, impostors) < 10:
        raise ValueError(f"verification {measured_on}: 10-fold verification needs at least 10 genuine and 10 impostor "
                         f"pairs; verify on more faces (--holdout, --eval-identities, --eval-pairs)")
    # Before the untrained verification, so that a batch too large for the data fails at once.
    sampler = data.PKSampler(train_set.labels, config.identities_per_batch, config.images_per_identity)
    # Each verification image is described and embedded once, then paired.
    eval_descriptors = model.describe(eval_images, config.descriptor)
    baseline, baseline_roc = evaluate.verify(eval_descriptors[eval_i], eval_descriptors[eval_j], same)
    log(f"untrained ({config.descriptor} descriptor alone), {measured_on}: {baseline.summary()}")

    trainer = torch_model.TorchTrainer(config, train_set) if config.backbone == "cnn" else Trainer(config, train_set, xp)
    faces = faces_digest(train_set, (eval_images, eval_i, eval_j, same))
    checkpointed_config = None
    if config.resume:
        checkpoint = os.path.join(config.run_dir, rundir.CHECKPOINT)
        state = rundir.read_checkpoint(checkpoint)
        check_same_faces(state, train_set.names, faces, config.run_dir)
        try:
            trainer.load_state(state)
        except KeyError as missing:
            raise ValueError(f"{checkpoint}: not a complete faceops checkpoint (it has no {missing})") from None
        except (TypeError, ValueError, RuntimeError, IndexError) as error:  # our checks', NumPy's, torch's
            raise ValueError(f"{checkpoint}: not a checkpoint this run can continue from "
                             f"({' '.join(str(error).split())[:300]})") from None
        if trainer.epoch < 1:
            raise ValueError(f"{checkpoint}: not a checkpoint this run can continue from (its epoch is "
                             f"{trainer.epoch}; a checkpoint is written after epoch 1 or a later one)")
        checkpointed_config = rundir.stored_configuration(state, checkpoint)
        if config.epochs < trainer.epoch:
            raise ValueError(f"--epochs {config.epochs}: the run in {config.run_dir} has already trained "
                             f"{trainer.epoch} epochs")
        status.run_dir = config.run_dir
    elif config.run_dir:
        status.run_dir = config.run_dir
        rundir.check_new_run_dir(status.run_dir, config.overwrite)

    # Training starts: from here on the run directory is written.
    if status.run_dir is None:
        status.run_dir = rundir.make_fresh_run_dir()
    status.lock = rundir.lock(status.run_dir)
    removed = rundir.claim(status.run_dir, replace=config.overwrite and not config.resume)
    status.claimed = True
    # config.json says what the last checkpoint was trained with: a resume rewrites it from
    # the checkpoint (restoring a deleted or broken one), and its overrides join it with the
    # next checkpoint, so a resume interrupted before that is not labelled with them.
    if not config.resume:
        write_config(status.run_dir, run_configuration(config))
    elif checkpointed_config is not None:
        write_config(status.run_dir, checkpointed_config)
    log.attach(os.path.join(status.run_dir, "log.txt"))
    if removed:
        log(f"removed {len(removed)} temporary checkpoint file(s) of an interrupted write: {', '.join(removed)}")
    if config.resume:
        log(f"resumed {status.run_dir} after epoch {trainer.epoch} of {config.epochs}"
            + (f"; overriding {', '.join(notes)}" if notes else ""))
        if trainer.epoch < config.epochs:
            stale = rundir.remove_results(status.run_dir)
            if stale:
                log(f"removed the results of the model after epoch {trainer.epoch} ({', '.join(stale)}); "
                    f"they are written again for epoch {config.epochs}")
    if config.run_dir is None and rundir.link_latest(status.run_dir):
        log(f"run directory {status.run_dir} ({rundir.LATEST} links to it)")

    checkpoint = os.path.join(status.run_dir, rundir.CHECKPOINT)
    status.progress = Progress(config.epochs, sampler.batches_per_epoch(), sys.stderr.isatty())
    status.epoch = trainer.epoch
    while trainer.epoch < config.epochs:
        lr = learning_rate(config, trainer.epoch)
        losses, seen, epoch_start = [], 0, time.time()
        status.progress.start(trainer.epoch)
        for rows in sampler.epoch(trainer.rng):
            images = train_set.images[rows]
            if config.augment != "none":
                images = data.augment(images, trainer.rng, **AUGMENTATIONS[config.augment])
            if not trainer.uses_descriptor:
                loss = trainer.train_batch(images, train_set.labels[rows], lr)
            elif trainer.sst:
                features = model.describe(images, config.descriptor)
                # P x 2 batches: rows 2i and 2i + 1 are the two images of identity i.
                loss, grads = trainer.sst.loss_and_grads(trainer.net, features[0::2], features[1::2],
                                                         train_set.labels[rows[0::2]])
                trainer.step(grads, lr)
                trainer.sst.update(trainer.net, trainer.rng)
            else:
                z, cache = trainer.net.forward(model.describe(images, config.descriptor))
                labels = xp.asarray(train_set.labels[rows])
                loss, dz, head_grads = trainer.loss_and_grad(z, labels)
                grads = trainer.net.backward(dz, cache)
                grads.update(head_grads)
                trainer.step(grads, lr)
            losses.append(loss)
            seen += len(rows)
            elapsed = time.time() - epoch_start
            status.progress.update(trainer.epoch, loss, seen / max(elapsed, 1e-9), elapsed)
        seconds = time.time() - epoch_start
        status.progress.end(seconds)
        if not np.isfinite(np.mean(losses)):
            raise ValueError(f"training diverged in epoch {trainer.epoch + 1}: its training loss is "
                             f"{np.mean(losses)}; the checkpoint holds epoch {trainer.epoch}.  Lower --lr and start "
                             "again (--overwrite)")
        trainer.epoch += 1
        trainer.history.append({"epoch": trainer.epoch, "loss": float(np.mean(losses)), "lr": lr})
        rundir.save_checkpoint(checkpoint, {**trainer.state(), "train_identity_names": np.asarray(train_set.names),
                                            "faces_digest": np.asarray(faces)})
        if notes:
            write_config(status.run_dir, run_configuration(config))
        status.epoch = trainer.epoch  # only now is the epoch on disk: a Ctrl-C from here on is in the next one
        log(f"epoch {trainer.epoch}/{config.epochs}: training loss {np.mean(losses):.4f} (mean over the epoch's "
            f"batches), lr {lr:.4f}, {seen / max(seconds, 1e-9):.0f} images/s")

    if notes:  # a resume of a finished run with another --device trains no epoch
        write_config(status.run_dir, run_configuration(config))
    with np.errstate(over="ignore", invalid="ignore"):  # a diverged network's overflow: check_embeddings says it
        embeddings = trainer.net.embed(eval_descriptors) if trainer.uses_descriptor else trainer.embed(eval_images)
    check_embeddings(embeddings, trainer.epoch)
    trained, trained_roc = evaluate.verify(embeddings[eval_i], embeddings[eval_j], same)
    log(f"trained ({method_label(config)}), {measured_on}: {trained.summary()}")
    evaluate.save_roc_png(os.path.join(status.run_dir, "roc.png"),
                          {f"{config.descriptor} descriptor": baseline_roc,
                           f"trained: {method_label(config, short=True)}": trained_roc},
                          trained.impostors)
    if trainer.uses_descriptor:
        onnx_path = export.to_onnx(trainer.net, os.path.join(status.run_dir, "model.onnx"),
                                   export.preprocessing_of(vars(config)))
    else:
        onnx_path = torch_model.to_onnx(trainer.verification_net(), os.path.join(status.run_dir, "model.onnx"),
                                        torch_model.preprocessing_of(vars(config)))
    metrics = {"measured_on": measured_on, "descriptor": baseline.as_dict(), "trained": trained.as_dict(),
               "history": trainer.history, "seconds": time.time() - started}
    with open(os.path.join(status.run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    log(f"run directory {status.run_dir}: config.json, log.txt, checkpoint.npz, metrics.json, roc.png, "
        f"{os.path.basename(onnx_path)} ({time.time() - started:.0f} s)")
    return baseline, trained


def check_embeddings(embeddings, epochs):
    """The trained model's verification embeddings must be unit vectors: a row that is not
    (NaN, or zero where the network's output overflowed its norm) means training diverged,
    and metrics on it would be garbage."""
    norms = np.linalg.norm(np.asarray(embeddings, np.float64), axis=1)
    diverged = ~(np.abs(norms - 1) < 1e-3)  # NaN counts
    if diverged.any():
        raise ValueError(f"training diverged: after {epochs} epochs, {int(diverged.sum())} of {len(norms)} "
                         "verification embeddings are not finite unit vectors (the network's output overflowed); "
                         "no metrics or ONNX model were written.  Lower --lr and start again (--overwrite)")


FLOAT_OPTIONS = ("crop", "holdout", "margin", "center_alpha", "theta", "scale", "m1", "m2", "m3", "sample_rate", "ema",
                 "lr", "momentum", "weight_decay")


def check_arguments(config):
    """Raises ValueError naming the first option out of range."""
    for name in FLOAT_OPTIONS:
        if getattr(config, name) is not None:
            _params.real(_option(name), getattr(config, name))  # NaN and inf name the option
    if config.device == "cuda" and not faceops.cuda_available():
        raise ValueError("--device cuda: faceops has no CUDA device here (faceops.cuda_available() is False)")
    if config.overwrite and not config.run_dir:
        raise ValueError("--overwrite replaces the run in --run-dir: give --run-dir (without it, every run gets a "
                         "new directory)")
    if config.holdout is not None:
        if not 0 <= config.holdout < 1:
            raise ValueError(f"--holdout: expected a fraction in [0, 1), got {config.holdout}")
        if config.train_identities or config.eval_root or config.eval_pairs or config.eval_identities:
            raise ValueError("--holdout: only with --data alone (--train-identities, --eval-root, --eval-pairs "
                             "and --eval-identities choose the verification faces themselves)")
        if config.data is None:
            raise ValueError("--holdout: applies to --data (the built-in synthetic set has its own split)")
    resolve_defaults(config)
    weights = parse_loss(config.loss)
    margin = margin_term(weights)
    if config.backbone == "cnn":
        check_cnn_arguments(config)
    elif config.flip_test:
        raise ValueError("--flip-test: an option of --backbone cnn (the descriptor model's ONNX graph takes the "
                         "descriptor, not the image it could mirror)")
    if config.method == "sst":
        if set(weights) != {margin}:
            raise ValueError(f"--method sst: --loss must be one margin-softmax term ({', '.join(MARGIN_LOSSES)}), "
                             f"got {config.loss!r}")
        if config.images_per_identity != 2:
            raise ValueError(f"--method sst: batches hold two images per identity; --images-per-identity must be 2, "
                             f"got {config.images_per_identity}")
        if config.sample_rate != 1.0:
            raise ValueError("--sample-rate: class-centre sampling has no place in --method sst (its prototypes are "
                             "gallery features, not trained class weights)")
        if not 0 <= config.ema < 1:
            raise ValueError(f"--ema: expected a moving-average rate in [0, 1), got {config.ema}")
        if config.queue_size < 0:
            raise ValueError(f"--queue-size: expected a non-negative integer, got {config.queue_size}")
    else:
        for name in ("ema", "queue_size"):
            if getattr(config, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')}: an option of --method sst")
    if margin:
        if not config.scale > 0:
            raise ValueError(f"--scale: expected a positive number, got {config.scale}")
        if not 0 < config.sample_rate <= 1:
            raise ValueError(f"--sample-rate: expected a fraction in (0, 1], got {config.sample_rate}")
        if config.m1 is not None and not config.m1 > 0:
            raise ValueError(f"--m1: expected a positive number, got {config.m1}")
        if config.m2 is not None and config.m2 < 0:
            raise ValueError(f"--m2: expected a non-negative angle (radians), got {config.m2}")
    else:
        given = [f"--{n.replace('_', '-')}" for n in ("scale", "m1", "m2", "m3") if getattr(config, n) is not None]
        if given or config.sample_rate != 1.0:
            raise ValueError(f"{(given or ['--sample-rate'])[0]}: applies to the margin-softmax losses "
                             f"({', '.join(MARGIN_LOSSES)}), and --loss {config.loss!r} has none")
    if config.max_images_per_identity is not None and config.max_images_per_identity < 2:
        raise ValueError(f"--max-images-per-identity: expected at least 2 (training pairs an identity's images), "
                         f"got {config.max_images_per_identity}")
    for name in ("epochs", "image_size", "identities_per_batch", "rank"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(config, name)}")
    if config.rank > MAX_WIDTH:
        raise ValueError(f"--rank: expected 1 to {MAX_WIDTH}, got {config.rank}")
    if not 0 <= config.hidden <= MAX_WIDTH:
        raise ValueError(f"--hidden: expected 0 (no hidden layer) to {MAX_WIDTH} units, got {config.hidden}")
    if config.images_per_identity < 2:
        raise ValueError("--images-per-identity: expected at least 2, so that every anchor has a positive")
    if not 16 <= config.image_size <= MAX_IMAGE_SIZE:
        raise ValueError(f"--image-size: expected 16 to {MAX_IMAGE_SIZE} pixels, got {config.image_size}")
    if not 0 <= config.seed < 2**63:
        raise ValueError(f"--seed: expected an integer in [0, 2^63), got {config.seed}")
    if not 0 < config.crop <= 1:
        raise ValueError(f"--crop: expected a fraction in (0, 1], got {config.crop}")
    if config.lr <= 0 or config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise ValueError("--lr must be > 0, --weight-decay >= 0 and --momentum in [0, 1)")
    if config.eval_pairs and not os.path.isfile(config.eval_pairs):
        raise ValueError(f"--eval-pairs: {config.eval_pairs!r} is not a file")
    if config.eval_pairs and config.eval_identities:
        raise ValueError("--eval-pairs and --eval-identities choose different protocols: give one")


def check_cnn_arguments(config):
    """--backbone cnn: torch present (and CUDA for --device cuda), and no option it does not support."""
    torch = torch_model.require_torch("--backbone cnn")
    if config.method == "sst":
        raise ValueError("--backbone cnn: --method sst is not supported with it (SST's gallery network is the NumPy "
                         "model's); use --method standard, or --backbone descriptor for SST")
    if config.hidden:
        raise ValueError(f"--hidden {config.hidden}: an option of --backbone descriptor (the cnn's size is fixed; "
                         f"--rank sets its embedding size)")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch has no CUDA device here (torch.cuda.is_available() is False); "
                         "--backbone cnn runs on --device cpu")


def configure(argv):
    """(configuration, notes on the options a --resume overrides) of a command line."""
    config = build_parser().parse_args(argv)
    notes = []
    if config.resume:
        config, notes = resume_configuration(config, options_given(argv))
    check_arguments(config)
    if not config.resume and config.run_dir:
        rundir.check_new_run_dir(config.run_dir, config.overwrite)
    elif not config.resume:
        rundir.check_fresh_run_dir_possible()
    return config, notes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run(*configure(argv))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"faceops train: {error}")
    except MemoryError as error:
        raise SystemExit(f"faceops train: out of memory ({error or 'no detail'}); lower --image-size or "
                         "--identities-per-batch, or free memory")
    except KeyboardInterrupt:  # while reading the command line's run; run() reports its own
        print("faceops train: interrupted before training started; nothing was written", file=sys.stderr)
        return 130
    return 0


def _np(a):
    return a if isinstance(a, np.ndarray) else a.get()
