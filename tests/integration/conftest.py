"""Fixtures for the integration tier."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from test_ledger_story import START, Clock, open_ledger


@pytest.fixture()
def postgres_ledger(postgres_database: str) -> Iterator[Any]:
    """A ledger on a fresh schema of the test run's PostgreSQL database (PostgreSQL-only tests)."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_database, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    ledger = open_ledger(f"{postgres_database}?schema={schema}", Clock(START + timedelta(days=1)))
    yield ledger
    ledger.close()
