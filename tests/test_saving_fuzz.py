"""Corrupted model files: every one gives fm.ModelFileError, none crashes or hangs."""
import json
import struct

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _container


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40)
    m = fm.Sequential([fm.Dense(5, activation="relu"), fm.BatchNorm(), fm.Dense(3)], seed=0, n_threads=1)
    m.compile("cross_entropy", "adam")
    m.fit(X, y, epochs=1, batch_size=10, verbose=0)
    path = tmp_path_factory.mktemp("fuzz") / "m.safetensors"
    m.save(path)
    return path, path.read_bytes()


def _load(tmp_path, blob):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(blob)
    with pytest.raises(fm.ModelFileError) as info:
        fm.load_model(p)
    return str(info.value)


def _rewrite(tmp_path, saved, edit_doc=None, edit_tensors=None, edit_header=None):
    meta, tensors = _container.read(saved[0])
    tensors = {k: np.array(v) for k, v in tensors.items()}
    doc = json.loads(meta["fastmlp"])
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    meta["fastmlp"] = json.dumps(doc)
    chunks = _container.encode(tensors, meta)
    if edit_header:
        header = json.loads(bytes(chunks[1]))
        edit_header(header)
        raw = json.dumps(header).encode()
        chunks = [len(raw).to_bytes(8, "little"), raw, *chunks[2:]]
    return _load(tmp_path, b"".join(bytes(c) for c in chunks))


def test_truncation_at_many_offsets(tmp_path, saved):
    blob = saved[1]
    for cut in sorted(set(np.linspace(0, len(blob) - 1, 60).astype(int)) | {0, 7, 8, 9, len(blob) - 1}):
        _load(tmp_path, blob[:cut])
    assert "trailing" in _load(tmp_path, blob + b"x") or "after its last tensor" in _load(tmp_path, blob + b"x")


