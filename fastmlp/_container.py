"""The safetensors container of a model file: write it atomically, read and check it.

The layout is safetensors' (https://github.com/huggingface/safetensors): an 8-byte
little-endian header length N, N bytes of JSON (padded with spaces to a multiple of 8)
mapping each tensor's name to ``{"dtype", "shape", "data_offsets"}`` plus a
``"__metadata__"`` map of strings, then the tensors' bytes, back to back. The files
load with ``safetensors.numpy.load_file`` and the tests check that they do; reading
needs no package but NumPy, and checks the header (its length against a limit first,
then every entry) before it reads any data, so that a corrupt or hostile file costs
no more memory than its size and runs no code.
"""
import json
import os
import tempfile

import numpy as np


class ModelFileError(ValueError):
    """A model file that cannot be loaded: what is wrong with it is in the message."""


#: The largest header read (bytes): safetensors' own limit is 100 MB; a fastmlp header
#: holds the configuration and the history, kilobytes for most models.
MAX_HEADER_BYTES = 16 * 1024 * 1024
#: Tensors have at most this many dimensions (fastmlp's have 1 or 2).
MAX_DIMS = 8

# safetensors' dtype codes of the dtypes fastmlp writes
DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8"), "I64": np.dtype("<i8")}
_CODES = {dt: code for code, dt in DTYPES.items()}


def encode(tensors, metadata):
    """The file's bytes as a list of chunks: header length, header, then each tensor.

    Parameters
    ----------
    tensors : dict str -> ndarray of float32, float64 or int64
    metadata : dict str -> str
    """
    header, chunks, offset = {"__metadata__": dict(metadata)}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = a.dtype.newbyteorder("<")
        if dt not in _CODES:
            raise TypeError(f"Tensor {name!r} has dtype {a.dtype}; a model file holds float32, float64 or int64.")
        a = a.astype(dt, copy=False)
        header[name] = {"dtype": _CODES[dt], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        chunks.append(memoryview(a).cast("B"))
        offset += a.nbytes
    raw = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER_BYTES:
        raise ValueError(f"The model file's header would take {len(raw)} bytes, more than the {MAX_HEADER_BYTES} "
                         "that load_model reads (a very long history?); clear model.history before saving.")
    return [len(raw).to_bytes(8, "little"), raw, *chunks]


def write_atomic(path, chunks):
    """Write ``chunks`` to ``path`` through a temporary file in the same folder, flushed
    and fsynced, then ``os.replace``: a crash mid-save leaves the old file whole."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot save to {path!r}: the folder {folder!r} does not exist; create it first.")
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot save to {path!r}: it is a folder; give a file name.")
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders that cannot be opened (some platforms)
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def _int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(name, entry):
    """(dtype, shape, begin, end) of one header entry, or ModelFileError."""
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ModelFileError(f"tensor {name!r}: its header entry must have exactly the keys dtype, shape and "
                             f"data_offsets, got {entry!r:.200}.")
    code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if code not in DTYPES:
        raise ModelFileError(f"tensor {name!r} has dtype {code!r:.40}; a fastmlp file holds only "
                             f"{', '.join(sorted(DTYPES))}.")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(_int(s) and 0 <= s < 2**40 for s in shape)):
        raise ModelFileError(f"tensor {name!r} has shape {shape!r:.200}; a shape is a list of at most {MAX_DIMS} "
                             "integers >= 0.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]):
        raise ModelFileError(f"tensor {name!r} has data_offsets {offsets!r:.200}; they must be [begin, end] "
                             "with 0 <= begin <= end.")
    count = 1
    for s in shape:
        count *= s
    if count * DTYPES[code].itemsize != offsets[1] - offsets[0]:
        raise ModelFileError(f"tensor {name!r}: shape {shape} of {code} needs {count * DTYPES[code].itemsize} bytes, "
                             f"but its data_offsets span {offsets[1] - offsets[0]}.")
    return DTYPES[code], tuple(shape), offsets[0], offsets[1]


def read(path):
    """The metadata (dict str -> str) and the tensors (dict name -> read-only ndarray) of a file.

    Raises
    ------
    ModelFileError
        For a missing or unreadable file, a header over :data:`MAX_HEADER_BYTES`, a file
        that is not safetensors, a header entry that is malformed, or data that is
        truncated, overlapping or followed by trailing bytes.
    """
    where = os.fspath(path)
    try:
        f = open(where, "rb")
    except FileNotFoundError:
        raise ModelFileError(f"{where}: no such model file.") from None
    except IsADirectoryError:
        raise ModelFileError(f"{where} is a folder, not a model file.") from None
    except OSError as exc:
        raise ModelFileError(f"{where} cannot be read: {exc.strerror or exc}.") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise ModelFileError(f"{where} is not a safetensors model file: it has {size} bytes, fewer than the "
                                 "8 of the header length (truncated?).")
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise ModelFileError(f"{where} declares a header of {n} bytes, more than the limit of "
                                 f"{MAX_HEADER_BYTES}: it is corrupt or not a fastmlp model file.")
        if n + 8 > size:
            raise ModelFileError(f"{where} is truncated: its header needs {n} bytes but the file has only "
                                 f"{size - 8} after the header length.")
        raw = f.read(n)
        if len(raw) != n:  # pragma: no cover - the file shrank while it was read
            raise ModelFileError(f"{where} is truncated: it ended inside the header.")
        if not raw.startswith(b"{"):
            raise ModelFileError(f"{where} is not a safetensors model file: its header does not start with '{{'.")
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise ModelFileError(f"{where}: the header is not valid JSON ({type(exc).__name__}: "
                                 f"{str(exc)[:120]}).") from None
        if not isinstance(header, dict):
            raise ModelFileError(f"{where}: the header must be a JSON object.")
        metadata = header.pop("__metadata__", None)
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ModelFileError(f"{where}: the header has no __metadata__ map of strings; it was not written "
                                 "by fastmlp.")
        try:
            entries = sorted(((_check_entry(name, e), name) for name, e in header.items()), key=lambda t: t[0][2:])
        except ModelFileError as exc:
            raise ModelFileError(f"{where}: {exc}") from None
        data_len, expected = size - 8 - n, 0
        for (_, _, begin, end), name in entries:
            if begin != expected:
                what = "overlaps the tensor before it" if begin < expected else "leaves a gap before it"
                raise ModelFileError(f"{where}: tensor {name!r} (bytes {begin}-{end}) {what}; the data is corrupt.")
            expected = end
        if expected > data_len:
            raise ModelFileError(f"{where} is truncated: its tensors need {expected} bytes of data, the file has "
                                 f"{data_len}.")
        if expected < data_len:
            raise ModelFileError(f"{where} has {data_len - expected} bytes after its last tensor; the file is "
                                 "corrupt.")
        data = f.read(expected)
        if len(data) != expected:  # pragma: no cover - the file shrank while it was read
            raise ModelFileError(f"{where} is truncated: it ended inside the data.")
    tensors = {}
    for (dt, shape, begin, end), name in entries:
        tensors[name] = np.frombuffer(data, dtype=dt, count=(end - begin) // dt.itemsize, offset=begin).reshape(shape)
    return metadata, tensors
