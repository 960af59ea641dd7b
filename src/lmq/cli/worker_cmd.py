"""``lmq worker``."""

from __future__ import annotations

import logging
import os

import click

from ..exceptions import ConfigError
from ..logfile import add_json_log
from ..worker import Worker, WorkerSettings
from ..worker.processes import run_processes
from .common import cli, load_app, setup_logging


@cli.command()
@click.option(
    "--url",
    metavar="URL",
    help="Queue database URL; overrides the app's [default: $LMQ_URL, else the "
    "URL the app's Queue was made with].",
)
@click.option(
    "--app",
    metavar="MODULE[:ATTR]",
    envvar="LMQ_APP",
    help="Importable module defining your Queue and its tasks [$LMQ_APP; required].",
)
@click.option("--queues", metavar="A,B", help="Only these queues [default: every queue].")
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Tasks run at once per process (async handlers on the loop, def handlers in threads).",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes under one parent that restarts any that dies.",
)
@click.option(
    "--burst",
    is_flag=True,
    help="Exit 0 once nothing is ready (delayed and backed-off tasks stay queued).",
)
@click.option(
    "--lease",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds a claim holds without renewal (renewed every S/3).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="S",
    help="On SIGTERM/SIGINT, seconds running tasks get to finish.",
)
@click.option(
    "--keep-done",
    type=click.FloatRange(min=0),
    default=86400.0,
    show_default=True,
    metavar="S",
    help="Seconds finished (and cancelled) tasks are kept before the pruner deletes "
    "them; 0 deletes them within about a second.",
)
@click.option(
    "--keep-dead",
    type=click.FloatRange(min=0),
    default=7 * 86400.0,
    show_default=True,
    metavar="S",
    help="Seconds a dead letter is kept once resolved (re-queued, discarded or rejected "
    "in review); dead letters nobody has looked at are never pruned.",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    metavar="PATH",
    help="Also write one JSON object per event to PATH (reopened after logrotate).",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="-v: every task event on the console (claimed, succeeded); -vv: also the "
    "drivers' and asyncio's debug lines.  --log-file gets every event whatever -v says.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on the console.")
@click.option(
    "--loop",
    "loop_kind",
    type=click.Choice(["auto", "asyncio", "uvloop"]),
    default="auto",
    show_default=True,
    help="Event loop: auto uses uvloop when it is installed (pip install 'lmq[uvloop]').",
)
def worker(
    url: str | None,
    app: str | None,
    queues: str | None,
    concurrency: int,
    processes: int,
    burst: bool,
    lease: float,
    grace: float,
    keep_done: float,
    keep_dead: float,
    log_file: str | None,
    verbose: int,
    quiet: bool,
    loop_kind: str,
) -> None:
    """Run tasks until stopped.

    SIGTERM or SIGINT: stop claiming, let running tasks finish within --grace seconds,
    acknowledge them and exit 0; a second signal exits at once (unfinished tasks are
    claimable again once their leases expire).
    """
    if not app:
        raise ConfigError(
            "lmq worker needs --app MODULE (or $LMQ_APP): the module that "
            "defines your Queue and tasks"
        )
    queue_list = tuple(q.strip() for q in queues.split(",") if q.strip()) if queues else None
    if queues is not None and not queue_list:
        raise click.BadParameter("give at least one queue name", param_hint="--queues")
    setup_logging(verbose, quiet)
    if log_file:
        add_json_log(log_file)
    queue = load_app(app)
    chosen = url or os.environ.get("LMQ_URL") or queue.url
    queue.use_url(chosen, create=True)
    if processes > 1:
        child_args = [
            "worker",
            "--app",
            app,
            "-c",
            str(concurrency),
            "--lease",
            str(lease),
            "--grace",
            str(grace),
            "--keep-done",
            str(keep_done),
            "--keep-dead",
            str(keep_dead),
        ]
        if queues:
            child_args += ["--queues", queues]
        if burst:
            child_args.append("--burst")
        if log_file:
            child_args += ["--log-file", log_file]
        if quiet:
            child_args.append("-q")
        child_args += ["--loop", loop_kind]
        child_args += ["-v"] * verbose
        # the URL goes by environment, not argv: `ps` shows argv, and URLs hold passwords
        env = {**os.environ, "LMQ_URL": chosen, "LMQ_APP": app}
        raise SystemExit(run_processes(child_args, processes, burst=burst, grace=grace, env=env))
    settings = WorkerSettings(
        queues=queue_list,
        concurrency=concurrency,
        lease=lease,
        burst=burst,
        grace=grace,
        keep_done=keep_done,
        keep_dead=keep_dead,
        loop=loop_kind,
    )
    queue.backend.schema_version()  # open now: a bad URL fails here with one line
    code = Worker(queue, settings).run()
    logging.shutdown()
    raise SystemExit(code)
