"""The one facade: every operation model-sync offers, returning data.

The CLI and the MCP server are thin layers over these functions; neither
runs subprocesses or opens SSH connections itself."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

from . import inventory
from .config import Config, ServerConfig, load_config
from .errors import ModelSyncError, UsageError
from .hosts import ShellNoise, open_host
from .inventory import DiffResult, ModelList, PruneResult, VersionsResult
from .probe import probe
from .sshconf import resolve
from .transfer import TransferResult


@dataclass
class ServerInfo:
    alias: str
    host: str  # "localhost" for a local server
    user: str | None
    port: int | None
    model_base: str
    local: bool


@dataclass
class ServerCheck:
    alias: str
    host: str
    reachable: bool
    rtt_ms: float | None = None
    rsync: str | None = None
    xxhsum: str | None = None
    python_xxhash: str | None = None
    free_bytes: int | None = None
    model_base_exists: bool | None = None
    error: str | None = None


@dataclass
class ServersResult:
    servers: list[ServerInfo]
    checks: list[ServerCheck] | None = None
    config_path: str = ""

    @property
    def ok(self) -> bool:
        return self.checks is None or all(c.reachable and not c.error for c in self.checks)


@dataclass
class ExecResult:
    server: str
    command: str
    exit_code: int
    seconds: float
    timed_out: bool
    stdout: str = ""
    stderr: str = ""


def _server_info(server: ServerConfig, config: Config) -> ServerInfo:
    if server.is_local:
        return ServerInfo(server.alias, "localhost", None, None, server.model_base, True)
    try:
        t = resolve(server, config)
        return ServerInfo(server.alias, t.hostname, t.user, t.port, server.model_base, False)
    except ModelSyncError:
        # still list it; `--check` reports the problem in its row
        return ServerInfo(server.alias, server.host, server.user, server.port, server.model_base, False)


def list_servers(config: Config | None = None, check: bool = False) -> ServersResult:
    config = config or load_config()
    # each remote server is one `ssh -G` (a few ms): a config of thousands
    # took minutes one after another; they run side by side, as --check does
    with ThreadPoolExecutor(max_workers=min(16, len(config.servers))) as pool:
        infos = list(pool.map(lambda s: _server_info(s, config), config.servers.values()))
    result = ServersResult(servers=infos, config_path=str(config.path))
    if check:
        with ThreadPoolExecutor(max_workers=min(16, len(infos) or 1)) as pool:
            result.checks = list(pool.map(lambda i: check_server(i.alias, config), infos))
    return result


def check_server(alias: str, config: Config) -> ServerCheck:
    """Connect, time a round trip and probe the host's tools and free space.
    Never raises for a server-side problem: the error goes into the row."""
    host_label = alias
    try:
        host = open_host(alias, config)
        host_label = host.label
        try:
            start = time.monotonic()
            if host.is_local:
                rtt = None
            else:
                host.connect()
                start = time.monotonic()
                host.script(":", timeout=config.defaults.connect_timeout)
                rtt = (time.monotonic() - start) * 1000
            facts = probe(host)
        finally:
            host.close()
    except ShellNoise as exc:  # reached, and unusable until its shell is fixed
        return ServerCheck(alias=alias, host=host_label, reachable=True, error=str(exc))
    except ModelSyncError as exc:
        return ServerCheck(alias=alias, host=host_label, reachable=False, error=str(exc))
    error = None
    if not facts.rsync_ok:
        error = ("rsync is missing" if facts.rsync_version is None else f"rsync {facts.rsync_version} is too old") + \
            "; model-sync needs rsync 3.2+ there (apt-get install rsync)"
    return ServerCheck(
        alias=alias, host=host_label, reachable=True, rtt_ms=None if rtt is None else round(rtt, 1),
        rsync=facts.rsync_version, xxhsum=facts.xxhsum, python_xxhash=facts.python_xxhash,
        free_bytes=facts.free_bytes, model_base_exists=facts.base_exists, error=error,
    )


def exec_command(alias: str, command: str, config: Config | None = None, timeout: float | None = None,
                 capture: bool = True) -> ExecResult:
    """Run the user's command in the server's shell (locally for a local server).
    With capture=False the output streams to this process's stdout/stderr."""
    config = config or load_config()
    if not command.strip():
        from .errors import UsageError
        raise UsageError("exec needs a command, e.g. model-sync exec reaper \"df -h\"")
    host = open_host(alias, config)
    try:
        res = host.shell(command, timeout=timeout, capture=capture)
    finally:
        host.close()
    return ExecResult(server=alias, command=command, exit_code=res.exit_code, seconds=round(res.seconds, 3),
                      timed_out=res.timed_out, stdout=res.stdout if capture else "",
                      stderr=res.stderr if capture else "")


