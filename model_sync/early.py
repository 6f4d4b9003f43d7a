"""The `model-sync` command's entry point: start the SSH handshake before
Python has loaded the rest of model-sync.

A handshake costs ~0.2 s and loading click, yaml and our modules ~0.1 s; done
one after the other they are most of a `diff` or `list`. So before importing
anything heavy, this reads the servers the command names from argv and, for
each one whose connection was made before with the same config files,
starts that same ControlMaster ssh at once (its argv is cached). When the
command then opens the server, hosts.RemoteHost.connect() adopts it only if
the argv it would use itself is identical; otherwise it closes it and
connects as usual. Nothing is contacted that the command line does not name.
Only the standard library is imported here.
"""

from __future__ import annotations

import gc
import marshal
import os
import sys

# Only what the start path needs is imported here (json alone pulls in `re`,
# subprocess a dozen modules: ~20 ms before the handshake could begin).

# Which positional arguments name a server, per subcommand (the one rule for
# starting connections early, here and in cli.State.warm_up): (position, a
# bare alias counts) - else only `alias:path`.
SERVER_ARGS = {"push": ((1, True),), "verify": ((1, True),), "pull": ((0, False),),
               "diff": ((0, False), (1, True)), "list": ((0, True),), "versions": ((0, True),),
               "prune": ((0, True),)}
# Options that take a value, so the next word is not a positional argument
# (tests/test_quickstart.py checks this against the click tree).
VALUE_OPTIONS = {"--config", "--format", "--exclude", "--include", "--bwlimit", "--streams", "--gpu",
                 "--filter", "--sort", "--model", "--keep", "--timeout"}
CONTROL = "@CONTROL@"  # where the control socket path goes in a cached argv

_started: dict[str, tuple[list[str], "Spawned", str]] = {}  # alias -> (argv, ssh, control)
# `ssh -G` runs the start path checked, argv -> output: sshconf uses them
# rather than running the same command again
resolved: dict[tuple[str, ...], str] = {}
_FORMAT = (1, sys.version_info[:2])  # of the cache file (marshal's format follows Python's)


def cache_file() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "model-sync", "connections.cache")


def stamp(config_path: str) -> list:
    """What the cached argv depends on: the config file and ~/.ssh/config."""
    out: list = [os.path.abspath(config_path)]
    for path in (config_path, os.path.join(os.path.expanduser("~"), ".ssh", "config")):
        try:
            st = os.stat(path)
            out += [st.st_mtime_ns, st.st_size]
        except OSError:
            out += [None, None]
    return out


def remember(config_path: str, alias: str, argv: list[str], control: str,
             resolution: tuple[tuple[str, ...], str]) -> None:
    """Record the argv that connected to `alias` (called after a connect),
    with the `ssh -G` run (argv and output) it was built from."""
    path = cache_file()
    data, now = _load(path), stamp(config_path)
    if data.get("stamp") != now:
        data = {"stamp": now}
    entry = {"argv": [a.replace(control, CONTROL) for a in argv],
             "resolve": [list(resolution[0]), resolution[1]]}
    if not resolution[0] or (data.get("hosts") or {}).get(alias) == entry:
        return
    data.setdefault("hosts", {})[alias] = entry
    _save(path, data)


def _save(path: str, data: dict) -> None:
    import tempfile

    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
        with os.fdopen(fd, "wb") as fh:
            marshal.dump((_FORMAT, data), fh)
        os.replace(tmp, path)
    except OSError:
        pass  # only an optimisation


def _load(path: str) -> dict:
    """The cache (marshal: read without importing anything); anything
    unreadable, from another Python, or not ours counts as empty."""
    try:
        with open(path, "rb") as fh:
            form, data = marshal.load(fh)
        return data if form == _FORMAT and isinstance(data, dict) else {}
    except (OSError, ValueError, EOFError, TypeError):
        return {}


