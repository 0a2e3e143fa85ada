"""The one place that builds the ledger from a configuration."""

from __future__ import annotations

from application.ledger import Clock, Ledger, utc_now
from infrastructure.config import Config


def build_ledger(config: Config, *, create_schema: bool = True, clock: Clock = utc_now,
                 pool_size: int = 5, cache_size: int = 10_000) -> Ledger:
    """Creates the ledger application on the configured database. Create the schema in one
    process before starting others: concurrent DDL on PostgreSQL fails."""
    database = config.database
    if database.kind == "sqlite":
        assert database.path is not None
        database.path.parent.mkdir(parents=True, exist_ok=True)
    env = database.eventsourcing_env(create_schema=create_schema, pool_size=pool_size)
    # Hot members stay in memory; fast-forward reads only events newer than the cached
    # version, so another process's writes are never missed.
    env["AGGREGATE_CACHE_MAXSIZE"] = str(cache_size)
    env["AGGREGATE_CACHE_FASTFORWARD"] = "y"
    return Ledger(env=env, clock=clock)