# -- transfers ------------------------------------------------------------------
@dataclass
class TransferReport(TransferResult):
    """A push or pull result plus what model-sync decided on the way: the
    directory a selector chose, and warnings such as a name outside the
    naming convention."""

    selector: str | None = None  # as given, e.g. ASR@latest
    resolved: str | None = None  # the path it chose, e.g. RTX3090_N2501_ASR_250820
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, result: TransferResult, **extra) -> "TransferReport":
        return cls(**{f.name: getattr(result, f.name) for f in fields(result)}, **extra)


def split_remote(spec: str, config: Config) -> tuple[str, str | None]:
    """'reaper:models/x' -> ('reaper', 'models/x'); 'reaper' -> ('reaper', None).
    Only a configured alias before the colon counts, so a local path with a
    colon is never mistaken for a server."""
    alias, sep, path = spec.partition(":")
    if not sep:
        config.server(alias)  # raises with the list of known servers
        return alias, None
    config.server(alias)
    return alias, path or None


def push(local_path: str, destination: str, config: Config | None = None, opts=None, strict: bool = False,
         on_warning=None, **hooks):
    """Send a local model directory to `server[:path]`; verified and published atomically.
    A name outside the naming convention is a warning (`on_warning(text)` and
    the result's `warnings`), or with strict=True an error before anything moves.
    A Hugging Face cache folder (models--ORG--NAME) sends the snapshot its
    refs/main names, under the folder's name; the result says which."""
    import os
    import posixpath

    from .paths import huggingface_snapshot
    from .transfer import transfer

    config = config or load_config()
    alias, path = split_remote(destination, config)
    # what cannot be pushed at all is said before any warning about its name
    if not os.path.isdir(os.path.expanduser(local_path)):
        raise UsageError(f"{local_path} is not a directory; push sends a model directory")
    # the name the directory will have there
    name = posixpath.basename(path.rstrip("/")) if path else os.path.basename(
        os.path.abspath(os.path.expanduser(local_path)).rstrip("/"))
    snapshot = huggingface_snapshot(local_path)
    selector = resolved = None
    if snapshot is not None:
        selector = f"{os.path.basename(os.path.abspath(os.path.expanduser(local_path)))} refs/main"
        resolved = f"snapshots/{snapshot[1]}"
        local_path, path = snapshot[0], path or name  # the snapshot, named as the folder
    check = inventory.check_name(name, config.naming_pattern)
    warnings = []
    if not check.matches:
        if strict:
            raise UsageError(f"{check.message}; rename it (e.g. {check.example}) or push without --strict")
        warnings.append(check.message)
        if on_warning:
            on_warning(check.message)
    result = transfer("push", local_path, alias, path, config, opts or transfer_defaults(config), **hooks)
    return TransferReport.of(result, warnings=warnings, selector=selector, resolved=resolved)


def pull(source: str, local_path: str, config: Config | None = None, opts=None, gpu: str | None = None,
         on_resolve=None, **hooks):
    """Fetch `server:path` into local_path/NAME (local_path itself when its
    last component is NAME: see paths.pull_destination).
    `path` may be a selector, `MODEL@latest` or `MODEL@VERSION` (`gpu` narrows
    it); the directory it chose is passed to `on_resolve(selector, path)` and
    kept in the result's `resolved`."""
    from .transfer import transfer

    config = config or load_config()
    alias, path = split_remote(source, config)
    if path is None:
        from .errors import UsageError
        raise UsageError(f"pull needs a path on the server: {alias}:MODEL (see 'model-sync list {alias}')")
    host = open_host(alias, config)  # one connection for resolving and transferring
    try:
        selector, path = _resolve(host, config, path, gpu, on_resolve)
        result = transfer("pull", local_path, alias, path, config, opts or transfer_defaults(config),
                          host=host, **hooks)
    finally:
        host.close()
    return TransferReport.of(result, selector=selector, resolved=path if selector else None)


def _resolve(host, config: Config, path: str | None, gpu: str | None, on_resolve) -> tuple[str | None, str | None]:
    """(selector, concrete path): a MODEL@latest / MODEL@VERSION selector
    resolved on the server (reported through on_resolve), else (None, path)."""
    if not (inventory.has_selector(path) or gpu is not None):
        return None, path
    concrete = inventory.resolve_remote_model(host, config, path, gpu)
    if concrete == path:
        return None, path
    if on_resolve:
        on_resolve(path, concrete)
    return path, concrete


