"""The `loyalty` command line."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import sys
import threading
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from application.errors import ApplicationError
from domain.errors import DomainError
from infrastructure.config import DEFAULT_DATA_DIR, Config, ConfigError


def load_config() -> Config:
    try:
        return Config.from_env()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


class _Commands(click.Group):
    """A database that cannot be reached, or fails, is a one-line message, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from eventsourcing.persistence import InterfaceError, OperationalError

        psycopg = sys.modules.get("psycopg")  # only ever raised once it is loaded
        failures = (OperationalError, InterfaceError, sqlite3.OperationalError) + \
            ((psycopg.OperationalError, psycopg.InterfaceError) if psycopg else ())
        try:
            return super().invoke(ctx)
        except failures as error:
            why = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise click.ClickException(f"database error: {why} (check LOYALTY_DATABASE_URL)") from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """loyalty-ledger: an event-sourced loyalty points ledger.

    Configuration comes from the environment: LOYALTY_DATABASE_URL (sqlite:///file.db, the
    default under ./data, or postgresql://user@host:port/db), LOYALTY_ADMIN_KEY, LOYALTY_LOG_FORMAT.
    """
    from infrastructure.gc_tuning import tune_gc

    tune_gc()


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
@click.option("--workers", type=click.IntRange(1, 64),
              help="Processes. Default: two per CPU (at most 8) on PostgreSQL, where 4 on 2 cores carried 6-9% more "
                   "single purchases than 2 (BENCHMARKS.md, run 9); 2 on SQLite, which has one writer at a time.")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(1, 256),
              help="Threads per process: they mostly wait for the group commit, and more of them make larger batches.")
@click.option("--projections/--no-projections", "run_projections", default=None,
              help="Run the projection runner inside the server. Default: on for SQLite; on PostgreSQL run "
                   "`loyalty projections run` as its own process instead.")
@click.option("--reuse-port", is_flag=True,
              help="Each worker listens on its own socket (SO_REUSEPORT), so the kernel spreads connections "
                   "evenly over the workers. Off by default: with it, a second server started on the same "
                   "port shares it silently instead of failing.")
def serve(host: str, port: int, workers: int | None, threads: int, run_projections: bool | None, reuse_port: bool) -> None:
    """Serve the HTTP API with gunicorn (creates the schema first)."""
    from api.serve import default_server_workers
    from api.serve import serve as run_server

    config = load_config()
    if config.admin_key is None:
        config = replace(config, admin_key=secrets.token_urlsafe(24))
        click.echo(f"No LOYALTY_ADMIN_KEY set; this run's admin key is: {config.admin_key}", err=True)
    else:
        click.echo("Admin key: the value of LOYALTY_ADMIN_KEY", err=True)
    if run_projections is None:
        run_projections = config.database.kind == "sqlite"
    workers = workers or default_server_workers(config)
    click.echo(f"Serving on http://{host}:{port} ({workers} workers x {threads} threads), "
               f"data in the {config.database.describe()}; projections "
               f"{'run in the server' if run_projections else 'not run here (loyalty projections run)'}; "
               f"docs at /docs", err=True)
    run_server(config, host, port, workers, threads, run_projections, reuse_port=reuse_port)


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


def open_read_model() -> Any:
    from infrastructure.bootstrap import build_ledger, build_read_model

    config = load_config()
    if config.database.kind == "memory":
        raise click.ClickException("projections need a SQLite or PostgreSQL database")
    ledger = build_ledger(config)
    return build_read_model(config, ledger)


@main.group()
def projections() -> None:
    """The read models built from the event log."""


@projections.command("run")
@click.option("--once", is_flag=True, help="Catch up and exit instead of following new events.")
def run_projections(once: bool) -> None:
    """Apply new events to the projections, in batches; follows the log until interrupted."""
    import signal

    from infrastructure.logging import configure_logging

    model = open_read_model()
    configure_logging(load_config().log_format)
    if once:
        click.echo(f"applied {model.runner.catch_up():,} events")
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    click.echo(f"following the event log in the {load_config().database.describe()}", err=True)
    model.runner.run_forever(stop)


@projections.command("status")
def projections_status() -> None:
    """Each projection's position, the head of the log, and the lag."""
    model = open_read_model()
    for status in model.runner.status():
        flag = "  (rebuilding)" if status.rebuilding else ""
        click.echo(f"{status.name:<12} position {status.position:>12,}  head {status.head:>12,}  lag {status.lag:>10,}{flag}")


@projections.command("rebuild")
@click.argument("name", required=False)
@click.option("--workers", type=click.IntRange(1, 64),
              help="Processes rebuilding at once, each given whole projections. Default: one per CPU on PostgreSQL; "
                   "SQLite takes one writer at a time, so 1 there.")
