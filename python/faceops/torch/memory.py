"""Cross-batch memory (Wang, Zhang, Huang, Scott, "Cross-Batch Memory for Embedding Learning",
CVPR 2020): a FIFO queue of past embeddings and labels used as the reference set of a pairwise
loss, so each anchor meets memory_size candidates instead of one batch's.
"""

import torch
from torch import nn

from faceops import _params
from faceops.torch import _boundary


class CrossBatchMemory(nn.Module):
    """``loss_fn = CrossBatchMemory(faceops.torch.TripletLoss(0.2, "hard"), memory_size, dim)``,
    then ``loss_fn(embeddings, labels)`` as with the loss itself.

    Each call first writes the batch (detached) into the queue, overwriting the oldest rows (a
    batch the loss refuses, e.g. one holding NaN, is taken out again), then returns ``loss(embeddings, labels, ref=queue, ref_labels=queue_labels, self_index=slots)``:
    the anchors are the batch's rows, their positives and negatives the queue's rows, the
    batch's own copies included (as in pytorch-metric-learning's CrossBatchMemory) except that
    a row's own copy is never its positive.  Until the queue is full only its filled rows count.
    No gradient flows into the queue, and the loss's kernels hold no (N, memory_size) matrix:
    the extra memory is O((N + memory_size) dim).

    ``loss``: a faceops.torch TripletLoss or PairLoss (any module with ``reference_terms``).
    The queue, its labels and its write position are in ``state_dict()``, so a resumed run
    continues with the same memory.

    Over torch.distributed (``group``, the default process group when initialised), every rank
    writes every rank's batch (all-gathered, rank order) into its queue, so the queues of all
    ranks are the same, and the loss is combined over ranks as GlobalBatchLoss combines it: every
    rank returns the loss one process would with the concatenated batch and one queue, and gets
    exactly its gradient for its own rows (every rank must pass the same N; memory_size >= W N).
    """

    def __init__(self, loss, memory_size, dim, *, group=None, dtype=torch.float32, device=None):
        super().__init__()
        if not callable(getattr(loss, "reference_terms", None)):
            raise TypeError(f"loss: expected a faceops.torch loss that takes a reference set (TripletLoss, "
                            f"PairLoss), got {type(loss).__name__}")
        self.loss = loss
        dtype = _boundary.parameter_dtype(dtype)
        self.memory_size, self.dim = _params.matrix_shape("memory_size", memory_size, "dim", dim, dtype.itemsize)
        self.register_buffer("embeddings", torch.zeros(self.memory_size, self.dim, dtype=dtype, device=device))
        self.register_buffer("labels", torch.zeros(self.memory_size, dtype=torch.int64, device=device))
        self.next_slot = 0  # the row the next batch's first row goes to
        self.filled = 0  # rows of the queue written so far (memory_size once it has wrapped)
        self.group = group
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.world_size = torch.distributed.get_world_size(group) if distributed else 1
        self.rank = torch.distributed.get_rank(group) if distributed else 0

    def forward(self, embeddings, labels):
        if not isinstance(embeddings, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise TypeError("embeddings, labels: expected torch tensors")
        if self.world_size > 1:  # first: the ranks agree on their inputs before any rank can raise alone
            from faceops.torch import distributed

            batch, batch_labels = distributed._gather_batch(self, embeddings.detach(), labels)
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings: expected shape (N, {self.dim}), got {tuple(embeddings.shape)}")
        n = embeddings.shape[0]
        if not 1 <= self.world_size * n <= self.memory_size:
            raise ValueError(f"embeddings: expected 1 <= N <= memory_size ({self.memory_size}) rows"
                             + (f" / world size ({self.world_size})" if self.world_size > 1 else "") + f", got {n}")
        if labels.shape != (n,) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels: expected an integer tensor of shape ({n},), got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        queue_dtype = self.embeddings.dtype
        if embeddings.dtype != queue_dtype and not (embeddings.dtype in _boundary.HALF_DTYPES
                                                    and queue_dtype == torch.float32):
            raise TypeError(f"embeddings: expected dtype {queue_dtype}, the memory's (or float16/bfloat16 against a "
                            f"float32 memory), got {embeddings.dtype}; build the memory with dtype={embeddings.dtype}"
                            if embeddings.is_floating_point() else
                            f"embeddings: expected a float tensor ({queue_dtype}, the memory's), got {embeddings.dtype}")
        if embeddings.device != self.embeddings.device:
            raise ValueError(f"embeddings: on {embeddings.device}, the memory is on {self.embeddings.device}; "
                             "move the module with .to()")
        if self.world_size == 1:
            batch, batch_labels = embeddings.detach(), labels.to(torch.int64)
        rows = batch.shape[0]
        slots = torch.arange(self.next_slot, self.next_slot + rows, device=embeddings.device) % self.memory_size
        filled = min(self.filled + rows, self.memory_size)
        with torch.no_grad():
            overwritten = self.embeddings[slots], self.labels[slots]
            self.embeddings.index_copy_(0, slots, batch.to(self.embeddings.dtype))
            self.labels.index_copy_(0, slots, batch_labels)
        ref = self.embeddings[:filled]
        if ref.dtype != embeddings.dtype:  # half embeddings against a float32 queue
            embeddings = embeddings.to(ref.dtype)
        own_slots = slots[self.rank * n:(self.rank + 1) * n]
        try:
            loss, count = self.loss.reference_terms(embeddings, batch_labels[self.rank * n:(self.rank + 1) * n], ref,
                                                    self.labels[:filled], own_slots)
        except Exception:  # a batch the loss refuses leaves the queue as it was
            with torch.no_grad():
                self.embeddings.index_copy_(0, slots, overwritten[0])
                self.labels.index_copy_(0, slots, overwritten[1])
            raise
        self.next_slot = (self.next_slot + rows) % self.memory_size
        self.filled = filled
        if self.world_size == 1:
            return loss
        from faceops.torch import distributed

        return distributed.mean_over_ranks(loss, count, self.group, self.world_size)

    def _check_inputs_on_every_rank(self, x, labels):
        from faceops.torch import distributed

        distributed.check_batch_on_every_rank(x, labels, self.group, self.world_size)

    def get_extra_state(self):
        return {"next_slot": self.next_slot, "filled": self.filled, "memory_size": self.memory_size}

    def set_extra_state(self, state):
        if not isinstance(state, dict) or not {"next_slot", "filled", "memory_size"} <= state.keys():
            raise ValueError(f"checkpoint: the memory's extra state is {type(state).__name__} "
                             f"{sorted(state) if isinstance(state, dict) else ''}; expected the dict of next_slot, "
                             "filled and memory_size that CrossBatchMemory saves")
        if state["memory_size"] != self.memory_size:
            raise ValueError(f"checkpoint: saved a memory of {state['memory_size']} rows, this one has "
                             f"{self.memory_size}")
        next_slot = _params.integer("checkpoint next_slot", state["next_slot"], low=0)
        filled = _params.integer("checkpoint filled", state["filled"], low=0)
        if next_slot >= self.memory_size or filled > self.memory_size or (filled < self.memory_size
                                                                           and next_slot != filled):
            raise ValueError(f"checkpoint: next_slot {next_slot} and filled {filled} do not describe a queue of "
                             f"{self.memory_size} rows (0 <= next_slot < memory_size, filled <= memory_size, "
                             "next_slot == filled until the queue is full)")
        self.next_slot, self.filled = next_slot, filled

    def extra_repr(self):
        return f"memory_size={self.memory_size}, dim={self.dim}, filled={self.filled}"
