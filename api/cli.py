"""The `loyalty` command line."""

from __future__ import annotations

from datetime import datetime

import click

from application.errors import ApplicationError
from domain.errors import DomainError
from infrastructure.config import Config, ConfigError


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
@click.option("--fresh", is_flag=True, help="Delete an existing SQLite demo database first.")
def demo(members: int, seed: int, fresh: bool) -> None:
    """Simulate a year of loyalty activity in the configured database and summarise it."""
    from application.demo import DAYS, DemoAlreadyLoaded, run_demo
    from infrastructure.bootstrap import build_ledger

    config = load_config()
    database = config.database
    if fresh:
        if database.kind != "sqlite":
            raise click.ClickException("--fresh only deletes SQLite files; point LOYALTY_DATABASE_URL at a new database")
        assert database.path is not None
        database.path.unlink(missing_ok=True)
    clock: list[datetime] = [datetime.now()]
    ledger = build_ledger(config, clock=lambda: clock[0])
    click.echo(f"Simulating a year for {members} members in the {database.describe()} (seed {seed})")
    try:
        with click.progressbar(length=DAYS, label="Days simulated", show_pos=True) as bar:
            report = run_demo(ledger, clock, members, seed, on_day=lambda day: bar.update(1))
    except DemoAlreadyLoaded as error:
        raise click.ClickException(f"{error}; run `loyalty demo --fresh` to start over") from None
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
