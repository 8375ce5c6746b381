"""The training driver: trains the embedding network on a folder of face images
with faceops losses, evaluates face verification before and after, checkpoints
atomically, and exports the model to ONNX.  `faceops train --help` lists the options."""

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np

import faceops
from faceops.driver import data, evaluate, export, model, sst

# Combined-margin softmax losses (insightface; the margins are faceops.MARGINS).
MARGIN_LOSSES = ("arcface", "cosface", "sphereface", "combined", "normface")
LOSS_NAMES = ("softmax", "center", "triplet", "pair", "contrastive") + MARGIN_LOSSES
METHODS = ("standard", "sst")
AUGMENTATIONS = {"full": {}, "photometric": {"max_shift": 0.0, "max_angle": 0.0, "occlusion": 0.0}, "none": None}


def expand_names(spec):
    """'s1-s3,s7' -> ['s1', 's2', 's3', 's7']; 'id_08-id_10' keeps the zero padding."""
    names = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = re.fullmatch(r"(\D*)(\d+)-\1(\d+)", part)
        if match:
            prefix, first, last = match.groups()
            width = len(first) if first.startswith("0") else 0
            names.extend(f"{prefix}{k:0{width}d}" for k in range(int(first), int(last) + 1))
        else:
            names.append(part)
    return names


def parse_loss(spec):
    """'softmax+0.008*center' -> {'softmax': 1.0, 'center': 0.008}."""
    weights = {}
    for term in spec.split("+"):
        weight, _, name = term.strip().rpartition("*")
        if name not in LOSS_NAMES:
            raise ValueError(f"--loss: unknown term {name!r}; expected terms of {LOSS_NAMES}, e.g. softmax+0.008*center")
        weights[name] = float(weight) if weight else 1.0
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


def build_parser():
    p = argparse.ArgumentParser(prog="faceops train", description=__doc__)
    p.add_argument("--data", help="ROOT/<identity>/<image> training folder (default: a synthetic set drawn with OpenCV)")
    p.add_argument("--train-identities", help="restrict training to these identity folders, e.g. s1-s30")
    p.add_argument("--eval-root", help="images for evaluation (default: --data)")
    p.add_argument("--eval-pairs", help="LFW pairs*.txt protocol over --eval-root; without it, all pairs of --eval-identities")
    p.add_argument("--eval-identities", help="identity folders of --eval-root for the all-pairs protocol, e.g. s31-s40")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--crop", type=float, default=1.0, help="centre crop, fraction of each side kept (LFW deep-funneled: 0.5)")
    p.add_argument("--descriptor", choices=model.DESCRIPTORS, default="lbp")
    p.add_argument("--hidden", type=int, default=0,
                   help="0 (default): the descriptor plus a learned low-rank correction; >0: an MLP with this many ReLU units")
    p.add_argument("--rank", type=int, default=128, help="rank of the correction, or the MLP's embedding size")
    p.add_argument("--loss", help="'+'-joined weighted terms of " + ", ".join(LOSS_NAMES) +
                   " (default: triplet; with --method sst one margin-softmax term, default cosface)")
    p.add_argument("--mining", choices=sorted(faceops.ops.MINING_MODES), default="semihard")
    p.add_argument("--margin", type=float, default=0.2, help="triplet margin (contrastive: 1.0 is used)")
    p.add_argument("--center-alpha", type=float, default=0.5, help="center update rate (Wen et al. eq. 4)")
    p.add_argument("--theta", type=float, default=1.0, help="initial pair-loss threshold")
    p.add_argument("--scale", type=float,
                   help="margin softmax: the scale s of the logits (default 64, as insightface; 32 with --method sst, "
                        "as FaceX-Zoo)")
    for k, meaning in ((1, "multiplicative angular"), (2, "additive angular"), (3, "additive cosine")):
        p.add_argument(f"--m{k}", type=float,
                       help=f"margin softmax: the {meaning} margin m{k} of cos(m1 theta + m2) - m3 "
                            f"(default: the loss's own, faceops.MARGINS)")
    p.add_argument("--sample-rate", type=float, default=1.0,
                   help="margin softmax: Partial FC class-centre sampling, the fraction of classes in each batch's "
                        "softmax (the batch's own classes always; only their weights move)")
    p.add_argument("--method", choices=METHODS, default="standard",
                   help="standard: the losses on P x K batches; sst: Semi-Siamese Training for shallow data (Du et al. "
                        "ECCV 2020): probe net, moving-average gallery net, prototype queue, two images per identity")
    p.add_argument("--ema", type=float, help="sst: the gallery's moving-average rate alpha (default 0.999)")
    p.add_argument("--queue-size", type=int,
                   help="sst: how many gallery features of earlier batches are kept as negative prototypes (FIFO; "
                        "default 512)")
    p.add_argument("--epochs", type=int, help="default: 15 with --data, 60 on the built-in synthetic set")
    p.add_argument("--identities-per-batch", "-P", type=int, default=16)
    p.add_argument("--images-per-identity", "-K", type=int, help="default: 4; --method sst: 2 (the only value)")
    p.add_argument("--max-images-per-identity", type=int,
                   help="train on only the first N images (sorted file order) of each identity: shallow data")
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="full",
                   help="full: flips, brightness/contrast, shifts, rotations, occlusion patches; "
                        "photometric: flips and brightness/contrast only (raw pixels of unaligned faces); none")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--run-dir", default="runs/latest")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.npz")
    return p


