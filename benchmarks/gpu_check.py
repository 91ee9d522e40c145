"""Exactness and speed on a CUDA machine, in one run of a few minutes (``benchmarks/gpu_check.sh``).

1. **Exactness.** MASS ResNet-18, ResNet-50, MobileNetV2 and DeepLabV3+-ResNet18 (random
   weights, randomized norms), batch 4, on random circular shifts: the fraction of shifted
   batches whose outputs are bit-identical (classifiers) or exactly shifted (segmenter) and
   the largest difference, in float32 and under bf16 autocast, with
   ``torch.backends.cudnn.deterministic = True`` and TF32 off, and with PyTorch's defaults.
2. **Speed.** ``benchmarks/speed.py`` on CUDA: ResNet-18/50 and MobileNetV2 (original,
   circular, MASS), float32 and bf16 autocast, eager; ResNet-18 compiled.

Writes ``docs/benchmarks/gpu/exactness.{md,json}`` and ``docs/benchmarks/gpu/speed-*.{md,json}``.
``--device cpu --quick`` is the smoke run the test suite makes (tiny sizes, no compile).

Usage::

    bash benchmarks/gpu_check.sh            # = python benchmarks/gpu_check.py
    python benchmarks/gpu_check.py --device cpu --quick --output-dir /tmp/gpu
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mass_lightning import convert, get_segmentation_model  # noqa: E402
from mass_lightning.testing import build, randomize_norms  # noqa: E402

import speed  # noqa: E402

EXACTNESS_MODELS = ("resnet18", "resnet50", "mobilenet_v2", "deeplabv3plus_resnet18")


@contextlib.contextmanager
def cuda_settings(deterministic: bool) -> Iterator[None]:
    """``cudnn.deterministic`` and TF32 off (``deterministic=True``), or PyTorch's defaults."""
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if deterministic:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
         torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = saved


def exact_model(name: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "deeplabv3plus_resnet18":
        model = get_segmentation_model("deeplabv3plus", encoder="resnet18", num_classes=21, encoder_weights=None)
    else:
        model = convert(build(name), method="mass")
    return randomize_norms(model).eval().to(device)


def shift_check(model: torch.nn.Module, x: torch.Tensor, shifts: list[tuple[int, int]],
                dtype: torch.dtype | None) -> dict[str, Any]:
    """Fraction of shifts with exact outputs, the largest difference, and argmax agreement."""
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    exact, worst, argmax_same = 0, 0.0, 0
    with torch.no_grad(), autocast:
        reference = model(x).float()
        dense = reference.dim() == 4
        for shift in shifts:
            out = model(torch.roll(x, shift, (2, 3))).float()
            expected = torch.roll(reference, shift, (2, 3)) if dense else reference
            exact += int(torch.equal(out, expected))
            worst = max(worst, float((out - expected).abs().max()))
            argmax_same += int(torch.equal(out.argmax(1), expected.argmax(1)))
    return {"exact": exact / len(shifts), "max_difference": worst, "argmax_same": argmax_same / len(shifts)}


def exactness(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    rows = []
    size = 64 if args.quick else 224
    models = EXACTNESS_MODELS[:1] + EXACTNESS_MODELS[-1:] if args.quick else EXACTNESS_MODELS
    shifts = [(int(torch.randint(size, (), generator=generator)), int(torch.randint(size, (), generator=generator)))
              for _ in range(2 if args.quick else 8)]
    x = torch.randn(4, 3, size, size, generator=generator).to(device)
    for name in models:
        model = exact_model(name, device)
        for deterministic in (True, False):
            for dtype in (None, torch.bfloat16):
                with cuda_settings(deterministic):
                    result = shift_check(model, x, shifts, dtype)
                rows.append({"model": name, "settings": "deterministic, no TF32" if deterministic else "defaults",
                             "dtype": "bf16 autocast" if dtype else "float32", **result})
                print(rows[-1], flush=True)
    return rows


def exactness_markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        "# Exactness on the GPU",
        "",
        f"Generated by `python benchmarks/gpu_check.py` on {info['date']}: {info['device']}, torch {info['torch']}.",
        "Batch of 4, 224x224 random images, random circular shifts; *exact* is the fraction of shifts with "
        "bit-identical logits (or exactly shifted logit maps), *argmax* the fraction with the same classes.",
        "",
        "| model | settings | dtype | exact | argmax same | max difference |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['settings']} | {r['dtype']} | {r['exact']:.0%} | {r['argmax_same']:.0%} | "
              f"{r['max_difference']:.2e} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and no compile: a smoke run")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "docs" / "benchmarks" / "gpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --device cpu --quick for a smoke run.")
    started = time.perf_counter()
    info = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "torch": torch.__version__,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    args.output_dir.mkdir(parents=True, exist_ok=True)
    rows = exactness(args, device)
    (args.output_dir / "exactness.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    (args.output_dir / "exactness.md").write_text(exactness_markdown(rows, info))
    common = ["--device", args.device, "--output-dir", str(args.output_dir), "--regime", "all-cores", "--no-memory"]
    if args.quick:
        common += ["--quick", "--rounds", "1", "--warmup", "0", "--threads", "1"]
    models = ["resnet18"] if args.quick else ["resnet18", "resnet50", "mobilenet_v2"]
    batch = [] if args.quick else ["--batch-size", "64"]
    for autocast in ("fp32", "bf16"):
        extra = [] if autocast == "fp32" else ["--autocast", "bf16"]
        speed.main([*common, *batch, "--models", *models, "--no-compile", "--tag", f"speed-eager-{autocast}", *extra])
        if not (args.quick or args.skip_compile):
            speed.main([*common, *batch, "--models", "resnet18", "--methods", "original", "mass", "--compile",
                        "--tag", f"speed-compile-{autocast}", *extra])
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s; tables in {args.output_dir}")
    return {"exactness": rows}


if __name__ == "__main__":
    main()
