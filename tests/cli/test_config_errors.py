"""A wrong key anywhere in a config gets one short line: the key, where it is, and the closest valid key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mass_lightning.cli import main
from mass_lightning.cli.config_errors import find_unknown_key, run_config_hint

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


def write(tmp_path: Path, config: dict) -> str:
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def error_of(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_typo_in_model_config_is_one_short_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a relative path (jsonargparse reads configs from their own folder)
    typo = Path(write(tmp_path, {"model": {"init_args": {"nesterow": True}}})).name
    err = error_of(["fit", "--config", QUICKSTART, "--config", typo, "--print_config"], capsys)
    assert "key 'nesterow' is not accepted in model.init_args" in err
    assert typo in err and "ClassificationTask has no such parameter. Did you mean 'nesterov'?" in err
    assert len(err.strip().splitlines()) == 2 and "Union" not in err and "usage:" not in err


@pytest.mark.parametrize(
    ("config", "key", "section", "suggestion"),
    [
        ({"trainer": {"max_epoch": 3}}, "max_epoch", "trainer", "max_epochs"),
        ({"data": {"init_args": {"batchsize": 8}}}, "batchsize", "data.init_args", "batch_size"),
        ({"trainer": {"callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                     "init_args": {"monitr": "val/acc"}}]}},
         "monitr", "trainer.callbacks.init_args", "monitor"),
        ({"seed_everythin": 1}, "seed_everythin", "", "seed_everything"),
    ],
)  # fmt: skip
def test_typo_anywhere_names_the_closest_key(tmp_path, config, key, section, suggestion):
    unknown = find_unknown_key(["fit", "--config", QUICKSTART, "--config", write(tmp_path, config)])
    assert (unknown.key, unknown.section, unknown.suggestion) == (key, section, suggestion)
    assert unknown.source.endswith("mine.yaml")


def test_typo_on_the_command_line(capsys):
    err = error_of(["fit", "--config", QUICKSTART, "--model.init_args.methd", "mass", "--print_config"], capsys)
    assert "'methd' is not accepted in model.init_args (the command line)" in err and "'method'" in err


def test_nested_class_path_of_a_users_model_is_checked(tmp_path):
    backbone = {"class_path": "torch.nn.Conv2d", "init_args": {"in_channels": 3, "out_chanels": 6, "kernel_size": 3}}
    unknown = find_unknown_key(["fit", "--config", QUICKSTART,
                                "--config", write(tmp_path, {"model": {"init_args": {"backbone": backbone}}})])
    assert (unknown.key, unknown.owner, unknown.suggestion) == ("out_chanels", "Conv2d", "out_channels")


def test_valid_configs_have_no_unknown_key(tmp_path):
    assert find_unknown_key(["fit", "--config", QUICKSTART, "--trainer.max_step", "3"]) is None  # prefix is valid
    assert find_unknown_key(["validate", "--config", QUICKSTART, "--ckpt_path", "x.ckpt"]) is None
    far_off = find_unknown_key(["fit", "--config", write(tmp_path, {"trainer": {"zzz": 1}})])
    assert far_off.suggestion is None and "max_epochs" in far_off.message()


def test_run_config_hint_only_for_missing_model_or_data():
    assert "--config <run folder>/config.yaml" in run_config_hint(
        "the following arguments are required: validate.data, validate.model"
    )
    assert run_config_hint("Key 'x' is not accepted") == ""
