"""Bad input, in one table: each case is one clear line on stderr, exit code 2, no traceback, and no file
that existed before is changed or removed (issue "Never lose a run", item 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssgan.checkpoint import content_digest, load_checkpoint
from ssgan.cli import main
from tests.conftest import TINY_OVERRIDES


def _bomb_png(path: Path) -> None:
    """A PNG header claiming 100000 x 100000 pixels (over Pillow's decompression-bomb limit), tiny on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100000, 100000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A trained run and the malformed files the table refers to, under one folder."""
    root = tmp_path_factory.mktemp("inputs")
    assert main(["fit", "--run-dir", str(root / "run"), *TINY_OVERRIDES]) == 0

    def image(path: Path, size=(8, 8)) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.RandomState(0).randint(0, 255, size, dtype=np.uint8)).save(path)

    for split in ("train", "test"):  # a folder whose one image is corrupt
        for k in ("a", "b"):
            image(root / "corrupt" / split / k / "0.png")
    (root / "corrupt" / "train" / "a" / "1.png").write_bytes(b"\x89PNG not really an image")
    (root / "empty" / "train").mkdir(parents=True)
    (root / "empty" / "test").mkdir(parents=True)
    for split in ("train", "test"):  # images of another size
        for k in ("a", "b"):
            image(root / "big" / split / k / "0.png", size=(16, 16))

    good = dict(x_train=np.zeros((20, 8, 8), np.uint8), y_train=np.arange(20) % 2,
                x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.arange(4) % 2)
    np.savez(root / "missing.npz", x_train=good["x_train"], y_train=good["y_train"])
    np.savez(root / "flat.npz", **{**good, "x_train": np.zeros(20, np.uint8)})
    np.savez(root / "float_labels.npz", **{**good, "y_train": np.zeros(20, np.float32)})
    np.savez(root / "label_range.npz", **{**good, "y_test": np.array([0, 1, -3, 1])})
    np.savez(root / "count.npz", **{**good, "y_train": np.zeros(19, np.int64)})
    np.savez(root / "strings.npz", **{**good, "x_train": np.array(["a"] * 20)})
    (root / "not_an_archive.npz").write_bytes(b"PK broken")
    floats = np.full((20, 8, 8), 100.0, np.float32)
    np.savez(root / "nan_train.npz", **{**good, "x_train": np.where(np.arange(20)[:, None, None] == 3, np.nan, floats)})
    np.savez(root / "inf_test.npz", **{**good, "x_test": np.full((4, 8, 8), np.inf, np.float32)})
    np.savez(root / "negative.npz", **{**good, "x_train": floats - 150.0})
    np.savez(root / "too_bright.npz", **{**good, "x_train": floats * 3})
    np.savez(root / "one_class.npz", **{**good, "y_train": np.zeros(20, np.int64), "y_test": np.zeros(4, np.int64)})
    np.savez(root / "nan_x.npz", x=np.full((3, 8, 8), np.nan, np.float32))
    np.savez(root / "no_test.npz", **{**good, "x_train": np.random.RandomState(0).randint(0, 255, (20, 8, 8),
                                                                                       dtype=np.uint8),
                                      "x_test": np.zeros((0, 8, 8), np.uint8), "y_test": np.zeros(0, np.int64)})
    assert main(["fit", "--run-dir", str(root / "no_test_run"), *TINY_OVERRIDES, "dataset.source=npz",
                 f"dataset.path={root / 'no_test.npz'}", "dataset.labels=2"]) == 0

    checkpoint = (root / "run" / "checkpoint.pt").read_bytes()
    (root / "truncated").mkdir()
    (root / "truncated" / "checkpoint.pt").write_bytes(checkpoint[: len(checkpoint) // 2])
    payload = load_checkpoint(root / "run" / "checkpoint.pt")
    payload["config"]["model"]["d_widths"] = [64, 64]
    (root / "other_arch").mkdir()
    payload["sha256"] = content_digest(payload)  # a well-formed checkpoint whose config names other widths
    torch.save(payload, root / "other_arch" / "checkpoint.pt")
    (root / "no_checkpoint").mkdir()
    def nan_average(c):
        c["discriminator_avg"][next(iter(c["discriminator_avg"]))].fill_(float("nan"))

    for name, change in (("no_class_names", lambda c: c.pop("class_names")),
                         ("bad_epoch", lambda c: c.update(epoch="one")),
                         # forged, with a recomputed checksum: the content is checked, not only the bytes
                         ("nan_average", nan_average),
                         ("far_indices", lambda c: c.update(labeled_indices=c["labeled_indices"] + 10 ** 6)),
                         ("late_iteration", lambda c: c.update(iteration=10 ** 6)),
                         ("three_names", lambda c: c.update(class_names=["a", "b", "c"]))):
        broken = load_checkpoint(root / "run" / "checkpoint.pt")
        change(broken)
        broken["sha256"] = content_digest(broken)
        (root / name).mkdir()
        torch.save(broken, root / name / "checkpoint.pt")
    unsigned = load_checkpoint(root / "run" / "checkpoint.pt")
    del unsigned["sha256"]  # a forged checkpoint that drops its checksum
    (root / "no_checksum").mkdir()
    torch.save(unsigned, root / "no_checksum" / "checkpoint.pt")
    (root / "zip_magic.npz").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)  # a zip's magic, then junk
    _bomb_png(root / "bomb.png")
    (root / "notes.txt").write_text("not an image")
    (root / "taken.csv").write_text("keep me")
    return root


CASES = [
    (["fit", "--dataset", "imagenet"], "invalid choice"),
    (["fit", "--method", "wgan"], "invalid choice"),
    (["fit", "method=nope"], "method"),
    (["fit", "dataset=nope"], "dataset/nope"),
    (["fit", "--labels", "55"], "not a multiple"),
    (["fit", "--labels", "5000"], "has only"),
    (["fit", "--labels", "0"], "dataset.labels=0"),
    (["fit", "--labels", "-10"], "dataset.labels=-10"),
    (["fit", "--labels", "ten"], "invalid int"),
    (["fit", "--epochs", "-1"], "train.epochs=-1"),
    (["fit", "train.step=fast"], "train.step='fast': expected faithful or lean"),
    (["fit", "train.lr=0"], "train.lr=0"),
    (["fit", "train.lr=-0.1"], "train.lr=-0.1"),
    (["fit", "train.lr=fast"], "train.lr"),
    # fp16 without gradient scaling loses small GAN gradients silently: refused, bf16 named instead
    (["fit", "train.precision=fp16"], "train.precision='fp16'"),
    (["fit", "train.ema_decay=1.5"], "train.ema_decay"),
    (["fit", "train.ema_start=one"], "train.ema_start='one'"),
    (["fit", "train.device=tpu"], "train.device"),
    (["fit", "dataset.nope=1"], "dataset.nope"),
    (["fit", "stray"], "KEY=VALUE"),
    (["fit", "--dataset", "mnist", "dataset.root={root}/nowhere"], "dataset.download"),
    (["fit", "dataset.source=npz"], "dataset.path"),
    (["fit", "dataset.source=folder", "dataset.path={root}/nowhere"], "no such folder"),
    (["fit", "dataset.source=folder", "dataset.path={root}/corrupt", "dataset.labels=2"], "1.png"),
    (["fit", "dataset.source=folder", "dataset.path={root}/empty", "dataset.labels=2"], "class folders"),
    (["fit", "dataset.source=folder", "dataset.path={root}/big", "dataset.labels=2"], "dataset.resize=true"),
    (["fit", "dataset.source=npz", "dataset.path={root}/missing.npz"], "missing arrays"),
    (["fit", "dataset.source=npz", "dataset.path={root}/flat.npz"], "expected images"),
    (["fit", "dataset.source=npz", "dataset.path={root}/float_labels.npz"], "integer"),
    (["fit", "dataset.source=npz", "dataset.path={root}/label_range.npz", "dataset.labels=2"], "labels must lie"),
    (["fit", "dataset.source=npz", "dataset.path={root}/count.npz"], "19 labels for 20"),
    (["fit", "dataset.source=npz", "dataset.path={root}/strings.npz"], "dtype"),
    (["fit", "dataset.source=npz", "dataset.path={root}/not_an_archive.npz"], "not a readable"),
    (["fit", "--run-dir", "{root}/run"], "already exists"),
    (["fit", "--resume", "{root}/nowhere"], "no such run directory"),
    (["fit", "--resume", "{root}/truncated"], "truncated or corrupt"),
    (["fit", "--resume", "{root}/run", "--labels", "20"], "--resume continues"),
    (["evaluate", "{root}/nowhere"], "no such run directory"),
    (["evaluate", "{root}/no_checkpoint"], "no checkpoint"),
    (["evaluate", "{root}/truncated"], "truncated or corrupt"),
    (["evaluate", "{root}/other_arch"], "do not fit the architecture"),
    (["predict", "{root}/run", "{root}/nowhere.png"], "no such file"),
    (["predict", "{root}/run", "{root}/notes.txt"], "cannot read image"),
    (["predict", "{root}/run", "{root}/big/train/a/0.png"], "resize them to 8x8 first"),  # a fit option would not apply
    (["predict", "{root}/run", "{root}/run/samples.png", "--out", "{root}/taken.csv"], "already exists"),
    (["frobnicate"], "unknown command"),
    # Never lose a run, part two: data that is silently wrong
    (["fit", "dataset.source=npz", "dataset.path={root}/nan_train.npz", "dataset.labels=2"], "NaN or infinite"),
    (["fit", "dataset.source=npz", "dataset.path={root}/inf_test.npz", "dataset.labels=2"], "test images contain NaN"),
    (["fit", "dataset.source=npz", "dataset.path={root}/negative.npz", "dataset.labels=2"], "must lie in 0..255"),
    (["fit", "dataset.source=npz", "dataset.path={root}/too_bright.npz", "dataset.labels=2"], "found 300..300"),
    (["fit", "dataset.source=npz", "dataset.path={root}/one_class.npz", "dataset.labels=2"], "at least two"),
    (["predict", "{root}/run", "{root}/nan_x.npz"], "NaN or infinite"),
    (["predict", "{root}/run", "{root}/nan_x.npz", "--batch-size", "-5"], "--batch-size=-5"),
    # ... and tracebacks that became one line
    (["fit", "--seed", "4294967296"], "seed=4294967296"),
    (["fit", "--seed", "4294967295", "--seeds", "2"], "below 4294967296"),
    (["fit", "train.eval_batch_size=0"], "train.eval_batch_size=0"),
    (["fit", "train.batch_size=100000000000"], "does not fit in memory"),
    (["fit", "train.iters_per_epoch=10000000000"], "does not fit in memory"),
    (["fit", "--run-dir", "{root}/notes.txt", "--overwrite"], "is a file"),
    (["fit", "--run-dir", "{root}/notes.txt/sub"], "is a file"),
    (["fit", "--run-dir", "/proc/ssgan-cannot-be-here/run"], "cannot create"),
    (["evaluate", "{root}/no_test_run"], "no test images"),
    (["ensemble", "{root}/no_test_run"], "no test images"),
    (["predict", "{root}/run", "{root}/nan_x.npz", "--out", "{root}/nowhere/p.csv"], "does not exist"),
    (["predict", "{root}/run", "{root}/nan_x.npz", "--out", "{root}/p.txt"], "expected a .csv file"),
    (["sample", "{root}/run", "--out", "{root}/nowhere/grid.png"], "does not exist"),
    (["sample", "{root}/run", "--out", "{root}/grid.jpg"], "expected a .png file"),
    (["sample", "{root}/run", "--no-grid", "--score", "--n-score", "10", "--splits", "20"], "more splits"),
    (["ensemble", "{root}/run", "--out", "{root}/nowhere/e.json"], "does not exist"),
    (["ensemble", "{root}/run", "--out", "{root}/e.csv"], "expected a .json file"),
    (["fit", "--resume", "{root}/run", "model.d_widths=[64,64]"], "cannot change model.d_widths"),
    (["fit", "--resume", "{root}/other_arch"], "do not fit the architecture"),
    (["evaluate", "{root}/no_class_names"], "missing class_names"),
    (["evaluate", "{root}/bad_epoch"], "malformed checkpoint entry 'epoch'"),
    (["fit", "model.d_widths=[0,0,0]"], "widths must be positive"),
    (["table", "--dataset", "digits", "--labels", "20", "--seeds", "1", "--cache-dir", "/proc/ssgan-no-cache"],
     "cannot create"),
    # Never lose a run, part three: tracebacks that became one line
    (["predict", "{root}/run", "{root}/nan_x.npz", "--device", "banana"], "device 'banana'"),
    (["evaluate", "{root}/run", "--device", "banana"], "device 'banana'"),
    (["sample", "{root}/run", "--out", "{root}/g.png", "--device", "banana"], "device 'banana'"),
    (["ensemble", "{root}/run", "--device", "banana"], "device 'banana'"),
    (["table", "--from", "{root}/run", "--out-dir", "{root}/tab", "--device", "banana"], "device 'banana'"),
    (["predict", "{root}/run", "{root}/bomb.png"], "DecompressionBombError"),
    (["predict", "{root}/run", "{root}/zip_magic.npz"], "zip_magic.npz"),
    (["fit", "dataset.source=npz", "dataset.path={root}/zip_magic.npz"], "zip_magic.npz"),
    (["fit", "dataset.val_size=inf"], "dataset.val_size=inf"),
    (["fit", "model.weight_init_std=-1"], "model.weight_init_std=-1"),
    (["fit", "model.weight_init_std=nan"], "model.weight_init_std=nan"),
    (["evaluate", "{root}/no_checksum"], "no checksum"),
    (["predict", "{root}/nan_average", "{root}/nan_x.npz"], "not a finite tensor"),
    (["evaluate", "{root}/three_names"], "3 class names for 10 classes"),
    (["fit", "--resume", "{root}/far_indices"], "labeled indices reach"),
    (["fit", "--resume", "{root}/late_iteration"], "past an epoch"),
    (["table", "--dataset", "digits", "--labels", "55", "--seeds", "1", "--cache-dir", "cache"], "not a multiple"),
]


def _numeric_cases() -> list:
    """Every number of the schema (``config.numeric_keys``), out of its range: -1 (all are >= 0), and for
    floats nan and inf (none may be infinite)."""
    from ssgan.config import numeric_keys

    cases = []
    for key, kind in numeric_keys().items():
        for value in ("-1", "nan", "inf") if kind is float else ("-1",):
            cases.append((["fit", f"{key}={value}"], f"{key}={value}"))
    return cases


CASES += _numeric_cases()


def _snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv, fragment", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(argv, fragment, inputs, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(inputs)
    argv = [a.replace("{root}", str(inputs)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert fragment in err, err
    assert _snapshot(inputs) == before
    assert not (tmp_path / "runs").exists()  # no run directory left behind
    assert not (tmp_path / "cache").exists()  # nor a table's cache


def test_the_table_is_large():
    assert len(CASES) >= 160
