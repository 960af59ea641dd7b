"""``lmq deploy systemd|supervisor`` and the environment file it points at.

* the printed systemd unit and Supervisor section hold the settings given (the worker's
  command line, restart always, SIGTERM with a stop timeout of --grace + 10 s, the env
  file, the log file) and never the URL's password;
* the unit's ExecStart, run the way systemd would (its EnvironmentFile loaded, in its
  WorkingDirectory), drains a task;
* a real Supervisor (``supervisord`` from PyPI, the ``test`` extra) runs the printed
  program section; the worker is SIGKILLed in the middle of a 4-second task, Supervisor
  restarts it, and the interrupted task completes (done, attempts 2); ``supervisorctl
  stop`` then stops the worker gracefully (exit status 0);
* ``$LMQ_ENV_FILE``: quotes, comments and ``export``; variables already set win; a
  missing file or a bad line is one clear line (exit 2) that never quotes the file;
* bad input for ``lmq deploy``: no --app, a bad --name, empty --queues, --concurrency 0.
"""

from __future__ import annotations

import configparser
import contextlib
import getpass
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import HERE, Harness

SECRET = "hunter2"
SECRET_URL = f"postgresql://app:{SECRET}@db.internal:5432/app"


def deploy(h: Harness, *args: str, env: dict[str, str] | None = None) -> str:
    res = h.run("deploy", *args, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def unit_sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None, comment_prefixes=("#", ";"), delimiters=("=",), strict=True
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the case
    parser.read_string(text)
    return parser


def test_systemd_unit(h: Harness) -> None:
    env = {**h.env, "LMQ_URL": SECRET_URL}
    text = deploy(
        h,
        "systemd",
        "--app",
        "myapp.tasks",
        "--queues",
        "mail, default",
        "--concurrency",
        "3",
        "--processes",
        "2",
        "--lease",
        "12",
        "--grace",
        "25",
        "--log-file",
        "/var/log/lmq/worker.jsonl",
        "--user",
        "app",
        "--workdir",
        "/srv/app",
        "--name",
        "lmq-mail",
        env=env,
    )
    assert SECRET not in text
    assert "LMQ_URL=postgresql://app:PASSWORD@db.internal:5432/app" in text  # how to make it
    assert "/etc/systemd/system/lmq-mail.service" in text
    assert "systemctl enable --now lmq-mail" in text
    assert "lmq migrate" in text
    unit = unit_sections(text)
    svc = unit["Service"]
    assert svc["Restart"] == "always"
    assert svc["KillSignal"] == "SIGTERM" and svc["KillMode"] == "mixed"
    assert svc["TimeoutStopSec"] == "35"  # grace 25 + 10
    assert svc["User"] == "app" and svc["WorkingDirectory"] == "/srv/app"
    assert svc["EnvironmentFile"] == "/etc/lmq/lmq-mail.env"
    assert svc["LogsDirectory"] == "lmq"
    assert "LMQ_URL" not in svc.get("Environment", "")
    assert shlex.split(svc["ExecStart"]) == [
        os.path.abspath(sys.executable),
        "-m",
        "lmq",
        "worker",
        "--app",
        "myapp.tasks",
        "--queues",
        "mail,default",
        "--concurrency",
        "3",
        "--processes",
        "2",
        "--lease",
        "12",
        "--grace",
        "25",
        "--log-file",
        "/var/log/lmq/worker.jsonl",
    ]
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert "network-online.target" in unit["Unit"]["After"]


def test_systemd_exec_start_runs(h: Harness) -> None:
    """ExecStart as systemd runs it: EnvironmentFile loaded, in WorkingDirectory."""
    work = h.dir / "srv"
    work.mkdir()
    shutil.copy(HERE / "lmq_itest_app.py", work)
    env_file = h.dir / "lmq.env"
    env_file.write_text(
        f"# made by the test\nLMQ_URL={h.url}\nLMQ_TEST_RECORD='{h.record_path}'\n"
        f'export LMQ_TEST_FLAGS="{h.flags}"\n'
    )
    text = deploy(
        h, "systemd", "--app", "lmq_itest_app", "--workdir", str(work),
        "--env-file", str(env_file), "--log-file", "logs/worker.jsonl", "--lease", "5",
    )  # fmt: skip
    svc = unit_sections(text)["Service"]
    assert svc["EnvironmentFile"] == str(env_file)
    (work / "logs").mkdir()
    h.queue.enqueue("hello", {"name": "systemd"})
    from lmq.cli.deploy import parse_env_file

    clean = {k: v for k, v in os.environ.items() if not k.startswith("LMQ_")}
    run_env = {**clean, **parse_env_file(svc["EnvironmentFile"]), "PYTHONDONTWRITEBYTECODE": "1"}
    res = subprocess.run(
        [*shlex.split(svc["ExecStart"]), "--burst"],
        cwd=svc["WorkingDirectory"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert h.keys("hello") == {"systemd": 1}
    assert (work / "logs" / "worker.jsonl").read_text().count('"event": "succeeded"') == 1


def test_supervisor_section(h: Harness) -> None:
    env = {**h.env, "LMQ_URL": SECRET_URL}
    text = deploy(
        h, "supervisor", "--app", "myapp.tasks", "--grace", "5", "--lease", "3",
        "--user", "app", "--workdir", "/srv/app", "--log-file", "/var/log/lmq/w.jsonl",
        env=env,
    )  # fmt: skip
    assert SECRET not in text
    assert "LMQ_URL=postgresql://app:PASSWORD@db.internal:5432/app" in text
    assert "/etc/supervisor/conf.d/lmq-worker.conf" in text
    assert "supervisorctl reread && sudo supervisorctl update" in text
    assert "sudo install -d -o app /var/log/lmq" in text
    prog = unit_sections(text)["program:lmq-worker"]
    assert prog["autorestart"] == "true" and prog["autostart"] == "true"
    assert prog["stopsignal"] == "TERM" and prog["stopwaitsecs"] == "15"
    assert prog["stopasgroup"] == "false" and prog["killasgroup"] == "true"
    assert prog["user"] == "app" and prog["directory"] == "/srv/app"
    assert prog["environment"] == 'LMQ_ENV_FILE="/etc/lmq/lmq-worker.env",PYTHONUNBUFFERED="1"'
    assert prog["stdout_logfile"] == "/var/log/lmq/lmq-worker.console.log"
    assert shlex.split(prog["command"]) == [
        os.path.abspath(sys.executable), "-m", "lmq", "worker", "--app", "myapp.tasks",
        "--concurrency", "10", "--processes", "1", "--lease", "3", "--grace", "5",
        "--log-file", "/var/log/lmq/w.jsonl",
    ]  # fmt: skip


def test_help_explains(h: Harness) -> None:
    res = h.run("deploy", "--help")
    assert res.returncode == 0
    assert "systemd" in res.stdout and "supervisor" in res.stdout and "LMQ_URL" in res.stdout
    for kind in ("systemd", "supervisor"):
        res = h.run("deploy", kind, "--help")
        assert res.returncode == 0
        for option in ("--app", "--queues", "--concurrency", "--processes", "--lease",
                       "--grace", "--log-file", "--user", "--workdir", "--env-file"):  # fmt: skip
            assert option in res.stdout, (kind, option)


def test_bad_input(h: Harness) -> None:
    env = {k: v for k, v in h.env.items() if k != "LMQ_APP"}
    cases = [
        (["systemd"], "needs --app"),
        (["supervisor", "--app", "x", "--name", "a b"], "--name"),
        (["systemd", "--app", "x", "--queues", " , "], "--queues"),
        (["supervisor", "--app", "x", "--concurrency", "0"], "--concurrency"),
        (["systemd", "--app", "x", "--lease", "0.5"], "--lease"),
        (["nginx"], "No such command"),
    ]
    for args, why in cases:
        res = h.run("deploy", *args, env=env)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert why in res.stderr, (args, res.stderr)
        assert "Traceback" not in res.stderr and res.stdout == ""


def test_env_file(h: Harness) -> None:
    env_file = h.dir / "lmq.env"
    env_file.write_text(
        "# comment\n; another\n\nexport LMQ_URL='" + h.url + '\'\nOTHER="a \\"b\\""\n'
    )
    env = {k: v for k, v in h.env.items() if k != "LMQ_URL"}
    env["LMQ_ENV_FILE"] = str(env_file)
    h.queue.enqueue("hello", {"name": "x"})
    res = h.run("status", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert '"pending": 1' in res.stdout  # the URL came from the file

    from lmq.cli.deploy import parse_env_file

    assert parse_env_file(str(env_file)) == {"LMQ_URL": h.url, "OTHER": 'a "b"'}

    # a variable already set wins over the file (here: a database that does not exist)
    other = h.dir / "other.db"
    res = h.run("status", "--json", env={**env, "LMQ_URL": f"sqlite:///{other}"})
    assert res.returncode == 2 and str(other) in res.stderr, res.stderr

    # a missing file, a bad line: one line, exit 2, the line's text (a secret) not shown
    res = h.run("status", env={**env, "LMQ_ENV_FILE": str(h.dir / "missing.env")})
    assert res.returncode == 2 and "missing.env" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    env_file.write_text(f"LMQ_URL={h.url}\npostgresql://app:{SECRET}@db/app\n")
    res = h.run("status", env=env)
    assert res.returncode == 2 and "line 2" in res.stderr and SECRET not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# --- a real Supervisor ---------------------------------------------------------------------


def _supervisor_available() -> None:
    try:
        import supervisor  # noqa: F401
    except ImportError:
        pytest.fail("supervisor is not installed: pip install -e '.[test]'")


class Supervisor:
    def __init__(self, conf: Path, env: dict[str, str], cwd: Path) -> None:
        self.conf, self.env, self.cwd = conf, env, cwd
        self.log = cwd / "supervisord.log"
        with open(cwd / "supervisord.out", "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids: set[int] = set()

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def pid(self, name: str) -> int:
        """The program's pid (0 while it is not running)."""
        res = self.ctl("pid", name)
        try:
            pid = int(res.stdout.strip())
        except ValueError:
            return 0
        if pid:
            self.pids.add(pid)
        return pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ctl("shutdown")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for pid in self.pids:  # a worker is in a process group of its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lmq-sv-"))  # a short path: unix sockets max ~107
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_supervisor_restarts_a_killed_worker(h: Harness, sockdir: Path) -> None:
    _supervisor_available()
    work = h.dir / "app"
    work.mkdir()
    shutil.copy(HERE / "lmq_itest_app.py", work)  # --app imports from the workdir
    env_file = h.dir / "lmq.env"
    env_file.write_text(
        f"LMQ_URL={h.url}\nLMQ_TEST_RECORD={h.record_path}\nLMQ_TEST_FLAGS={h.flags}\n"
    )
    env_file.chmod(0o600)
    # supervisord's own environment has no LMQ_*: the worker gets them from the env file
    # (nor tests/integration on PYTHONPATH: the app imports from the workdir)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LMQ_")}
    clean["PYTHONDONTWRITEBYTECODE"] = "1"
    section = deploy(
        h, "supervisor", "--app", "lmq_itest_app", "--workdir", str(work),
        "--user", getpass.getuser(), "--env-file", str(env_file), "--name", "lmq-itest",
        "--lease", "2", "--grace", "3", "--concurrency", "2", "--log-file", "worker.jsonl",
        env=clean,
    )  # fmt: skip
    assert str(h.url) not in section
    conf = h.dir / "supervisord.conf"
    conf.write_text(
        f"""[unix_http_server]
file={sockdir}/supervisor.sock

[supervisord]
nodaemon=true
logfile={h.dir}/supervisord.log
pidfile={h.dir}/supervisord.pid
childlogdir={h.dir}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{sockdir}/supervisor.sock

{section}"""
    )
    sup = Supervisor(conf, clean, h.dir)
    try:
        h.wait_for(
            lambda: "RUNNING" in sup.ctl("status", "lmq-itest").stdout,
            "supervisord to start the worker (RUNNING: up for startsecs)",
            60,
        )
        first = sup.pid("lmq-itest")
        task_id = h.queue.enqueue("sleep", {"n": 1, "seconds": 4})
        [(_, _, ran_in)] = h.wait_record("start", 1, timeout=60)
        assert ran_in == first
        os.kill(first, signal.SIGKILL)  # mid-task

        second = h.wait_for(
            lambda: (pid := sup.pid("lmq-itest")) and pid != first and pid,
            "Supervisor to restart the worker",
            60,
        )
        h.wait_for(lambda: "RUNNING" in sup.ctl("status", "lmq-itest").stdout, "RUNNING again", 60)
        h.wait_counts(done=1, timeout=60)
        shown = h.run_json("show", str(task_id), "--json")
        assert shown["status"] == "done" and shown["attempts"] == 2, shown
        assert [pid for _, _, pid in h.records("start")] == [first, second]
        assert [pid for _, _, pid in h.records("end")] == [second]
        assert "lmq-itest (terminated by SIGKILL; not expected)" in sup.log_text()

        # a graceful stop: SIGTERM, the worker exits 0 within stopwaitsecs
        res = sup.ctl("stop", "lmq-itest")
        assert res.returncode == 0, res.stdout + res.stderr
        h.wait_for(
            lambda: "stopped: lmq-itest (exit status 0)" in sup.log_text(), "a clean stop", 30
        )
        log = (work / "worker.jsonl").read_text()
        assert '"event": "signal"' in log and '"SIGTERM"' in log and "worker_stopped" in log
        console = (work / "lmq-itest.console.log").read_text()
        assert "started" in console and "Traceback" not in console
    finally:
        sup.close()
    assert sup.proc.returncode == 0, (h.dir / "supervisord.out").read_text()
    # the restarted worker removed its heartbeat row when it stopped cleanly (the killed
    # one's stays until the pruner's stale-worker cut-off)
    assert second not in h.worker_pids()
