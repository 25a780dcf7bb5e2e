"""ssgan.export: the exported ONNX and TorchScript files take raw pixels in the run's source range and give
the class probabilities of ``ssgan predict --proba`` and ``evaluate.predict_proba``; the class names travel
inside the files; every refusal is one RunDirError line and writes nothing.

Two tiny runs, trained once for the module: the builtin digits (raw values 0..16) and the same images given
as an .npz source of uint8 0..255 with named classes (raw values 0..255), so both input ranges and
non-trivial class names are checked."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ssgan.checkpoint import load_run
from ssgan.cli import main
from ssgan.data import scale_images
from ssgan.evaluate import predict_proba
from ssgan.export import Exported, ScaledClassifier, export_run
from ssgan.rundir import RunDirError
from tests.conftest import TINY_OVERRIDES

# torch marks TorchScript as deprecated and says so on every torch.jit.load; reading the file is the point here
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.load.* is deprecated:FutureWarning")

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _quiet_main(argv: list) -> int:
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def _digits_uint8() -> tuple:
    """scikit-learn's digits brought to uint8 0..255, (N, 8, 8), and their labels."""
    digits = load_digits()
    return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Both runs, each with its raw test images (float32 (N, 1, 8, 8)) and an .npz of them for ssgan predict."""
    root = tmp_path_factory.mktemp("export")
    images, labels = _digits_uint8()
    data = root / "digits-named.npz"
    np.savez(data, x_train=images[:300], y_train=labels[:300], x_test=images[300:400], y_test=labels[300:400],
             classes=np.array(NAMES))
    out = {}
    for name, extra in (("builtin", []), ("npz", ["dataset.source=npz", f"dataset.path={data}"])):
        run_dir = root / name
        assert _quiet_main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES, *extra]) == 0
        if name == "builtin":
            # the range ssgan predict reads as the digits source's (floats above 1): 0..16
            raw = load_digits().images[1500:1520, None].astype(np.float32)
        else:
            raw = images[1500:1520, None]  # uint8: 0..255
        np.savez(root / f"{name}-inputs.npz", x=raw)
        out[name] = {"dir": run_dir, "raw": raw.astype(np.float32), "npz": root / f"{name}-inputs.npz",
                     "value_max": 16.0 if name == "builtin" else 255.0}
    return out


@pytest.fixture(scope="module")
def exported(runs) -> dict:
    """(run name, format) -> what export_run wrote, in the run directory (the default place)."""
    pytest.importorskip("onnxruntime")  # a guard only: the dev extra installs it
    return {(name, fmt): export_run(run["dir"], fmt) for name, run in runs.items()
            for fmt in ("onnx", "torchscript")}


def _cli_proba(run: dict, csv_path: Path) -> tuple:
    """``ssgan predict RUN NPZ --proba --out CSV``, parsed: (class names of the columns, (N, K) floats)."""
    assert _quiet_main(["predict", str(run["dir"]), str(run["npz"]), "--proba", "--out", str(csv_path),
                        "--device", "cpu"]) == 0
    with open(csv_path, newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    return [h[2:] for h in header[2:]], np.array([[float(v) for v in row[2:]] for row in rows])


def _onnx_proba(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny inputs on a 2-core machine
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return out


def _torchscript_proba(path: Path, x: np.ndarray) -> np.ndarray:
    model = torch.jit.load(str(path))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


RUNNERS = {"onnx": _onnx_proba, "torchscript": _torchscript_proba}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["builtin", "npz"])
def test_exported_model_gives_the_probabilities_of_ssgan_predict(runs, exported, tmp_path, name, fmt):
    run, result = runs[name], exported[(name, fmt)]
    probs = RUNNERS[fmt](result.path, run["raw"])
    assert probs.dtype == np.float32 and probs.shape == (len(run["raw"]), 10)
    columns, cli = _cli_proba(run, tmp_path / "preds.csv")
    assert columns == load_run(run["dir"]).class_names
    np.testing.assert_allclose(probs, cli, rtol=0, atol=1e-5)  # the CSV has 6 decimals
    loaded = load_run(run["dir"])
    direct = predict_proba(loaded.discriminator, scale_images(run["raw"], loaded.config.dataset.scaling,
                                                              run["value_max"]))
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_batch_dimension_is_free(runs, exported, fmt):
    # exported with an example batch of 2: one image and seven must run too, and give the same rows
    run = runs["builtin"]
    whole = RUNNERS[fmt](exported[("builtin", fmt)].path, run["raw"][:7])
    one = RUNNERS[fmt](exported[("builtin", fmt)].path, run["raw"][3:4])
    assert whole.shape == (7, 10) and one.shape == (1, 10)
    np.testing.assert_allclose(one[0], whole[3], rtol=0, atol=1e-6)


def test_export_returns_what_it_wrote(runs, exported):
    result = exported[("npz", "onnx")]
    assert isinstance(result, Exported)
    assert result.path == runs["npz"]["dir"] / "model.onnx" and result.path.is_file()
    assert exported[("npz", "torchscript")].path == runs["npz"]["dir"] / "model.pt"
    assert result.class_names == NAMES and result.input_shape == (1, 8, 8)
    assert result.input_value_max == 255.0 and exported[("builtin", "onnx")].input_value_max == 16.0
    assert not list(runs["npz"]["dir"].glob(".*.tmp"))  # atomic_write leaves no temporary file


@pytest.mark.parametrize("name", ["builtin", "npz"])
def test_class_names_travel_with_the_files(runs, exported, name):
    onnx = pytest.importorskip("onnx")
    import onnxruntime as ort

    names = load_run(runs[name]["dir"]).class_names
    value_max = f"{runs[name]['value_max']:g}"
    props = {p.key: p.value for p in onnx.load(str(exported[(name, "onnx")].path)).metadata_props}
    assert json.loads(props["class_names"]) == names
    assert props["input_value_max"] == value_max and props["input_layout"] == "NCHW"
    assert json.loads(props["input_shape"]) == [1, 8, 8]
    session = ort.InferenceSession(str(exported[(name, "onnx")].path), providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["class_names"]) == names
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]

    extra = {"class_names.json": "", "metadata.json": ""}
    torch.jit.load(str(exported[(name, "torchscript")].path), _extra_files=extra)
    assert json.loads(extra["class_names.json"]) == names
    metadata = json.loads(extra["metadata.json"])
    assert metadata["class_names"] == names and metadata["input_value_max"] == value_max


def _refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(RunDirError, match=match) as info:
        export_run(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def test_an_existing_file_is_never_replaced(runs, exported, tmp_path):
    path = exported[("builtin", "onnx")].path
    before = path.read_bytes()
    _refused("already exists", runs["builtin"]["dir"], "onnx")  # the default name, written by the fixture
    _refused("already exists", runs["builtin"]["dir"], "torchscript")
    assert path.read_bytes() == before
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"mine")
    _refused("already exists", runs["builtin"]["dir"], "torchscript", out=taken)
    assert taken.read_bytes() == b"mine"


def test_refusals_are_one_line_and_write_nothing(runs, tmp_path):
    run_dir = runs["builtin"]["dir"]
    assert "onnx or torchscript" in _refused("unknown export format 'tflite'", run_dir, "tflite")
    _refused("no such run directory", tmp_path / "missing", "torchscript")
    (tmp_path / "empty").mkdir()
    _refused("no checkpoint.pt", tmp_path / "empty", "torchscript")
    _refused(r"the folder .*nowhere does not exist", run_dir, "torchscript", out=tmp_path / "nowhere" / "m.pt")
    _refused(r"--out \(onnx\) .*m\.pt: expected a \.onnx file", run_dir, "onnx", out=tmp_path / "m.pt")
    _refused(r"--out \(torchscript\) .*m\.onnx: expected a \.pt file", run_dir, "torchscript", out=tmp_path / "m.onnx")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    _refused("not a readable checkpoint", broken, "torchscript")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty"]
    assert sorted(p.name for p in broken.iterdir()) == ["checkpoint.pt"]


def test_a_missing_onnx_extra_names_the_extra(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    message = _refused("export extra", runs["builtin"]["dir"], "onnx", out=tmp_path / "m.onnx")
    assert "pip install 'ssgan[export]'" in message and "onnxscript" in message
    assert not (tmp_path / "m.onnx").exists()


def test_export_from_a_checkpoint_file_and_an_explicit_out(runs, exported, tmp_path):
    out = tmp_path / "digits.pt"
    result = export_run(runs["builtin"]["dir"] / "checkpoint.pt", "torchscript", out=str(out))
    assert result.path == out
    raw = runs["builtin"]["raw"]
    np.testing.assert_allclose(_torchscript_proba(out, raw),
                               _torchscript_proba(runs["builtin"]["dir"] / "model.pt", raw), rtol=0, atol=0)


class _FirstPixels(torch.nn.Module):
    """A stand-in discriminator whose logits are the first 5 (scaled) pixels: the scaling shows through."""

    def forward(self, x: torch.Tensor) -> tuple:
        return x.flatten(1)[:, :5], x


@pytest.mark.parametrize("scaling", ["unit", "cifar", "symmetric"])
@pytest.mark.parametrize("value_max", [16.0, 255.0])
def test_the_wrapper_scales_as_scale_images(scaling, value_max):
    raw = np.random.RandomState(0).randint(0, int(value_max) + 1, (4, 3, 2, 2)).astype(np.float32)
    expected = torch.softmax(torch.from_numpy(scale_images(raw, scaling, value_max)).flatten(1)[:, :5], dim=1)
    got = ScaledClassifier(_FirstPixels(), scaling, value_max).eval()(torch.from_numpy(raw))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-7)


def test_the_export_command(tmp_path, capsys):
    from ssgan.cli import main
    from tests.conftest import TINY_OVERRIDES

    run_dir = tmp_path / "run"
    assert main(["fit", "--run-dir", str(run_dir), *TINY_OVERRIDES]) == 0
    capsys.readouterr()
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {run_dir / 'model.pt'} (torchscript)")
    assert main(["export", str(run_dir), "--format", "torchscript"]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
