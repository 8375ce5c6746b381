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
    pair_loss_ref,
    triplet_loss,
    triplet_loss_explicit,
    triplet_loss_ref,
)

__version__ = _core.__version__


def cuda_available():
    """True when faceops was built with CUDA kernels and a CUDA device is present."""
    return _core.cuda_available()


def cpu_features():
    """Which variant of the CPU kernels runs, and what the CPU has.

    Returns a dict: "path", the variant every CPU op runs ("baseline" x86-64,
    "avx2" with FMA, "avx512", or "native" in a FACEOPS_NATIVE=ON build);
    "compiled", the variants in this build; "supported", those this CPU runs;
    "cpu", {feature: present} for the features the choice looks at;
    "requested", $FACEOPS_CPU_PATH or None (set it to baseline, avx2 or avx512
    to run that variant; one this CPU cannot run raises RuntimeError).
    """
    return _core.cpu_features()


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
    "cpu_features",
    "cuda_available",
    "margin_softmax_loss",
    "pair_loss",
    "pair_loss_ref",
    "triplet_loss",
    "triplet_loss_explicit",
    "triplet_loss_ref",
]
