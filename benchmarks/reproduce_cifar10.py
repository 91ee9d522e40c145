"""Reproduce the MASS paper's CIFAR-10 experiments (Tables 2, 3 and 4) at CPU scale.

Three stages, each resumable:

1. **Table 2 rows.** ResNet-20 trained from scratch on the full CIFAR-10 training set
   (the JPEG copy in ``$MASS_LIGHTNING_DATA/cifar10-jpeg``) for the rows baseline, APS,
   MASS, LPF-3, APS-LPF-3 and MASS-LPF-3, all with the same seed (hence the same initial
   weights and batch order) and the same short schedule: the paper's recipe (SGD,
   momentum 0.9, weight decay 5e-4, cosine, random flips) for ``--epochs`` epochs instead
   of 250, at batch 128 and lr 0.1 (the paper: 256 and 0.2; one epoch needs the steps). Each row is evaluated on the full 10,000-image
   test set: top-1 accuracy, and circular consistency (eq. 4) with two seeded random
   circular shifts per image (the same shifts for every row).
2. **Weight transfer (Tables 3/4).** The trained baseline's weights are loaded into a
   plain ResNet-20 and converted with ``convert(method="mass")`` and ``"aps"`` without
   training (reported), then fine-tuned for 1 epoch at lr 0.001 (reported again). The
   baseline itself gets the same fine-tune as a control.
3. **Figures.** A heat map of the agreement with the unshifted prediction for every
   circular shift ``(dy, dx)`` on a CIFAR test subset (baseline, MASS, APS), and accuracy
   against consistency for the Table-2 rows.

Results go to ``<output-dir>/cifar10.json`` and ``cifar10.md``, PNGs next to them, and the
tables into ``docs/results.md`` (its ``<!-- BEGIN cifar10-... -->`` blocks) when that file
sits next to the output folder. Checkpoints go to ``--work-dir`` (``outputs/``, ignored).

Usage (the CPU-scale run of ``docs/results.md``)::

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/reproduce_cifar10.py --output-dir docs/results

Paper scale on a GPU::

    python benchmarks/reproduce_cifar10.py --epochs 250 --batch-size 256 --lr 0.2 --accelerator gpu \\
        --threads 8 --num-workers 8 --output-dir docs/results_gpu --work-dir outputs/reproduce_cifar10_gpu
"""

from __future__ import annotations

import argparse
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

from mass_lightning import convert  # noqa: E402
from mass_lightning.backbones import load_checkpoint, resnet20  # noqa: E402
from mass_lightning.data import CIFAR10DataModule  # noqa: E402
from mass_lightning.tasks import ClassificationTask  # noqa: E402

EXPERIMENT = "cifar10"
DEFAULT_EPOCHS = 1  # fits, with weight transfer and the heat map, in about 70 min on 2 cores


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
}
"""Row key -> label, method and anti-aliasing, in the paper's order."""

PAPER_RESNET20 = {  # Table 2 of the paper (250 epochs, mean of 5 runs, official CIFAR-10)
    "baseline": (90.47, 90.94),
    "aps": (91.79, 100.0),
    "mass": (92.03, 100.0),
    "lpf3": (92.05, 91.20),
    "aps_lpf3": (92.20, 100.0),
    "mass_lpf3": (92.26, 100.0),
}
TRANSFER_LABELS = {"baseline": "Baseline", "mass": "MASS", "aps": "APS"}


