"""Input that would hang, exhaust memory or raise a traceback is one line and exit code 2 before any work:
huge label values, declared array sizes, shared or deeply nested lists in a checkpoint, a malformed pickle, and
counts on the command line (issue 31, items 4 and 5)."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest
import torch

from ssgan.checkpoint import load_checkpoint
from ssgan.cli import main
from ssgan.config import DataConfig
from ssgan.data import DataError, load_data
from ssgan.rundir import CHECKPOINT_FORMAT, RunDirError


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def _data(path) -> DataConfig:
    return DataConfig(name="digits", source="npz", path=str(path), labels=20, image_shape=[1, 8, 8])


def test_an_npz_label_of_10_to_the_12_is_one_line(tmp_path):
    x = np.zeros((30, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 10
    y[3] = 10 ** 12
    path = _npz(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=np.arange(30) % 10)
    with pytest.raises(DataError, match="label 1000000000000"):
        load_data(_data(path))


def _npy_member(shape, dtype="<u1", data=b"\0" * 16) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


def test_an_npz_header_declaring_10_to_the_12_bytes_is_one_line(tmp_path, capsys):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", _npy_member((10 ** 12,)))
    with pytest.raises(DataError, match="declares"):
        load_data(_data(path))
    run = tmp_path / "run"
    assert main(["fit", "--run-dir", str(run), "train.epochs=1", "train.iters_per_epoch=1", "train.device=cpu",
                 "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "declares" in err, err


def _text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()  # BINUNICODE


def _checkpoint_with(tmp_path, entries: bytes):
    """A checkpoint zip whose data.pkl is {format: ..., sha256: 'x', <entries: pickled keys and values>}."""
    pkl = b"\x80\x02}(" + _text("format") + _text(CHECKPOINT_FORMAT) + _text("sha256") + _text("x") + entries + b"u."
    buffer = io.BytesIO()
    torch.save({}, buffer)
    path = tmp_path / "checkpoint.pt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            target.writestr(name, pkl if name.endswith("data.pkl") else source.read(name))
    return path


@pytest.mark.parametrize("n_levels, message", [(64, "nested too deep"), (24, "too large")])
def test_a_checkpoint_of_shared_nested_lists_is_refused_at_once(n_levels, message, tmp_path):
    """64 levels of [l, l] (2 KB): 2**64 steps for a walk that follows every reference; 24 levels: 2**24."""
    # s0 = [] (memo 0); sK = [s(K-1), s(K-1)] (two references to one list, memo K); config = s<n_levels>
    levels = _text("s0") + b"]q\x00" + b"".join(
        _text(f"s{k}") + b"](h" + bytes([k - 1]) + b"h" + bytes([k - 1]) + b"eq" + bytes([k])
        for k in range(1, n_levels + 1))
    path = _checkpoint_with(tmp_path, levels + _text("config") + b"h" + bytes([n_levels]))
    with pytest.raises(RunDirError, match=message):
        load_checkpoint(path)


def test_a_checkpoint_of_200000_nested_lists_is_refused(tmp_path):
    path = _checkpoint_with(tmp_path, _text("config") + b"]" * 200_000 + b"a" * 199_999)
    with pytest.raises(RunDirError, match="too deep"):
        load_checkpoint(path)


def test_a_malformed_pickle_is_one_line(tmp_path):
    path = _checkpoint_with(tmp_path, _text("config") + b"]K\x01u")  # SETITEMS on a list
    with pytest.raises(RunDirError, match="not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "--n", str(10 ** 12)], "--n 1000000000000"),
    (["sample", "RUN", "--score", "--no-grid", "--n-score", str(10 ** 12)], "--n-score 1000000000000"),
    (["fit", "--seeds", "100000000"], "--seeds 100000000"),
])
def test_huge_counts_on_the_command_line_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []
