"""The embedding model of the training driver: a fixed face descriptor (raw
pixels or LBP histograms, NumPy/OpenCV) followed by a learned two-layer
projection with L2 normalisation, forward and backward written by hand on
NumPy (CPU) or CuPy (GPU) through an `xp` module."""

import numpy as np

DESCRIPTORS = ("lbp", "pixels")


def _uniform_lbp_table():
    """Maps the 256 8-neighbour LBP codes to the 59 bins of uniform patterns
    (Ojala, Pietikainen, Maenpaa, TPAMI 2002): <= 2 circular 0/1 transitions get a
    bin each, all others share bin 58."""
    table = np.full(256, 58, np.int64)
    next_bin = 0
    for code in range(256):
        bits = [(code >> k) & 1 for k in range(8)]
        if sum(bits[k] != bits[(k + 1) % 8] for k in range(8)) <= 2:
            table[code] = next_bin
            next_bin += 1
    return table


_LBP_BINS = _uniform_lbp_table()


def lbp_histograms(images, grid=8):
    """Uniform LBP histograms on a grid x grid layout of cells (Ahonen, Hadid,
    Pietikainen, ECCV 2004), each cell's histogram square-rooted (Hellinger) and the
    whole vector L2-normalised: (N, grid * grid * 59)."""
    n, h, w = images.shape
    centre = images[:, 1:-1, 1:-1]
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    codes = np.zeros(centre.shape, np.int64)
    for bit, (dy, dx) in enumerate(offsets):
        neighbour = images[:, 1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx]
        codes |= (neighbour >= centre).astype(np.int64) << bit
    bins = _LBP_BINS[codes]
    ch, cw = bins.shape[1] // grid, bins.shape[2] // grid
    cells = bins[:, : ch * grid, : cw * grid].reshape(n, grid, ch, grid, cw).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(n, grid * grid, ch * cw)
    flat = cells + 59 * np.arange(grid * grid)[None, :, None]
    hist = np.zeros((n, grid * grid * 59), np.float32)
    for i in range(n):
        hist[i] = np.bincount(flat[i].ravel(), minlength=grid * grid * 59)
    hist = np.sqrt(hist)
    return hist / np.linalg.norm(hist, axis=1, keepdims=True)


