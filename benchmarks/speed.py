"""Speed and memory of exactly shift-equivariant CNNs, side by side with their originals.

Every architecture runs as

* ``original``: the torchvision (or zero-padded smp) model, the reference;
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
* with ``--compile``, the same two for ``torch.compile(model)`` (default mode, no freezing)
  of the original and of MASS, each against the compiled original;
* peak memory of a training step: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the
  running total of the allocations and frees that PyTorch's CPU allocator reports to
  ``torch.profiler`` (``profile_memory=True``) during one step. Both are reported as the
  bytes held by the model's parameters, buffers and optimizer state plus the peak of what
  the step allocates on top. Scratch memory that a backend allocates outside PyTorch's
  allocator (oneDNN, cuDNN workspaces on CPU) is not seen.

Timing: after a warm-up pass of every variant, each round times every variant once, in an
order that rotates from round to round. Ratios are against the architecture's ``original``
(or compiled original) in the same run: the median of the per-round ratios (paired, so a
slow spell of the machine hits both sides) and the ratio of the minima. The clock is wall
time (``--clock cpu``: process CPU time); both are kept in the JSON.

Regimes (``--regime``; each writes ``docs/benchmarks/speed/<regime>.{md,json}``):

* ``all-cores`` (default): torch's default thread count, batch 16, 224x224, ResNet-18/50,
  MobileNetV2, ConvNeXt-T; what a user running on a CPU sees;
* ``one-thread``: one thread, batch 4, every method (the setting of the first benchmark);
* ``compile``: all cores, batch 16, ResNet-18/50, eager and compiled;
* ``periodic``: all cores, batch 16, ResNet-18 on a tiled lattice, whose polyphase norms tie
  (MASS takes its exact tie-breaking path), eager and compiled;
* ``segmentation``: all cores, batch 4, 512x512, smp U-Net-ResNet34 and DeepLabV3+-ResNet18
  (zero-padded smp model as the original), MASS and APS;
* ``retained-memory``: ``all-cores`` with ``--malloc retain`` (below);
* ``all``: each of the above in turn.

Allocator (``--malloc``). On CPU, PyTorch allocates through the C library's ``malloc``. glibc
hands large freed blocks back to the operating system (always those above its adaptive
mmap threshold, at most 32 MiB), so their pages fault and are zeroed again on first write.
``--malloc retain`` runs the measurement in a child process with ``MALLOC_MMAP_THRESHOLD_``
and ``MALLOC_TRIM_THRESHOLD_`` set to 64 GiB, so freed memory stays in the process and is
reused without faults (the process keeps its peak memory), much as the PyTorch CPU
performance guide's advice to preload jemalloc or tcmalloc does. The header of each table
records the ``MALLOC_*`` and ``LD_PRELOAD`` settings it ran with.

Usage::

    python benchmarks/speed.py                          # all-cores, about 10 min on 2 cores
    python benchmarks/speed.py --regime all             # every regime, about 45 min
    python benchmarks/speed.py --models resnet18 --methods original mass --batch-size 8 --rounds 12
    python benchmarks/speed.py --quick --output-dir /tmp/bench   # seconds, a smoke run

Prints the table of each regime and writes it under ``--output-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
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

CLASSIFIERS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "mobilenet_v2": torchvision.models.mobilenet_v2,
    "convnext_tiny": torchvision.models.convnext_tiny,
}
#: smp segmentation models: (architecture, encoder); 21 classes (PASCAL VOC).
SEGMENTERS: dict[str, tuple[str, str]] = {
    "unet_resnet34": ("unet", "resnet34"),
    "deeplabv3plus_resnet18": ("deeplabv3plus", "resnet18"),
}
MODELS = [*CLASSIFIERS, *SEGMENTERS]
METHODS = ("original", "circular", "mass", "aps", "lpf3", "blurpool")
BLURPOOL_FILTER_SIZE = 3
NUM_CLASSES = {"classifier": 1000, "segmenter": 21}

#: Settings of each regime; options given on the command line override them.
REGIMES: dict[str, dict[str, Any]] = {
    "all-cores": {"models": list(CLASSIFIERS), "methods": ["original", "circular", "mass"], "threads": 0,
                  "batch_size": 16, "image_size": 224},
    "one-thread": {"models": ["resnet18", "resnet50"], "methods": list(METHODS), "threads": 1, "batch_size": 4,
                   "image_size": 224},
    "compile": {"models": ["resnet18", "resnet50"], "methods": ["original", "mass"], "threads": 0, "batch_size": 16,
                "image_size": 224, "compile": True},
    "periodic": {"models": ["resnet18"], "methods": ["original", "mass"], "threads": 0, "batch_size": 16,
                 "image_size": 224, "compile": True, "input": "periodic"},
    "segmentation": {"models": list(SEGMENTERS), "methods": ["original", "mass", "aps"], "threads": 0,
                     "batch_size": 4, "image_size": 512},
    "retained-memory": {"models": list(CLASSIFIERS), "methods": ["original", "circular", "mass"], "threads": 0,
                        "batch_size": 16, "image_size": 224, "malloc": "retain"},
}
#: glibc settings of ``--malloc retain``: freed memory stays in the process.
RETAIN_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(64 << 30), "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}
_ALLOCATOR_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX",
                  "LD_PRELOAD")


def build_original(name: str) -> nn.Module:
    """The reference model of ``name``: torchvision's, or smp's with zero padding."""
    if name in CLASSIFIERS:
        return CLASSIFIERS[name]()
    import segmentation_models_pytorch as smp

    arch, encoder = SEGMENTERS[name]
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=NUM_CLASSES["segmenter"])


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
        return _blurpool(name, original) if name in CLASSIFIERS else None
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
    """Times the inference and the training step of one model variant (compiled or not)."""

    def __init__(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device, compiled: bool = False
    ) -> None:
        self.model = model.to(device)
        self.images, self.labels, self.device = images, labels, device
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.compiled = compiled

    autocast: torch.dtype | None = None
    """Run forward passes under ``torch.autocast`` to this dtype (``None``: float32)."""

    def _autocast(self) -> Any:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), self._autocast():
            self.forward(self.images)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self.forward(self.images), self.labels)
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


def make_batch(name: str, args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded batch: random images, or a tiled random 4x4 cell (``--input periodic``), and labels."""
    generator = torch.Generator().manual_seed(1)
    size, batch = args.image_size, args.batch_size
    if args.input == "periodic":
        cell = torch.randn(batch, 3, 4, 4, generator=generator)
        images = cell.repeat(1, 1, size // 4, size // 4)
    else:
        images = torch.randn(batch, 3, size, size, generator=generator)
    if name in SEGMENTERS:
        labels = torch.randint(0, NUM_CLASSES["segmenter"], (batch, size, size), generator=generator)
    else:
        labels = torch.randint(0, NUM_CLASSES["classifier"], (batch,), generator=generator)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), labels.to(device)


