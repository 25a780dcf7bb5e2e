"""Data: loading every source into arrays, scaling, the balanced labeled subset, the epoch order and the
translate / flip augmentation (docs/method.md sec. 3, 5).

Sources: scikit-learn's digits (``builtin``); torchvision's MNIST, CIFAR10 and SVHN classes
(``torchvision``, with ``dataset.root`` and ``dataset.download``); an image folder (``folder``:
train/<class>/*, test/<class>/*, optional unlabeled/*) and an .npz (``npz``: x_train, y_train, x_test,
y_test, optional x_unlabeled and classes). Whatever the source, the recipe (network, scaling, schedule)
is that of the named data set, and images must have its size unless ``dataset.resize=true``.
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from .config import DATASETS, DataConfig, first_line

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class DataError(ValueError):
    """Data that cannot be used as asked: reported as one line, exit code 2."""


@dataclass
class ImageData:
    """Scaled float32 images in (N, C, H, W) and int64 labels in 0..K-1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: List[str]
    x_extra: Optional[np.ndarray] = None  # unlabeled-only images (folder unlabeled/, npz x_unlabeled)
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    val_indices: Optional[np.ndarray] = field(default=None, repr=False)
    # The label value of each class as the data set gives it (ints 0..K-1 for torchvision, digits and npz; the
    # folder names for folders), so that predictions compare with the data's own y. None: 0..K-1.
    class_values: Optional[List] = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_values(self) -> List:
        return list(range(self.n_classes)) if self.class_values is None else list(self.class_values)

    @cached_property
    def x_unlabeled(self) -> np.ndarray:
        """The unlabeled pool: the whole train split (labeled examples included, as in the official code)
        plus the unlabeled-only images."""
        if self.x_extra is None or len(self.x_extra) == 0:
            return self.x_train
        return np.concatenate([self.x_train, self.x_extra])


# ----------------------------------------------------------------------------------------------- scaling

# The centred scalings: (x - 127.5) / divisor on 0..255 pixel values (docs/method.md sec. 6.6).
CENTRED_DIVISORS = {"cifar": 128.0,  # Improved GAN's CIFAR-10 loader: [-0.996, 0.996]
                    "symmetric": 127.5,  # Improved GAN's SVHN: [-1, 1]
                    "half": 255.0}  # CT-GAN's CIFAR-10 loader: [-0.5, 0.5]


def scale_images(x: np.ndarray, scaling: str, value_max: float = 255.0) -> np.ndarray:
    """Scale raw pixel values to the recipe's input range (docs/method.md sec. 3, 6.6).

    unit: x / value_max -> [0, 1] (MNIST; digits with value_max 16); the centred scalings of
    ``CENTRED_DIVISORS``: (x - 127.5) / divisor, values first brought to 0..255.
    """
    x = x.astype(np.float32)
    if scaling == "unit":
        return x / np.float32(value_max)
    if scaling not in CENTRED_DIVISORS:
        raise DataError(f"unknown scaling {scaling!r}")
    x = x * np.float32(255.0 / value_max)
    return (x - 127.5) / CENTRED_DIVISORS[scaling]


