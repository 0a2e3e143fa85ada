"""How the API is served: each route's request schema is built once (webargs builds one per
request when given a class), and the default number of server processes per database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.app import create_app
from api.serve import default_server_workers
from infrastructure.bootstrap import build_ledger, build_read_model
from infrastructure.config import Config


def test_every_routes_request_schema_is_an_instance(tmp_path: Path) -> None:
    config = Config(database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    ledger = build_ledger(config)
    app = create_app(config, ledger, build_read_model(config, ledger))
    checked = []
    for name, view in app.view_functions.items():
        for method in ("get", "post", "put", "patch", "delete"):
            doc = getattr(getattr(getattr(view, "view_class", None), method, None), "_apidoc", {})
            for parameter in doc.get("arguments", {}).get("parameters", []):
                assert not isinstance(parameter["schema"], type), f"{name} {method.upper()}: a class"
                checked.append(name)
    assert "postings.Purchases" in checked and "jobs.ExpirePointsJob" in checked and len(checked) >= 20
    ledger.close()


@pytest.mark.parametrize(("url", "cpus", "workers"), [
    ("postgresql://postgres@127.0.0.1:5432/x", 2, 4),
    ("postgresql://postgres@127.0.0.1:5432/x", 8, 8),
    ("postgresql://postgres@127.0.0.1:5432/x", None, 2),
    ("sqlite:///data/x.db", 2, 2),
    ("sqlite:///data/x.db", 16, 2),
])
def test_server_workers_two_per_cpu_on_postgresql_and_two_on_sqlite(monkeypatch: pytest.MonkeyPatch, url: str,
                                                                     cpus: int | None, workers: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert default_server_workers(Config(database_url=url)) == workers
