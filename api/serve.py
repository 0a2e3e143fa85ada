"""Serving the API with gunicorn: threaded workers, schema created once before they start."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from infrastructure.config import Config


class LedgerServer(BaseApplication):
    """Each worker builds its own app and ledger after the fork (no shared pools)."""

    def __init__(self, config: Config, options: dict[str, Any]) -> None:
        self.config_object = config
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app
        from infrastructure.logging import configure_logging

        configure_logging(self.config_object.log_format)
        return create_app(self.config_object)


def serve(config: Config, host: str, port: int, workers: int, threads: int) -> None:
    from infrastructure.bootstrap import build_ledger

    build_ledger(config, create_schema=True).close()  # DDL once: concurrent DDL fails on PostgreSQL
    LedgerServer(config, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",  # group commit needs concurrency inside each process
        "preload_app": False,
        "timeout": 60,
        "graceful_timeout": 10,
        "accesslog": None,  # the app logs each request as a structlog JSON line
        "loglevel": "warning",
    }).run()
