"""IDX reading and the Fashion-MNIST loader."""
import gzip
import hashlib
import re
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import fastmlp.datasets as ds
from fastmlp.datasets import load_fashion_mnist, load_idx

REAL_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"

_TYPE_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(arr):
    """Independent IDX encoder: big-endian header and data."""
    arr = np.asarray(arr)
    code = _TYPE_CODES[arr.dtype.str[1:]]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr, compress=False, extra=b"", cut=0):
    data = idx_bytes(arr) + extra
    if cut:
        data = data[:-cut]
    if compress:
        data = gzip.compress(data)
    Path(path).write_bytes(data)
    return Path(path)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- load_idx -------------------------------------------------------------------------------

@pytest.mark.parametrize("compress", [False, True])
def test_uint8_images_and_labels_round_trip(tmp_path, rng, compress):
    images = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    got_images = load_idx(write_idx(tmp_path / "img", images, compress))
    got_labels = load_idx(write_idx(tmp_path / "lbl", labels, compress))
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 5, 3)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_multibyte_dtypes_round_trip_native_order(tmp_path, rng, compress, dtype):
    if dtype[0] == "f":
        arr = rng.standard_normal((4, 3, 2)).astype(dtype)
        arr.flat[0], arr.flat[1] = np.inf, -0.0
    else:
        info = np.iinfo(dtype)
        arr = rng.integers(info.min, info.max, size=(4, 3, 2), endpoint=True).astype(dtype)
        arr.flat[0], arr.flat[1] = info.min, info.max
    got = load_idx(write_idx(tmp_path / "a.idx", arr, compress))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.shape == arr.shape
    np.testing.assert_array_equal(got, arr)
    assert got.tobytes() == arr.tobytes()  # bit-exact, including -0.0
    got[0] = 0  # writable


def test_hand_written_big_endian_bytes(tmp_path):
    # int32, shape (2,): 0x01020304 and -2, spelled out byte by byte.
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 1, 2, 3, 4, 0xFF, 0xFF, 0xFF, 0xFE])
    (tmp_path / "i32").write_bytes(raw)
    np.testing.assert_array_equal(load_idx(tmp_path / "i32"), np.array([0x01020304, -2], np.int32))
    # float64, shape (1, 1): 1.5 is 0x3FF8000000000000.
    raw = bytes([0, 0, 0x0E, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0x3F, 0xF8, 0, 0, 0, 0, 0, 0])
    (tmp_path / "f64").write_bytes(raw)
    got = load_idx(tmp_path / "f64")
    assert got.shape == (1, 1) and got.dtype == np.float64 and got[0, 0] == 1.5


def test_gzip_detected_by_magic_not_extension(tmp_path):
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    plain_named_gz = write_idx(tmp_path / "plain.gz", arr, compress=False)
    gz_named_plain = write_idx(tmp_path / "compressed-ubyte", arr, compress=True)
    np.testing.assert_array_equal(load_idx(plain_named_gz), arr)
    np.testing.assert_array_equal(load_idx(gz_named_plain), arr)


def test_accepts_str_path(tmp_path):
    arr = np.arange(3, dtype=np.uint8)
    assert load_idx(str(write_idx(tmp_path / "x", arr))).tolist() == [0, 1, 2]


def test_empty_dimension(tmp_path):
    got = load_idx(write_idx(tmp_path / "e", np.zeros((0, 28, 28), np.uint8)))
    assert got.shape == (0, 28, 28)


@pytest.mark.parametrize(
    "raw, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x00", "magic"),
        (b"\x00\x07\x08\x01\x00\x00\x00\x00", "magic"),
        (b"\x00\x00\x0A\x01\x00\x00\x00\x00", "unknown data type byte 0x0a"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00", "shorter than the 4-byte magic"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
    ],
)
@pytest.mark.parametrize("compress", [False, True])
def test_bad_header(tmp_path, raw, match, compress):
    path = tmp_path / "bad"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(ValueError, match=match) as err:
        load_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_data(tmp_path, compress):
    path = write_idx(tmp_path / "t", np.ones((3, 4, 4), np.uint8), compress, cut=5)
    with pytest.raises(ValueError, match=r"truncated IDX data.*needs 48 bytes, the file has 43"):
        load_idx(path)


