"""model-sync over MCP (stdio): each tool is one model_sync.api function.

Adding a tool is a few lines that map typed parameters onto the api function
and hand its result to `call()`:

    @app.tool(title="Model versions on a server", annotations=READ_ONLY)
    async def versions(
        server: Server,
        model: Annotated[str | None, Field(max_length=ARG_MAX_LENGTH, description="Only this model, e.g. ASR")] = None,
    ) -> Annotated[CallToolResult, api.VersionsResult]:
        \"\"\"One or two sentences the assistant reads to choose the tool.\"\"\"
        return await call(api.versions, server, model=model, config=app.load_config())

- Parameters: reuse the aliases below (`Server`, `RemotePath`, `Confirm`); put
  every path a client gives through `inside_base()` (remote) or `local_path()`.
  Give every new str parameter `max_length=ARG_MAX_LENGTH` (or a limit of its
  own): an unbounded one lets a client send megabytes into messages.
- `call()` runs the function in a worker thread under a time limit (`limit=`)
  and returns its dataclass as structured content (render.to_jsonable) plus
  render.markdown as text. `report_to=ctx` (a `ctx: Context` parameter) also
  passes `progress=` so the core can report `progress(done_bytes, total_bytes)`.
- Failures: raise (or let through) a ModelSyncError. `ModelSyncMCP.call_tool`
  turns it into a tool error whose text is exactly the CLI's message (the part
  after "model-sync: error: "); anything else becomes one line, never a
  traceback. Key paths are redacted from every result.
- Destructive tools (prune; push/pull with delete) take
  `ok: Annotated[Confirmed, confirmation(question)]` after the required
  parameters (the SDK fills it; clients never see it) and `confirm: Confirm = False`,
  and call `require_confirmation(ok)` first; see `confirmation()`.
- `call()` reserves the keyword names limit, label, report_to, cancellable and text.
- Annotations: READ_ONLY (list_servers, list_models, versions, diff, verify),
  DESTRUCTIVE (exec, prune, and push/pull since they may delete or overwrite).
"""

# No `from __future__ import annotations`: the SDK reads tool and resolver
# annotations at registration, and the resolver made inside confirmation()
# refers to a local variable that only an evaluated annotation can capture.
import dataclasses
import functools
import logging
import os
import posixpath
import re
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.elicitation import AcceptedElicitation, ElicitationResult
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field, ValidationError

from . import __version__, api, inventory, render
from .config import LOCAL_ALIAS, Config, load_config
from .errors import CommandTimeout, ModelSyncError, UsageError

log = logging.getLogger("model_sync.mcp")
T = TypeVar("T")

DEFAULT_LIMIT = 120.0  # seconds; a safety net over the core's own timeouts
EXEC_DEFAULT_TIMEOUT = 60.0
EXEC_MAX_TIMEOUT = 3600.0
EXEC_OUTPUT_MAX = 100_000  # characters of stdout/stderr kept (the tail)
# Every string argument is bounded, so a huge one is refused by validation
# before any tool, message or redaction sees it. PATH_MAX is 4096; a remote
# `sh -c` takes one argument of at most 128 KiB (Linux MAX_ARG_STRLEN), which
# 32,768 characters stay under even at 4 bytes each in UTF-8.
ARG_MAX_LENGTH = 4096
EXEC_COMMAND_MAX = 32_768

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                            open_world_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                              open_world_hint=True)

INSTRUCTIONS = """\
model-sync moves ML model directories between GPU servers (rsync over SSH, \
verified with xxhash). Servers are aliases from the user's model-sync config; \
start with list_servers. Paths on a server are relative to its model_base. \
A local model (push, verify, diff) or pull's local_dir is relative to the \
'local' server's model_base (list_servers shows it), or an absolute path \
inside the model_base of a server configured without a host. Tools that \
delete need confirm=true, set only after the user has agreed."""


