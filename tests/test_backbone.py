"""`faceops train --backbone cnn`: the torch CNN trained with the faceops.torch losses.
Its loss goes down and every trained tensor (network, class weights, centres, theta)
moves; a resumed run equals an uninterrupted one bitwise; the ONNX export passes
onnx.checker and OpenCV DNN reproduces the torch forward, with the flip test (the sum
over the image and its mirror) in the graph; `faceops export` and
`faceops eval` take cnn runs; options it does not support are refused by name, and
without torch the option says how to install it."""

import json
import os
import shutil
import sys

import cv2
import numpy as np
import pytest

from faceops import cli
from faceops.driver import data, train

torch = pytest.importorskip("torch", reason="--backbone cnn needs torch (pip install 'faceops[torch]')")
onnx = pytest.importorskip("onnx", reason="the export check needs onnx")

from faceops.driver import torch_model  # noqa: E402

TINY = ["--backbone", "cnn", "--train-identities", "id_000-id_009", "--eval-identities", "id_010-id_013",
        "--image-size", "32", "-P", "4"]
# float32 through 8 convolutions, BN and a linear layer: OpenCV DNN and torch sum in
# other orders (and OpenCV fuses BN into the convolutions), so unit-length embeddings
# agree to about 1e-6; 1e-4 leaves room and still catches any wrong layer or weight.
ONNX_TOLERANCE = 1e-4


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    """The same intra-op thread count for every run, which the bitwise resume check needs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=14, images_per_identity=5,
                                           size=32)


def _train(*argv):
    return train.run(*train.configure(list(argv)))


def _json(*path):
    with open(os.path.join(*path)) as f:
        return json.load(f)


def _torch_state(run_dir):
    with np.load(os.path.join(run_dir, "checkpoint.npz")) as state:
        return torch_model._load_torch_state(state["torch_state"]), int(state["epoch"])


LOSSES = {
    "triplet": [],
    "arcface": [],
    "cosface": ["--sample-rate", "0.5"],
    "softmax+0.008*center": [],
    "pair": [],
    "contrastive": [],
    "triplet+0.5*arcface": [],
}


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_term_trains_the_network_and_its_own_parameters(synthetic_root, loss):
    config, _ = train.configure(["--data", synthetic_root, *TINY, "--loss", loss, *LOSSES[loss], "--lr", "0.05"])
    train.resolve_defaults(config)
    faces = data.load_identity_folder(synthetic_root, 32, 1.0, train.expand_names("id_000-id_009"))
    trainer = torch_model.TorchTrainer(config, faces)
    before = {f"net.{k}": v.clone() for k, v in trainer.net.state_dict().items()}
    before.update({f"losses.{k}": v.clone() for k, v in trainer.losses.state_dict().items()})
    rows = np.concatenate([np.flatnonzero(faces.labels == c)[:4] for c in range(4)])  # one P x K batch
    losses = [trainer.train_batch(faces.images[rows], faces.labels[rows], 0.05) for _ in range(15)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    after = {f"net.{k}": v for k, v in trainer.net.state_dict().items()}
    after.update({f"losses.{k}": v for k, v in trainer.losses.state_dict().items()})
    still = [k for k, v in before.items() if v.dtype.is_floating_point and torch.equal(v, after[k])]
    assert still == [], f"not moved by training: {still}"
    expected = {"pair": ["losses.pair.theta"], "softmax+0.008*center": ["losses.softmax.weight", "losses.center.centers"],
                "arcface": ["losses.arcface.weight"], "cosface": ["losses.cosface.weight"]}.get(loss, [])
    assert set(expected) <= set(after)


def test_a_resumed_run_equals_an_uninterrupted_one_bitwise(tmp_path, synthetic_root):
    # Partial FC (torch's generator) and augmentation (the run's NumPy generator) both in play.
    options = ["--data", synthetic_root, *TINY, "--loss", "triplet+cosface", "--sample-rate", "0.5"]
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    _train("--run-dir", whole, *options, "--epochs", "2")
    _train("--run-dir", parts, *options, "--epochs", "1")
    first, epoch = _torch_state(parts)
    assert epoch == 1
    _train("--run-dir", parts, "--resume", "--epochs", "2")
    (a, epoch_a), (b, epoch_b) = _torch_state(whole), _torch_state(parts)
    assert epoch_a == epoch_b == 2
    for part in ("net", "losses"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key}"
    momenta_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momenta_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert len(momenta_a) == len(momenta_b) > 0 and all(torch.equal(x, y) for x, y in zip(momenta_a, momenta_b))
    assert not torch.equal(first["net"]["embedding.weight"], a["net"]["embedding.weight"])
    metrics = [_json(d, "metrics.json") for d in (whole, parts)]
    assert metrics[0]["trained"] == metrics[1]["trained"]
    assert [h["loss"] for h in metrics[0]["history"]] == [h["loss"] for h in metrics[1]["history"]]


def test_a_resume_with_another_backbone_or_loss_is_refused(tmp_path, synthetic_root):
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "1")
    with pytest.raises(ValueError, match=r"--backbone descriptor \(the run: cnn\)"):
        train.configure(["--run-dir", run_dir, "--resume", "--backbone", "descriptor"])
    with pytest.raises(ValueError, match=r"--loss arcface \(the run: triplet\)"):
        train.configure(["--run-dir", run_dir, "--resume", "--loss", "arcface"])


@pytest.mark.parametrize("damage, message", [
    ("not torch bytes", r"continue from \(its torch_state is not the torch.save bytes of a --backbone cnn run"),
    ("generator", r"not a checkpoint this run can continue from \(.*RNG state"),
    ("optimizer", r"not a checkpoint this run can continue from \(.*parameter groups"),
])
def test_a_cnn_checkpoint_with_hostile_torch_state_is_named_on_resume(tmp_path, synthetic_root, damage, message):
    """Tracebacks (RuntimeError of set_rng_state) or messages naming no file ("it has no 101")."""
    import io

    run_dir = tmp_path / "run"
    _train("--run-dir", str(run_dir), "--data", synthetic_root, *TINY, "--epochs", "1")
    checkpoint = run_dir / "checkpoint.npz"
    with np.load(checkpoint) as state:
        arrays = {name: state[name] for name in state.files}
    saved = torch_model._load_torch_state(arrays["torch_state"])
    if damage == "generator":
        saved["generators"]["cpu"] = torch.zeros(3, dtype=torch.uint8)
    if damage == "optimizer":
        saved["optimizer"]["param_groups"].append(dict(saved["optimizer"]["param_groups"][0]))
    blob = io.BytesIO()
    torch.save(saved, blob)
    arrays["torch_state"] = np.frombuffer(b"hello world" if damage == "not torch bytes" else blob.getvalue(), np.uint8)
    np.savez(checkpoint, **arrays)
    with pytest.raises(SystemExit, match=f"^faceops train: {checkpoint}.*{message}"):
        cli.main(["train", "--run-dir", str(run_dir), "--resume", "--epochs", "2"])


def test_a_resume_on_changed_data_is_an_error_naming_it(tmp_path, synthetic_root):
    root = str(tmp_path / "faces")
    shutil.copytree(synthetic_root, root)
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", root, *TINY, "--loss", "arcface", "--epochs", "1")
    for name in sorted(os.listdir(os.path.join(root, "id_003")))[1:]:  # id_003 no longer trains: 9 classes
        os.unlink(os.path.join(root, "id_003", name))
    with pytest.raises(ValueError, match=r"trained on 10 identities, the data now gives 9 \(added: none; gone: "
                                         r"\['id_003'\]\)"):
        _train("--run-dir", run_dir, "--resume", "--epochs", "2")


def _lfw_format(root, source, identities):
    """source's images as ROOT/<name>/<name>_NNNN.jpg and a pairs file over them."""
    lines = []
    for k, name in enumerate(identities):
        os.makedirs(os.path.join(root, name))
        for j, file in enumerate(sorted(os.listdir(os.path.join(source, name)))):
            cv2.imwrite(os.path.join(root, name, f"{name}_{j + 1:04d}.jpg"), cv2.imread(os.path.join(source, name, file)))
        lines += [f"{name}\t1\t{j}" for j in (2, 3, 4)]
        lines += [f"{name}\t{j}\t{identities[(k + 1) % len(identities)]}\t{j}" for j in (1, 2, 3)]
    pairs = os.path.join(root, "pairs.txt")
    with open(pairs, "w") as f:
        f.write("\n".join([f"1\t{len(lines)}", *lines]) + "\n")
    return pairs


