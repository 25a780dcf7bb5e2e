"""How a training runs on its device, apart from what it computes: the numerics (determinism, TF32), where the
images live (one device tensor, or pinned host memory with asynchronous copies) and the CUDA graph that
replays an engine's step (``Captured``, a wrapper around ``engine.step``).

The plain CPU path uses none of this but ``numerics`` and ``place_data``, which there leave the images where
they are: batches are plain indexing and the engine's step runs as it is. ``tests/test_accelerate.py``
checks that the wrapper, run eagerly, trains exactly what the plain loop trains.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .config import Config, ConfigError, refused_options, resolve_device
from .engines import Batch, Engine
from .evaluate import float32_precision

WARMUP_ITERATIONS = 3  # eager iterations on a side stream before the capture (cuDNN / cuBLAS workspaces, state)


@contextlib.contextmanager
def numerics(t, device: Optional[torch.device] = None) -> Iterator[None]:
    """The numerics of a training, for its duration: ``torch.use_deterministic_algorithms``
    (``train.deterministic``) and TensorFloat-32 for float32 matrix products and cuDNN convolutions
    (``train.tf32``; off: true float32, as the official Theano code ran; PyTorch's own default turns it on
    for convolutions; ``evaluate.float32_precision``). Both are restored afterwards.

    ``device`` (default: ``train.device`` resolved): on CUDA, deterministic cuBLAS needs
    ``CUBLAS_WORKSPACE_CONFIG`` before its first float32 product, else PyTorch raises there; it is set to
    ``:4096:8`` unless the environment already has a value (and left set: cuBLAS reads it when it allocates).
    """
    if device is None:
        device = resolve_device(t.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    if t.deterministic and device.type == "cuda" and not os.environ.get("CUBLAS_WORKSPACE_CONFIG"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.use_deterministic_algorithms(t.deterministic or was_deterministic)
    try:
        with float32_precision(t.tf32):
            yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


# ------------------------------------------------------------------------------------------ the data

def place_data(x: np.ndarray, device: torch.device, placement: str = "auto") -> Tensor:
    """The images as one tensor on the device (``device``), or in pinned host memory (``host``) for data sets
    that do not fit; ``auto`` keeps them on a GPU while they take at most half of its free memory. On a CPU
    the array's memory is used as it is."""
    tensor = torch.from_numpy(x)
    if placement == "auto":
        fits = device.type != "cuda" or tensor.nbytes <= 0.5 * torch.cuda.mem_get_info(device)[0]
        placement = "device" if fits else "host"
    if placement == "device":
        return tensor.to(device)
    return tensor.pin_memory() if torch.cuda.is_available() else tensor


class PinnedGather:
    """Rows of images in pinned host memory, gathered on the host into pinned buffers and copied to the
    device without blocking (``train.data_placement=host``). The buffers are used in turn, and one is
    refilled only once its last copy has finished, so the copies overlap the steps queued before them."""

    def __init__(self, x_all: Tensor, device: torch.device, n_buffers: int = 6) -> None:
        self.x_all, self.device, self.pin = x_all, device, device.type == "cuda"
        self.buffers: List[Optional[Tensor]] = [None] * n_buffers  # three per iteration, two iterations
        self.copied: List[Optional[torch.cuda.Event]] = [None] * n_buffers
        self.next = 0

    def __call__(self, rows: Tensor) -> Tensor:
        """The images of ``rows`` (..., B), on the device: (..., B, C, H, W)."""
        k, self.next = self.next, (self.next + 1) % len(self.buffers)
        if self.copied[k] is not None:
            self.copied[k].synchronize()
        shape = (*rows.shape, *self.x_all.shape[1:])
        if self.buffers[k] is None or self.buffers[k].shape != shape:
            self.buffers[k] = torch.empty(shape, dtype=self.x_all.dtype, pin_memory=self.pin)
        torch.index_select(self.x_all, 0, rows.reshape(-1).cpu(), out=self.buffers[k].view(-1, *shape[-3:]))
        out = self.buffers[k].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.copied[k] = torch.cuda.Event()
            self.copied[k].record()
        return out


def gatherer(x_all: Tensor, device: torch.device) -> Callable[[Tensor], Tensor]:
    """How a batch's images are read from ``x_all``: plain indexing where they live on the device (the CPU
    path), else ``PinnedGather``."""
    if x_all.device == device:
        return x_all.__getitem__
    return PinnedGather(x_all, device)


# ----------------------------------------------------------------------------------------- the capture

def use_cuda_graph(cfg: Config, device: torch.device, *, own_networks: bool = False) -> bool:
    """Whether ``train.cuda_graph`` captures the iteration here; ``on`` where it cannot is a ConfigError.
    What it cannot capture is declared in the schema (``refused_by=("captured",)``); ``own_networks``: the
    user's modules (the estimator's ``discriminator=``), which may wait for the host inside a step."""
    mode = cfg.train.cuda_graph
    blockers = refused_options(cfg, "captured") + (["your own networks"] if own_networks else [])
    if device.type != "cuda":
        blockers.insert(0, f"the device ({device.type})")
    if mode == "on" and blockers:
        raise ConfigError(f"train.cuda_graph=on cannot capture with {', '.join(blockers)}; use auto or off")
    return mode != "off" and not blockers


def decide_capture(cfg: Config, device: torch.device, x_all: Tensor, *, own_networks: bool = False) -> bool:
    """Whether the iteration is captured as a CUDA graph: ``use_cuda_graph``, and the images on the device
    (``auto`` placement may have chosen host memory; ``on`` then is one line)."""
    capture = use_cuda_graph(cfg, device, own_networks=own_networks)
    if capture and x_all.device != device:
        if cfg.train.cuda_graph == "on":
            raise ConfigError("train.cuda_graph=on cannot capture with the images in host memory (they take more "
                              "than half of the GPU's free memory); use auto or off")
        return False
    return capture


class Captured:
    """An engine whose step is captured once as a CUDA graph and replayed (after ``WARMUP_ITERATIONS`` eager
    steps on a side stream). Each batch is copied into static input buffers first; the step's outputs are
    static too, so the caller copies them before the next step (the loop does). The engine's optimizers
    must be in their capturable form (``models.build_networks(capturable=True)``). ``eager=True`` runs
    every step eagerly through the same buffers: the reference for the replayed graph, and what the CPU
    tests run. Everything but ``step`` is the engine's own."""

    name = "captured"

    def __init__(self, engine: Engine, device: torch.device, *, eager: bool = False) -> None:
        self.engine, self.device, self.eager = engine, device, eager
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.warm = 0
        self.inputs: Optional[Batch] = None
        self.outputs: Optional[Tuple[Tensor, Tensor]] = None

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def step(self, batch: Batch) -> Tuple[Tensor, Tensor]:
        if self.inputs is None:
            self.inputs = Batch(**{k: v.clone() for k, v in batch.tensors().items()})
        else:
            for name, tensor in batch.tensors().items():
                getattr(self.inputs, name).copy_(tensor)
        if self.eager:
            return self.engine.step(self.inputs)
        if self.graph is None and self.warm >= WARMUP_ITERATIONS:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            outputs = self.engine.step(self.inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.warm += 1
        return outputs

    def _capture(self) -> None:
        """Record one step (nothing runs during the capture); replays then run it. Dropout, noise and the
        gradient penalty's draws come from the default generator, which CUDA graphs advance per replay."""
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.engine.step(self.inputs)
        self.graph = graph