def raw_pixels(images, size=32):
    """Down-sampled pixels, mean-removed and L2-normalised per image: (N, size * size)."""
    import cv2

    small = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]).reshape(len(images), -1)
    small = small - small.mean(axis=1, keepdims=True)
    return (small / np.maximum(np.linalg.norm(small, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def describe(images, descriptor):
    if descriptor == "lbp":
        return lbp_histograms(images)
    if descriptor == "pixels":
        return raw_pixels(images)
    raise ValueError(f"descriptor: expected one of {DESCRIPTORS}, got {descriptor!r}")


def l2_normalize(v, xp=np):
    return v / xp.maximum(xp.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class EmbeddingNet:
    """Two forms, both ending in z = normalize(out):

    - "residual" (hidden = 0): out = s + (s A) B + b, a rank-`rank` correction of the
      descriptor s = (f - mean) / std, with B started at zero so that training starts
      from the descriptor's own geometry and can only move away where the loss says.
    - "mlp" (hidden > 0): out = W2 relu(W1 s + b1) + b2, embedding size `rank`.

    mean and std (F,) are fixed descriptor statistics of the training set."""

    def __init__(self, mean, std, hidden, rank, rng, xp=np):
        features = mean.shape[0]
        self.xp = xp
        self.mean, self.std = xp.asarray(mean, xp.float32), xp.asarray(std, xp.float32)

        def glorot(rows, cols):
            return xp.asarray(rng.standard_normal((rows, cols)) * np.sqrt(2.0 / (rows + cols)), xp.float32)

        if hidden:
            # He initialisation for the ReLU layer.
            w1 = rng.standard_normal((features, hidden)) * np.sqrt(2.0 / features)
            self.params = {"W1": xp.asarray(w1, xp.float32), "b1": xp.zeros(hidden, xp.float32),
                           "W2": glorot(hidden, rank), "b2": xp.zeros(rank, xp.float32)}
        else:
            self.params = {"A": glorot(features, rank), "B": xp.zeros((rank, features), xp.float32),
                           "b": xp.zeros(features, xp.float32)}

    @classmethod
    def from_arrays(cls, mean, std, params, xp=np):
        """The network of a checkpoint: descriptor statistics and parameter arrays."""
        net = cls.__new__(cls)
        net.xp = xp
        net.mean, net.std = xp.asarray(mean, xp.float32), xp.asarray(std, xp.float32)
        net.params = {name: xp.asarray(value, xp.float32) for name, value in params.items()}
        return net

    def copy(self):
        """An independent network with the same statistics and a copy of the parameters (same dtypes)."""
        net = EmbeddingNet.__new__(EmbeddingNet)
        net.xp, net.mean, net.std = self.xp, self.mean.copy(), self.std.copy()
        net.params = {name: value.copy() for name, value in self.params.items()}
        return net

    @property
    def output_dim(self):
        return int(self.params["W2"].shape[1]) if "W1" in self.params else int(self.mean.shape[0])

    def forward(self, features):
        """Returns the normalised embeddings and what backward needs."""
        xp, p = self.xp, self.params
        s = (xp.asarray(features, self.mean.dtype) - self.mean) / self.std
        if "W1" in p:
            pre = s @ p["W1"] + p["b1"]
            inner = xp.maximum(pre, 0)
            out = inner @ p["W2"] + p["b2"]
        else:
            pre, inner = None, s @ p["A"]
            out = s + inner @ p["B"] + p["b"]
        norm = xp.maximum(xp.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        z = out / norm
        return z, (s, pre, inner, z, norm)

    def backward(self, dz, cache):
        """Gradients of the parameters given dL/dz."""
        xp, p = self.xp, self.params
        s, pre, inner, z, norm = cache
        # d(out / ||out||)/d(out) applied to dz: (dz - z (z . dz)) / ||out||.
        dout = (dz - z * xp.sum(z * dz, axis=1, keepdims=True)) / norm
        if "W1" in p:
            dpre = (dout @ p["W2"].T) * (pre > 0)
            return {"W1": s.T @ dpre, "b1": dpre.sum(axis=0), "W2": inner.T @ dout, "b2": dout.sum(axis=0)}
        return {"A": s.T @ (dout @ p["B"].T), "B": inner.T @ dout, "b": dout.sum(axis=0)}

    def embed(self, features, batch=1024):
        return np.concatenate([_to_numpy(self.forward(features[i : i + batch])[0]) for i in range(0, len(features), batch)])


class SoftmaxHead:
    """Normalised softmax classifier for the "softmax" loss (NormFace: logits =
    scale * z . w_j / ||w_j||), cross-entropy averaged over the batch."""

    def __init__(self, dim, classes, rng, scale=16.0, xp=np):
        self.xp, self.scale = xp, scale
        self.params = {"Wc": xp.asarray(rng.standard_normal((dim, classes)) * 0.01, xp.float32)}

    def loss_and_grads(self, z, labels):
        xp = self.xp
        w = self.params["Wc"]
        w_norm = xp.maximum(xp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
        wn = w / w_norm
        logits = self.scale * (z @ wn)
        logits = logits - logits.max(axis=1, keepdims=True)
        prob = xp.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        n = z.shape[0]
        loss = float(-xp.log(prob[xp.arange(n), labels] + 1e-30).mean())
        dlogits = prob
        dlogits[xp.arange(n), labels] -= 1
        dlogits *= self.scale / n
        dz = dlogits @ wn.T
        dwn = z.T @ dlogits
        # d(w / ||w||)/dw applied column-wise.
        dw = (dwn - wn * xp.sum(wn * dwn, axis=0, keepdims=True)) / w_norm
        return loss, dz, {"Wc": dw}


def _to_numpy(a):
    return a if isinstance(a, np.ndarray) else a.get()
