"""Command line: ``ssgan fit | evaluate | predict | sample | table | ensemble | export | density``: parsing,
printing, and the one mapping of exceptions to exit codes. ``ssgan fit`` and its Hydra app are in
``fit_command``; the work itself is the library's (``table.make_table``, ``reports``, ``export``, ...).

Exceptions become exit codes in one place, ``main``, through ``command_line.exit_code``: 0 success, 2 bad input
(one line, no traceback), 3 divergence, 128 + N when stopped by signal N.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from . import __version__
from .config import DATASETS, METHODS, compose, first_line, resolve_device
from .command_line import (PROG, CommandParser, Passthrough, UsageError, add_network_flags, add_threads_flag,
                           exit_code, fail, named_networks, use_threads)
from .fit_command import cmd_fit
from .rundir import TABLE_DIR, atomic_create, check_new_file

if TYPE_CHECKING:
    import torch

EXPORT_FORMATS = ("onnx", "torchscript")  # export.FORMATS' keys (tests/test_cli_startup.py), without its torch

# Each command imports the library it runs (torch, torchvision, ...) in its own body: `ssgan --help`, a
# command's --help and a usage error answer without loading them (tests/test_cli_startup.py).

COMMANDS = {
    "fit": "train a semi-supervised GAN; the averaged discriminator is the classifier",
    "evaluate": "recompute the test error of a trained run from its checkpoint",
    "predict": "predict the classes of image files, folders or an .npz with a trained run",
    "sample": "write a grid of generator samples; --score: Inception Score (or the discriminator's score)",
    "table": "train the seeds x labels grid of a data set (resuming) and write runs/table/<dataset>.md, .json, .png",
    "ensemble": "evaluate trained runs together: each one's test error, mean +- std and the ensemble's error",
    "export": "write a run's classifier (input scaling and softmax inside) as an ONNX or TorchScript file",
    "density": "train Bad GAN's PixelCNN++ density model on a data set's unlabeled images (method.density_model)",
}



MAX_GRID, MAX_SCORED = 10_000, 10_000_000  # samples in a grid PNG (100 x 100), samples scored


def _check_out(out: Optional[str], suffix: str) -> None:
    """An ``--out`` file: new (never overwritten), in an existing folder, with the expected extension."""
    if out is not None:
        check_new_file(out, suffix)


# ------------------------------------------------------------------------------------ evaluate, predict

def cmd_evaluate(argv: Sequence[str]) -> int:
    parser = CommandParser(prog=f"{PROG} evaluate", description=COMMANDS["evaluate"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--ood", nargs="+", metavar="DATA", help="foreign sets (an .npz, an image folder, a data "
                        "set's name or uniform): per score (msp, log_z) AUROC, AUPR-in and FPR95 against the test "
                        "set, written to RUN_DIR/ood.json and ood_scores.png; dataset.resize=true among them "
                        "resizes images of another size (docs/ood.md)")
    parser.add_argument("--convert-channels", action="store_true", help="convert foreign colour images to grey "
                        "(the channel mean) or grey ones to colour, as training data are; else refused")
    parser.add_argument("--device", default="auto")
    add_network_flags(parser)
    args = parser.parse_args(argv)
    from . import ood
    from .checkpoint import load_run
    from .data import DataError, load_data
    from .evaluate import class_report, predict_proba

    resize, foreign = ood.split_resize(args.ood or [])
    run = load_run(args.run_dir, resolve_device(args.device), named_networks(args))
    data = load_data(run.config.dataset, run.config.seed)
    if len(data.y_test) == 0:
        raise DataError(f"{args.run_dir}: its data set has no test images to evaluate on")
    probs = predict_proba(run.discriminator, data.x_test, run.config.train.eval_batch_size,
                          tf32=run.config.train.tf32)
    report = class_report(probs, data.y_test, run.class_names)
    _print_report(report, "its")
    print("\n".join(ood.evaluate_calibration(run, data)))
    if foreign:
        print("\n".join(ood.evaluate_foreign(run, data.x_test, foreign, resize=resize,
                                              convert_channels=args.convert_channels)))
    print(f"test error: {report['test_error']:.2f} %")  # the last line, as scripts read it
    return 0


def _print_report(report: dict, whose: str) -> None:
    """Per-class errors and the confusion matrix (rows: true class, columns: predicted), as text."""
    names = report["class_names"]
    errors = ", ".join(f"{name}: {error:.2f}" for name, error in report["per_class_error"].items())
    print(f"per-class test error (%), {whose} predictions: {errors}")
    width = max(5, *(len(str(n)) for n in names), *(len(str(c)) for row in report["confusion_matrix"] for c in row))
    print("confusion matrix (rows: true class, columns: predicted class):")
    print(" " * (width + 1) + " ".join(f"{str(n)[:width]:>{width}}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        print(f"{str(name)[:width]:>{width}} " + " ".join(f"{c:>{width}}" for c in row))


def cmd_predict(argv: Sequence[str]) -> int:
    parser = CommandParser(prog=f"{PROG} predict", description=COMMANDS["predict"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("inputs", nargs="+", help="image files, folders or .npz files")
    parser.add_argument("--proba", action="store_true", help="also print the class probabilities")
    parser.add_argument("--ood-score", nargs="?", const="msp", choices=("msp", "log_z"), help="add a column of "
                        "an out-of-distribution score, higher = more like the training data: msp (the default; "
                        "the steadier one in results/ood.md) or log_z")
    parser.add_argument("--calibrated", action="store_true", help="probabilities at the temperature fitted on "
                        "the run's validation split (calibration.json; needs dataset.val_size > 0)")
    parser.add_argument("--out", help="write a CSV file instead of printing")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default="auto")
    add_network_flags(parser)
    args = parser.parse_args(argv)
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size={args.batch_size}: must be positive")
    _check_out(args.out, ".csv")
    import numpy as np

    from .checkpoint import load_run
    from .data import read_inputs

    run = load_run(args.run_dir, resolve_device(args.device), named_networks(args))
    names, x = read_inputs(args.inputs, run.config.dataset)
    from . import ood

    probs, scores = ood.predict_with_scores(run, x, args.batch_size, calibrated=args.calibrated,
                                            score=args.ood_score)
    header = ["input", "class"] + ([f"p_{c}" for c in run.class_names] if args.proba else [])
    rows = [[name, run.class_names[int(np.argmax(p))]] + ([f"{v:.6f}" for v in p] if args.proba else [])
            for name, p in zip(names, probs)]
    if scores is not None:
        header.append(args.ood_score)
        rows = [row + [f"{v:.6f}"] for row, v in zip(rows, scores)]
    if args.out:
        out, table = Path(args.out), io.StringIO(newline="")
        csv.writer(table).writerows([header] + rows)
        atomic_create(out, table.getvalue())  # whole or not at all, never over another file
        print(f"wrote {len(rows)} predictions to {out}")
    else:  # tab-separated; a name holding a tab, a newline or a quote is quoted (csv), so rows stay rows
        # (with --proba or --ood-score a header first, naming each column)
        named = args.proba or scores is not None
        csv.writer(sys.stdout, delimiter="\t", lineterminator="\n").writerows([header] * named + rows)
    return 0


def _check_sample_args(args) -> Optional[str]:
    """``ssgan sample``'s flags that cannot go together (UsageError); why the Inception weights are not here
    (None when they are)."""
    for name in ("n", "n_score", "splits", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be positive")
    for name, most in (("n", MAX_GRID), ("n_score", MAX_SCORED)):  # before any sample is drawn
        if getattr(args, name) > most:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: at most {most:,}")
    if args.no_grid and not args.score:
        raise UsageError("--no-grid writes nothing without --score")
    if args.fid and not args.score:
        raise UsageError("--fid comes with --score")
    if args.score and args.splits > args.n_score:
        raise UsageError(f"--splits {args.splits}: more splits than the {args.n_score} samples scored")
    from . import quality

    reason = quality.unavailable_reason()
    if reason is not None and (args.fid or args.classifier == "inception"):
        raise UsageError(f"{'--fid' if args.fid else '--classifier inception'} needs the Inception weights: "
                         f"{reason}")
    return reason


def cmd_sample(argv: Sequence[str]) -> int:
    """Generator samples as a PNG grid; with --score, the Inception Score exp(E_x KL(p(y|x) || p(y))) over
    --n-score samples in --splits splits (Salimans et al. 2016, sec. 4: 50,000 samples, 10 splits) and, with
    --fid, the Frechet Inception Distance to the training images (Heusel et al. 2017), through torch-fidelity's
    Inception-v3 when its weights are local (the quality extra); else, named as such, the run's own
    discriminator's classifier score."""
    parser = CommandParser(prog=f"{PROG} sample", description=COMMANDS["sample"])
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--n", type=int, default=100, help="samples in the grid (default 100: 10 x 10)")
    parser.add_argument("--out", help="PNG file of the grid (default RUN_DIR/grid.png); never overwritten")
    parser.add_argument("--no-grid", action="store_true", help="write no grid (with --score)")
    parser.add_argument("--score", action="store_true", help="compute the Inception Score of the samples")
    parser.add_argument("--fid", action="store_true", help="with --score: also the FID to the run's training "
                        "images (needs the Inception weights)")
    parser.add_argument("--n-score", type=int, default=50000, help="samples scored (default 50000)")
    parser.add_argument("--splits", type=int, default=10, help="splits of the score's mean +- std (default 10)")
    parser.add_argument("--classifier", choices=("auto", "inception", "torchvision", "discriminator"),
                        default="auto", help="auto: torch-fidelity's Inception-v3 if the quality extra and its "
                        "weights are here, else the run's discriminator; torchvision: torchvision's ImageNet "
                        "Inception-v3 from the torch hub cache")
    parser.add_argument("--batch-size", type=int, help="generator batch (default: the run's train.batch_size)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise z")
    parser.add_argument("--device", default="auto")
    add_network_flags(parser)
    args = parser.parse_args(argv)
    reason = _check_sample_args(args)
    run_path = Path(args.run_dir)
    out = Path(args.out) if args.out else (run_path if run_path.is_dir() else run_path.parent) / "grid.png"
    draw = not args.no_grid
    if draw and args.score and args.out is None and out.exists():  # a score of a run that has its grid already
        print(f"{out} exists; scoring without drawing a new grid (--out FILE draws one)", file=sys.stderr)
        draw = False
    if draw:
        _check_out(str(out), ".png")
    import torch

    from .checkpoint import load_run
    from .evaluate import sample_grid_png

    device = resolve_device(args.device)
    run = load_run(run_path, device, named_networks(args))
    batch_size = args.batch_size or run.config.train.batch_size
    noise = torch.Generator(device=device).manual_seed(args.seed)
    if draw:
        grid = sample_grid_png(run.generator, run.config.dataset.scaling, args.n, batch_size, noise)
        atomic_create(out, grid)  # drawn first, then written whole; never over another file
        print(f"wrote {args.n} samples to {out}")
    if args.score:
        _print_scores(args, run, device, batch_size, noise, reason)
    return 0