def test_truncated_multibyte_data(tmp_path):
    path = write_idx(tmp_path / "t", np.ones(4, np.float64), cut=1)
    with pytest.raises(ValueError, match="truncated IDX data") as err:
        load_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_garbage(tmp_path, compress):
    path = write_idx(tmp_path / "g", np.ones((2, 2), np.int32), compress, extra=b"xyz")
    with pytest.raises(ValueError, match="3 unexpected bytes after the IDX data") as err:
        load_idx(path)
    assert str(path) in str(err.value)


def test_huge_declared_shape_is_truncation_not_allocation(tmp_path):
    raw = struct.pack(">BBBB3I", 0, 0, 0x0E, 3, 2**32 - 1, 2**32 - 1, 2**32 - 1)
    (tmp_path / "huge").write_bytes(raw)
    with pytest.raises(ValueError, match="truncated IDX data"):
        load_idx(tmp_path / "huge")


def test_corrupt_gzip_stream(tmp_path):
    data = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    (tmp_path / "c.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="gzip") as err:
        load_idx(tmp_path / "c.gz")
    assert "c.gz" in str(err.value)


# --- load_fashion_mnist on small fake files ----------------------------------------------------

def make_fake_fashion(directory, rng, n_train=12, n_test=5, compress=True, label_counts=None,
                      image_hw=(28, 28)):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, *image_hw), dtype=np.uint8)
        n_labels = n if label_counts is None else label_counts[split]
        labels = rng.integers(0, 10, size=n_labels, dtype=np.uint8)
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels, compress)
        out[split] = (images, labels)
    return out


@pytest.fixture
def no_default_dirs(monkeypatch, tmp_path):
    """Isolate from the machine: no FASTMLP_DATA, and a system dir that does not exist."""
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    monkeypatch.setattr(ds, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-such-system-dir")


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_from_path(tmp_path, rng, no_default_dirs, compress):
    raw = make_fake_fashion(tmp_path / "d", rng, compress=compress)
    (X_train, y_train), (X_test, y_test) = load_fashion_mnist(tmp_path / "d")
    for X, y, (images, labels) in ((X_train, y_train, raw["train"]), (X_test, y_test, raw["t10k"])):
        assert X.shape == (len(images), 784) and X.dtype == np.float32
        assert y.shape == (len(labels),) and y.dtype == np.int64
        np.testing.assert_array_equal(X, images.reshape(len(images), 784).astype(np.float32) / 255)
        np.testing.assert_array_equal(y, labels)
        assert X.min() >= 0 and X.max() <= 1


def test_fashion_from_env_and_env_subdir(tmp_path, rng, no_default_dirs, monkeypatch):
    make_fake_fashion(tmp_path / "root" / "fashion-mnist", rng, n_train=3, n_test=2)
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "root"))
    (X_train, _), (X_test, _) = load_fashion_mnist()
    assert X_train.shape == (3, 784) and X_test.shape == (2, 784)

    make_fake_fashion(tmp_path / "flat", rng, n_train=4, n_test=1, compress=False)
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "flat"))
    (X_train, _), _ = load_fashion_mnist()
    assert X_train.shape == (4, 784)


def test_fashion_path_comes_before_env(tmp_path, rng, no_default_dirs, monkeypatch):
    make_fake_fashion(tmp_path / "given", rng, n_train=2, n_test=1)
    make_fake_fashion(tmp_path / "env", rng, n_train=9, n_test=1)
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "env"))
    (X_train, _), _ = load_fashion_mnist(tmp_path / "given")
    assert X_train.shape[0] == 2


