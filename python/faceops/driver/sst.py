"""Semi-Siamese Training (SST) for shallow face data: Du, Shi, Liu, Wang, Lei,
Zeng, Mei, "Semi-Siamese Training for Shallow Face Learning", ECCV 2020,
sec. 3.2-3.3, as FaceX-Zoo trains it (training_mode/semi-siamese_training).

With two images per identity, a softmax over learned class weights has one
positive to learn each weight from and over-fits; SST replaces the weights by
features.  A probe network (trained by SGD) embeds both images of each
identity; a gallery network, the exponential moving average of the probe
(paper eq. 6, alpha = 0.999), embeds them too, without gradient.  The
prototypes of a batch are the gallery features of the *other* image of each
identity, followed by a FIFO queue of gallery features of earlier batches (the
negatives), and the loss is a margin softmax of the probe features over those
prototypes, symmetrised over the two images:

    L = ( CE(p(x1) vs [g(x2); queue]) + CE(p(x2) vs [g(x1); queue]) ) / 2

After the SGD step the gallery moves towards the probe and the gallery features
of one of the two images (chosen at random, as FaceX-Zoo does) are enqueued.

Unlike FaceX-Zoo, which leaves the identities still in the queue out of the next
epoch, queue entries of an identity in the current batch are left out of that
batch's prototypes (they would be a second, unlabelled positive): on small sets
such as LFW devtrain (1,184 identities) skipping the queue's identities would drop
a large share of every epoch."""

import numpy as np

import faceops


class PrototypeQueue:
    """A FIFO of at most `size` gallery features (rows) with the identity of each.

    A ring buffer: `next` is the slot the next row goes to, which is the oldest
    row once the queue is full.  `ordered()` gives the rows oldest first."""

    def __init__(self, size, dim, xp=np, dtype=np.float32):
        if size < 0:
            raise ValueError(f"queue size: expected a non-negative integer, got {size}")
        self.size, self.xp = size, xp
        self.features = xp.zeros((size, dim), dtype)
        self.labels = np.full(size, -1, np.int64)  # identity of each slot; -1: empty
        self.count = 0
        self.next = 0

    def push(self, features, labels):
        """Appends rows (n, dim) and their identities (n,), dropping the oldest rows."""
        n = len(labels)
        if self.size == 0 or n == 0:
            return
        if n > self.size:  # only the newest `size` rows would survive
            features, labels, n = features[-self.size :], labels[-self.size :], self.size
        slots = (self.next + np.arange(n)) % self.size
        self.features[self.xp.asarray(slots)] = features
        self.labels[slots] = np.asarray(labels)
        self.next = int((self.next + n) % self.size)
        self.count = min(self.size, self.count + n)

    def ordered(self):
        """(features, labels) of the rows in the queue, oldest first."""
        if self.count < self.size:
            slots = np.arange(self.count)
        else:
            slots = (self.next + np.arange(self.size)) % self.size
        return self.features[self.xp.asarray(slots)], self.labels[slots]

    def negatives(self, exclude):
        """The queued features whose identity is not in `exclude` (host array), in slot order."""
        keep = np.flatnonzero(~np.isin(self.labels[: self.count], np.asarray(exclude)))
        return self.features[self.xp.asarray(keep)]

    def state(self, prefix="queue_"):
        return {f"{prefix}features": _np(self.features), f"{prefix}labels": self.labels.copy(),
                f"{prefix}count": np.asarray(self.count), f"{prefix}next": np.asarray(self.next)}

    def load_state(self, state, prefix="queue_"):
        features = state[f"{prefix}features"]
        if features.shape != tuple(self.features.shape):
            raise ValueError(f"checkpoint queue has shape {features.shape}, this run's is {tuple(self.features.shape)}: "
                             "resume with the same --queue-size")
        self.features[...] = self.xp.asarray(features)
        self.labels[...] = state[f"{prefix}labels"]
        self.count, self.next = int(state[f"{prefix}count"]), int(state[f"{prefix}next"])


def ema_update(gallery_params, probe_params, alpha):
    """gallery <- alpha * gallery + (1 - alpha) * probe, in place (paper eq. 6)."""
    for name, value in gallery_params.items():
        value *= alpha
        value += (1 - alpha) * probe_params[name]


class SemiSiamese:
    """The gallery network and the prototype queue of one SST run.

    `loss_and_grads` takes the descriptors of the two images of each identity of a
    batch (x1[i], x2[i] of identity ids[i]) and returns the loss and the probe's
    parameter gradients; `update` (after the optimiser's step) moves the gallery and
    enqueues."""

    def __init__(self, probe, queue_size, alpha, scale, margins, xp=np):
        self.gallery = probe.copy()  # the gallery starts as the probe (FaceX-Zoo: moving_average(.., 0))
        self.alpha, self.scale, self.margins = alpha, scale, margins
        self.queue = PrototypeQueue(queue_size, probe.output_dim, xp)
        self._pending = None

    def loss_and_grads(self, probe, x1, x2, ids):
        xp = probe.xp
        p1, cache1 = probe.forward(x1)
        p2, cache2 = probe.forward(x2)
        g1, g2 = self.gallery.forward(x1)[0], self.gallery.forward(x2)[0]
        negatives = self.queue.negatives(ids)
        targets = xp.arange(len(ids), dtype=xp.int64)  # row i's prototype is row i of the batch's gallery
        m1, m2, m3 = self.margins
        loss1, dp1, _ = faceops.margin_softmax_loss(p1, targets, xp.concatenate([g2, negatives]), self.scale,
                                                    m1, m2, m3, weight_grad=False)
        loss2, dp2, _ = faceops.margin_softmax_loss(p2, targets, xp.concatenate([g1, negatives]), self.scale,
                                                    m1, m2, m3, weight_grad=False)
        grads = probe.backward(dp1 / 2, cache1)
        for name, value in probe.backward(dp2 / 2, cache2).items():
            grads[name] += value
        self._pending = (g1, g2, np.asarray(ids))
        return (loss1 + loss2) / 2, grads

    def update(self, probe, rng):
        """After the probe's SGD step: the gallery's EMA step, then the gallery
        features of image 1 or image 2 (one coin flip per batch) join the queue."""
        g1, g2, ids = self._pending
        self._pending = None
        ema_update(self.gallery.params, probe.params, self.alpha)
        self.queue.push(g1 if rng.random() < 0.5 else g2, ids)

    def state(self):
        state = {f"gallery_{k}": _np(v) for k, v in self.gallery.params.items()}
        state.update(self.queue.state())
        return state

    def load_state(self, state):
        for name, value in self.gallery.params.items():
            value[...] = self.gallery.xp.asarray(state[f"gallery_{name}"])
        self.queue.load_state(state)


def _np(a):
    return a if isinstance(a, np.ndarray) else a.get()
