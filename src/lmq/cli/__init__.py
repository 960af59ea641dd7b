"""The ``lmq`` command line.

Every lmq error becomes one line on stderr and exit status 2 (:func:`main`); usage
errors are click's (exit 2 with the usage text); no traceback reaches the user unless
``LMQ_DEBUG=1`` is set.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from ..exceptions import LmqError

# importing the command modules registers them on ``cli``
from . import commands, control, dead, deploy, gates, worker_cmd  # noqa: F401
from .common import cli


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    try:
        deploy.load_env_file()  # $LMQ_ENV_FILE: LMQ_URL and friends from a file (lmq deploy)
        rv: Any = cli.main(args=argv, prog_name="lmq", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("lmq: aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except LmqError as exc:
        if os.environ.get("LMQ_DEBUG"):
            raise
        click.echo(f"lmq: error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("lmq: interrupted", err=True)
        return 130
    except BrokenPipeError:  # `lmq tasks | head`
        return 0
    except Exception as exc:  # a bug in lmq: one line, the traceback on request
        if os.environ.get("LMQ_DEBUG"):
            raise
        click.echo(
            f"lmq: internal error: {type(exc).__name__}: {exc} "
            "(set LMQ_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        return 1
    return int(rv) if isinstance(rv, int) else 0


__all__ = ["cli", "main", "run"]