def rebuild_projections(name: str | None, workers: int | None) -> None:
    """Rebuild one projection (or all) from position zero; the API keeps serving meanwhile."""
    from infrastructure.rebuild_workers import RebuildFailed, rebuild_in_processes
    from infrastructure.worker_processes import default_workers

    config = load_config()
    model = open_read_model()
    known = [p.name for p in model.runner.projections]
    if name is not None and name not in known:
        raise click.ClickException(f"no projection {name!r}; known: {', '.join(known)}")
    if config.database.kind != "postgresql" and (workers or 1) > 1:
        raise click.ClickException(f"--workers {workers} needs PostgreSQL: {config.database.kind} has one writer at a time")
    names = [name] if name else None
    workers = min(workers or default_workers(config), len(names or known))
    head = model.runner.head()
    with click.progressbar(length=head, label=f"Rebuilding {name or 'all projections'}", show_pos=True) as bar:
        if workers > 1:
            try:  # progress is reported one call at a time, as the slowest worker moves
                applied = rebuild_in_processes(config, model.runner, names, workers=workers, on_progress=bar.update)
            except RebuildFailed as error:
                raise click.ClickException(str(error)) from None
        else:
            applied = model.runner.rebuild(names, on_progress=bar.update)
    click.echo(f"rebuilt {name or 'all projections'} from {applied:,} events"
               + (f" ({workers} workers)" if workers > 1 else ""))


@main.group(invoke_without_command=True)
@click.option("--program", "program_id", help="Only this program.")
@click.pass_context
def reconcile(context: click.Context, program_id: str | None) -> None:
    """Prove the projections equal a fresh replay of the event log; exit 1 on any difference.

    `loyalty reconcile partner FILE ...` reconciles a partner's statement instead."""
    if context.invoked_subcommand is not None:
        return
    model = open_read_model()
    model.runner.catch_up()
    report = model.reconcile(program_id)
    click.echo(f"members {report['members']:,}; totals: event log {report['event_log_total']:,}, "
               f"projected lots {report['projection_total']:,}, member roll-forward {report['members_total']:,}, "
               f"liability roll-forward {report['liability_total']:,}")
    for difference in report["differences"][:50]:
        click.echo(f"DIFFERENCE {json.dumps(difference, default=str)}")
    if not report["ok"]:
        raise click.ClickException(f"reconciliation failed: {len(report['differences'])} member(s) differ"
                                   if report["differences"] else "reconciliation failed: the totals differ")
    click.echo("ok: every projection equals the event log")


def period_options(function: Any) -> Any:
    function = click.option("--to", "end", required=True, type=click.DateTime(["%Y-%m-%d"]),
                            help="Last day (UTC), included.")(function)
    return click.option("--from", "start", required=True, type=click.DateTime(["%Y-%m-%d"]),
                        help="First day (UTC), included.")(function)


def emit(report: dict[str, Any], rows: list[dict[str, Any]], fmt: str) -> None:
    from projections.reports import csv_rows

    if fmt == "json":
        click.echo(json.dumps(report, indent=2))
    elif fmt == "csv":
        click.echo(csv_rows(rows), nl=False)
    else:
        from projections.reports import flatten

        flat = [flatten(row) for row in rows]
        columns = list(dict.fromkeys(key for row in flat for key in row))
        widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in flat)) for c in columns}
        click.echo("  ".join(c.ljust(widths[c]) for c in columns))
        for row in flat:
            click.echo("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def finance() -> Any:
    from projections.reports import FinanceReports

    model = open_read_model()
    model.runner.catch_up()
    return FinanceReports(model)


def run_report(make: Any) -> Any:
    try:
        return make()
    except (DomainError, ApplicationError) as error:
        raise click.ClickException(error.detail) from None


FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)


@main.group()
def report() -> None:
    """Finance reports: liability, settlement, revenue."""


@report.command("liability")
@click.option("--program", "program_id", required=True)
@period_options
@click.option("--partner", "partner_id", help="Only points issued by this partner.")
@click.option("--monthly", is_flag=True, help="Add a row per month.")
@click.option("--chart", type=click.Path(dir_okay=False, writable=True), help="Also write an SVG chart by month.")
@FORMAT
def report_liability(program_id: str, start: datetime, end: datetime, partner_id: str | None, monthly: bool,
                     chart: str | None, fmt: str) -> None:
    """The points liability roll-forward, in points and currency."""
    from projections.reports import Period, rollforward_svg

    result = run_report(lambda: finance().liability(program_id, Period(start.date(), end.date()), partner_id,
                                                     monthly or chart is not None))
    rows = [{"period": f"{result['from']}..{result['to']}", "points": result["points"], "value": result["value"]}]
    rows += [{"period": m["month"], "points": m["points"], "value": m["value"]} for m in result.get("months", [])]
    emit(result, rows, fmt)
    if chart:
        Path(chart).write_text(rollforward_svg(result))
        click.echo(f"chart written to {chart}", err=True)


