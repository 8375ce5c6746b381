"""The least work each loss's forward + backward has to do, and the time that work
takes at a GPU's rates: the bound every GPU figure is shown against
(benchmarks/README.md, "GPU bounds", has the arithmetic in words).

Counts are per training step, forward + backward, for a fused implementation
(faceops' kernels are meant to be one): nothing of size N x N or N x C is
written to memory, so the pairwise losses and the margin softmax are bound by
arithmetic and the centre loss by memory traffic.  A dense peer does more of both.
"""

# NVIDIA H200 SXM.  bf16 and copy: measured on this workplace's machines (the device
# tool's KINDS.md: 769-798 TFLOP/s on an 8192^3 bf16 product of random data, 4.3 TB/s
# counting bytes read and written).  fp32 and tf32: the datasheet's dense rates (H100
# SXM's: the same chip), not measured here.
H200 = {"bf16_flops": 790e12, "tf32_flops": 495e12, "fp32_flops": 67e12, "copy_bytes_per_s": 4.3e12}
# Rate used for a precision: float32 inputs on the FP32 cores unless TF32 tensor cores run them.
PRECISION_RATE = {"float32": "fp32_flops", "tf32": "tf32_flops", "bfloat16": "bf16_flops", "float16": "bf16_flops"}
BYTES = {"float32": 4, "tf32": 4, "bfloat16": 2, "float16": 2}


def pairwise_flops(loss, n, d):
    """FLOPs of a pairwise loss's step over an (n, d) batch.  Mining needs every distance: the
    Gram matrix's upper triangle, n^2 d multiply-adds counted as n^2 d FLOPs x 2 / 2.  Semi-hard and
    batch-hard then have a sparse gradient (a few rows per anchor, O(n d)); batch-all and the pair
    loss a dense one, dX = 2 (diag(W 1) - W) X with W the (n, n) hinge coefficients, another
    2 n^2 d when W is rebuilt tile by tile from the recomputed distances (so 3 n^2 d in all)."""
    gram = n * n * d
    sparse_gradient = 8 * n * d  # an anchor's positive and negative rows, both sides
    if loss in ("triplet_semihard", "triplet_hard"):
        return gram + sparse_gradient
    if loss in ("triplet_all", "pair"):
        return 3 * gram
    raise ValueError(f"loss: expected a pairwise loss, got {loss!r}")


def pairwise_bytes(n, d, precision):
    """Bytes a fused pairwise kernel must move: read X and write dX, each once."""
    return 2 * n * d * BYTES[precision]


def margin_softmax_flops(n, d, classes):
    """Logits, dX and dW, each 2 N C D (issue 15's count; faceops recomputes the logits
    when N > D, which makes it 4 x 2 N C D)."""
    return 3 * 2 * n * classes * d


def margin_softmax_bytes(n, d, classes, precision):
    """W read for the logits, read again for dX, and dW written: 3 C D elements."""
    return 3 * classes * d * BYTES[precision] + 2 * n * d * BYTES[precision]


def center_bytes(n, d):
    """center_grad="rows" (float32): x and the batch's centre rows read, dx and the rows' gradient written."""
    return 4 * n * d * 4


def bound_ms(flops=0, bytes_moved=0, precision="float32", rates=H200):
    """The larger of the arithmetic time at the precision's rate and the memory time, in ms."""
    compute = flops / rates[PRECISION_RATE[precision]]
    memory = bytes_moved / rates["copy_bytes_per_s"]
    return 1e3 * max(compute, memory)
