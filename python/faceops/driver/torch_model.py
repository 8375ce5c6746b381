"""`faceops train --backbone cnn`: a small residual CNN (PyTorch) on the aligned grey
crop the driver prepares, trained by torch.optim.SGD with the faceops.torch losses,
checkpointed inside the driver's checkpoint.npz and exported with torch.onnx.

torch is imported only by the functions here, on first use: the default NumPy
backbone never needs it."""

import copy
import io
import json
import os
import pickle
import warnings

import numpy as np

from faceops.driver import export

INPUT_NAME, OUTPUT_NAME = "image", "embedding"
# The ONNX operator set: one that OpenCV DNN (4.x) reads, as the NumPy model's export.
OPSET = 13
TORCH_STATE = "torch_state"
INSTALL_HINT = "pip install 'faceops[torch]'"


def require_torch(option="--backbone cnn"):
    """The torch module, or a ValueError naming `option` and the install command."""
    try:
        import torch
    except ImportError:
        raise ValueError(f"{option}: needs PyTorch, which is not installed here; {INSTALL_HINT} "
                         f"(torch==2.13.0)") from None
    return torch


def build_network(embedding_size):
    """The CNN (an nn.Module): (N, 1, S, S) images in [0, 1] -> (N, embedding_size),
    not normalised.  A ResNet (He et al., CVPR 2016) cut down for 2 CPU cores: a
    stride-2 stem and three stride-2 basic blocks (16 -> 32 -> 64 -> 128 channels),
    then insightface's embedding head (BN, flatten, linear, BN; Deng et al. 2019,
    fig. 8 "E"), which keeps the spatial layout a global pooling would average away."""
    torch = require_torch()
    from torch import nn

    class BasicBlock(nn.Module):
        def __init__(self, inputs, outputs, stride):
            super().__init__()
            self.residual = nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False), nn.BatchNorm2d(outputs), nn.ReLU(inplace=True),
                nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False), nn.BatchNorm2d(outputs))
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.residual(x) + self.shortcut(x))

    class FaceCNN(nn.Module):
        def __init__(self, embedding_size):
            super().__init__()
            self.embedding_size = embedding_size
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                BasicBlock(16, 32, 2), BasicBlock(32, 64, 2), BasicBlock(64, 128, 2), nn.BatchNorm2d(128))
            self.embedding = None  # the linear layer, sized by the first call's image size (see sized_for)
            self.embedding_norm = nn.BatchNorm1d(embedding_size)

        def sized_for(self, image_size):
            with torch.no_grad():
                cells = self.features(torch.zeros(2, 1, image_size, image_size)).flatten(1).shape[1]
            self.embedding = nn.Linear(cells, self.embedding_size)
            return self

        def forward(self, images):
            return self.embedding_norm(self.embedding(self.features(images - 0.5).flatten(1)))

    return FaceCNN(embedding_size)


def network_for(config):
    return build_network(config["rank"]).sized_for(config["image_size"])


