"""``lmq deploy systemd|supervisor``: print a ready unit / program section for a worker.

The unit runs ``PYTHON -m lmq worker …`` with the options given, restarts it whenever it
exits, stops it with SIGTERM and a stop timeout above the grace period (``--grace`` + 10 s),
and reads ``LMQ_URL`` from an environment file rather than holding the secret itself:
systemd through ``EnvironmentFile=``, Supervisor through ``LMQ_ENV_FILE`` (which every
``lmq`` command reads at start-up, see :func:`load_env_file`).  Nothing here prints the
URL's password.

The environment file is the same for both: ``KEY=VALUE`` lines, ``#`` comments, values
optionally in single or double quotes (systemd's ``EnvironmentFile=`` syntax).
"""

from __future__ import annotations

import getpass
import importlib.util
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .. import __version__
from ..exceptions import ConfigError
from ..url import mask
from .common import cli

ENV_FILE_VAR = "LMQ_ENV_FILE"
STOP_MARGIN = 10.0  # seconds the service manager waits beyond --grace before SIGKILL

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


# --- the environment file -------------------------------------------------------------------


def parse_env_file(path: str) -> dict[str, str]:
    """``KEY=VALUE`` lines of ``path`` (systemd ``EnvironmentFile=`` syntax, a subset).

    Blank lines and lines starting with ``#`` or ``;`` are skipped; ``export KEY=VALUE``
    is accepted; a value in matching single or double quotes loses them (in double quotes,
    ``\\"`` and ``\\\\`` are unescaped).  Errors name the line number, never its text
    (it may hold a password).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the environment file {path} ({ENV_FILE_VAR}): {exc.strerror or exc}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"the environment file {path} is not UTF-8 text") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.match(key):
            raise ConfigError(f"the environment file {path}, line {number}: expected KEY=VALUE")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        values[key] = value
    return values


def load_env_file(environ: dict[str, str] | None = None) -> None:
    """If ``$LMQ_ENV_FILE`` names a file, set its variables in the environment.

    Variables already set win (so an explicit ``LMQ_URL=… lmq status``, and the URL a
    ``--processes`` parent hands its children, are not overridden by the file).
    """
    env = os.environ if environ is None else environ
    path = env.get(ENV_FILE_VAR)
    if not path:
        return
    for key, value in parse_env_file(path).items():
        env.setdefault(key, value)


# --- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    name: str
    app: str
    queues: str | None
    concurrency: int
    processes: int
    lease: float
    grace: float
    log_file: str | None
    user: str
    workdir: str
    env_file: str
    python: str
    url_hint: str  # what to write after LMQ_URL= (masked)

    @property
    def stop_timeout(self) -> int:
        return math.ceil(self.grace + STOP_MARGIN)

    def argv(self) -> list[str]:
        args = [self.python, "-m", "lmq", "worker", "--app", self.app]
        if self.queues:
            args += ["--queues", self.queues]
        args += ["--concurrency", str(self.concurrency), "--processes", str(self.processes)]
        args += ["--lease", f"{self.lease:g}", "--grace", f"{self.grace:g}"]
        if self.log_file:
            args += ["--log-file", self.log_file]
        return args


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+\Z")


def systemd_quote(arg: str) -> str:
    """One ExecStart= word: specifiers (%) and variables ($) kept literal."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def supervisor_quote(arg: str) -> str:
    """One ``command=`` word (Supervisor splits it with shlex; % is its interpolation)."""
    if not _PLAIN.match(arg):
        arg = "'" + arg.replace("'", "'\"'\"'") + "'"
    return arg.replace("%", "%%")


def _env_help(s: Settings, comment: str, owner: str | None) -> list[str]:
    c = comment
    d = os.path.dirname(s.env_file) or "."
    own = f" -o {owner}" if owner else ""
    return [
        f"{c} The queue URL (with its password) lives in {s.env_file}, not in this file:",
        f"{c}   sudo install -d -m 755 {d}",
        f"{c}   sudo install -m 600{own} /dev/null {s.env_file}",
        f"{c}   sudoedit {s.env_file}     # one line: LMQ_URL={s.url_hint}",
    ]


