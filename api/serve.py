"""Serving the API with gunicorn: threaded workers, schema created once before they start."""

from __future__ import annotations

import os
from typing import Any

from gunicorn import util
from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from infrastructure.config import Config


def _write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    from api.problems import problem_bytes

    util.write_nonblock(sock, problem_bytes(status_int, reason, mesg))


class ProblemThreadWorker(ThreadWorker):
    """gunicorn's threaded worker, answering what it refuses itself (an over-long request line,
    too many headers, a malformed request line) as problem+json instead of an HTML page."""

    def init_process(self) -> None:
        util.write_error = _write_problem  # this worker process only; the master never answers
        super().init_process()


class LedgerServer(BaseApplication):
    """Each worker builds its own app and ledger after the fork (no shared pools)."""

    def __init__(self, config: Config, options: dict[str, Any], run_projections: bool) -> None:
        self.config_object = config
        self.run_projections = run_projections
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app
        from infrastructure.logging import configure_logging

        from infrastructure.bootstrap import build_ledger, build_read_model
        from projections.runner import start_in_background

        configure_logging(self.config_object.log_format)
        ledger = build_ledger(self.config_object, create_schema=False)
        read_model = build_read_model(self.config_object, ledger, create_tables=False)
        if self.run_projections and read_model is not None:
            # Every worker runs a runner; the locked position row makes them take turns.
            start_in_background(ledger, read_model.store)
        from infrastructure.group_commit import CommitQueue
        from infrastructure.key_reads import KeyReads

        return create_app(self.config_object, ledger, read_model, CommitQueue(ledger), KeyReads(ledger))


def default_server_workers(config: Config) -> int:
    """Two per CPU (at most 8) on PostgreSQL: each worker has its own group-commit thread, which
    in a process of many request threads waits for the GIL after every database reply; with two
    workers on 2 cores a third of a core stayed idle, with four the machine was busy and carried
    6-9% more single purchases (BENCHMARKS.md, run 9). SQLite has one writer at a time: 2."""
    return min(2 * (os.cpu_count() or 1), 8) if config.database.kind == "postgresql" else 2


def serve(config: Config, host: str, port: int, workers: int, threads: int, run_projections: bool, *,
          reuse_port: bool = False) -> None:
    from infrastructure.bootstrap import build_ledger, build_read_model

    # DDL once, before the workers start: concurrent DDL fails on PostgreSQL.
    ledger = build_ledger(config, create_schema=True)
    build_read_model(config, ledger, create_tables=True)
    ledger.close()
    LedgerServer(config, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "api.serve.ProblemThreadWorker",  # threads: group commit needs concurrency
        "preload_app": False,
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,  # the app logs each request as a structlog JSON line
        "loglevel": "warning",
        # With reuse_port each worker listens on a socket of its own (SO_REUSEPORT) and the
        # kernel spreads connections over them; on one shared socket keep-alive clients often
        # piled onto one worker. Under P1 (32 clients, 2 workers): 430-505/s in 16 runs of 21
        # without it, 578-652/s in 6 of 6 with it (BENCHMARKS.md, run 5). Opt-in: a second server
        # on the same port would then share it silently instead of failing to start.
        "reuse_port": reuse_port,
    }, run_projections).run()