def with_flip_test(net):
    """The network of the flip test (insightface, recognition/arcface_torch/eval/verification.py,
    `test`): net(image) + net(mirrored image), before the L2 normalisation.  The mirror
    (torch.flip over the width) exports as one ONNX Slice with step -1, which OpenCV DNN runs."""
    torch = require_torch()

    class FlipTest(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net, self.embedding_size = net, net.embedding_size

        def forward(self, images):
            return self.net(images) + self.net(images.flip(3))

    return FlipTest(net)


def verification_network(net, config):
    """What verification and the ONNX model run: the network, or with --flip-test its flip test.
    A run configured before --flip-test existed (no flip_test key) had none."""
    return with_flip_test(net) if config.get("flip_test") else net


def _weight_decayed(parameter):
    """Weight decay on the convolution and linear weights, not on BN or biases (as the NumPy model)."""
    return parameter.dim() > 1


class TorchTrainer:
    """The `--backbone cnn` counterpart of train.Trainer: owns the network, the loss
    modules (class weights, centres, theta), the SGD optimiser and the generators;
    `state()`/`load_state()` are what checkpoint.npz holds."""

    uses_descriptor = False

    def __init__(self, config, train_set):
        torch = require_torch()
        import faceops.torch as ft
        from faceops.driver import train

        self.torch, self.config = torch, config
        self.device = torch.device(config.device)
        self.weights = train.parse_loss(config.loss)
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        classes, dim = len(train_set.names), config.rank
        # channels_last: oneDNN's faster convolution layout on the CPU (several times so, measured here).
        self.net = network_for(vars(config)).to(self.device, memory_format=torch.channels_last)
        self.losses = torch.nn.ModuleDict()
        margin = train.margin_term(self.weights)
        if "softmax" in self.weights:
            # The NumPy model's head: NormFace, scale 16 (model.SoftmaxHead).
            self.losses["softmax"] = ft.MarginSoftmaxLoss(classes, dim, 16.0, "normface")
        if margin:
            self.losses[margin] = ft.MarginSoftmaxLoss(classes, dim, config.scale, train.margins_of(config),
                                                       config.sample_rate)
        if "center" in self.weights:
            self.losses["center"] = ft.CenterLoss(classes, dim, alpha=config.center_alpha)
        if "triplet" in self.weights:
            self.losses["triplet"] = ft.TripletLoss(config.margin, config.mining)
        if "pair" in self.weights:
            self.losses["pair"] = ft.PairLoss(config.theta)
        if "contrastive" in self.weights:
            self.losses["contrastive"] = ft.ContrastiveLoss(1.0)
        self.losses.to(self.device)
        decayed = [p for p in self.net.parameters() if _weight_decayed(p)]
        others = [p for p in self.net.parameters() if not _weight_decayed(p)]
        # Class weights and theta: no decay (the rows are normalised; theta is a threshold).
        others += [p for p in self.losses.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD([{"params": decayed, "weight_decay": config.weight_decay},
                                          {"params": others, "weight_decay": 0.0}],
                                         lr=config.lr, momentum=config.momentum)
        self.epoch = 0
        self.history = []

    def _contrastive(self, z, labels):
        """The NumPy model's pairs of a P x K batch: row i with its identity neighbour
        (similar) and with the row K places on (another identity: dissimilar)."""
        torch, n, k = self.torch, len(z), self.config.images_per_identity
        rows = torch.arange(n, device=z.device)
        same_partner = rows ^ 1 if k % 2 == 0 else (rows // k) * k + (rows + 1) % k
        other_partner = (rows + k) % n
        a = torch.cat([z, z])
        b = torch.cat([z[same_partner], z[other_partner]])
        similar = torch.cat([torch.ones(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)]).to(z.device)
        return self.losses["contrastive"](a, b, similar)

    def train_batch(self, images, labels, lr):
        """One SGD step on a batch of images (N, S, S) with labels (N,); returns the loss."""
        torch = self.torch
        for group in self.optimizer.param_groups:
            group["lr"] = float(lr)  # a Python float: the checkpoint is loaded with weights_only
        self.net.train()
        self.losses.train()
        x = torch.from_numpy(np.ascontiguousarray(images[:, None], np.float32))
        x = x.to(self.device, memory_format=torch.channels_last)
        y = torch.from_numpy(np.asarray(labels, np.int64)).to(self.device)
        z = torch.nn.functional.normalize(self.net(x), dim=1)
        total = 0.0
        for name, weight in self.weights.items():
            term = self._contrastive(z, y) if name == "contrastive" else self.losses[name](z, y)
            total = total + weight * term
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return float(total.detach())

    def verification_net(self):
        return verification_network(self.net, vars(self.config))

    def embed(self, images, batch=256):
        return embed_images(self.verification_net(), images, self.device, batch)

    def state(self):
        from faceops.driver import train

        blob = io.BytesIO()
        generators = {"cpu": self.torch.get_rng_state()}
        if self.device.type == "cuda":
            generators["cuda"] = self.torch.cuda.get_rng_state(self.device)
        self.torch.save({"net": self.net.state_dict(), "losses": self.losses.state_dict(),
                         "optimizer": self.optimizer.state_dict(), "generators": generators}, blob)
        return {TORCH_STATE: np.frombuffer(blob.getvalue(), np.uint8), "epoch": np.asarray(self.epoch),
                "history": np.asarray(json.dumps(self.history)),
                "rng": np.asarray(json.dumps(self.rng.bit_generator.state)),
                "config": np.asarray(json.dumps(train.run_configuration(self.config), sort_keys=True))}

    def load_state(self, state):
        """Restores a checkpoint; one of another run (other options, other data) is an
        error naming what differs."""
        if TORCH_STATE not in state:
            raise ValueError(f"the checkpoint has no {TORCH_STATE}: it was written by a run with other options")
        saved = _load_torch_state(state[TORCH_STATE])
        try:
            self.net.load_state_dict(saved["net"])
            self.losses.load_state_dict(saved["losses"])
        except RuntimeError as error:
            raise ValueError(f"the checkpoint's network or loss state does not fit this run (the training data, its "
                             f"identities, changed since the run started?): {' '.join(str(error).split())[:300]}") from None
        self.optimizer.load_state_dict(saved["optimizer"])
        self.torch.set_rng_state(saved["generators"]["cpu"])
        if self.device.type == "cuda" and "cuda" in saved["generators"]:
            self.torch.cuda.set_rng_state(saved["generators"]["cuda"], self.device)
        self.epoch = int(state["epoch"])
        self.history = json.loads(str(state["history"]))
        self.rng.bit_generator.state = json.loads(str(state["rng"]))


def _load_torch_state(array):
    """The dict a cnn checkpoint's torch_state array holds, or a ValueError saying it is not one."""
    torch = require_torch()
    try:
        saved = torch.load(io.BytesIO(np.asarray(array, np.uint8).tobytes()), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError) as error:  # torch.load's
        raise ValueError(f"its {TORCH_STATE} is not the torch.save bytes of a --backbone cnn run "
                         f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(saved, dict):
        raise ValueError(f"its {TORCH_STATE} holds a {type(saved).__name__}, not the state of a --backbone cnn run")
    return saved


def embed_images(net, images, device="cpu", batch=256):
    """L2-normalised embeddings (N, E) float32 of images (N, S, S), in eval mode."""
    torch = require_torch()
    was_training = net.training
    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch, None], np.float32))
            x = x.to(device, memory_format=torch.channels_last)
            out.append(torch.nn.functional.normalize(net(x), dim=1).cpu().numpy())
    net.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, net.embedding_size), np.float32)