def parse_rows(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """``"MASS-LPF-3, aps"`` -> ``["mass_lpf3", "aps"]`` (labels or keys, any case)."""
    aliases = {key: key for key in allowed}
    aliases.update({ROWS[key].label.lower().replace("-", "_"): key for key in allowed if key in ROWS})
    keys = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key = aliases.get(item.lower().replace("-", "_"))
        if key is None:
            raise SystemExit(f"--{what}: unknown entry {item!r}; choose from {', '.join(allowed)}.")
        if key not in keys:
            keys.append(key)
    return keys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="Table-2 rows to train (comma-separated).")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="Training epochs of every row.")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="Peak learning rate (cosine schedule).")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0, help="Seeds weights, batch order and evaluation shifts.")
    parser.add_argument("--eval-batch-size", type=int, default=500,
                        help="Test batch size (the evaluation shifts are drawn per batch, so keep it fixed).")
    parser.add_argument("--max-train-samples", type=int, default=None, help="Train on a seeded subset (smoke tests).")
    parser.add_argument("--max-test-samples", type=int, default=None, help="Test on a seeded subset (smoke tests).")
    parser.add_argument("--transfer", default="baseline,mass,aps",
                        help="Conversions of the trained baseline to evaluate and fine-tune ('' to skip); "
                             "'baseline' is the fine-tune control.")
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--finetune-lr", type=float, default=0.001, help="Constant learning rate of the fine-tune.")
    parser.add_argument("--heatmap-rows", default="baseline,mass,aps", help="Rows of the shift heat map ('' to skip).")
    parser.add_argument("--heatmap-images", type=int, default=64, help="Test images behind the heat map.")
    parser.add_argument("--data-root", default=None,
                        help="CIFAR-10 folder (JPEG ImageFolder or official batches); default "
                             "$MASS_LIGHTNING_DATA/cifar10-jpeg.")
    common.add_run_arguments(parser, EXPERIMENT, budget_minutes=90.0, budget_of="the Table-2 rows")
    return parser