def named_servers(argv: list[str], known=None) -> tuple[str | None, list[str]]:
    """(the --config given, the aliases the command's server arguments name:
    `alias:path`, or a bare alias where the command takes one). With `known`,
    only those aliases; without, every word in such a place."""
    config, words = None, []
    i, positional_only = 0, False
    while i < len(argv):
        word = argv[i]
        i += 1
        if not positional_only and word == "--":
            positional_only = True
        elif not positional_only and word in ("-h", "--help", "--version"):
            return config, []
        elif not positional_only and word.startswith("-"):
            name, eq, value = word.partition("=")
            if name in VALUE_OPTIONS and not eq:
                value = argv[i] if i < len(argv) else ""
                i += 1
            if name == "--config":
                config = value
        else:
            words.append(word)
    if not words or words[0] not in SERVER_ARGS:
        return config, []
    names = []
    for pos, bare in SERVER_ARGS[words[0]]:
        if pos + 1 < len(words):
            alias, sep, _ = words[pos + 1].partition(":")
            if (known is None or alias in known) and (sep or bare) and alias not in names:
                names.append(alias)
    return config, names


def resolves_as_before(entry: dict) -> bool:
    """The server's `ssh -G` gives what it gave when the argv was cached:
    every file ssh reads is in it (Include, Match, /etc/ssh/ssh_config), so
    a HostName, Port or User changed anywhere shows."""
    argv, before = entry.get("resolve") or ([], None)
    if not argv or before is None:
        return False
    try:
        proc = Spawned(argv, stdout=True)
    except OSError:
        return False
    try:
        out, _ = proc.communicate(timeout=10)
    except TimeoutError:
        proc.kill()
        return False
    text = out.decode("utf-8", "surrogateescape")
    if proc.returncode != 0 or text != before:
        return False
    resolved[tuple(argv)] = text
    return True


def start(argv: list[str]) -> None:
    cached = _load(cache_file())
    hosts = cached.get("hosts") or {}
    if not hosts:
        return
    config, aliases = named_servers(argv, hosts)
    config = config or os.environ.get("MODEL_SYNC_CONFIG") or os.path.join(os.path.expanduser("~"),
                                                                          ".model-sync.yaml")
    if not aliases or cached.get("stamp") != stamp(os.path.expanduser(config)):
        return
    for alias in aliases:
        entry = hosts[alias] if isinstance(hosts[alias], dict) else {}
        template = entry.get("argv")
        if not template or not resolves_as_before(entry):
            hosts.pop(alias, None)  # ssh's view changed: the next connect records it afresh
            _save(cache_file(), cached)
            continue
        if not isinstance(template, list) or not all(isinstance(a, str) for a in template):
            continue  # not what remember() writes
        directory = private_dir()
        control = os.path.join(directory, "ssh")
        cmd = [a.replace(CONTROL, control) for a in template]
        try:
            proc = Spawned(cmd, env=master_env())
        except OSError:
            os.rmdir(directory)
            continue
        _started[alias] = (cmd, proc, control)
    if _started:
        import atexit

        atexit.register(_close_unclaimed)


def take(alias: str) -> tuple[list[str], "Spawned", str] | None:
    """The connection started for `alias`, for RemoteHost.connect() to adopt."""
    return _started.pop(alias, None)


def discard(started: tuple[list[str], "Spawned", str]) -> None:
    """Close a started connection nobody uses, and remove its directory."""
    import shutil

    _, proc, control = started
    try:
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            stop_master(control)
    except TimeoutError:
        proc.kill()
    shutil.rmtree(os.path.dirname(control), ignore_errors=True)


