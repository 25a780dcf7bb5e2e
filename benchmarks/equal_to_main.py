"""Is this checkout's training bit-identical to a reference checkout's? A script, not a test: it trains the
reference configs below in both checkouts (each with its own Python and its own ``ssgan``), then compares
every tensor of the final checkpoints with ``torch.equal``: the weights, the Polyak-averaged weights, the
optimizer states (moments and step), the historical averages, the VI encoder, the temporal ensemble and the
random states.

    python benchmarks/equal_to_main.py [--reference /work/main] [--configs plain,ct_gan] [--threads 1]
        [--set train.step=lean]   # an override for this checkout only: a check that a difference is seen

The reference's checkpoints are cached under ``--cache`` by the reference's commit (a dirty reference tree is
never cached), so a second call trains this checkout only. Exit 0 when every config is equal, 1 otherwise
(the first differing tensors are named), 2 on bad input.

Configs (digits; ``TINY``: small MLPs, batch 20, 3 epochs of 3 iterations; each trains in a second or two):
  default      the default ``ssgan fit`` (digits, full networks) for 3 epochs
  plain        TINY
  ct_gan       TINY, method=ct_gan (two dropout passes)
  ct_gan_te    TINY, method=ct_gan_te (the temporal ensemble)
  ha_gp        TINY, historical averaging 0.01 and gradient penalty 1.0
  vbn_mbd      TINY, virtual batch norm and minibatch discrimination
  bad_gan      TINY, method=bad_gan with the VI encoder (vi_weight 0.01)
  stacked      TINY, seeds 0 and 1 stacked (fit_grid)
  stacked_ct   TINY, method=ct_gan, seeds 0 and 1 stacked
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from dataclasses import replace
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

TINY = ["train.epochs=3", "train.iters_per_epoch=3", "train.batch_size=20", "train.init_batch=50",
        "model.d_widths=[32,16]", "model.g_widths=[32]", "model.z_dim=8", "dataset.labels=20"]
CONFIGS: Dict[str, Tuple[List[str], int]] = {  # name: (overrides, stacked seeds; 0: one model through fit)
    "default": (["train.epochs=3"], 0),
    "plain": (TINY, 0),
    "ct_gan": (TINY + ["method=ct_gan"], 0),
    "ct_gan_te": (TINY + ["method=ct_gan_te"], 0),
    "ha_gp": (TINY + ["method.historical_averaging=0.01", "method.gradient_penalty=1.0"], 0),
    "vbn_mbd": (TINY + ["model.virtual_batch_norm=true", "model.minibatch_discrimination=true",
                        "model.mbd_kernels=4", "model.mbd_kernel_dim=3"], 0),
    "bad_gan": (TINY + ["method=bad_gan", "method.vi_weight=0.01"], 0),
    "stacked": (TINY, 2),
    "stacked_ct": (TINY + ["method=ct_gan"], 2),
}
COMMON = ["train.device=cpu", "train.progress=false", "train.sample_grid=false"]
HERE = Path(__file__).resolve().parents[1]


def train_all(names: List[str], out: Path, extra: List[str] = ()) -> None:
    """(In a child process of one checkout.) Train each named config (plus ``extra`` overrides) into
    ``out/NAME[/seed_S]``."""
    import torch

    import ssgan
    from ssgan.config import compose
    from ssgan.train import fit, fit_grid

    print(f"ssgan from {Path(ssgan.__file__).parent}", file=sys.stderr)
    for name in names:
        overrides, seeds = CONFIGS[name]
        cfg = compose(overrides + COMMON + list(extra))
        torch.manual_seed(0)
        if seeds:
            cfgs = [replace(cfg, seed=s) for s in range(seeds)]
            fit_grid(cfgs, run_dirs=[out / name / f"seed_{s}" for s in range(seeds)])
        else:
            fit(cfg, run_dir=out / name)


def run_checkout(checkout: Path, python: Path, names: List[str], out: Path, threads: int,
                 extra: List[str] = ()) -> None:
    """Train ``names`` with ``checkout``'s Python and ``ssgan`` (its working directory: the checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(checkout)}
    code = ("import sys, torch; torch.set_num_threads(%d); sys.path.insert(0, %r); "
            "import equal_to_main as e; e.train_all(%r, e.Path(%r), %r)" % (threads, str(HERE / "benchmarks"), names,
                                                                            str(out), list(extra)))
    result = subprocess.run([str(python), "-c", code], cwd=checkout, env=env, capture_output=True, text=True)
    where = result.stderr.strip().splitlines()[:1]
    if result.returncode != 0:
        sys.exit(f"training in {checkout} failed:\n{result.stderr[-3000:]}")
    print(f"{checkout}: trained {', '.join(names)} ({where[0] if where else ''})", file=sys.stderr)


