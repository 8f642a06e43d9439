"""Dataset loaders: the IDX file format and Fashion-MNIST.

NumPy only. ``load_idx`` reads any IDX file (plain or gzip-compressed);
``load_fashion_mnist`` finds the four Fashion-MNIST files on disk and returns
them ready for an MLP: flattened float32 images in [0, 1] and int64 labels.
Nothing is downloaded.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_idx", "load_fashion_mnist"]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type byte -> big-endian element dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IMAGE_SHAPE = (28, 28)


def _read_bytes(path: Path) -> bytes:
    """Whole file contents, gunzipped if the file starts with the gzip magic."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(
            f"{path}: corrupt or truncated gzip stream ({exc}); download the file again."
        ) from exc


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST container format), plain or gzip-compressed.

    Compression is detected from the gzip magic bytes ``1f 8b``, not from the
    file name.

    Parameters
    ----------
    path : str or os.PathLike
        The IDX file. Header: two zero bytes, a type byte (0x08 uint8,
        0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), a
        byte ``ndim``, then ``ndim`` big-endian uint32 sizes; then the data,
        big-endian, C order.

    Returns
    -------
    ndarray of shape ``(d_0, ..., d_{ndim-1})``
        A writable array in native byte order with the dtype named by the
        type byte. For MNIST-style files: images ``(n_samples, 28, 28)`` uint8,
        labels ``(n_samples,)`` uint8.

    Raises
    ------
    ValueError
        If the header is malformed (bad magic, unknown type, zero dimensions),
        the data are shorter than the header says (truncated file), or there
        are bytes after the data (trailing garbage). The message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path}: not an IDX file: {len(data)} bytes is shorter than the 4-byte magic number."
        )
    if data[0] != 0 or data[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: magic number starts with bytes "
            f"{data[0]:#04x} {data[1]:#04x}, expected 0x00 0x00."
        )
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        valid = ", ".join(f"{c:#04x}" for c in sorted(_IDX_DTYPES))
        raise ValueError(
            f"{path}: not an IDX file: unknown data type byte {type_code:#04x} (valid: {valid})."
        )
    if ndim == 0:
        raise ValueError(f"{path}: not an IDX file: the header declares 0 dimensions.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header_len} bytes, "
            f"the file has {len(data)}."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
    actual = len(data) - header_len
    if actual < expected:
        raise ValueError(
            f"{path}: truncated IDX data: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"the file has {actual}; download the file again."
        )
    if actual > expected:
        raise ValueError(
            f"{path}: {actual - expected} unexpected bytes after the IDX data "
            f"(shape {shape} of {dtype.name} needs {expected}); the file is corrupt or not IDX."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    # astype copies: the result is writable and in native byte order.
    return arr.astype(dtype.newbyteorder("="))


def _candidate_dirs(path: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if path is not None:
        dirs.append(Path(path))
    env = os.environ.get("FASTMLP_DATA")
    if env:
        dirs += [Path(env), Path(env) / "fashion-mnist"]
    dirs.append(SYSTEM_FASHION_MNIST_DIR)
    return dirs


def _find_files(directory: Path) -> tuple[dict[str, Path] | None, list[str]]:
    """The four files in ``directory`` (plain preferred over .gz), or None and the missing names."""
    found, missing = {}, []
    for key, stem in FASHION_MNIST_FILES.items():
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found[key] = directory / name
                break
        else:
            missing.append(stem + "[.gz]")
    return (found if not missing else None), missing


def _images_to_features(images: np.ndarray, path: Path) -> np.ndarray:
    if images.ndim != 3 or images.shape[1:] != _IMAGE_SHAPE or images.dtype != np.uint8:
        raise ValueError(
            f"{path}: expected uint8 images of shape (n_samples, 28, 28), "
            f"got {images.dtype} of shape {images.shape}."
        )
    X = images.reshape(images.shape[0], -1).astype(np.float32)
    X /= np.float32(255.0)
    return X


def _labels_to_targets(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.ndim != 1:
        raise ValueError(
            f"{path}: expected labels of shape (n_samples,), got shape {labels.shape}."
        )
    return labels.astype(np.int64)


def load_fashion_mnist(
    path: str | os.PathLike | None = None,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST from local IDX files.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each plain or
    with ``.gz``; plain is preferred when both exist) in, in order:

    1. ``path``, if given;
    2. ``$FASTMLP_DATA`` and ``$FASTMLP_DATA/fashion-mnist``, if the variable is set;
    3. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).

    The first directory holding all four files is used.

    Parameters
    ----------
    path : str or os.PathLike, optional
        Directory holding the four files.

    Returns
    -------
    (X_train, y_train), (X_test, y_test) : tuple of two tuples of ndarray
        ``X_train`` of shape (60000, 784) and ``X_test`` of shape (10000, 784): float32 in
        [0, 1], the flattened 28x28 images, row-major, divided by 255. ``y_train`` of shape
        (60000,) and ``y_test`` of shape (10000,): int64 labels in 0..9.

    Raises
    ------
    FileNotFoundError
        If no searched directory holds all four files. The message lists every
        directory searched and how to get the data.
    ValueError
        If a file is not valid IDX, images are not 28x28 uint8, or the image
        and label counts disagree.
    """
    searched = []
    files = None
    for directory in _candidate_dirs(path):
        files, missing = _find_files(directory)
        if files is not None:
            break
        reason = "does not exist" if not directory.is_dir() else "missing " + ", ".join(missing)
        searched.append(f"  {directory} ({reason})")
    if files is None:
        raise FileNotFoundError(
            "Fashion-MNIST not found. Searched:\n" + "\n".join(searched) + "\n"
            "To get it: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; installs to "
            f"{SYSTEM_FASHION_MNIST_DIR}), or download the four files "
            + ", ".join(f"{s}.gz" for s in FASHION_MNIST_FILES.values())
            + " from https://github.com/zalandoresearch/fashion-mnist (data/fashion/) and pass "
            "load_fashion_mnist(path=<directory>) or set FASTMLP_DATA=<directory>."
        )

    splits = []
    for split in ("train", "test"):
        img_path, lbl_path = files[f"{split}_images"], files[f"{split}_labels"]
        X = _images_to_features(load_idx(img_path), img_path)
        y = _labels_to_targets(load_idx(lbl_path), lbl_path)
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"{split} split: {img_path} has {X.shape[0]} images but {lbl_path} has "
                f"{y.shape[0]} labels; the files are from different releases or corrupt."
            )
        splits.append((X, y))
    return splits[0], splits[1]