def _print_scores(args: argparse.Namespace, run, device: str, batch_size: int, noise: torch.Generator,
                  reason: Optional[str]) -> None:
    """``ssgan sample --score``: the Inception Score (and FID) through torch-fidelity when its weights are here,
    else torchvision's Inception-v3 or the run's own discriminator, each named as such."""
    import torch

    from . import quality
    from .data import load_data
    from .evaluate import discriminator_classifier, inception_classifier, inception_weights_path, sample_score

    scaling = run.config.dataset.scaling
    if args.classifier in ("auto", "inception") and reason is None:
        real = load_data(run.config.dataset, run.config.seed).x_train if args.fid else None
        print(f"scoring {args.n_score} samples in {args.splits} splits with torch-fidelity's Inception-v3 "
              f"({quality.inception_weights_available()})", file=sys.stderr)
        scores = quality.sample_quality(run.generator, scaling, args.n_score, batch_size, real_images=real,
                                        splits=args.splits, generator_seed=args.seed)
        print(f"{quality.INCEPTION_SCORE_NAME}: {scores[quality.IS_MEAN]:.3f} +- {scores[quality.IS_STD]:.3f}")
        if args.fid:
            print(f"{quality.FID_NAME}: {scores[quality.FID]:.3f} (against {scores['n_real']} training images)")
        return
    classify = inception_classifier(scaling, device) if args.classifier == "torchvision" else None
    if classify is None and args.classifier == "torchvision":
        raise UsageError(f"no torchvision Inception-v3 weights in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
                         f"copy torchvision's inception_v3_google-*.pth there (nothing is downloaded)")
    if classify is not None:
        name, source = "Inception Score (torchvision's ImageNet Inception-v3)", str(inception_weights_path())
    else:
        classify, name = discriminator_classifier(run.discriminator), quality.CLASSIFIER_SCORE_NAME
        source = "the run's discriminator" + ("" if args.classifier == "discriminator" else f" ({reason})")
    print(f"scoring {args.n_score} samples in {args.splits} splits with {source}", file=sys.stderr)
    mean, std = sample_score(run.generator, classify, args.n_score, args.splits, batch_size, noise)
    print(f"{name}: {mean:.3f} +- {std:.3f}")