class Spawned:
    """A child started with posix_spawn, for the start path (subprocess costs
    ~8 ms to import): stdin and stdout on /dev/null (stdout piped with
    `stdout=True`), stderr piped. For `ssh -G`, and for the `ssh -M -f`
    whose first process exits once the connection is up."""

    def __init__(self, argv: list[str], env: dict | None = None, stdout: bool = False):
        out_r, out_w = os.pipe() if stdout else (None, None)
        err_r, err_w = os.pipe()
        devnull = os.open(os.devnull, os.O_RDWR)
        actions = [(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, out_w if stdout else devnull, 1),
                   (os.POSIX_SPAWN_DUP2, err_w, 2)]
        try:
            self.pid = os.posix_spawnp(argv[0], argv, os.environ if env is None else env, file_actions=actions)
        except OSError:
            for fd in (out_r, out_w, err_r, err_w):
                if fd is not None:
                    os.close(fd)
            raise
        finally:
            os.close(devnull)
        for fd in (out_w, err_w):
            if fd is not None:
                os.close(fd)
        self._out_fd, self._err_fd = out_r, err_r
        self._open: dict[int, list[bytes]] = {fd: [] for fd in (out_r, err_r) if fd is not None}
        self._got: dict[int, bytes] = {}
        self.returncode: int | None = None

    def communicate(self, timeout: float) -> tuple[bytes, bytes]:
        """(stdout, stderr) once both pipes close and the child has exited;
        TimeoutError after `timeout` seconds (the child is left running)."""
        import select
        import time

        deadline = time.monotonic() + timeout
        while self._open:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select(list(self._open), [], [], left)
            for fd in ready:
                data = os.read(fd, 65536)
                if data:
                    self._open[fd].append(data)
                else:
                    os.close(fd)
                    self._got[fd] = b"".join(self._open.pop(fd))
        self.wait(max(0.0, deadline - time.monotonic()) + 1)
        return self._got.get(self._out_fd, b""), self._got.get(self._err_fd, b"")

    def wait(self, timeout: float) -> int:
        import time

        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise TimeoutError
            else:
                time.sleep(0.002)
        return self.returncode

    def kill(self) -> None:
        """Stop the child (if still running), reap it, close our pipe ends."""
        if self.returncode is None:
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.returncode = -9
        for fd in self._open:
            os.close(fd)
        self._open = {}


# The master relays every byte of every session. By default glibc hands freed
# buffers back to the kernel at once, so the first megabytes through a new
# master fault in fresh pages over and over (measured: 50,000 page faults and
# +0.1 s on a 2.4 MB listing). 16 MB of heap slack avoids that; a
# GLIBC_TUNABLES the user set comes after ours and wins.
_HEAP_SLACK = "glibc.malloc.top_pad=16777216"


def master_env() -> dict[str, str]:
    """The environment the ssh master runs in (both start paths use it)."""
    env = dict(os.environ)
    own = env.get("GLIBC_TUNABLES")
    env["GLIBC_TUNABLES"] = f"{_HEAP_SLACK}:{own}" if own else _HEAP_SLACK
    return env


def control_option(control: str) -> str:
    """`ControlPath=...` as ssh reads it: % doubled, quoted if it has spaces."""
    value = control.replace("%", "%%")
    return "ControlPath=" + (f'"{value}"' if any(c.isspace() for c in value) else value)


