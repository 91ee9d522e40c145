"""Reproduce the MASS paper's segmentation comparison (Table 5) at CPU scale, on CamVid.

DeepLabV3+ with a ResNet-18 encoder (output stride 16), baseline (circular padding,
fixed-phase downsampling) against MASS, trained from **random initialisation** (no
pretrained weights can be downloaded offline) on CamVid (11 classes, SegNet split:
367 train / 233 test images; ``$MASS_LIGHTNING_DATA/camvid``) with the VainF/paper recipe
scaled down: SGD (momentum 0.9, weight decay 1e-4), lr 0.01 with the poly schedule,
random ``--crop-size`` crops with horizontal flips, ``--steps`` iterations at batch
``--batch-size``. Both models use the same seed (same initial weights and batches).

Evaluation on the 233 test images, centre-cropped to ``--eval-size`` (352x480 by default,
which every stage divides): mIoU, pixel accuracy, and mASCC (eq. 5) from two seeded
random circular shifts per image, the same shifts for both models. A figure shows one
test image with both models' predictions at two shifts and where they disagree.

Results go to ``<output-dir>/camvid.json`` and ``camvid.md``, the PNG next to them, and
the tables into ``docs/results.md`` (its ``<!-- BEGIN camvid-... -->`` blocks) when that
file sits next to the output folder. Checkpoints go to ``--work-dir`` (git-ignored).
Each model is resumable (skipped when done, continued from its last epoch otherwise).

Usage (the CPU-scale run of ``docs/results.md``)::

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/reproduce_camvid.py --output-dir docs/results
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402
import plots  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch import Trainer, seed_everything  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from mass_lightning.data import CamVidDataModule  # noqa: E402
from mass_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from mass_lightning.metrics import ShiftSampler, roll_per_sample, unroll_per_sample  # noqa: E402
from mass_lightning.tasks import SegmentationTask  # noqa: E402

EXPERIMENT = "camvid"
DEFAULT_STEPS = 300  # about 35 min for both models on 2 cores
MODELS = {"baseline": "Baseline", "mass": "MASS"}
NUM_CLASSES, IGNORE_INDEX = 11, 255


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", default="baseline,mass", help="Models to train (comma-separated).")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="Training iterations of each model.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.01, help="Peak learning rate (poly schedule, power 0.9).")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--crop-size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"),
                        help="Random training crops (multiples of 32).")
    parser.add_argument("--eval-size", type=int, nargs=2, default=(352, 480), metavar=("H", "W"),
                        help="Centre crop of the test images (multiples of 32).")
    parser.add_argument("--eval-batch-size", type=int, default=4,
                        help="Test batch size (the evaluation shifts are drawn per batch, so keep it fixed).")
    parser.add_argument("--seed", type=int, default=0, help="Seeds weights, crops, batch order and shifts.")
    parser.add_argument("--max-train-samples", type=int, default=None, help="Train on a seeded subset (smoke tests).")
    parser.add_argument("--max-test-samples", type=int, default=None, help="Test on a seeded subset (smoke tests).")
    parser.add_argument("--figure-image", type=int, default=0, help="Index of the test image of the figure.")
    parser.add_argument("--data-root", default=None, help="CamVid folder; default $MASS_LIGHTNING_DATA/camvid.")
    common.add_run_arguments(parser, EXPERIMENT, budget_minutes=60.0, budget_of="both models together")
    return parser


def parse_models(text: str) -> list[str]:
    return common.parse_choices(text, MODELS, "models")


def datamodule(args: argparse.Namespace, train: bool) -> CamVidDataModule:
    return CamVidDataModule(
        root=args.data_root,
        crop_size=tuple(args.crop_size),
        eval_size=tuple(args.eval_size),
        batch_size=args.batch_size if train else args.eval_batch_size,
        num_workers=args.num_workers,
        max_samples=args.max_train_samples if train else args.max_test_samples,
        seed=args.seed,
    )


def trainer(args: argparse.Namespace, **kwargs: Any) -> Trainer:
    defaults = dict(accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                    num_sanity_val_steps=0)
    return Trainer(**{**defaults, **kwargs})


def make_task(method: str, args: argparse.Namespace) -> SegmentationTask:
    return SegmentationTask(arch="deeplabv3plus", encoder="resnet18", method=method, num_classes=NUM_CLASSES,
                            output_stride=16, encoder_weights=None, ignore_index=IGNORE_INDEX, lr=args.lr,
                            weight_decay=args.weight_decay, schedule="poly", consistency_seed=args.seed)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that changes a model's numbers (a stored model with other settings is re-run)."""
    return {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "momentum": 0.9, "schedule": "poly (power 0.9)", "crop_size": list(args.crop_size),
        "eval_size": list(args.eval_size), "eval_mode": "centre crop", "eval_batch_size": args.eval_batch_size,
        "seed": args.seed, "init": "random (no pretrained encoder)", "output_stride": 16,
        "augmentation": "random crop + horizontal flip", "max_train_samples": args.max_train_samples,
        "max_test_samples": args.max_test_samples,
    }  # fmt: skip


