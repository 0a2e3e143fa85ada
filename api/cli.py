"""The `loyalty` command line."""

from __future__ import annotations

import os
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


if __name__ == "__main__":
    main()
