"""Configuration from the environment, and its mapping onto the eventsourcing library's settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_DATA_DIR = "data"
DEFAULT_DB_FILE = "loyalty.db"


class ConfigError(ValueError):
    """The configuration cannot work; the message says which setting and why."""


@dataclass(frozen=True)
class Config:
    database_url: str
    admin_key: str | None = None
    log_format: str = "json"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        data_dir = Path(env.get("LOYALTY_DATA_DIR", DEFAULT_DATA_DIR))
        url = env.get("LOYALTY_DATABASE_URL") or f"sqlite:///{data_dir / DEFAULT_DB_FILE}"
        log_format = env.get("LOYALTY_LOG_FORMAT", "json")
        if log_format not in ("json", "console"):
            raise ConfigError("LOYALTY_LOG_FORMAT must be 'json' or 'console'")
        config = cls(database_url=url, admin_key=env.get("LOYALTY_ADMIN_KEY") or None, log_format=log_format)
        config.database  # validates the URL now rather than at first use
        return config

    @property
    def database(self) -> Database:
        return Database.from_url(self.database_url)


@dataclass(frozen=True)
class Database:
    kind: str  # "sqlite" | "postgresql" | "memory"
    path: Path | None = None
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str = ""
    dbname: str = ""
    schema: str = ""

    @classmethod
    def from_url(cls, url: str) -> Database:
        parts = urlsplit(url)
        if parts.scheme == "memory":
            return cls(kind="memory")
        if parts.scheme == "sqlite":
            # sqlite:///relative/file.db or sqlite:////absolute/file.db
            path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
            if not path or parts.netloc:
                raise ConfigError("LOYALTY_DATABASE_URL: expected sqlite:///path/to/file.db")
            return cls(kind="sqlite", path=Path(path))
        if parts.scheme in ("postgresql", "postgres"):
            dbname = unquote(parts.path.lstrip("/"))
            if not parts.hostname or not dbname:
                raise ConfigError("LOYALTY_DATABASE_URL: expected postgresql://user@host:port/dbname")
            try:
                port = parts.port or 5432
            except ValueError as error:
                raise ConfigError(f"LOYALTY_DATABASE_URL: {error}") from None
            schema = parse_qs(parts.query).get("schema", [""])[0]
            return cls(
                kind="postgresql", host=parts.hostname, port=port,
                user=unquote(parts.username or "postgres"), password=unquote(parts.password or ""),
                dbname=dbname, schema=schema,
            )
        raise ConfigError("LOYALTY_DATABASE_URL must start with sqlite:///, postgresql:// or memory://")

    def eventsourcing_env(self, *, create_schema: bool, pool_size: int = 5) -> dict[str, str]:
        """The library's settings for this database. Schema creation is explicit because
        concurrent start-up DDL fails on PostgreSQL: create once, then start workers."""
        create = "y" if create_schema else "n"
        if self.kind == "memory":
            return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if self.kind == "sqlite":
            assert self.path is not None
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.path),
                "SQLITE_LOCK_TIMEOUT": "30",
                "CREATE_TABLE": create,
            }
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": self.dbname,
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": self.user,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_POOL_SIZE": str(pool_size),
            "POSTGRES_MAX_OVERFLOW": str(pool_size),
            "POSTGRES_CONNECT_TIMEOUT": "10",
            "POSTGRES_LOCK_TIMEOUT": "30",
            "CREATE_TABLE": create,
        }
        if self.schema:
            env["POSTGRES_SCHEMA"] = self.schema
        return env

    def describe(self) -> str:
        """Where the data lives, without any password."""
        if self.kind == "sqlite":
            return f"sqlite file {self.path}"
        if self.kind == "postgresql":
            return f"postgresql {self.user}@{self.host}:{self.port}/{self.dbname}"
        return "in-memory store"
