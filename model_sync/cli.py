"""The `model-sync` command line: argument mapping onto model_sync.api,
output through model_sync.render, errors as one line on stderr."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from . import __version__, render
from .config import Config, default_config_path, load_config, write_starter
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VERIFY, ModelSyncError
from .naming import SORTS

# model_sync.api (and what it pulls in) is imported inside the commands, after
# the group has started the SSH handshake (State.warm_up): the two overlap.


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

    def warm_up(self, argv: list[str]) -> None:
        """Start connecting to the servers the command line names (the rule
        the entry point uses too: early.SERVER_ARGS) while the command loads."""
        from .early import named_servers
        from .hosts import warm_up

        candidates = named_servers(argv)[1]
        if not candidates:
            return
        try:
            config = self.config
        except ModelSyncError:
            return  # reported when the command reads the config
        for alias in candidates:
            if alias in config.servers:
                warm_up(alias, config)


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


TRANSFERS = ("push", "pull")


class Group(click.Group):
    """Turns model-sync errors into one line and a documented exit code."""

    def parse_args(self, ctx, args):
        ctx.meta["model_sync.argv"] = list(args)  # for State.warm_up
        return super().parse_args(ctx, args)

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
            # only a transfer has something to resume (its staging copy)
            resume = "; run the same command again to resume" if ctx.invoked_subcommand in TRANSFERS else ""
            click.echo(f"model-sync: interrupted{resume}", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug of ours: still one line, details on request
            if os.environ.get("MODEL_SYNC_DEBUG") == "1":
                raise
            click.echo(f"model-sync: internal error: {type(exc).__name__}: {exc} "
                       "(rerun with MODEL_SYNC_DEBUG=1 for the traceback, and please report it)", err=True)
            ctx.exit(EXIT_FAILED)


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
    ctx.obj.warm_up(ctx.meta.get("model_sync.argv", []))


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@output_options
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
    if state.fmt == "json":
        click.echo(render.to_json({"written": str(written)}, pretty=sys.stdout.isatty()))
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
    from . import api

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
    from . import api

    text = " ".join(command)
    capture = state.fmt == "json"
    result = api.exec_command(server, text, state.config, timeout=timeout, capture=capture)
    if capture:
        state.emit(result)
    if result.timed_out:
        click.echo(f"model-sync: error: {server}: command timed out after {timeout:g}s", err=True)
    sys.exit(result.exit_code)


def _bwlimit(ctx, param, value):
    """Refused as the options are read, before any lock is taken."""
    from .rsync import check_bwlimit

    return None if value is None else check_bwlimit(value)


def transfer_options(fn):
    """The options push and pull share."""
    opts = [
        click.option("--verify/--no-verify", default=None, help="Hash every sent file on both ends (default: config, on)."),
        click.option("--compress/--no-compress", default=None, help="rsync -z (default: config; weights gain nothing)."),
        click.option("--delete", is_flag=True, default=None, help="Mirror: remove destination files missing from the source."),
        click.option("-y", "--yes", is_flag=True, help="Confirm --delete without asking."),
        click.option("-n", "--dry-run", is_flag=True, help="Show what would be sent and deleted; change nothing."),
        click.option("--exclude", multiple=True, metavar="PATTERN", help="rsync exclude pattern (repeatable)."),
        click.option("--include", multiple=True, metavar="PATTERN", help="rsync include pattern (repeatable)."),
        click.option("--bwlimit", metavar="RATE", callback=_bwlimit,
                     help="Bandwidth limit for the whole transfer, rsync syntax (50M: MiB/s); parallel streams share it."),
        click.option("--resume", is_flag=True, hidden=False, help="Accepted for habit: resuming is always on."),
        click.option("--no-wait", is_flag=True, help="Fail at once if another sync holds the destination."),
        click.option("--streams", type=click.IntRange(1, 16), default=None, metavar="N",
                     help="Parallel rsync streams for large files (default: config, 4; 1 turns it off)."),
        click.option("--fsync/--no-fsync", default=None,
                     help="Flush the new version to disk before publishing (default: config, on)."),
        click.option("--force", is_flag=True, help="Replace an existing directory model-sync did not publish."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _transfer_opts(state: State, verify, compress, delete, yes, dry_run, exclude, include, bwlimit, no_wait,
                   streams, fsync, force):
    from dataclasses import replace

    from .api import transfer_defaults

    opts = transfer_defaults(state.config)
    return replace(opts,
                   verify=opts.verify if verify is None else verify,
                   compress=opts.compress if compress is None else compress,
                   delete=opts.delete if delete is None else delete,
                   fsync=opts.fsync if fsync is None else fsync,
                   dry_run=dry_run, excludes=tuple(exclude), includes=tuple(include), bwlimit=bwlimit,
                   wait=not no_wait, confirmed=yes, streams=streams, force=force)


def _run_transfer(state: State, call, opts):
    """Run push/pull with a progress bar on a terminal, ask before deleting."""
    from dataclasses import replace

    from .transfer import ConfirmationNeeded

    hooks = {"on_wait": lambda: click.echo("waiting: another model-sync holds this destination...", err=True)}
    if state.verbose:
        hooks["on_item"] = lambda item: click.echo(item.path, err=True) if item.is_file_transfer else None
    try:
        return _with_progress(state, call, opts, hooks)
    except ConfirmationNeeded as exc:
        if not sys.stdin.isatty() or state.fmt == "json":
            raise
        click.echo(f"--delete will remove {len(exc.deletions)} file(s):", err=True)
        for d in exc.deletions:
            click.echo(f"  {render.cell(d.path)}", err=True)
        if not click.confirm("Delete them?", default=False, err=True):
            raise click.Abort()
        return _with_progress(state, call, replace(opts, confirmed=True), hooks)


def _transfer_command(state: State, banner: str, call, kw) -> None:
    opts = _transfer_opts(state, **kw)
    if state.fmt != "json":
        click.echo(banner, err=True)
    state.emit(_run_transfer(state, call, opts))


# The ETA is shown once bytes have moved for this long and this much: the
# first reports (one buffer in a few ms) gave rates that made ETAs like 2:32:41.
ETA_AFTER_SECONDS = 3.0
ETA_AFTER_BYTES = 4 << 20


def progress_bar(console, get_time=None):
    """The transfer progress display: a bar, bytes, rate and an ETA that waits
    for a rate worth the name. Feed a task with `reporter(bar, task)`."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
    from rich.text import Text

    class Eta(TimeRemainingColumn):
        def render(self, task):
            since = task.fields.get("moving_since")
            if since is None or task.get_time() - since < ETA_AFTER_SECONDS or task.completed < ETA_AFTER_BYTES:
                return Text("-:--:--", style="progress.remaining")
            return super().render(task)

    return Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), Eta(), transient=True, console=console, get_time=get_time)


