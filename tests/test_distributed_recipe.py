"""The torchrun recipe (python -m faceops.torch.distributed_train): two gloo ranks train a small
backbone with the class-sharded margin softmax on ORL faces; the loss falls and the saved head
shards re-load at world size 1.  Also the recipe's DDP hook, sum_gradients_hook, on 2 and 3 real
gloo ranks: the global-batch gradient, and no callback left to run on gloo's threads."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs torch (pip install torch==2.13.0)")
from faceops.torch.distributed import ShardedMarginSoftmaxLoss, sum_gradients_hook  # noqa: E402
from ranks import run_ranks  # noqa: E402

SHARED = os.environ.get("FACEOPS_SHARED_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ORL = os.path.join(SHARED, "orl_faces")


@pytest.mark.skipif(not os.path.isdir(ORL), reason=f"ORL faces not found at {ORL} (../shared/data beside the repo, or FACEOPS_SHARED_DATA)")
def test_torchrun_recipe_trains_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "faceops.torch.distributed_train", "--data", ORL, "--steps", "40",
               "--out", str(out)]
    env = dict(os.environ, PYTHONFAULTHANDLER="1")  # a rank that aborts prints every thread's Python stack
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) == 5, result.stdout
    assert losses[-1] < 0.85 * losses[0], result.stdout
    assert "40 classes over 2 ranks" in result.stdout
    head = ShardedMarginSoftmaxLoss(40, 64, "cosface", 16.0)  # no process group: world size 1
    head.load_shards(sorted(str(p) for p in out.glob("head_rank*.pt")))
    saved = [torch.load(p, weights_only=True)["weight"] for p in sorted(out.glob("head_rank*.pt"))]
    torch.testing.assert_close(head.weight.detach(), torch.cat(saved), rtol=0, atol=0)
    assert (out / "backbone.pt").exists()


ROWS_PER_RANK = 4


def _global_batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randn(3 * ROWS_PER_RANK, 5, generator=generator, dtype=torch.float64)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()


def _global_loss(model, x, rows_in_global_batch):
    return model(x).square().sum() / rows_in_global_batch  # each rank's share of the global-batch mean


def _hook_checks(rank, world_size):
    x_all = _global_batch()[:world_size * ROWS_PER_RANK]
    model = _model()
    futures_done = []

    def probe(state, bucket):
        future = sum_gradients_hook(state, bucket)
        futures_done.append(future.done())
        return future

    ddp = torch.nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(None, probe)
    own_rows = x_all[rank * ROWS_PER_RANK:(rank + 1) * ROWS_PER_RANK]
    _global_loss(ddp, own_rows, len(x_all)).backward()
    return {"grads": [p.grad.numpy().copy() for p in model.parameters()], "futures_done": futures_done}


@pytest.mark.parametrize("world_size", [2, 3])
def test_sum_gradients_hook_gives_the_global_batch_gradient_with_nothing_left_in_flight(tmp_path, world_size):
    ranks = run_ranks(_hook_checks, world_size, str(tmp_path))
    single = _model()
    x_all = _global_batch()[:world_size * ROWS_PER_RANK]
    _global_loss(single, x_all, len(x_all)).backward()
    for rank, out in enumerate(ranks):
        for got, want in zip(out["grads"], single.parameters()):
            np.testing.assert_allclose(got, want.grad.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"rank {rank}")
        # Already completed when DDP gets it: no .then callback runs Python on gloo's threads, where one
        # still in flight at interpreter shutdown aborts the process (DDP keeps the group alive).
        assert out["futures_done"] and all(out["futures_done"]), out["futures_done"]