def preprocessing_of(config):
    """The metadata's `preprocessing` of a cnn model: the graph takes the prepared image itself."""
    return {"backbone": "cnn", "input": "image", "reference_descriptor": config["descriptor"],
            "image_size": config["image_size"], "crop": config["crop"], "grey": True, "pixel_scale": "1/255",
            "flip_test": bool(config.get("flip_test")),
            "steps": "grey, centre crop keeping `crop` of each side, resize to image_size (INTER_AREA), scale to "
                     "[0, 1], shape (N, 1, image_size, image_size); reference_descriptor is only the descriptor "
                     "`faceops eval` reports beside the model; flip_test: the graph itself adds the embedding of "
                     "the mirrored image (nothing to do for the caller)"}


def to_onnx(net, path, preprocessing):
    """Writes the network (eval mode, on the CPU) as ONNX opset 13 with torch.onnx's
    TorchScript exporter (dynamo=False: no onnxscript needed), then appends the L2
    normalisation as one LpNormalization node (as the NumPy model's export; F.normalize
    would export as ReduceL2/Clip/Expand/Div): image (N, 1, S, S) float32 -> embedding
    (N, E) float32, unit length.  Checked by onnx.checker."""
    torch = require_torch()
    import onnx
    from onnx import helper

    exported = copy.deepcopy(net).to("cpu", memory_format=torch.contiguous_format).eval()
    size = int(preprocessing["image_size"])
    blob = io.BytesIO()
    with warnings.catch_warnings():
        # torch >= 2.9 warns that this exporter is the legacy one (and it calls deprecated
        # internals); the torch.export-based one needs onnxscript (not in faceops[torch]) and
        # writes opset 18 or later, not the 13 of the NumPy model's export.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(exported, (torch.zeros(1, 1, size, size),), blob, input_names=[INPUT_NAME],
                          output_names=["unnormalised"], dynamic_axes={INPUT_NAME: {0: "N"}, "unnormalised": {0: "N"}},
                          opset_version=OPSET, dynamo=False)
    model = onnx.load_from_string(blob.getvalue())
    graph = model.graph
    graph.node.append(helper.make_node("LpNormalization", ["unnormalised"], [OUTPUT_NAME], axis=1, p=2))
    dim = net.embedding_size
    summed = "the sum of the embeddings of the image and of its mirror, " if preprocessing["flip_test"] else ""
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, onnx.TensorProto.FLOAT, ["N", dim]))
    model.producer_name = "faceops"
    metadata = {
        "input": f"{INPUT_NAME}: (N, 1, {size}, {size}) float32, the prepared grey face crop in [0, 1]",
        "output": f"{OUTPUT_NAME}: (N, {dim}) float32, {summed}L2-normalised; compare faces by cosine similarity",
        "preprocessing": json.dumps(preprocessing, sort_keys=True),
    }
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def load_run(run_dir, config):
    """(embed(images) -> embeddings, the trained verification network) of a cnn run's checkpoint.npz."""
    path = os.path.join(run_dir, "checkpoint.npz")
    with np.load(path) as state:
        if TORCH_STATE not in state.files:
            raise ValueError(f"{run_dir}: the checkpoint holds no {TORCH_STATE}, though its configuration says "
                             f"--backbone cnn")
        try:
            saved = _load_torch_state(state[TORCH_STATE])
        except ValueError as error:
            raise ValueError(f"{path} is not a readable faceops checkpoint: {error}") from None
    net = network_for(config).to(memory_format=require_torch().channels_last)  # as in training: the same sums
    try:
        net.load_state_dict(saved["net"])
    except (KeyError, TypeError, RuntimeError) as error:  # no "net", not a state dict, other shapes
        raise ValueError(f"{path}: its network does not fit the run's configuration ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:300]})") from None
    export.check_finite(path, {name: value.detach().numpy() for name, value in net.state_dict().items()
                               if value.is_floating_point()})
    net = verification_network(net, config).eval()
    return (lambda images: embed_images(net, images)), net
