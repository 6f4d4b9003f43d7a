"""Resolve a server's SSH settings once, with OpenSSH itself (`ssh -G`), and
hand the same values to every ssh we start (the shared connection, rsync's
ssh) and to Fabric/paramiko (exec).

OpenSSH finds ~/.ssh through the password database while paramiko follows
$HOME; we pick the files from $HOME and pass them to both explicitly, so the
two always agree (and a test that moves HOME isolates both)."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .config import Config, ServerConfig
from .early import control_option, resolved
from .errors import ConfigError, UsageError


FAST_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                "aes128-ctr,aes192-ctr,aes256-ctr")


@dataclass(frozen=True)
class SshFiles:
    home: Path
    config: Path | None  # ~/.ssh/config, None when absent
    known_hosts: Path  # where keys are checked and accept-new writes
    global_known_hosts: tuple[Path, ...]


def ssh_files() -> SshFiles:
    home = Path.home()
    cfg = home / ".ssh" / "config"
    return SshFiles(
        home=home,
        config=cfg if cfg.is_file() else None,
        known_hosts=home / ".ssh" / "known_hosts",
        global_known_hosts=tuple(p for p in (Path("/etc/ssh/ssh_known_hosts"),) if p.is_file()),
    )


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to open an SSH connection to one server."""

    alias: str  # model-sync alias
    host: str  # as written in model-sync config (may be an ssh_config Host)
    hostname: str
    user: str
    port: int
    identity_files: tuple[str, ...]
    identities_only: bool
    proxy_jump: str | None
    strict: str  # "yes" | "accept-new"
    connect_timeout: int
    files: SshFiles
    options: tuple[tuple[str, str], ...]  # the user's extra -o options
    resolution: tuple[tuple[str, ...], str] = ((), "")  # the `ssh -G` run that resolved it, and its output

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH and paramiko use for this host in known_hosts."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def _common_options(self) -> list[str]:
        """Options every ssh we spawn gets, jump hosts included: the same
        config, known_hosts files and host-key policy as the Fabric side."""
        f = self.files
        argv = ["-F", str(f.config) if f.config else "none",
                "-o", "UserKnownHostsFile=" + _ssh_quote(str(f.known_hosts)),
                "-o", "GlobalKnownHostsFile=" + (" ".join(_ssh_quote(str(g)) for g in f.global_known_hosts)
                                                 if f.global_known_hosts else "none"),
                "-o", f"StrictHostKeyChecking={self.strict}",
                "-o", "BatchMode=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}"]
        for ident in self.identity_files:
            argv += ["-o", "IdentityFile=" + _ssh_quote(ident)]
        return argv

    def ssh_argv(self, control: str | None = None, fast: bool = False) -> list[str]:
        """`ssh` with every resolved setting spelt out, ending in the host.
        `control`: go through that ControlMaster socket (falling back to a
        connection of its own if the master is gone). `fast`: prefer AES-GCM
        and no compression, for a connection that carries model bytes (see
        BENCHMARKS.md); a Ciphers entry in the server's ssh_options wins."""
        argv = ["ssh"]
        if fast:
            if not any(k.lower() == "ciphers" for k, _ in self.options):
                argv += ["-o", "Ciphers=" + FAST_CIPHERS]
            argv += ["-o", "Compression=no"]
        for key, value in self.options:  # for ssh the first value given wins
            argv += ["-o", f"{key}={value}"]
        argv += self._common_options() + [
            "-o", f"HostName={self.hostname}",
            "-o", f"User={self.user}",
            "-o", f"Port={self.port}",
        ]
        if self.identities_only:
            argv += ["-o", "IdentitiesOnly=yes"]
        proxy = self.proxy_command()
        if proxy:
            # ssh expands %-tokens in ProxyCommand once; inner hops keep theirs
            argv += ["-o", "ProxyCommand=" + shlex.join(proxy).replace("%", "%%")]
        if control:
            argv += ["-o", "ControlMaster=no", "-o", control_option(control)]
        argv.append(self.host)
        return argv

    def master_argv(self, control: str, idle: int) -> list[str]:
        """The ssh that opens the shared connection, authenticates, then goes
        to the background (-f) serving `control`. It leaves by itself `idle`
        seconds after its last session, should we die without closing it."""
        argv = self.ssh_argv(fast=True)
        argv[-1:-1] = ["-o", "ControlMaster=yes", "-o", control_option(control),
                       "-o", f"ControlPersist={idle}", "-o", "ServerAliveInterval=15", "-N", "-f"]
        return argv

    def proxy_command(self) -> list[str] | None:
        """ProxyJump as an explicit ProxyCommand. OpenSSH's -J would not pass
        our known_hosts and policy options to the jump ssh; this does, for
        every hop (each hop reaches the next through the one before)."""
        if not self.proxy_jump:
            return None
        hops = [h for h in self.proxy_jump.split(",") if h]
        argv: list[str] | None = None
        for i, hop in enumerate(hops):
            prev = argv
            argv = ["ssh"] + self._common_options()
            if prev:  # this hop's ssh fills in %h:%p for the hop after it
                argv += ["-o", "ProxyCommand=" + shlex.join(prev)]
            else:
                argv += ["-o", "ProxyJump=none"]
            argv += ["-W", (f"{self.hostname}:{self.port}" if i == len(hops) - 1 else "%h:%p"),
                     _ssh_destination(hop)]
        return argv

    def rsync_rsh(self, control: str | None = None) -> str:
        """The ssh command as one string for rsync -e, without the trailing host."""
        return " ".join(_rsync_quote(a) for a in self.ssh_argv(control, fast=True)[:-1])


