"""Every `loyalty` command runs with the collector set for batches (infrastructure/gc_tuning.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from api.cli import main
from infrastructure.gc_tuning import YOUNGEST


@pytest.fixture
def default_thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


def test_a_command_sets_the_collector_thresholds(default_thresholds: None, tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["projections", "status"],
                                env={"LOYALTY_DATABASE_URL": f"sqlite:///{tmp_path}/ledger.db"})
    assert result.exit_code == 0, result.output
    assert gc.get_threshold()[0] == YOUNGEST