def evaluate(task: SegmentationTask, args: argparse.Namespace) -> dict[str, Any]:
    """mIoU, pixel accuracy and mASCC on the test split."""
    data = datamodule(args, train=False)
    start = time.perf_counter()
    metrics = trainer(args).test(task, datamodule=data, verbose=False)[0]
    return {
        "miou": float(metrics["test/miou"]),
        "pixel_acc": float(metrics["test/pixel_acc"]),
        "mascc": float(metrics["test/mascc"]),
        "test_images": len(data.dataset("test")),
        "eval_seconds": round(time.perf_counter() - start, 1),
    }


def train_model(key: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Train and evaluate one model; store it in ``results["rows"]``."""
    settings = settings_of(args)
    folder = args.work_dir / key
    common.log(f"[{key}] training DeepLabV3+ ResNet-18 ({MODELS[key]}, random init) for {args.steps} steps")
    seed_everything(args.seed, workers=True, verbose=False)
    task = make_task(key, args)
    resume = None if args.force else common.latest_checkpoint(folder, {"model": key, **settings})
    if resume is not None:
        common.log(f"[{key}] resuming from {resume}")
    timings = common.Timings(key, print_every=25, path=folder / "timings.json", resume=resume is not None)
    run = trainer(args, max_steps=args.steps, max_epochs=-1, log_every_n_steps=10,
                  logger=CSVLogger(str(folder), name="logs"),
                  callbacks=[timings, common.CheckpointEvery(folder, {"model": key, **settings})])
    run.fit(task, datamodule=datamodule(args, train=True), ckpt_path=str(resume) if resume else None)
    run.save_checkpoint(folder / "final.ckpt")
    metrics = evaluate(task, args)
    common.log(f"[{key}] mIoU {common.fmt_pct(metrics['miou'])}%, mASCC {common.fmt_pct(metrics['mascc'])}%")
    results["rows"][key] = {"label": MODELS[key], "method": key, **metrics,
                            "train": {**timings.summary(), "resumed": resume is not None}, "settings": settings}


def figure(args: argparse.Namespace, results: dict[str, Any]) -> Path | None:
    """One test image, both models' predictions at two seeded shifts, and their disagreement."""
    checkpoints = {key: args.work_dir / key / "final.ckpt" for key in MODELS}
    if not all(path.is_file() for path in checkpoints.values()):
        common.log("[figure] skipped: needs the checkpoints of both models")
        return None
    dataset = datamodule(args, train=False).dataset("test")
    index = min(max(0, args.figure_image), len(dataset) - 1)
    image, target = dataset[index]
    height, width = image.shape[-2:]
    shifts_a, shifts_b = ShiftSampler(args.seed).sample_pair(1, height, width, batch_idx=index)
    predictions, disagreement = {}, {}
    for key, path in checkpoints.items():
        model = SegmentationTask.load_from_checkpoint(path, map_location="cpu").model.eval()
        with torch.no_grad():
            pair = [unroll_per_sample(model(roll_per_sample(image[None], s)).argmax(1), s)[0].numpy()
                    for s in (shifts_a, shifts_b)]  # fmt: skip
        predictions[MODELS[key]] = pair
        differ, valid = pair[0] != pair[1], target.numpy() != IGNORE_INDEX
        disagreement[key] = {"all_pixels": float(differ.mean()),
                             "labelled_pixels": float(differ[valid].mean()) if valid.any() else float(differ.mean())}
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    picture = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
    path = plots.plot_segmentation_shifts(picture, target.numpy(), predictions,
                                          [shifts_a[0].tolist(), shifts_b[0].tolist()],
                                          args.output_dir / "camvid_shift_predictions.png")
    results["figure"] = {"test_index": index, "shifts": [shifts_a[0].tolist(), shifts_b[0].tolist()],
                         "disagreement": disagreement, "file": path.name, "settings": settings_of(args)}
    return path


def estimate(models: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time ``--estimate-steps`` training steps and one test forward per model; project the run time."""
    test_images = len(CamVidDataModule(root=args.data_root, num_workers=0).dataset("test"))
    args.max_train_samples = args.max_train_samples or (args.estimate_steps + 1) * args.batch_size
    measured = {}
    for key in models:
        seed_everything(args.seed, workers=True, verbose=False)
        task = make_task(key, args)
        timings = common.Timings(f"estimate {key}")
        trainer(args, max_steps=args.estimate_steps + 1, max_epochs=-1, callbacks=[timings]).fit(
            task, datamodule=datamodule(args, train=True))
        task.eval()
        image = torch.randn(1, 3, *args.eval_size)
        with torch.no_grad():
            task(image)
            start = time.perf_counter()
            task(image)
            forward = time.perf_counter() - start
        summary = timings.summary()
        measured[key] = {"step_seconds": summary["median_step_seconds"], "fastest_step_seconds":
                         summary["min_step_seconds"], "step_cpu_seconds": summary["median_step_cpu_seconds"],
                         "train_minutes": summary["median_step_seconds"] * args.steps / 60,
                         "eval_minutes": 3 * test_images * forward / 60}  # fmt: skip
    total = sum(m["train_minutes"] + m["eval_minutes"] for m in measured.values())
    evals = sum(m["eval_minutes"] for m in measured.values())
    per_step = sum(m["step_seconds"] for m in measured.values()) / 60
    fits = max(0, math.floor((args.budget_minutes - evals) / per_step)) if per_step else 0
    lines = [common.markdown_table(
        ["Model", "s/step (median wall)", "s/step (fastest)", "s/step (median cpu)", "train (min)", "eval (min)"],
        [[MODELS[k], f"{m['step_seconds']:.2f}", f"{m['fastest_step_seconds']:.2f}", f"{m['step_cpu_seconds']:.2f}",
          f"{m['train_minutes']:.1f}", f"{m['eval_minutes']:.1f}"] for k, m in measured.items()])]  # fmt: skip
    lines += [
        f"{args.steps} steps at batch {args.batch_size}, crops {args.crop_size[0]}x{args.crop_size[1]}; "
        f"{test_images} test images at {args.eval_size[0]}x{args.eval_size[1]} x 3 forward passes.",
        f"Total for {', '.join(models)}: {total:.0f} min. Steps that fit in {args.budget_minutes:.0f} min: {fits}.",
    ]
    common.log("\n".join(lines))
    return {"models": measured, "total_minutes": total, "steps_in_budget": fits}


def tables(results: dict[str, Any]) -> dict[str, str]:
    """Markdown blocks ``camvid-table``, ``camvid-settings`` and ``camvid-machine``."""
    rows = []
    for key, label in MODELS.items():
        found = results.get("rows", {}).get(key)
        if found is None:
            rows.append([f"DeepLabV3+ ResNet-18, {label}", "not yet run", "not yet run", "not yet run", ""])
            continue
        rows.append([f"DeepLabV3+ ResNet-18, {label}", common.fmt_pct(found["miou"]),
                     common.fmt_pct(found["pixel_acc"]), common.fmt_pct(found["mascc"]),
                     f"{found['train']['train_seconds'] / 60:.1f}"])
    table = common.markdown_table(["Model (random init)", "mIoU (%)", "Pixel acc. (%)", "mASCC (%)",
                                   "Train time (min)"], rows)
    fig = results.get("figure")
    if fig:
        parts = [f"{MODELS[k]} {100 * v['labelled_pixels']:.2f}%" for k, v in fig["disagreement"].items()]
        table += (f"\n\nFigure image (test #{fig['test_index']}, shifts {fig['shifts'][0]} and {fig['shifts'][1]}): "
                  f"labelled pixels whose class differs between the two shifts: {', '.join(parts)}.")
    settings = results.get("settings", {})
    settings_md = "\n".join(f"- `{k}`: {v}" for k, v in settings.items()) or "- not yet run"
    if settings.get("max_train_samples") or settings.get("max_test_samples"):
        warning = ("**Subset run (smoke test): `max_train_samples`/`max_test_samples` are set; these numbers are "
                   "not the CPU-scale results.**\n\n")
        table, settings_md = warning + table, warning + settings_md
    if results.get("command"):
        settings_md += f"\n\nRegenerate with:\n\n```bash\n{results['command']}\n```"
    machine_md = "\n".join(f"- {k}: {v}" for k, v in results.get("machine", {}).items()) or "- not yet run"
    return {"camvid-table": table, "camvid-settings": settings_md, "camvid-machine": machine_md}


def write_reports(results: dict[str, Any], args: argparse.Namespace, figure_path: Path | None = None) -> list[Path]:
    out = args.output_dir
    written = [out / f"{EXPERIMENT}.json"]
    common.save_json(written[0], results)
    blocks = tables(results)
    figure_file = results.get("figure", {}).get("file")
    markdown = [
        "# CamVid segmentation at CPU scale (paper Table 5)", "",
        "Generated by `benchmarks/reproduce_camvid.py`; see `docs/results.md` for the caveats.", "",
        blocks["camvid-table"], "",
        *([f"![camvid shifts]({figure_file})", ""] if figure_file else []),
        "## Settings", "", blocks["camvid-settings"], "", "## Machine", "", blocks["camvid-machine"], "",
    ]  # fmt: skip
    (out / f"{EXPERIMENT}.md").write_text("\n".join(markdown))
    written.append(out / f"{EXPERIMENT}.md")
    if figure_path is not None:
        written.append(figure_path)
    results_md = common.results_markdown(args.results_md, out)
    if results_md is not None:
        blocks["camvid-figure"] = (
            f"![CamVid test image: baseline vs MASS predictions at two shifts, disagreement in red]"
            f"({common.relative_to(out / figure_file, results_md.parent)})" if figure_file else "Figure: not yet run."
        )
        common.fill_markers(results_md, blocks)
        written.append(results_md)
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train/evaluate the models that are not done yet, draw the figure, write the reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    models = parse_models(args.models)
    common.configure_threads(args.threads)
    common.quiet_lightning()
    if args.estimate_steps:
        return estimate(models, args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results = common.load_results(args.output_dir / f"{EXPERIMENT}.json")
    results.update(experiment=EXPERIMENT, settings=settings_of(args))
    record = common.RunRecord(results, script=Path(__file__).name, argv=argv, threads=args.threads)
    trained = False
    for key in models:
        stored = results["rows"].get(key)
        if stored is not None and stored.get("settings") == settings_of(args) and not args.force:
            common.log(f"[{key}] done already (mIoU {common.fmt_pct(stored['miou'])}%), skipping")
            continue
        record.computing()
        train_model(key, args, results)
        write_reports(results, args)
        trained = True
    figure_path: Path | None = args.output_dir / "camvid_shift_predictions.png"
    if trained or results.get("figure", {}).get("settings") != settings_of(args) or not figure_path.is_file():
        record.computing()
        figure_path = figure(args, results)
    record.finish()
    for path in write_reports(results, args, figure_path):
        common.log(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