# -- the server ------------------------------------------------------------------
class ModelSyncMCP(MCPServer):
    """MCPServer that translates every failure into a one-line tool error and
    keeps key paths out of results. The config is read on every call, so edits
    take effect without a restart."""

    def __init__(self, config_path: str | os.PathLike | None = None):
        debug = os.environ.get("MODEL_SYNC_DEBUG") == "1"
        super().__init__("model-sync", instructions=INSTRUCTIONS, version=__version__,
                         log_level="DEBUG" if debug else "WARNING")
        self.config_path = config_path

    def load_config(self) -> Config:
        return load_config(self.config_path)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None):
        try:
            result = await super().call_tool(name, arguments, context)
        except ToolError as exc:
            result = error_result(_one_line(exc, name))
        if isinstance(result, CallToolResult):
            # reads the configs and scans all of the result: off the event loop
            # so other calls keep being answered meanwhile
            result = await anyio.to_thread.run_sync(
                lambda: _redact_result(result, _secret_paths(self.config_path)))
        return result


def error_result(message: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


def _one_line(exc: ToolError, tool: str) -> str:
    """The SDK wraps what a tool raised; unwrap it to the message a user reads."""
    cause = exc.__cause__
    if isinstance(cause, ModelSyncError):
        return str(cause)
    if isinstance(cause, ValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                             for e in cause.errors())
        return render.cell(f"invalid arguments for {tool}: {problems}")
    if isinstance(exc, UnexpectedToolError) and cause is not None:
        log.error("tool %s failed", tool, exc_info=cause)
        text = (str(cause).strip().splitlines() or [""])[0][:300]
        return render.cell(f"internal error in {tool}: {type(cause).__name__}"
                           + (f": {text}" if text else "") + " (details in the server's log)")
    return render.cell((str(exc).strip().splitlines() or ["error"])[0])


# -- secrets -----------------------------------------------------------------------
REDACTED = "(ssh key)"
# A word (a run without separators) that ends in a default key's name.
# The look-behind anchors a match at the word's start: unanchored, the search
# rescanned the rest of a long word from every position (20,000 characters
# without a separator took 4.4 s); anchored it reads each character a bounded
# number of times and finds the same matches.
_DEFAULT_KEY = re.compile(r"(?<![^\s'\",;()\[\]|])[^\s'\",;()\[\]|]*\bid_(?:rsa|dsa|ecdsa|ed25519)(?:_sk)?\b")
_IDENTITY_LINE = re.compile(r"^\s*IdentityFile\s*=?\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def _secret_paths(config_path) -> list[str]:
    """Key files named in the config or in ~/.ssh/config, in every spelling a
    message might use; longest first so a path is never half-replaced."""
    names: set[str] = set()
    try:
        names.update(s.ssh_key for s in load_config(config_path).servers.values() if s.ssh_key)
    except ModelSyncError:
        pass
    try:
        names.update(m.strip("\"'") for m in _IDENTITY_LINE.findall(
            (Path.home() / ".ssh" / "config").read_text(encoding="utf-8", errors="replace")))
    except OSError:
        pass
    spellings: set[str] = set()
    for name in names:
        full = os.path.expanduser(name)
        for form in (name, full, os.path.realpath(full)):
            if "/" in form and len(form) > 3:  # a bare short name would garble unrelated text
                spellings.add(form)
    return sorted(spellings, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    # one C-level pass per secret (a handful): linear in the text
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _DEFAULT_KEY.sub(REDACTED, text)


def _redact_value(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [_redact_value(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, secrets) for k, v in value.items()}
    return value


def _redact_result(result: CallToolResult, secrets: list[str]) -> CallToolResult:
    content = [c.model_copy(update={"text": redact(c.text, secrets)}) if isinstance(c, TextContent) else c
               for c in result.content]
    structured = _redact_value(result.structured_content, secrets)
    return result.model_copy(update={"content": content, "structured_content": structured})


# -- paths ---------------------------------------------------------------------------
def inside_base(path: str, what: str = "path") -> str:
    """Check a path a client gave for a server: relative to that server's
    model_base and not leaving it. Returns it normalised ('.' is the base)."""
    shown = render.cell(path)
    if not path.strip():
        raise UsageError(f"{what} is empty; give a path relative to the server's model_base")
    if "\x00" in path:
        raise UsageError(f"{what} '{shown}' contains a NUL byte")
    if path.startswith(("/", "~")):
        raise UsageError(f"{what} '{shown}' must be relative to the server's model_base "
                         "(no leading '/' or '~')")
    norm = posixpath.normpath(path)
    if norm == ".." or norm.startswith("../"):
        raise UsageError(f"{what} '{shown}' leaves the server's model_base ('..' goes above it)")
    return norm


# A local path a client gives: relative to a local server's model_base (the
# `local` alias unless a tool says otherwise), or absolute (or ~/...) when it
# lies inside the model_base of a server configured without `host`, also after
# following symlinks. So the directories a client may read or write here are
# the model stores the config names, however the path is spelt.
def local_bases(config: Config) -> list[Path]:
    return [Path(s.model_base).expanduser() for s in config.servers.values() if s.is_local]


def local_path(config: Config, path: str, what: str = "local path", alias: str = LOCAL_ALIAS,
               must_exist: bool = False) -> Path:
    """Where a client's local path points (see above); with `must_exist`, a
    missing directory is an error saying where a relative path was looked for."""
    shown = render.cell(path)
    base = Path(config.server(alias).model_base).expanduser()
    rule = f"a relative {what} is taken under the '{alias}' server's model_base, {base}"
    if "\x00" in path:
        raise UsageError(f"{what} '{shown}' contains a NUL byte")
    if path.startswith(("/", "~")):
        full = Path(os.path.normpath(os.path.expanduser(path)))
        real = full.resolve()
        if not any(real.is_relative_to(b.resolve()) for b in local_bases(config)):
            bases = ", ".join(str(b) for b in local_bases(config))
            raise UsageError(f"{what} '{shown}' is not inside the model_base of a local server ({bases}); "
                             f"give a path inside one, or a relative one ({rule})")
    else:
        try:
            rel = inside_base(path, what)
        except UsageError as exc:
            raise UsageError(f"{exc}; {rule}") from None
        full = base / rel
        if not full.resolve().is_relative_to(base.resolve()):
            raise UsageError(f"{what} '{shown}' leads outside {base} through a symlink")
    if must_exist and not full.is_dir():
        raise UsageError(f"{what} '{shown}' is not a directory here: {full} "
                         + ("does not exist" if not full.exists() else "is a file")
                         + f" ({rule}; an absolute path inside it works too)")
    return full


def base_relative(config: Config, full: Path) -> str:
    """A local path's place under the local model_base that holds it, for the
    other side of a diff: 'team/x' for LOCAL_BASE/team/x."""
    for spelt, base in [(full, b) for b in local_bases(config)] + [(full.resolve(), b.resolve())
                                                                   for b in local_bases(config)]:
        if spelt.is_relative_to(base):
            return str(spelt.relative_to(base))
    return full.name


# -- calling the core --------------------------------------------------------------
class CallAbandoned(Exception):
    """Raised inside the worker thread, at its next progress report, once the
    MCP call was cancelled or ran out of time: the core unwinds and stops."""


class ProgressBridge:
    """`progress(done_bytes, total_bytes)` for the core, called from the worker
    thread or from threads of the core's own (parallel rsync streams);
    forwards to the client as MCP progress at most every `interval`. Made on
    the event loop, whose token it keeps for those threads."""

    def __init__(self, ctx: Context, abandoned: threading.Event, interval: float = 0.25):
        self.ctx = ctx
        self.abandoned = abandoned
        self.interval = interval
        self._last = 0.0
        self._token = anyio.lowlevel.current_token()
        self._lock = threading.Lock()  # several streams report at once

    def __call__(self, done: int, total: int | None = None) -> None:
        if self.abandoned.is_set():
            raise CallAbandoned("the MCP call was cancelled or timed out")
        now = time.monotonic()
        final = total is not None and done >= total
        with self._lock:
            if not final and now - self._last < self.interval:
                return
            self._last = now
        message = render.human_size(done) + (f" of {render.human_size(total)}" if total else "")
        try:
            anyio.from_thread.run(self.ctx.report_progress, done, total, message, token=self._token)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the client went away; progress is advisory, the call's end decides


def present(result, text: Callable[[Any], str] = render.markdown) -> CallToolResult:
    """A core result as the client sees it: the dataclass as structured
    content, and the CLI's markdown table as text."""
    return CallToolResult(content=[TextContent(type="text", text=text(result))],
                          structured_content=render.to_jsonable(result))


async def run_bounded(fn: Callable[..., T], /, *args, limit: float = DEFAULT_LIMIT, label: str | None = None,
                      report_to: Context | None = None, cancellable: bool = False, **kwargs) -> T:
    """Run a blocking core call in a worker thread. A call that outlives
    `limit` seconds (a hung host) or is cancelled by the client is abandoned,
    so the server stays responsive; the thread learns at its next progress
    report (CallAbandoned)."""
    abandoned = threading.Event()
    if report_to is not None:
        kwargs["progress"] = ProgressBridge(report_to, abandoned)
    if cancellable:  # the core checks it between steps and stops rsync at once
        kwargs["cancel"] = abandoned
    finished = False
    try:
        with anyio.fail_after(limit):
            result = await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                                    abandon_on_cancel=True)
        finished = True
        return result
    except TimeoutError:
        raise CommandTimeout(f"{label or fn.__name__}: no answer within {limit:g}s, so the call was abandoned; "
                             "check the server with list_servers check=true") from None
    finally:
        if not finished:
            abandoned.set()


async def call(fn: Callable[..., Any], /, *args, text: Callable[[Any], str] = render.markdown,
               **kwargs) -> CallToolResult:
    """run_bounded(), then present() in a worker thread (a long model list
    takes a while to render): the body of most tools."""
    result = await run_bounded(fn, *args, **kwargs)
    return await anyio.to_thread.run_sync(present, result, text)


# -- confirming destructive actions ----------------------------------------------------
class Confirmation(BaseModel):
    """What the user is asked when the client supports elicitation."""

    confirm: bool = Field(default=False, title="Go ahead", description="Check to go ahead")


@dataclasses.dataclass
class _Refused:
    message: str


# The tool parameter's type: the SDK hands the outcome over instead of
# aborting on decline, so the refusal can be worded here, in one line.
Confirmed = ElicitationResult[Confirmation]

Confirm = Annotated[bool, Field(description=(
    "Set true only after the user has agreed to this destructive action. When false, a client "
    "that can ask the user is asked; otherwise the tool refuses and changes nothing."))]


def _can_elicit(ctx: Context) -> bool:
    caps = ctx.client_capabilities
    return bool(caps and caps.elicitation)


def confirmation(question: Callable[..., str | None]) -> Resolve:
    """Resolve() for a tool's `ok: Annotated[Confirmed, confirmation(question)]`.

    `question` takes tool arguments by name and returns what to ask ("Delete
    3 old versions of ASR on reaper?"), or None when the call deletes nothing;
    it may be async, e.g. to run a dry run and name what would go.
    With confirm=true nothing is asked; else a client that supports
    elicitation asks the user, and one that does not gets a refusal. The SDK
    picks the channel for the protocol in use (in-call request, or
    input-required and retry)."""

    async def ask(confirm: bool, ctx: Context,
                  text: Annotated[str | None, Resolve(question)]) -> Confirmation | _Refused | Elicit[Confirmation]:
        if text is None or confirm:
            return Confirmation(confirm=True)
        if not _can_elicit(ctx):
            return _Refused(f"{text} Nothing was done: call again with confirm=true once the user has agreed.")
        return Elicit(text, Confirmation)

    return Resolve(ask)


def require_confirmation(ok: Confirmed) -> None:
    """Raise unless the destructive action was confirmed (first line of a tool)."""
    if not isinstance(ok, AcceptedElicitation):
        raise UsageError(f"the user {'declined' if ok.action == 'decline' else 'cancelled'}; nothing was done")
    if isinstance(ok.data, _Refused):
        raise UsageError(ok.data.message)
    if not ok.data.confirm:
        raise UsageError("not confirmed by the user; nothing was done")


# -- tools ----------------------------------------------------------------------------
app = ModelSyncMCP()

Server = Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
    "Server alias from the model-sync config, e.g. 'reaper'; 'local' is this machine. "
    "list_servers shows the aliases."))]