def test_onnx_export_runs_in_opencv_dnn_as_the_torch_forward_and_eval_reads_it(tmp_path, synthetic_root, capsys):
    root = str(tmp_path / "lfw_like")
    pairs = _lfw_format(root, synthetic_root, [f"id_{k:03d}" for k in range(10, 14)])
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, "--backbone", "cnn", "--train-identities",
           "id_000-id_009", "--eval-root", root, "--eval-pairs", pairs, "--image-size", "32", "-P", "4",
           "--crop", "0.8", "--epochs", "2", "--loss", "arcface")
    path = os.path.join(run_dir, "model.onnx")
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded)
    assert max(o.version for o in loaded.opset_import if o.domain in ("", "ai.onnx")) == torch_model.OPSET
    metadata = {p.key: p.value for p in loaded.metadata_props}
    preprocessing = json.loads(metadata["preprocessing"])
    assert preprocessing["backbone"] == "cnn" and preprocessing["input"] == "image"
    assert preprocessing["image_size"] == 32 and preprocessing["crop"] == 0.8
    assert metadata["input"].startswith("image: (N, 1, 32, 32)") and metadata["output"].startswith("embedding: (N, 128)")
    assert [i.name for i in loaded.graph.input] == ["image"] and [o.name for o in loaded.graph.output] == ["embedding"]
    # OpenCV DNN on the exported graph against the checkpoint's network in torch, on real crops.
    faces = data.load_identity_folder(root, 32, 0.8)
    embed, net = torch_model.load_run(run_dir, preprocessing | {"rank": 128})
    dnn = cv2.dnn.readNetFromONNX(path)
    dnn.setInput(np.ascontiguousarray(faces.images[:, None]))
    from_opencv = dnn.forward()
    from_torch = embed(faces.images)
    assert from_opencv.shape == from_torch.shape == (len(faces.images), 128)
    np.testing.assert_allclose(np.linalg.norm(from_opencv, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_opencv, from_torch, atol=ONNX_TOLERANCE)
    # faceops export writes the same graph from the run directory.
    again = str(tmp_path / "again.onnx")
    assert cli.main(["export", run_dir, "-o", again]) == 0
    dnn = cv2.dnn.readNetFromONNX(again)
    dnn.setInput(np.ascontiguousarray(faces.images[:, None]))
    np.testing.assert_allclose(dnn.forward(), from_torch, atol=ONNX_TOLERANCE)
    # faceops eval, of the run and of its ONNX model: the training run's figures.
    trained = _json(run_dir, "metrics.json")
    capsys.readouterr()
    assert cli.main(["eval", run_dir, "--root", root, "--pairs", pairs]) == 0
    evaluated = _json(run_dir, "eval-pairs", "metrics.json")
    assert evaluated["trained"] == trained["trained"] and evaluated["descriptor"] == trained["descriptor"]
    onnx_out = str(tmp_path / "onnx_eval")
    assert cli.main(["eval", path, "--root", root, "--pairs", pairs, "-o", onnx_out]) == 0
    out = capsys.readouterr().out
    assert "lbp descriptor alone" in out and f"ONNX model {path}" in out
    from_onnx = _json(onnx_out, "metrics.json")
    assert from_onnx["trained"]["auc"] == pytest.approx(trained["trained"]["auc"], abs=1e-3)


def test_the_flip_test_embeds_the_sum_over_image_and_mirror_in_torch_and_in_opencv_dnn(tmp_path, synthetic_root):
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "1")  # --flip-test: the cnn's default
    config = _json(run_dir, "config.json")
    assert config["flip_test"] is True
    embed, net = torch_model.load_run(run_dir, config)
    faces = data.load_identity_folder(synthetic_root, 32, 1.0, train.expand_names("id_010-id_013"))
    # The synthetic faces are drawn nearly symmetric; noise images are not.
    images = np.concatenate([faces.images, np.random.default_rng(0).random((8, 32, 32), np.float32)])
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    with torch.no_grad():
        raw = net.net.eval()  # the trained network itself, under the flip test's wrapper
        one, other = (raw(torch.from_numpy(np.ascontiguousarray(x[:, None])).contiguous(
            memory_format=torch.channels_last)) for x in (images, mirrored))
    expected = torch.nn.functional.normalize(one + other, dim=1).numpy()
    got = embed(images)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(embed(mirrored), got, atol=1e-6)  # a face and its mirror: one embedding
    unflipped = torch.nn.functional.normalize(one, dim=1).numpy()
    assert np.abs(got - unflipped).max() > 1e-2, "the flip test changed nothing: the mirror was not added"
    loaded = onnx.load(os.path.join(run_dir, "model.onnx"))
    assert json.loads({p.key: p.value for p in loaded.metadata_props}["preprocessing"])["flip_test"] is True
    dnn = cv2.dnn.readNetFromONNX(os.path.join(run_dir, "model.onnx"))
    dnn.setInput(np.ascontiguousarray(images[:, None]))
    np.testing.assert_allclose(dnn.forward(), expected, atol=ONNX_TOLERANCE)


