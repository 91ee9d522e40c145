"""A plain (not editable) ``pip install`` works from a folder outside the checkout.

The package is built from a copy of the files a wheel is made from and installed with
``--no-deps`` into a fresh virtual environment, which reuses this environment's packages
(torch, Lightning, ...) through a ``.pth`` file instead of installing them again. The
README's command then trains from an empty folder, with a config reached through the
installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_INPUTS = ("pyproject.toml", "README.md", "mass_lightning", "configs")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment with mass-lightning installed from a wheel; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-input", str(source)])
    site_packages = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site_packages.strip()) / "_test_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    return bin_dir


def clean_environment(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASS_LIGHTNING_DATA", "VIRTUAL_ENV")}
    return {**env, "XDG_CACHE_HOME": str(root / "cache"), "NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg"}


@pytest.mark.slow
def test_fit_with_a_shipped_config_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = clean_environment(tmp_path)
    result = run([str(installed / "mass-lightning"), "fit", "--config", "configs/quickstart.yaml",
                  "--trainer.fast_dev_run", "1"], cwd=empty, env=env)  # fmt: skip
    assert "resnet20 (mass) | val: acc" in result.stdout

    where = run([str(installed / "python"), "-c", "import mass_lightning, mass_lightning.cli.preflight as p; "
                 "from mass_lightning.data import data_root; "
                 "print(mass_lightning.__file__, p.SHIPPED_CONFIGS, data_root(), sep='\\n')"],
                cwd=empty, env=env).stdout.split("\n")  # fmt: skip
    package, configs, data = (Path(line) for line in where[:3])
    assert installed.parent in package.parents and REPO_ROOT not in package.parents
    assert (configs / "quickstart.yaml").is_file() and installed.parent in configs.parents
    assert data == (tmp_path / "cache" / "mass_lightning" / "data").resolve()


@pytest.mark.slow
def test_help_of_both_commands_is_quick_and_quiet(installed, tmp_path):
    env = clean_environment(tmp_path)
    for command in ("mass-lightning", "lightning"):
        result = run([str(installed / command), "--help"], cwd=tmp_path, env=env)
        assert result.stdout.startswith(f"usage: {command} [-c CONFIG] {{fit,validate,test,predict}}")
        assert result.stderr == ""