def test_flipped_bytes_in_header_and_data(tmp_path, saved):
    blob = saved[1]
    n = int.from_bytes(blob[:8], "little")
    rng = np.random.default_rng(1)
    header_positions = rng.integers(8, 8 + n, 80)
    for pos in header_positions:
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        p = tmp_path / "bad.safetensors"
        p.write_bytes(bytes(bad))
        try:
            fm.load_model(p)  # a flip inside a number may still give a valid file; anything else must be ours
        except fm.ModelFileError:
            pass
    # data bytes: a flip that makes a NaN or infinity is refused
    f32 = np.frombuffer(blob, dtype="<f4", count=(len(blob) - 8 - n) // 4, offset=8 + n)
    for i in rng.integers(0, f32.size, 10):
        bad = bytearray(blob)
        struct.pack_into("<f", bad, 8 + n + 4 * int(i), float("nan"))
        assert "NaN" in _load(tmp_path, bytes(bad))
        struct.pack_into("<f", bad, 8 + n + 4 * int(i), float("inf"))
        assert "infinity" in _load(tmp_path, bytes(bad))


def test_enormous_header_length_and_not_safetensors(tmp_path, saved):
    assert "limit" in _load(tmp_path, (2**63).to_bytes(8, "little") + saved[1][8:])
    assert "limit" in _load(tmp_path, (_container.MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}")
    assert "truncated" in _load(tmp_path, (1000).to_bytes(8, "little") + b"{}")
    _load(tmp_path, b"")
    _load(tmp_path, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    _load(tmp_path, (4).to_bytes(8, "little") + b"[1] ")
    _load(tmp_path, (4).to_bytes(8, "little") + b"{\xff\xfe}")
    deep = b"{" + b'"a":' * 1 + b"[" * 100000 + b"]" * 100000 + b"}"
    _load(tmp_path, len(deep).to_bytes(8, "little") + deep)
    with pytest.raises(fm.ModelFileError, match="no such"):
        fm.load_model(tmp_path / "missing.safetensors")
    with pytest.raises(fm.ModelFileError, match="folder"):
        fm.load_model(tmp_path)


def test_wrong_dtypes_shapes_and_keys(tmp_path, saved):
    def retype(t):
        t["layers.0.W"] = t["layers.0.W"].astype(np.float64)
    assert "float64" in _rewrite(tmp_path, saved, edit_tensors=retype)

    def reshape(t):
        t["layers.0.W"] = t["layers.0.W"].T.copy()
    assert "shape" in _rewrite(tmp_path, saved, edit_tensors=reshape)

    def drop(t):
        del t["optimizer.v"]
    assert "missing" in _rewrite(tmp_path, saved, edit_tensors=drop)

    def add(t):
        t["layers.9.W"] = np.zeros((2, 2), np.float32)
    assert "no place" in _rewrite(tmp_path, saved, edit_tensors=add)

    def negative(t):
        t["optimizer.v"] = -np.abs(t["optimizer.v"]) - 1
    assert "negative" in _rewrite(tmp_path, saved, edit_tensors=negative)

    def ints(t):
        t["layers.0.b"] = np.zeros(5, np.int64)
    assert "int64" in _rewrite(tmp_path, saved, edit_tensors=ints)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["model"]["layers"][0]["config"].update(activation="relu6"), "Unknown activation"),
    (lambda d: d["model"]["layers"][0].update({"class": "Conv2D"}), "class"),
    (lambda d: d["model"]["layers"][0]["config"].update(units=-3), "units"),
    (lambda d: d["model"]["layers"][0]["config"].update(units=7), "shape"),
    (lambda d: d["model"]["layers"][0]["config"].update(use_bias=1), "use_bias"),
    (lambda d: d["model"]["layers"][0]["config"].update(extra=1), "settings"),
    (lambda d: d["model"].update(dtype="float16"), "dtype"),
    (lambda d: d["model"].update(input_dim=5), "shape"),
    (lambda d: d["model"].update(input_dim="4"), "input_dim"),
    (lambda d: d["model"]["compile"].update(loss="hinge"), "Unknown loss"),
    (lambda d: d["model"]["compile"]["optimizer"].update({"class": "lion"}), "class"),
    (lambda d: d["model"]["compile"]["optimizer"]["config"].update(lr=-1), "lr"),
    (lambda d: d["model"]["compile"]["optimizer"].update(t=-1), "t must"),
    (lambda d: d["model"]["rng"].update(bit_generator="os.system"), "bit generator"),
    (lambda d: d["model"]["rng"]["state"].update(state="x"), "rng"),
    (lambda d: d["model"]["history"]["history"].update(loss=["a"]), "history"),
    (lambda d: d["model"].pop("layers"), "layers"),
    (lambda d: d.update(kind="Pipeline"), "kind"),
    (lambda d: d.update(format_version="1"), "format_version"),
    (lambda d: d.update(__reduce__="os.system"), "unknown keys"),
])
def test_bad_configuration(tmp_path, saved, edit, match):
    assert match in _rewrite(tmp_path, saved, edit_doc=edit)


@pytest.mark.parametrize("edit,match", [
    (lambda h: h.pop("__metadata__"), "__metadata__"),
    (lambda h: h["__metadata__"].update(format="other"), "not a fastmlp"),
    (lambda h: h["__metadata__"].update(fastmlp="{not json"), "JSON"),
    (lambda h: h["layers.0.W"].update(dtype="BF16"), "dtype"),
    (lambda h: h["layers.0.W"].update(shape=[4, -5]), "shape"),
    (lambda h: h["layers.0.W"].update(shape=[2**39, 2**39]), "shape"),
    (lambda h: h["layers.0.W"].update(data_offsets=[0, 1]), "bytes"),
    (lambda h: h["layers.0.W"].update(data_offsets=[5, 1]), "data_offsets"),
    (lambda h: h["layers.0.W"].update(extra=1), "keys"),
    (lambda h: h.update(x={"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlaps"),
])
def test_bad_header(tmp_path, saved, edit, match):
    assert match in _rewrite(tmp_path, saved, edit_header=edit)
