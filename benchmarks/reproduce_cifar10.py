"""Reproduce the MASS paper's CIFAR-10 experiments (Table 2, and Tables 3/4 in miniature).

Three stages, each resumable:

1. **Table 2.** Every (model, method, seed) is one *run*: the model (``--models``:
   ``resnet20``, ``resnet18``) trained from scratch with the method (``--methods``: the
   paper's 9 rows by default, ``all`` adds the official-APS placement) and the seed, then
   evaluated on the test set: top-1 accuracy, and circular consistency (eq. 4) with two
   seeded random circular shifts per image. The recipe is the paper's (SGD, momentum 0.9,
   weight decay 5e-4, cosine schedule per step, random flips). Seed ``s`` fixes the initial
   weights, the batch order and the evaluation shifts, so all rows of one seed start from
   the same weights (conversion and LPF add no parameters) and see the same shifts. Each
   row of the table is the mean ± sample std over its seeds (one seed: the value, n = 1).
2. **Weight transfer (Tables 3/4 in miniature).** The trained baseline of the first model
   and seed is loaded into the plain ``torch.nn`` network and converted with
   ``convert(method="mass")`` and ``"aps"`` without training (reported), then fine-tuned
   for 1 epoch at lr 0.001 (reported again). The baseline gets the same fine-tune as a
   control.
3. **Figures.** Accuracy against consistency per model, and a heat map of the agreement
   with the unshifted prediction for every circular shift ``(dy, dx)`` (first model and
   seed; baseline, MASS, APS).

Two scales (``--scale``); any option given explicitly overrides the preset:

* ``cpu`` (default): ResNet-20, 1 epoch at batch 128 and lr 0.1, 1 seed, on CPU. Results go
  to ``docs/results/`` and fill the ``<!-- BEGIN cifar10-... -->`` blocks of
  ``docs/results.md`` and ``README.md``.
* ``paper``: the paper's recipe, 250 epochs at batch 256 and lr 0.2, 5 seeds, ResNet-20 and
  ResNet-18, on a GPU if there is one; the transfer fine-tune lasts 3 epochs (Table 4).
  Results go to ``docs/results_paper/``.

A run is skipped when the JSON already holds it with the same settings, and continued
from its last finished epoch when it was interrupted (checkpoints under ``--work-dir``,
git-ignored). Results made by another version of the ``mass_lightning`` sources are
reused unless ``--rerun-stale`` is given. A method the conversion engine refuses for a
model is skipped with the engine's reason in the tables.

Usage::

    # The CPU-scale tables of docs/results.md and the README (every row, official APS included):
    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/reproduce_cifar10.py --methods all --rerun-stale
    # Table 2 in full on a GPU (9 rows x 2 models x 5 seeds x 250 epochs):
    python benchmarks/reproduce_cifar10.py --scale paper
    # Rewrite the tables and figures from the JSON without computing anything:
    python benchmarks/reproduce_cifar10.py --report-only
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import plots  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from mass_lightning import convert, get_backbone  # noqa: E402
from mass_lightning.backbones import load_checkpoint  # noqa: E402
from mass_lightning.data import CIFAR10DataModule  # noqa: E402
from mass_lightning.tasks import ClassificationTask  # noqa: E402

EXPERIMENT = "cifar10"


@dataclass(frozen=True)
class Row:
    """One line of Table 2."""

    label: str
    method: str
    antialias: str | None


ROWS: dict[str, Row] = {
    "baseline": Row("Baseline", "baseline", None),
    "aps": Row("APS", "aps", None),
    "mass": Row("MASS", "mass", None),
    "lpf3": Row("LPF-3", "baseline", "lpf3"),
    "aps_lpf3": Row("APS-LPF-3", "aps", "lpf3"),
    "mass_lpf3": Row("MASS-LPF-3", "mass", "lpf3"),
    "ddac3": Row("DDAC-3", "baseline", "ddac3"),
    "aps_ddac3": Row("APS-DDAC-3", "aps", "ddac3"),
    "mass_ddac3": Row("MASS-DDAC-3", "mass", "ddac3"),
    "aps_official": Row("APS (official placement)", "aps_official", None),
}
"""Row key -> label, method and anti-aliasing: the paper's 9 rows in its order, then the variants."""

TABLE2 = ("baseline", "aps", "mass", "lpf3", "aps_lpf3", "mass_lpf3", "ddac3", "aps_ddac3", "mass_ddac3")
"""The paper's 9 rows: the default ``--methods``."""


@dataclass(frozen=True)
class Model:
    """A Table-2 network: its label and its name in the backbone registry."""

    label: str
    backbone: str


MODELS: dict[str, Model] = {
    "resnet20": Model("ResNet-20", "resnet20"),
    "resnet18": Model("ResNet-18", "cifar_resnet18"),  # the CIFAR ResNet-18: 3x3 stem, no max-pool
}