RemotePath = Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
    "Path relative to the server's model_base, e.g. 'RTX3090_N2501_ASR_250820'; "
    "no leading '/' or '~', no '..'."))]


@app.tool(title="List servers", annotations=READ_ONLY)
async def list_servers(
    check: Annotated[bool, Field(description=(
        "Also connect to every server in parallel and report reachability, round trip, "
        "rsync/xxhash versions and free space."))] = False,
) -> Annotated[CallToolResult, api.ServersResult]:
    """List the servers configured for model-sync (alias, host, user, port, model_base).
    With check=true, also test each one; a failed check is a row, not an error."""
    config = app.load_config()
    limit = DEFAULT_LIMIT + 4 * config.defaults.connect_timeout
    return await call(api.list_servers, config=config, check=check, limit=limit)


@app.tool(name="exec", title="Run a shell command on a server", annotations=DESTRUCTIVE)
async def exec_(
    server: Server,
    command: Annotated[str, Field(min_length=1, max_length=EXEC_COMMAND_MAX,
                                  description="Shell command line, run as typed, e.g. 'df -h'.")],
    timeout_seconds: Annotated[float, Field(gt=0, le=EXEC_MAX_TIMEOUT, description=(
        "Stop the command after this many seconds (exit code 124)."))] = EXEC_DEFAULT_TIMEOUT,
) -> Annotated[CallToolResult, api.ExecResult]:
    """Run a command in a server's shell and return its exit code, stdout and stderr
    (a non-zero exit is a result, not an error). Off unless the model-sync config has
    `mcp: {allow_exec: true}`."""
    config = app.load_config()
    if not config.mcp_allow_exec:
        raise UsageError(f"exec is turned off for MCP clients; to allow it, add 'mcp: {{allow_exec: true}}' "
                         f"to {config.path} (it lets the assistant run any command on your servers)")
    limit = timeout_seconds + config.defaults.connect_timeout + 30
    result = await run_bounded(api.exec_command, server, command, config=config, timeout=timeout_seconds,
                               capture=True, limit=limit, label=f"{server}: exec")
    return await anyio.to_thread.run_sync(present, _clip_output(result), _exec_text)


