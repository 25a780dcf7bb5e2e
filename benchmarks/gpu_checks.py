"""Step b of benchmarks/gpu_session.sh: the captured iteration (``train.cuda_graph=on``) against the eager one
with the same optimizer form (the capturable OfficialAdam in both), case by case, on tiny sizes.

For each case both runs train from the same seed into a run directory; their final checkpoints are compared
tensor by tensor: the networks (D, its Polyak average, G), both optimizers' states (moments and step
counts), the RNG state (the order generator and the z generator) and the position (epoch, iteration).
A resumed case trains, stops at an epoch's checkpoint and continues (captured), against one uninterrupted
captured run. Writes one JSON object: per case the largest absolute difference per part, whether every part
is bit-identical, and ``ok`` (finite, and every difference below ``--tolerance``).

    python benchmarks/gpu_checks.py --device cuda --out out/compare.json [--iters 30] [--dry-run]

``--dry-run`` (CPU): ``auto`` instead of ``on`` (a CPU cannot capture; the paths and flags still run).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ssgan import train as train_module
from ssgan.checkpoint import load_checkpoint
from ssgan.config import compose
from ssgan.rundir import CHECKPOINT_NAME
from ssgan.train import fit, fit_grid

TINY = ["dataset.labels=50", "train.batch_size=32", "train.init_batch=64", "train.progress=false",
        "train.sample_grid=false", "train.eval_every=1000"]
DIGITS = ["dataset=digits"]
# the CNN cases: CIFAR-10's shape from a small random .npz written into the work folder ({npz})
CNN = ["dataset=cifar10", "dataset.source=npz", "dataset.path={npz}", "model.d_widths=[8,8,8,8,8]",
       "model.g_widths=[16,8,4]"]
DRY_RUN = ["model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8"]  # MLP cases on the CPU
# name: (overrides, models)
CASES = {
    "noise_off": (DIGITS + ["model.input_noise=0", "model.hidden_noise=0"], 1),
    "noise_on": (DIGITS, 1),
    "ct_gan_te": (CNN + ["method=ct_gan_te"], 1),
    "stacked_2_seeds": (DIGITS + ["train.concurrent_seeds=true"], 2),
    "bf16": (DIGITS + ["train.precision=bf16"], 1),
    "cnn_dropout": (CNN, 1),
    "resumed": (DIGITS, 1),
    # torch.compile inside the captured graph (issue 32): inductor's kernels, one model and stacked seeds
    "compiled": (DIGITS + ["train.compile=inductor"], 1),
    "compiled_stacked_2_seeds": (DIGITS + ["train.compile=inductor", "train.concurrent_seeds=true"], 2),
}


def tiny_npz(path: Path) -> None:
    """600 random 32x32 colour images with labels (and 100 test images): the CNN cases' data."""
    import numpy as np

    rng = np.random.RandomState(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=rng.randint(0, 256, (600, 32, 32, 3), dtype=np.uint8), y_train=np.arange(600) % 10,
             x_test=rng.randint(0, 256, (100, 32, 32, 3), dtype=np.uint8), y_test=np.arange(100) % 10)


@contextlib.contextmanager
def eager_iterations():
    """The captured configuration (capturable optimizers, static input buffers) with every step run eagerly:
    the reference for the replayed graph."""
    original = train_module.Captured
    train_module.Captured = functools.partial(original, eager=True)
    try:
        yield
    finally:
        train_module.Captured = original


def train(cfg, models: int, run_dir: Path) -> List[Path]:
    """Train ``models`` seeds of ``cfg`` into ``run_dir`` (stacked when several); their run directories."""
    if models == 1:
        fit(cfg, run_dir=run_dir)
        return [run_dir]
    dirs = [run_dir / f"seed{s}" for s in range(models)]
    fit_grid([replace(cfg, seed=s) for s in range(models)], run_dirs=dirs)
    return dirs


