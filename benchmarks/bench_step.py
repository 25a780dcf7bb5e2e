"""Time the real training loop of each recipe: milliseconds per training iteration (one D step, one G step and
the Polyak update of every model, with the batch gathers, augmentation and z draws of the loop), and the
operators (CPU) or kernels (CUDA) one iteration launches.

A script, not a test. Each row runs ``train.fit`` (one model) or ``train.fit_grid`` (stacked models) on
random data of the recipe's shape:

1. one untimed warm-up run of the row's exact config (lazy CUDA modules, cuDNN / cuBLAS plans, the first
   vmap, the CUDA-graph capture: every one-time cost lands here);
2. one run of ``--warmup`` + ``--iters`` iterations in one epoch, timed *inside the loop*: hooks on
   ``feed.Batches.get`` / ``record`` mark the start of iteration ``--warmup`` and the end of the last one
   (CUDA events on a GPU, a synchronised wall clock on a CPU). Initialisation, the first iterations (and the
   capture) and the end-of-epoch evaluation are outside the timed stretch. ``--repeats`` such runs give the median and the
   spread;
3. one short uncaptured run of the same precision under ``torch.profiler`` over ``--profile-iters`` iterations
   (after ``--warmup``): ``ops_per_iteration``, the compute operators with no compute operator below them
   (``compute_operators``: views, allocations and no-ops left out, a foreach operator once, compiled kernels
   counted: about the kernels a GPU launches), and on CUDA ``kernels_per_iteration``, the GPU kernels the
   profiler saw; then one more such run under ``Traffic`` for ``mb_per_iteration`` (analytic bytes moved) and
   ``mflops_per_iteration`` (uncompiled rows only). A captured iteration runs the same kernels from one graph
   launch. ``--repeats 0`` skips steps 1 and 2: the counts only.

    python benchmarks/bench_step.py --recipe mnist --models 1,10,40
        [--modes eager_fp32,graph_fp32,graph_tf32,graph_bf16] [--warmup 10] [--iters 200] [--repeats 3]
        [--device cuda] [--out results/benchmarks.json]

Modes:
  eager_fp32  train.precision=fp32, train.tf32=false (true float32), train.cuda_graph=off
  eager_bf16  train.precision=bf16, eager (measures the cast operators on a CPU)
  graph_fp32  eager_fp32 with train.cuda_graph=on (CUDA only)
  graph_tf32  graph_fp32 with train.tf32=true (CUDA only)
  graph_bf16  train.precision=bf16 (+ train.channels_last for one CNN model), train.cuda_graph=on (CUDA only)
  graph_tf32_compiled       graph_tf32 with train.compile=inductor (compiled inside the capture; CUDA only)
  graph_tf32_lean_compiled  graph_tf32_compiled with train.step=lean (CUDA only)
Rows are merged into ``--out`` by (recipe, device, mode, models):
    {"rows": [{"recipe", "device", "mode", "models", "ms_per_iteration", "ms_runs", "spread_pct",
               "iterations_timed", "first_run_s", "ops_per_iteration", "kernels_per_iteration",
               "mb_per_iteration", "mflops_per_iteration", "bytes_counted_by", "torch", "date", "command"}]}
``first_run_s``: the seconds of the untimed first run (the compile and the capture happen there).
The rows do not record extra KEY=VALUE overrides apart from the command: write rows of different overrides
(``train.step=lean``) to different ``--out`` files.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import platform
import shlex
import statistics
import sys
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ssgan import feed
from ssgan.accelerate import WARMUP_ITERATIONS
from ssgan.config import compose, resolve_device
from ssgan.data import ImageData
from ssgan.rundir import atomic_write, make_dir
from ssgan.train import fit, fit_grid

RECIPES = {"digits": [], "mnist": ["dataset=mnist"], "cifar10": ["dataset=cifar10"],
           "cifar10_ct_gan": ["dataset=cifar10", "method=ct_gan"], "svhn": ["dataset=svhn"]}
MODES = {"eager_fp32": dict(precision="fp32", tf32=False, cuda_graph="off"),
         "eager_bf16": dict(precision="bf16", tf32=False, cuda_graph="off"),
         "graph_fp32": dict(precision="fp32", tf32=False, cuda_graph="on"),
         "graph_tf32": dict(precision="fp32", tf32=True, cuda_graph="on"),
         "graph_bf16": dict(precision="bf16", tf32=False, cuda_graph="on"),
         # torch.compile (inductor) inside the captured graph: the faithful step, and the lean one
         "graph_tf32_compiled": dict(precision="fp32", tf32=True, cuda_graph="on", compile="inductor"),
         "graph_tf32_lean_compiled": dict(precision="fp32", tf32=True, cuda_graph="on", compile="inductor",
                                          step="lean")}
CUDA_ONLY = {"graph_fp32", "graph_tf32", "graph_bf16", "graph_tf32_compiled", "graph_tf32_lean_compiled"}


def random_data(cfg, n_models: int) -> ImageData:
    """Random images of the recipe's shape and range; enough for every model's labeled subset."""
    rng = np.random.RandomState(0)
    shape, k = tuple(cfg.dataset.image_shape), cfg.dataset.n_classes
    n = max(2 * cfg.train.batch_size, cfg.dataset.labels, 1000)
    low = 0.0 if cfg.dataset.scaling == "unit" else -1.0
    x = rng.uniform(low, 1.0, (n, *shape)).astype(np.float32)
    return ImageData(x, np.arange(n) % k, x[:10], np.arange(10) % k, [str(c) for c in range(k)])


class LoopClock:
    """Marks two points inside the real loop through ``feed.Batches``: before iteration ``start`` runs
    and after iteration ``stop - 1`` has run (CUDA events on a GPU; on a CPU the wall clock, the work being
    synchronous there). ``profiler``: anything with ``start`` and ``stop`` (a torch.profiler, ``Traffic``) run between the same two points."""

    def __init__(self, start: int, stop: int, device: torch.device, profiler=None) -> None:
        self.start, self.stop, self.device, self.profiler = start, stop, device, profiler
        self.count, self.seconds = 0, None
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def installed(self):
        """Hooks on the loop's per-iteration calls: ``Batches.get`` (before an iteration's step) and
        ``Batches.record`` (after it)."""
        get, record = feed.Batches.get, feed.Batches.record
        clock = self

        def timed_get(batches, *args):
            if clock.count == clock.start:
                clock._mark_start()
            return get(batches, *args)

        def timed_record(batches, outputs):
            record(batches, outputs)
            clock.count += 1
            if clock.count == clock.stop:
                clock._mark_stop()

        feed.Batches.get, feed.Batches.record = timed_get, timed_record
        try:
            yield self
        finally:
            feed.Batches.get, feed.Batches.record = get, record

    def _mark_start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self.events[0].record()
        if self.profiler is not None:
            self.profiler.start()
        self.t0 = time.perf_counter()

    def _mark_stop(self) -> None:
        if self.cuda:
            self.events[1].record()
            torch.cuda.synchronize(self.device)
            self.seconds = self.events[0].elapsed_time(self.events[1]) / 1000.0
        else:
            self.seconds = time.perf_counter() - self.t0
        if self.profiler is not None:
            self.profiler.stop()


def run_loop(cfg, n_models: int, iters: int, data: ImageData, clock: Optional[LoopClock] = None) -> None:
    """One epoch of ``iters`` iterations of ``n_models`` models (stacked when several), hooked by ``clock``."""
    cfg = replace(cfg, train=replace(cfg.train, epochs=1, iters_per_epoch=iters, progress=False,
                                     sample_grid=False, concurrent_seeds=n_models > 1))
    with clock.installed() if clock is not None else contextlib.nullcontext():
        if n_models == 1:
            fit(cfg, data=data)
        else:
            fit_grid([replace(cfg, seed=s) for s in range(n_models)], data)


def ms_per_iteration(cfg, n_models: int, warmup: int, iters: int, data: ImageData, device: torch.device) -> float:
    """Milliseconds per iteration over ``iters`` iterations after ``warmup`` of one run (inside the loop)."""
    clock = LoopClock(warmup, warmup + iters, device)
    run_loop(cfg, n_models, warmup + iters, data, clock)
    return clock.seconds / iters * 1000.0


# What launches_per_iteration measures, each a row's field (None where not measured)
COUNT_KEYS = ("ops_per_iteration", "kernels_per_iteration", "mb_per_iteration", "mflops_per_iteration",
              "bytes_counted_by")


def launches_per_iteration(cfg, n_models: int, warmup: int, iters: int, data: ImageData,
                           device: torch.device) -> Dict[str, Optional[float]]:
    """What one iteration of the row's uncaptured form runs, over ``iters`` iterations after ``warmup``:
    ``ops_per_iteration`` (``compute_operators`` of a torch.profiler trace), ``kernels_per_iteration`` on
    CUDA (the GPU kernels the profiler saw), and ``bytes_per_iteration`` / ``flops_per_iteration``
    (``Traffic``, a second run)."""
    from torch.profiler import ProfilerActivity, profile

    eager = replace(cfg, train=replace(cfg.train, cuda_graph="off"))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    profiler = profile(activities=activities)
    with _kernel_events(eager):
        run_loop(eager, n_models, warmup + iters, data, LoopClock(warmup, warmup + iters, device, profiler))
    events = profiler.events()
    ops = compute_operators(events)
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    counts = dict.fromkeys(COUNT_KEYS)
    counts.update(ops_per_iteration=round(ops / iters, 1),
                  kernels_per_iteration=round(kernels / iters, 1) if device.type == "cuda" else None)
    if cfg.train.compile == "off":  # under a dispatch mode compiled code does not run as compiled: not counted
        traffic = Traffic()
        run_loop(eager, n_models, warmup + iters, data, LoopClock(warmup, warmup + iters, device, traffic))
        counts.update(mb_per_iteration=round(traffic.bytes / iters / 1e6, 2),
                      mflops_per_iteration=round(traffic.flops / iters / 1e6, 2), bytes_counted_by="analytic")
    return counts


# Operators that launch nothing: views, allocations, metadata and no-op conversions (a conversion that copies
# has a copy_ below it, which is counted). ``aten::resolve_conj`` sits below every ``aten::mm``.
NO_KERNEL = {f"aten::{name}" for name in (
    "view", "_unsafe_view", "as_strided", "empty", "empty_strided", "empty_like", "resize_", "detach", "detach_",
    "alias", "expand", "expand_as", "t", "transpose", "permute", "unsqueeze", "squeeze", "reshape",
    "_reshape_alias", "select", "slice", "split", "split_with_sizes", "unbind", "narrow", "chunk", "lift_fresh",
    "result_type", "set_", "is_nonzero", "item", "_local_scalar_dense", "view_as", "numpy_T", "flatten",
    "unflatten", "contiguous", "to", "type_as", "resolve_conj", "resolve_neg", "conj", "_conj", "real", "imag",
    "_to_copy", "clone", "lift", "requires_grad_", "retain_grad", "_has_compatible_shallow_copy_type",
    "is_same_size", "size", "stride", "dim", "_nested_tensor_from_mask_left_aligned", "matmul", "linear",
    "zeros", "ones", "zeros_like", "ones_like", "new_zeros", "new_empty", "new_empty_strided", "_unsafe_split",
    "_unsafe_split_with_sizes", "movedim", "moveaxis", "diagonal", "as_strided_", "_make_dual", "_unpack_dual")}
# Kernels of compiled code: inductor's C++ kernels (``graph_N_cpp_fused_...``, profiled with
# ``cpp.enable_kernel_profile``) and Triton kernels (``triton_...``)
COMPILED_KERNEL = re.compile(r"(^|_)cpp_fused|^triton_")


def _is_compute(event) -> bool:
    name = event.name
    if name.startswith("aten::"):
        return name not in NO_KERNEL
    return bool(COMPILED_KERNEL.search(name))


def compute_operators(events) -> int:
    """The compute operators of a profiler trace with no compute operator below them (about the kernels a
    GPU launches): an operator that only dispatches to others (``aten::linear`` -> ``aten::mm``) counts
    through them, views, allocations and no-ops (``NO_KERNEL``) not at all, a foreach operator once (one
    multi-tensor launch on a GPU, though the CPU runs it tensor by tensor), and every kernel of compiled
    code. Unlike a count of innermost aten events, an ``aten::mm`` whose only child is the no-op
    ``aten::resolve_conj`` is counted."""

    def below(event) -> int:
        if event.name.startswith("aten::_foreach_"):
            return 1
        n = sum(below(child) for child in event.cpu_children)
        return n if n else int(_is_compute(event))

    return sum(below(e) for e in events if e.cpu_parent is None)


class Traffic:
    """Bytes moved and FLOPs of the operators an iteration dispatches, counted between ``start`` and ``stop``
    by a dispatch mode (below autograd and vmap: the physical tensors of stacked models).

    Bytes are analytic: each compute operator (views, allocations and ``NO_KERNEL`` left out) reads each
    distinct tensor input once and writes its outputs and the inputs it mutates once; a tensor broadcast by
    stride 0 counts its stored elements. An unfused eager step moves about this much; a fused kernel moves
    less (its intermediates stay in registers), and caches may serve a re-read. FLOPs are
    ``torch.utils.flop_counter``'s (matrix products and convolutions, forward and backward; elementwise
    operators are not counted). Inside compiled code only the extern kernels (products) are seen."""

    def __init__(self) -> None:
        self.bytes = self.flops = 0

    def start(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode

        traffic = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                traffic._count(func, args, kwargs or {}, out)
                return out

        self.flop_mode = FlopCounterMode(display=False)
        self.mode = Mode()
        self.flop_mode.__enter__()
        self.mode.__enter__()

    def stop(self) -> None:
        self.mode.__exit__(None, None, None)
        self.flop_mode.__exit__(None, None, None)
        self.flops = self.flop_mode.get_total_flops()

    @staticmethod
    def _stored_bytes(t: torch.Tensor) -> int:
        elements = 1
        for size, stride in zip(t.shape, t.stride()):
            if stride != 0:
                elements *= size
        return elements * t.element_size()

    def _count(self, func, args, kwargs, out) -> None:
        from torch.utils._pytree import tree_leaves

        name = func._schema.name
        if func.is_view or name in NO_KERNEL:
            return
        written = set()
        schema_args = func._schema.arguments
        for i, arg in enumerate(schema_args):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                written.update(id(t) for t in tree_leaves(value) if torch.is_tensor(t))
        seen, total = set(), 0
        for t in tree_leaves((args, kwargs)):
            if torch.is_tensor(t) and id(t) not in seen:
                seen.add(id(t))
                total += self._stored_bytes(t) * (2 if id(t) in written else 1)
        for t in tree_leaves(out):
            if torch.is_tensor(t) and id(t) not in seen:  # an in-place result is its input, counted above
                total += self._stored_bytes(t)
        self.bytes += total


@contextlib.contextmanager
def _kernel_events(cfg):
    """Inductor's C++ kernels as profiler events (``cpp.enable_kernel_profile``), while a compiled row is
    profiled; nothing for an eager row."""
    if cfg.train.compile == "off":
        yield
        return
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()  # compiled anew, with the kernels' profiler events (no cached graph without them)
    with inductor_config.patch({"cpp.enable_kernel_profile": True, "fx_graph_cache": False}):
        yield


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_rows(recipe: str, models: List[int], modes: List[str], device: torch.device, *, warmup: int, iters: int,
               repeats: int, profile_iters: int, overrides: List[str] = (), command: str = "") -> List[Dict]:
    """The rows of one recipe: for each model count and mode, the warm-up run, ``repeats`` timed runs and
    the profiled count (skipped modes are reported on stderr)."""
    base = compose(RECIPES[recipe] + [f"train.device={device}", *overrides])
    data = random_data(base, 1)
    rows = []
    for n_models in models:
        for mode in modes:
            if mode in CUDA_ONLY and device.type != "cuda":
                print(f"{recipe}, {n_models} model(s), {mode}: skipped (needs CUDA)", file=sys.stderr)
                continue
            options = dict(MODES[mode])
            if mode == "graph_bf16" and n_models == 1 and base.model.arch == "cnn":
                options["channels_last"] = True
            cfg = replace(base, train=replace(base.train, **options))
            runs, first_run_s = [], None
            if repeats:  # --repeats 0: the counts only
                started = time.perf_counter()
                run_loop(cfg, n_models, warmup + 2, data)  # untimed: every one-time cost, the capture included
                first_run_s = round(time.perf_counter() - started, 1)  # the compile and the capture among them
                runs = [ms_per_iteration(cfg, n_models, warmup, iters, data, device) for _ in range(repeats)]
            counts = (launches_per_iteration(cfg, n_models, warmup, profile_iters, data, device) if profile_iters
                      else dict.fromkeys(COUNT_KEYS))  # --profile-iters 0: the time only
            ms = statistics.median(runs) if runs else None
            row = {"recipe": recipe, "device": device_name(device), "mode": mode, "models": n_models,
                   "ms_per_iteration": None if ms is None else round(ms, 3), "ms_runs": [round(r, 3) for r in runs],
                   "spread_pct": round(100.0 * (max(runs) - min(runs)) / ms, 1) if runs else None,
                   "iterations_timed": iters if runs else 0, "first_run_s": first_run_s,
                   **counts, "channels_last": options.get("channels_last", False), "torch": torch.__version__,
                   "date": str(date.today()), "command": command}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def merge_rows(out: Path, rows: List[Dict]) -> None:
    existing = json.loads(out.read_text())["rows"] if out.is_file() else []
    key = lambda r: (r["recipe"], r["device"], r["mode"], r["models"])  # noqa: E731
    merged = {key(r): r for r in existing}
    merged.update({key(r): r for r in rows})
    make_dir(out.parent)
    atomic_write(out, json.dumps({"rows": sorted(merged.values(), key=key)}, indent=1) + "\n")


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=RECIPES, required=True)
    parser.add_argument("--models", default="1", help="model counts, e.g. 1,10,40 (stacked when > 1)")
    parser.add_argument("--modes", default="eager_fp32,graph_fp32,graph_tf32,graph_bf16", help=", ".join(MODES))
    parser.add_argument("--warmup", type=int, default=10, help="untimed iterations before the timed stretch")
    parser.add_argument("--iters", type=int, default=200, help="iterations timed in each run")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per row (median and spread); 0: the counts only")
    parser.add_argument("--profile-iters", type=int, default=2, help="iterations profiled for the counts (0: no counts, the time only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU intra-op threads (1 on a shared CPU: spinning threads multiply contention)")
    parser.add_argument("--out", default="results/benchmarks.json")
    parser.add_argument("overrides", nargs="*", help="extra KEY=VALUE config overrides (e.g. smaller batches)")
    args = parser.parse_args(argv)
    if args.repeats and args.warmup <= WARMUP_ITERATIONS:
        parser.error(f"--warmup must exceed the {WARMUP_ITERATIONS} iterations before the capture")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = bench_rows(args.recipe, [int(v) for v in args.models.split(",")], args.modes.split(","), device,
                      warmup=args.warmup, iters=args.iters, repeats=args.repeats, profile_iters=args.profile_iters,
                      overrides=args.overrides, command=shlex.join(["python", "benchmarks/bench_step.py",
                                                                    *(argv if argv is not None else sys.argv[1:])]))
    merge_rows(Path(args.out), rows)
    print(f"{len(rows)} rows into {args.out}")


if __name__ == "__main__":
    main()