# ------------------------------------------------------------------------------------- table, ensemble

def _label_counts(text: str) -> List[int]:
    """'20,50,100' -> [20, 50, 100] (sorted, without repeats)."""
    try:
        counts = sorted({int(word) for word in text.split(",") if word.strip()})
    except ValueError:
        counts = []
    if not counts or counts[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive label counts separated by commas, "
                                         f"e.g. 20,50,100")
    return counts


def _table_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=f"{PROG} table", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train seeds seed .. seed+K-1 for each label count of a data set, one after another, and write "
                    "OUT_DIR/<dataset>.md, .json and .png (the PNG needs matplotlib, the plots extra): per label "
                    "count our mean +- sample std (ddof=1) over the seeds, our ensemble (mean of the class "
                    "probabilities, then argmax) and the published numbers. These three files are regenerated "
                    "on every call. Runs are kept in CACHE_DIR/<dataset>/<key>/seed<N>/, the key a hash of the "
                    "resolved config without the seed and bookkeeping (paths, device, progress): a rerun trains "
                    "only the seeds that have no result.json yet, and an interrupted seed continues from its "
                    "checkpoint. KEY=VALUE words are overrides of every cell (part of the key).",
        epilog="examples:  ssgan table --dataset mnist dataset.root=data          (4 x 10 runs of 300 epochs)\n"
               "           ssgan table --dataset mnist --labels 100 --seeds 3 --epochs 10\n"
               "           ssgan table --from runs/multirun-*/   (the jobs of a multirun, trained elsewhere)")
    parser.add_argument("--dataset", choices=DATASETS, help="data set and its published recipe")
    parser.add_argument("--labels", type=_label_counts, help="label counts, e.g. 20,50,100 (default: those "
                        "with published numbers)")
    parser.add_argument("--seeds", type=int, metavar="K", help="seeds per label count (default 10)")
    parser.add_argument("--method", choices=METHODS, help="improved_gan (default), ct_gan, ct_gan_te (CT with the temporal ensemble) or bad_gan")
    parser.add_argument("--epochs", type=int, help="shorthand for train.epochs=N (as in ssgan fit)")
    parser.add_argument("--device", help="train.device for training; the device that evaluates --from runs")
    parser.add_argument("--data-root", help="dataset.root for training; where --from runs' test images are "
                        "(default: each run's own dataset.root)")
    parser.add_argument("--out-dir", default=TABLE_DIR, help=f"where the table goes (default {TABLE_DIR}/, beside "
                        f"its runs; the maintainers' tables: --out-dir results)")
    add_threads_flag(parser)
    parser.add_argument("--cache-dir", default=TABLE_DIR, help=f"where the runs go (default {TABLE_DIR}/)")
    parser.add_argument("--from", dest="from_dirs", nargs="+", metavar="DIR",
                        help="train nothing: aggregate the finished runs in these directories (run directories "
                             "or folders of them, e.g. a multirun's sweep directory)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra overrides of every cell")
    add_network_flags(parser)  # (with --from)
    return parser


