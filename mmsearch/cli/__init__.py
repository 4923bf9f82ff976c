"""The `mmsearch` command: run the stack, manage collections, ingest folders, list and delete
items, watch jobs, search.

Built on `mmsearch.client.Client`. `--api` / `--key` (or `MMSEARCH_API` / `MMSEARCH_API_KEY`)
choose the server; without them the API of `mmsearch up` on this machine is used
(`MMSEARCH_HOST` / `MMSEARCH_PORT`, default http://127.0.0.1:8000).

Exit codes: 0 success; 1 an API or operation error (one line on stderr, no traceback);
2 a usage error (bad flag or argument, one line); 3 a job ended without succeeding
(`completed_with_errors`, `failed` or `cancelled`; `ingest`, `items delete` and `jobs watch`).

This module is the root command (its options and its one-line errors); each command group
lives in its own module of this package.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click

from mmsearch.cli.collections import collections
from mmsearch.cli.common import EXIT_API_ERROR, EXIT_USAGE
from mmsearch.cli.demo import demo
from mmsearch.cli.ingest import ingest
from mmsearch.cli.items import items
from mmsearch.cli.jobs import jobs
from mmsearch.cli.search import search
from mmsearch.cli.status import status, up
from mmsearch.client import DEFAULT_URL, Client
from mmsearch.errors import ApiError


def _default_api() -> str:
    if os.environ.get("MMSEARCH_API"):
        return os.environ["MMSEARCH_API"]
    host = os.environ.get("MMSEARCH_HOST") or "127.0.0.1"
    port = os.environ.get("MMSEARCH_PORT") or "8000"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}" if (host, port) != ("127.0.0.1", "8000") else DEFAULT_URL


class Cli(click.Group):
    """A group whose errors are one line: usage errors exit 2, API errors 1, failed jobs 3."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `mmsearch` alone: the help text
                exc.show()
                sys.exit(EXIT_USAGE)
            where = exc.ctx.command_path if exc.ctx else "mmsearch"
            hint = f" (see '{where} --help')" if exc.ctx else ""
            click.echo(f"{where}: error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.exceptions.Abort:
            click.echo("mmsearch: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"mmsearch: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ApiError as exc:
            click.echo(f"mmsearch: error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)
        except (OSError, TimeoutError, ValueError) as exc:
            click.echo(f"mmsearch: error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--api", default=_default_api, show_default="$MMSEARCH_API or http://127.0.0.1:8000",
              help="Base URL of the mmsearch API.")
@click.option("--key", envvar="MMSEARCH_API_KEY", default=None, help="API key [$MMSEARCH_API_KEY].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds per HTTP request.")
@click.version_option(package_name="mmsearch", prog_name="mmsearch")
@click.pass_context
def cli(ctx: click.Context, api: str, key: str | None, timeout: float) -> None:
    """mmsearch: multimodal image search (text, image or both) over sharded collections.

    \b
    Exit codes: 0 ok, 1 API/operation error, 2 usage error,
                3 a job ended completed_with_errors, failed or cancelled.
    """
    ctx.obj = Client(api, key=key, timeout=timeout)


for command in (up, status, demo, collections, ingest, items, jobs, search):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point (`mmsearch`)."""
    cli.main(prog_name="mmsearch")
