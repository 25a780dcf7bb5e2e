"""Data: the balanced labeled subset, the epoch order, scaling, augmentation, every source read from small
files written in the real formats (never downloaded), and the validation hold-out (docs/method.md sec. 3, 5).
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from ssgan.config import DataConfig
from ssgan.data import (DataError, augment, balanced_labeled_subset, epoch_order, load_data, scale_images,
                        tiled_permutation, unscale_images)


def _unbalanced_labels(seed: int = 0) -> np.ndarray:
    """Shuffled labels of 4 classes with 8, 9, 10 and 11 examples."""
    y = np.repeat(np.arange(4), [8, 9, 10, 11])
    return np.random.RandomState(seed).permutation(y)


# ------------------------------------------------------------------------------------------ labeled subset

def test_balanced_subset_has_equal_counts_per_class():
    y = _unbalanced_labels()
    idx = balanced_labeled_subset(y, n_labels=24, n_classes=4, seed=3)
    assert len(np.unique(idx)) == 24
    assert np.bincount(y[idx], minlength=4).tolist() == [6, 6, 6, 6]


def test_balanced_subset_follows_the_seeded_permutation():
    # Official code: permute the train set with RandomState(seed), then take the first n / K of each class.
    y = _unbalanced_labels()
    order = np.random.RandomState(5).permutation(len(y))
    expected = np.concatenate([order[y[order] == k][:2] for k in range(4)])
    assert np.array_equal(balanced_labeled_subset(y, 8, 4, seed=5), np.sort(expected))


def test_balanced_subset_same_seed_same_subset_different_seed_different_subset():
    y = _unbalanced_labels()
    first = balanced_labeled_subset(y, 12, 4, seed=1)
    assert np.array_equal(first, balanced_labeled_subset(y, 12, 4, seed=1))
    others = [balanced_labeled_subset(y, 12, 4, seed=s) for s in range(2, 6)]
    assert all(not np.array_equal(first, other) for other in others)


def test_balanced_subset_rejects_a_count_not_multiple_of_the_classes():
    with pytest.raises(DataError, match="not a multiple"):
        balanced_labeled_subset(_unbalanced_labels(), 10, 4, seed=0)


def test_balanced_subset_rejects_more_per_class_than_the_smallest_class_has():
    # 9 per class, but class 0 has only 8 examples.
    with pytest.raises(DataError, match="class 0 has only 8"):
        balanced_labeled_subset(_unbalanced_labels(), 36, 4, seed=0)


# ------------------------------------------------------------------------------------------ epoch order

def test_epoch_order_shapes_and_ranges():
    lab, unl, unl_fm = epoch_order(np.random.RandomState(0), n_lab=20, n_unl=70, iters=7, batch_size=10)
    for batches, n in ((lab, 20), (unl, 70), (unl_fm, 70)):
        assert batches.shape == (7, 10)
        assert batches.min() >= 0 and batches.max() < n


def test_labeled_stream_is_the_labeled_set_tiled_with_a_fresh_permutation_per_tile():
    lab, _, _ = epoch_order(np.random.RandomState(0), n_lab=20, n_unl=80, iters=8, batch_size=10)
    tiles = lab.reshape(4, 20)  # 80 draws = 4 tiles of the 20 labeled examples
    for tile in tiles:
        assert np.array_equal(np.sort(tile), np.arange(20))
    assert np.bincount(lab.ravel(), minlength=20).tolist() == [4] * 20
    assert not all(np.array_equal(tiles[0], tile) for tile in tiles[1:])  # reshuffled per tile


def test_tiled_permutation_cut_to_a_length_not_a_multiple():
    order = tiled_permutation(np.random.RandomState(0), n=6, length=15)
    assert order.shape == (15,)
    assert np.array_equal(np.sort(order[:6]), np.arange(6))
    assert np.array_equal(np.sort(order[6:12]), np.arange(6))
    assert set(np.bincount(order, minlength=6)) <= {2, 3}


def test_the_two_unlabeled_streams_are_independent_permutations():
    _, unl, unl_fm = epoch_order(np.random.RandomState(0), n_lab=10, n_unl=60, iters=6, batch_size=10)
    assert np.array_equal(np.sort(unl.ravel()), np.arange(60))
    assert np.array_equal(np.sort(unl_fm.ravel()), np.arange(60))
    assert not np.array_equal(unl, unl_fm)


def test_epoch_order_is_reproducible_from_the_rng_seed():
    first = epoch_order(np.random.RandomState(4), 10, 30, 3, 10)
    second = epoch_order(np.random.RandomState(4), 10, 30, 3, 10)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


# ------------------------------------------------------------------------------------------ scaling

def test_scale_unit():
    out = scale_images(np.array([0, 51, 255], np.uint8), "unit")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.2, 1.0], rtol=1e-6)
    # scikit-learn's digits: values 0..16
    np.testing.assert_array_equal(scale_images(np.array([0.0, 8.0, 16.0]), "unit", value_max=16.0),
                                  [0.0, 0.5, 1.0])


def test_scale_cifar_is_x_minus_127_5_over_128():
    x = np.arange(256, dtype=np.uint8)
    out = scale_images(x, "cifar")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (np.arange(256) - 127.5) / 128.0, rtol=0, atol=1e-6)
    assert out[0] == pytest.approx(-127.5 / 128) and out[-1] == pytest.approx(127.5 / 128)
    # another range is first brought to 0..255
    np.testing.assert_allclose(scale_images(np.array([0.0, 16.0]), "cifar", 16.0),
                               [-127.5 / 128, 127.5 / 128])


def test_scale_symmetric_maps_0_and_255_to_minus_1_and_1():
    out = scale_images(np.array([0, 127.5, 255]), "symmetric")
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0], atol=1e-7)


def test_scale_half_is_ct_gans_x_minus_127_5_over_255():
    out = scale_images(np.array([0, 127.5, 255]), "half")  # CT-GAN's cifar10_data.py: [-0.5, 0.5]
    np.testing.assert_allclose(out, [-0.5, 0.0, 0.5], atol=1e-7)


def test_scale_rejects_an_unknown_scaling():
    with pytest.raises(DataError, match="unknown scaling"):
        scale_images(np.zeros(3), "minmax")


@pytest.mark.parametrize("scaling", ["unit", "cifar", "symmetric", "half"])
def test_unscale_inverts_scale(scaling):
    x = np.arange(256, dtype=np.uint8).reshape(4, 1, 8, 8)
    np.testing.assert_allclose(unscale_images(scale_images(x, scaling), scaling), x / 255.0, atol=1e-6)


# ------------------------------------------------------------------------------------------ augmentation

def test_augment_keeps_the_shape():
    x = torch.randn(5, 3, 8, 8)
    assert augment(x, translate=2, flip=True).shape == x.shape


def test_augment_without_translation_or_flip_is_the_identity():
    x = torch.randn(5, 3, 8, 8)
    assert torch.equal(augment(x, translate=0, flip=False), x)


def test_flip_only_gives_each_example_or_its_mirror():
    x = torch.randn(32, 3, 6, 6)
    out = augment(x, translate=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(32)]
    kept = [torch.equal(out[i], x[i]) for i in range(32)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_translation_is_a_crop_of_the_reflect_padded_input():
    b, t = 16, 2
    x = torch.randn(b, 3, 8, 8)
    out = augment(x, translate=t, flip=False, generator=torch.Generator().manual_seed(7))
    padded = torch.nn.functional.pad(x, (t, t, t, t), mode="reflect")  # (B, C, 12, 12)
    # The same seed drawn directly: shifts[0] are the row offsets, shifts[1] the column offsets.
    shifts = torch.randint(0, 2 * t + 1, (2, b), generator=torch.Generator().manual_seed(7))
    dy, dx = int(shifts[0, 0]), int(shifts[1, 0])
    assert torch.equal(out[0], padded[0, :, dy:dy + 8, dx:dx + 8])
    # Without knowing the draws: every example is one of the (2t + 1)^2 crops, and not all are unshifted.
    offsets = []
    for i in range(b):
        matches = [(r, c) for r in range(2 * t + 1) for c in range(2 * t + 1)
                   if torch.equal(out[i], padded[i, :, r:r + 8, c:c + 8])]
        assert matches, f"example {i} is not a crop of the padded input"
        offsets.append(matches[0])
    assert len(set(offsets)) > 1


# ------------------------------------------------------------------------------------------ torchvision

@pytest.fixture
def skip_md5(monkeypatch):
    """torchvision checks the md5 sums of the real files: keep its file-exists check, drop only the md5."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", exists)
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", exists)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """The MNIST idx format: big-endian magic (0x0803 images, 0x0801 labels), dims, then uint8 data."""
    magic = 0x00000803 if array.ndim == 3 else 0x00000801
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, rng: np.random.RandomState):
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", 60), ("t10k", 20)):
        x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = rng.randint(0, 10, size=n).astype(np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", x)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
        arrays[split] = (x, y)
    return arrays


def test_mnist_from_idx_files(tmp_path):
    arrays = _write_mnist(tmp_path, np.random.RandomState(0))
    data = load_data(DataConfig(name="mnist", source="torchvision", root=str(tmp_path), labels=10,
                                image_shape=[1, 28, 28], scaling="unit"))
    (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["t10k"]
    assert data.x_train.shape == (60, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x_train.dtype == np.float32
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    np.testing.assert_allclose(data.x_train[:, 0], x_tr / 255.0, atol=1e-7)
    np.testing.assert_allclose(data.x_test[:, 0], x_te / 255.0, atol=1e-7)
    assert np.array_equal(data.y_train, y_tr) and np.array_equal(data.y_test, y_te)
    assert data.y_train.dtype == np.int64
    assert data.n_classes == 10


@pytest.mark.parametrize("content", [b"", np.random.RandomState(0).bytes(300)], ids=["empty", "corrupt"])
def test_mnist_unreadable_file_is_a_data_error(tmp_path, content):
    _write_mnist(tmp_path, np.random.RandomState(0))
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(content)
    with pytest.raises(DataError, match="mnist under .* could not be read"):
        load_data(DataConfig(name="mnist", source="torchvision", root=str(tmp_path), image_shape=[1, 28, 28]))


def _write_cifar10(root: Path, rng: np.random.RandomState):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name, n in [(f"data_batch_{i}", 2) for i in range(1, 6)] + [("test_batch", 3)]:
        x = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)  # (n, C, H, W)
        y = rng.randint(0, 10, size=n).tolist()
        # The python version stores each image as one row of 3072 bytes: the red plane, green, blue.
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": x.reshape(n, 3072), "labels": y}, f)
        batches[name] = (x, y)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    return batches, names


def test_cifar10_from_python_batches(tmp_path, skip_md5):
    batches, names = _write_cifar10(tmp_path, np.random.RandomState(0))
    data = load_data(DataConfig(name="cifar10", source="torchvision", root=str(tmp_path), labels=10,
                                image_shape=[3, 32, 32], scaling="cifar"))
    x_tr = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    y_tr = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    x_te, y_te = batches["test_batch"]
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(data.x_train, (x_tr - 127.5) / 128.0, atol=1e-6)
    np.testing.assert_allclose(data.x_test, (x_te - 127.5) / 128.0, atol=1e-6)
    assert data.y_train.tolist() == y_tr and data.y_test.tolist() == y_te
    assert data.class_names == names


def test_svhn_from_mat_files(tmp_path, skip_md5):
    rng = np.random.RandomState(0)
    written = {}
    for split, n in (("train", 12), ("test", 5)):
        x = rng.randint(0, 256, size=(32, 32, 3, n)).astype(np.uint8)  # (H, W, C, N) as in the .mat files
        # labels 1..10, where 10 is the digit 0
        y = np.concatenate([[10, 1], rng.randint(1, 11, size=n - 2)]).astype(np.uint8)[:, None]
        scipy.io.savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
        written[split] = (x, y[:, 0])
    data = load_data(DataConfig(name="svhn", source="torchvision", root=str(tmp_path), labels=10,
                                image_shape=[3, 32, 32], scaling="symmetric"))
    x_tr, y_tr = written["train"]
    assert data.x_train.shape == (12, 3, 32, 32) and data.x_test.shape == (5, 3, 32, 32)
    np.testing.assert_allclose(data.x_train, (x_tr.transpose(3, 2, 0, 1) - 127.5) / 127.5, atol=1e-6)
    assert data.x_train.min() >= -1.0 and data.x_train.max() <= 1.0
    assert data.y_train.tolist() == (y_tr % 10).tolist()
    assert data.y_train[0] == 0 and data.y_train[1] == 1
    assert data.y_test.tolist() == (written["test"][1] % 10).tolist()


@pytest.mark.parametrize("name, shape", [("mnist", [1, 28, 28]), ("cifar10", [3, 32, 32]),
                                         ("svhn", [3, 32, 32])])
def test_missing_torchvision_files_name_the_path_and_the_download_option(tmp_path, name, shape):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        load_data(DataConfig(name=name, source="torchvision", root=str(root), download=False,
                             image_shape=shape))
    message = str(error.value)
    assert str(root) in message and "dataset.download" in message
    assert "\n" not in message


# ------------------------------------------------------------------------------------------ folder

def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _write_folder(root: Path, rng: np.random.RandomState, channels: int = 1):
    """train/{zebra,ant}/, test/{zebra,ant}/ and unlabeled/ with 8x8 PNGs; returns the pixels written."""
    shape = (8, 8) if channels == 1 else (8, 8, channels)
    written = {}
    for split, n_per_class in (("train", 3), ("test", 2)):
        for name in ("zebra", "ant"):  # written out of order: labels follow the sorted names
            for i in range(n_per_class):
                pixels = rng.randint(0, 256, size=shape).astype(np.uint8)
                _save_png(root / split / name / f"{i:02d}.png", pixels)
                written[(split, name, i)] = pixels
    for i in range(4):
        pixels = rng.randint(0, 256, size=shape).astype(np.uint8)
        _save_png(root / "unlabeled" / f"u{i}.png", pixels)
        written[("unlabeled", i)] = pixels
    return written


def _folder_config(root: Path, channels: int = 1, **kwargs) -> DataConfig:
    return DataConfig(name="digits", source="folder", path=str(root), labels=2,
                      image_shape=[channels, 8, 8], scaling="unit", **kwargs)


def test_folder_classes_labels_and_unlabeled_images(tmp_path):
    written = _write_folder(tmp_path, np.random.RandomState(0))
    data = load_data(_folder_config(tmp_path))
    assert data.class_names == ["ant", "zebra"]
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [0, 0, 1, 1]
    assert data.x_train.shape == (6, 1, 8, 8) and data.x_test.shape == (4, 1, 8, 8)
    np.testing.assert_allclose(data.x_train[0, 0], written[("train", "ant", 0)] / 255.0, atol=1e-7)
    np.testing.assert_allclose(data.x_train[5, 0], written[("train", "zebra", 2)] / 255.0, atol=1e-7)
    assert data.x_unlabeled.shape == (10, 1, 8, 8)  # the 6 train images and the 4 unlabeled-only ones
    extras = np.stack([written[("unlabeled", i)] for i in range(4)])  # (4, 8, 8)
    np.testing.assert_allclose(data.x_unlabeled[6:, 0], extras / 255.0, atol=1e-7)


def test_folder_rgb_images_become_nchw(tmp_path):
    written = _write_folder(tmp_path, np.random.RandomState(1), channels=3)
    data = load_data(_folder_config(tmp_path, channels=3))
    assert data.x_train.shape == (6, 3, 8, 8)
    np.testing.assert_allclose(data.x_train[3], written[("train", "zebra", 0)].transpose(2, 0, 1) / 255.0,
                               atol=1e-7)


@pytest.mark.filterwarnings("error")
def test_folder_image_of_another_size_needs_resize(tmp_path):
    _write_folder(tmp_path, np.random.RandomState(0))
    _save_png(tmp_path / "train" / "ant" / "big.png", np.full((12, 12), 200, np.uint8))
    with pytest.raises(DataError, match="resize"):
        load_data(_folder_config(tmp_path))
    data = load_data(_folder_config(tmp_path, resize=True))
    assert data.x_train.shape == (7, 1, 8, 8)
    big = data.x_train[3, 0]  # ant/00, ant/01, ant/02, then ant/big.png
    np.testing.assert_allclose(big, np.full((8, 8), 200 / 255.0), atol=1e-5)


def test_folder_all_images_of_another_size_need_resize(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            _save_png(tmp_path / split / name / "0.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match="10x10.*dataset.resize=true"):
        load_data(_folder_config(tmp_path))
    assert load_data(_folder_config(tmp_path, resize=True)).x_train.shape == (2, 1, 8, 8)


def test_folder_corrupt_image_names_the_file(tmp_path):
    _write_folder(tmp_path, np.random.RandomState(0))
    bad = tmp_path / "train" / "zebra" / "broken.png"
    bad.write_bytes(np.random.RandomState(0).bytes(200))
    with pytest.raises(DataError, match="broken.png") as error:
        load_data(_folder_config(tmp_path))
    assert str(bad) in str(error.value)


@pytest.mark.parametrize("with_class_folders", [False, True])
def test_folder_empty_train_folder(tmp_path, with_class_folders):
    _save_png(tmp_path / "test" / "a" / "0.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "train").mkdir()
    if with_class_folders:
        (tmp_path / "train" / "a").mkdir()
        (tmp_path / "train" / "b").mkdir()
    with pytest.raises(DataError, match="train"):
        load_data(_folder_config(tmp_path))


# ------------------------------------------------------------------------------------------ npz

def _npz_arrays(rng: np.random.RandomState, shape=(8, 8, 3), n_train=12, n_test=6, n_classes=3):
    return {"x_train": rng.randint(0, 256, size=(n_train, *shape)).astype(np.uint8),
            "y_train": np.arange(n_train) % n_classes,
            "x_test": rng.randint(0, 256, size=(n_test, *shape)).astype(np.uint8),
            "y_test": np.arange(n_test) % n_classes}


def _npz_config(path: Path, channels: int, **kwargs) -> DataConfig:
    return DataConfig(name="cifar10", source="npz", path=str(path), labels=3, image_shape=[channels, 8, 8],
                      scaling="cifar", **kwargs)


def test_npz_nhwc_uint8(tmp_path):
    arrays = _npz_arrays(np.random.RandomState(0))
    np.savez(tmp_path / "d.npz", **arrays)
    data = load_data(_npz_config(tmp_path / "d.npz", 3))
    assert data.x_train.shape == (12, 3, 8, 8) and data.x_test.shape == (6, 3, 8, 8)
    nchw = arrays["x_train"].transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    np.testing.assert_allclose(data.x_train, (nchw - 127.5) / 128, atol=1e-6)
    assert data.y_train.tolist() == arrays["y_train"].tolist()
    assert data.class_names == ["0", "1", "2"]
    assert data.x_extra is None and len(data.x_unlabeled) == 12


def test_npz_grayscale_with_classes_and_unlabeled(tmp_path):
    rng = np.random.RandomState(0)
    arrays = _npz_arrays(rng, shape=(8, 8))
    x_unl = rng.randint(0, 256, size=(5, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", classes=np.array(["cat", "dog", "emu"]), x_unlabeled=x_unl, **arrays)
    data = load_data(_npz_config(tmp_path / "d.npz", 1))
    assert data.x_train.shape == (12, 1, 8, 8)
    np.testing.assert_allclose(data.x_test[:, 0], (arrays["x_test"] - 127.5) / 128, atol=1e-6)
    assert data.class_names == ["cat", "dog", "emu"]
    assert data.x_unlabeled.shape == (17, 1, 8, 8)
    np.testing.assert_allclose(data.x_unlabeled[12:, 0], (x_unl - 127.5) / 128, atol=1e-6)


def test_npz_class_names_stored_as_bytes(tmp_path):
    arrays = _npz_arrays(np.random.RandomState(0))
    np.savez(tmp_path / "d.npz", classes=np.array([b"cat", b"dog", b"emu"]), **arrays)
    assert load_data(_npz_config(tmp_path / "d.npz", 3)).class_names == ["cat", "dog", "emu"]


def _bad_missing(arrays):
    del arrays["y_test"]


def _bad_out_of_range(arrays):
    arrays["y_train"][0] = 3  # 3 classes named


def _bad_negative(arrays):
    arrays["y_test"][0] = -1


def _bad_float_labels(arrays):
    arrays["y_train"] = arrays["y_train"].astype(np.float32)


def _bad_1d_images(arrays):
    arrays["x_train"] = arrays["x_train"].reshape(-1)[:12]


def _bad_label_count(arrays):
    arrays["y_train"] = arrays["y_train"][:-1]


@pytest.mark.parametrize("spoil, message", [
    (_bad_missing, "missing arrays.*y_test"),
    (_bad_out_of_range, "train labels must lie in 0..2"),
    (_bad_negative, "test labels must lie in"),
    (_bad_float_labels, "y_train must be a 1-d integer array"),
    (_bad_1d_images, "x_train: expected images of shape"),
    (_bad_label_count, "y_train has 11 labels for 12 images"),
])
def test_npz_bad_input_is_a_one_line_data_error(tmp_path, spoil, message):
    arrays = _npz_arrays(np.random.RandomState(0))
    spoil(arrays)
    np.savez(tmp_path / "d.npz", classes=np.array(["a", "b", "c"]), **arrays)
    with pytest.raises(DataError, match=message) as error:
        load_data(_npz_config(tmp_path / "d.npz", 3))
    assert "\n" not in str(error.value)


def test_npz_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_data(_npz_config(tmp_path / "absent.npz", 3))


# ------------------------------------------------------------------------------------------ digits

def test_digits_builtin_split():
    data = load_data(DataConfig())
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    assert data.x_train.dtype == np.float32
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0  # 16 / 16
    assert data.x_test.min() >= 0.0 and data.x_test.max() <= 1.0
    assert data.class_names == [str(k) for k in range(10)]
    # stratified 75 / 25: each class's share of the test split is a quarter, up to rounding
    n_all = np.bincount(np.concatenate([data.y_train, data.y_test]), minlength=10)
    assert np.all(np.abs(np.bincount(data.y_test, minlength=10) - n_all / 4) <= 1)
    # random_state 0: the same split every time
    assert np.array_equal(load_data(DataConfig()).y_train, data.y_train)


# ------------------------------------------------------------------------------------------ validation

def _write_indexed_npz(path: Path) -> None:
    """60 train images, 10 classes of 6; image i has every pixel equal to i, so it can be traced."""
    ids = np.arange(60)
    np.savez(path, x_train=np.repeat(ids, 64).reshape(60, 8, 8).astype(np.uint8), y_train=ids % 10,
             x_test=np.zeros((10, 8, 8), np.uint8), y_test=np.arange(10))


def _ids(x: np.ndarray) -> np.ndarray:
    return np.rint(x[:, 0, 0, 0] * 255).astype(int)


@pytest.mark.parametrize("val_size, n_val", [(0.5, 30), (20, 20), (20.0, 20)])
def test_val_size_holds_out_a_stratified_disjoint_split(tmp_path, val_size, n_val):
    _write_indexed_npz(tmp_path / "d.npz")
    cfg = DataConfig(source="npz", path=str(tmp_path / "d.npz"), val_size=val_size)
    data = load_data(cfg, seed=1)
    train_ids, val_ids = _ids(data.x_train), _ids(data.x_val)
    assert len(val_ids) == n_val and len(train_ids) == 60 - n_val
    assert not set(train_ids) & set(val_ids)
    assert sorted(np.concatenate([train_ids, val_ids]).tolist()) == list(range(60))
    assert np.array_equal(data.y_val, val_ids % 10) and np.array_equal(data.y_train, train_ids % 10)
    assert np.array_equal(data.val_indices, val_ids)
    assert np.bincount(data.y_val, minlength=10).tolist() == [n_val // 10] * 10  # stratified
    assert set(_ids(data.x_unlabeled)) == set(train_ids)  # held-out images are not in the unlabeled pool
    assert not np.array_equal(load_data(cfg, seed=2).val_indices, data.val_indices)


@pytest.mark.parametrize("val_size", [60, 0.999, 5])
def test_val_size_that_cannot_be_held_out_is_a_data_error(tmp_path, val_size):
    # 60 leaves no train image; 0.999 rounds to 60; 5 is fewer than the 10 classes of a stratified split.
    _write_indexed_npz(tmp_path / "d.npz")
    with pytest.raises(DataError, match="dataset.val_size"):
        load_data(DataConfig(source="npz", path=str(tmp_path / "d.npz"), val_size=val_size))


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_16_bit_pngs_read_at_their_depth(tmp_path, channels):
    """A 16-bit PNG is the same picture as its 8-bit copy (0..65535 scaled, not clipped at 255 to white)."""
    written = _write_folder(tmp_path, np.random.RandomState(2))
    eight_bit = load_data(_folder_config(tmp_path, channels))
    for path in tmp_path.rglob("*.png"):
        pixels = np.asarray(Image.open(path), dtype=np.uint16) * 257  # 255 -> 65535
        Image.fromarray(pixels).save(path)
        assert Image.open(path).mode.startswith("I")
    sixteen_bit = load_data(_folder_config(tmp_path, channels))
    np.testing.assert_array_equal(sixteen_bit.x_train, eight_bit.x_train)
    np.testing.assert_array_equal(sixteen_bit.x_unlabeled, eight_bit.x_unlabeled)
    assert written


def test_folder_float_image_is_refused_with_one_line(tmp_path):
    _write_folder(tmp_path, np.random.RandomState(0))
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(tmp_path / "train" / "ant" / "float.tiff")
    with pytest.raises(DataError, match="float.tiff: floating-point images are not supported"):
        load_data(_folder_config(tmp_path))


def test_read_inputs_takes_the_pixel_range_of_uint8_before_converting_or_resizing(tmp_path):
    """uint8 colour images of 0..255 for the digits recipe (grey, 8x8, source range 0..16): the channel mean
    and the resize make floats of them, which must still read as 0..255 (not the digits' 0..16), and an
    antialiased resize of a white image stays at 255 (float rounding gave 255.00002, refused)."""
    from ssgan.config import DataConfig
    from ssgan.data import read_inputs

    np.savez(tmp_path / "rgb.npz", x=np.full((3, 8, 8, 3), 255, np.uint8))
    np.savez(tmp_path / "big.npz", x=np.full((3, 32, 32), 255, np.uint8))
    _, x = read_inputs([str(tmp_path / "rgb.npz")], DataConfig())
    assert x.shape == (3, 1, 8, 8) and np.allclose(x, 1.0)
    _, x = read_inputs([str(tmp_path / "big.npz")], DataConfig(resize=True))
    assert x.shape == (3, 1, 8, 8) and x.max() <= 1.0 and np.allclose(x, 1.0)
