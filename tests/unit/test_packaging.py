"""What `pip install .` installs: every package and subpackage of the five top-level folders."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("domain", "application", "infrastructure", "api", "projections")


def test_every_subpackage_is_installed_not_only_the_top_level_ones() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    if "packages" in config and isinstance(config["packages"], list):
        installed = set(config["packages"])
    else:
        installed = set(find_packages(str(ROOT), include=config["packages"]["find"]["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in TOP_LEVEL for init in (ROOT / top).rglob("__init__.py")
    }
    assert "api.routes" in on_disk
    assert on_disk <= installed, sorted(on_disk - installed)
