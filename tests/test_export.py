"""ONNX export: onnx.checker, the metadata, and the round trip through OpenCV DNN
against the NumPy forward pass; `faceops export` on a run directory."""

import io
import json

import cv2
import numpy as np
import onnx
import pytest

from faceops import cli
from faceops.driver import export, model

# float32 through two matrix products and a normalisation: OpenCV DNN and NumPy sum in
# different orders, so the embeddings (unit length) agree to about 1e-6, not bitwise.
TOLERANCE = 1e-5


@pytest.mark.parametrize("hidden", [0, 16])
def test_onnx_round_trip_through_opencv_dnn(tmp_path, hidden):
    rng = np.random.default_rng(3)
    features = rng.random((9, 30)).astype(np.float32)
    net = model.EmbeddingNet(features.mean(0), features.std(0) + 0.1, hidden, 8, rng)
    net.params = {k: v + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in net.params.items()}
    path = export.to_onnx(net, str(tmp_path / "m.onnx"), {"descriptor": "lbp"})
    loaded = onnx.load(path)
    onnx.checker.check_model(loaded)
    metadata = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(metadata["preprocessing"]) == {"descriptor": "lbp"}
    assert metadata["input"].startswith("descriptor") and metadata["output"].startswith("embedding")
    assert [i.name for i in loaded.graph.input] == ["descriptor"] and [o.name for o in loaded.graph.output] == ["embedding"]
    dnn = cv2.dnn.readNetFromONNX(path)
    dnn.setInput(features)
    np.testing.assert_allclose(dnn.forward(), net.forward(features)[0], atol=TOLERANCE)


def _fake_run(run_dir, rng, stored_config=True):
    """A run directory as `faceops train` leaves it: config.json and checkpoint.npz
    (which holds the run's configuration too), a 32 x 32 pixel descriptor network."""
    net = model.EmbeddingNet(np.zeros(1024), np.full(1024, 0.3), 0, 5, rng)
    net.params["B"] += 0.1 * rng.standard_normal(net.params["B"].shape).astype(np.float32)
    run_dir.mkdir()
    config = {"descriptor": "pixels", "image_size": 64, "crop": 0.5}
    (run_dir / "config.json").write_text(json.dumps(config))
    state = {f"param_{k}": v for k, v in net.params.items()}
    state.update(param_Wc=np.zeros((5, 3), np.float32), net_mean=net.mean, net_std=net.std, epoch=np.asarray(1))
    if stored_config:
        state["config"] = np.asarray(json.dumps(config))
    np.savez(run_dir / "checkpoint.npz", **state)
    return net


@pytest.mark.parametrize("stored_config", [True, False])
def test_export_command_writes_the_checkpoints_network(tmp_path, capsys, stored_config):
    rng = np.random.default_rng(6)
    net = _fake_run(tmp_path / "run", rng, stored_config)
    output = tmp_path / "out.onnx"
    assert cli.main(["export", str(tmp_path / "run"), "-o", str(output)]) == 0
    assert str(output) in capsys.readouterr().out
    loaded = onnx.load(str(output))
    preprocessing = json.loads({p.key: p.value for p in loaded.metadata_props}["preprocessing"])
    assert preprocessing["descriptor"] == "pixels" and preprocessing["crop"] == 0.5
    features = rng.random((4, 1024)).astype(np.float32)
    dnn = cv2.dnn.readNetFromONNX(str(output))
    dnn.setInput(features)
    np.testing.assert_allclose(dnn.forward(), net.forward(features)[0], atol=TOLERANCE)


def test_export_refuses_metadata_that_disagrees_with_the_model(tmp_path):
    _fake_run(tmp_path / "run", np.random.default_rng(7))
    # config.json rewritten after training (what a failed run did before faceops 0.2): crop 1.0.
    (tmp_path / "run" / "config.json").write_text(json.dumps({"descriptor": "pixels", "image_size": 64, "crop": 1.0}))
    with pytest.raises(SystemExit, match=r"disagrees with the checkpoint.*crop 1.0 \(checkpoint: 0.5\)"):
        cli.main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "out.onnx")])
    # A descriptor whose size does not fit the network.
    (tmp_path / "run" / "config.json").unlink()
    state = dict(np.load(tmp_path / "run" / "checkpoint.npz"))
    state["config"] = np.asarray(json.dumps({"descriptor": "lbp", "image_size": 64, "crop": 0.5}))
    np.savez(tmp_path / "run" / "checkpoint.npz", **state)
    with pytest.raises(SystemExit, match="takes 1024 descriptor values, but the 'lbp' descriptor"):
        cli.main(["export", str(tmp_path / "run")])
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "run" / "model.onnx").exists()