def cmd_table(argv: Sequence[str]) -> int:
    """Train (or, with --from, collect) one seeds run per label count and write the table next to the
    published numbers (``table.make_table``, ``table.collect_table``); a rerun trains only the seeds that have
    not finished."""
    args = _table_parser().parse_intermixed_args(argv)
    if args.from_dirs:
        given = [f"--{name}" for name in ("seeds", "method", "epochs") if getattr(args, name) is not None]
        if given or args.overrides:
            raise UsageError(f"--from aggregates finished runs as they are; drop {' '.join(given + args.overrides)}")
    else:
        if named_networks(args) is not None:
            raise UsageError("--discriminator / --generator name the networks of --from runs; cells to train "
                             "name them as model=custom model.discriminator._target_=...")
        if args.dataset is None:
            raise UsageError("--dataset is needed (or --from DIR... to aggregate finished runs)")
        for word in args.overrides:
            if "=" not in word:
                raise UsageError(f"unexpected argument {word!r}: overrides have the form KEY=VALUE")
    from .table import Progress, collect_table, make_table

    use_threads(args.threads)
    command = shlex.join([PROG, "table", *argv])
    if args.from_dirs:
        table = collect_table(args.from_dirs, dataset=args.dataset, labels=args.labels, device=args.device or "auto",
                              data_root=args.data_root, out_dir=args.out_dir, command=command,
                              networks=named_networks(args))
    else:
        epochs = [] if args.epochs is None else [f"train.epochs={args.epochs}"]  # (KEY=VALUE words win)
        table = make_table(args.dataset, labels=args.labels, seeds=10 if args.seeds is None else args.seeds,
                           method=args.method, overrides=[*epochs, *args.overrides], device=args.device,
                           data_root=args.data_root, cache_dir=args.cache_dir, out_dir=args.out_dir,
                           command=command, progress=Progress(print))
    for row in table.rows:
        spread = " (1 seed)" if row.std is None else f" +- {row.std:.2f} % over {len(row.runs)} seeds (sample std)"
        print(f"{row.labels} labels: test error {row.mean:.2f}{spread}, ensemble {row.ensemble_error:.2f} %")
    print(f"wrote {', '.join(str(p) for p in table.files)}")
    return 0


