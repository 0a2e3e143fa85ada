"""The `loyalty` command line."""

from __future__ import annotations

import os
import secrets
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import click

from application.errors import ApplicationError
from domain.errors import DomainError
from infrastructure.config import DEFAULT_DATA_DIR, Config, ConfigError


def load_config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """loyalty-ledger: an event-sourced loyalty points ledger.

    Configuration comes from the environment: LOYALTY_DATABASE_URL (sqlite:///file.db, the
    default under ./data, or postgresql://user@host:port/db), LOYALTY_ADMIN_KEY, LOYALTY_LOG_FORMAT.
    """


@main.command()
@click.option("--members", default=2000, show_default=True, type=click.IntRange(1, 100_000),
              help="How many members to simulate.")
@click.option("--seed", default=2025, show_default=True, help="Random seed: the same seed gives the same year.")
def demo(members: int, seed: int) -> None:
    """Simulate a year of loyalty activity and summarise it.

    Without LOYALTY_DATABASE_URL the demo writes its own embedded file (data/demo.db), recreated
    on every run; with it, the demo loads into that database once."""
    from application.demo import DAYS, DemoAlreadyLoaded, run_demo
    from infrastructure.bootstrap import build_ledger

    config = load_config()
    if not os.environ.get("LOYALTY_DATABASE_URL"):
        demo_file = Path(os.environ.get("LOYALTY_DATA_DIR", DEFAULT_DATA_DIR)) / "demo.db"
        demo_file.unlink(missing_ok=True)
        config = replace(config, database_url=f"sqlite:///{demo_file}")
    database = config.database
    clock: list[datetime] = [datetime.now()]
    ledger = build_ledger(config, clock=lambda: clock[0])
    click.echo(f"Simulating a year for {members} members in the {database.describe()} (seed {seed})")
    try:
        with click.progressbar(length=DAYS, label="Days simulated", show_pos=True) as bar:
            report = run_demo(ledger, clock, members, seed, on_day=lambda day: bar.update(1))
    except DemoAlreadyLoaded as error:
        raise click.ClickException(f"{error}; point LOYALTY_DATABASE_URL at a new database") from None
    except (DomainError, ApplicationError) as error:
        raise click.ClickException(error.detail) from None
    finally:
        ledger.close()

    click.echo("")
    click.echo(f"Members:               {report.members:>12,}")
    click.echo(f"Events stored:         {report.events:>12,}")
    for kind, count in sorted(report.commands.items()):
        click.echo(f"  {kind + ':':<21}{count:>12,}")
    refused = sum(report.refused.values())
    click.echo(f"Refused commands:      {refused:>12,}" + (
        "  (" + ", ".join(f"{k} x{v}" for k, v in report.refused.most_common(3)) + ")" if refused else ""))
    click.echo(f"Points expired:        {report.points_expired:>12,}")
    click.echo(f"Tier changes:          {report.tier_changes:>12,}")
    click.echo("Points outstanding by tier:")
    for tier, points in sorted(report.points_by_tier.items(), key=lambda kv: -kv[1]):
        click.echo(f"  {tier:<20}{points:>12,} points  ({report.members_by_tier[tier]:,} members)")
    click.echo(f"Net spend:             {report.spend_total:>15,.2f} EUR")
    click.echo(f"Top 20% of members' share of spend: {report.top_fifth_share:.1%}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Processes.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads per process.")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API with gunicorn (creates the schema first)."""
    from api.serve import serve as run_server

    config = load_config()
    if config.admin_key is None:
        config = replace(config, admin_key=secrets.token_urlsafe(24))
        click.echo(f"No LOYALTY_ADMIN_KEY set; this run's admin key is: {config.admin_key}", err=True)
    else:
        click.echo("Admin key: the value of LOYALTY_ADMIN_KEY", err=True)
    click.echo(f"Serving on http://{host}:{port} ({workers} workers x {threads} threads), "
               f"data in the {config.database.describe()}; docs at /docs", err=True)
    run_server(config, host, port, workers, threads)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", required=True, type=click.Choice(["admin", "partner", "support", "supervisor", "auditor", "finance"]))
@click.option("--partner", "partner_id", help="The partner a partner key posts for.")
@click.option("--name", help="A label for the key.")
def create_key(role: str, partner_id: str | None, name: str | None) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from application.access import IssueApiKey
    from infrastructure.bootstrap import build_ledger

    ledger = build_ledger(load_config())
    try:
        outcome = ledger.execute(IssueApiKey(actor="cli", role=role, partner_id=partner_id, name=name))
    except (DomainError, ApplicationError) as error:
        raise click.ClickException(error.detail) from None
    finally:
        ledger.close()
    click.echo(outcome.body["key"])
    click.echo(f"key_id {outcome.body['key_id']}, role {role}" + (f", partner {partner_id}" if partner_id else ""),
               err=True)


if __name__ == "__main__":
    main()
