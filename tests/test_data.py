"""The identity-folder reader (corrupt, truncated and too-large files; 8-bit, 16-bit and float
pixels), the centre crop, augmentation and the P x K sampler."""

import os
import shutil
import zlib

import cv2

import numpy as np
import pytest

from faceops.driver import data, evaluate


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return data.write_synthetic_identities(str(tmp_path_factory.mktemp("faces")), identities=3, images_per_identity=3, size=48)


def test_reader_lists_corrupt_and_truncated_files(synthetic_root, tmp_path):
    root = tmp_path / "people"
    for person in ("alice", "bob"):
        (root / person).mkdir(parents=True)
        for k in range(3):
            shutil.copyfile(os.path.join(synthetic_root, "id_000", f"{k:02d}.png"), root / person / f"{k}.png")
    (root / "alice" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "bob" / "empty.pgm").write_bytes(b"")
    # A real JPEG cut short: OpenCV's imread decodes such a file partly (the rest grey).
    face = (data.draw_synthetic_face(np.random.default_rng(1), np.random.default_rng(2), 96) * 255).astype(np.uint8)
    jpeg = cv2.imencode(".jpg", face)[1].tobytes()
    (root / "bob" / "cut.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 3])
    png = cv2.imencode(".png", face)[1].tobytes()
    (root / "bob" / "cut.png").write_bytes(png[:-20])
    faces = data.load_identity_folder(str(root), size=32)
    skipped = dict(faces.skipped)
    assert set(skipped) == {str(root / "alice" / "broken.jpg"), str(root / "bob" / "empty.pgm"),
                            str(root / "bob" / "cut.jpg"), str(root / "bob" / "cut.png")}
    assert skipped[str(root / "bob" / "cut.jpg")].startswith("truncated JPEG")
    assert skipped[str(root / "bob" / "cut.png")].startswith("truncated PNG")
    assert skipped[str(root / "bob" / "empty.pgm")] == "empty file"
    assert faces.images.shape == (6, 32, 32) and faces.names == ["alice", "bob"]
    np.testing.assert_array_equal(faces.labels, [0, 0, 0, 1, 1, 1])
    line = data.describe_skipped(faces.skipped)
    assert line.startswith("skipped 4 image file(s): ") and "cut.jpg (truncated JPEG" in line
    # Complete files pass; an end-of-image marker before the last scan (an EXIF thumbnail's) does not count.
    assert data.truncation(jpeg) is None and data.truncation(png) is None
    assert data.truncation(jpeg[:2] + b"\xff\xd9" + jpeg[2:]) is None
    assert data.truncation(jpeg[:2] + b"\xff\xd9" + jpeg[2:-2]) is not None


def test_reader_errors_name_the_problem(synthetic_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        data.load_identity_folder(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="id_999"):
        data.load_identity_folder(synthetic_root, identities=["id_000", "id_999"])
    (tmp_path / "empty" / "nobody").mkdir(parents=True)
    with pytest.raises(ValueError, match="no readable images"):
        data.load_identity_folder(str(tmp_path / "empty"))


def test_centre_crop_keeps_the_middle():
    image = np.zeros((100, 80), np.uint8)
    image[25:75, 20:60] = 255  # the central half of each side
    np.testing.assert_array_equal(data.prepare(image, 10, crop=0.5), np.ones((10, 10), np.float32))
    colour = np.dstack([image] * 3)
    assert data.prepare(colour, 16, crop=1.0).shape == (16, 16)


def test_augment_keeps_shape_and_range_and_is_seeded(synthetic_root):
    faces = data.load_identity_folder(synthetic_root, size=32)
    first = data.augment(faces.images, np.random.default_rng(5))
    again = data.augment(faces.images, np.random.default_rng(5))
    assert first.shape == faces.images.shape and first.dtype == np.float32
    assert first.min() >= 0 and first.max() <= 1
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, faces.images)


def test_pk_sampler_guarantees():
    labels = np.array([0] * 5 + [1] * 1 + [2] * 3 + [3] * 4 + [4] * 2)
    sampler = data.PKSampler(labels, identities_per_batch=2, images_per_identity=3)
    seen = set()
    batches = list(sampler.epoch(np.random.default_rng(0)))
    assert len(batches) == sampler.batches_per_epoch() == 2
    for rows in batches:
        assert len(rows) == 6
        groups = labels[rows].reshape(2, 3)
        assert (groups == groups[:, :1]).all() and groups[0, 0] != groups[1, 0]  # P distinct identities x K
        for group_rows, identity in zip(rows.reshape(2, 3), groups[:, 0]):
            assert (labels[group_rows] == identity).all()
            if np.count_nonzero(labels == identity) >= 3:  # enough images: none repeats
                assert len(set(group_rows.tolist())) == 3
        seen.update(groups[:, 0].tolist())
    assert len(seen) == 4  # identities are not repeated within an epoch
    with pytest.raises(ValueError, match="--identities-per-batch: 6 exceeds the 5 identities"):
        data.PKSampler(labels, 6, 2)
    with pytest.raises(ValueError, match="--images-per-identity: expected at least 2"):
        data.PKSampler(labels, 2, 1)


def test_synthetic_identities_are_reproducible(tmp_path):
    a = data.write_synthetic_identities(str(tmp_path / "a"), identities=2, images_per_identity=2, size=32, seed=3)
    b = data.write_synthetic_identities(str(tmp_path / "b"), identities=2, images_per_identity=2, size=32, seed=3)
    faces_a, faces_b = data.load_identity_folder(a, 32), data.load_identity_folder(b, 32)
    np.testing.assert_array_equal(faces_a.images, faces_b.images)
    assert faces_a.names == ["id_000", "id_001"]


def test_max_images_keeps_each_identitys_first_images(synthetic_root, tmp_path):
    full = data.load_identity_folder(synthetic_root, size=32)
    shallow = data.load_identity_folder(synthetic_root, size=32, max_images=2)
    assert shallow.names == full.names and np.bincount(shallow.labels).tolist() == [2, 2, 2]
    assert [os.path.basename(p) for p in shallow.paths] == ["00.png", "01.png"] * 3  # sorted file order
    np.testing.assert_array_equal(shallow.images, full.images[np.isin([os.path.basename(p) for p in full.paths],
                                                                      ["00.png", "01.png"])])
    # Unreadable files do not count: the first two *readable* images are kept.
    root = tmp_path / "people" / "carol"
    root.mkdir(parents=True)
    (root / "0.jpg").write_bytes(b"not an image")
    for k in (1, 2, 3):
        shutil.copyfile(os.path.join(synthetic_root, "id_000", f"{k - 1:02d}.png"), root / f"{k}.png")
    carol = data.load_identity_folder(str(tmp_path / "people"), size=32, max_images=2)
    assert [os.path.basename(p) for p in carol.paths] == ["1.png", "2.png"]


def _face(size=96):
    return (data.draw_synthetic_face(np.random.default_rng(1), np.random.default_rng(2), size) * 255).astype(np.uint8)


def _png_declaring(width, height):
    """A tiny PNG whose IHDR chunk declares width x height (its CRC recomputed): the
    decoder refuses it on the header alone, so nothing of that size is allocated."""
    png = bytearray(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())
    assert png[12:16] == b"IHDR"  # signature (8), then the IHDR chunk: length (4), type (4), data (13), CRC (4)
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    png[29:33] = zlib.crc32(png[12:29]).to_bytes(4, "big")
    return bytes(png)


def test_an_image_too_large_to_decode_is_skipped_and_named(synthetic_root, tmp_path):
    root = tmp_path / "people"
    (root / "alice").mkdir(parents=True)
    for k in range(2):
        shutil.copyfile(os.path.join(synthetic_root, "id_000", f"{k:02d}.png"), root / "alice" / f"{k}.png")
    (root / "alice" / "huge.png").write_bytes(_png_declaring(50000, 50000))
    faces = data.load_identity_folder(str(root), size=32)
    assert faces.images.shape == (2, 32, 32)
    assert [path for path, _ in faces.skipped] == [str(root / "alice" / "huge.png")]
    assert faces.skipped[0][1].startswith("image too large to decode")
    # `faceops eval`: a pairs file naming the image is an error naming both files, not cv2.error.
    (root / "alice" / "alice_0001.jpg").write_bytes(_png_declaring(50000, 50000))
    shutil.copyfile(root / "alice" / "0.png", root / "alice" / "alice_0002.jpg")
    (tmp_path / "pairs.txt").write_text("alice 1 2\n")
    with pytest.raises(ValueError, match=r"pairs.txt names .*alice_0001.jpg, which cannot be used: image too large"):
        evaluate.read_pair_images(str(root), str(tmp_path / "pairs.txt"), 32, 1.0)


def test_integer_images_are_scaled_by_their_types_full_range(tmp_path):
    face8 = _face()
    assert 0 < face8.min() and face8.max() < 255  # a per-image contrast stretch would move these pixels
    cv2.imwrite(str(tmp_path / "face8.png"), face8)
    cv2.imwrite(str(tmp_path / "face16.png"), face8.astype(np.uint16) * 257)  # 257 = 65535 / 255
    cv2.imwrite(str(tmp_path / "flat16.png"), np.full((40, 30), 40000, np.uint16))

    def read(name, size):
        image, why = data.read_image(str(tmp_path / name), size, 1.0)
        assert why is None
        return image

    # The 8-bit path as it always was: resized in 8 bits, then divided by 255.
    expected8 = cv2.resize(face8, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    np.testing.assert_array_equal(read("face8.png", 32), expected8)
    # Unresized, the 16-bit copy is the same picture to float rounding; resized, the
    # 8-bit path rounds each pixel to a whole grey level, so up to half a level apart.
    np.testing.assert_allclose(read("face16.png", 96), read("face8.png", 96), rtol=0, atol=1e-6)
    np.testing.assert_allclose(read("face16.png", 32), expected8, rtol=0, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(read("flat16.png", 16), np.full((16, 16), 40000 / 65535), rtol=1e-6)


def test_float_images_are_taken_as_zero_to_one_and_non_finite_ones_are_skipped(tmp_path):
    face = _face().astype(np.float32) / 255
    cv2.imwrite(str(tmp_path / "face.tiff"), face)
    image, why = data.read_image(str(tmp_path / "face.tiff"), 32, 1.0)
    assert why is None
    np.testing.assert_allclose(image, cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA), rtol=0, atol=1e-6)
    for name, pixel, reason in [("nan.tiff", np.nan, "non-finite pixels"), ("inf.tiff", np.inf, "non-finite pixels"),
                                ("levels.tiff", 200.0, "float pixels outside [0, 1]")]:
        bad = face.copy()
        bad[10, 10] = pixel
        cv2.imwrite(str(tmp_path / name), bad)
        image, why = data.read_image(str(tmp_path / name), 32, 1.0)
        assert image is None and why.startswith(reason), (name, why)


def test_bytes_after_the_end_of_an_image_are_not_truncation(tmp_path):
    face = _face()
    png, jpeg = (cv2.imencode(ext, face)[1].tobytes() for ext in (".png", ".jpg"))
    # Data appended after the end, such as a phone's video trailer after a motion photo's JPEG.
    trailer = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\xff\xd8" + bytes(range(48))
    root = tmp_path / "people"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "plain.png").write_bytes(png)
    (root / "alice" / "trailer.png").write_bytes(png + trailer)
    (root / "alice" / "plain.jpg").write_bytes(jpeg)
    (root / "alice" / "trailer.jpg").write_bytes(jpeg + trailer)
    faces = data.load_identity_folder(str(root), size=32)
    assert faces.skipped == [] and len(faces.paths) == 4
    by_name = dict(zip((os.path.basename(p) for p in faces.paths), faces.images))
    np.testing.assert_array_equal(by_name["trailer.png"], by_name["plain.png"])
    np.testing.assert_array_equal(by_name["trailer.jpg"], by_name["plain.jpg"])
    # Still truncated: an end chunk or marker cut off, whatever follows the cut.
    assert data.truncation(png[:-12] + trailer).startswith("truncated PNG")
    assert data.truncation(jpeg[: len(jpeg) // 2] + trailer).startswith("truncated JPEG")
    # An EXIF thumbnail (a whole JPEG inside the APP1 segment) does not end the photo.
    thumbnail = cv2.imencode(".jpg", face[::4, ::4])[1].tobytes()
    app1 = b"\xff\xe1" + (2 + 6 + len(thumbnail)).to_bytes(2, "big") + b"Exif\x00\x00" + thumbnail
    photo = jpeg[:2] + app1 + jpeg[2:]
    assert data.truncation(photo) is None and data.truncation(photo + trailer) is None
    assert data.truncation(photo[: len(photo) * 2 // 3]).startswith("truncated JPEG")