def stop_master(control: str) -> None:
    """End the master serving `control` (and any session still on it): ask
    it to exit; if it will not, signal it (its pid from `-O check`)."""
    import subprocess

    def ask(op: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", "none", "-o", control_option(control), "-O", op, "model-sync"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)

    if ask("exit").returncode == 0:
        return
    pid = ask("check").stderr.partition("pid=")[2].partition(")")[0]
    if pid.isdigit():
        import signal

        try:
            os.kill(int(pid), signal.SIGTERM)
        except OSError:
            pass


def _close_unclaimed() -> None:
    while _started:
        discard(_started.popitem()[1])


def socket_dir() -> str:
    """A short directory for control sockets (a socket path is capped at
    about 100 bytes): $TMPDIR when it is short enough and writable, else /tmp."""
    tmp = os.environ.get("TMPDIR") or ""
    return tmp if 0 < len(tmp) <= 60 and os.path.isdir(tmp) and os.access(tmp, os.W_OK | os.X_OK) else "/tmp"


def private_dir() -> str:
    """A new directory only we can enter, for one control socket; named with
    our pid (see sweep_leftovers), kept short (see socket_dir)."""
    while True:
        path = os.path.join(socket_dir(), f"model-sync-{os.getpid()}-{os.urandom(2).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def temp_prefix(kind: str) -> str:
    """The start of a temporary file or directory's name (tempfile's prefix)
    for this process: it carries our pid (see sweep_leftovers)."""
    return f"model-sync-{kind}-{os.getpid()}-"


TEMP_KINDS = ("lists", "plan", "names")  # what temp_prefix is called with


def _leftover_pid(name: str) -> int | None:
    """The pid in a name private_dir or temp_prefix made, else None."""
    if not name.startswith("model-sync-"):
        return None
    parts = name[len("model-sync-"):].split("-")
    if parts[0] in TEMP_KINDS:
        parts = parts[1:]
    if len(parts) != 2 or not (parts[0].isascii() and parts[0].isdigit()) or not parts[1]:
        return None
    return int(parts[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (EPERM: it exists, someone else's)
        return True
    return True


def _serving(control: str) -> bool:
    """Whether an ssh master still listens on this control socket (it
    outlives a killed model-sync by up to MASTER_IDLE after its last session,
    and removes the socket itself when it leaves)."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(control)
        except OSError:
            return False
    return True


def _remove(path: str) -> None:
    """Remove a file, or a directory and what it holds, without following links."""
    if os.path.isdir(path) and not os.path.islink(path):
        for entry in os.scandir(path):
            _remove(entry.path)
        os.rmdir(path)
    else:
        os.unlink(path)


def sweep_leftovers() -> None:
    """Remove what a model-sync that was killed (kill -9: no finally
    clauses, no atexit) left in the temporary directories: control-socket
    directories and its temporary lists. Only ours (our uid), only named
    with a pid that no longer runs, and a control directory only once no
    ssh master answers on its socket. Names without a pid (older versions)
    are left alone."""
    me, uid = os.getpid(), os.getuid()
    tmp = next((os.environ[v] for v in ("TMPDIR", "TEMP", "TMP") if os.environ.get(v)), "/tmp")
    for base in dict.fromkeys((socket_dir(), tmp)):
        try:
            entries = [e for e in os.scandir(base) if e.name.startswith("model-sync-")]
        except OSError:
            continue
        for entry in entries:
            pid = _leftover_pid(entry.name)
            if pid is None or pid == me or _alive(pid):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                control = os.path.join(entry.path, "ssh")
                if entry.name.split("-")[2] not in TEMP_KINDS and os.path.exists(control) and _serving(control):
                    continue
                _remove(entry.path)
            except OSError:
                pass  # gone meanwhile, or not ours to remove: the next start tries again


def main() -> None:
    # A command lives for seconds and builds tens of thousands of small records
    # (listings, diffs) and few cycles: the cyclic collector would only rescan
    # them. The long-running MCP server turns it back on (cli.mcp).
    gc.disable()
    try:
        start(sys.argv[1:])
    except Exception:  # only an optimisation (e.g. a damaged cache): connect as usual
        pass
    try:
        sweep_leftovers()  # (after the handshake has begun: it does not wait for this)
    except Exception:  # housekeeping: never the command's failure
        pass
    from .cli import main as cli_main

    try:
        cli_main()
    except SystemExit as done:
        _exit(done.code)


def _exit(code) -> None:
    """Leave as SystemExit would (atexit handlers run, output flushed) but
    without tearing down every object one by one: after a diff of 20,000
    files that teardown alone took 15 ms. Everything model-sync opens is
    closed by then (with-blocks and finally clauses). Not while any other
    thread still works (the MCP server's tool calls): the normal exit waits
    for those, and stops their transfers cleanly."""
    import atexit
    import threading

    if any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate()):
        raise SystemExit(code)
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more to say
            code = code or 1
    os._exit(code or 0)


if __name__ == "__main__":
    main()