def cmd_ensemble(argv: Sequence[str]) -> int:
    """Evaluate finished runs together: the ensemble averages their class probabilities (docs/method.md sec. 5)."""
    parser = CommandParser(prog=f"{PROG} ensemble", description=COMMANDS["ensemble"] + ". The runs must share the "
                     "data set and its classes; the ensemble's prediction is the argmax of the mean of the "
                     "models' class probabilities. The last line printed is the ensemble's test error.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories, or folders of them (a --seeds run, a multirun)")
    parser.add_argument("--out", help="also write the numbers to this JSON file (never overwritten)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", help="where the test images are (default: each run's dataset.root)")
    add_network_flags(parser)
    args = parser.parse_args(argv)
    _check_out(args.out, ".json")
    from .records import find_runs
    from .reports import aggregate, ensemble_record, probs_on_test_set

    records = find_runs(args.run_dirs)
    probs, y_test, class_names = probs_on_test_set(records, resolve_device(args.device), args.data_root,
                                                   networks=named_networks(args))
    result = aggregate(records, probs, y_test, class_names)
    for record in records:
        print(f"{record.path}: test error {record.test_error:.2f} % ({record.dataset}, {record.labels} labels, "
              f"{record.method}, seed {record.seed})")
    if result.std is not None:
        print(f"mean +- std: {result.mean:.2f} +- {result.std:.2f} % over {len(records)} runs (sample std)")
    _print_report(result.ensemble_report, "the ensemble's")
    print(f"ensemble test error: {result.ensemble_error:.2f} % ({len(records)} model{'s' * (len(records) > 1)})")
    if args.out:
        ensemble_record(result, class_names).write(args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0



def cmd_export(argv: Sequence[str]) -> int:
    """The averaged discriminator of a run, raw pixels in and class probabilities out (``ssgan.export``)."""
    parser = CommandParser(prog=f"{PROG} export", description=COMMANDS["export"] + ". The file takes float32 images "
                     "(N, C, H, W) of raw pixel values (0..255; 0..16 for the builtin digits) and returns (N, K) "
                     "class probabilities; the class names travel inside it.")
    parser.add_argument("run_dir", help="a run directory written by ssgan fit")
    parser.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="onnx (needs the export "
                        "extra) or torchscript")
    parser.add_argument("--out", help="the file to write (default RUN_DIR/model.onnx or RUN_DIR/model.pt); "
                        "never overwritten")
    parser.add_argument("--calibrated", action="store_true", help="softmax(l / T) at the temperature fitted on "
                        "the run's validation split (calibration.json)")
    add_network_flags(parser)
    args = parser.parse_args(argv)
    from .export import export_run

    exported = export_run(args.run_dir, args.format, args.out, networks=named_networks(args),
                          calibrated=args.calibrated)
    print(f"wrote {exported.path} ({exported.fmt}): float32 (N, {', '.join(map(str, exported.input_shape))}) raw "
          f"pixels 0..{exported.input_value_max:g} -> (N, {len(exported.class_names)}) class probabilities")
    return 0