def unscale_images(x: np.ndarray, scaling: str) -> np.ndarray:
    """Inverse of ``scale_images`` to [0, 1], for writing sample grids (a generator's tanh output may exceed
    the data's range: it is clipped)."""
    out = x if scaling == "unit" else (x * CENTRED_DIVISORS[scaling] + 127.5) / 255.0
    return np.clip(out, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- sources

def _to_nchw(x: np.ndarray, channels: int, what: str, convert: bool = True) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W). ``convert=False``: grey images for a colour
    recipe, or colour ones for a grey recipe, are refused rather than converted (an alpha channel is dropped)."""
    shape = x.shape
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        channels_last = x.shape[-1] in (1, 3, 4) and not (x.shape[1] == channels != x.shape[-1])
        if channels_last:
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{what}: expected images of shape (N, H, W) or (N, H, W, C), got {x.shape}")
    if x.shape[1] != channels:
        if not convert and (x.shape[1] == 1) != (channels == 1):
            raise _channel_error(what, x.shape[1], channels)
        if x.shape[1] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=1)
        elif x.shape[1] in (3, 4) and channels == 1:
            x = x[:, :3].mean(axis=1, keepdims=True)
        elif x.shape[1] == 4 and channels == 3:
            x = x[:, :3]
        else:
            read_as = (f"{shape[-1]} channels as (N, H, W, C) or {shape[1]} as (N, C, H, W)" if len(shape) == 4
                       else f"{x.shape[1]} channels")
            raise DataError(f"{what}: images of shape {shape} have {read_as}; the recipe needs {channels}")
    return x


def _channel_error(what: str, found: int, channels: int) -> DataError:
    return DataError(f"{what}: images have {found} channel{'s' * (found != 1)}, the recipe's have {channels}; "
                     f"they are converted only when asked (ssgan evaluate --convert-channels)")


def prepare_images(x: np.ndarray, cfg: DataConfig, what: str, *, convert_channels: bool = True) -> np.ndarray:
    """Any accepted layout -> (N, C, H, W) with the recipe's channels and size (resized only with
    ``dataset.resize=true``); ``what`` names the input in error messages."""
    return _check_size(_to_nchw(np.asarray(x), cfg.image_shape[0], what, convert_channels), cfg, what)


def check_pixels(x: np.ndarray, value_max: float, what: str) -> None:
    """Raw pixel values must be finite real numbers in 0..value_max: NaN, infinities, complex numbers and
    values out of the range are refused rather than trained on or predicted silently."""
    if np.iscomplexobj(x) or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{what} have dtype {x.dtype}; expected real pixel values")
    if x.size == 0 or x.dtype == np.uint8 and value_max >= 255:
        return  # nothing to check
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > value_max:
        raise DataError(f"{what}: pixel values must lie in 0..{value_max:g}, found {low:g}..{high:g}")


def input_value_max(x: np.ndarray, cfg: DataConfig) -> float:
    """The pixel value that stands for white in images given for prediction (or to the estimator), when
    none is stated: uint8: 255; floats of at most 1: 1 (already in [0, 1]); otherwise the raw range of the
    run's source, 16 for scikit-learn's digits (``load_digits`` gives 0..16) and 255 for every other."""
    if x.dtype == np.uint8:
        return 255.0
    if np.issubdtype(x.dtype, np.floating) and x.size and float(np.max(x)) <= 1.0:
        return 1.0
    return source_value_max(cfg)


def source_value_max(cfg: DataConfig) -> float:
    """The pixel value that stands for white in the raw images of the run's source: 16 for scikit-learn's
    digits (``load_digits`` gives 0..16), 255 for every other source."""
    return 16.0 if cfg.source == "builtin" else 255.0


def _resize(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.array(x, dtype=np.float32))  # a copy: arrays read by PIL are not writable
    out = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    # each output pixel is a weighted mean of input pixels: clipped to their range, which float rounding
    # would leave by ~1e-5 (255.00002 is refused as out of 0..255)
    return out.clamp(float(t.min()), float(t.max())).numpy() if t.numel() else out.numpy()


RESIZE_ADVICE = "pass dataset.resize=true to resize them"


def _check_size(x: np.ndarray, cfg: DataConfig, what: str) -> np.ndarray:
    _, height, width = cfg.image_shape
    if x.shape[2:] == (height, width):
        return x
    if not cfg.resize:
        raise DataError(f"{what}: images are {x.shape[2]}x{x.shape[3]}, the {cfg.name} recipe needs "
                        f"{height}x{width}; {RESIZE_ADVICE}")
    return _resize(x, (height, width))


def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.25, stratify=digits.target,
                                              random_state=0)
    names = [str(c) for c in digits.target_names]
    return x_tr, y_tr, x_te, y_te, names, None, 16.0


def _missing(cfg: DataConfig, where: str) -> DataError:
    return DataError(f"{cfg.name} not found under {where}: pass dataset.download=true to download it, "
                     f"or dataset.root=DIR to point at an existing copy")


TORCHVISION_DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR10", "svhn": "SVHN"}  # configs/dataset/ names ->
# torchvision's classes (tests/test_data.py: every data set of configs/dataset/ but digits is here)


def _load_torchvision(cfg: DataConfig):
    import torchvision.datasets as tvd

    root = os.path.expanduser(cfg.root)
    try:
        if cfg.name == "mnist":
            train = tvd.MNIST(root, train=True, download=cfg.download)
            test = tvd.MNIST(root, train=False, download=cfg.download)
            return (train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy(),
                    list(train.classes), None, 255.0)
        if cfg.name == "cifar10":
            train = tvd.CIFAR10(root, train=True, download=cfg.download)
            test = tvd.CIFAR10(root, train=False, download=cfg.download)
            return (train.data, np.asarray(train.targets), test.data, np.asarray(test.targets),
                    list(train.classes), None, 255.0)
        if cfg.name == "svhn":
            train = tvd.SVHN(root, split="train", download=cfg.download)
            test = tvd.SVHN(root, split="test", download=cfg.download)
            return (train.data, np.asarray(train.labels), test.data, np.asarray(test.labels),
                    [str(i) for i in range(10)], None, 255.0)
    except RuntimeError as error:
        if "not found" in str(error).lower() or "corrupted" in str(error).lower():
            where = {"mnist": os.path.join(root, "MNIST", "raw"),
                     "cifar10": os.path.join(root, "cifar-10-batches-py"),
                     "svhn": os.path.join(root, "{train,test}_32x32.mat")}[cfg.name]
            raise _missing(cfg, where) from None
        raise DataError(f"{cfg.name} under {root}: {error}") from None
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as error:
        # torchvision's MNIST reader checks a corrupt idx header with assert and the dtype with TypeError
        raise DataError(f"{cfg.name} under {root} could not be read: "
                        f"{error.__class__.__name__}: {error}") from None
    raise DataError(f"dataset.source=torchvision has no data set {cfg.name!r}; use one of "
                    f"{', '.join(n for n in DATASETS if n in TORCHVISION_DATASETS)}, or dataset.source=folder|npz")


def _read_image(path: Path, channels: int, convert: bool = True) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "LA", "F") or image.mode.startswith("I")
            if not convert and grey != (channels == 1):
                raise _channel_error(str(path), 1 if grey else len(image.getbands()), channels)
            if image.mode.startswith("I"):  # 16-bit grey ("I;16*", or "I" as Pillow opens 16-bit PNGs)
                return _from_16_bit(np.asarray(image), channels, path)
            if image.mode == "F":
                raise DataError(f"cannot read image {path}: floating-point images are not supported; save it "
                                f"as an 8- or 16-bit image")
            image = image.convert("L" if channels == 1 else "RGB")
            return np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot read image {path}: {error.__class__.__name__}: {error}") from None


def _from_16_bit(pixels: np.ndarray, channels: int, path: Path) -> np.ndarray:
    """A 16-bit grey image at its depth: 0..65535 mapped to 0..255 (rounded), as an 8-bit image of the same
    picture reads (``convert("L")`` would clip at 255 and make every non-zero pixel white)."""
    pixels = pixels.astype(np.int64)
    if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
        raise DataError(f"cannot read image {path}: integer pixels outside 0..65535 (not a 16-bit image)")
    grey = np.floor(pixels * (255.0 / 65535.0) + 0.5).astype(np.uint8)
    return grey if channels == 1 else np.repeat(grey[..., None], 3, axis=-1)


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_images(paths: List[Path], cfg: DataConfig, *, convert_channels: bool = True) -> np.ndarray:
    """Read image files into (N, C, H, W) uint8 at the recipe's size (resized only with resize=true)."""
    channels = cfg.image_shape[0]
    images = [_read_image(p, channels, convert_channels) for p in paths]
    shapes = {im.shape for im in images}
    if len(shapes) > 1 and not cfg.resize:
        raise DataError(f"images of different sizes {sorted(shapes)[:3]} ...: pass dataset.resize=true")
    if cfg.resize:
        return np.concatenate([_check_size(_to_nchw(im[None], channels, str(p)), cfg, str(p))
                               for im, p in zip(images, paths)]) if images else np.zeros((0, *cfg.image_shape))
    return _check_size(_to_nchw(np.stack(images), channels, str(paths[0].parent)), cfg, str(paths[0].parent))