# Table 2 of the paper: (accuracy, std, consistency, std) in %, 250 epochs, official CIFAR-10,
# 5 runs; the paper gives no std for 100%. Its APS rows come from the official APS code, so
# they are also the reference of the official-placement row.
PAPER: dict[str, dict[str, tuple[float, float, float, float | None]]] = {
    "resnet20": {
        "baseline": (90.47, 0.30, 90.94, 0.45), "aps": (91.79, 0.21, 100.0, None),
        "mass": (92.03, 0.19, 100.0, None), "lpf3": (92.05, 0.18, 91.20, 0.32),
        "aps_lpf3": (92.20, 0.21, 100.0, None), "mass_lpf3": (92.26, 0.22, 100.0, None),
        "ddac3": (90.64, 0.21, 95.26, 0.18), "aps_ddac3": (92.36, 0.14, 100.0, None),
        "mass_ddac3": (92.53, 0.17, 100.0, None),
    },
    "resnet18": {
        "baseline": (91.85, 0.23, 91.20, 0.32), "aps": (94.58, 0.07, 100.0, None),
        "mass": (94.94, 0.07, 100.0, None), "lpf3": (94.44, 0.15, 96.09, 0.34),
        "aps_lpf3": (94.61, 0.07, 100.0, None), "mass_lpf3": (94.85, 0.10, 100.0, None),
        "ddac3": (94.40, 0.24, 97.21, 0.07), "aps_ddac3": (94.63, 0.06, 100.0, None),
        "mass_ddac3": (94.80, 0.14, 100.0, None),
    },
}  # fmt: skip
for _paper in PAPER.values():
    _paper["aps_official"] = _paper["aps"]

TRANSFER_LABELS = {"baseline": "Baseline", "mass": "MASS", "aps": "APS", "aps_official": "APS (official placement)"}

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"epochs": 1, "batch_size": 128, "lr": 0.1, "seeds": 1, "models": "resnet20"},
    "paper": {"epochs": 250, "batch_size": 256, "lr": 0.2, "seeds": 5, "models": "resnet20,resnet18",
              "finetune_epochs": 3, "accelerator": "auto", "threads": 4, "num_workers": 8,
              "output_dir": common.REPO_ROOT / "docs" / "results_paper",
              "work_dir": common.REPO_ROOT / "outputs" / "reproduce_cifar10_paper"},
}  # fmt: skip
"""``--scale`` presets: the CPU-scale run of ``docs/results.md`` and the paper's recipe (Table 2)."""


def build_parser(scale: str = "cpu") -> argparse.ArgumentParser:
    """The options, with the defaults of the ``scale`` preset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="cpu",
                        help="Preset of schedule, seeds, models and output folders; explicit options win.")
    parser.add_argument("--models", help="Networks (comma-separated): resnet20, resnet18.")
    parser.add_argument("--methods", "--rows", dest="methods", default=",".join(TABLE2),
                        help=f"Table-2 rows (comma-separated keys or labels; 'all' = every known row): "
                             f"{', '.join(ROWS)}.")
    parser.add_argument("--seeds", type=int, help="Runs per row, with seeds --seed, --seed + 1, ...")
    parser.add_argument("--seed", type=int, default=0, help="First seed (weights, batch order, evaluation shifts).")
    parser.add_argument("--epochs", type=int, help="Training epochs of every run.")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="Peak learning rate (cosine schedule).")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--eval-batch-size", type=int, default=500,
                        help="Test batch size (the evaluation shifts are drawn per batch, so keep it fixed).")
    parser.add_argument("--max-train-samples", type=int, default=None, help="Train on a seeded subset (smoke tests).")
    parser.add_argument("--max-test-samples", type=int, default=None, help="Test on a seeded subset (smoke tests).")
    parser.add_argument("--transfer", default="baseline,mass,aps",
                        help="Conversions of the trained baseline to evaluate and fine-tune ('' to skip); "
                             f"'baseline' is the fine-tune control. Known: {', '.join(TRANSFER_LABELS)}.")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.001, help="Constant learning rate of the fine-tune.")
    parser.add_argument("--heatmap-rows", default="baseline,mass,aps", help="Rows of the shift heat map ('' to skip).")
    parser.add_argument("--heatmap-images", type=int, default=64, help="Test images behind the heat map.")
    parser.add_argument("--data-root", default=None,
                        help="CIFAR-10 folder (JPEG ImageFolder or official batches); default "
                             "$MASS_LIGHTNING_DATA/cifar10-jpeg.")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="Re-run results computed by another version of the mass_lightning sources "
                             "(or by a version that did not record one); without it they are reused.")
    parser.add_argument("--report-only", action="store_true",
                        help="Only rewrite the tables and figures from the JSON; compute nothing.")
    common.add_run_arguments(parser, EXPERIMENT, budget_minutes=120.0, budget_of="the Table-2 runs")
    parser.set_defaults(**SCALES[scale])
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with the defaults of its ``--scale``; adds ``model_keys``, ``row_keys`` and ``seed_list``."""
    scale = argparse.ArgumentParser(add_help=False)
    scale.add_argument("--scale", choices=list(SCALES), default="cpu")
    args = build_parser(scale.parse_known_args(argv)[0].scale).parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {args.seeds}.")
    args.model_keys = common.parse_choices(args.models, {k: m.label for k, m in MODELS.items()}, "models")
    args.row_keys = common.parse_choices(args.methods, {k: r.label for k, r in ROWS.items()}, "methods")
    args.seed_list = [args.seed + i for i in range(args.seeds)]
    if not args.model_keys:
        raise SystemExit("--models: give at least one model.")
    return args


