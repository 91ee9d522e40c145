"""Start-up time of the library and its commands, against a bare ``import torch`` in the same run.

Every case runs in a fresh interpreter, and the cases take turns round after round, so a
busy machine slows them all alike. A case's cost is reported as the median over the
rounds of its wall time minus the ``import torch`` time of the same round. The targets of
the issue that asked for this: ``from mass_lightning import convert`` adds at most 0.5 s,
``mass-lightning --help`` at most 1.5 s.

Each case is also run once more to list the heavy packages it imported (Lightning, smp,
timm, albumentations, torchvision), which is what the laziness is about.

Usage::

    python benchmarks/startup.py                      # 9 rounds, writes docs/benchmarks/startup.{md,json}
    python benchmarks/startup.py --rounds 3 --output-dir /tmp/startup
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HEAVY_PACKAGES = ("torch", "torchvision", "lightning", "segmentation_models_pytorch", "timm", "albumentations")
REFERENCE = "import torch"

#: name -> Python code run with ``python -c`` (``{script}`` is replaced by the console-script runner).
CASES: dict[str, str] = {
    "python -c pass": "pass",
    "import torch": "import torch",
    "import mass_lightning": "import mass_lightning",
    "from mass_lightning import convert": "from mass_lightning import convert",
    "mass-lightning --help": "{script}('mass_lightning.console', 'main', 'mass-lightning', ['--help'])",
    "lightning --help": "{script}('mass_lightning.console', 'lightning_main', 'lightning', ['--help'])",
    "mass-lightning fit --help": "{script}('mass_lightning.console', 'main', 'mass-lightning', ['fit', '--help'])",
    "import mass_lightning.tasks, .data": "import mass_lightning.tasks, mass_lightning.data",
    "import lightning.pytorch": "import lightning.pytorch",
}
#: The issue's limits on the time added to ``import torch`` (seconds).
TARGETS: dict[str, float] = {"from mass_lightning import convert": 0.5, "mass-lightning --help": 1.5}

# Runs a console-script function as its script would (``sys.argv`` set, ``SystemExit`` ends it).
_RUNNER = """
import importlib, sys
def run(module, function, prog, argv):
    sys.argv = [prog, *argv]
    try:
        getattr(importlib.import_module(module), function)()
    except SystemExit:
        pass
"""
_REPORT = """
import sys
print("HEAVY=" + ",".join(m for m in {heavy!r} if m in sys.modules), file=sys.__stderr__)
"""


def case_code(name: str, *, report_imports: bool = False) -> str:
    """The ``python -c`` program of case ``name`` (with a report of the heavy imports if asked)."""
    body = CASES[name]
    code = (_RUNNER + body.replace("{script}", "run")) if "{script}" in body else body
    if report_imports:
        code += "\n" + _REPORT.format(heavy=HEAVY_PACKAGES)
    return code


def _environment() -> dict[str, str]:
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    return env


def run_case(name: str, *, report_imports: bool = False, timeout: float = 120.0) -> tuple[float, str]:
    """Wall time (s) of one fresh interpreter running case ``name``, and its stderr."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", case_code(name, report_imports=report_imports)],
        cwd=REPO_ROOT, env=_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"case {name!r} failed with exit code {done.returncode}:\n{done.stderr[-2000:]}")
    return elapsed, done.stderr


def heavy_imports(name: str) -> list[str]:
    """The heavy packages that case ``name`` imports."""
    _, stderr = run_case(name, report_imports=True)
    line = next(line for line in stderr.splitlines() if line.startswith("HEAVY="))
    return [m for m in line.removeprefix("HEAVY=").split(",") if m]


def measure(names: Sequence[str], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times per case, the cases taking turns in every round; ``warmup`` rounds are dropped."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + rounds):
        this_round = {name: run_case(name)[0] for name in names}
        if round_index >= warmup:
            for name, elapsed in this_round.items():
                times[name].append(elapsed)
        kind = "warm-up" if round_index < warmup else "round"
        print(f"{kind} {round_index + 1}/{warmup + rounds}: "
              + ", ".join(f"{name} {elapsed:.2f}s" for name, elapsed in this_round.items()), flush=True)  # fmt: skip
    return times


def summarise(times: dict[str, list[float]], imports: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Per case: median wall time, median paired difference to ``import torch``, target and verdict."""
    reference = times[REFERENCE]
    rows = []
    for name, values in times.items():
        added = statistics.median(v - r for v, r in zip(values, reference))
        target = TARGETS.get(name)
        rows.append({
            "case": name,
            "median_s": statistics.median(values),
            "min_s": min(values),
            "added_to_import_torch_s": added,
            "target_added_s": target,
            "meets_target": None if target is None else added <= target,
            "heavy_imports": imports.get(name, []),
        })  # fmt: skip
    return rows


def machine_info() -> dict[str, Any]:
    """CPU, cores, load, Python and library versions (read without importing them here)."""
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    versions = {}
    for package in ("torch", "torchvision", "lightning", "segmentation-models-pytorch", "timm", "albumentations"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], rounds: int, warmup: int) -> str:
    """The report: settings, machine, table and caveats."""
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    lines = [
        "# Start-up time",
        "",
        "Generated by `python benchmarks/startup.py`. Each case runs in a fresh interpreter; the cases take "
        f"turns in each of {rounds} rounds (after {warmup} warm-up round(s)). *Added* is the median over the rounds of "
        "the case's wall time minus the `import torch` time of the same round.",
        "",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpu']}, {machine['logical_cores']} logical CPUs ({machine['platform']})",
        f"- Load average at start: {machine['load_average_at_start']}",
        f"- Python {machine['python']}; {versions}",
        "",
        "| case | median s | min s | added to `import torch`, s | target | heavy packages imported |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        target = "" if row["target_added_s"] is None else (
            f"≤ {row['target_added_s']:.1f} s: {'met' if row['meets_target'] else 'MISSED'}")
        heavy = ", ".join(row["heavy_imports"]) or "none"
        lines.append(f"| `{row['case']}` | {row['median_s']:.2f} | {row['min_s']:.2f} | "
                     f"{row['added_to_import_torch_s']:+.2f} | {target} | {heavy} |")  # fmt: skip
    lines += [
        "",
        "Caveats:",
        "",
        "- Wall times include the interpreter's own start-up and use the operating system's file cache (the "
        "warm-up rounds fill it), so these are warm-cache numbers. A cold start after a reboot is slower.",
        "- The machine is shared: other processes add noise, which the paired differences reduce but do not remove.",
        "- `mass-lightning --help` and `lightning --help` are answered by `mass_lightning.console` without "
        "importing torch or Lightning; any subcommand (`fit --help` included) builds the full LightningCLI, "
        "which costs about what `import lightning.pytorch` costs.",
        "- The console scripts are timed through the functions they call (`mass_lightning.console.main`), "
        "without the few milliseconds of the script wrapper.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds (default 9)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="cases to run (import torch is always included)")  # fmt: skip
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "docs" / "benchmarks")
    args = parser.parse_args(argv)
    names = [REFERENCE, *[n for n in args.cases if n != REFERENCE]]
    machine = machine_info()
    imports = {name: heavy_imports(name) for name in names}
    rows = summarise(measure(names, args.rounds, args.warmup), imports)
    report = markdown(rows, machine, args.rounds, args.warmup)
    print(report)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "startup.md").write_text(report)
    results = {"machine": machine, "rounds": args.rounds, "warmup": args.warmup, "rows": rows}
    (args.output_dir / "startup.json").write_text(json.dumps(results, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