TRANSFER_DEFAULT_TIMEOUT = 3600.0
TRANSFER_MAX_TIMEOUT = 86400.0

LocalModel = Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
    "Model directory on this machine: a path relative to the 'local' server's model_base "
    "(not to any working directory; list_servers shows the model_base), e.g. "
    "'RTX3090_N2501_LANGDETECTOR_250715', or an absolute path inside the model_base of a server "
    "configured without a host."))]
OptionalRemotePath = Annotated[str | None, Field(max_length=ARG_MAX_LENGTH, description=(
    "Path relative to the server's model_base; default: the local directory's name."))]
Delete = Annotated[bool, Field(description=(
    "Mirror: also remove files at the destination that the source does not have "
    "(inside that model directory only). Destructive: needs the user's confirmation."))]
Verify = Annotated[bool | None, Field(description=(
    "Hash every transferred file on both ends (xxh3-128); default from the config (on)."))]
DryRun = Annotated[bool, Field(description="Only report what would be sent and deleted; change nothing.")]
Streams = Annotated[int | None, Field(ge=1, le=16, description=(
    "Parallel rsync streams for large files; default from the config (4). More help over "
    "links with high latency; 1 turns it off."))]
TransferTimeout = Annotated[float, Field(gt=0, le=TRANSFER_MAX_TIMEOUT, description=(
    "Give up after this many seconds; rsync stops and keeps partial files, so calling "
    "again resumes."))]


