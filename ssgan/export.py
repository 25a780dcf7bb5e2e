"""Export a finished run's classifier, its input scaling included, as an ONNX or a TorchScript file.

What is exported is the averaged discriminator of the run (``load_run(run_dir).discriminator``, the network
every test error is computed with) in eval mode (no dropout, no Gaussian noise), wrapped in
``ScaledClassifier``: raw pixels -> the recipe's scaling -> discriminator -> softmax over the K class logits.
The file therefore needs neither ssgan nor the run's config to be used.

Input contract
    one float32 tensor ``images`` of shape (N, C, H, W), N free (a dynamic batch dimension), C, H, W those of
    the run's recipe (``dataset.image_shape``, e.g. (1, 8, 8) for digits, (3, 32, 32) for CIFAR-10),
    holding *raw* pixel values in the run's source range: 0..16 for scikit-learn's digits
    (``dataset.source=builtin``, the range ``load_digits`` gives) and 0..255 for every other source (uint8
    images cast to float32). This value is ``input_value_max`` (``data.source_value_max``). Inside, the
    recipe's ``dataset.scaling`` is applied as ``data.scale_images`` applies it:
    ``unit``: x / value_max; ``cifar``: (x * 255 / value_max - 127.5) / 128;
    ``symmetric``: (x * 255 / value_max - 127.5) / 127.5; ``half``: (x * 255 / value_max - 127.5) / 255.
    Images of another size must be resized beforehand (the run's ``dataset.resize`` is not part of the file).
    Unlike ``ssgan predict``, which reads the range from the array (uint8: 0..255, floats up to 1: 0..1), the
    file takes this one range only: for a digits run, images of 0..255 are to be multiplied by 16 / 255 first.

Output contract
    one float32 tensor ``probabilities`` of shape (N, K): p(y = k | x) over the K real classes (the rows sum to
    1), the same numbers as ``ssgan predict --proba`` and ``evaluate.predict_proba`` on the scaled images. With
    ``model.minibatch_discrimination=true`` an image's output depends on the other images of its batch, as it
    does in ssgan itself.

Metadata (``model_metadata``) travels inside the file:
    ONNX: ``metadata_props`` with the keys ``class_names`` (a JSON list of strings, in output column order),
    ``input_value_max``, ``input_layout`` ("NCHW"), ``input_shape`` (JSON [C, H, W]), ``scaling``, ``output``
    and ``ssgan_version``; read them back with
    ``{p.key: p.value for p in onnx.load(path).metadata_props}`` or, in onnxruntime,
    ``session.get_modelmeta().custom_metadata_map``.
    TorchScript: the extra files ``class_names.json`` (the JSON list) and ``metadata.json`` (all the keys
    above, ``class_names`` as a list); read them back with
    ``extra = {"class_names.json": "", "metadata.json": ""}; torch.jit.load(path, _extra_files=extra)``,
    after which ``json.loads(extra["class_names.json"])`` is the list.

The ONNX path needs the ``export`` extra (``pip install 'ssgan[export]'``: onnx and onnxscript for torch's
exporter, onnxruntime to run the file); TorchScript needs nothing beyond torch. Torch marks TorchScript as
deprecated, but still writes and reads it; its deprecation warnings are silenced here so that an export
prints only what it did.

Files are written with ``rundir.atomic_write`` (serialised in memory, then a temporary file renamed over the
target), and an existing file is never replaced: every refusal is one ``RunDirError`` line.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import __version__
from .checkpoint import Run, load_run
from .data import CENTRED_DIVISORS, source_value_max
from .ood import read_temperature
from .rundir import CHECKPOINT_NAME, RunDirError, atomic_write, check_new_file

# format -> (file extension, default file name in the run directory)
FORMATS: Dict[str, Tuple[str, str]] = {"onnx": (".onnx", "model.onnx"), "torchscript": (".pt", "model.pt")}
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
INPUT_LAYOUT = "NCHW"
CLASS_NAMES_FILE = "class_names.json"
METADATA_FILE = "metadata.json"
EXTRA = "pip install 'ssgan[export]'"


@dataclass
class Exported:
    """What ``export_run`` wrote: the file, its format and the contract it was written with."""

    path: Path
    fmt: str
    class_names: List[str]
    input_shape: Tuple[int, int, int]  # (C, H, W); the batch dimension N is free
    input_value_max: float


def export_run(run_dir: str | Path, fmt: str, out: Optional[str | Path] = None, *,
               networks: Optional[Sequence] = None, calibrated: bool = False) -> Exported:
    """Export the averaged discriminator of a run, its input scaling and a softmax included.

    Args:
        run_dir: a run directory written by ``ssgan fit`` (or its ``checkpoint.pt``).
        fmt: ``"onnx"`` or ``"torchscript"``.
        out: the file to write; default ``RUN_DIR/model.onnx`` or ``RUN_DIR/model.pt``. Its folder must
            exist and its extension must be the format's (``.onnx``, ``.pt``).
        networks: a run of one's own networks: their builders or modules (``checkpoint.load_run``).
        calibrated: softmax(l / T) with the temperature fitted on the run's validation split
            (``calibration.json``, ``ood.read_temperature``); the metadata's ``temperature`` says which.

    Returns:
        An ``Exported`` record of the file written.

    Raises:
        RunDirError: an unknown format, a missing run directory or checkpoint, an unreadable checkpoint, an
            ``out`` that exists, lies in a missing folder or has the wrong extension, or (ONNX) the export
            extra missing or too old for the installed torch. One line each; nothing is written.
    """
    if fmt not in FORMATS:
        raise RunDirError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    default_name = FORMATS[fmt][1]
    run_path = Path(run_dir)
    if not run_path.exists():
        raise RunDirError(f"{run_dir}: no such run directory")
    if run_path.is_dir() and not (run_path / CHECKPOINT_NAME).is_file():
        raise RunDirError(f"{run_dir}: no {CHECKPOINT_NAME} in it (not a run directory written by ssgan fit)")
    target = Path(out) if out is not None else (run_path if run_path.is_dir() else run_path.parent) / default_name
    _check_target(target, fmt)
    if fmt == "onnx":
        _require_onnx()  # before loading anything: a missing extra is the user's first thing to fix
    temperature = read_temperature(run_path, required=True) if calibrated else 1.0
    run = load_run(run_path, "cpu", networks)
    model = classifier_of(run, temperature)
    metadata = {**model_metadata(run), "temperature": f"{temperature!r}"}
    example = torch.zeros(2, *run.config.dataset.image_shape)  # batch 2: a size-1 batch could be specialised
    content = _onnx_bytes(model, example, metadata) if fmt == "onnx" else _torchscript_bytes(model, example,
                                                                                               metadata)
    # Checked again: exporting takes seconds, in which another process may have written the file. What is left
    # is the instant between this check and atomic_write's rename.
    _check_target(target, fmt)
    atomic_write(target, content)
    return Exported(target, fmt, list(run.class_names), tuple(run.config.dataset.image_shape),
                    source_value_max(run.config.dataset))


def classifier_of(run: Run, temperature: float = 1.0) -> nn.Module:
    """The run's averaged discriminator behind its input scaling, in eval mode, gradients off.

    Args:
        run: a run loaded by ``checkpoint.load_run``.
        temperature: T of softmax(l / T) (1: the run's own probabilities).

    Returns:
        A ``ScaledClassifier``: raw pixels (N, C, H, W) float32 -> (N, K) class probabilities.
    """
    cfg = run.config.dataset
    model = ScaledClassifier(run.discriminator, cfg.scaling, source_value_max(cfg), temperature).to("cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_metadata(run: Run) -> Dict[str, str]:
    """The metadata written into an exported file, every value a string (ONNX ``metadata_props`` hold
    strings): the class names as JSON, the input contract and the producing ssgan version.

    Args:
        run: a run loaded by ``checkpoint.load_run``.

    Returns:
        ``{"class_names", "input_value_max", "input_layout", "input_shape", "scaling", "output",
        "ssgan_version"}`` -> string.
    """
    cfg = run.config.dataset
    return {
        "class_names": json.dumps(list(run.class_names)),
        "input_value_max": f"{source_value_max(cfg):g}",
        "input_layout": INPUT_LAYOUT,
        "input_shape": json.dumps(list(cfg.image_shape)),
        "scaling": cfg.scaling,
        "output": f"{OUTPUT_NAME}: (N, {len(run.class_names)}) softmax over the classes, in class_names order",
        "ssgan_version": __version__,
    }


def _check_target(target: Path, fmt: str) -> None:
    """Refuse an output that exists, lies in a missing folder or does not end in the format's extension."""
    check_new_file(target, FORMATS[fmt][0], what=f"--out ({fmt})")


def _require_onnx() -> None:
    """torch's torch.export-based ONNX exporter (torch 2.6+) builds the graph with onnxscript and onnx; say
    which extra they are in."""
    if torch.__version__ < "2.6":  # TorchVersion compares with version strings
        raise RunDirError(f"ONNX export needs torch 2.6 or newer (this is {torch.__version__}): {EXTRA}")
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RunDirError(f"ONNX export needs the export extra ({error.name} is missing): {EXTRA}") from None


def _onnx_bytes(model: nn.Module, example: Tensor, metadata: Dict[str, str]) -> bytes:
    """The ONNX file, serialised in memory, with ``metadata`` in its ``metadata_props``."""
    batch = torch.export.Dim("batch")
    try:
        # external_data=False: the weights inside the one file (they are far below protobuf's 2 GB limit)
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                    output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},),
                                    external_data=False, verbose=False)
    except ModuleNotFoundError as error:
        # torch imports a module of onnxscript named after its own version (onnxscript._framework_apis.
        # torch_2_11 for torch 2.11+); an onnxscript older than the torch lacks it
        if not (error.name or "").startswith("onnxscript"):
            raise
        import onnxscript

        raise RunDirError(f"onnxscript {onnxscript.__version__} is too old for torch {torch.__version__} "
                          f"({error.name} is missing): pip install -U 'ssgan[export]'") from None
    proto = program.model_proto
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