def flatten(obj, prefix: str = "") -> Dict[str, object]:
    """Tensors and numbers of a checkpoint payload by dotted path."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif torch.is_tensor(obj) or isinstance(obj, (int, float, bool)):
        out[prefix.rstrip(".")] = obj
    return out


PARTS = {"discriminator": "weights", "discriminator_avg": "weights", "generator": "weights", "opt_d": "optimizer",
         "opt_g": "optimizer", "rng": "rng", "epoch": "position", "iteration": "position",
         "temporal_ensemble": "temporal_ensemble"}


def compare(a: Path, b: Path) -> Dict[str, Dict]:
    """Largest absolute difference and bit-identity per part of two checkpoints."""
    pa, pb = (flatten(load_checkpoint(d / CHECKPOINT_NAME)) for d in (a, b))
    parts: Dict[str, Dict] = {}
    for key, va in pa.items():
        part = PARTS.get(key.split(".")[0])
        if part is None:
            continue
        vb = pb.get(key)
        entry = parts.setdefault(part, {"max_abs_diff": 0.0, "identical": True, "finite": True})
        if torch.is_tensor(va):
            if vb is None or not torch.is_tensor(vb) or va.shape != vb.shape:
                entry.update(identical=False, max_abs_diff=math.inf)
                continue
            if va.is_floating_point():
                entry["finite"] &= bool(torch.isfinite(va).all() and torch.isfinite(vb).all())
                diff = float((va.double() - vb.double()).abs().max()) if va.numel() else 0.0
            else:
                diff = float((va.long() - vb.long()).abs().max()) if va.numel() else 0.0
            entry["identical"] &= bool(torch.equal(va, vb))
        else:
            diff = 0.0 if va == vb else math.inf
            entry["identical"] &= va == vb
        entry["max_abs_diff"] = max(entry["max_abs_diff"], diff)
    return parts


def run_case(name: str, base_overrides: List[str], iters: int, work: Path, capture_mode: str,
             tolerance: float, dry_run: bool = False, control: bool = False) -> Dict:
    overrides, models = CASES[name]
    overrides = [o.replace("{npz}", str(work / "tiny32.npz")) for o in overrides]
    if dry_run and "dataset=digits" in overrides:
        overrides = overrides + DRY_RUN
    cfg = compose(base_overrides + overrides + TINY + [f"train.iters_per_epoch={iters}", "train.epochs=2",
                                                       f"train.cuda_graph={capture_mode}"])
    started = time.time()
    if name == "resumed":
        whole = train(cfg, models, work / name / "whole")
        cut_cfg = replace(cfg, train=replace(cfg.train, epochs=1))
        cut = train(cut_cfg, models, work / name / "cut")
        payload = load_checkpoint(cut[0] / CHECKPOINT_NAME)
        fit(cfg, run_dir=cut[0], resume=payload)
        pairs = [(whole[0], cut[0])]
    else:
        with eager_iterations() if control else contextlib.nullcontext():  # --control: eager twice
            captured = train(cfg, models, work / name / "captured")
        with eager_iterations():
            eager = train(cfg, models, work / name / "eager")
        pairs = list(zip(captured, eager))
    parts: Dict[str, Dict] = {}
    for a, b in pairs:
        for part, entry in compare(a, b).items():
            merged = parts.setdefault(part, {"max_abs_diff": 0.0, "identical": True, "finite": True})
            merged["max_abs_diff"] = max(merged["max_abs_diff"], entry["max_abs_diff"])
            merged["identical"] &= entry["identical"]
            merged["finite"] &= entry["finite"]
    ok = all(p["finite"] and p["max_abs_diff"] <= tolerance for p in parts.values()) and bool(parts)
    return {"ok": ok, "identical": all(p["identical"] for p in parts.values()), "models": models,
            "seconds": round(time.time() - started, 1), "parts": parts}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="runs/gpu_checks", help="where the runs go (replaced)")
    parser.add_argument("--iters", type=int, default=30, help="iterations per epoch (two epochs)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--dry-run", action="store_true", help="CPU: cuda_graph=auto (nothing is captured)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every case (e.g. train.deterministic=true)")
    parser.add_argument("--control", action="store_true",
                        help="eager against eager (the same configuration twice): the comparison's noise floor")
    args = parser.parse_args(argv)
    import shutil

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    tiny_npz(work / "tiny32.npz")
    capture_mode = "auto" if args.dry_run else "on"
    results = {"device": args.device, "torch": torch.__version__, "capture": capture_mode, "overrides": args.set,
               "control": args.control, "cases": {}}
    for name in args.cases.split(","):
        try:
            results["cases"][name] = run_case(name, [f"train.device={args.device}"] + args.set, args.iters, work,
                                              capture_mode, args.tolerance, args.dry_run, args.control)
        except Exception as error:  # one broken case must not hide the others' results
            results["cases"][name] = {"ok": False, "error": f"{error.__class__.__name__}: {error}",
                                      "traceback": traceback.format_exc()[-2000:]}
        print(f"{name}: {json.dumps({k: v for k, v in results['cases'][name].items() if k != 'traceback'})}",
              flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")  # what is done so far survives a timeout
    results["ok"] = all(c["ok"] for c in results["cases"].values())
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