@report.command("settlement")
@click.option("--program", "program_id", required=True)
@period_options
@FORMAT
def report_settlement(program_id: str, start: datetime, end: datetime, fmt: str) -> None:
    """Who owes whom for points earned at one partner and redeemed at another."""
    from projections.reports import Period

    result = run_report(lambda: finance().settlement(program_id, Period(start.date(), end.date())))
    emit(result, result["lines"], fmt)


@report.command("revenue")
@click.option("--program", "program_id", required=True)
@period_options
@FORMAT
def report_revenue(program_id: str, start: datetime, end: datetime, fmt: str) -> None:
    """IFRS 15 / ASC 606 revenue and breakage of the points, per month."""
    from projections.reports import Period

    result = run_report(lambda: finance().revenue(program_id, Period(start.date(), end.date())))
    total = {k: v for k, v in result.items() if k not in ("periods", "program_id", "currency")}
    emit(result, [*result["periods"], {**total, "from": f"total {total['from']}"}], fmt)


@reconcile.command("partner")
@click.argument("statement", type=click.File("r"))
@click.option("--partner", "partner_id", required=True)
@period_options
@FORMAT
def reconcile_partner(statement: Any, partner_id: str, start: datetime, end: datetime, fmt: str) -> None:
    """Match a partner's CSV statement (transaction_id,amount,occurred_at) with the ledger."""
    from projections.reports import Period

    result = run_report(lambda: finance().partner_statement(partner_id, Period(start.date(), end.date()),
                                                            statement.read()))
    rows = ([{"status": "matched", **r} for r in result["matched"]]
            + [{"status": "missing_in_ledger", **r} for r in result["missing_in_ledger"]]
            + [{"status": "missing_in_statement", **r} for r in result["missing_in_statement"]]
            + [{"status": "amount_mismatch", **r} for r in result["amount_mismatches"]])
    emit(result, rows, fmt)
    if fmt == "table":
        for name, total in result["totals"].items():
            click.echo(f"{name}: {total}")


@main.group("import")
def import_group() -> None:
    """Bulk imports."""


@import_group.command("purchases")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--partner", "partner_id", required=True, help="The partner whose purchases these are.")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where refused rows go (default: FILE.rejects.jsonl).")
@click.option("--cache-members", default=10_000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="At most this many members kept in memory between batches.")
@click.option("--cache-events", default=100_000, show_default=True, type=click.IntRange(1, 1_000_000_000),
              help="At most this many events' worth of member history kept in memory: bounds the importer's memory "
                   "(shared among the workers).")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Processes importing at once, each given whole members' rows. Default: one per CPU on "
                   "PostgreSQL; SQLite takes one writer at a time, so 1 there. The cache bounds are shared among them.")