def reporter(bar, task):
    """progress(done, total) for the core: notes when bytes first moved."""
    moving = []

    def report(done: int, total: int | None) -> None:
        if done and not moving:
            moving.append(True)
            bar.update(task, moving_since=bar.get_time())
        bar.update(task, completed=done, total=total)
    return report


def _with_progress(state: State, call, opts, hooks):
    if render.choose_format(state.fmt, sys.stderr) != "rich" or opts.dry_run:
        return call(opts=opts, **hooks)
    from rich.console import Console

    with progress_bar(Console(stderr=True)) as bar:
        task = bar.add_task("transfer", total=None, moving_since=None)
        return call(opts=opts, progress=reporter(bar, task), **hooks)


def _warn(text: str) -> None:
    click.echo(f"model-sync: warning: {text}", err=True)


def _resolved(selector: str, path: str) -> None:
    click.echo(f"Resolved {selector} -> {render.cell(path)}", err=True)


gpu_option = click.option("--gpu", metavar="GPU", help="Narrow a MODEL@latest or MODEL@VERSION selector to one GPU.")


@cli.command()
@transfer_options
@click.option("--strict", is_flag=True, help="Refuse a directory name outside the naming convention (default: warn).")
@output_options
@click.argument("local_path")
@click.argument("destination", metavar="SERVER[:PATH]")
@click.pass_obj
def push(state: State, local_path, destination, resume, strict, **kw):
    """Send a local model directory to a server, verified and published atomically.

    PATH defaults to MODEL_BASE/<name of LOCAL_PATH>; a relative PATH is taken
    under the server's model_base, an absolute one is used as given. A
    Hugging Face cache folder (models--ORG--NAME) sends the snapshot its
    refs/main names.

    \b
    Examples:
      model-sync push ./RTX3090_N2501_LANGDETECTOR_250715 reaper
      model-sync push ./langdetector-v1 reaper:langdetector/v1 --dry-run
    """
    from . import api

    _transfer_command(state, f"Syncing {local_path} to {destination} ...",
                      lambda **k: api.push(local_path, destination, state.config, strict=strict,
                                           on_warning=_warn, **k), kw)