Gpu = Annotated[str | None, Field(max_length=ARG_MAX_LENGTH, description=(
    "GPU field of the naming convention, to pick among versions for several GPUs, e.g. 'RTX3090'."))]
ModelName = Annotated[str, Field(max_length=ARG_MAX_LENGTH,
                                 description="MODEL field of the naming convention, e.g. 'ASR' (any case).")]


def _delete_question(verb: str):
    def question(delete: bool = False, dry_run: bool = False, server: str = "") -> str | None:
        if not delete or dry_run:
            return None
        return (f"{verb} with delete will remove files on the destination that the source does not have "
                f"(server {server}). Go ahead?")
    return question


def _transfer_options(config: Config, verify: bool | None, delete: bool, dry_run: bool, streams: int | None):
    from dataclasses import replace

    opts = api.transfer_defaults(config)
    return replace(opts, verify=opts.verify if verify is None else verify, delete=delete, dry_run=dry_run,
                   streams=streams or opts.streams,
                   confirmed=True)  # deletion was confirmed through MCP before we get here


@app.tool(title="Push a model to a server", annotations=DESTRUCTIVE)
async def push(
    model: LocalModel,
    server: Server,
    ok: Annotated[Confirmed, confirmation(_delete_question("push"))],
    ctx: Context,
    remote_path: OptionalRemotePath = None,
    delete: Delete = False,
    verify: Verify = None,
    dry_run: DryRun = False,
    streams: Streams = None,
    confirm: Confirm = False,
    timeout_seconds: TransferTimeout = TRANSFER_DEFAULT_TIMEOUT,
) -> Annotated[CallToolResult, api.TransferReport]:
    """Send a local model directory (relative to the 'local' server's model_base, or an
    absolute path inside a local model_base) to a server with rsync over SSH: only changed files
    travel, every sent file is verified, and the copy appears on the server complete or
    not at all. Reports progress; an interrupted push resumes when called again."""
    require_confirmation(ok)
    config = app.load_config()
    dest = server if remote_path is None else f"{server}:{inside_base(remote_path, 'remote_path')}"
    src = local_path(config, model, "model", must_exist=True)
    opts = _transfer_options(config, verify, delete, dry_run, streams)
    return await call(api.push, str(src), dest, config=config, opts=opts, report_to=ctx,
                      cancellable=True, limit=timeout_seconds, label=f"{server}: push")