# ---------------------------------------------------------------------------------------- helpers
def run_key(model: str, row: str, seed: int) -> str:
    return f"{model}/{row}/seed{seed}"


def datamodule(args: argparse.Namespace, train: bool, seed: int | None = None) -> CIFAR10DataModule:
    """Training data shuffled by ``seed``, or the test data (the same subset for every seed)."""
    return CIFAR10DataModule(
        root=args.data_root,
        batch_size=args.batch_size if train else args.eval_batch_size,
        num_workers=args.num_workers,
        max_samples=args.max_train_samples if train else args.max_test_samples,
        seed=args.seed if seed is None else seed,
    )


def trainer(args: argparse.Namespace, **kwargs: Any) -> Trainer:
    """A quiet single-device trainer without validation loops."""
    defaults = dict(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                    num_sanity_val_steps=0)
    return Trainer(**{**defaults, **kwargs})


def evaluate(task: ClassificationTask, args: argparse.Namespace) -> dict[str, Any]:
    """Top-1 accuracy and circular consistency (two seeded shifts per image) on the test set."""
    data = datamodule(args, train=False)
    start = time.perf_counter()
    metrics = trainer(args).test(task, datamodule=data, verbose=False)[0]
    images = len(data.dataset("test"))
    consistency = float(metrics["test/consistency"])
    return {
        "acc": float(metrics["test/acc"]),
        "consistency": consistency,
        "test_images": images,
        "inconsistent_images": images - round(consistency * images),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def schedule_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a run's numbers besides model, row and seed (a stored run with others is re-run)."""
    return {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "momentum": 0.9, "schedule": "cosine", "eval_batch_size": args.eval_batch_size,
        "max_train_samples": args.max_train_samples, "max_test_samples": args.max_test_samples,
        "augmentation": "random horizontal flip",
    }  # fmt: skip


@functools.lru_cache(maxsize=None)
def library() -> dict[str, str]:
    return common.library_fingerprint()


def is_done(stored: dict[str, Any] | None, settings: dict[str, Any], args: argparse.Namespace) -> bool:
    """Whether ``stored`` holds a result for ``settings`` that this run keeps (see ``--force``, ``--rerun-stale``)."""
    if stored is None or args.force or stored.get("settings") != settings:
        return False
    return not (args.rerun_stale and (stored.get("library") or {}).get("source_sha256") != library()["source_sha256"])


def stamp() -> dict[str, Any]:
    """When and with which library a result was computed."""
    return {"library": library(), "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}


@functools.lru_cache(maxsize=None)
def unsupported(model: str, row: str) -> str | None:
    """Why the conversion engine cannot build ``row`` for ``model`` (its error message), or ``None``."""
    spec = ROWS[row]
    try:
        get_backbone(MODELS[model].backbone, method=spec.method, antialias=spec.antialias, num_classes=10)
    except ValueError as error:  # the library's errors subclass ValueError
        return f"{type(error).__name__}: {error}"
    return None


def fit(task: ClassificationTask, args: argparse.Namespace, folder: Path, settings: dict[str, Any], epochs: int,
        label: str, seed: int) -> dict[str, Any]:  # fmt: skip
    """Train ``task`` for ``epochs`` epochs, resuming from ``folder/last.ckpt`` if it matches ``settings``."""
    settings = {**settings, "library": library()["source_sha256"]}  # never resume another engine's checkpoint
    resume = None if args.force else common.latest_checkpoint(folder, settings)
    timings = common.Timings(label, path=folder / "timings.json", resume=resume is not None)
    run = trainer(
        args, max_epochs=epochs, logger=CSVLogger(str(folder), name="logs"), log_every_n_steps=20,
        callbacks=[timings, common.CheckpointEvery(folder, settings)],
    )  # fmt: skip
    if resume is not None:
        common.log(f"[{label}] resuming from {resume}")
    run.fit(task, datamodule=datamodule(args, train=True, seed=seed), ckpt_path=str(resume) if resume else None)
    run.save_checkpoint(folder / "final.ckpt")
    return {**timings.summary(), "resumed": resume is not None}


# ---------------------------------------------------------------------------------------- stages
def train_run(model: str, row: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate one (model, row, seed); returns its entry of ``results["runs"]``."""
    spec, key, settings = ROWS[row], run_key(model, row, seed), schedule_settings(args)
    common.log(f"[{key}] training {MODELS[model].label} ({spec.label}) for {args.epochs} epoch(s)")
    seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(backbone=MODELS[model].backbone, method=spec.method, antialias=spec.antialias,
                              num_classes=10, lr=args.lr, weight_decay=args.weight_decay, schedule="cosine",
                              consistency_seed=seed)  # fmt: skip
    folder = args.work_dir / model / row / f"seed{seed}"
    train = fit(task, args, folder, {"model": model, "row": row, "seed": seed, **settings}, args.epochs, key, seed)
    metrics = evaluate(task, args)
    common.log(f"[{key}] acc {common.fmt_pct(metrics['acc'])}%, consistency {common.fmt_pct(metrics['consistency'])}% "
               f"({metrics['inconsistent_images']} of {metrics['test_images']} images change class)")
    return {"model": model, "row": row, "seed": seed, "label": spec.label, "method": spec.method,
            "antialias": spec.antialias, **metrics, "train": train, "settings": settings, **stamp()}  # fmt: skip


def baseline_checkpoint(args: argparse.Namespace, results: dict[str, Any], trained: set[str]) -> Path:
    """The trained baseline of the first model and seed; trains it (and adds it to ``trained``) if missing."""
    model, seed = args.model_keys[0], args.seed_list[0]
    key = run_key(model, "baseline", seed)
    path = args.work_dir / model / "baseline" / f"seed{seed}" / "final.ckpt"
    if not path.is_file() or not is_done(results["runs"].get(key), schedule_settings(args), args):
        common.log(f"[transfer] no baseline checkpoint for these settings: training {key} first")
        results["runs"][key] = train_run(model, "baseline", seed, args)
        trained.add(key)
    return path


def transfer_settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    return {"transfer": method, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
            "model": args.model_keys[0], "seed": args.seed_list[0], **schedule_settings(args)}  # fmt: skip


def transfer(method: str, args: argparse.Namespace, checkpoint: Path, reference: dict[str, Any]) -> dict[str, Any]:
    """Convert the trained baseline with ``convert(method=...)``, evaluate, fine-tune, evaluate.

    ``reference`` is the baseline run: ``convert(method="baseline")`` gives the trained
    baseline back unchanged, so its numbers are not measured again.
    """
    model, seed = args.model_keys[0], args.seed_list[0]
    backbone = MODELS[model].backbone
    plain = load_checkpoint(get_backbone(backbone, method="baseline", padding="zeros", num_classes=10), checkpoint)
    converted = convert(plain, method=method)  # the plain torch.nn network with the baseline's weights
    seed_everything(seed, workers=True, verbose=False)
    task = ClassificationTask(backbone=backbone, method=method, num_classes=10, lr=args.finetune_lr,
                              weight_decay=args.weight_decay, schedule="constant", consistency_seed=seed)
    task.model = converted
    metric_keys = ("acc", "consistency", "test_images", "inconsistent_images", "eval_seconds")
    before = {k: reference[k] for k in metric_keys} if method == "baseline" else evaluate(task, args)
    common.log(f"[transfer {method}] converted, no training: acc {common.fmt_pct(before['acc'])}%, "
               f"consistency {common.fmt_pct(before['consistency'])}%")
    settings = transfer_settings(method, args)
    folder = args.work_dir / model / f"transfer_{method}"
    train = fit(task, args, folder, settings, args.finetune_epochs, f"fine-tune {method}", seed)
    after = evaluate(task, args)
    common.log(f"[transfer {method}] + fine-tune: acc {common.fmt_pct(after['acc'])}%, "
               f"consistency {common.fmt_pct(after['consistency'])}%")
    return {"label": TRANSFER_LABELS[method], "converted": before, "finetuned": {**after, "train": train},
            "settings": settings, **stamp()}  # fmt: skip


def heatmap_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"heatmap_images": args.heatmap_images, "model": args.model_keys[0], "seed": args.seed_list[0],
            **schedule_settings(args)}  # fmt: skip


def heatmap(rows: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Agreement grids over all 32x32 shifts for the trained ``rows`` of the first model and seed."""
    model, seed = args.model_keys[0], args.seed_list[0]
    data = CIFAR10DataModule(root=args.data_root, max_samples=args.heatmap_images, seed=args.seed, num_workers=0)
    dataset = data.dataset("test")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    grids = {}
    for row in rows:
        path = args.work_dir / model / row / f"seed{seed}" / "final.ckpt"
        if not path.is_file():
            common.log(f"[heatmap] skipping {row}: no checkpoint at {path}")
            continue
        network = ClassificationTask.load_from_checkpoint(path, map_location="cpu").model.eval()
        start = time.perf_counter()
        grid = common.shift_agreement_grid(network, images)
        common.log(f"[heatmap] {row}: mean agreement {100 * grid.mean():.2f}% ({time.perf_counter() - start:.0f} s)")
        grids[row] = [[round(float(v), 5) for v in line] for line in grid]
    return {"images": len(images), "grids": grids, "settings": heatmap_settings(args), **stamp()}


def estimate(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--estimate-steps`` training steps and one evaluation forward per (model, row); project the run time."""
    full = CIFAR10DataModule(root=args.data_root, num_workers=0)  # project to the full splits
    train_images, test_images = len(full.dataset("train")), len(full.dataset("test"))
    args.max_train_samples = args.max_train_samples or (args.estimate_steps + 1) * args.batch_size
    steps_per_epoch = math.ceil(train_images / args.batch_size)
    eval_batches = math.ceil(test_images / args.eval_batch_size)
    measured: dict[str, dict[str, float]] = {}
    for model in args.model_keys:
        for row in args.row_keys:
            if unsupported(model, row):
                common.log(f"[estimate] skipping {model}/{row}: {unsupported(model, row)}")
                continue
            seed_everything(args.seed, workers=True, verbose=False)
            spec = ROWS[row]
            task = ClassificationTask(backbone=MODELS[model].backbone, method=spec.method, antialias=spec.antialias,
                                      num_classes=10, lr=args.lr, schedule="constant")  # fmt: skip
            timings = common.Timings(f"estimate {model}/{row}")
            trainer(args, max_steps=args.estimate_steps + 1, callbacks=[timings]).fit(
                task, datamodule=datamodule(args, train=True))
            task.eval()
            images = torch.randn(args.eval_batch_size, 3, 32, 32)
            with torch.no_grad():
                task(images)
                start = time.perf_counter()
                task(images)
                forward = time.perf_counter() - start
            summary = timings.summary()
            measured[f"{model}/{row}"] = {
                "step_seconds": summary["median_step_seconds"],
                "step_cpu_seconds": summary["median_step_cpu_seconds"],
                "fastest_step_seconds": summary["min_step_seconds"],
                "epoch_minutes": summary["median_step_seconds"] * steps_per_epoch / 60,
                "eval_minutes": 3 * eval_batches * forward / 60, "forward_seconds_per_image": forward / len(images),
            }  # fmt: skip
    seeds = len(args.seed_list)
    per_epoch = seeds * sum(m["epoch_minutes"] for m in measured.values())
    evals = seeds * sum(m["eval_minutes"] for m in measured.values())
    runs_total = per_epoch * args.epochs + evals
    fits = max(0, math.floor((args.budget_minutes - evals) / per_epoch)) if per_epoch else 0
    first = f"{args.model_keys[0]}/"
    near = lambda row: measured.get(first + row) or next(iter(measured.values()))  # noqa: E731
    transfers = common.parse_choices(args.transfer, TRANSFER_LABELS, "transfer")
    heatmap_rows = common.parse_choices(args.heatmap_rows, {k: r.label for k, r in ROWS.items()}, "heatmap-rows")
    transfer_total = sum(args.finetune_epochs * near(m)["epoch_minutes"] + 2 * near(m)["eval_minutes"]
                         for m in transfers) if measured else 0.0  # fmt: skip
    heatmap_total = sum(args.heatmap_images * 32 * 32 * near(r)["forward_seconds_per_image"] / 60
                        for r in heatmap_rows) if measured else 0.0  # fmt: skip
    lines = [common.markdown_table(
        ["Run", "s/step (median wall)", "s/step (fastest)", "s/step (median cpu)", "min/epoch", "eval (min)"],
        [[key, f"{m['step_seconds']:.2f}", f"{m['fastest_step_seconds']:.2f}", f"{m['step_cpu_seconds']:.2f}",
          f"{m['epoch_minutes']:.1f}", f"{m['eval_minutes']:.1f}"] for key, m in measured.items()])]  # fmt: skip
    lines += [
        f"{train_images} training images = {steps_per_epoch} steps/epoch at batch {args.batch_size}; "
        f"{test_images} test images x 3 forward passes; {seeds} seed(s) per row.",
        f"Table-2 runs at {args.epochs} epoch(s): {runs_total:.0f} min; weight transfer: {transfer_total:.0f} min; "
        f"heat map ({args.heatmap_images} images): {heatmap_total:.0f} min; "
        f"total {runs_total + transfer_total + heatmap_total:.0f} min.",
        f"Epochs whose Table-2 runs fit in {args.budget_minutes:.0f} min: {fits}.",
    ]
    common.log("\n".join(lines))
    return {"runs": measured, "runs_minutes": runs_total, "transfer_minutes": transfer_total,
            "heatmap_minutes": heatmap_total, "epochs_in_budget": fits}


# ---------------------------------------------------------------------------------------- results
def migrate(results: dict[str, Any]) -> dict[str, Any]:
    """Bring a results file of the one-seed ResNet-20 script (rows keyed by method) to per-run entries.

    Those rows become the runs ``resnet20/<row>/seed<seed>`` with their numbers and settings
    (the seed moves from the settings to the run); transfer and heat-map settings gain the
    model. They record no library version, so ``--rerun-stale`` re-runs them.
    """
    old = {key: row for key, row in results.get("rows", {}).items() if key in ROWS and "settings" in row}
    if not old:
        return results
    runs = results.setdefault("runs", {})
    for key, row in old.items():
        settings = dict(row["settings"])
        seed = settings.pop("seed", 0)
        runs.setdefault(run_key("resnet20", key, seed),
                        {"model": "resnet20", "row": key, "seed": seed, **row, "settings": settings})
    for entry in [*results.get("transfer", {}).values(), results.get("heatmap")]:
        if entry and "settings" in entry:
            entry["settings"].setdefault("model", "resnet20")
    results["settings"] = {k: v for k, v in results.get("settings", {}).items() if k != "seed"}
    results["rows"] = {}
    return results


def summarize(results: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per ``model/row``: mean ± std over the stored runs with the results' settings (a report: the stored ones)."""
    settings, groups = results.get("settings") or schedule_settings(args), {}
    for run in results.get("runs", {}).values():
        if run.get("settings") == settings:
            groups.setdefault(f"{run['model']}/{run['row']}", []).append(run)
    summary = {}
    for key, runs in groups.items():
        runs.sort(key=lambda r: r["seed"])
        first = runs[0]
        summary[key] = {
            "model": first["model"], "row": first["row"], "label": first["label"], "method": first["method"],
            "antialias": first["antialias"], "n": len(runs), "seeds": [r["seed"] for r in runs],
            "test_images": first["test_images"],
            **{name: common.mean_std([r[name] for r in runs])
               for name in ("acc", "consistency", "inconsistent_images")},
            "train_minutes": common.mean_std([r["train"]["train_seconds"] / 60 for r in runs]),
            "libraries": sorted({(r.get("library") or {}).get("source_sha256") or "not recorded" for r in runs}),
        }  # fmt: skip
    return summary


def shown(results: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The models (those asked for or found) and the rows (every known row) of the tables."""
    found = [*results.get("rows", {}), *results.get("skipped", {})]
    models = [m for m in MODELS if m in args.model_keys or any(k.startswith(f"{m}/") for k in found)]
    return models, list(ROWS)


def images_changed(row: dict[str, Any]) -> str:
    stat = row["inconsistent_images"]
    count = f"{stat['mean']:.0f}" if row["n"] == 1 else common.fmt_mean_std(stat, scale=1.0, digits=1)
    return f"{count} / {row['test_images']}"


def paper_cells(model: str, row: str) -> list[str]:
    acc, acc_std, cons, cons_std = PAPER[model][row]
    cell = lambda value, std: f"{value:.2f}" + (f" ± {std:.2f}" if std is not None else "")  # noqa: E731
    return [cell(acc, acc_std), cell(cons, cons_std)]


def tables(results: dict[str, Any], args: argparse.Namespace) -> dict[str, str]:
    """Markdown blocks of ``docs/results.md`` (``cifar10-*``) and the README (``cifar10-readme-*``)."""
    summary, skipped = results.get("rows", {}), results.get("skipped", {})
    models, rows = shown(results, args)
    sections, notes = [], []
    for model in models:
        body = []
        for row in rows:
            found, label = summary.get(f"{model}/{row}"), ROWS[row].label
            if found is None:
                status = "not run (see below)" if f"{model}/{row}" in skipped else "not yet run"
                body.append([label, "", status, status, "", *paper_cells(model, row), ""])
                continue
            body.append([label, str(found["n"]), common.fmt_mean_std(found["acc"]),
                         common.fmt_mean_std(found["consistency"]), images_changed(found), *paper_cells(model, row),
                         f"{found['train_minutes']['mean']:.1f}"])  # fmt: skip
        sections.append(f"**{MODELS[model].label}**\n\n" + common.markdown_table(
            [f"Method ({MODELS[model].label})", "n", "Accuracy (%)", "Consistency (%)", "Images that change class",
             "Paper acc. (%)", "Paper cons. (%)", "Train time (min/run)"], body))  # fmt: skip
    for key, reason in skipped.items():
        model, row = key.split("/")
        notes.append(f"- {MODELS[model].label}, {ROWS[row].label}: not run, the conversion engine refused it "
                     f"({reason}).")
    versions = sorted({v for r in summary.values() for v in r["libraries"]})
    if len(versions) > 1:
        notes.append("- The rows above were computed by different versions of the mass_lightning sources:")
        for version in versions:
            names = [f"{MODELS[r['model']].label} {r['label']}" for r in summary.values() if version in r["libraries"]]
            notes.append(f"  - `{version}`: {', '.join(names)}.")
    table_md = "\n\n".join(sections) + ("\n\n" + "\n".join(notes) if notes else "")

    settings = results.get("settings", {})
    run_seeds = sorted({s for r in summary.values() for s in r["seeds"]})
    settings_md = "\n".join(f"- `{k}`: {v}" for k, v in settings.items()) or "- not yet run"
    if summary:
        settings_md += (f"\n- `models`: {', '.join(sorted({r['model'] for r in summary.values()}))}"
                        f"\n- `seeds`: {', '.join(map(str, run_seeds))}")
    transfer_md, readme_transfer_md = transfer_tables(results)
    if settings.get("max_train_samples") or settings.get("max_test_samples"):
        warning = ("**Subset run (smoke test): `max_train_samples`/`max_test_samples` are set; these numbers are "
                   "not the CPU-scale results.**\n\n")
        table_md, transfer_md, settings_md = (warning + t for t in (table_md, transfer_md, settings_md))
    command = results.get("command")
    if command:
        settings_md += f"\n\nRegenerate with:\n\n```bash\n{command}\n```"
    machine = results.get("machine", {})
    machine_md = "\n".join(f"- {k}: {v}" for k, v in machine.items()) or "- not yet run"
    return {"cifar10-table": table_md, "cifar10-transfer": transfer_md, "cifar10-settings": settings_md,
            "cifar10-machine": machine_md, "cifar10-readme-table": readme_table(results, args),
            "cifar10-readme-transfer": readme_transfer_md}  # fmt: skip


def readme_table(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The README's Table 2 at CPU scale: the first model, accuracy and consistency of every row."""
    summary, skipped = results.get("rows", {}), results.get("skipped", {})
    models, rows = shown(results, args)
    model = models[0]
    several = any(summary.get(f"{model}/{r}", {}).get("n", 1) > 1 for r in rows)
    body = []
    for row in rows:
        found, label = summary.get(f"{model}/{row}"), ROWS[row].label
        if row == "baseline":
            label = "Baseline (circular padding)"
        if found is None:
            status = "not run" if f"{model}/{row}" in skipped else "not yet run"
            body.append([label, *([""] if several else []), status, status, ""])
            continue
        consistency = common.fmt_mean_std(found["consistency"])
        if found["consistency"]["mean"] == 1.0:
            consistency = f"**{consistency}**"
        body.append([label, *([str(found["n"])] if several else []), common.fmt_mean_std(found["acc"]), consistency,
                     images_changed(found).split(" / ")[0]])  # fmt: skip
    return common.markdown_table(["Method", *(["n"] if several else []), "Accuracy (%)", "Consistency (%)",
                                  "Test images that change class"], body)  # fmt: skip


def transfer_tables(results: dict[str, Any]) -> tuple[str, str]:
    """The weight-transfer table of ``docs/results.md`` and the README's shorter one."""
    stored = results.get("transfer", {})
    runs = results.get("runs", {})
    reference = None
    if stored:
        settings = next(iter(stored.values()))["settings"]
        reference = runs.get(run_key(settings["model"], "baseline", settings["seed"]))
    full, short = [], []
    if reference is not None:
        full.append(["Baseline (trained, reference)", "-", common.fmt_pct(reference["acc"]),
                     common.fmt_pct(reference["consistency"])])
        short.append(["Baseline (trained)", common.fmt_pct(reference["acc"]), common.fmt_pct(reference["consistency"])])
    order = [m for m in TRANSFER_LABELS if m != "baseline"] + ["baseline"]  # conversions, then the control
    for method in [m for m in order if m in stored]:
        entry, label = stored[method], TRANSFER_LABELS[method]
        ft = entry["settings"]
        ft_text = f"{ft['finetune_epochs']} epoch at lr {ft['finetune_lr']:g}"
        before, after = entry["converted"], entry["finetuned"]
        if method == "baseline":
            full.append(["Baseline + fine-tune (control)", ft_text, common.fmt_pct(after["acc"]),
                         common.fmt_pct(after["consistency"])])
            short.append(["Baseline + the same fine-tune", common.fmt_pct(after["acc"]),
                          common.fmt_pct(after["consistency"])])
            continue
        full += [[f"Baseline -> {label} (convert)", "none", common.fmt_pct(before["acc"]),
                  common.fmt_pct(before["consistency"])],
                 [f"Baseline -> {label} + fine-tune", ft_text, common.fmt_pct(after["acc"]),
                  common.fmt_pct(after["consistency"])]]  # fmt: skip
        short.append([f"→ {label}, no training / + fine-tune",
                      f"{common.fmt_pct(before['acc'])} / {common.fmt_pct(after['acc'])}",
                      f"{common.fmt_pct(before['consistency'])} / {common.fmt_pct(after['consistency'])}"])
    if not full:
        full.append(["(weight transfer)", "not yet run", "not yet run", "not yet run"])
        short.append(["(weight transfer)", "not yet run", "not yet run"])
    return (common.markdown_table(["Model", "Training after conversion", "Accuracy (%)", "Consistency (%)"], full),
            common.markdown_table(["Model", "Accuracy (%)", "Consistency (%)"], short))


def scatter_name(model: str, first: str) -> str:
    """``cifar10_accuracy_vs_consistency.png`` for the first model, with a ``_<model>`` suffix for the others."""
    return f"{EXPERIMENT}_accuracy_vs_consistency{'' if model == first else '_' + model}.png"


def write_reports(results: dict[str, Any], args: argparse.Namespace, figures: bool = True) -> list[Path]:
    """JSON, Markdown, figures and the ``docs/results.md``/README blocks; returns the files written.

    With ``figures=False`` (after each run) the PNGs are left as they are.
    """
    out = args.output_dir
    results["rows"] = summarize(results, args)
    written = [out / f"{EXPERIMENT}.json"]
    common.save_json(written[0], results)
    blocks = tables(results, args)
    models, _ = shown(results, args)
    pngs = []
    for model in models:
        points = [{**r, "acc": r["acc"]["mean"], "consistency": r["consistency"]["mean"]}
                  for r in results["rows"].values() if r["model"] == model]  # fmt: skip
        path = out / scatter_name(model, models[0])
        if points and figures:
            plots.plot_accuracy_vs_consistency(points, path, title=f"CIFAR-10, {MODELS[model].label}")
        if points and path.is_file():
            pngs.append(path)
    grids = results.get("heatmap", {}).get("grids", {})
    heatmap_path = out / f"{EXPERIMENT}_shift_heatmap.png"
    if grids and figures:
        plots.plot_consistency_heatmaps({ROWS[k].label: v for k, v in grids.items()}, heatmap_path,
                                        num_images=results["heatmap"]["images"])  # fmt: skip
    if grids and heatmap_path.is_file():
        pngs.append(heatmap_path)
    markdown = [
        "# CIFAR-10 (paper Table 2, Tables 3-4 in miniature)", "",
        "Generated by `benchmarks/reproduce_cifar10.py`; see `docs/results.md` for the caveats.", "",
        "## Table 2 rows", "", blocks["cifar10-table"], "",
        "## Weight transfer and fine-tune", "", blocks["cifar10-transfer"], "",
        "## Figures", "", *[f"![{p.stem}]({p.name})" for p in pngs], "",
        "## Settings", "", blocks["cifar10-settings"], "", "## Machine", "", blocks["cifar10-machine"], "",
    ]  # fmt: skip
    (out / f"{EXPERIMENT}.md").write_text("\n".join(markdown))
    written += [out / f"{EXPERIMENT}.md", *(pngs if figures else [])]
    results_md = common.results_markdown(args.results_md, out)
    if results_md is not None:
        captions = {"cifar10_shift_heatmap": "Agreement with the unshifted prediction for every shift (dy, dx)"}
        blocks["cifar10-figures"] = "\n\n".join(
            f"![{captions.get(p.stem, 'Accuracy vs circular consistency, CIFAR-10 ' + p.stem)}]"
            f"({common.relative_to(p, results_md.parent)})" for p in pngs
        ) or "Figures: not yet run."
        common.fill_markers(results_md, {k: v for k, v in blocks.items() if not k.startswith("cifar10-readme")})
        written.append(results_md)
    readme = common.readme_markdown(out)
    if readme is not None:
        common.fill_markers(readme, {k: v for k, v in blocks.items() if k.startswith("cifar10-readme")})
        written.append(readme)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage that is not done yet; returns the results dict (also written to JSON)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    transfers = common.parse_choices(args.transfer, TRANSFER_LABELS, "transfer")
    heatmap_rows = common.parse_choices(args.heatmap_rows, {k: r.label for k, r in ROWS.items()}, "heatmap-rows")
    common.configure_threads(args.threads)
    common.quiet_lightning()
    if args.estimate_steps:
        return estimate(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    results = migrate(common.load_results(args.output_dir / f"{EXPERIMENT}.json"))
    results.setdefault("runs", {})
    if args.report_only:
        for path in write_reports(results, args):
            common.log(f"wrote {path}")
        return results
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results.update(experiment=EXPERIMENT, settings=schedule_settings(args))
    record = common.RunRecord(results, script=Path(__file__).name, argv=argv, threads=args.threads)

    skipped = results.setdefault("skipped", {})
    trained: set[str] = set()
    for seed in args.seed_list:  # seed by seed: an interrupted multi-seed run still has whole tables
        for model in args.model_keys:
            for row in args.row_keys:
                key = run_key(model, row, seed)
                reason = unsupported(model, row)
                if reason is not None:
                    common.log(f"[{key}] skipped: {reason}")
                    skipped[f"{model}/{row}"] = reason
                    continue
                skipped.pop(f"{model}/{row}", None)
                stored = results["runs"].get(key)
                if is_done(stored, schedule_settings(args), args):
                    common.log(f"[{key}] done already (acc {common.fmt_pct(stored['acc'])}%), skipping")
                    continue
                record.computing()
                results["runs"][key] = train_run(model, row, seed, args)
                trained.add(key)
                write_reports(results, args, figures=False)

    if transfers:
        baseline = run_key(args.model_keys[0], "baseline", args.seed_list[0])
        supported = [m for m in transfers if m == "baseline" or unsupported(args.model_keys[0], m) is None]
        for method in sorted(set(transfers) - set(supported)):
            common.log(f"[transfer {method}] skipped: {unsupported(args.model_keys[0], method)}")
        pending = lambda: [m for m in supported  # noqa: E731
                           if not is_done(results["transfer"].get(m), transfer_settings(m, args), args)]
        if baseline in trained or "transfer" not in results:  # a new baseline invalidates its conversions
            results["transfer"] = {}
        todo = pending()
        for method in sorted(set(supported) - set(todo)):
            common.log(f"[transfer {method}] done already, skipping")
        if todo:
            checkpoint = baseline_checkpoint(args, results, trained)
            if baseline in trained:
                results["transfer"], todo = {}, pending()
        for method in todo:
            record.computing()
            results["transfer"][method] = transfer(method, args, checkpoint, results["runs"][baseline])
            write_reports(results, args, figures=False)

    if heatmap_rows:
        stored = results.get("heatmap", {})
        first = args.work_dir / args.model_keys[0]
        missing = [r for r in heatmap_rows if r not in stored.get("grids", {})
                   and (first / r / f"seed{args.seed_list[0]}" / "final.ckpt").is_file()]  # fmt: skip
        fresh = {run_key(args.model_keys[0], r, args.seed_list[0]) for r in heatmap_rows} & trained
        if not is_done(stored or None, heatmap_settings(args), args) or missing or fresh:
            record.computing()
            results["heatmap"] = heatmap(heatmap_rows, args)

    record.finish()
    for path in write_reports(results, args):
        common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
