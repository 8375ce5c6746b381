"""Face images for the training driver: an identity-folder reader (ROOT/<identity>/<image>,
the layout of LFW, CASIA-WebFace and ORL), augmentation, a P x K batch sampler, and a
synthetic identity set drawn with OpenCV for the built-in default run."""

import os
from dataclasses import dataclass, field

import cv2
import numpy as np

from faceops.driver import rundir


@dataclass
class FaceSet:
    """Images (N, H, W) float32 in [0, 1], grey; labels (N,) int64 in [0, len(names));
    `skipped`: (path, why) of each file that was left out."""

    images: np.ndarray
    labels: np.ndarray
    names: list
    paths: list
    skipped: list = field(default_factory=list)


def prepare(image, size, crop):
    """Grey, centre crop keeping `crop` of each side (1.0 = whole image), resize to size x size.
    Pixels go to [0, 1]: an integer image is divided by its type's full range (uint8 /255,
    uint16 /65535), a float image is taken as already in [0, 1] (read_image checks that)."""
    if image.dtype != np.uint8:
        image = _unit_range(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    h, w = image.shape
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[top : top + ch, left : left + cw]
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image


def _unit_range(image):
    """float32 in [0, 1] of a non-uint8 image (uint8 keeps its 8-bit resize, as it always had)."""
    if np.issubdtype(image.dtype, np.integer):
        low, high = np.iinfo(image.dtype).min, np.iinfo(image.dtype).max
        return ((image.astype(np.float64) - low) / (high - low)).astype(np.float32)
    return image.astype(np.float32)


def unusable_pixels(image):
    """Why a decoded image's pixels cannot be prepared, or None: a float image must be
    finite and in [0, 1], the range prepare gives every image (rescaling it would make
    the same picture prepare differently by its own extremes)."""
    if not np.issubdtype(image.dtype, np.floating):
        return None
    if not np.isfinite(image).all():
        return f"non-finite pixels (NaN or Inf) in a {image.dtype} image"
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        return f"float pixels outside [0, 1] (from {low:.6g} to {high:.6g}); expected a float image in [0, 1]"
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the whole chunk: length 0, type, its fixed CRC
JPEG_EOI = b"\xff\xd9"


def truncation(encoded):
    """Why the bytes of an image file are cut short, or None.  Decoders stop at an
    image's end and accept data after it, and OpenCV decodes a truncated JPEG partly
    (the rest grey, only libjpeg's line on stderr saying so).  A PNG is truncated when
    no IEND chunk follows its signature; a JPEG when no end-of-image marker (FF D9)
    follows the start of its first scan (the header segments before it, an EXIF
    thumbnail among them, are skipped by their lengths; in the scan data FF is
    always followed by 00 or a restart marker, so FF D9 is the real end)."""
    if encoded[:8] == PNG_SIGNATURE and PNG_IEND not in encoded[8:]:
        return "truncated PNG (no IEND chunk)"
    if encoded[:2] == b"\xff\xd8":
        scan = _jpeg_first_scan(encoded)
        if scan is not None and JPEG_EOI not in encoded[scan:]:
            return "truncated JPEG (no end-of-image marker after the image data)"
    return None


def _jpeg_first_scan(encoded):
    """The offset of a JPEG's first start-of-scan marker (FF DA), found by walking the
    segments after SOI; the file's length when it ends first; None when the bytes are
    not a marker where one should be (then the decoder judges the file)."""
    at = 2
    while at + 1 < len(encoded):
        if encoded[at] != 0xFF:
            return None
        marker = encoded[at + 1]
        if marker == 0xDA:
            return at
        if marker == 0xFF:  # a fill byte before a marker
            at += 1
        elif marker in (0x01, 0xD8, 0xD9) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
        else:
            at += 2 + int.from_bytes(encoded[at + 2 : at + 4], "big")
    return len(encoded)


def read_image(path, size, crop):
    """(the prepared image, None), or (None, why it cannot be used): an empty,
    truncated or undecodable file, one too large for OpenCV, or float pixels that
    are non-finite or outside [0, 1]."""
    with open(path, "rb") as f:
        encoded = f.read()
    if not encoded:
        return None, "empty file"
    cut = truncation(encoded)
    if cut:
        return None, cut
    try:
        image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:  # the header declares more than CV_IO_MAX_IMAGE_PIXELS, _WIDTH or _HEIGHT
        if "CV_IO_MAX_IMAGE" in error.err:
            return None, f"image too large to decode (OpenCV requires {error.err})"
        return None, f"OpenCV cannot decode it ({error.err})"
    if image is None or image.size == 0:
        return None, "OpenCV cannot decode it"
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    why = unusable_pixels(image)
    if why:
        return None, why
    return prepare(image, size, crop), None


def describe_skipped(skipped):
    """One line naming every skipped file and why, or "" when none was."""
    if not skipped:
        return ""
    return f"skipped {len(skipped)} image file(s): " + "; ".join(f"{path} ({why})" for path, why in skipped)


def identity_folders(root):
    """The identity folders of ROOT/<identity>/<image>, sorted by name: the folders that
    hold at least one file and are not a run's directory (neither a runs/ folder of run
    directories nor a --run-dir inside ROOT may move the --holdout split)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data root {root!r} is not a directory")
    return sorted(e for e in os.listdir(root) if _holds_a_file(os.path.join(root, e))
                  and not rundir.holds_run(os.path.join(root, e), rundir.RUN_MARKERS))


def _holds_a_file(folder):
    if not os.path.isdir(folder):
        return False
    with os.scandir(folder) as entries:
        return any(entry.is_file() for entry in entries)


def load_identity_folder(root, size=64, crop=1.0, identities=None, min_images=1, max_images=None):
    """Reads ROOT/<identity>/<image> in sorted order.  Files that are empty,
    truncated or that OpenCV cannot decode are left out and listed, with the
    reason, in the result's `skipped`; identities with fewer than min_images
    readable images are left out.  `identities` restricts to those folder names;
    `max_images` keeps only each identity's first readable images (shallow data)."""
    folders = identity_folders(root)
    if identities is not None:
        missing = sorted(set(identities) - set(folders))
        if missing:
            raise FileNotFoundError(f"identities not found under {root!r}: {missing[:5]}")
        folders = [f for f in folders if f in set(identities)]
    images, labels, names, paths, skipped = [], [], [], [], []
    for folder in folders:
        files = sorted(os.listdir(os.path.join(root, folder)))
        loaded = []
        for name in files:
            path = os.path.join(root, folder, name)
            if not os.path.isfile(path):
                continue
            if max_images is not None and len(loaded) >= max_images:
                break
            image, why = read_image(path, size, crop)
            if image is None:
                skipped.append((path, why))
            else:
                loaded.append((image, path))
        if len(loaded) < min_images:
            continue
        for image, path in loaded:
            images.append(image)
            labels.append(len(names))
            paths.append(path)
        names.append(folder)
    if not images:
        raise ValueError(f"no readable images under {root!r} (expected ROOT/<identity>/<image>)"
                         + (f"; {describe_skipped(skipped)}" if skipped else ""))
    return FaceSet(np.stack(images), np.asarray(labels, np.int64), names, paths, skipped)


def augment(images, rng, max_shift=0.06, max_angle=8.0, occlusion=0.25):
    """Random flip, brightness/contrast, small shift and rotation, and (with probability
    `occlusion`) a random grey patch covering up to a quarter of the face."""
    out = np.empty_like(images)
    n, h, w = images.shape
    for k in range(n):
        image = images[k][:, ::-1] if rng.random() < 0.5 else images[k]
        angle = rng.uniform(-max_angle, max_angle)
        shift = rng.uniform(-max_shift, max_shift, 2) * (w, h)
        warp = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        warp[:, 2] += shift
        image = cv2.warpAffine(np.ascontiguousarray(image), warp, (w, h), borderMode=cv2.BORDER_REFLECT)
        image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        if rng.random() < occlusion:
            ph, pw = rng.integers(h // 8, h // 2), rng.integers(w // 8, w // 2)
            top, left = rng.integers(0, h - ph), rng.integers(0, w - pw)
            image[top : top + ph, left : left + pw] = rng.uniform(0, 1)
        out[k] = np.clip(image, 0.0, 1.0)
    return out


class PKSampler:
    """Batches of P identities x K images each, so every image in a batch has K - 1
    positives.  Identities with fewer than K images are sampled with replacement
    (their images repeat within the batch); identities are drawn without
    replacement within an epoch (all identities with at least one image)."""

    def __init__(self, labels, identities_per_batch, images_per_identity):
        self.by_identity = [np.flatnonzero(labels == j) for j in range(int(labels.max()) + 1)]
        self.by_identity = [rows for rows in self.by_identity if len(rows)]
        if identities_per_batch > len(self.by_identity):
            raise ValueError(f"--identities-per-batch: {identities_per_batch} exceeds the {len(self.by_identity)} "
                             "identities of the training data; lower it")
        if images_per_identity < 2:
            raise ValueError("--images-per-identity: expected at least 2, so that every anchor has a positive")
        self.p, self.k = identities_per_batch, images_per_identity

    def batches_per_epoch(self):
        return len(self.by_identity) // self.p

    def epoch(self, rng):
        """Yields index arrays of length P * K for one pass over the identities."""
        order = rng.permutation(len(self.by_identity))
        for b in range(self.batches_per_epoch()):
            batch = []
            for identity in order[b * self.p : (b + 1) * self.p]:
                rows = self.by_identity[identity]
                batch.append(rng.choice(rows, self.k, replace=len(rows) < self.k))
            yield np.concatenate(batch)


def draw_synthetic_face(identity_rng, image_rng, size):
    """One grey face: identity_rng fixes the geometry (head, eyes, brows, nose, mouth),
    image_rng the pose, expression, lighting and noise of this picture."""
    g = identity_rng
    geometry = dict(
        head=(g.uniform(0.30, 0.40), g.uniform(0.40, 0.48)),
        skin=g.uniform(0.45, 0.75),
        eye_y=g.uniform(0.38, 0.46), eye_dx=g.uniform(0.12, 0.20), eye_r=g.uniform(0.035, 0.06),
        brow_tilt=g.uniform(-0.04, 0.04), brow_gap=g.uniform(0.06, 0.10),
        nose_len=g.uniform(0.08, 0.16), nose_w=g.uniform(0.03, 0.07),
        mouth_y=g.uniform(0.68, 0.78), mouth_w=g.uniform(0.10, 0.20),
        hair=g.uniform(0.0, 0.3), hair_h=g.uniform(0.05, 0.2),
    )
    r = image_rng
    s = size
    canvas = np.full((s, s), r.uniform(0.3, 0.6), np.float32)
    cx, cy = s / 2 + r.normal(0, 0.02 * s), s / 2 + r.normal(0, 0.02 * s)
    hw, hh = geometry["head"][0] * s, geometry["head"][1] * s
    cv2.ellipse(canvas, (int(cx), int(cy)), (int(hw), int(hh)), r.normal(0, 4), 0, 360, float(geometry["skin"]), -1)
    cv2.ellipse(canvas, (int(cx), int(cy - hh * 0.8)), (int(hw), int(geometry["hair_h"] * s)), 0, 180, 360, float(geometry["hair"]), -1)
    ey = cy - hh + 2 * hh * geometry["eye_y"]
    for side in (-1, 1):
        ex = cx + side * geometry["eye_dx"] * s
        cv2.circle(canvas, (int(ex), int(ey)), max(1, int(geometry["eye_r"] * s)), 0.1, -1)
        by = ey - geometry["brow_gap"] * s
        tilt = side * geometry["brow_tilt"] * s
        cv2.line(canvas, (int(ex - 0.06 * s), int(by - tilt)), (int(ex + 0.06 * s), int(by + tilt)), 0.15, max(1, s // 40))
    nose = np.array([[cx, ey + 0.03 * s], [cx - geometry["nose_w"] * s, ey + geometry["nose_len"] * s], [cx + geometry["nose_w"] * s, ey + geometry["nose_len"] * s]], np.int32)
    cv2.polylines(canvas, [nose], True, 0.25, max(1, s // 50))
    my = cy - hh + 2 * hh * geometry["mouth_y"]
    smile = r.uniform(-0.03, 0.05) * s
    cv2.ellipse(canvas, (int(cx), int(my)), (int(geometry["mouth_w"] * s), max(1, int(abs(smile)))), 0, 0 if smile > 0 else 180, 180 if smile > 0 else 360, 0.2, max(1, s // 40))
    light = np.linspace(r.uniform(-0.08, 0.08), r.uniform(-0.08, 0.08), s, dtype=np.float32)
    canvas = cv2.GaussianBlur(canvas + light[None, :], (3, 3), 0) + r.normal(0, 0.01, (s, s)).astype(np.float32)
    return np.clip(canvas, 0, 1)


def write_synthetic_identities(root, identities=60, images_per_identity=8, size=64, seed=0):
    """Writes ROOT/id_XXX/NN.png: a small identity set for runs without --data."""
    os.makedirs(root, exist_ok=True)
    for j in range(identities):
        folder = os.path.join(root, f"id_{j:03d}")
        os.makedirs(folder, exist_ok=True)
        for k in range(images_per_identity):
            face = draw_synthetic_face(np.random.default_rng([seed, j]), np.random.default_rng([seed, j, k, 1]), size)
            cv2.imwrite(os.path.join(folder, f"{k:02d}.png"), (face * 255).astype(np.uint8))
    return root