@app.tool(title="Pull a model from a server", annotations=DESTRUCTIVE)
async def pull(
    server: Server,
    remote_path: Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
        "Model on the server, relative to its model_base, e.g. 'RTX3090_N2501_ASR_250820', "
        "or a selector such as 'ASR@latest' or 'ASR@250820'."))],
    ok: Annotated[Confirmed, confirmation(_delete_question("pull"))],
    ctx: Context,
    local_dir: Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
        "Directory to pull into, the model landing inside it: relative to the 'local' server's "
        "model_base (default: that model_base itself), or an absolute path inside the model_base "
        "of a server configured without a host."))] = ".",
    gpu: Gpu = None,
    delete: Delete = False,
    verify: Verify = None,
    dry_run: DryRun = False,
    streams: Streams = None,
    confirm: Confirm = False,
    timeout_seconds: TransferTimeout = TRANSFER_DEFAULT_TIMEOUT,
) -> Annotated[CallToolResult, api.TransferReport]:
    """Fetch a model directory from a server into this machine's model_base (the 'local'
    server's; local_dir picks a directory under it), verified, appearing complete or not
    at all. Reports progress; calling again resumes."""
    require_confirmation(ok)
    config = app.load_config()
    into = local_path(config, local_dir, "local_dir")
    into.mkdir(parents=True, exist_ok=True)
    rel = inside_base(remote_path, "remote_path")  # selectors too: 'ASR@latest' is a relative path
    opts = _transfer_options(config, verify, delete, dry_run, streams)
    # "/": the model lands inside local_dir, even one named as the model (paths.pull_destination)
    return await call(api.pull, f"{server}:{rel}", str(into) + "/", config=config, opts=opts, gpu=gpu,
                      report_to=ctx, cancellable=True, limit=timeout_seconds, label=f"{server}: pull")