def test_no_flip_test_and_a_run_configured_before_it_verify_the_network_alone(tmp_path, synthetic_root):
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY, "--epochs", "1", "--no-flip-test")
    config = _json(run_dir, "config.json")
    embed, net = torch_model.load_run(run_dir, config)
    faces = data.load_identity_folder(synthetic_root, 32, 1.0, train.expand_names("id_010-id_013"))
    with torch.no_grad():
        expected = torch.nn.functional.normalize(net(torch.from_numpy(faces.images[:, None])), dim=1).numpy()
    assert not hasattr(net, "net")
    np.testing.assert_allclose(embed(faces.images), expected, atol=1e-6)
    dnn = cv2.dnn.readNetFromONNX(os.path.join(run_dir, "model.onnx"))
    dnn.setInput(np.ascontiguousarray(faces.images[:, None]))
    np.testing.assert_allclose(dnn.forward(), expected, atol=ONNX_TOLERANCE)
    # A checkpoint whose configuration has no flip_test (written before the option) resumes without it.
    path = os.path.join(run_dir, "checkpoint.npz")
    with np.load(path) as state:
        state = dict(state)
    old = json.loads(str(state["config"]))
    del old["flip_test"]
    state["config"] = np.asarray(json.dumps(old))
    np.savez(path, **state)
    resumed, _ = train.configure(["--run-dir", run_dir, "--resume", "--epochs", "2"])
    assert resumed.flip_test is False


