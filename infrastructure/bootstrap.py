"""The one place that builds the ledger from a configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from application.ledger import Clock, Ledger, utc_now
from infrastructure.config import Config

if TYPE_CHECKING:
    from projections.read_model import ReadModel


def build_ledger(config: Config, *, create_schema: bool = True, clock: Clock = utc_now,
                 pool_size: int = 5, cache_size: int = 10_000, single_writer: bool = False,
                 cache_events: int | None = None) -> Ledger:
    """Creates the ledger application on the configured database. Create the schema in one
    process before starting others: concurrent DDL on PostgreSQL fails."""
    database = config.database
    if database.kind == "sqlite":
        assert database.path is not None
        database.path.parent.mkdir(parents=True, exist_ok=True)
    if database.kind == "postgresql":
        from infrastructure.pipeline_flush import install

        install()  # large saves would otherwise deadlock in psycopg's pipeline mode
    env = database.eventsourcing_env(create_schema=create_schema, pool_size=pool_size)
    # Hot members stay in memory; fast-forward reads only events newer than the cached
    # version, so another process's writes are never missed.
    env["AGGREGATE_CACHE_MAXSIZE"] = str(cache_size)
    env["AGGREGATE_CACHE_FASTFORWARD"] = "y"
    env["TRANSCODER_TOPIC"] = "infrastructure.fast_json:FastJSONTranscoder"  # the library's JSON, faster
    ledger = Ledger(env=env, clock=clock, single_writer=single_writer)
    if database.kind == "postgresql":
        from infrastructure.binary_inserts import use_binary_inserts
        from infrastructure.binary_reads import use_binary_reads
        from infrastructure.pipelined_commit import use_pipelined_commit

        use_binary_inserts(ledger.recorder)  # events sent in binary, not hex-encoded text
        use_binary_reads(ledger.recorder)  # and read back so
        use_pipelined_commit(ledger.recorder)  # the table lock held only while the server works
        if ledger.snapshots is not None:
            use_binary_inserts(ledger.snapshots.recorder)
    if cache_events is not None and cache_size:
        from infrastructure.event_budget_cache import EventBudgetCache

        # Bounded by the events the cached aggregates hold: memory stays level on long imports.
        ledger.repository.cache = EventBudgetCache(max_events=cache_events, max_items=cache_size)
    return ledger



def preload(config: Config) -> None:
    """Imports now what build_ledger would import for this database, so processes forked from
    this one start with it imported (infrastructure/worker_processes.Forked): psycopg and the
    library's recorders are a third of a worker's start-up."""
    import importlib

    names = [config.database.eventsourcing_env(create_schema=False)["PERSISTENCE_MODULE"],
             "infrastructure.event_budget_cache", "infrastructure.fast_json"]
    if config.database.kind == "postgresql":
        names += ["infrastructure.binary_inserts", "infrastructure.binary_reads", "infrastructure.pipeline_flush",
                  "infrastructure.pipelined_commit"]
    for name in names:
        importlib.import_module(name)


def build_read_model(config: Config, ledger: Ledger, *, create_tables: bool = True) -> ReadModel | None:
    """The projections' store and queries on the ledger's database; None for the in-memory store."""
    from projections.read_model import ReadModel
    from projections.runner import ProjectionRunner
    from projections.store import open_store

    database = config.database
    if database.kind == "memory":
        return None
    runner = ProjectionRunner(ledger, open_store(database))
    if create_tables:
        runner.create_tables()
    return ReadModel(ledger, runner)
