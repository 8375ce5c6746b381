"""faceops: face-recognition metric-learning losses with C++ and CUDA kernels.

NumPy arrays run on the CPU kernels, CuPy arrays on the CUDA kernels (on CuPy's
current stream).  See README.md for the definitions and the Caffe layers.
"""

from faceops import _core
from faceops.losses import CenterLoss, ContrastiveLoss, MarginSoftmaxLoss, PairLoss, TripletLoss
from faceops.ops import (
    MARGINS,
    center_loss,
    center_update,
    center_update_direction,
    contrastive_loss,
    margin_softmax_loss,
    pair_loss,
    triplet_loss,
    triplet_loss_explicit,
)

__version__ = _core.__version__


def cuda_available():
    """True when faceops was built with CUDA kernels and a CUDA device is present."""
    return _core.cuda_available()


__all__ = [
    "MARGINS",
    "CenterLoss",
    "ContrastiveLoss",
    "MarginSoftmaxLoss",
    "PairLoss",
    "TripletLoss",
    "center_loss",
    "center_update",
    "center_update_direction",
    "contrastive_loss",
    "cuda_available",
    "margin_softmax_loss",
    "pair_loss",
    "triplet_loss",
    "triplet_loss_explicit",
]
