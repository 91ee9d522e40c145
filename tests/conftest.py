"""Shared test setup: offline and headless, plus tiny synthetic data for CLI and task tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
REPO_ROOT = Path(__file__).resolve().parents[1]
# Real datasets of the project's machines (and of CI) sit in ../shared/data beside the checkout;
# the library's default data root is a user cache folder, so point it here unless already set.
if (REPO_ROOT.parent / "shared" / "data").is_dir():
    os.environ.setdefault("MASS_LIGHTNING_DATA", str(REPO_ROOT.parent / "shared" / "data"))

#: torch's own thread count on this machine (what users run with), before the line below.
DEFAULT_THREADS = torch.get_num_threads()
# pytest-xdist runs one worker per core: one intra-op thread each avoids oversubscription.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

#: Tiny synthetic datamodules (no files), per task type, as LightningCLI ``data`` values.
TINY_DATA: dict[str, dict[str, Any]] = {
    "classification": {
        "class_path": "mass_lightning.data.PeriodicDefectsDataModule",
        "init_args": {"num_train": 4, "num_val": 4, "num_test": 4, "image_size": 32, "batch_size": 2,
                      "num_workers": 0},
    },
    "segmentation": {
        "class_path": "mass_lightning.data.PeriodicDefectsSegmentationDataModule",
        "init_args": {"num_train": 2, "num_val": 2, "num_test": 2, "image_size": 64, "batch_size": 2,
                      "num_workers": 0},
    },
}
#: Model settings that go with :data:`TINY_DATA` (and never download weights). A negligible
#: learning rate: one step on two 32x32 images can blow a randomly initialised ImageNet
#: network up (BatchNorm over two samples of a 1x1 map gives gradients of ~1e9, also in the
#: original torchvision models), and the converted layers then refuse the non-finite maps,
#: as they should.
TINY_MODEL: dict[str, dict[str, Any]] = {
    "classification": {"num_classes": 6, "weights": None, "lr": 1e-8},
    "segmentation": {"num_classes": 7, "ignore_index": 255, "encoder_weights": None, "lr": 1e-8},
}


@pytest.fixture
def repo_root() -> Path:
    """The repository root (configs are looked up there)."""
    return REPO_ROOT


@pytest.fixture
def single_thread():
    """One torch thread: the test machines are small and tests run in parallel."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def default_threads():
    """torch's default thread count (all cores), as users run, for tests of multi-threaded kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_THREADS)
    yield DEFAULT_THREADS
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a config that puts a run on CPU with tiny synthetic data; returns its path.

    Use it as the last ``--config``: ``tiny_config("classification", trainer={...}, model={...})``.
    """

    def write(kind: str, *, trainer: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
              data: dict[str, Any] | None = None) -> Path:
        data_config = {"class_path": TINY_DATA[kind]["class_path"],
                       "init_args": {**TINY_DATA[kind]["init_args"], **(data or {})}}
        config = {
            "trainer": {"accelerator": "cpu", "devices": 1, "default_root_dir": str(tmp_path), **(trainer or {})},
            "model": {"init_args": {**TINY_MODEL[kind], **(model or {})}},
            "data": data_config,
        }
        path = tmp_path / f"tiny_{kind}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def pytest_configure(config: pytest.Config) -> None:
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates; not ours to fix.
    config.addinivalue_line("filterwarnings", r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated")