def cmd_density(argv: Sequence[str]) -> int:
    """Fit the PixelCNN++ on the train split's images (the unlabeled pool; never the test set), compute the
    threshold as the official code does (the value at int(0.1 N) of the partitioned log-likelihoods) and
    write both to --out, the file method.density_model names."""
    parser = CommandParser(prog=f"{PROG} density", description=COMMANDS["density"] + ". Official MNIST sizes by "
                     "default (160 filters, 3 resnet blocks, 10 logistics, 2 resolutions, Adam 2e-4, batch 40).")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist")
    parser.add_argument("--out", required=True, help="the file to write (refused if it exists)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--filters", type=int, default=160)
    parser.add_argument("--resnet", type=int, default=3)
    parser.add_argument("--mix", type=int, default=10)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=40)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-images", type=int, help="train on the first N images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides (e.g. dataset.root=data)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out {out}: exists; choose another file (no file is overwritten)")
    from .density import fit_density

    fitted = fit_density(compose([f"dataset={args.dataset}", *args.overrides]), epochs=args.epochs,
                         filters=args.filters, resnet=args.resnet, mix=args.mix, stages=args.stages,
                         batch_size=args.batch_size, lr=args.lr, max_images=args.max_images, seed=args.seed,
                         log=lambda line: print(line, flush=True))
    fitted.write(out)
    print(f"density model: {out} ({fitted.info['images']} images, {fitted.info['bits_per_dim']:.4f} bits per dim, "
          f"threshold {fitted.threshold:.2f} nats)")
    return 0


HANDLERS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "sample": cmd_sample,
            "table": cmd_table, "ensemble": cmd_ensemble, "export": cmd_export, "density": cmd_density}


def _usage() -> str:
    lines = [f"usage: {PROG} COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += ["", f"data sets: {', '.join(DATASETS)}; methods: {', '.join(METHODS)}",
              f"'{PROG} COMMAND --help' lists a command's options."]
    return "\n".join(lines)


class _Console(logging.Handler):
    """The library's log messages (``logging.getLogger("ssgan")``) as plain lines on the current stdout,
    while the command line runs."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stdout)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``ssgan`` command; returns the exit code. The one place where exceptions become
    exit codes: 2 for bad input, 3 for divergence, 128 + N for signal N."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["fit"]  # `ssgan` alone runs the default job
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("--version", "-V"):
        print(f"{PROG} {__version__}")
        return 0
    if argv[0] in ("-sc", "--shell-completion"):  # Hydra's shell completion calls `ssgan -sc query=bash`
        argv = ["fit", *argv]
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        return fail(f"unknown command {command!r}; expected one of {', '.join(HANDLERS)}")
    library_log = logging.getLogger("ssgan")
    console = _Console()
    library_log.addHandler(console)
    level = library_log.level
    library_log.setLevel(logging.INFO)
    try:
        return HANDLERS[command](rest)
    except Passthrough as carried:
        return exit_code(carried.error)
    except (HydraException, OmegaConfBaseException) as error:  # Hydra's own errors (HYDRA_FULL_ERROR)
        return fail(first_line(error))
    except SystemExit as stop:  # argparse and Hydra exit this way
        return int(stop.code) if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except KeyboardInterrupt:  # Ctrl-C outside training (start-up): nothing was left behind
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as error:  # bad input, divergence, a signal; anything else is re-raised (a bug)
        return exit_code(error)
    finally:
        library_log.removeHandler(console)
        library_log.setLevel(level)