def _torchscript_bytes(model: nn.Module, example: Tensor, metadata: Dict[str, str]) -> bytes:
    """The TorchScript file, serialised in memory, with the class names and ``metadata`` as extra files."""
    extra = {CLASS_NAMES_FILE: metadata["class_names"],
             METADATA_FILE: json.dumps({**metadata, "class_names": json.loads(metadata["class_names"])})}
    with warnings.catch_warnings():
        # torch.jit.trace / save warn that TorchScript is deprecated on every call (see the module docstring)
        warnings.simplefilter("ignore", FutureWarning)
        # Tracing, not scripting: the eval-mode branches (no noise, no dropout) are what is recorded, and the
        # networks need not be scriptable. The check re-runs the trace on the example and compares.
        traced = torch.jit.trace(model, (example,), check_trace=True)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


class ScaledClassifier(nn.Module):
    """Raw pixels -> the recipe's scaling -> discriminator -> softmax over the K class logits.

    The scaling repeats ``data.scale_images`` operation by operation, in its order (not folded into one
    affine map), so that the scaled inputs are those of ``ssgan predict`` up to float32 rounding. Put it in
    eval mode before exporting (``classifier_of`` does): the discriminator's noise and dropout follow it.

    Args:
        discriminator: a network returning ``(logits, feats)``, logits (N, K).
        scaling: ``unit`` or one of ``data.CENTRED_DIVISORS`` (``dataset.scaling``).
        value_max: the raw value that stands for white (``data.source_value_max``).
    """

    def __init__(self, discriminator: nn.Module, scaling: str, value_max: float, temperature: float = 1.0) -> None:
        super().__init__()
        if scaling != "unit" and scaling not in CENTRED_DIVISORS:
            raise RunDirError(f"unknown scaling {scaling!r} in the run's config")
        self.discriminator = discriminator
        self.scaling = scaling
        self.value_max = float(value_max)
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) float32 raw pixels -> (N, K) float32 class probabilities."""
        if self.scaling == "unit":
            x = x / self.value_max
        else:
            x = x * (255.0 / self.value_max) - 127.5
            x = x / CENTRED_DIVISORS[self.scaling]
        logits, _ = self.discriminator(x)
        if self.temperature != 1.0:  # calibrated (--calibrated): softmax(l / T)
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)