@cli.command()
@transfer_options
@gpu_option
@output_options
@click.argument("source", metavar="SERVER:PATH")
@click.argument("local_path")
@click.pass_obj
def pull(state: State, source, local_path, resume, gpu, **kw):
    """Fetch a model directory from a server into LOCAL_PATH/<name> (made if
    missing), or into LOCAL_PATH itself when its last component is <name>.

    PATH may be MODEL@latest (the newest version of MODEL) or MODEL@VERSION;
    the directory it chose is printed on stderr.

    \b
    Examples:
      model-sync pull reaper:RTX3090_N2501_LANGDETECTOR_250715 ./models/
      model-sync pull doomfist:ASR@latest ./models/
      model-sync pull doomfist:ASR@250820 ./models/ --gpu RTX3090
    """
    from . import api

    _transfer_command(state, f"Pulling {source} to {local_path} ...",
                      lambda **k: api.pull(source, local_path, state.config, gpu=gpu, on_resolve=_resolved, **k),
                      kw)


@cli.command()
@gpu_option
@output_options
@click.argument("local_path")
@click.argument("destination", metavar="SERVER[:PATH]")
@click.pass_obj
def verify(state: State, local_path, destination, gpu):
    """Hash every file of a local model and its copy on a server, and compare.

    \b
    Examples:
      model-sync verify ./RTX3090_N2501_LANGDETECTOR_250715 reaper
      model-sync verify ./models/RTX3090_N2501_ASR_250820 doomfist:ASR@latest
    """
    from . import api

    result = api.verify(local_path, destination, state.config, gpu=gpu, on_resolve=_resolved)
    state.emit(result)
    if not result.ok:
        sys.exit(EXIT_VERIFY)


@cli.command()
@click.option("-c", "--checksum", is_flag=True,
              help="Compare contents (xxh3-128, both sides at once) instead of size and modification time.")
@gpu_option
@output_options
@click.argument("left", metavar="LOCAL_PATH")
@click.argument("right", metavar="SERVER[:PATH]")
@click.pass_obj
def diff(state: State, left, right, checksum, gpu):
    """Compare a model directory with its copy: same, new, modified or remote only per file.

    Either side may be SERVER:PATH (two servers compare too) or a local path;
    a bare SERVER on the right means the left's name under its model_base. Exit code as
    diff(1): 0 identical, 1 different, 2 or more trouble.

    \b
    Examples:
      model-sync diff ./langdetector reaper
      model-sync diff ./langdetector reaper --checksum
      model-sync diff reaper:RTX3090_N2501_ASR_250820 doomfist
      model-sync diff doomfist:ASR@latest ./models/RTX3090_N2501_ASR_250820
    """
    from . import api

    try:
        result = api.diff(left, right, state.config, checksum=checksum, gpu=gpu)
    except ModelSyncError as exc:
        if exc.exit_code < EXIT_USAGE:  # 1 means "they differ" here
            exc.exit_code = EXIT_USAGE
        raise
    except Exception as exc:  # a bug of ours must not read as "they differ" either
        if os.environ.get("MODEL_SYNC_DEBUG") == "1":
            raise
        err = ModelSyncError(f"internal error: {type(exc).__name__}: {exc} "
                             "(rerun with MODEL_SYNC_DEBUG=1 for the traceback, and please report it)")
        err.exit_code = EXIT_USAGE
        raise err from exc
    state.emit(result)
    sys.exit(0 if result.identical else EXIT_FAILED)


