"""faceops.torch: the faceops losses as torch ops (``torch.ops.faceops.*``) with
autograd, fake kernels for torch.compile, float16/bfloat16 inputs and autocast,
and nn.Module / functional forms.  CPU tensors run the CPU kernels and CUDA
tensors the CUDA kernels, by data pointer, on torch.cuda.current_stream().
See docs/torch.md.

faceops.torch.distributed is imported on first use, not here.
"""

try:
    import torch  # noqa: F401
except ImportError as error:  # without torch
    raise ImportError("faceops.torch needs PyTorch: pip install 'faceops[torch]' (torch==2.13.0)") from error

from faceops.torch import _library  # noqa: F401  registers the faceops:: ops
from faceops.torch.functional import (
    arcface_loss,
    center_loss,
    center_update_,
    center_update_direction,
    contrastive_loss,
    cosface_loss,
    margin_softmax_loss,
    pair_loss,
    pair_loss_terms,
    sample_classes,
    target_margin,
    triplet_loss,
    triplet_loss_explicit,
    triplet_loss_terms,
)
from faceops.torch.memory import CrossBatchMemory
from faceops.torch.modules import (
    ArcFace,
    CenterLoss,
    ContrastiveLoss,
    CosFace,
    MarginSoftmaxLoss,
    PairLoss,
    TripletLoss,
)


def __getattr__(name):
    if name == "distributed":
        import importlib

        return importlib.import_module("faceops.torch.distributed")
    raise AttributeError(f"module 'faceops.torch' has no attribute {name!r}")


__all__ = [
    "ArcFace",
    "CenterLoss",
    "ContrastiveLoss",
    "CosFace",
    "CrossBatchMemory",
    "MarginSoftmaxLoss",
    "PairLoss",
    "TripletLoss",
    "arcface_loss",
    "center_loss",
    "center_update_",
    "center_update_direction",
    "contrastive_loss",
    "cosface_loss",
    "margin_softmax_loss",
    "pair_loss",
    "pair_loss_terms",
    "sample_classes",
    "target_margin",
    "triplet_loss",
    "triplet_loss_explicit",
    "triplet_loss_terms",
]
