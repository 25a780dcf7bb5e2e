"""Out-of-distribution detection and calibration: the semi-supervised GAN against the same network trained on the
labeled examples alone (``method.unl_weight=0``: L_D = L_sup, so D never sees an unlabeled or generated image).

    python benchmarks/ood_table.py [--tasks digits,mnist] [--seeds 0,1,2] [--mnist-epochs 10] [--mnist-iters 300]
        [--mnist-ema-decay 0.99] [--cifar /work/shared/datasets/cifar10.npz] [--mnist /work/shared/datasets/mnist.npz]

Tasks: digits (50 labels, the default digits recipe) against uniform noise and CIFAR-10's test images in grey
at 8x8; MNIST (100 labels, its recipe shortened to --mnist-epochs x --mnist-iters iterations for the CPU, with a
Polyak decay of --mnist-ema-decay: the recipe's 0.9999 averages over more iterations than such a run has)
against CIFAR-10 in grey at 28x28 and uniform noise. Each foreign set has as many images as the task's test set
(a fixed random subset of CIFAR-10's 10,000 test images, seed 0; uniform noise, seed 0), so AUPR-in's chance
level is 0.5. CIFAR-10 is read from an .npz of JPEG bytes (x_test_jpeg, x_test_offsets), written to a
temporary .npz of RGB images and read back through ``ssgan.ood.read_foreign`` (the loaders of ``ssgan evaluate
--ood``, with resize and the channel mean for grey). Each run's numbers are kept in
runs/ood_table/<task>[-<mnist schedule>]/<variant>/seed<N>.json, so a rerun trains only what is missing; results/ood.md and .json
are rewritten from them every time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from ssgan import ood
from ssgan.config import compose
from ssgan.data import load_data
from ssgan.rundir import atomic_write, make_dir
from ssgan.train import fit

VARIANTS = {"gan": [], "supervised": ["method.unl_weight=0"]}
FINDINGS = "<!-- findings: written by hand from the table above; kept when the table is rewritten -->"
VARIANT_TITLES = {"gan": "SSGAN (Improved GAN)", "supervised": "labeled only (unl_weight=0)"}


def task_overrides(task: str, args) -> list:
    common = ["train.progress=false", "train.sample_grid=false", "train.device=cpu"]
    if task == "digits":
        return ["dataset=digits", *common]
    return ["dataset=mnist", "dataset.source=npz", f"dataset.path={args.mnist}", f"train.epochs={args.mnist_epochs}",
            f"train.iters_per_epoch={args.mnist_iters}", f"train.eval_every={args.mnist_epochs}",
            f"train.ema_decay={args.mnist_ema_decay}", *common]


def cache_name(task: str, args) -> str:
    """The cache folder of a task: MNIST's shortened schedule is part of the name, so that a rerun with other
    settings never takes the records of these."""
    if task == "digits":
        return task
    return f"{task}-e{args.mnist_epochs}-i{args.mnist_iters}-d{args.mnist_ema_decay:g}"


def cifar_test_npz(path: str, folder: Path) -> Path:
    """CIFAR-10's test images decoded from their JPEG bytes into an .npz of (N, 32, 32, 3) uint8."""
    from PIL import Image

    with np.load(path, allow_pickle=False) as archive:
        jpeg, offsets = archive["x_test_jpeg"], archive["x_test_offsets"]
    images = [np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
              for i in range(len(offsets) - 1)]
    out = folder / "cifar10_test.npz"
    np.savez(out, x=np.stack(images))
    return out


def foreign_sets(task: str, data, cfg, cifar: Path) -> dict:
    n = len(data.x_test)
    grey = ood.read_foreign(str(cifar), replace(cfg.dataset, resize=True), n_uniform=n, convert_channels=True)
    pick = np.random.RandomState(0).choice(len(grey), size=n, replace=False)
    size = "x".join(str(s) for s in cfg.dataset.image_shape[1:])
    return {"uniform noise": ood.read_foreign(ood.UNIFORM, cfg.dataset, n_uniform=n),
            f"CIFAR-10 grey {size}": grey[pick]}


def run_one(task: str, variant: str, seed: int, args, cifar: Path, cache: Path) -> dict:
    path = cache / cache_name(task, args) / variant / f"seed{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    cfg = compose([*task_overrides(task, args), *VARIANTS[variant], f"seed={seed}"])
    data = load_data(cfg.dataset, seed)
    start = time.time()
    result = fit(cfg, data)
    seconds = time.time() - start
    report, _ = ood.ood_report(result.discriminator, data.x_test, foreign_sets(task, data, cfg, cifar),
                               batch_size=cfg.train.eval_batch_size)
    logits = ood.predict_logits(result.discriminator, data.x_test, cfg.train.eval_batch_size)
    record = {"task": task, "variant": variant, "seed": seed, "test_error": result.test_error, "seconds": seconds,
              "calibration": ood.calibration_report(ood.softmax(logits), data.y_test), "sets": report.sets,
              "overrides": [*task_overrides(task, args), *VARIANTS[variant], f"seed={seed}"]}
    make_dir(path.parent)
    atomic_write(path, json.dumps(record, indent=1))
    print(f"{task} {variant} seed {seed}: test error {result.test_error:.2f} % in {seconds:.0f} s", flush=True)
    return record


def mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if len(values) > 1 else f"{values.mean():.3f}"