def benchmark_model(
    name: str, methods: list[str], args: argparse.Namespace, device: torch.device, log: Callable[[str], None]
) -> dict[str, Any]:
    """All measurements of one architecture; times in seconds, memory in bytes."""
    torch.manual_seed(0)
    original = build_original(name).eval()
    images, labels = make_batch(name, args, device)
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
    for runner in runners.values():
        runner.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.autocast)
    tasks = [("inference", "infer")] + ([("train", "train_step")] if args.train else [])
    times: dict[str, dict[str, list[float]]] = {m: {task: [] for task, _ in tasks} for m in runners}
    cpu_times: dict[str, dict[str, list[float]]] = {m: {task: [] for task, _ in tasks} for m in runners}
    compile_s: dict[str, float] = {}
    order = list(runners)
    log(f"{name}: warm-up of {', '.join(order)}")
    for method, runner in runners.items():
        if runner.compiled:  # the first calls compile (a training step compiles its own graphs)
            compile_s[method] = sum(runner.timed(getattr(runner, fn))[0] for _, fn in tasks)
        for _ in range(args.warmup):
            for _, fn in tasks:
                runner.timed(getattr(runner, fn))
    for round_index in range(args.rounds):
        shift = round_index % len(order)
        for method in order[shift:] + order[:shift]:
            for task, fn in tasks:
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
        # a compiled variant is compared with the compiled original
        against = f"{reference}+compile" if method.endswith("+compile") else reference
        for task in tasks:
            per_clock = {
                name: _stats(series[method][task], series[against][task] if against in series else None)
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
        "allocator_env": {name: os.environ[name] for name in _ALLOCATOR_ENV if name in os.environ},
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
    input_kind = "a tiled random 4x4 cell (periodic: polyphase norms tie)" if args["input"] == "periodic" \
        else "random normal images"
    lines = [
        f"# Speed and memory: regime `{args['regime']}`",
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
        f"- Load average at start: {info.get('load_average_at_start', 'n/a')}; "
        f"at the end: {info.get('load_average_at_end', 'n/a')}; total {info.get('total_seconds', '?')} s",
        f"- Settings: batch {args['batch_size']}, {args['image_size']}x{args['image_size']} {input_kind}, "
        f"{'float32' if not args.get('autocast') else args['autocast'] + ' autocast'}, "
        f"{args['rounds']} rounds after {args['warmup']} warm-up pass(es), "
        f"{'channels-last' if args['channels_last'] else 'NCHW'} layout",
        "- Allocator: " + (", ".join(f"`{k}={v}`" for k, v in info.get("allocator_env", {}).items())
                           or "the C library's default (no `MALLOC_*` or `LD_PRELOAD` set)"),
        "",
        "Ratios are against the same architecture's `original` model in the same run (compiled "
        "variants against the compiled original): the median of the per-round ratios (each round "
        "times every variant once), and in parentheses the ratio of the minimum times. Times (ms) "
        f"are the minimum over the rounds of {'the process CPU time' if args['clock'] == 'cpu' else 'wall time'}. "
        "Memory is parameters + buffers + optimizer state + the peak allocated during one training step.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    compiled = {(model, method): row["compile_s"] for model, summary in results.items()
                for method, row in summary["methods"].items() if "compile_s" in row}
    if compiled:
        lines += ["", "First calls (compilation included), s: "
                  + ", ".join(f"{model} {method} {seconds:.0f}" for (model, method), seconds in compiled.items())]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regime", choices=[*REGIMES, "all"], default="all-cores",
                        help="preset settings (see the module docs); the options below override them")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None, help="square input size, a multiple of 32")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; --quick: 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes of every variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads; 0: torch's default")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--input", choices=["random", "periodic"], default=None)
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="run under torch.autocast")
    parser.add_argument("--tag", default=None, help="output file name (default: the regime's name)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda if available)")
    parser.add_argument("--channels-last", action="store_true", help="run models and inputs channels-last")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time torch.compile'd original and MASS models (compiling takes minutes)")
    parser.add_argument("--no-train", dest="train", action="store_false", help="inference only")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory pass")
    parser.add_argument("--malloc", choices=["default", "retain"], default=None,
                        help="retain: run in a child process whose glibc keeps freed memory (see the module docs)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test (seconds)")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs" / "benchmarks" / "speed")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    if args.image_size is not None and args.image_size % 32:
        parser.error(f"--image-size {args.image_size} must be a multiple of 32 (the models' total stride).")
    return args