@app.tool(name="verify", title="Verify a copy on a server", annotations=READ_ONLY)
async def verify_(
    model: LocalModel,
    server: Server,
    remote_path: OptionalRemotePath = None,
    timeout_seconds: TransferTimeout = TRANSFER_DEFAULT_TIMEOUT,
) -> Annotated[CallToolResult, api.VerifyResult]:
    """Hash every file of a local model (relative to the 'local' server's model_base, or an
    absolute path inside a local model_base) and of its copy on a server (both at once) and
    compare; reports mismatched and missing files."""
    config = app.load_config()
    dest = server if remote_path is None else f"{server}:{inside_base(remote_path, 'remote_path')}"
    src = local_path(config, model, "model", must_exist=True)
    return await call(api.verify, str(src), dest, config=config, limit=timeout_seconds, label=f"{server}: verify")


@app.tool(title="List models on a server", annotations=READ_ONLY)
async def list_models(
    server: Server,
    filter: Annotated[str | None, Field(max_length=ARG_MAX_LENGTH, description=(
        "Only models whose name contains this (any case), or matches it as a glob (*, ?, [])."))] = None,
    sort: Annotated[str, Field(max_length=ARG_MAX_LENGTH, pattern="^(name|size|modified|version)$", description=(
        "Order: name, size, modified or version."))] = "name",
) -> Annotated[CallToolResult, api.ModelList]:
    """The model directories on a server with size, last change and the naming
    convention's fields (GPU, date, model, version), and the total."""
    config = app.load_config()
    return await call(api.list_models, server, config=config, filter=filter, sort=sort, label=f"{server}: list")


@app.tool(title="Model versions on a server", annotations=READ_ONLY)
async def versions(
    server: Server,
    model: Annotated[str | None, Field(max_length=ARG_MAX_LENGTH, description=(
        "Only this model (MODEL field, any case), e.g. 'ASR'."))] = None,
    gpu: Gpu = None,
) -> Annotated[CallToolResult, api.VersionsResult]:
    """Versions of each model on a server, grouped by model and GPU, newest first;
    the latest is what 'MODEL@latest' picks."""
    config = app.load_config()
    return await call(api.versions, server, config=config, model=model, gpu=gpu, label=f"{server}: versions")


@app.tool(title="Compare a model between two places", annotations=READ_ONLY)
async def diff(
    model: Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
        "The left side's model directory, relative to the left server's model_base (for 'local', "
        "the default, that is the 'local' server's model_base, not a working directory; an absolute "
        "path inside a local model_base works too), or a selector like 'ASR@latest'."))],
    server: Server,
    left_server: Annotated[str, Field(max_length=ARG_MAX_LENGTH, description=(
        "Where the left copy is; 'local' is this machine."))] = LOCAL_ALIAS,
    remote_path: OptionalRemotePath = None,
    checksum: Annotated[bool, Field(description=(
        "Compare contents by xxh3-128 instead of size and modification time."))] = False,
    gpu: Gpu = None,
) -> Annotated[CallToolResult, api.DiffResult]:
    """Compare a model's files between two places (this machine or servers): same,
    new (left only), modified, remote only, with the command that would sync them.
    A left model that does not exist here is an error."""
    config = app.load_config()
    if config.server(left_server).is_local and not inventory.has_selector(model):
        # a plain path on this machine: checked here, and missing is an error
        full = local_path(config, model, "model", alias=left_server, must_exist=True)
        left, default = str(full), base_relative(config, full)
    else:
        default = inside_base(model, "model")
        left = f"{left_server}:{default}"
    right = f"{server}:{inside_base(remote_path or default, 'remote_path')}"
    return await call(api.diff, left, right, config=config, checksum=checksum, gpu=gpu, label=f"{server}: diff")


