"""The `model-sync` command line: argument mapping onto model_sync.api,
output through model_sync.render, errors as one line on stderr."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import __version__, api, render
from .config import Config, default_config_path, load_config, write_starter
from .errors import EXIT_INTERRUPTED, EXIT_USAGE, ModelSyncError


class State:
    """Shared by every command through ctx.obj: the config path and output form."""

    def __init__(self, config_path: str | None, fmt: str, verbose: bool):
        self.config_path = config_path
        self.fmt = fmt
        self.verbose = verbose
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def emit(self, result) -> None:
        render.print_result(result, self.fmt)


def output_options(fn):
    """--json and --format, accepted on every command (and on the group)."""

    @click.option("--json", "json_", is_flag=True, help="Print one JSON document on stdout and nothing else.")
    @click.option("--format", "fmt", type=click.Choice(render.FORMATS), default=None,
                  help="Output form: rich tables, markdown tables, or json (auto: rich on a terminal).")
    @functools.wraps(fn)
    def wrapper(*args, json_=False, fmt=None, **kwargs):
        state = click.get_current_context().find_object(State)
        if json_:
            state.fmt = "json"
        elif fmt:
            state.fmt = fmt
        return fn(*args, **kwargs)

    return wrapper


class Group(click.Group):
    """Turns model-sync errors into one line and a documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ModelSyncError as exc:
            if os.environ.get("MODEL_SYNC_DEBUG") == "1":
                raise
            click.echo(f"model-sync: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            if os.environ.get("MODEL_SYNC_DEBUG") == "1":
                raise
            click.echo("model-sync: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="MODEL_SYNC_CONFIG",
              help="Config file (default ~/.model-sync.yaml; env MODEL_SYNC_CONFIG).")
@click.option("--json", "json_", is_flag=True, help="Print one JSON document on stdout and nothing else.")
@click.option("--format", "fmt", type=click.Choice(render.FORMATS), default="auto",
              help="Output form (auto: rich on a terminal, markdown otherwise).")
@click.option("-v", "--verbose", is_flag=True, help="List files and show more detail.")
@click.version_option(__version__, prog_name="model-sync")
@click.pass_context
def cli(ctx, config_path, json_, fmt, verbose):
    """Move ML models between servers: rsync over SSH, verified with xxhash.

    \b
    Examples:
      model-sync servers --check
      model-sync exec reaper "df -h"
    """
    ctx.obj = State(config_path, "json" if json_ else fmt, verbose)


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.pass_obj
def init(state: State, force, path):
    """Write a commented starter config (default ~/.model-sync.yaml).

    \b
    Example:
      model-sync init
    """
    target = Path(path) if path else Path(state.config_path) if state.config_path else default_config_path()
    written = write_starter(target, force=force)
    click.echo(f"wrote {written}; edit the servers section, then run 'model-sync servers --check'", err=True)


@cli.command()
@click.option("--check", is_flag=True, help="Connect to every server in parallel and report its health.")
@output_options
@click.pass_obj
def servers(state: State, check):
    """List configured servers; --check connects to each one.

    \b
    Examples:
      model-sync servers
      model-sync servers --check --json
    """
    result = api.list_servers(state.config, check=check)
    state.emit(result)
    if not result.ok:
        sys.exit(1)


@cli.command("exec", context_settings={"ignore_unknown_options": True})
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the command after SECONDS (exit code 124).")
@output_options
@click.argument("server")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(state: State, timeout, server, command):
    """Run COMMAND in SERVER's shell and exit with its exit code.

    Output streams as it comes; with --json it is collected into the document.

    \b
    Examples:
      model-sync exec reaper "df -h /nfs/train"
      model-sync exec reaper --timeout 30 -- nvidia-smi -L
    """
    text = " ".join(command)
    capture = state.fmt == "json"
    result = api.exec_command(server, text, state.config, timeout=timeout, capture=capture)
    if capture:
        state.emit(result)
    if result.timed_out:
        click.echo(f"model-sync: error: {server}: command timed out after {timeout:g}s", err=True)
    sys.exit(result.exit_code)


@cli.command()
@click.pass_obj
def mcp(state: State):
    """Serve model-sync's tools over MCP on stdio (for Claude Desktop, Claude Code, ...).

    \b
    Example (in an MCP client's config):
      {"command": "model-sync", "args": ["mcp"]}
    """
    from .mcp_server import serve

    serve(config_path=state.config_path)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="model-sync")
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
