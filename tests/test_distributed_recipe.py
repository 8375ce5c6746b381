"""The torchrun recipe (python -m faceops.torch.distributed_train): two gloo ranks train a small
backbone with the class-sharded margin softmax on ORL faces; the loss falls and the saved head
shards re-load at world size 1."""

import os
import re
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="faceops.torch needs torch (pip install torch==2.13.0)")
from faceops.torch.distributed import ShardedMarginSoftmaxLoss  # noqa: E402

SHARED = os.environ.get("FACEOPS_SHARED_DATA") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ORL = os.path.join(SHARED, "orl_faces")


@pytest.mark.skipif(not os.path.isdir(ORL), reason=f"ORL faces not found at {ORL} (../shared/data beside the repo, or FACEOPS_SHARED_DATA)")
def test_torchrun_recipe_trains_and_checkpoints(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "faceops.torch.distributed_train", "--data", ORL, "--steps", "40",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [float(v) for v in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) == 5, result.stdout
    assert losses[-1] < 0.85 * losses[0], result.stdout
    assert "40 classes over 2 ranks" in result.stdout
    head = ShardedMarginSoftmaxLoss(40, 64, "cosface", 16.0)  # no process group: world size 1
    head.load_shards(sorted(str(p) for p in out.glob("head_rank*.pt")))
    saved = [torch.load(p, weights_only=True)["weight"] for p in sorted(out.glob("head_rank*.pt"))]
    torch.testing.assert_close(head.weight.detach(), torch.cat(saved), rtol=0, atol=0)
    assert (out / "backbone.pt").exists()