def table(records: list, tasks: list, args) -> tuple:
    lines = ["| task | foreign set | score | metric | " + " | ".join(VARIANT_TITLES.values()) + " |",
             "|---|---|---|---|---|---|"]
    summary = []
    for task in tasks:
        by_variant = {v: [r for r in records if r["task"] == task and r["variant"] == v] for v in VARIANTS}
        for metric, key in (("test error (%)", "test_error"), ("ECE (15 bins)", "ece"), ("NLL", "nll"),
                            ("Brier", "brier")):
            cells = [mean_std([r[key] if key == "test_error" else r["calibration"][key] for r in rows])
                     for rows in by_variant.values()]
            lines.append(f"| {task} | (its test set) | | {metric} | " + " | ".join(cells) + " |")
            summary.append({"task": task, "set": None, "score": None, "metric": key,
                            **{v: [r[key] if key == "test_error" else r["calibration"][key] for r in rows]
                               for v, rows in by_variant.items()}})
        set_names = [s["name"] for s in by_variant["gan"][0]["sets"]]
        for set_name in set_names:
            for score in ood.SCORES:
                for metric in ("auroc", "aupr_in", "fpr95"):
                    values = {v: [next(s for s in r["sets"] if s["name"] == set_name)["metrics"][score][metric]
                                  for r in rows] for v, rows in by_variant.items()}
                    lines.append(f"| {task} | {set_name} | {score} | {metric} | "
                                 + " | ".join(mean_std(vals) for vals in values.values()) + " |")
                    summary.append({"task": task, "set": set_name, "score": score, "metric": metric, **values})
    return lines + [""] + per_seed(records, tasks), summary


def per_seed(records: list, tasks: list) -> list:
    """AUROC / FPR95 of each seed, so that a mean over a bimodal spread is not read as typical."""
    lines = ["Per seed (AUROC / FPR95, seeds in order):", "",
             "| task | foreign set | score | " + " | ".join(VARIANT_TITLES.values()) + " |", "|---|---|---|---|---|"]
    for task in tasks:
        rows = {v: sorted((r for r in records if r["task"] == task and r["variant"] == v), key=lambda r: r["seed"])
                for v in VARIANTS}
        for entry in rows["gan"][0]["sets"]:
            for score in ood.SCORES:
                cells = []
                for runs in rows.values():
                    metrics = [next(s for s in r["sets"] if s["name"] == entry["name"])["metrics"][score]
                               for r in runs]
                    cells.append(", ".join(f"{m['auroc']:.3f} / {m['fpr95']:.3f}" for m in metrics))
                lines.append(f"| {task} | {entry['name']} | {score} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,mnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--mnist-epochs", type=int, default=10)
    parser.add_argument("--mnist-iters", type=int, default=300)
    parser.add_argument("--mnist-ema-decay", type=float, default=0.99, help="the recipe's 0.9999 averages over "
                        "~10,000 iterations, more than a CPU run has")
    parser.add_argument("--cifar", default="/work/shared/datasets/cifar10.npz")
    parser.add_argument("--mnist", default="/work/shared/datasets/mnist.npz")
    parser.add_argument("--cache-dir", default="runs/ood_table")
    parser.add_argument("--out", default="results/ood.md")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="train only these (a second process "
                        "can share the work: the records are per run)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    records = []
    with tempfile.TemporaryDirectory() as folder:
        cifar = cifar_test_npz(args.cifar, Path(folder))
        for task in tasks:
            for seed in seeds:
                for variant in args.variants.split(","):
                    records.append(run_one(task, variant, seed, args, cifar, Path(args.cache_dir)))
    if set(args.variants.split(",")) != set(VARIANTS):
        return  # part of the work: the table is written by a run over every variant
    lines, summary = table(records, tasks, args)
    write(args, lines, summary, records, tasks, seeds)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return f"{platform.machine()} CPU"


def write(args, lines, summary, records, tasks, seeds) -> None:
    command = (f"python benchmarks/ood_table.py --tasks {args.tasks} --seeds {args.seeds} --mnist-epochs "
               f"{args.mnist_epochs} --mnist-iters {args.mnist_iters} --mnist-ema-decay {args.mnist_ema_decay}")
    machine = (f"{cpu_model()} ({os.cpu_count()} cores, shared with other jobs), {torch.get_num_threads()} torch "
               f"thread(s) per process, {platform.platform()}")
    header = {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "torch": torch.__version__, "machine": machine, "seeds": seeds, "tasks": tasks}
    out = Path(args.out)
    make_dir(out.parent)
    atomic_write(out.with_suffix(".json"), json.dumps({**header, "rows": summary, "runs": records}, indent=1))
    text = [f"Command: `{command}` ({header['date']}, torch {header['torch']}, {machine}).",
            f"Mean ± sample std (ddof=1) over seeds {', '.join(map(str, seeds))}; per-run numbers in "
            f"{out.with_suffix('.json').name}.", "", *lines]
    kept = out.read_text(encoding="utf-8").split(FINDINGS, 1)[1] if out.is_file() and FINDINGS in out.read_text(
        encoding="utf-8") else "\n"
    atomic_write(out, "\n".join(["# Out-of-distribution scores and calibration: SSGAN against labeled-only", "",
                                  *text, "", FINDINGS]) + kept)
    print("\n".join(text))


if __name__ == "__main__":
    main()