def test_export_command_names_a_missing_run(tmp_path):
    with pytest.raises(SystemExit, match="checkpoint.npz not found"):
        cli.main(["export", str(tmp_path)])


def _run_with_files(run_dir, rng):
    """_fake_run plus the other files a finished run holds."""
    _fake_run(run_dir, rng)
    for name in ("metrics.json", "log.txt", "roc.png"):
        (run_dir / name).write_bytes(f"the run's {name}\n".encode())
    return {p.name: p.read_bytes() for p in run_dir.iterdir()}


def test_export_output_must_be_a_file_path(tmp_path):
    run = tmp_path / "run"
    _run_with_files(run, np.random.default_rng(8))
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit, match=f"^faceops export: -o: {tmp_path / 'folder'} is a folder; give the ONNX "
                                         f"file to write, e.g. {tmp_path / 'folder' / 'model.onnx'}"):
        cli.main(["export", str(run), "-o", str(tmp_path / "folder")])
    (tmp_path / "afile").write_text("mine\n")
    with pytest.raises(SystemExit, match=f"^faceops export: -o: {tmp_path / 'afile'} is a file, not a folder"):
        cli.main(["export", str(run), "-o", str(tmp_path / "afile" / "x.onnx")])
    with pytest.raises(SystemExit, match=f"^faceops export: -o: the folder {tmp_path / 'missing'} does not exist"):
        cli.main(["export", str(run), "-o", str(tmp_path / "missing" / "x.onnx")])
    assert (tmp_path / "afile").read_text() == "mine\n" and not list((tmp_path / "folder").iterdir())


@pytest.mark.parametrize("name", ["checkpoint.npz", "config.json", "metrics.json", "log.txt", "roc.png"])
def test_export_never_writes_over_a_runs_own_files(tmp_path, name):
    run = tmp_path / "run"
    before = _run_with_files(run, np.random.default_rng(9))
    with pytest.raises(SystemExit, match=f"-o: {run / name} is the {name} of the run {run}"):
        cli.main(["export", str(run), "-o", str(run / name)])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_export_never_writes_over_another_runs_model(tmp_path):
    other = tmp_path / "other"
    before = _run_with_files(other, np.random.default_rng(10))
    (other / "model.onnx").write_bytes(b"the other run's model\n")
    _run_with_files(tmp_path / "run", np.random.default_rng(11))
    with pytest.raises(SystemExit, match=f"-o: {other / 'model.onnx'} is the model.onnx of the run {other}"):
        cli.main(["export", str(tmp_path / "run"), "-o", str(other / "model.onnx")])
    assert (other / "model.onnx").read_bytes() == b"the other run's model\n"
    # Its own model.onnx (the default output) is written again from the same checkpoint.
    assert cli.main(["export", str(other)]) == 0 and onnx.load(str(other / "model.onnx")).graph.node
    assert {p.name: p.read_bytes() for p in other.iterdir() if p.name != "model.onnx"} == before