def test_fashion_from_system_dir(tmp_path, rng, monkeypatch):
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    make_fake_fashion(tmp_path / "sys", rng, n_train=2, n_test=3)
    monkeypatch.setattr(ds, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "sys")
    _, (X_test, y_test) = load_fashion_mnist()
    assert X_test.shape == (3, 784) and y_test.shape == (3,)


def test_fashion_mixed_plain_and_gz(tmp_path, rng, no_default_dirs):
    make_fake_fashion(tmp_path / "d", rng, n_train=3, n_test=2, compress=True)
    # Decompress one of the four: plain and .gz side by side are both accepted.
    gz = tmp_path / "d" / "t10k-labels-idx1-ubyte.gz"
    (tmp_path / "d" / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    _, (X_test, y_test) = load_fashion_mnist(tmp_path / "d")
    assert X_test.shape == (2, 784) and y_test.shape == (2,)


def test_fashion_missing_lists_searched_dirs(tmp_path, no_default_dirs, monkeypatch, rng):
    given = tmp_path / "given"
    env = tmp_path / "env"
    make_fake_fashion(env / "fashion-mnist", rng)
    (env / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv("FASTMLP_DATA", str(env))
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist(given)
    msg = str(err.value)
    for d in (given, env, env / "fashion-mnist", ds.SYSTEM_FASHION_MNIST_DIR):
        assert str(d) in msg
    assert "missing t10k-labels-idx1-ubyte[.gz]" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "zalandoresearch/fashion-mnist" in msg
    assert "FASTMLP_DATA" in msg and "path=" in msg


def test_fashion_count_mismatch(tmp_path, rng, no_default_dirs):
    make_fake_fashion(tmp_path / "d", rng, n_train=6, n_test=2,
                      label_counts={"train": 5, "t10k": 2})
    with pytest.raises(ValueError, match="6 images but .* has 5 labels"):
        load_fashion_mnist(tmp_path / "d")


def test_fashion_wrong_image_size(tmp_path, rng, no_default_dirs):
    make_fake_fashion(tmp_path / "d", rng, image_hw=(27, 28))
    with pytest.raises(ValueError, match=r"shape \(n_samples, 28, 28\).*\(12, 27, 28\)"):
        load_fashion_mnist(tmp_path / "d")


# --- the real data -----------------------------------------------------------------------------

def _readme_checksums(directory):
    table = {}
    for line in (directory / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*([\w.-]+\.gz)\s*\|\s*([0-9a-fA-F]{64})\s*\|\s*$", line)
        if m:
            table[m.group(1)] = m.group(2).lower()
    return table


needs_real_data = pytest.mark.skipif(
    not all((REAL_DATA_DIR / f"{s}.gz").is_file() for s in ds.FASHION_MNIST_FILES.values()),
    reason=f"Fashion-MNIST files not found in {REAL_DATA_DIR}",
)


@needs_real_data
def test_real_data_checksums_match_readme():
    table = _readme_checksums(REAL_DATA_DIR)
    expected_names = {f"{s}.gz" for s in ds.FASHION_MNIST_FILES.values()}
    assert set(table) == expected_names, f"README table lists {sorted(table)}"
    for name, sha in table.items():
        digest = hashlib.sha256((REAL_DATA_DIR / name).read_bytes()).hexdigest()
        assert digest == sha, f"{name}: sha256 {digest}, README says {sha}"


@needs_real_data
def test_real_fashion_mnist():
    t0 = time.perf_counter()
    (X_train, y_train), (X_test, y_test) = load_fashion_mnist(REAL_DATA_DIR)
    elapsed = time.perf_counter() - t0
    print(f"load_fashion_mnist: {elapsed:.3f} s")
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X_train.dtype == np.float32 and X_test.dtype == np.float32
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    for X in (X_train, X_test):
        assert X.min() == 0.0 and X.max() == 1.0
        assert X.flags.c_contiguous and X.flags.writeable
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, 1000))
    assert set(np.unique(y_train)) == set(range(10))
    # Generous bound: a loaded CI machine; typically well under a second.
    assert elapsed < 10, f"loading took {elapsed:.2f} s"