# What each prune question showed: the tool then removes those names only.
_SHOWN: dict[tuple, set[str]] = {}


async def _prune_question(server: str = "", model: str = "", keep: int = 1, gpu: str | None = None) -> str | None:
    plan = await run_bounded(api.prune, server, model, keep, config=app.load_config(), gpu=gpu, yes=False,
                             label=f"{server}: prune")
    names = [item.name for item in plan.to_remove]
    _SHOWN[(server, model, keep, gpu)] = set(names)
    if not names:
        return None
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"Remove {len(names)} old version(s) of {model} on {server} ({shown})?"


@app.tool(title="Remove old model versions", annotations=DESTRUCTIVE)
async def prune(
    server: Server,
    model: ModelName,
    keep: Annotated[int, Field(ge=1, description="How many of the newest versions to keep per model and GPU.")],
    ok: Annotated[Confirmed, confirmation(_prune_question)],
    gpu: Gpu = None,
    confirm: Confirm = False,
) -> Annotated[CallToolResult, api.PruneResult]:
    """Remove all but the newest `keep` versions of a model (per GPU) under a server's
    model_base. Never touches other models, names outside the convention, or the newest ones."""
    require_confirmation(ok)
    config = app.load_config()
    only = _SHOWN.pop((server, model, keep, gpu), set())  # never more than the user was shown
    return await call(api.prune, server, model, keep, config=config, gpu=gpu, yes=True, only=only,
                      label=f"{server}: prune")


def _clip_output(r: api.ExecResult) -> api.ExecResult:
    def tail(s: str) -> str:
        if len(s) <= EXEC_OUTPUT_MAX:
            return s
        return f"[first {len(s) - EXEC_OUTPUT_MAX} characters cut]\n" + s[-EXEC_OUTPUT_MAX:]
    return dataclasses.replace(r, stdout=tail(r.stdout), stderr=tail(r.stderr))


def _exec_text(r: api.ExecResult) -> str:
    text = render.markdown(r)
    for name, body in (("stdout", r.stdout), ("stderr", r.stderr)):
        if body:
            fence = "`" * max(3, _longest_backtick_run(body) + 1)
            text += f"\n{name}:\n{fence}\n{body.rstrip(chr(10))}\n{fence}\n"
    return text


def _longest_backtick_run(s: str) -> int:
    return max((len(m) for m in re.findall(r"`+", s)), default=0)


# -- entry points -----------------------------------------------------------------------
def serve(config_path: str | os.PathLike | None = None) -> None:
    """Serve the tools over stdio until the client closes the connection."""
    app.config_path = config_path
    try:
        app.run("stdio")
    except KeyboardInterrupt:
        sys.exit(130)


def main(argv: list[str] | None = None) -> None:
    """`model-sync-mcp [--config PATH]`, same as `model-sync [--config PATH] mcp`."""
    import argparse

    parser = argparse.ArgumentParser(prog="model-sync-mcp",
                                     description="Serve model-sync's tools over MCP on stdio.")
    parser.add_argument("--config", help="config file (default ~/.model-sync.yaml; env MODEL_SYNC_CONFIG)")
    args = parser.parse_args(argv)
    try:
        from .early import sweep_leftovers

        sweep_leftovers()  # what a killed model-sync left in $TMPDIR (`model-sync mcp` does it in early.main)
    except Exception:  # housekeeping: never the server's failure
        pass
    serve(config_path=args.config)


if __name__ == "__main__":
    main()