def test_export_never_writes_through_a_link_to_a_runs_file(tmp_path):
    """-o through a symbolic link wrote the ONNX bytes into the other run's checkpoint.npz."""
    other = tmp_path / "other"
    before = _run_with_files(other, np.random.default_rng(13))
    _run_with_files(tmp_path / "run", np.random.default_rng(14))
    (tmp_path / "sneaky.onnx").symlink_to(other / "checkpoint.npz")
    with pytest.raises(SystemExit, match=f"-o: {tmp_path / 'sneaky.onnx'} \\(a link to {other / 'checkpoint.npz'}\\) "
                                         f"is the checkpoint.npz of the run {other}"):
        cli.main(["export", str(tmp_path / "run"), "-o", str(tmp_path / "sneaky.onnx")])
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "flipped byte", "npy", "no network", "config"])
def test_export_of_a_damaged_checkpoint_names_it(tmp_path, damage):
    _fake_run(tmp_path / "run", np.random.default_rng(12))
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    content = checkpoint.read_bytes()
    if damage == "npy":
        with open(checkpoint, "wb") as f:
            np.save(f, np.zeros(3))
    elif damage == "no network":  # an .npz archive, but not of a faceops run
        np.savez(checkpoint, weights=np.zeros(3))
    elif damage == "config":
        state = dict(np.load(checkpoint))
        np.savez(checkpoint, **(state | {"config": np.asarray("{descriptor")}))
    elif damage == "flipped byte":  # inside the first array's data: the archive opens, its CRC fails
        checkpoint.write_bytes(content[:300] + bytes([content[300] ^ 0xFF]) + content[301:])
    else:
        checkpoint.write_bytes({"empty": b"", "truncated": content[: len(content) // 2],
                                "garbage": b"not a checkpoint\n" * 10}[damage])
    with pytest.raises(SystemExit, match=f"^faceops export: {checkpoint} is not a readable faceops checkpoint"):
        cli.main(["export", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "model.onnx").exists()


def test_export_of_a_cnn_checkpoint_with_damaged_torch_state_names_it(tmp_path):
    pytest.importorskip("torch")
    run = tmp_path / "run"
    run.mkdir()
    config = {"descriptor": "pixels", "image_size": 64, "crop": 0.5, "backbone": "cnn", "rank": 128}
    np.savez(run / "checkpoint.npz", config=np.asarray(json.dumps(config)), epoch=np.asarray(1),
             torch_state=np.frombuffer(b"not torch.save bytes" * 5, np.uint8))
    with pytest.raises(SystemExit, match=f"^faceops export: {run / 'checkpoint.npz'} is not a readable faceops "
                                         f"checkpoint: its torch_state"):
        cli.main(["export", str(run)])


def test_export_and_eval_refuse_the_network_of_a_diverged_run(tmp_path):
    """A checkpoint with a NaN parameter was exported as an ONNX model full of NaN weights."""
    _fake_run(tmp_path / "run", np.random.default_rng(15))
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    state = dict(np.load(checkpoint))
    state["param_b"] = np.full_like(state["param_b"], np.nan)
    np.savez(checkpoint, **state)
    with pytest.raises(SystemExit, match=f"^faceops export: {checkpoint}: its param_b holds NaN or Inf"):
        cli.main(["export", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "model.onnx").exists()
    with pytest.raises(ValueError, match="its param_b holds NaN or Inf"):
        export.load_run(str(tmp_path / "run"))


@pytest.mark.parametrize("damage", ["nan", "other rank", "no net"])
def test_export_of_a_cnn_checkpoint_whose_network_is_unusable_names_it(tmp_path, damage):
    """A NaN weight was exported; a network of another size, or none, was a traceback or "faceops export: 'net'"."""
    torch = pytest.importorskip("torch")
    from faceops.driver import torch_model

    run = tmp_path / "run"
    run.mkdir()
    config = {"descriptor": "pixels", "image_size": 32, "crop": 1.0, "backbone": "cnn", "rank": 16}
    state = torch_model.network_for(dict(config, rank=8) if damage == "other rank" else config).state_dict()
    if damage == "nan":
        next(iter(state.values())).fill_(float("nan"))
    blob = io.BytesIO()
    torch.save({"weights": state} if damage == "no net" else {"net": state}, blob)
    np.savez(run / "checkpoint.npz", config=np.asarray(json.dumps(config)), epoch=np.asarray(1),
             torch_state=np.frombuffer(blob.getvalue(), np.uint8))
    message = "holds NaN or Inf" if damage == "nan" else "its network does not fit the run's configuration"
    with pytest.raises(SystemExit, match=f"^faceops export: {run / 'checkpoint.npz'}: .*{message}"):
        cli.main(["export", str(run)])
    assert not (run / "model.onnx").exists()


@pytest.mark.parametrize("text, message", [('{"descriptor": "pixels",', "is not valid JSON"),
                                           ('["pixels"]', "does not hold a JSON object")])
def test_export_names_a_config_json_that_is_not_a_configuration(tmp_path, text, message):
    _fake_run(tmp_path / "run", np.random.default_rng(13), stored_config=False)
    (tmp_path / "run" / "config.json").write_text(text)
    with pytest.raises(SystemExit, match=f"^faceops export: {tmp_path / 'run' / 'config.json'} {message}"):
        cli.main(["export", str(tmp_path / "run")])
