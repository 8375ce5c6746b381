"""faceops.torch on CUDA tensors: the CUDA kernels against the CPU kernels, on the
current stream, without host synchronisation, inside a captured CUDA graph.
Skipped, with the reason, where faceops has no CUDA kernels or no GPU is present."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs PyTorch (pip install '.[torch]')")

import faceops
import faceops.torch as ft
from faceops.torch import _library

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and faceops.cuda_available()),
    reason="no CUDA device for torch, or faceops built without CUDA kernels (faceops.cuda_available() is False)",
)

# CUDA against CPU kernels: the same math, other summation orders.
TOLERANCE = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-4, atol=2e-5),
             torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def _cases(dtype, device):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * 0.5).to(dtype).to(device)

    labels = (torch.arange(24) % 6)[torch.randperm(24, generator=g)].to(device)
    x = randn(24, 8)
    cosine = ((torch.rand(24, 6, generator=g, dtype=torch.float64) * 1.8 - 0.9).to(dtype)).to(device)
    ref = torch.cat([x, randn(7, 8)])  # the batch and 7 other rows; anchors 0-9 have their copies in it
    ref_labels = torch.cat([labels, labels[:7]])
    self_index = torch.arange(10, device=device)
    return {
        "center_loss": (x, labels, randn(6, 8), True, True),
        "center_update_direction": (x, labels, randn(6, 8), True),
        "triplet_loss": (x, labels, 0.2, "hard", True, True),
        "triplet_loss_explicit": (randn(24, 8), randn(24, 8), randn(24, 8), 1.0, True),
        "pair_loss": (x, labels, torch.tensor(1.0, dtype=dtype, device=device), True),
        "contrastive_loss": (randn(24, 8), randn(24, 8), labels % 2, 1.0, False, True),
        "margin_softmax_loss": (x, labels, randn(6, 8), 8.0, 1.0, 0.5, 0.0, True),
        "target_margin_forward": (cosine, labels, 1.0, 0.5, 0.0, True),
        "target_margin_backward": (cosine, labels, randn(24, 6), 1.0, 0.5, 0.0, True),
        "triplet_loss_ref": (x[:10].contiguous(), labels[:10], ref, ref_labels, self_index, 0.2, "semihard", True,
                             True, True),
        "pair_loss_ref": (x[:10].contiguous(), labels[:10], ref, ref_labels, self_index,
                          torch.tensor(1.0, dtype=dtype, device=device), True, True),
    }


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("name", sorted(_cases(torch.float64, "cpu")))
def test_cuda_kernels_match_cpu_kernels(name, dtype):
    on_cpu = getattr(_library, name)(*_cases(dtype, "cpu")[name])
    on_gpu = getattr(_library, name)(*_cases(dtype, "cuda")[name])
    for cpu, gpu in zip(on_cpu if isinstance(on_cpu, tuple) else (on_cpu,), on_gpu if isinstance(on_gpu, tuple) else (on_gpu,)):
        assert gpu.device.type == "cuda" and gpu.dtype == cpu.dtype and gpu.shape == cpu.shape
        scale = max(cpu.abs().max().item(), 1e-3)
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=TOLERANCE[dtype]["rtol"] * scale)


def test_center_update_on_cuda_matches_cpu():
    x, labels, centers, _ = _cases(torch.float32, "cpu")["center_update_direction"]
    moved_cpu, moved_gpu = centers.clone(), centers.cuda()
    ft.center_update_(x, labels, moved_cpu, 0.5)
    ft.center_update_(x.cuda(), labels.cuda(), moved_gpu, 0.5)
    torch.testing.assert_close(moved_gpu.cpu(), moved_cpu, **TOLERANCE[torch.float32])


def test_opcheck_on_cuda():
    for name, args in _cases(torch.float32, "cuda").items():
        torch.library.opcheck(getattr(torch.ops.faceops, name).default, args)


def test_kernels_run_on_the_current_stream_with_the_tensors_addresses(monkeypatch):
    seen = []
    kernel = faceops._core.triplet_loss

    def spy(dtype, device, x, labels, *rest):
        seen.append((device, x, labels, rest[-1]))
        return kernel(dtype, device, x, labels, *rest)

    monkeypatch.setattr(faceops._core, "triplet_loss", spy)
    x, labels = _cases(torch.float32, "cuda")["triplet_loss"][:2]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        loss = ft.triplet_loss(x, labels)
    torch.cuda.current_stream().wait_stream(stream)
    assert seen == [("cuda", x.data_ptr(), labels.data_ptr(), stream.cuda_stream)]
    assert loss.dim() == 0 and loss.device == x.device


def test_mixed_cpu_and_cuda_tensors_are_refused():
    x, labels = _cases(torch.float32, "cuda")["triplet_loss"][:2]
    with pytest.raises(ValueError, match=r"arguments are on different devices \(x on cuda:0, labels on cpu\)"):
        ft.triplet_loss(x, labels.cpu())
    with pytest.raises(ValueError, match="weight on cpu"):
        ft.arcface_loss(x, labels, torch.randn(6, 8))


def _step(model, losses, optimiser, x, labels):
    optimiser.zero_grad(set_to_none=False)
    embeddings = model(x)
    loss = sum(loss_fn(embeddings, labels) for loss_fn in losses)
    loss.backward()
    optimiser.step()
    return loss


def _training_setup(seed=0, partial_fc=False):
    torch.manual_seed(seed)
    model = torch.nn.Linear(16, 8).cuda()
    head = ft.ArcFace(200 if partial_fc else 6, 8, s=8.0, sample_rate=0.1 if partial_fc else 1.0).cuda()
    # PairLoss's theta is learned: its kernel reads it by address, so a replayed graph sees each update.
    losses = [ft.TripletLoss(0.2, "semihard"), ft.CenterLoss(6, 8, alpha=0.5).cuda(), head,
              ft.CenterLoss(6, 8).cuda(), ft.PairLoss(1.0).cuda()]
    parameters = list(model.parameters()) + [p for f in losses for p in f.parameters() if p.requires_grad]
    return model, losses, torch.optim.SGD(parameters, lr=0.1)


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 16, generator=g).cuda(), (torch.arange(32) % 6)[torch.randperm(32, generator=g)].cuda()


@pytest.mark.parametrize("partial_fc", [False, True])
def test_training_step_never_synchronises_with_the_host(partial_fc):
    model, losses, optimiser = _training_setup(partial_fc=partial_fc)
    x, labels = _batch(1)
    _step(model, losses, optimiser, x, labels)  # first call: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _step(model, losses, optimiser, x, labels)  # check=True: device assertions only
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_training_step_captured_in_a_cuda_graph_matches_eager():
    model, losses, optimiser = _training_setup()
    eager_model, eager_losses, eager_optimiser = _training_setup()
    static_x, static_labels = _batch(0)
    warmup = torch.cuda.Stream()
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        for seed in range(3):
            x, labels = _batch(seed)
            static_x.copy_(x), static_labels.copy_(labels)
            _step(model, losses, optimiser, static_x, static_labels)
            _step(eager_model, eager_losses, eager_optimiser, x, labels)
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(model, losses, optimiser, static_x, static_labels)
    for seed in range(3, 6):
        x, labels = _batch(seed)
        static_x.copy_(x), static_labels.copy_(labels)
        graph.replay()
        eager_loss = _step(eager_model, eager_losses, eager_optimiser, x, labels)
        torch.testing.assert_close(static_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for captured, eager in zip(list(model.parameters()) + [p for f in losses for p in f.parameters()],
                               list(eager_model.parameters()) + [p for f in eager_losses for p in f.parameters()]):
        torch.testing.assert_close(captured, eager, rtol=1e-5, atol=1e-6)


def test_partial_fc_step_is_capturable():
    model, losses, optimiser = _training_setup(partial_fc=True)
    static_x, static_labels = _batch(0)
    warmup = torch.cuda.Stream()
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        for _ in range(3):
            _step(model, losses, optimiser, static_x, static_labels)
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(model, losses, optimiser, static_x, static_labels)
    before = losses[2].weight.detach().clone()
    graph.replay()
    graph.replay()
    assert torch.isfinite(static_loss).item()
    assert not torch.equal(losses[2].weight, before)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_runs_the_losses_in_float32(dtype):
    model, losses, _ = _training_setup()
    x, labels = _batch(2)
    with torch.autocast("cuda", dtype=dtype):
        embeddings = model(x)
        values = [loss_fn(embeddings, labels) for loss_fn in losses]
    assert embeddings.dtype == dtype and all(v.dtype == torch.float32 for v in values)
    sum(values).backward()
    assert model.weight.grad.dtype == torch.float32 and torch.isfinite(model.weight.grad).all()


_NAN_SCRIPT = """
import torch, faceops.torch as ft
x = torch.randn(8, 4, device="cuda"); x[1, 1] = float("nan")
labels = (torch.arange(8) % 2).cuda()
print("unchecked", ft.triplet_loss(x, labels, check=False).item(), flush=True)
ft.triplet_loss(x, labels).item()
"""


def test_nan_on_cuda_is_a_device_assertion_when_checked():
    """check=True queues a device assertion (no sync); it fires at the next synchronisation and
    loses the CUDA context, so it runs in a subprocess.  (torch's CUDA _assert_async may report
    only that a device-side assertion failed, without the message naming x.)"""
    result = subprocess.run([sys.executable, "-c", _NAN_SCRIPT], capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "CUDA_LAUNCH_BLOCKING": "0"})
    assert "unchecked" in result.stdout  # check=False: no assertion (the value is undefined)
    assert result.returncode != 0 and "device-side assert" in result.stderr


def test_reference_set_losses_on_cuda_never_synchronise_with_the_host():
    """GlobalBatchLoss's and CrossBatchMemory's kernels, check=True: device assertions only."""
    x, labels = _batch(2)
    x.requires_grad_()
    memory = ft.CrossBatchMemory(ft.TripletLoss(0.2, "hard"), 96, 16, device="cuda")
    memory(x, labels).backward()  # first call: lazy initialisation may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        memory(x, labels).backward()
        ft.triplet_loss(x, labels, 0.2, "semihard", ref=x.detach(), ref_labels=labels,
                        self_index=torch.arange(32, device="cuda")).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