def _load_split_folder(folder: Path, class_names: List[str], cfg: DataConfig):
    paths, labels = [], []
    for k, name in enumerate(class_names):
        files = _image_files(folder / name) if (folder / name).is_dir() else []
        paths += files
        labels += [k] * len(files)
    if not paths:
        raise DataError(f"{folder}: no images found in its class folders")
    return read_images(paths, cfg), np.asarray(labels, dtype=np.int64)


def _load_folder(cfg: DataConfig):
    root = Path(os.path.expanduser(cfg.path))
    if not root.is_dir():
        raise DataError(f"dataset.path={cfg.path}: no such folder")
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"dataset.path={cfg.path}: expected train/<class>/ and test/<class>/ folders")
    class_names = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if len(class_names) < 2:
        raise DataError(f"{root / 'train'}: expected at least 2 class folders, found {len(class_names)}")
    unknown = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in class_names)
    if unknown:
        raise DataError(f"{root / 'test'}: classes {unknown} are not in train/")
    x_tr, y_tr = _load_split_folder(root / "train", class_names, cfg)
    x_te, y_te = _load_split_folder(root / "test", class_names, cfg)
    extra = None
    if (root / "unlabeled").is_dir():
        files = [p for p in sorted((root / "unlabeled").rglob("*"))
                 if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        extra = read_images(files, cfg) if files else None
    return x_tr, y_tr, x_te, y_te, class_names, extra, 255.0


# The most classes a data set may have: labels are class indices 0..K-1 (class names are built for each).
MAX_CLASSES = 100_000


def read_npz(path: Path, label: str, pick: Optional[Callable[[List[str]], List[str]]] = None
             ) -> Dict[str, np.ndarray]:
    """The arrays of an .npz (those ``pick`` chooses of its names), without pickles; each array's declared size
    is checked against the bytes its file holds before it is read. DataError with one line otherwise."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{label}: not a readable .npz (not a zip archive of arrays, as numpy.savez writes)")
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename[:-4]: info.file_size for info in archive.infolist()
                     if info.filename.endswith(".npy")}
            with np.load(path, allow_pickle=False) as arrays:
                names = arrays.files if pick is None else pick(arrays.files)
                for name in names:
                    _check_declared(archive, name, sizes.get(name, 0), label)
                return {name: arrays[name] for name in names}
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{label}: an array too large for this machine's memory") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{label}: not a readable .npz ({first_line(error)})") from None


def _check_declared(archive: zipfile.ZipFile, name: str, stored: int, label: str) -> None:
    """An .npy member's header (shape, dtype) must not declare more bytes than the member holds."""
    with archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(member, max_header_size=10_000)
    declared = math.prod(shape) * dtype.itemsize
    if declared > stored:
        raise DataError(f"{label}: array {name} declares {shape} {dtype} ({declared:,} bytes), but holds "
                        f"{stored:,} bytes")


def _load_npz(cfg: DataConfig):
    path = Path(os.path.expanduser(cfg.path))
    if not path.is_file():
        raise DataError(f"dataset.path={cfg.path}: no such file")
    arrays = read_npz(path, str(path))
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {missing}; expected x_train, y_train, x_test, y_test")
    channels = cfg.image_shape[0]

    def images(key: str) -> np.ndarray:
        x = arrays[key]
        if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"{path}: {key} has dtype {x.dtype}, expected integers or floats")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():  # (before nanmax warns of it)
            split = {"x_train": "train", "x_test": "test"}.get(key, "unlabeled")
            raise DataError(f"{path}: {key}: {split} images contain NaN or infinite values")
        if np.issubdtype(x.dtype, np.floating) and x.size and float(np.nanmax(x)) <= 1.0:
            x = x * 255.0  # floats in [0, 1]
        return _check_size(_to_nchw(x, channels, f"{path}: {key}"), cfg, f"{path}: {key}")

    def labels(key: str, n: int) -> np.ndarray:
        y = arrays[key]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: {key} must be a 1-d integer array, got {y.dtype} {y.shape}")
        if len(y) != n:
            raise DataError(f"{path}: {key} has {len(y)} labels for {n} images")
        return y.astype(np.int64)

    x_tr, x_te = images("x_train"), images("x_test")
    y_tr, y_te = labels("y_train", len(x_tr)), labels("y_test", len(x_te))
    if "classes" in arrays:
        names = [c.decode() if isinstance(c, bytes) else str(c) for c in arrays["classes"]]
    else:
        top = int(max(y_tr.max(initial=0), y_te.max(initial=0)))
        if top >= MAX_CLASSES:  # before a name is built for each class up to it
            raise DataError(f"{path}: label {top}: labels are class indices 0..K-1 with K <= {MAX_CLASSES:,}")
        names = [str(k) for k in range(top + 1)]
    extra = images("x_unlabeled") if "x_unlabeled" in arrays else None
    return x_tr, y_tr, x_te, y_te, names, extra, 255.0