def import_purchases_command(path: Path, partner_id: str, batch_size: int, rejects_path: Path | None,
                             cache_members: int, cache_events: int, workers: int | None) -> None:
    """Stream purchases from a .csv or .jsonl file, committing batches; safe to run again after a
    crash (rows already imported are recognised by their transaction ids and counted once)."""
    from api.import_rows import row_to_command
    from application.bulk_import import file_kind, import_purchases
    from infrastructure.bootstrap import build_ledger
    from infrastructure.import_workers import WorkerFailed, import_in_processes
    from infrastructure.worker_processes import default_workers

    try:
        kind = file_kind(path)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    config = load_config()
    if config.database.kind != "postgresql" and (workers or 1) > 1:
        raise click.ClickException(f"--workers {workers} needs PostgreSQL: {config.database.kind} has one writer at a time")
    if workers is None:
        workers = default_workers(config)
    # The importer is its cache's only writer: members are changed in place, not copied per batch.
    # A member the cache lost is reloaded with the rest of its batch (snapshot and later events).
    # With workers, they are forked before this process connects, and their ledgers are their own:
    # this one only creates the schema, once, before any row goes to them.
    ledger = build_ledger(config, cache_size=cache_members, cache_events=cache_events, single_writer=True) \
        if workers == 1 else None
    rejects_path = rejects_path or path.with_name(path.name + ".rejects.jsonl")
    try:
        total = _count_rows(path, kind)
        if ledger is not None:
            _check_partner(ledger, partner_id)
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark, not part of the header.
        with path.open(encoding="utf-8-sig", newline="") as stream, \
                click.progressbar(length=max(total, 0), label=f"Importing {path.name}", show_pos=True) as bar:
            if workers > 1:
                progress = threading.Lock()

                def advance(rows: int) -> None:
                    with progress:  # the workers report from threads of their own
                        bar.update(rows)

                # The cache bounds are the importer's, shared out: its memory stays bounded the same.
                summary = import_in_processes(
                    config, stream, kind, partner_id, rejects_path, workers=workers, actor="cli:import",
                    batch_size=batch_size, cache_members=cache_members // workers,
                    cache_events=max(1, cache_events // workers), on_progress=advance,
                    to_command="api.import_rows:row_to_command", prepare=lambda: _prepare_import(config, partner_id))
            else:
                assert ledger is not None
                with rejects_path.open("w", encoding="utf-8") as rejects:
                    summary = import_purchases(ledger, stream, kind, partner_id, rejects, actor="cli:import",
                                               to_command=row_to_command, batch_size=batch_size,
                                               on_progress=bar.update)
    except (ValueError, WorkerFailed) as error:
        raise click.ClickException(str(error)) from None
    finally:
        if ledger is not None:
            ledger.close()
    click.echo(f"rows {summary.rows:,}: imported {summary.imported:,} ({summary.points:,} points), "
               f"already imported {summary.already_imported:,}, rejected {summary.rejected:,}"
               + (f" ({workers} workers)" if workers > 1 else ""))
    if summary.rejected:
        reasons = ", ".join(f"{k} x{v:,}" for k, v in sorted(summary.reasons.items(), key=lambda kv: -kv[1]))
        click.echo(f"rejected rows are in {rejects_path} ({reasons})")


def _count_rows(path: Path, kind: str) -> int:
    """Reads the file through once before anything is imported: one that is not UTF-8 is refused whole."""
    rows = 0
    with path.open("rb") as counting:
        for number, line in enumerate(counting, start=1):
            try:
                rows += bool(line.decode("utf-8").strip())
            except UnicodeDecodeError as error:
                raise click.ClickException(f"{path.name} line {number} is not UTF-8 text (byte "
                                           f"{line[error.start]:#04x}); save the file as UTF-8 and import again") from None
    return rows - (1 if kind == "csv" else 0)


def _check_partner(ledger: Any, partner_id: str) -> None:
    """Refuses an import for a partner the ledger does not know before any row is read."""
    from application.errors import ApplicationError
    from domain.errors import DomainError

    try:
        ledger.partner_program(partner_id)
    except (ApplicationError, DomainError) as error:
        raise click.ClickException(f"--partner {partner_id}: {error.detail}") from None


def _prepare_import(config: Any, partner_id: str) -> None:
    """Once the import's workers have started: the schema (once, not in each worker) and the partner."""
    from infrastructure.bootstrap import build_ledger

    ledger = build_ledger(config)
    try:
        _check_partner(ledger, partner_id)
    finally:
        ledger.close()


@main.group()
def audit() -> None:
    """Tamper evidence: the hash chain over every stored event."""


@audit.command("checkpoint")
def audit_checkpoint() -> None:
    """Print the chain's head as JSON: keep it somewhere the database's owner cannot edit."""
    model = open_read_model()
    model.runner.catch_up()
    click.echo(json.dumps(model.checkpoint()))


@audit.command("verify")
@click.option("--checkpoint", "checkpoint_file", type=click.File("r"), help="A checkpoint JSON kept earlier.")
def audit_verify(checkpoint_file: Any) -> None:
    """Recompute the chain from the stored events; name the first position that does not match."""
    model = open_read_model()
    model.runner.catch_up()
    against = None
    if checkpoint_file is not None:
        try:
            saved = json.load(checkpoint_file)
            against = (int(saved["position"]), str(saved["hash"]))
        except (ValueError, KeyError, TypeError) as error:
            raise click.ClickException(f"not a checkpoint file: {error}") from None
    result = model.verify(against)
    if not result.ok:
        raise click.ClickException(f"tampering detected at position {result.first_bad_position}: {result.reason} "
                                   f"(verified through {result.verified_through})")
    click.echo(f"ok: verified through position {result.verified_through}")


@audit.command("export")
@click.option("--member", "member_id", required=True)
@click.option("--output", type=click.File("w"), default="-", show_default=True)
def audit_export(member_id: str, output: Any) -> None:
    """Write a member's history as JSON lines, each event with its hash."""
    model = open_read_model()
    model.runner.catch_up()
    try:
        for line in model.export_member(member_id):
            output.write(line + "\n")
    except (DomainError, ApplicationError) as error:
        raise click.ClickException(error.detail) from None


if __name__ == "__main__":
    main()