def _ssh_destination(hop: str) -> str:
    # ProxyJump allows [user@]host[:port]; ssh wants ssh://user@host:port for a port
    host = hop.rsplit("@", 1)[-1]
    if ":" in host and not host.startswith("["):
        return "ssh://" + hop
    return hop


def _ssh_quote(value: str) -> str:
    # ssh_config values with spaces need double quotes
    return f'"{value}"' if any(c.isspace() for c in value) else value


def _rsync_quote(arg: str) -> str:
    # rsync splits -e on spaces itself: quotes group, a doubled quote is a
    # literal one, and backslash is not an escape
    if arg and not any(c in arg for c in " \t'\""):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def _expand(path: str, home: Path) -> str:
    if path == "~" or path.startswith("~/"):
        return str(home) + path[1:]
    return path


def resolve(server: ServerConfig, config: Config) -> SshTarget:
    """Resolve one remote server's settings with `ssh -G`."""
    if server.is_local:
        raise UsageError(f"'{server.alias}' is a local server; it has no SSH settings")
    files = ssh_files()
    key = None
    if server.ssh_key:
        key = _expand(server.ssh_key, files.home)
        if not Path(key).is_file():
            raise ConfigError(config.path, f"servers.{server.alias}.ssh_key: {key} does not exist; "
                                           "fix the path or create a key with ssh-keygen")
    g_argv = _ssh_g_argv(server.host, server.user, server.port, key,
                         str(files.config) if files.config else "none", server.ssh_options)
    g_output = _ssh_g(g_argv)
    values: dict[str, list[str]] = {}
    for line in g_output.splitlines():
        key_, _, value = line.partition(" ")
        values.setdefault(key_.lower(), []).append(value)
    idents = tuple(_expand(p, files.home) for p in values.get("identityfile", []))
    if key is None:
        # Defaults OpenSSH would try: keep only those that exist, as ssh does.
        # An IdentityFile written in ssh_config that is missing is an error.
        explicit = _config_mentions_identity(values)
        existing = tuple(p for p in idents if Path(p).is_file())
        if explicit and not existing:
            raise ConfigError(files.config or config.path,
                              f"IdentityFile for '{server.host}' does not exist ({', '.join(idents)}); "
                              "fix ~/.ssh/config or set ssh_key in the model-sync config")
        idents = existing
    proxy = _first(values, "proxyjump")
    return SshTarget(
        alias=server.alias,
        host=server.host,
        hostname=_first(values, "hostname") or server.host,
        user=_first(values, "user"),
        port=int(_first(values, "port") or 22),
        identity_files=idents,
        identities_only=key is not None or _first(values, "identitiesonly") == "yes",
        proxy_jump=None if proxy in (None, "none") else proxy,
        strict=server.strict_host_key_checking,
        connect_timeout=config.defaults.connect_timeout,
        files=files,
        options=server.ssh_options,
        resolution=(g_argv, g_output),
    )


def _first(values: dict[str, list[str]], key: str) -> str | None:
    got = values.get(key)
    return got[0] if got else None


_DEFAULT_IDENTITIES = {"~/.ssh/id_rsa", "~/.ssh/id_ecdsa", "~/.ssh/id_ecdsa_sk", "~/.ssh/id_ed25519",
                       "~/.ssh/id_ed25519_sk", "~/.ssh/id_xmss", "~/.ssh/id_dsa"}


def _config_mentions_identity(values: dict[str, list[str]]) -> bool:
    return any(p not in _DEFAULT_IDENTITIES for p in values.get("identityfile", []))


def _ssh_g_argv(host: str, user: str | None, port: int | None, key: str | None, config_file: str,
                options: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    argv = ["ssh", "-T", "-G", "-F", config_file]
    if user:
        argv += ["-o", f"User={user}"]
    if port:
        argv += ["-o", f"Port={port}"]
    if key:
        argv += ["-o", "IdentityFile=" + _ssh_quote(key)]
    for k, v in options:
        argv += ["-o", f"{k}={v}"]
    return tuple(argv + ["--", host])


@lru_cache(maxsize=64)
def _ssh_g(argv: tuple[str, ...]) -> str:
    """What OpenSSH makes of a host (`ssh -G`: every file it reads, Include
    and Match included); the entry point's run of it, when it made one."""
    if argv in resolved:
        return resolved[argv]
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UsageError("the OpenSSH client 'ssh' is not installed; install it (apt-get install openssh-client)") from None
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "ssh -G failed"
        raise UsageError(f"cannot resolve SSH settings for '{argv[-1]}': {msg}")
    return proc.stdout