# ---------------------------------------------------------------------------------------- helpers
def datamodule(args: argparse.Namespace, train: bool) -> CIFAR10DataModule:
    """The training or the test data (their own sample limits and batch sizes)."""
    return CIFAR10DataModule(
        root=args.data_root,
        batch_size=args.batch_size if train else args.eval_batch_size,
        num_workers=args.num_workers,
        max_samples=args.max_train_samples if train else args.max_test_samples,
        seed=args.seed,
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
    """Everything that changes a Table-2 row's numbers (a stored row with other settings is re-run)."""
    return {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "momentum": 0.9, "schedule": "cosine", "seed": args.seed, "eval_batch_size": args.eval_batch_size,
        "max_train_samples": args.max_train_samples, "max_test_samples": args.max_test_samples,
        "augmentation": "random horizontal flip",
    }  # fmt: skip


def fit(task: ClassificationTask, args: argparse.Namespace, folder: Path, settings: dict[str, Any], epochs: int,
        label: str) -> dict[str, Any]:  # fmt: skip
    """Train ``task`` for ``epochs`` epochs, resuming from ``folder/last.ckpt`` if it matches ``settings``."""
    resume = None if args.force else common.latest_checkpoint(folder, settings)
    timings = common.Timings(label, path=folder / "timings.json", resume=resume is not None)
    run = trainer(
        args, max_epochs=epochs, logger=CSVLogger(str(folder), name="logs"), log_every_n_steps=20,
        callbacks=[timings, common.CheckpointEvery(folder, settings)],
    )  # fmt: skip
    if resume is not None:
        common.log(f"[{label}] resuming from {resume}")
    run.fit(task, datamodule=datamodule(args, train=True), ckpt_path=str(resume) if resume else None)
    run.save_checkpoint(folder / "final.ckpt")
    return {**timings.summary(), "resumed": resume is not None}


# ---------------------------------------------------------------------------------------- stages
def train_row(key: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Train and evaluate one Table-2 row; store it in ``results["rows"]``."""
    row, settings = ROWS[key], schedule_settings(args)
    folder = args.work_dir / key
    common.log(f"[{key}] training ResNet-20 ({row.label}) for {args.epochs} epoch(s)")
    seed_everything(args.seed, workers=True, verbose=False)
    task = ClassificationTask(backbone="resnet20", method=row.method, antialias=row.antialias, num_classes=10,
                              lr=args.lr, weight_decay=args.weight_decay, schedule="cosine",
                              consistency_seed=args.seed)  # fmt: skip
    train = fit(task, args, folder, {"row": key, **settings}, args.epochs, key)
    metrics = evaluate(task, args)
    common.log(f"[{key}] acc {common.fmt_pct(metrics['acc'])}%, consistency {common.fmt_pct(metrics['consistency'])}% "
               f"({metrics['inconsistent_images']} of {metrics['test_images']} images change class)")
    results["rows"][key] = {"label": row.label, "method": row.method, "antialias": row.antialias, **metrics,
                            "train": train, "settings": settings}  # fmt: skip


def baseline_checkpoint(args: argparse.Namespace, results: dict[str, Any], trained: set[str]) -> Path:
    """The trained baseline's checkpoint; trains the baseline row (and adds it to ``trained``) if it is missing."""
    path = args.work_dir / "baseline" / "final.ckpt"
    stored = results["rows"].get("baseline", {}).get("settings")
    if not path.is_file() or stored != schedule_settings(args):
        common.log("[transfer] no baseline checkpoint for these settings: training the baseline row first")
        train_row("baseline", args, results)
        trained.add("baseline")
    return path


def transfer(method: str, args: argparse.Namespace, checkpoint: Path, reference: dict[str, Any]) -> dict[str, Any]:
    """Convert the trained baseline with ``convert(method=...)``, evaluate, fine-tune, evaluate.

    ``reference`` is the baseline row: ``convert(method="baseline")`` gives the trained
    baseline back unchanged, so its numbers are not measured again.
    """
    plain = load_checkpoint(resnet20(num_classes=10), checkpoint)  # torch.nn ResNet-20 with the baseline weights
    converted = convert(plain, method=method)
    seed_everything(args.seed, workers=True, verbose=False)
    task = ClassificationTask(backbone="resnet20", method=method, num_classes=10, lr=args.finetune_lr,
                              weight_decay=args.weight_decay, schedule="constant", consistency_seed=args.seed)
    task.model = converted
    metric_keys = ("acc", "consistency", "test_images", "inconsistent_images", "eval_seconds")
    before = {k: reference[k] for k in metric_keys} if method == "baseline" else evaluate(task, args)
    common.log(f"[transfer {method}] converted, no training: acc {common.fmt_pct(before['acc'])}%, "
               f"consistency {common.fmt_pct(before['consistency'])}%")
    folder = args.work_dir / f"transfer_{method}"
    settings = {"transfer": method, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr,
                **schedule_settings(args)}  # fmt: skip
    train = fit(task, args, folder, settings, args.finetune_epochs, f"fine-tune {method}")
    after = evaluate(task, args)
    common.log(f"[transfer {method}] + fine-tune: acc {common.fmt_pct(after['acc'])}%, "
               f"consistency {common.fmt_pct(after['consistency'])}%")
    return {"label": TRANSFER_LABELS[method], "converted": before, "finetuned": {**after, "train": train},
            "settings": settings}  # fmt: skip


def heatmap(keys: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Agreement grids over all 32x32 shifts for the trained rows ``keys`` (those with a checkpoint)."""
    data = CIFAR10DataModule(root=args.data_root, max_samples=args.heatmap_images, seed=args.seed, num_workers=0)
    dataset = data.dataset("test")
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    grids = {}
    for key in keys:
        path = args.work_dir / key / "final.ckpt"
        if not path.is_file():
            common.log(f"[heatmap] skipping {key}: no checkpoint at {path}")
            continue
        model = ClassificationTask.load_from_checkpoint(path, map_location="cpu").model.eval()
        start = time.perf_counter()
        grid = common.shift_agreement_grid(model, images)
        common.log(f"[heatmap] {key}: mean agreement {100 * grid.mean():.2f}% "
                   f"({time.perf_counter() - start:.0f} s)")
        grids[key] = [[round(float(v), 5) for v in line] for line in grid]
    return {"images": len(images), "grids": grids,
            "settings": {"heatmap_images": args.heatmap_images, **schedule_settings(args)}}


def estimate(rows: list[str], transfers: list[str], heatmap_rows: list[str], args: argparse.Namespace) -> dict:
    """Time ``--estimate-steps`` training steps and one evaluation forward per row; project the run time."""
    full = CIFAR10DataModule(root=args.data_root, num_workers=0)  # project to the full splits
    train_images, test_images = len(full.dataset("train")), len(full.dataset("test"))
    args.max_train_samples = args.max_train_samples or (args.estimate_steps + 1) * args.batch_size
    steps_per_epoch = math.ceil(train_images / args.batch_size)
    eval_batches = math.ceil(test_images / args.eval_batch_size)
    measured = {}
    for key in rows:
        seed_everything(args.seed, workers=True, verbose=False)
        row = ROWS[key]
        task = ClassificationTask(backbone="resnet20", method=row.method, antialias=row.antialias, num_classes=10,
                                  lr=args.lr, schedule="constant")  # fmt: skip
        timings = common.Timings(f"estimate {key}")
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
        measured[key] = {
            "step_seconds": summary["median_step_seconds"], "step_cpu_seconds": summary["median_step_cpu_seconds"],
            "fastest_step_seconds": summary["min_step_seconds"],
            "epoch_minutes": summary["median_step_seconds"] * steps_per_epoch / 60,
            "eval_minutes": 3 * eval_batches * forward / 60, "forward_seconds_per_image": forward / len(images),
        }  # fmt: skip
    rows_total = sum(m["epoch_minutes"] * args.epochs + m["eval_minutes"] for m in measured.values())
    per_epoch = sum(m["epoch_minutes"] for m in measured.values())
    evals = sum(m["eval_minutes"] for m in measured.values())
    fits = max(0, math.floor((args.budget_minutes - evals) / per_epoch)) if per_epoch else 0
    near = lambda key: measured.get(key) or next(iter(measured.values()))  # noqa: E731
    transfer_total = sum(args.finetune_epochs * near(m)["epoch_minutes"] + 2 * near(m)["eval_minutes"]
                         for m in transfers)  # fmt: skip
    heatmap_total = sum(args.heatmap_images * 32 * 32 * near(k)["forward_seconds_per_image"] / 60 for k in heatmap_rows)
    lines = [common.markdown_table(
        ["Row", "s/step (median wall)", "s/step (fastest)", "s/step (median cpu)", "min/epoch", "eval (min)"],
        [[ROWS[k].label, f"{m['step_seconds']:.2f}", f"{m['fastest_step_seconds']:.2f}",
          f"{m['step_cpu_seconds']:.2f}", f"{m['epoch_minutes']:.1f}",
          f"{m['eval_minutes']:.1f}"] for k, m in measured.items()])]  # fmt: skip
    lines += [
        f"{train_images} training images = {steps_per_epoch} steps/epoch at batch {args.batch_size}; "
        f"{test_images} test images x 3 forward passes.",
        f"Table-2 rows at {args.epochs} epoch(s): {rows_total:.0f} min; weight transfer: {transfer_total:.0f} min; "
        f"heat map ({args.heatmap_images} images): {heatmap_total:.0f} min; "
        f"total {rows_total + transfer_total + heatmap_total:.0f} min.",
        f"Epochs whose Table-2 rows fit in {args.budget_minutes:.0f} min: {fits}.",
    ]
    common.log("\n".join(lines))
    return {"rows": measured, "rows_minutes": rows_total, "transfer_minutes": transfer_total,
            "heatmap_minutes": heatmap_total, "epochs_in_budget": fits}


# ---------------------------------------------------------------------------------------- reports
def tables(results: dict[str, Any]) -> dict[str, str]:
    """Markdown blocks: ``cifar10-table``, ``cifar10-transfer``, ``cifar10-settings``, ``cifar10-machine``."""
    rows = results.get("rows", {})
    table2 = []
    for key, row in ROWS.items():
        found = rows.get(key)
        paper_acc, paper_cons = PAPER_RESNET20[key]
        if found is None:
            table2.append([row.label, "not yet run", "not yet run", "", f"{paper_acc:.2f}", f"{paper_cons:.2f}", ""])
            continue
        table2.append([
            row.label, common.fmt_pct(found["acc"]), common.fmt_pct(found["consistency"]),
            f"{found['inconsistent_images']} / {found['test_images']}", f"{paper_acc:.2f}", f"{paper_cons:.2f}",
            f"{found['train']['train_seconds'] / 60:.1f}",
        ])  # fmt: skip
    table2_md = common.markdown_table(
        ["Method (ResNet-20)", "Accuracy (%)", "Consistency (%)", "Images that change class",
         "Paper acc. (%)", "Paper cons. (%)", "Train time (min)"], table2)  # fmt: skip

    transfer_rows = []
    reference = rows.get("baseline")
    if reference is not None:
        transfer_rows.append(["Baseline (trained, reference)", "-", common.fmt_pct(reference["acc"]),
                              common.fmt_pct(reference["consistency"])])
    stored = results.get("transfer", {})
    for method in sorted(stored, key=lambda m: (m == "baseline", m != "mass")):  # MASS, APS, then the control
        entry = stored[method]
        label = TRANSFER_LABELS.get(method, method)
        ft = entry["settings"]
        ft_text = f"{ft['finetune_epochs']} epoch at lr {ft['finetune_lr']:g}"
        if method != "baseline":
            transfer_rows.append([f"Baseline -> {label} (convert)", "none",
                                  common.fmt_pct(entry["converted"]["acc"]),
                                  common.fmt_pct(entry["converted"]["consistency"])])
        name = "Baseline + fine-tune (control)" if method == "baseline" else f"Baseline -> {label} + fine-tune"
        transfer_rows.append([name, ft_text, common.fmt_pct(entry["finetuned"]["acc"]),
                              common.fmt_pct(entry["finetuned"]["consistency"])])
    if not transfer_rows:
        transfer_rows.append(["(weight transfer)", "not yet run", "not yet run", "not yet run"])
    transfer_md = common.markdown_table(["Model", "Training after conversion", "Accuracy (%)", "Consistency (%)"],
                                        transfer_rows)

    settings = results.get("settings", {})
    settings_md = "\n".join(f"- `{k}`: {v}" for k, v in settings.items()) or "- not yet run"
    if settings.get("max_train_samples") or settings.get("max_test_samples"):
        warning = ("**Subset run (smoke test): `max_train_samples`/`max_test_samples` are set; these numbers are "
                   "not the CPU-scale results.**\n\n")
        table2_md, transfer_md, settings_md = (warning + t for t in (table2_md, transfer_md, settings_md))
    command = results.get("command")
    if command:
        settings_md += f"\n\nRegenerate with:\n\n```bash\n{command}\n```"
    machine = results.get("machine", {})
    machine_md = "\n".join(f"- {k}: {v}" for k, v in machine.items()) or "- not yet run"
    return {"cifar10-table": table2_md, "cifar10-transfer": transfer_md, "cifar10-settings": settings_md,
            "cifar10-machine": machine_md}  # fmt: skip


def write_reports(results: dict[str, Any], args: argparse.Namespace) -> list[Path]:
    """JSON, Markdown, figures and the ``docs/results.md`` blocks; returns the files written."""
    out = args.output_dir
    written = [out / f"{EXPERIMENT}.json"]
    common.save_json(written[0], results)
    blocks = tables(results)
    figures = []
    trained = [{"label": ROWS[k].label, "method": ROWS[k].method, "antialias": ROWS[k].antialias, **v}
               for k, v in results["rows"].items() if k in ROWS]  # fmt: skip
    if trained:
        figures.append(plots.plot_accuracy_vs_consistency(trained, out / "cifar10_accuracy_vs_consistency.png"))
    grids = results.get("heatmap", {}).get("grids", {})
    if grids:
        figures.append(plots.plot_consistency_heatmaps(
            {ROWS[k].label: v for k, v in grids.items()}, out / "cifar10_shift_heatmap.png",
            num_images=results["heatmap"]["images"]))  # fmt: skip
    markdown = [
        "# CIFAR-10 at CPU scale (paper Tables 2-4)", "",
        "Generated by `benchmarks/reproduce_cifar10.py`; see `docs/results.md` for the caveats.", "",
        "## Table 2 rows", "", blocks["cifar10-table"], "",
        "## Weight transfer and fine-tune", "", blocks["cifar10-transfer"], "",
        "## Figures", "", *[f"![{p.stem}]({p.name})" for p in figures], "",
        "## Settings", "", blocks["cifar10-settings"], "", "## Machine", "", blocks["cifar10-machine"], "",
    ]  # fmt: skip
    (out / f"{EXPERIMENT}.md").write_text("\n".join(markdown))
    written += [out / f"{EXPERIMENT}.md", *figures]
    results_md = common.results_markdown(args.results_md, out)
    if results_md is not None:
        captions = {"cifar10_accuracy_vs_consistency": "Accuracy vs circular consistency, CIFAR-10 ResNet-20",
                    "cifar10_shift_heatmap": "Agreement with the unshifted prediction for every shift (dy, dx)"}
        blocks["cifar10-figures"] = "\n\n".join(
            f"![{captions.get(p.stem, p.stem)}]({common.relative_to(p, results_md.parent)})" for p in figures
        ) or "Figures: not yet run."
        common.fill_markers(results_md, blocks)
        written.append(results_md)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every stage that is not done yet; returns the results dict (also written to JSON)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rows = parse_rows(args.rows, list(ROWS), "rows")
    transfers = parse_rows(args.transfer, list(TRANSFER_LABELS), "transfer")
    heatmap_rows = parse_rows(args.heatmap_rows, list(ROWS), "heatmap-rows")
    common.configure_threads(args.threads)
    common.quiet_lightning()
    if args.estimate_steps:
        return estimate(rows, transfers, heatmap_rows, args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = common.load_results(args.output_dir / f"{EXPERIMENT}.json")
    results.update(experiment=EXPERIMENT, settings=schedule_settings(args))
    record = common.RunRecord(results, script=Path(__file__).name, argv=argv, threads=args.threads)

    trained: set[str] = set()
    for key in rows:
        stored = results["rows"].get(key)
        if stored is not None and stored.get("settings") == schedule_settings(args) and not args.force:
            common.log(f"[{key}] done already (acc {common.fmt_pct(stored['acc'])}%), skipping")
            continue
        record.computing()
        train_row(key, args, results)
        trained.add(key)
        write_reports(results, args)

    if transfers:
        checkpoint = baseline_checkpoint(args, results, trained)
        if "baseline" in trained:  # a new baseline invalidates its conversions
            results["transfer"] = {}
        results.setdefault("transfer", {})
        for method in transfers:
            stored = results["transfer"].get(method, {})
            expected = {"transfer": method, "finetune_epochs": args.finetune_epochs,
                        "finetune_lr": args.finetune_lr, **schedule_settings(args)}  # fmt: skip
            if stored.get("settings") == expected and not args.force:
                common.log(f"[transfer {method}] done already, skipping")
                continue
            record.computing()
            results["transfer"][method] = transfer(method, args, checkpoint, results["rows"]["baseline"])
            write_reports(results, args)

    if heatmap_rows:
        stored = results.get("heatmap", {})
        expected = {"heatmap_images": args.heatmap_images, **schedule_settings(args)}
        missing = [k for k in heatmap_rows if k not in stored.get("grids", {})
                   and (args.work_dir / k / "final.ckpt").is_file()]  # fmt: skip
        if stored.get("settings") != expected or missing or trained & set(heatmap_rows) or args.force:
            record.computing()
            results["heatmap"] = heatmap(heatmap_rows, args)

    record.finish()
    for path in write_reports(results, args):
        common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