def test_without_epochs_a_cnn_run_on_data_trains_the_cnn_default(tmp_path, synthetic_root, monkeypatch):
    monkeypatch.setattr(train, "CNN_EPOCHS", 2)  # the wiring, not the 36 epochs themselves
    run_dir = str(tmp_path / "run")
    _train("--run-dir", run_dir, "--data", synthetic_root, *TINY)
    assert _json(run_dir, "config.json")["epochs"] == 2
    assert len(_json(run_dir, "metrics.json")["history"]) == 2


def test_the_flip_test_is_refused_with_the_descriptor_backbone():
    with pytest.raises(ValueError, match=r"--flip-test: an option of --backbone cnn"):
        train.configure(["--flip-test"])
    assert train.configure(["--epochs", "1"])[0].flip_test is False


@pytest.mark.parametrize("options, message", [
    (["--method", "sst"], r"--backbone cnn: --method sst is not supported"),
    (["--hidden", "16"], r"--hidden 16: an option of --backbone descriptor"),
    (["--loss", "softmax+arcface+cosface"], r"--loss: at most one margin-softmax term"),
    (["--sample-rate", "0.5"], r"--sample-rate: applies to the margin-softmax losses"),
])
def test_unsupported_options_are_refused_by_name(options, message):
    with pytest.raises(ValueError, match=message):
        train.configure(["--backbone", "cnn", *options])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the refusal cannot happen")
def test_device_cuda_without_a_gpu_is_refused_before_any_data_is_read(tmp_path):
    with pytest.raises(ValueError, match=r"--device cuda: (torch|faceops) has no CUDA device here"):
        train.configure(["--backbone", "cnn", "--device", "cuda", "--data", str(tmp_path / "absent")])


def test_without_torch_the_option_names_itself_and_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ValueError, match=r"--backbone cnn: needs PyTorch.*pip install 'faceops\[torch\]'"):
        train.configure(["--backbone", "cnn"])
    with pytest.raises(SystemExit, match=r"faceops train: --backbone cnn: needs PyTorch"):
        train.main(["--backbone", "cnn"])
    # The default backbone does not need it.
    config, _ = train.configure(["--epochs", "1"])
    assert config.backbone == "descriptor"
