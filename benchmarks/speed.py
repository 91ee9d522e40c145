"""Speed and memory of exactly shift-equivariant CNNs, side by side with their originals.

Every architecture runs as

* ``original``: the torchvision model (zero padding), the reference;
* ``circular``: every conv and pool circularly padded (``convert(method="baseline")``);
* ``mass``: MASS (``convert(method="mass")``);
* ``aps``: adaptive polyphase sampling (``convert(method="aps")``);
* ``lpf3``: this project's blur-then-subsample baseline (``convert(method="baseline",
  antialias="lpf3")``);
* ``blurpool``: the ``antialiased_cnns`` package's BlurPool model (``filter_size=3``), where
  that optional package is installed and has the architecture.

All variants of an architecture hold the same weights (random, seeded: nothing is
downloaded). Measured, in one process:

* inference time: ``eval()``, ``torch.no_grad()``, one forward pass of a batch;
* training-step time: ``train()``, forward, cross-entropy, backward, SGD step;
* peak memory of a training step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
  running total of the allocations and frees that PyTorch's CPU allocator reports to
  ``torch.profiler`` (``profile_memory=True``) during one step. Both are reported as the
  bytes held by the model's parameters, buffers and optimizer state plus the peak of what
  the step allocates on top (activations, gradients, temporaries). Scratch memory that a
  backend allocates outside PyTorch's allocator (oneDNN, cuDNN workspaces on CPU) is not
  seen.

Timings are made robust to a shared, noisy machine. After a warm-up pass of every variant,
each round times every variant once, in an order that rotates from round to round, and the
report keeps the minimum and the median over the rounds. Ratios are taken against the
architecture's ``original`` variant measured in the same run: the headline is the median of
the per-round ratios (paired, so a slow spell of the machine hits both sides), the ratio of
the minima is given too. On CPU the headline clock is the CPU time of the process
(``time.process_time``: user + system, so page faults count) with one thread by default:
wall time on a shared machine mostly measures the other jobs' time slices. Wall times are
kept in the JSON too. On CUDA the clock is wall time, synchronised.

Usage::

    python benchmarks/speed.py                      # all models, CPU, 5-10 min on 2 slow cores
    python benchmarks/speed.py --models resnet18 --batch-size 8 --rounds 9
    python benchmarks/speed.py --models resnet18 --methods original mass --compile
    python benchmarks/speed.py --quick --output-dir /tmp/bench   # seconds, a smoke run

Outputs ``speed.json`` and ``speed.md`` in ``--output-dir`` (default ``docs/benchmarks``)
and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from mass_lightning import convert  # noqa: E402

MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "convnext_tiny": torchvision.models.convnext_tiny,
}
METHODS = ("original", "circular", "mass", "aps", "lpf3", "blurpool")
BLURPOOL_FILTER_SIZE = 3


def build_variant(name: str, original: nn.Module, method: str) -> nn.Module | None:
    """One variant of ``original`` (same weights), or ``None`` if it is not available."""
    if method == "original":
        return copy.deepcopy(original)
    if method == "circular":
        return convert(original, method="baseline")
    if method in ("mass", "aps"):
        return convert(original, method=method)
    if method == "lpf3":
        return convert(original, method="baseline", antialias="lpf3")
    if method == "blurpool":
        return _blurpool(name, original)
    raise ValueError(f"Unknown method {method!r}; choose from {', '.join(METHODS)}.")


def _blurpool(name: str, original: nn.Module) -> nn.Module | None:
    try:
        import antialiased_cnns
    except ImportError:
        return None
    builder = getattr(antialiased_cnns, name, None)
    if builder is None:
        return None
    model = builder(pretrained=False, filter_size=BLURPOOL_FILTER_SIZE)
    antialiased_cnns.copy_params_buffers(original, model)
    return model


class Runner:
    """Times the inference and the training step of one model variant."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, compiled: bool = False
    ) -> None:
        self.model = model.to(device)
        self.images, self.labels, self.device = images, labels, device
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.compiled = compiled

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.forward(self.images)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()

    def timed(self, fn: Callable[[], None]) -> tuple[float, float]:
        """``(wall seconds, CPU seconds of this process)`` of one call of ``fn``."""
        _synchronize(self.device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        _synchronize(self.device)
        return time.perf_counter() - wall, time.process_time() - cpu

    def persistent_bytes(self) -> int:
        """Parameters, buffers and optimizer state (each storage counted once)."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        return sum(storages.values())

    def peak_train_bytes(self) -> int:
        """Persistent bytes plus the peak allocated on top during one training step."""
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the step
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            self.train_step()
            torch.cuda.synchronize(self.device)
            step_peak = torch.cuda.max_memory_allocated(self.device) - before
        else:
            step_peak = _cpu_step_peak(self.train_step)
        return self.persistent_bytes() + step_peak


def _cpu_step_peak(fn: Callable[[], None]) -> int:
    """Peak of the running total of CPU allocations minus frees while ``fn`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = [e for e in events if e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark_model(
    name: str, methods: list[str], args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> dict[str, Any]:
    """All measurements of one architecture; times in seconds, memory in bytes."""
    torch.manual_seed(0)
    original = MODELS[name]().eval()
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (args.batch_size,), generator=generator).to(device)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    runners: dict[str, Runner] = {}
    skipped: dict[str, str] = {}
    for method in methods:
        model = build_variant(name, original, method)
        if model is None:
            skipped[method] = "antialiased_cnns not installed or has no such model"
            continue
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        runners[method] = Runner(model, images, labels, device)
        if args.compile and method in ("original", "mass"):
            runners[f"{method}+compile"] = Runner(copy.deepcopy(model), images, labels, device, compiled=True)
    all_tasks = [("inference", "infer")] + ([("train", "train_step")] if args.train else [])
    tasks = {m: all_tasks[:1] if r.compiled else all_tasks for m, r in runners.items()}
    times: dict[str, dict[str, list[float]]] = {m: {task: [] for task, _ in tasks[m]} for m in runners}
    cpu_times: dict[str, dict[str, list[float]]] = {m: {task: [] for task, _ in tasks[m]} for m in runners}
    compile_s: dict[str, float] = {}
    order = list(runners)
    log(f"{name}: warm-up of {', '.join(order)}")
    for method, runner in runners.items():
        if runner.compiled:  # the first call compiles
            compile_s[method] = runner.timed(runner.infer)[0]
        for _ in range(args.warmup):
            for _, fn in tasks[method]:
                runner.timed(getattr(runner, fn))
    for round_index in range(args.rounds):
        shift = round_index % len(order)
        for method in order[shift:] + order[:shift]:
            for task, fn in tasks[method]:
                wall, cpu = runners[method].timed(getattr(runners[method], fn))
                times[method][task].append(wall)
                cpu_times[method][task].append(cpu)
        log(f"{name}: round {round_index + 1}/{args.rounds} done")
    memory = {}
    if args.memory and args.train:
        for method, runner in runners.items():
            if not runner.compiled:
                memory[method] = runner.peak_train_bytes()
    return {"times": times, "cpu_times": cpu_times, "memory": memory, "skipped": skipped, "compile_s": compile_s}


def _stats(values: list[float], reference: list[float] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"min_s": min(values), "median_s": statistics.median(values), "rounds_s": values}
    if reference is not None:
        out["ratio_of_min"] = min(values) / min(reference)
        out["median_ratio"] = statistics.median(v / r for v, r in zip(values, reference))
    return out


def summarise(raw: dict[str, Any], clock: str, reference: str = "original") -> dict[str, Any]:
    """Min, median and ratios against ``reference`` for every method and task.

    ``clock`` (``"cpu"`` or ``"wall"``) is the one the headline numbers use; both are kept.
    """
    rows: dict[str, Any] = {}
    clocks = {"wall": raw["times"], "cpu": raw["cpu_times"]}
    memory = raw["memory"]
    for method, tasks in raw["times"].items():
        row: dict[str, Any] = {}
        for task in tasks:
            per_clock = {
                name: _stats(series[method][task], series[reference][task] if reference in series else None)
                for name, series in clocks.items()
            }
            row[task] = {**per_clock[clock], "clock": clock, "wall": per_clock["wall"], "cpu": per_clock["cpu"]}
        if method in raw.get("compile_s", {}):
            row["compile_s"] = raw["compile_s"][method]
        if method in memory:
            row["peak_train_bytes"] = memory[method]
            if reference in memory:
                row["memory_ratio"] = memory[method] / memory[reference]
        rows[method] = row
    return {"methods": rows, "skipped": raw["skipped"]}


def machine_info(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "torch_threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import antialiased_cnns  # noqa: F401

        info["antialiased_cnns"] = "installed"
    except ImportError:
        info["antialiased_cnns"] = "not installed"
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt_ratio(row: dict[str, Any], task: str) -> str:
    entry = row.get(task)
    if not entry or "ratio_of_min" not in entry:
        return "-"
    return f"{entry['median_ratio']:.2f}x ({entry['ratio_of_min']:.2f}x)"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for model, summary in results.items():
        for method, row in summary["methods"].items():
            inference, train = row.get("inference", {}), row.get("train", {})
            rows.append([
                model,
                method,
                f"{inference['min_s'] * 1e3:.0f}" if inference else "-",
                _fmt_ratio(row, "inference"),
                f"{train['min_s'] * 1e3:.0f}" if train else "-",
                _fmt_ratio(row, "train"),
                f"{row['peak_train_bytes'] / 2**20:.0f}" if "peak_train_bytes" in row else "-",
                f"{row['memory_ratio']:.2f}x" if "memory_ratio" in row else "-",
            ])
        for method, why in summary["skipped"].items():
            rows.append([model, method, "n/a", why, "", "", "", ""])
    return rows


HEADER = [
    "model",
    "method",
    "inference ms",
    "inference ratio",
    "train step ms",
    "train step ratio",
    "peak train MiB",
    "memory ratio",
]


def print_table(results: dict[str, Any]) -> None:
    rows = table_rows(results)
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Time and memory relative to each model's original (zero-padded) version: "
                      "median of per-round ratios (ratio of minima)")
        for column in HEADER:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        Console(width=max(132, shutil.get_terminal_size().columns)).print(table)
    except ImportError:
        print(" | ".join(HEADER))
        for row in rows:
            print(" | ".join(row))


def markdown(results: dict[str, Any], info: dict[str, Any], args: dict[str, Any]) -> str:
    lines = [
        "# Speed and memory of the exactly equivariant models",
        "",
        "Generated by `python benchmarks/speed.py"
        + (f" {' '.join(args['argv'])}" if args["argv"] else "")
        + "`; see `docs/benchmarks/README.md` for the analysis.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['processor']}, {info['cpu_count']} logical CPUs ({info['platform']})"
        + (f", GPU {info['gpu']}" if "gpu" in info else ""),
        f"- Device: {info['device']}; torch threads: {info['torch_threads']}; "
        f"torch {info['torch']}, torchvision {info['torchvision']}, CPU kernels {info['cpu_capability']}",
        f"- Load average at start: {info.get('load_average_at_start', 'n/a')}",
        f"- Settings: batch {args['batch_size']}, {args['image_size']}x{args['image_size']} images, float32, "
        f"{args['rounds']} rounds after {args['warmup']} warm-up pass(es), "
        f"{'channels-last' if args['channels_last'] else 'NCHW'} layout",
        "",
        "Ratios are against the same architecture's `original` (zero-padded torchvision) model in the "
        "same run: the median of the per-round ratios (each round times every variant once), and in "
        "parentheses the ratio of the minimum times. Times (ms) are the minimum over the rounds of "
        f"{'the process CPU time' if args['clock'] == 'cpu' else 'the wall-clock time'}. Memory is "
        "parameters + buffers + optimizer state + the peak allocated during one training step.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=None,
                        help="architectures (default: all; --quick: resnet18)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=None, help="default 4 (--quick: 2)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input size, a multiple of 32 (default 224; --quick: 64)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 7; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of every variant first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: stable numbers on a shared machine)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)")
    parser.add_argument("--channels-last", action="store_true", help="run models and inputs channels-last")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd original and MASS models (inference; compiling takes minutes)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="inference only")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory pass")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (seconds)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"models": ["resnet18"] if quick else list(MODELS), "batch_size": 2 if quick else 4,
                "image_size": 64 if quick else 224, "rounds": 2 if quick else 7}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.image_size % 32:
        parser.error(f"--image-size {args.image_size} must be a multiple of 32 (the models' total stride).")
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    args.clock = "cpu" if device.type == "cpu" else "wall"
    torch.set_num_threads(args.threads)
    info = machine_info(device, torch.get_num_threads())
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    results = {}
    for name in args.models:
        results[name] = summarise(benchmark_model(name, list(args.methods), args, device, log), args.clock)
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    print_table(results)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "settings": settings, "results": results}
    (args.output_dir / "speed.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.output_dir / "speed.md").write_text(markdown(results, info, settings))
    log(f"wrote {args.output_dir / 'speed.json'} and {args.output_dir / 'speed.md'}")
    return payload


if __name__ == "__main__":
    main()