def regime_settings(args: argparse.Namespace, regime: str) -> argparse.Namespace:
    """``args`` with the regime's presets filled in where no option was given."""
    settings = argparse.Namespace(**vars(args))
    settings.regime = regime
    preset = {"rounds": 10, "input": "random", "compile": False, "malloc": "default", **REGIMES[regime]}
    if args.quick:
        preset.update({"models": preset["models"][:1], "batch_size": 2, "image_size": 64, "rounds": 2})
    for key, value in preset.items():
        if getattr(settings, key, None) is None:
            setattr(settings, key, value)
    return settings


def _without(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option VALUE`` and ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _in_retaining_child(args: argparse.Namespace) -> dict[str, Any]:
    """Run this regime again in a child process with :data:`RETAIN_MALLOC` set; its payload."""
    argv = args.argv
    for option in ("--regime", "--malloc", "--tag", "--output-dir"):
        argv = _without(argv, option)
    name = args.tag or args.regime
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--regime", args.regime, "--malloc", "retain",
               "--tag", name, "--output-dir", str(args.output_dir)]
    subprocess.run(command, env={**os.environ, **RETAIN_MALLOC}, check=True)
    return json.loads((args.output_dir / f"{name}.json").read_text())


def run_regime(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Measure one regime, print its table and write ``<regime>.json`` and ``<regime>.md``."""
    if args.malloc == "retain" and any(os.environ.get(k) != v for k, v in RETAIN_MALLOC.items()):
        return _in_retaining_child(args)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or default_threads)
    info = machine_info(device, torch.get_num_threads())
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{args.regime} {time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    try:
        results = {name: summarise(benchmark_model(name, list(args.methods), args, device, log), args.clock)
                   for name in args.models}
    finally:
        torch.set_num_threads(default_threads)
    info["total_seconds"] = round(time.perf_counter() - started, 1)
    if hasattr(os, "getloadavg"):
        info["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print_table(results)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    payload = {"machine": info, "settings": settings, "results": results}
    name = args.tag or args.regime
    (args.output_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.output_dir / f"{name}.md").write_text(markdown(results, info, settings))
    log(f"wrote {args.output_dir / name}.json and .md")
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the regime(s) of ``argv``; returns ``{regime: payload}``."""
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    regimes = list(REGIMES) if args.regime == "all" else [args.regime]
    return {regime: run_regime(regime_settings(args, regime), device) for regime in regimes}


if __name__ == "__main__":
    main()
