"""The one facade: every operation model-sync offers, returning data.

The CLI and the MCP server are thin layers over these functions; neither
runs subprocesses or opens SSH connections itself."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .config import Config, ServerConfig, load_config
from .errors import ModelSyncError
from .hosts import open_host
from .probe import probe
from .sshconf import resolve


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
    infos = [_server_info(s, config) for s in config.servers.values()]
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