class Log:
    """Prints and appends to RUN_DIR/log.txt."""

    def __init__(self, path):
        self.file = open(path, "a")

    def close(self):
        self.file.close()

    def __call__(self, message, end="\n"):
        print(message, end=end, flush=True)
        if end == "\n":
            self.file.write(message + "\n")
            self.file.flush()


def learning_rate(config, epoch):
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1 + np.cos(np.pi * epoch / config.epochs))
    return config.lr * 0.1 ** (epoch // max(1, config.epochs // 3))


class Trainer:
    """Owns the network, the loss state (centers, theta, classifiers, SST's gallery
    and queue) and the optimiser state; `state()`/`load_state()` are what a
    checkpoint holds."""

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
            params["theta"] = self.xp.asarray([self.pair.theta], self.xp.float32)
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
        if self.pair:
            self.pair.theta = float(self.parameters()["theta"][0])

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
        return state

    def load_state(self, state):
        xp = self.xp
        for name, value in self.parameters().items():
            value[...] = xp.asarray(state[f"param_{name}"])
            self.velocity[name] = xp.asarray(state[f"velocity_{name}"])
        if self.pair:
            self.pair.theta = float(state["param_theta"][0])
        if self.center:
            self.center.centers[...] = xp.asarray(state["centers"])
        if self.sst:
            self.sst.load_state(state)
        self.epoch = int(state["epoch"])
        self.history = json.loads(str(state["history"]))
        self.rng.bit_generator.state = json.loads(str(state["rng"]))


def save_checkpoint(path, state):
    """Writes to a temporary file in the same folder, then renames it over the old
    checkpoint: a crash mid-write never leaves a truncated checkpoint."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **state)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load_evaluation(config, train_set):
    """Returns (images_a, images_b, same) of the verification protocol."""
    if config.eval_pairs:
        root = config.eval_root or config.data
        pairs = evaluate.read_lfw_pairs(config.eval_pairs)
        cache = {}

        def image(name, index):
            path = evaluate.lfw_image_path(root, name, index)
            if path not in cache:
                cache[path] = data.read_image(path, config.image_size, config.crop)
                if cache[path] is None:
                    raise FileNotFoundError(f"--eval-pairs names {path}, which cannot be read")
            return cache[path]

        a = np.stack([image(n1, i1) for n1, i1, _, _, _ in pairs])
        b = np.stack([image(n2, i2) for _, _, n2, i2, _ in pairs])
        return a, b, np.array([p[4] for p in pairs])
    identities = expand_names(config.eval_identities) if config.eval_identities else None
    eval_set = data.load_identity_folder(config.eval_root or config.data, config.image_size, config.crop, identities)
    i, j, same = evaluate.all_pairs(eval_set.labels)
    return eval_set.images[i], eval_set.images[j], same


def run(config):
    os.makedirs(config.run_dir, exist_ok=True)
    log = Log(os.path.join(config.run_dir, "log.txt"))
    try:
        return _run(config, log)
    finally:
        log.close()


def _run(config, log):
    started = time.time()
    if config.data is None:
        root = os.path.join(config.run_dir, "synthetic_faces")
        data.write_synthetic_identities(root, identities=60, images_per_identity=8, size=config.image_size, seed=config.seed)
        config.data = root
        config.train_identities = config.train_identities or "id_000-id_039"
        config.eval_identities = config.eval_identities or "id_040-id_059"
        config.epochs = config.epochs or 60
        log(f"no --data: drew 60 synthetic identities x 8 images into {root}; training on 40, verifying all pairs of the other 20")
    config.epochs = config.epochs or 15
    resolve_defaults(config)
    with open(os.path.join(config.run_dir, "config.json"), "w") as f:
        json.dump(vars(config), f, indent=2, sort_keys=True)
    xp = np
    if config.device == "cuda":
        if not faceops.cuda_available():
            raise SystemExit("--device cuda: faceops has no CUDA device here (faceops.cuda_available() is False)")
        import cupy as xp

    identities = expand_names(config.train_identities) if config.train_identities else None
    train_set = data.load_identity_folder(config.data, config.image_size, config.crop, identities, min_images=2,
                                          max_images=config.max_images_per_identity)
    eval_a, eval_b, same = load_evaluation(config, train_set)
    shallow = f" (at most {config.max_images_per_identity} each)" if config.max_images_per_identity else ""
    log(f"train: {len(train_set.labels)} images of {len(train_set.names)} identities{shallow}; "
        f"verification: {len(same)} pairs ({int(same.sum())} genuine)")

    descriptor_a = model.describe(eval_a, config.descriptor)
    descriptor_b = model.describe(eval_b, config.descriptor)
    baseline, baseline_roc = evaluate.verify(descriptor_a, descriptor_b, same)
    log(f"untrained ({config.descriptor} descriptor alone): {baseline.summary()}")

    trainer = Trainer(config, train_set, xp)
    checkpoint = os.path.join(config.run_dir, "checkpoint.npz")
    if config.resume:
        if not os.path.exists(checkpoint):
            raise SystemExit(f"--resume: no checkpoint at {checkpoint}")
        with np.load(checkpoint) as state:
            trainer.load_state(dict(state))
        log(f"resumed from {checkpoint} after epoch {trainer.epoch}")
    sampler = data.PKSampler(train_set.labels, config.identities_per_batch, config.images_per_identity)
    if sampler.batches_per_epoch() == 0:
        raise SystemExit("too few identities for one P x K batch: lower --identities-per-batch")
    while trainer.epoch < config.epochs:
        lr = learning_rate(config, trainer.epoch)
        losses, seen, epoch_start = [], 0, time.time()
        for b, rows in enumerate(sampler.epoch(trainer.rng)):
            images = train_set.images[rows]
            if config.augment != "none":
                images = data.augment(images, trainer.rng, **AUGMENTATIONS[config.augment])
            features = model.describe(images, config.descriptor)
            if trainer.sst:
                # P x 2 batches: rows 2i and 2i + 1 are the two images of identity i.
                loss, grads = trainer.sst.loss_and_grads(trainer.net, features[0::2], features[1::2],
                                                         train_set.labels[rows[0::2]])
                trainer.step(grads, lr)
                trainer.sst.update(trainer.net, trainer.rng)
            else:
                z, cache = trainer.net.forward(features)
                labels = xp.asarray(train_set.labels[rows])
                loss, dz, head_grads = trainer.loss_and_grad(z, labels)
                grads = trainer.net.backward(dz, cache)
                grads.update(head_grads)
                trainer.step(grads, lr)
            losses.append(loss)
            seen += len(rows)
            if sys.stdout.isatty():
                rate = seen / max(time.time() - epoch_start, 1e-9)
                print(f"\repoch {trainer.epoch + 1}/{config.epochs} batch {b + 1}/{sampler.batches_per_epoch()} "
                      f"loss {loss:.4f} lr {lr:.4f} {rate:.0f} img/s", end="", flush=True)
        trainer.epoch += 1
        rate = seen / max(time.time() - epoch_start, 1e-9)
        trainer.history.append({"epoch": trainer.epoch, "loss": float(np.mean(losses)), "lr": lr})
        log(("\r" if sys.stdout.isatty() else "") +
            f"epoch {trainer.epoch}/{config.epochs}: loss {np.mean(losses):.4f}, lr {lr:.4f}, {rate:.0f} images/s")
        save_checkpoint(checkpoint, trainer.state())

    trained, trained_roc = evaluate.verify(trainer.net.embed(descriptor_a), trainer.net.embed(descriptor_b), same)
    log(f"trained ({config.loss}): {trained.summary()}")
    evaluate.save_roc_png(os.path.join(config.run_dir, "roc.png"),
                          {f"{config.descriptor} descriptor": baseline_roc, f"trained: {config.loss}": trained_roc})
    onnx_path = export.to_onnx(trainer.net, os.path.join(config.run_dir, "model.onnx"), export.preprocessing_of(vars(config)))
    metrics = {"descriptor": vars(baseline), "trained": vars(trained), "history": trainer.history,
               "seconds": time.time() - started}
    with open(os.path.join(config.run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, default=float)
    log(f"run directory {config.run_dir}: config.json, log.txt, metrics.json, roc.png, {os.path.basename(onnx_path)}, "
        f"checkpoint.npz ({time.time() - started:.0f} s)")
    return baseline, trained


def check_arguments(config):
    """Raises ValueError naming the first option out of range."""
    resolve_defaults(config)
    weights = parse_loss(config.loss)
    margin = margin_term(weights)
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
    if config.images_per_identity < 2:
        raise ValueError("--images-per-identity: expected at least 2, so that every anchor has a positive")
    if config.image_size < 16:
        raise ValueError(f"--image-size: expected at least 16 pixels, got {config.image_size}")
    if not 0 < config.crop <= 1:
        raise ValueError(f"--crop: expected a fraction in (0, 1], got {config.crop}")
    if config.lr <= 0 or config.weight_decay < 0 or not 0 <= config.momentum < 1:
        raise ValueError("--lr must be > 0, --weight-decay >= 0 and --momentum in [0, 1)")
    if config.eval_pairs and not os.path.isfile(config.eval_pairs):
        raise ValueError(f"--eval-pairs: {config.eval_pairs!r} is not a file")
    if config.eval_pairs and config.eval_identities:
        raise ValueError("--eval-pairs and --eval-identities choose different protocols: give one")


def main(argv=None):
    config = build_parser().parse_args(argv)
    try:
        check_arguments(config)
        run(config)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"faceops train: {error}")
    return 0


def _np(a):
    return a if isinstance(a, np.ndarray) else a.get()