LOADERS = {"builtin": _load_digits, "torchvision": _load_torchvision, "folder": _load_folder,
           "npz": _load_npz}


def load_data(cfg: DataConfig, seed: int = 0) -> ImageData:
    """Load, check and scale the data set that ``cfg`` names; hold out a validation split if asked."""
    if cfg.source == "builtin" and cfg.name != "digits":
        raise DataError(f"dataset.source=builtin is only scikit-learn's digits, not {cfg.name}")
    x_tr, y_tr, x_te, y_te, names, extra, value_max = LOADERS[cfg.source](cfg)
    channels = cfg.image_shape[0]
    x_tr = _check_size(_to_nchw(np.asarray(x_tr), channels, "train images"), cfg, "train images")
    x_te = _check_size(_to_nchw(np.asarray(x_te), channels, "test images"), cfg, "test images")
    y_tr, y_te = np.asarray(y_tr, dtype=np.int64), np.asarray(y_te, dtype=np.int64)
    k = len(names)
    if k < 2:
        raise DataError(f"the data have {k} class{'es' * (k != 1)} ({', '.join(names)}); a classifier needs at "
                        f"least two")
    for what, x in (("train images", x_tr), ("test images", x_te), ("unlabeled images", extra)):
        if x is not None:
            check_pixels(np.asarray(x), value_max, what)
    for what, y in (("train", y_tr), ("test", y_te)):
        if len(y) and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{what} labels must lie in 0..{k - 1}, found {y.min()}..{y.max()}")
    data = ImageData(scale_images(x_tr, cfg.scaling, value_max), y_tr, scale_images(x_te, cfg.scaling,
                     value_max), y_te, names,
                     None if extra is None else scale_images(extra, cfg.scaling, value_max),
                     class_values=list(names) if cfg.source == "folder" else list(range(k)))
    if cfg.val_size > 0:
        data = hold_out_validation(data, cfg.val_size, seed)
    return data


