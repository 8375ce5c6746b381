"""The identity-folder reader (corrupt files), the centre crop, augmentation and the P x K sampler."""

import os
import shutil

import cv2

import numpy as np
import pytest

from faceops.driver import data


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