def differences(a, b, path: str = "") -> List[str]:
    """Where two checkpoint payloads differ: tensors by ``torch.equal`` (dtype and shape included), the rest
    by ``==``; the config (it names the run directory) and the checksum of the whole are left out."""
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        same = torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
        return [] if same else [path]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"config", "sha256"}
        return [d for k in sorted(keys, key=str) for d in differences(a.get(k), b.get(k), f"{path}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{path} (length {len(a)} != {len(b)})"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    try:
        import numpy as np
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return [] if np.array_equal(a, b) else [path]
    except ImportError:
        pass
    return [] if a == b else [path]


def compare(name: str, mine: Path, reference: Path) -> List[str]:
    import torch

    seeds = CONFIGS[name][1]
    parts = [f"seed_{s}" for s in range(seeds)] if seeds else [""]
    found = []
    for part in parts:
        a = torch.load(mine / name / part / "checkpoint.pt", map_location="cpu", weights_only=False)
        b = torch.load(reference / name / part / "checkpoint.pt", map_location="cpu", weights_only=False)
        found += [f"{part}{d}" for d in differences(a, b)]
    return found


def reference_commit(reference: Path) -> Optional[str]:
    """The reference's commit, or None when its tree has uncommitted changes (then nothing is cached)."""
    head = subprocess.run(["git", "-C", str(reference), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(reference), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return head.stdout.strip() if head.returncode == 0 and not dirty.stdout.strip() else None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="/work/main", help="the reference checkout (with its .venv)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=", ".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of both trainings")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "ssgan_equal_to_main"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for this checkout only (train.step=lean: expected to differ)")
    args = parser.parse_args(argv)
    names = args.configs.split(",")
    reference = Path(args.reference).resolve()
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not (reference / ".venv/bin/python").exists():
        print(f"equal_to_main: unknown config {unknown[0]!r}" if unknown else
              f"equal_to_main: {reference} has no .venv/bin/python", file=sys.stderr)
        return 2
    from ssgan.rundir import atomic_write

    commit = reference_commit(reference)
    ref_out = Path(args.cache) / (commit or "uncommitted") / f"threads{args.threads}"
    if commit is None and ref_out.exists():
        shutil.rmtree(ref_out)
    todo = [n for n in names if not (ref_out / n / "done").exists()]
    if todo:
        if ref_out.exists():
            for n in todo:
                shutil.rmtree(ref_out / n, ignore_errors=True)
        run_checkout(reference, reference / ".venv/bin/python", todo, ref_out, args.threads)
        for n in todo:
            atomic_write(ref_out / n / "done", "")
    with tempfile.TemporaryDirectory(prefix="ssgan_equal_") as tmp:
        mine = Path(tmp)
        run_checkout(HERE, Path(sys.executable), names, mine, args.threads, args.set)
        results = {n: compare(n, mine, ref_out) for n in names}
    for name, found in results.items():
        print(f"{name:12s} {'equal' if not found else 'DIFFERENT: ' + ', '.join(found[:6])}")
    print(json.dumps({"reference": str(reference), "reference_commit": commit, "equal": all(
        not f for f in results.values())}))
    return 0 if all(not f for f in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
