"""``lmq deploy``'s pieces: quoting for ExecStart= and command=, the environment file."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from lmq.cli.deploy import (
    Settings,
    load_env_file,
    parse_env_file,
    render_supervisor,
    render_systemd,
    supervisor_quote,
    systemd_quote,
)
from lmq.exceptions import ConfigError


def settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "name": "lmq-worker",
        "app": "myapp.tasks",
        "queues": None,
        "concurrency": 10,
        "processes": 1,
        "lease": 30.0,
        "grace": 10.0,
        "log_file": None,
        "user": "app",
        "workdir": "/srv/my app",
        "env_file": "/etc/lmq/lmq-worker.env",
        "python": "/srv/my app/.venv/bin/python",
        "url_hint": "postgresql://USER:PASSWORD@HOST/DB",
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def exec_start(text: str) -> list[str]:
    [line] = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    # systemd's own unquoting, for what we emit: shell-like words, then %% -> %, $$ -> $
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[10:])]


def command(text: str) -> list[str]:
    [line] = [ln for ln in text.splitlines() if ln.startswith("command=")]
    return shlex.split(line[8:].replace("%%", "%"))  # Supervisor: % expansion, then shlex


@pytest.mark.parametrize("arg", ["plain", "with space", 'q"uote', "50%", "$HOME", "a\\b"])
def test_quoting_round_trips(arg: str) -> None:
    assert exec_start("ExecStart=" + systemd_quote(arg)) == [arg]
    assert command("command=" + supervisor_quote(arg)) == [arg]


def test_paths_with_spaces_and_percent() -> None:
    s = settings(log_file="/var/log/lmq/50%.jsonl", queues="a,b", grace=2.5)
    argv = exec_start(render_systemd(s))
    assert argv[0] == "/srv/my app/.venv/bin/python"
    assert argv[argv.index("--log-file") + 1] == "/var/log/lmq/50%.jsonl"
    assert argv[argv.index("--grace") + 1] == "2.5"
    assert command(render_supervisor(s, "AUTO")) == argv
    assert "TimeoutStopSec=13" in render_systemd(s)  # ceil(2.5 + 10)
    assert "stopwaitsecs=13" in render_supervisor(s, "AUTO")


def test_env_file_syntax(tmp_path: Path) -> None:
    f = tmp_path / "x.env"
    f.write_text(
        "# comment\n"
        "; comment\n"
        "\n"
        "A=1\n"
        "export B = two words \n"
        "C='single $quoted'\n"
        'D="double \\"quoted\\" \\\\ back"\n'
        "E=\n"
        "F=a=b\n"
    )
    assert parse_env_file(str(f)) == {
        "A": "1",
        "B": "two words",
        "C": "single $quoted",
        "D": 'double "quoted" \\ back',
        "E": "",
        "F": "a=b",
    }


@pytest.mark.parametrize("line", ["no equals sign", "1BAD=x", "=x", "BAD KEY=x"])
def test_env_file_bad_line_names_the_line_not_its_text(tmp_path: Path, line: str) -> None:
    f = tmp_path / "x.env"
    f.write_text(f"OK=1\n{line}\n")
    with pytest.raises(ConfigError, match="line 2: expected KEY=VALUE") as err:
        parse_env_file(str(f))
    assert line not in str(err.value)


def test_env_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the environment file"):
        parse_env_file(str(tmp_path / "missing.env"))


def test_load_env_file_keeps_what_is_set(tmp_path: Path) -> None:
    f = tmp_path / "x.env"
    f.write_text("LMQ_URL=sqlite:///from-file.db\nOTHER=1\n")
    env = {"LMQ_ENV_FILE": str(f), "LMQ_URL": "sqlite:///set.db"}
    load_env_file(env)
    assert env == {"LMQ_ENV_FILE": str(f), "LMQ_URL": "sqlite:///set.db", "OTHER": "1"}
    untouched: dict[str, str] = {}
    load_env_file(untouched)
    assert untouched == {}