def hold_out_validation(data: ImageData, val_size: float, seed: int) -> ImageData:
    """Move a stratified validation split (a fraction if < 1, else a count) out of the train split."""
    from sklearn.model_selection import train_test_split

    n_val = int(round(val_size * len(data.y_train))) if val_size < 1 else int(val_size)
    if not 0 < n_val < len(data.y_train):
        raise DataError(f"dataset.val_size={val_size}: leaves no train or no validation images")
    idx = np.arange(len(data.y_train))
    try:
        train_idx, val_idx = train_test_split(idx, test_size=n_val, stratify=data.y_train, random_state=seed)
    except ValueError as error:  # too few images per class, or fewer held out than there are classes
        raise DataError(f"dataset.val_size={val_size}: no stratified split of {n_val} images: "
                        f"{error}") from None
    train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
    return ImageData(data.x_train[train_idx], data.y_train[train_idx], data.x_test, data.y_test,
                     data.class_names, data.x_extra, data.x_train[val_idx], data.y_train[val_idx], val_idx,
                     data.class_values)


def read_inputs(inputs: Sequence[str], cfg: DataConfig, *,
                convert_channels: bool = True) -> Tuple[List[str], np.ndarray]:
    """Image files, folders of images, or .npz files (array x, x_test or the only array) -> names and
    (N, C, H, W) images scaled as the run's recipe scales them (``convert_channels=False``: grey images for
    a colour recipe, or colour ones for a grey recipe, are refused)."""
    names, batches = [], []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"{item}: no such file or folder")
        if path.suffix.lower() == ".npz":
            def pick(files: List[str]) -> List[str]:
                key = next((k for k in ("x", "x_test") if k in files), files[0] if len(files) == 1 else None)
                if key is None:
                    raise DataError(f"{item}: expected an array named x or x_test")
                return [key]

            (key, x), = read_npz(path, item, pick).items()
            if not np.issubdtype(x.dtype, np.number):
                raise DataError(f"{item}: array {key} has dtype {x.dtype}, expected pixel values")
            # uint8: 0..255; floats in [0, 1]; else the source's range (0..16 for the builtin digits), read
            # before a resize or a channel mean turns uint8 into floats
            value_max = input_value_max(x, cfg)
            x = prepare_images(x, cfg, item, convert_channels=convert_channels)
            names += [f"{item}[{i}]" for i in range(len(x))]
            check_pixels(x, value_max, f"{item}: images")
            batches.append(scale_images(x, cfg.scaling, value_max))
            continue
        files = ([p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
                 if path.is_dir() else [path])
        if not files:
            raise DataError(f"{item}: no images found")
        names += [str(p) for p in files]
        try:
            batches.append(scale_images(read_images(files, cfg, convert_channels=convert_channels), cfg.scaling))
        except DataError as error:  # a trained run's size is fixed: the advice for a new run does not apply
            raise DataError(str(error).replace(RESIZE_ADVICE, f"resize them to {cfg.image_shape[1]}x"
                                               f"{cfg.image_shape[2]} first")) from None
    return names, np.concatenate(batches)


# ------------------------------------------------------------------------------- labeled subset, order

def balanced_labeled_subset(y: np.ndarray, n_labels: int, n_classes: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced labeled subset: n_labels / K per class (docs/method.md sec. 3, 5).

    As in the official code, the train set is permuted with a RNG seeded by ``seed`` and the first
    n_labels / K examples of each class in that order are taken: the same seed gives the same subset.
    """
    if n_labels % n_classes:
        raise DataError(f"dataset.labels={n_labels} is not a multiple of the {n_classes} classes "
                        f"(the labeled subset is balanced)")
    per_class = n_labels // n_classes
    counts = np.bincount(y, minlength=n_classes)
    if per_class > counts.min():
        raise DataError(f"dataset.labels={n_labels} asks {per_class} per class, but class "
                        f"{int(counts.argmin())} has only {int(counts.min())} training examples")
    order = np.random.RandomState(seed).permutation(len(y))
    chosen = [order[y[order] == k][:per_class] for k in range(n_classes)]
    return np.sort(np.concatenate(chosen))


def tiled_permutation(rng: np.random.RandomState, n: int, length: int) -> np.ndarray:
    """Concatenated fresh permutations of range(n), cut to ``length``: each pass sees every example."""
    reps = math.ceil(length / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:length]


def epoch_order(rng: np.random.RandomState, n_lab: int, n_unl: int, iters: int,
                batch_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index batches of one epoch, each (iters, batch_size) (docs/method.md sec. 3).

    Labeled: the labeled set tiled, reshuffled per tile, to the length of the epoch. Unlabeled: one
    permutation for the discriminator and a second, independent one for feature matching.
    """
    length = iters * batch_size
    lab = tiled_permutation(rng, n_lab, length).reshape(iters, batch_size)
    unl = tiled_permutation(rng, n_unl, length).reshape(iters, batch_size)
    unl_fm = tiled_permutation(rng, n_unl, length).reshape(iters, batch_size)
    return lab, unl, unl_fm


# ---------------------------------------------------------------------------------------- augmentation

def augment(x: Tensor, translate: int = 2, flip: bool = True,
            generator: Optional[torch.Generator] = None) -> Tensor:
    """Random translation by up to ``translate`` pixels (reflect padding, then a crop) and random
    horizontal flips, per example, on the tensor's device (CT-GAN's CIFAR-10 augmentation).

    x: (B, C, H, W).
    """
    b, c, h, w = x.shape
    out = x
    if translate:
        padded = torch.nn.functional.pad(x, (translate,) * 4, mode="reflect")
        shifts = torch.randint(0, 2 * translate + 1, (2, b), device=x.device, generator=generator)
        rows = torch.arange(h, device=x.device)[None] + shifts[0][:, None]  # (B, H)
        cols = torch.arange(w, device=x.device)[None] + shifts[1][:, None]  # (B, W)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        chan = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        flips = torch.rand(b, device=x.device, generator=generator) < 0.5
        out = torch.where(flips[:, None, None, None], out.flip(3), out)
    return out