def transfer_defaults(config: Config):
    from .transfer import TransferOptions

    d = config.defaults
    return TransferOptions(verify=d.verify, compress=d.compress, delete=d.delete, fsync=d.fsync,
                           grace_minutes=d.keep_old_minutes)


@dataclass
class VerifyResult:
    server: str
    local: str
    remote: str
    files: int
    bytes: int
    algorithm: str
    seconds: float
    ok: bool
    mismatched: list[str]
    only_local: list[str]
    only_remote: list[str]
    resolved: str | None = None  # the directory a MODEL@... selector chose


def verify(local_path: str, destination: str, config: Config | None = None, gpu: str | None = None,
           on_resolve=None) -> VerifyResult:
    """Hash every file on both ends (concurrently) and compare. The server
    path may be a `MODEL@latest` / `MODEL@VERSION` selector (`gpu` narrows it)."""
    import os

    from .errors import UsageError
    from .hosts import LocalHost
    from .manifest import SHA256, XXH128, hash_both, list_tree, remote_hash_method
    from .paths import relative_or_absolute
    from .probe import inspect

    config = config or load_config()
    alias, path = split_remote(destination, config)
    local_abs = os.path.abspath(os.path.expanduser(local_path))
    if not os.path.isdir(local_abs):
        raise UsageError(f"{local_path} is not a directory")
    start = time.monotonic()
    server = open_host(alias, config)
    here = LocalHost.this_machine()
    try:
        selector, path = _resolve(server, config, path, gpu, on_resolve)
        rel = relative_or_absolute(path, alias, os.path.basename(local_abs.rstrip("/")))
        with ThreadPoolExecutor(max_workers=2) as pool:  # one round trip to the server: tools and listing
            ft = pool.submit(list_tree, here, local_abs)
            rt = pool.submit(inspect, server, rel, False, True)  # both read as rsync sends them
            ltree, (facts, rstate) = ft.result(), rt.result()
        method = "xxhsum" if server.is_local else remote_hash_method(facts)
        rpath = rstate.path
        if not rstate.is_dir:
            raise UsageError(f"{alias}:{rpath} does not exist; push it first")
        lfiles = {p for p, f in ltree.files.items() if f.kind == "f"}
        rfiles = {p for p, f in rstate.files.items() if f.kind == "f"}
        common = sorted(lfiles & rfiles)
        lh, rh = hash_both(here, local_abs, server, rpath, common, method)
    finally:
        server.close()
    mismatched = [p for p in common if lh.get(p) is None or lh.get(p) != rh.get(p)]
    only_local = sorted(lfiles - rfiles)
    only_remote = sorted(rfiles - lfiles)
    return VerifyResult(
        server=alias, local=local_abs, remote=f"{alias}:{rpath}", files=len(common),
        bytes=sum(ltree.files[p].size for p in common), algorithm=SHA256 if method == "sha256" else XXH128,
        seconds=round(time.monotonic() - start, 3), ok=not (mismatched or only_local or only_remote),
        mismatched=mismatched, only_local=only_local, only_remote=only_remote,
        resolved=path if selector else None,
    )


# -- what is on a server ----------------------------------------------------------

def diff(left: str, right: str, config: Config | None = None, checksum: bool = False,
         gpu: str | None = None) -> DiffResult:
    """Compare two model trees: a local path or `server[:path]` on either side.
    Each file is same, new (left only), modified or remote only (right only)."""
    return inventory.diff(left, right, config or load_config(), checksum=checksum, gpu=gpu)


def list_models(server: str, config: Config | None = None, filter: str | None = None,
                sort: str = "name") -> ModelList:
    """The model directories under a server's model_base, with size, newest
    mtime and the naming convention's fields."""
    return inventory.list_models(server, config or load_config(), filter=filter, sort=sort)


def versions(server: str, config: Config | None = None, model: str | None = None,
             gpu: str | None = None) -> VersionsResult:
    """Versions on a server grouped by model and GPU, newest first."""
    return inventory.versions(server, config or load_config(), model=model, gpu=gpu)


def prune(server: str, model: str, keep: int, config: Config | None = None, gpu: str | None = None,
          yes: bool = False, only: set[str] | None = None) -> PruneResult:
    """All but the `keep` newest versions of a model (per GPU): the plan, and
    with yes=True their removal."""
    return inventory.prune(server, config or load_config(), model, keep, gpu=gpu, yes=yes, only=only)