@cli.command("list")
@click.option("--filter", "filter_", metavar="PATTERN",
              help="Only names containing PATTERN (any case); a glob when it has * ? or [.")
@click.option("--sort", type=click.Choice(SORTS), default="name", show_default=True,
              help="name: natural order; size, modified: largest/newest first; version: by model, newest first.")
@output_options
@click.argument("server")
@click.pass_obj
def list_(state: State, server, filter_, sort):
    """List the model directories on a server: size, last change and naming fields.

    One row per directory under model_base (hidden entries, files and symlinks
    are skipped). Size is 'du -s --apparent-size -B1' of each directory.
    Modified is the newest modification time of its files, which rsync keeps
    from the source: when the model last changed, not when it was pushed.

    \b
    Examples:
      model-sync list reaper
      model-sync list doomfist --filter asr --sort version
      model-sync list reaper --filter 'RTX3090_*_ASR_*' --json
    """
    from . import api

    state.emit(api.list_models(server, state.config, filter=filter_, sort=sort))


@cli.command()
@click.option("--model", metavar="NAME", help="Only this model (the MODEL field, any case).")
@click.option("--gpu", metavar="GPU", help="Only this GPU (the GPU field, any case).")
@output_options
@click.argument("server")
@click.pass_obj
def versions(state: State, server, model, gpu):
    """Versions of each model on a server, by model and GPU, newest first; the latest marked.

    \b
    Examples:
      model-sync versions doomfist
      model-sync versions doomfist --model ASR --gpu RTX3090
    """
    from . import api

    state.emit(api.versions(server, state.config, model=model, gpu=gpu))


@cli.command()
@click.option("--model", metavar="NAME", required=True, help="The model whose old versions go (the MODEL field).")
@click.option("--keep", type=click.IntRange(min=1), required=True, metavar="N",
              help="How many of the newest versions to keep, per GPU (1 or more).")
@click.option("--gpu", metavar="GPU", help="Only versions trained on this GPU.")
@click.option("-y", "--yes", is_flag=True, help="Delete. Without it, only show what would be removed.")
@output_options
@click.argument("server")
@click.pass_obj
def prune(state: State, server, model, keep, gpu, yes):
    """Remove all but the newest N versions of a model on a server (only with --yes).

    Only directories directly under model_base that follow the naming
    convention are considered; other models and other names are never touched.

    \b
    Examples:
      model-sync prune reaper --model LANGDETECTOR --keep 3
      model-sync prune reaper --model LANGDETECTOR --keep 3 --yes
    """
    from . import api

    result = api.prune(server, model, keep, state.config, gpu=gpu, yes=yes)
    state.emit(result)
    if result.dry_run and result.to_remove and state.fmt == "json":  # the table's notes say it otherwise
        click.echo("model-sync: nothing was removed; rerun with --yes to delete the directories in to_remove",
                   err=True)
    if not result.ok:
        sys.exit(EXIT_FAILED)


@cli.command()
@click.pass_obj
def mcp(state: State):
    """Serve model-sync's tools over MCP on stdio (for Claude Desktop, Claude Code, ...).

    \b
    Example (in an MCP client's config):
      {"command": "model-sync", "args": ["mcp"]}
    """
    import gc

    from .mcp_server import serve

    gc.enable()  # a server runs for hours (early.main turned it off for short commands)
    serve(config_path=state.config_path)


def _sigterm(signum, frame):
    # stop like Ctrl-C: rsync is stopped cleanly and keeps partial files for resume
    raise KeyboardInterrupt


def main(argv=None):
    import signal

    signal.signal(signal.SIGTERM, _sigterm)
    try:
        cli.main(args=argv, prog_name="model-sync")
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
