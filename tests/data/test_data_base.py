"""Shared datamodule plumbing: size checks, subsets, seeded loaders, worker seeding, registry."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch.utils.data import Dataset

from mass_lightning.data import (
    DATAMODULES,
    BaseDataModule,
    PeriodicDefectsSegmentationDataModule,
    check_divisible,
    deterministic_subset,
)


def test_check_divisible() -> None:
    assert check_divisible("X", "crop_size", 64, 32) == (64, 64)
    assert check_divisible("X", "crop_size", (352, 480), 32) == (352, 480)
    with pytest.raises(ValueError, match=r"X: crop_size=\(360, 480\) is not divisible by total_stride=32.*352 or 384"):
        check_divisible("X", "crop_size", (360, 480), 32)
    with pytest.raises(ValueError, match="e.g. 32 instead of 20"):
        check_divisible("X", "crop_size", 20, 32)
    with pytest.raises(ValueError, match="total_stride"):
        check_divisible("X", "crop_size", 20, 0)


def test_deterministic_subset() -> None:
    data = list(range(50))
    assert deterministic_subset(data, None, 0) is data and deterministic_subset(data, 80, 0) is data
    subset = deterministic_subset(data, 10, seed=3)
    assert len(subset) == 10 and subset.indices == sorted(subset.indices)
    assert subset.indices == deterministic_subset(data, 10, seed=3).indices
    with pytest.raises(ValueError, match="max_samples"):
        deterministic_subset(data, 0, 0)


class _RandomItems(Dataset):
    """Items that depend on the worker's RNG state, reseeded through ``reseed``."""

    def __init__(self) -> None:
        self.generator = torch.Generator().manual_seed(0)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.rand(2, generator=self.generator), index


class _RandomDataModule(BaseDataModule):
    num_classes = 8

    def build_dataset(self, split: str) -> Dataset:
        return _RandomItems()


def test_worker_augmentation_is_seeded_and_differs_between_workers() -> None:
    def epoch(seed: int) -> torch.Tensor:
        dm = _RandomDataModule(batch_size=2, num_workers=2, seed=seed)
        loader = dm.val_dataloader() if seed < 0 else dm.train_dataloader()
        return torch.cat([x for x, _ in loader])

    first = epoch(0)
    assert torch.equal(first, epoch(0))
    assert not torch.equal(first, epoch(1))
    assert not torch.equal(first[0], first[2])  # workers 0 and 1 got different seeds


def test_unknown_split_and_bad_arguments() -> None:
    dm = _RandomDataModule()
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        dm.dataset("dev")
    with pytest.raises(ValueError, match="batch_size"):
        _RandomDataModule(batch_size=0)
    with pytest.raises(ValueError, match="num_workers"):
        _RandomDataModule(num_workers=-1)


def test_setup_builds_only_what_the_stage_needs() -> None:
    dm = PeriodicDefectsSegmentationDataModule(num_train=2, num_val=2, num_test=2, image_size=32)
    dm.setup("test")
    assert set(dm.datasets) == {"test"}
    dm.setup("fit")
    assert set(dm.datasets) == {"test", "train", "val"}


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_registry_datamodules_are_cli_friendly(name: str) -> None:
    cls = DATAMODULES[name]
    doc = inspect.getdoc(cls) or ""
    for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        assert parameter.annotation is not inspect.Parameter.empty, f"{name}.{parameter.name} has no type"
        assert f"{parameter.name}:" in doc, f"{name}.{parameter.name} is not documented"
        assert parameter.default is not inspect.Parameter.empty, f"{name}.{parameter.name} has no default"
    for method in ("train_dataloader", "val_dataloader", "test_dataloader", "predict_dataloader"):
        assert callable(getattr(cls, method))


@pytest.mark.parametrize("name", sorted(DATAMODULES))
def test_registry_datamodules_build_from_a_yaml_config(name: str) -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    from lightning.pytorch import LightningDataModule

    cls = DATAMODULES[name]
    parser = jsonargparse.ArgumentParser()
    parser.add_subclass_arguments(LightningDataModule, "data")
    init_args = {"batch_size": 3}
    if "crop_size" in inspect.signature(cls.__init__).parameters and name != "imagenet":
        init_args.update(crop_size=[64, 96], eval_size=[64, 64])
    config = {"data": {"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init_args}}
    parsed = parser.parse_string(json.dumps(config))
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    datamodule = instantiate(parsed).data
    assert isinstance(datamodule, cls) and datamodule.batch_size == 3 and datamodule.num_classes > 0
    if "crop_size" in init_args:
        assert datamodule.crop_size == (64, 96) and datamodule.eval_size == (64, 64)
