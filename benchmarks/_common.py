"""Shared pieces of the reproduction scripts: threads, timing, resumable results, Markdown.

The scripts keep one JSON file per experiment (``docs/results/<name>.json``) that holds
the settings and every finished row. A row is skipped on a re-run when the file already
holds it with the same settings, so an interrupted run resumes where it stopped;
checkpoints live under ``outputs/`` (ignored by git). Tables are written to
``docs/results/<name>.md`` and, between ``<!-- BEGIN key -->`` / ``<!-- END key -->``
markers, into ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402
from lightning.pytorch import Callback, LightningModule, Trainer  # noqa: E402

__all__ = [
    "REPO_ROOT",
    "CheckpointEvery",
    "RunRecord",
    "Timings",
    "add_run_arguments",
    "command_line",
    "configure_threads",
    "fill_markers",
    "fmt_mean_std",
    "fmt_pct",
    "latest_checkpoint",
    "library_fingerprint",
    "load_results",
    "log",
    "machine_info",
    "markdown_table",
    "mean_std",
    "parse_choices",
    "quiet_lightning",
    "readme_markdown",
    "relative_to",
    "results_markdown",
    "save_json",
    "shift_agreement_grid",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root (parent of ``benchmarks/``)."""


def quiet_lightning() -> None:
    """Keep the console to the scripts' own progress lines (Lightning's info and routine warnings off)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
                    ".*mid-epoch checkpoint.*"):
        warnings.filterwarnings("ignore", message=message)


def configure_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and one inter-op thread) for torch on CPU."""
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}.")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set once in this process
        pass


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, core count, threads used and library versions, for the results files."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning
    import torchvision

    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "lightning": lightning.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def library_fingerprint() -> dict[str, str]:
    """The version of ``mass_lightning`` and a SHA-256 over its Python sources (first 16 hex digits).

    Stored with every result, so results computed by another version of the library (a
    changed conversion engine, say) can be told apart and re-run.
    """
    import mass_lightning

    package = Path(mass_lightning.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return {"version": mass_lightning.__version__, "source_sha256": digest.hexdigest()[:16]}


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` of ``values``; ``std`` is the sample std (``None`` for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std: no values.")
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "std": std, "n": len(values), "values": values}


def fmt_mean_std(stat: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    """``"92.03 ± 0.19"`` for several runs, ``"92.03"`` for one (``stat`` from :func:`mean_std`, times ``scale``)."""
    if stat is None:
        return "not yet run"
    text = f"{scale * stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ± {scale * stat['std']:.{digits}f}"
    return text


def load_results(path: Path) -> dict[str, Any]:
    """The JSON results at ``path``, or an empty ``{"rows": {}}`` if there are none yet."""
    if not path.is_file():
        return {"rows": {}}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Results file '{path}' is not valid JSON ({error}). Delete it to start over, or restore it."
        ) from error
    data.setdefault("rows", {})
    return data


def save_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def fmt_pct(value: float | None, digits: int = 2) -> str:
    """``0.92031 -> "92.03"``; ``None`` -> ``"not yet run"``."""
    if value is None:
        return "not yet run"
    return f"{100.0 * float(value):.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table (first column left-aligned, the others right-aligned)."""
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fill_markers(path: Path, blocks: Mapping[str, str]) -> list[str]:
    """Replace the text between ``<!-- BEGIN key -->`` and ``<!-- END key -->`` in ``path``.

    Args:
        path: A Markdown file holding the markers (e.g. ``docs/results.md``).
        blocks: ``key -> new content`` (without the markers).

    Returns:
        The keys that were found and replaced; missing markers are left alone.
    """
    text = path.read_text()
    replaced = []
    for key, content in blocks.items():
        begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            continue
        text = text[: start + len(begin)] + "\n" + content.strip("\n") + "\n" + text[stop:]
        replaced.append(key)
    path.write_text(text)
    return replaced


def latest_checkpoint(folder: Path, settings: Mapping[str, Any]) -> Path | None:
    """``folder/last.ckpt`` if it was written with the same ``settings`` (else ``None``).

    The settings are kept in ``folder/settings.json``; a mismatch (another schedule)
    deletes neither file but starts the row from scratch.
    """
    ckpt, saved = folder / "last.ckpt", folder / "settings.json"
    if ckpt.is_file() and saved.is_file():
        try:
            if json.loads(saved.read_text()) == json.loads(json.dumps(dict(settings))):
                return ckpt
        except json.JSONDecodeError:
            return None
    return None


class CheckpointEvery(Callback):
    """Save ``folder/last.ckpt`` after every epoch (and every ``every_n_steps`` steps).

    Args:
        folder: Where ``last.ckpt`` and ``settings.json`` go.
        settings: The run's settings, stored next to the checkpoint for :func:`latest_checkpoint`.
        every_n_steps: Also save after every ``every_n_steps`` optimiser steps (0 = per epoch only).
    """

    def __init__(self, folder: Path, settings: Mapping[str, Any], every_n_steps: int = 0) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.settings = dict(settings)
        self.every_n_steps = every_n_steps

    def _save(self, trainer: Trainer) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_json(self.folder / "settings.json", self.settings)
        tmp = self.folder / "last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        tmp.replace(self.folder / "last.ckpt")

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer)


class Timings(Callback):
    """Wall-clock and process-CPU seconds of every training epoch and step, printed as it goes.

    A step is timed from the end of the previous one, so it includes waiting for data.
    CPU seconds count the work of all threads of this process, so on a machine shared
    with other jobs ``cpu_seconds / threads`` estimates what the wall time would be on
    a quiet machine.

    Args:
        label: Name printed in front of the progress lines.
        print_every: Print a line every this many steps (0 = only per epoch).
        path: A JSON file that keeps the per-epoch records after every epoch.
        resume: Start from the records in ``path`` (for a run resumed from a checkpoint).
    """

    def __init__(self, label: str, print_every: int = 0, path: Path | None = None, resume: bool = False) -> None:
        super().__init__()
        self.label = label
        self.print_every = print_every
        self.path = path
        self.epochs: list[dict[str, float]] = []
        if resume and path is not None and Path(path).is_file():
            self.epochs = list(json.loads(Path(path).read_text()).get("epochs", []))
        self.step_seconds: list[float] = []
        self.step_cpu_seconds: list[float] = []
        self._epoch_start = (0.0, 0.0)
        self._step_start = (0.0, 0.0)

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = self._step_start = self._now()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # From the previous step's end: includes waiting for the batch (data loading).
        wall, cpu = self._now()
        self.step_seconds.append(wall - self._step_start[0])
        self.step_cpu_seconds.append(cpu - self._step_start[1])
        self._step_start = (wall, cpu)
        if self.print_every and trainer.global_step % self.print_every == 0:
            loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
            loss_text = f"loss {float(loss):.4f}, " if loss is not None else ""
            print(f"[{self.label}] step {trainer.global_step}/{trainer.max_steps if trainer.max_steps > 0 else '?'}: "
                  f"{loss_text}{self.step_seconds[-1]:.2f} s/step", flush=True)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        wall, cpu = self._now()
        record = {"epoch": trainer.current_epoch, "seconds": wall - self._epoch_start[0],
                  "cpu_seconds": cpu - self._epoch_start[1]}
        loss = trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None:
            record["train_loss"] = float(loss)
        self.epochs.append(record)
        if self.path is not None:
            save_json(Path(self.path), {"epochs": self.epochs})
        loss_text = f", train loss {record['train_loss']:.4f}" if "train_loss" in record else ""
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        print(f"[{self.label}] epoch {trainer.current_epoch + 1}{of}: {record['seconds']:.1f} s "
              f"(cpu {record['cpu_seconds']:.1f} s){loss_text}", flush=True)

    def summary(self) -> dict[str, Any]:
        """Per-epoch records and the median step times (the first step, a warm-up, is left out)."""
        steps = self.step_seconds[1:] or self.step_seconds
        cpu_steps = self.step_cpu_seconds[1:] or self.step_cpu_seconds
        median = lambda values: float(sorted(values)[len(values) // 2]) if values else None  # noqa: E731
        return {
            "epochs": self.epochs,
            "train_seconds": sum(e["seconds"] for e in self.epochs) if self.epochs else sum(self.step_seconds),
            "steps": len(self.step_seconds),
            "median_step_seconds": median(steps),
            "min_step_seconds": min(steps) if steps else None,
            "median_step_cpu_seconds": median(cpu_steps),
        }


@torch.no_grad()
def shift_agreement_grid(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """Per circular shift ``(dy, dx)``: the fraction of images whose class is unchanged by it.

    Entry ``[dy, dx]`` is ``mean_n 1[argmax f(roll(x_n, (dy, dx))) == argmax f(x_n)]`` over
    every offset of the ``H x W`` grid, so ``[0, 0]`` is 1 and an exactly shift-invariant
    classifier gives 1 everywhere.

    Args:
        model: A classifier in eval mode, ``(B, C, H, W) -> (B, K)``.
        images: ``(N, C, H, W)`` normalised images.
        batch_size: Shifted images per forward pass.

    Returns:
        ``(H, W)`` float tensor in ``[0, 1]``.

    Shape:
        - images: :math:`(N, C, H, W)`.
        - Output: :math:`(H, W)`.
    """
    if images.dim() != 4:
        raise ValueError(f"shift_agreement_grid: images must be (N, C, H, W), got shape {tuple(images.shape)}.")
    num, _, height, width = images.shape
    reference = model(images).argmax(1)
    agree = torch.zeros(height * width)
    offsets = [(dy, dx) for dy in range(height) for dx in range(width)]
    per_batch = max(1, batch_size // num)
    for start in range(0, len(offsets), per_batch):
        chunk = offsets[start : start + per_batch]
        shifted = torch.cat([torch.roll(images, shifts=offset, dims=(-2, -1)) for offset in chunk])
        labels = model(shifted).argmax(1).view(len(chunk), num)
        agree[start : start + len(chunk)] = (labels == reference).float().mean(1)
    return agree.view(height, width)


def results_markdown(requested: Path | None, output_dir: Path) -> Path | None:
    """The Markdown file to fill: ``requested`` if given, ``docs/results.md`` for the default output folder.

    Runs into any other folder (smoke tests, GPU runs) leave ``docs/results.md`` alone.
    """
    if requested is not None:
        if not Path(requested).is_file():
            raise FileNotFoundError(f"--results-md {requested}: no such file. Pass an existing Markdown file with "
                                    "<!-- BEGIN ... --> / <!-- END ... --> markers, or leave it out.")
        return Path(requested)
    default = REPO_ROOT / "docs" / "results.md"
    if Path(output_dir).resolve() == (REPO_ROOT / "docs" / "results").resolve() and default.is_file():
        return default
    return None


def readme_markdown(output_dir: Path) -> Path | None:
    """``README.md`` when ``output_dir`` is the default ``docs/results`` (its CPU-scale tables), else ``None``."""
    readme = REPO_ROOT / "README.md"
    if Path(output_dir).resolve() == (REPO_ROOT / "docs" / "results").resolve() and readme.is_file():
        return readme
    return None


def relative_to(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start``, with forward slashes (for Markdown links)."""
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def command_line(script: str, argv: Sequence[str]) -> str:
    """The shell command that re-runs ``script`` with ``argv`` (for the results files)."""
    args = " ".join(_quote(a) for a in argv)
    return f"NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/{script}{' ' + args if args else ''}"


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=,:" for c in arg) else json.dumps(arg)


def parse_choices(text: str, choices: Mapping[str, str], option: str) -> list[str]:
    """``"MASS-LPF-3, aps"`` -> ``["mass_lpf3", "aps"]``: comma-separated keys or labels of ``choices``, any case.

    Args:
        text: The option's value; ``"all"`` selects every key.
        choices: ``key -> label``.
        option: The option's name, for the error message (``"methods"``).

    Returns:
        The keys in the order given, without repeats.
    """
    normal = lambda name: name.strip().lower().replace("-", "_").replace(" ", "_")  # noqa: E731
    aliases = {normal(key): key for key in choices} | {normal(label): key for key, label in choices.items()}
    keys: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        found = list(choices) if normal(item) == "all" else [aliases.get(normal(item))]
        if found == [None]:
            raise SystemExit(f"--{option}: unknown entry {item!r}; choose from {', '.join(choices)} (or all).")
        keys += [key for key in found if key not in keys]
    return keys


def log(message: str) -> None:
    """Print a progress line to stdout at once."""
    print(message, file=sys.stdout, flush=True)


def add_run_arguments(parser: argparse.ArgumentParser, experiment: str, *, budget_minutes: float,
                      budget_of: str) -> None:
    """The options every reproduction script shares: where results go, threads, resuming, estimating.

    Args:
        parser: The script's parser.
        experiment: Name of the experiment (``outputs/reproduce_<experiment>`` holds its checkpoints).
        budget_minutes: Default of ``--budget-minutes``.
        budget_of: What the budget covers, for the help text (e.g. "both models together").
    """
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "docs" / "results")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "outputs" / f"reproduce_{experiment}",
                        help="Checkpoints and logs (git-ignored).")
    parser.add_argument("--results-md", type=Path, default=None,
                        help="Markdown file whose BEGIN/END markers get the tables; default: docs/results.md when "
                             "--output-dir is docs/results, else none.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    parser.add_argument("--num-workers", type=int, default=1, help="Data-loading worker processes.")
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu, auto).")
    parser.add_argument("--force", action="store_true", help="Re-run what is done already.")
    parser.add_argument("--estimate-steps", type=int, default=0,
                        help="Only time this many training steps per model on the real data, project the run "
                             "time of the chosen settings, and exit (writes nothing).")
    parser.add_argument("--budget-minutes", type=float, default=budget_minutes,
                        help=f"With --estimate-steps: the time {budget_of} should fit in.")


class RunRecord:
    """Stamps a results dict with the machine, command, library and run time of the run that computed it.

    A later call that finds every result done and only rewrites the reports leaves the
    recorded machine, command and ``last_run_seconds`` as they were.

    Usage::

        record = RunRecord(results, script="reproduce_cifar10.py", argv=argv, threads=2)
        record.computing()   # before each stage that computes something
        record.finish()      # sets results["last_run_seconds"] if anything was computed
    """

    def __init__(self, results: dict[str, Any], *, script: str, argv: Sequence[str], threads: int) -> None:
        self.results, self.script, self.argv, self.threads = results, script, list(argv), threads
        self.ran = False
        self._start = time.perf_counter()

    def computing(self) -> None:
        """Record that this run computes results (machine and command are stamped once)."""
        if not self.ran:
            self.results.update(machine=machine_info(self.threads), command=command_line(self.script, self.argv),
                                library=library_fingerprint())
        self.ran = True

    def finish(self) -> None:
        """Stamp the run time, if this run computed anything."""
        if self.ran:
            self.results["last_run_seconds"] = round(time.perf_counter() - self._start, 1)