def render_systemd(s: Settings) -> str:
    unit = f"{s.name}.service"
    exec_start = " ".join(systemd_quote(a) for a in s.argv())
    logs_dir = None
    if s.log_file and s.log_file.startswith("/var/log/"):
        rest = s.log_file[len("/var/log/") :]
        if "/" in rest:
            logs_dir = rest.rsplit("/", 1)[0]
    lines = [
        f"# {unit}: an lmq worker (made by `lmq deploy systemd`, lmq {__version__})",
        "#",
        *_env_help(s, "#", None),
        "#   (systemd reads it as root before starting the worker as "
        f"{s.user}: keep it root-owned, mode 600)",
        "# Install and start:",
        f"#   lmq deploy systemd ... | sudo tee /etc/systemd/system/{unit}",
        f"#   sudo systemctl daemon-reload && sudo systemctl enable --now {s.name}",
        f"#   systemctl status {s.name}; journalctl -u {s.name} -f",
        f"# Upgrades: `lmq migrate` once, then `sudo systemctl restart {s.name}` on each host.",
        "",
        "[Unit]",
        f"Description=lmq worker ({s.app})",
        "After=network-online.target",
        "Wants=network-online.target",
        "# keep restarting while the database is down at boot (no start rate limit)",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"User={s.user}",
        f"WorkingDirectory={s.workdir}",
        f"EnvironmentFile={s.env_file}",
        "Environment=PYTHONUNBUFFERED=1",
        f"ExecStart={exec_start}",
        "Restart=always",
        "RestartSec=2",
        "# SIGTERM: the worker stops claiming and gives running tasks --grace "
        f"({s.grace:g}s) to finish;",
        "# systemd waits a little longer before SIGKILL.  mixed: SIGTERM goes to the main",
        "# process only (a --processes parent forwards it), SIGKILL to the whole group.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={s.stop_timeout}",
        "NoNewPrivileges=true",
    ]
    if logs_dir:
        lines.append(f"# creates /var/log/{logs_dir} owned by {s.user} for --log-file")
        lines.append(f"LogsDirectory={logs_dir}")
    elif s.log_file:
        lines.append(f"# --log-file's directory must exist and be writable by {s.user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def render_supervisor(s: Settings, console_log: str) -> str:
    command = " ".join(supervisor_quote(a) for a in s.argv())
    dirs = sorted({os.path.dirname(p) for p in (s.log_file, console_log) if p and p != "AUTO"})
    log_dirs = ["; Log directory (Supervisor does not create it):"] if dirs else []
    log_dirs += [f";   sudo install -d -o {s.user} {d}" for d in dirs]
    env_file = s.env_file.replace("%", "%%").replace('"', '\\"')
    lines = [
        f"; {s.name}: an lmq worker (made by `lmq deploy supervisor`, lmq {__version__})",
        ";",
        *_env_help(s, ";", s.user),
        f";   (the worker, as {s.user}, reads it at start through ${ENV_FILE_VAR}: the URL",
        ";   is in neither this file, the environment Supervisor shows, nor `ps`)",
        *log_dirs,
        "; Install and start:",
        f";   lmq deploy supervisor ... | sudo tee /etc/supervisor/conf.d/{s.name}.conf",
        ";   sudo supervisorctl reread && sudo supervisorctl update",
        f";   sudo supervisorctl status {s.name}",
        f"; Upgrades: `lmq migrate` once, then `sudo supervisorctl restart {s.name}` on each host.",
        "",
        f"[program:{s.name}]",
        f"command={command}",
        f"directory={s.workdir.replace('%', '%%')}",
        f"user={s.user}",
        f'environment={ENV_FILE_VAR}="{env_file}",PYTHONUNBUFFERED="1"',
        "autostart=true",
        "autorestart=true",
        "startsecs=1",
        "; a worker that exits at once (database down at boot) is retried this often",
        "startretries=100",
        "; SIGTERM: running tasks get --grace to finish; Supervisor waits a little longer",
        "; before SIGKILL.  The signal goes to the worker only (a --processes parent",
        "; forwards it); SIGKILL goes to the whole group.",
        "stopsignal=TERM",
        f"stopwaitsecs={s.stop_timeout}",
        "stopasgroup=false",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={console_log.replace('%', '%%')}",
        "stdout_logfile_maxbytes=50MB",
        "stdout_logfile_backups=5",
        "",
    ]
    return "\n".join(lines)


# --- the commands ---------------------------------------------------------------------------


def _settings(
    *,
    name: str,
    app: str | None,
    queues: str | None,
    concurrency: int,
    processes: int,
    lease: float,
    grace: float,
    log_file: str | None,
    user: str | None,
    workdir: str | None,
    env_file: str | None,
    python: str | None,
    url: str | None,
) -> Settings:
    if not app:
        raise ConfigError(
            "lmq deploy needs --app MODULE (or $LMQ_APP): the module that defines your "
            "Queue and tasks"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
        raise click.BadParameter("letters, digits, '.', '_', '-' and '@' only", param_hint="--name")
    if queues is not None:
        names = [q.strip() for q in queues.split(",") if q.strip()]
        if not names:
            raise click.BadParameter("give at least one queue name", param_hint="--queues")
        queues = ",".join(names)
    work = os.path.abspath(workdir or os.getcwd())
    if log_file:
        log_file = os.path.normpath(os.path.join(work, log_file))  # the worker's cwd
    env = os.path.abspath(env_file or f"/etc/lmq/{name}.env")
    chosen = url or os.environ.get("LMQ_URL")
    if chosen:
        # the password never appears: the user types it into the file
        hint = mask(chosen).replace(":***@", ":PASSWORD@")
    else:
        hint = "postgresql://USER:PASSWORD@HOST/DB"
    return Settings(
        name=name,
        app=app,
        queues=queues,
        concurrency=concurrency,
        processes=processes,
        lease=lease,
        grace=grace,
        log_file=log_file,
        user=user or getpass.getuser(),
        workdir=work,
        env_file=env,
        python=os.path.abspath(python or sys.executable),
        url_hint=hint,
    )


def _check_app(s: Settings) -> None:
    """Warn (not fail: the unit may be for another host) when the app is not importable."""
    module = s.app.partition(":")[0]
    sys.path.insert(0, s.workdir)
    try:
        found = importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        found = False
    finally:
        sys.path.remove(s.workdir)
    if not found:
        click.echo(
            f"lmq deploy: warning: cannot find the app module {module!r} from {s.workdir} "
            "(check --app and --workdir on the host that runs it)",
            err=True,
        )


def worker_options(f: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option(
            "--app",
            metavar="MODULE[:ATTR]",
            envvar="LMQ_APP",
            help="Importable module defining your Queue and tasks [$LMQ_APP; required].",
        ),
        click.option("--queues", metavar="A,B", help="Only these queues [default: every queue]."),
        click.option(
            "-c",
            "--concurrency",
            type=click.IntRange(min=1),
            default=10,
            show_default=True,
            help="Tasks run at once per process.",
        ),
        click.option(
            "-p",
            "--processes",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Worker processes under one lmq parent (it restarts a child that dies).",
        ),
        click.option(
            "--lease",
            type=click.FloatRange(min=1),
            default=30.0,
            show_default=True,
            metavar="S",
            help="Seconds a claim holds without renewal: how soon a killed worker's tasks "
            "run again.",
        ),
        click.option(
            "--grace",
            type=click.FloatRange(min=0),
            default=10.0,
            show_default=True,
            metavar="S",
            help=f"Seconds running tasks get on SIGTERM; the stop timeout is S + {STOP_MARGIN:g}.",
        ),
        click.option(
            "--log-file",
            metavar="PATH",
            help="The worker's JSON event log (relative paths are relative to --workdir).",
        ),
        click.option("--user", metavar="USER", help="Run the worker as USER [default: you]."),
        click.option(
            "--workdir",
            metavar="DIR",
            help="The worker's working directory, where --app imports from "
            "[default: the current directory].",
        ),
        click.option(
            "--env-file",
            metavar="PATH",
            help="The file holding LMQ_URL=… [default: /etc/lmq/NAME.env].",
        ),
        click.option(
            "--name",
            default="lmq-worker",
            show_default=True,
            help="The unit / program name.",
        ),
        click.option(
            "--python",
            metavar="PATH",
            help="The Python that runs lmq [default: this one, "
            f"{os.path.abspath(sys.executable)}].",
        ),
        click.option(
            "--url",
            metavar="URL",
            help="Only to show what goes into the env file (its password masked) "
            "[default: $LMQ_URL].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@cli.group()
def deploy() -> None:
    """Print a service definition that runs `lmq worker` under systemd or Supervisor.

    The output goes to stdout (redirect it into place); its comment header says where
    it goes and how to enable it.  The worker restarts whenever it exits, is stopped with
    SIGTERM and a timeout of --grace + 10 s, and reads LMQ_URL from an environment file
    (mode 600) so the password is neither in the unit nor in `ps`.
    """


@deploy.command("systemd")
@worker_options
def deploy_systemd(**options: object) -> None:
    """A systemd service unit (/etc/systemd/system/NAME.service).

    Restart=always, KillMode=mixed, TimeoutStopSec=--grace + 10, EnvironmentFile= for
    LMQ_URL.  Example:

    \b
        lmq deploy systemd --app myapp.tasks --user app --workdir /srv/app \\
            --log-file /var/log/lmq/worker.log | sudo tee /etc/systemd/system/lmq-worker.service
    """
    s = _settings(**options)  # type: ignore[arg-type]
    _check_app(s)
    click.echo(render_systemd(s), nl=False)


@deploy.command("supervisor")
@worker_options
@click.option(
    "--console-log",
    metavar="PATH",
    help="Where Supervisor keeps the worker's console lines [default: NAME.console.log "
    "beside --log-file, else AUTO (Supervisor's childlogdir)].",
)
def deploy_supervisor(console_log: str | None, **options: object) -> None:
    """A Supervisor program section (/etc/supervisor/conf.d/NAME.conf).

    autorestart=true, stopsignal=TERM, stopwaitsecs=--grace + 10, and
    environment=LMQ_ENV_FILE=… pointing at the file that holds LMQ_URL.  Example:

    \b
        lmq deploy supervisor --app myapp.tasks --user app --workdir /srv/app \\
            | sudo tee /etc/supervisor/conf.d/lmq-worker.conf
    """
    s = _settings(**options)  # type: ignore[arg-type]
    _check_app(s)
    if console_log:
        console = os.path.normpath(os.path.join(s.workdir, console_log))
    elif s.log_file:
        console = os.path.join(os.path.dirname(s.log_file), f"{s.name}.console.log")
    else:
        console = "AUTO"
    click.echo(render_supervisor(s, console), nl=False)


__all__ = ["ENV_FILE_VAR", "load_env_file", "parse_env_file", "render_supervisor", "render_systemd"]
