"""Where commands run: this machine, or a server over one SSH connection.

Both kinds offer the same two calls: `script()` runs a POSIX sh script we
wrote (its arguments quoted by the caller) and `shell()` runs a user's
command as typed.

A server gets one OpenSSH connection per command (a ControlMaster in a
private directory): our scripts, the lock, hashing and every rsync stream
are sessions on it, so a command pays the SSH handshake once. `exec`, a
single session of the user's own, goes through Fabric. Both check host keys
against the known_hosts files resolved in sshconf."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Config, ServerConfig
from .destination import not_ours
from .errors import ConnectError, HostKeyError, ModelSyncError, RemoteError, UsageError
from . import early
from .fence import FENCE_SH
from .sshconf import SshTarget, resolve


# paramiko logs tracebacks from its transport thread (e.g. a host that never
# sends a banner); we report those failures ourselves, in one line.
if os.environ.get("MODEL_SYNC_DEBUG") != "1":
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False


@dataclass
class Held:
    """A held lock: what its `then` script printed, and (on a server) the file
    that exists only while the lock is held, for later steps to check."""

    output: str
    owner: str | None = None


@dataclass
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def remote_path_expr(path: str) -> str:
    """Quote a path for a POSIX shell, keeping a leading ~ meaning $HOME."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _timeout_wrapper(command: str, timeout: float, shell: str) -> str:
    """Run `command` under coreutils `timeout` when the host has it, so the
    command itself is stopped, not just our wait for it."""
    secs = max(1, int(round(timeout)))
    inner = f"{shell} -c {shlex.quote(command)}"
    return (f"if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {secs} {inner}; "
            f"else exec {inner}; fi")


class LocalHost:
    is_local = True

    def __init__(self, server: ServerConfig):
        self.server = server
        self.alias = server.alias

    @classmethod
    def this_machine(cls) -> "LocalHost":
        """This machine as one end of a transfer (not a configured server)."""
        return cls(ServerConfig(alias="localhost", model_base="."))

    @property
    def label(self) -> str:
        return "localhost"

    def model_base(self) -> str:
        return os.path.expanduser(self.server.model_base)

    def script(self, script: str, timeout: float | None = None, stdin: bytes | None = None,
               on_output: Callable[[bytes], None] | None = None) -> CommandResult:
        return run_process(["sh", "-c", script], timeout, True, stdin, on_output)

    def shell(self, command: str, timeout: float | None = None, capture: bool = False) -> CommandResult:
        shell = os.environ.get("SHELL") or "/bin/sh"
        return self._run([shell, "-c", command], timeout, capture=capture)

    def _run(self, argv, timeout, capture, stdin: bytes | None = None) -> CommandResult:
        return run_process(argv, timeout, capture, stdin)

    @contextlib.contextmanager
    def lock(self, path: str, wait: bool = True, on_wait=None, then: str = "", stale_after: float = 120,
             fence: list[str] | tuple[str, ...] = ()):
        """An exclusive flock on `path`, held for the with-block. `then` is a
        script run once the lock is held; the block receives its output.
        `fence` is unused here: this process holds the flock itself, so it
        cannot lapse while our writers (rsyncs that die with us) still run."""
        import fcntl

        os.makedirs(os.path.dirname(os.path.expanduser(path)) or ".", exist_ok=True)
        waited = False
        while True:
            fd = _open_lock_file(self.alias, os.path.expanduser(path))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    os.close(fd)
                    raise LockBusy(self.alias, path) from None
                if on_wait and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, os.path.expanduser(path)):
                break
            os.close(fd)  # the holder before us removed it on release: lock the new one
        try:
            out = ""
            if then:
                res = self.script(then, timeout=3600)
                if res.exit_code != 0:
                    raise RemoteError(self.alias, "preparing the destination failed: "
                                      + (res.stderr.strip() or res.stdout.strip() or f"exit {res.exit_code}"))
                out = res.stdout
            yield Held(out)  # an flock of this process cannot lapse while it runs
        finally:
            # no lock file left behind: removed while still held (a waiter
            # finds its file gone and locks a new one, see _same_file)
            with contextlib.suppress(OSError):
                os.unlink(os.path.expanduser(path))
            os.close(fd)

    def close(self):
        pass


def _open_lock_file(alias: str, path: str) -> int:
    """The lock file, opened never through a link planted at its name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EISDIR):
            raise
        raise not_ours(alias, path=path) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_ours(alias, path=path)
    return fd


def _same_file(fd: int, path: str) -> bool:
    """Whether the flocked file is still the one at `path`: a holder removes
    the lock file as it lets go, so a waiter may hold the lock of a file that
    is gone (the whole protocol: lock, check, remove before release)."""
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


MIN_STALE = 30  # seconds; below this a slow server or a long pause would cost a writer its lock


def stale_seconds(stale_after: float) -> int:
    """How long a writer that has gone silent keeps a destination's lock."""
    return max(MIN_STALE, int(stale_after))


class LockBusy(ModelSyncError):
    def __init__(self, alias: str, path: str):
        super().__init__(f"{alias}: another model-sync is writing to this destination (lock {path}); "
                         "wait for it to finish, or run again without --no-wait to queue behind it")


# A login shell that prints to stdout in a non-interactive session (a banner
# in ~/.bashrc, conda's) puts its text before whatever our script prints, and
# rsync cannot work through it at all. So every script of ours says this
# first, with the login shell's name; whatever came before it is the shell's.
SESSION_MARK = b"@@model-sync-session"
_NOISE_HELD = 1 << 20  # bytes kept while looking for the mark


class ShellNoise(ConnectError):
    """The server's login shell writes to stdout before our commands run."""

    def __init__(self, alias: str, where: str, shell: str, noise: bytes):
        lines = [ln.strip() for ln in _text(noise).splitlines() if ln.strip()]
        first = "".join(c if c.isprintable() else f"\\x{ord(c) & 0xff:02x}" for c in lines[0]) if lines else ""
        shown = (repr(first[:80] + ("..." if len(first) > 80 else "")) if lines else "an empty line") + (
            f" and {len(lines) - 1} more line(s)" if len(lines) > 1 else "")
        name = posixpath.basename(shell)
        files = {"bash": "~/.bashrc (or a file it sources)", "zsh": "~/.zshenv"}.get(name, "its startup files")
        guard = "[[ -o interactive ]] || return" if name == "zsh" else \
            "case $- in *i*) ;; *) return;; esac (or [ -z \"$PS1\" ] && return)"
        super().__init__(alias, f"the login shell of {where}{f' ({shell})' if shell else ''} prints to stdout "
                                f"before any command runs: {shown}; rsync and model-sync cannot work through that. "
                                f"In {files}, send that output to stderr (>&2) or print it only in interactive "
                                f"shells: put {guard} before it. Check: 'model-sync exec {alias} true' "
                                "must print nothing")


class SessionGate:
    """A script's stdout, past the server shell's own output: `script()`
    prints SESSION_MARK first; `feed` passes what follows the mark on, and
    keeps what came before it (`noise`) for check() to report."""

    def __init__(self, on_output: Callable[[bytes], None] | None = None):
        self.on_output = on_output
        self._held: bytearray | None = bytearray()  # None once the mark has come
        self._out: list[bytes] = []  # without on_output
        self.noise = b""
        self.shell = ""  # the login shell, as the mark line names it

    @staticmethod
    def script(script: str) -> str:
        return f"printf '%s %s\\n' {SESSION_MARK.decode()} \"${{SHELL-}}\"\n{script}"

    def _emit(self, data: bytes) -> None:
        if data:
            (self.on_output or self._out.append)(data)

    def feed(self, chunk: bytes) -> None:
        if self._held is None:
            self._emit(chunk)
            return
        held = self._held
        held += chunk
        at = held.find(SESSION_MARK)
        end = held.find(b"\n", at) if at >= 0 else -1
        if end >= 0:
            self.noise, self.shell = bytes(held[:at]), _text(bytes(held[at + len(SESSION_MARK):end])).strip()
            self._held = None
            self._emit(bytes(held[end + 1:]))
        elif len(held) > _NOISE_HELD:  # no mark yet: a shell printing this much is noise whatever follows
            self.noise, self._held = bytes(held[:4096]), None

    def finish(self) -> None:
        """The session has ended: without the mark (our script never ran),
        pass on what came, as it came."""
        if self._held is not None:
            held, self._held = bytes(self._held), None
            self._emit(held)

    def output(self) -> str:
        return _text(b"".join(self._out))

    def check(self, host) -> None:
        if self.noise:
            raise ShellNoise(host.alias, host.label, self.shell, self.noise)


def run_process(argv: list[str], timeout: float | None, capture: bool = True,
                stdin: bytes | None = None, on_output: Callable[[bytes], None] | None = None) -> CommandResult:
    """Run argv in its own process group; on timeout or interruption the
    whole group is stopped (exit 124 for a timeout). With `on_output`, stdout
    goes to it chunk by chunk as it arrives (and the result's stdout is
    empty), so a caller can parse a long listing while it is still coming."""
    if on_output is not None and (stdin is not None or not capture):
        raise ValueError("on_output reads stdout itself: no stdin, and capture on")
    start = time.monotonic()
    pipe = subprocess.PIPE if capture else None
    proc = subprocess.Popen(argv, stdout=pipe, stderr=pipe,
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            start_new_session=True)
    try:
        if on_output is None:
            out, err = proc.communicate(input=stdin, timeout=timeout)
        else:
            out, err = b"", pump(proc, timeout, on_output)
    except subprocess.TimeoutExpired:
        stop_process_group(proc)
        out, err = proc.communicate()
        return CommandResult(124, _text(out), _text(err), time.monotonic() - start, timed_out=True)
    except BaseException:
        stop_process_group(proc)
        raise
    return CommandResult(proc.returncode, _text(out), _text(err), time.monotonic() - start)


def pump(proc: subprocess.Popen, timeout: float | None, on_output: Callable[[bytes], None],
         until: Callable[[], bool] | None = None) -> bytes:
    """Hand stdout to on_output as it comes, collect stderr; returns stderr
    once both pipes close and the process has exited, or as soon as
    `until()` holds (then the pipes stay open, the process running)."""
    import selectors

    deadline = None if timeout is None else time.monotonic() + timeout
    err = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(proc.args, timeout)
            for key, _ in sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    on_output(data)
                    if until is not None and until():
                        return bytes(err)
                else:
                    err += data
    proc.stdout.close()
    proc.stderr.close()
    proc.wait(None if deadline is None else max(0.1, deadline - time.monotonic()))
    return bytes(err)


def stop_process_group(proc: subprocess.Popen, grace: float = 3) -> None:
    """SIGTERM the process's group (started with start_new_session), then
    SIGKILL if it has not gone after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "surrogateescape") if isinstance(data, bytes) else data


MASTER_IDLE = 120  # seconds the shared connection outlives its last session, should we die without closing it


class RemoteHost:
    is_local = False

    def __init__(self, server: ServerConfig, target: SshTarget, config_path=None):
        self.server = server
        self.alias = server.alias
        self.target = target
        self.config_path = config_path  # lets the next command start this connection early (early.py)
        self._conn = None  # Fabric connection, for exec
        self._control: str | None = None  # ControlMaster socket, once connected
        self._connecting = threading.Lock()
        self._failed: Exception | None = None  # a failed early connect, raised on first use

    @property
    def label(self) -> str:
        t = self.target
        return f"{t.user}@{t.hostname}" + ("" if t.port == 22 else f":{t.port}")

    # -- connection -------------------------------------------------------
    def _connect_in_background(self) -> None:
        try:
            self.connect()
        except Exception as exc:  # kept for the command's own connect() to raise
            self._failed = exc

    def connect(self) -> str:
        """Open the shared connection (once) and return its control socket.
        It lives in a new private (0700) directory, removed by close()."""
        with self._connecting:
            if self._control is not None:
                return self._control
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
            t = self.target
            started = early.take(self.alias)
            if started is not None:  # begun by the entry point: ours only if it is what we would start
                argv, proc, control = started
                if argv == t.master_argv(control, MASTER_IDLE):
                    return self._adopt(proc, control)
                early.discard(started)
            directory = early.private_dir()
            control = os.path.join(directory, "ssh")
            argv = t.master_argv(control, MASTER_IDLE)
            try:
                proc = subprocess.run(argv, capture_output=True, env=early.master_env(),
                                      stdin=subprocess.DEVNULL, timeout=2 * t.connect_timeout + 10)
            except FileNotFoundError:
                shutil.rmtree(directory, ignore_errors=True)
                raise UsageError("the OpenSSH client 'ssh' is not installed; "
                                 "install it (apt-get install openssh-client)") from None
            except subprocess.TimeoutExpired:
                shutil.rmtree(directory, ignore_errors=True)
                raise ConnectError(t.alias, _msg_timeout(t)) from None
            if proc.returncode != 0:
                shutil.rmtree(directory, ignore_errors=True)
                raise ssh_error(t, _text(proc.stderr))
            self._control = control
            if self.config_path:
                early.remember(str(self.config_path), self.alias, argv, control, t.resolution)
            return control

    def _adopt(self, proc: subprocess.Popen, control: str) -> str:
        """Take over the master the entry point started (see early.py)."""
        t = self.target
        try:
            _, err = proc.communicate(timeout=2 * t.connect_timeout + 10)
        except TimeoutError:
            proc.kill()
            shutil.rmtree(os.path.dirname(control), ignore_errors=True)
            raise ConnectError(t.alias, _msg_timeout(t)) from None
        if proc.returncode != 0:
            shutil.rmtree(os.path.dirname(control), ignore_errors=True)
            raise ssh_error(t, _text(err))
        self._control = control
        return control

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        with self._connecting:
            if self._control is not None:
                early.stop_master(self._control)
                shutil.rmtree(os.path.dirname(self._control), ignore_errors=True)
                self._control = None

    def rsync_rsh(self) -> str:
        """rsync's -e: an ssh that runs as a session of the shared connection."""
        return self.target.rsync_rsh(self.connect())

    def _ssh(self, command: str) -> list[str]:
        """argv for one session of the shared connection running `command`
        (given to the server user's shell, as ssh always does)."""
        return self.target.ssh_argv(self.connect()) + [command]

    # -- running ----------------------------------------------------------
    def script_argv(self, script: str) -> list[str]:
        """argv of an ssh that runs a POSIX sh script on the server, for a
        caller that drives the process itself (e.g. streams into it). A
        command's first session wraps its script and output in a SessionGate."""
        return self._ssh(f"sh -c {shlex.quote(script)}")

    def script(self, script: str, timeout: float | None = None, stdin: bytes | None = None,
               on_output: Callable[[bytes], None] | None = None) -> CommandResult:
        """Run a POSIX sh script on the server (one session of the shared
        connection); `on_output` as in run_process. ShellNoise if the
        server's login shell printed to stdout before it."""
        gate = SessionGate(on_output)
        res = run_process(self.script_argv(gate.script(script)), timeout, True, stdin,
                          gate.feed if on_output else None)
        if on_output is None:
            gate.feed(res.stdout.encode("utf-8", "surrogateescape"))
        gate.finish()
        self.check_session(res.exit_code, res.stderr)
        gate.check(self)
        if on_output is None:
            res.stdout = gate.output()
        return res

    def check_session(self, exit_code: int | None, stderr: str) -> None:
        """ConnectError if a session's ssh failed itself (exit 255: our
        scripts never exit so)."""
        if exit_code == 255:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
            raise ConnectError(self.alias, "connection lost: " + (lines[-1] if lines else "ssh exited with 255"))

    def shell(self, command: str, timeout: float | None = None, capture: bool = False) -> CommandResult:
        if timeout:
            command = _timeout_wrapper(command, timeout, '"${SHELL:-/bin/sh}"')
            res = self._run(command, timeout + 10, capture=capture)  # remote timeout acts first
            # coreutils timeout exits 124, or 137 when it had to SIGKILL
            res.timed_out = res.timed_out or res.exit_code in (124, 137)
            return res
        return self._run(command, None, capture=capture)

    @contextlib.contextmanager
    def lock(self, path: str, wait: bool = True, on_wait=None, then: str = "", stale_after: float = 120,
             fence: list[str] | tuple[str, ...] = ()):
        """An exclusive flock on the server, held by a process tied to this
        channel: it lets go when the channel closes or, if the network dies
        and the close never arrives, when our heartbeats stop for
        `stale_after` seconds, so a re-run is not locked out for hours.
        `then` runs once the lock is held (same round trip); the block gets
        its output. `fence`: directories our writers write into (the stage);
        when the heartbeats stop, whatever still uses them is stopped
        (fence.py) before the lock goes: a stopped or cut-off client's rsync
        receivers would otherwise write on into the next holder's stage."""
        # while queued: give up when our end closes (stdin EOF), so an
        # interrupted run leaves no waiter behind that would take the lock later
        busy = ('[ -n "$said" ] || echo BUSY; said=1; while ! flock -w 2 9; do if command -v timeout >/dev/null 2>&1; '
                'then timeout 1 head -c 1 >/dev/null; [ $? -eq 124 ] || exit 4; fi; done') if wait \
            else 'echo BUSY; exit 75'
        lock_dir = remote_path_expr(posixpath.dirname(path) or ".")
        # markers with a random token: the `then` output may hold any file name
        token = os.urandom(8).hex()
        ready, failed = f"MS-READY-{token}", f"MS-FAILED-{token}"
        owner = f"{path}.owner-{token}"  # exists only while this holder holds the lock
        then_part = f"( {then}\n) 9>&- || printf '\\n%s\\n' {failed}\n" if then else ""
        stale = stale_seconds(stale_after)
        # timeout's 124: the heartbeats stopped (the lock lapses); an end of
        # input is our own close, or our end died (its rsyncs die with it)
        lapse = (f"if [ $s = 124 ]; then ms_fence {' '.join(remote_path_expr(p) for p in fence)}; fi\n"
                 if fence else "")
        hold = (f"if command -v timeout >/dev/null 2>&1; then "
                f"while a=$(timeout {stale} head -c 1); s=$?; [ \"$a\" = k ]; do :; done\n{lapse}"
                f"else cat >/dev/null; fi\n")
        # never through a link planted at the lock's name (>> would follow it)
        lock_q = remote_path_expr(path)
        script = ((FENCE_SH if fence else "")
                  + f"mkdir -p -- {lock_dir} || exit 3\n"
                  f"if [ -L {lock_q} ] || {{ [ -e {lock_q} ] && [ ! -f {lock_q} ]; }}; then echo NOTOURS; exit 8; fi\n"
                  f"command -v flock >/dev/null 2>&1 || {{ echo NOFLOCK; exit 5; }}\n"
                  # a holder removes the lock file as it lets go: a waiter
                  # that then holds a file no longer there locks the new one
                  f"said=; while :; do exec 9>>{lock_q} || exit 3\n"
                  f"  if ! flock -n 9; then {busy}; fi\n"
                  f"  if [ {lock_q} -ef /dev/fd/9 ]; then break; fi; exec 9>&-\n"
                  f"done\n"
                  f"owner={remote_path_expr(owner)}; lockf={lock_q}\n"
                  f"trap 'rm -f -- \"$owner\" \"$lockf\"' EXIT; trap 'exit 1' HUP INT TERM PIPE\n"
                  f": > \"$owner\"\necho LOCKED\n{then_part}printf '\\n%s\\n' {ready}\n{hold}")
        proc = subprocess.Popen(self.script_argv(script), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        err_chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
        reader.start()

        def failed_exit() -> str:
            code = proc.wait()
            reader.join(5)
            err = _text(b"".join(err_chunks)).strip()
            return f"exit {code}" + (f": {err.splitlines()[-1]}" if err else "")

        locked = False
        try:
            out = proc.stdout
            while True:
                raw = out.readline()
                if not raw:
                    raise RemoteError(self.alias, f"cannot take the lock {path} ({failed_exit()})")
                line = raw.decode("utf-8", "replace").strip()
                if line == "LOCKED":
                    locked = True
                    break
                if line == "BUSY" and wait:
                    if on_wait:
                        on_wait()
                    continue
                if line == "BUSY":
                    raise LockBusy(self.alias, path)
                if line == "NOTOURS":
                    raise not_ours(self.alias, path=path)
                if line == "NOFLOCK":
                    raise RemoteError(self.alias, "flock (util-linux) is missing on the server; install util-linux")
                raise RemoteError(self.alias, f"cannot take the lock {path} ({failed_exit()})")
            then_out = []
            while True:
                raw = out.readline()
                line = raw.decode("utf-8", "surrogateescape")
                if line.rstrip("\n") in (ready, failed) or not raw:
                    break
                then_out.append(line)
            if not raw or line.rstrip("\n") == failed:
                err = failed_exit() if not raw else ""
                raise RemoteError(self.alias, "preparing the destination failed: "
                                  + ("".join(then_out).strip() or err or "connection closed"))
            # drop the newline printed before the marker
            text = "".join(then_out)
            then_out = [text[:-1] if text.endswith("\n") else text]
            beating = threading.Event()
            threading.Thread(target=_heartbeat, args=(proc.stdin, beating, stale / 4), daemon=True).start()
            try:
                yield Held("".join(then_out), owner)
            finally:
                beating.set()
        finally:
            # end of input lets the holder go (a waiter in the queue gives up
            # on it too); wait a little so the lock is free when we return
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if not locked:  # interrupted while queued: nothing to wait for
                stop_process_group(proc, grace=1)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop_process_group(proc)

    def _fabric(self):
        """exec's own connection (Fabric): the user's command, streamed."""
        if self._conn is not None:
            return self._conn
        from fabric import Config as FabricConfig, Connection  # slow import: only when needed
        import paramiko

        t = self.target
        connect_kwargs = {
            "key_filename": list(t.identity_files),
            "look_for_keys": False,  # paramiko would look under $HOME on its own
            "allow_agent": not t.identities_only,
            "banner_timeout": t.connect_timeout,
            "auth_timeout": t.connect_timeout,
        }
        if t.proxy_jump:
            connect_kwargs["sock"] = paramiko.ProxyCommand(shlex.join(t.proxy_command()))
        fab_config = FabricConfig(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
        conn = Connection(host=t.hostname, user=t.user, port=t.port, config=fab_config,
                          connect_timeout=t.connect_timeout, connect_kwargs=connect_kwargs)
        client = conn.client
        for g in t.files.global_known_hosts:
            client.load_system_host_keys(str(g))
        if t.files.known_hosts.is_file():
            client.load_host_keys(str(t.files.known_hosts))
        client.set_missing_host_key_policy(
            _AcceptNew(t.files.known_hosts) if t.strict == "accept-new" else _Refuse(t))
        try:
            conn.open()
        except Exception as exc:  # translated into one line below
            conn.close()
            raise _connect_error(t, exc) from exc
        conn.transport.set_keepalive(15)  # keeps NAT/firewall state alive during a long command
        self._conn = conn
        return conn

    def _run(self, command: str, timeout, capture: bool, stdin: bytes | None = None) -> CommandResult:
        from invoke.exceptions import CommandTimedOut
        import io

        conn = self._fabric()
        start = time.monotonic()
        kwargs = dict(warn=True, hide=capture, timeout=timeout,
                      in_stream=io.StringIO(stdin.decode("utf-8", "surrogateescape")) if stdin else False)
        if not capture:
            kwargs.update(out_stream=sys.stdout, err_stream=sys.stderr)
        try:
            res = conn.run(command, **kwargs)
        except CommandTimedOut as exc:
            r = exc.result
            return CommandResult(124, r.stdout or "", r.stderr or "", time.monotonic() - start, timed_out=True)
        except (OSError, EOFError) as exc:
            self.close()
            raise ConnectError(self.alias, f"connection lost: {exc}") from exc
        code = res.exited if res.exited is not None else 255
        return CommandResult(code, res.stdout or "", res.stderr or "", time.monotonic() - start)


def _heartbeat(pipe, stop: threading.Event, every: float) -> None:
    """Tell the lock holder on the server that we are still here."""
    while not stop.wait(every):
        try:
            pipe.write(b"k")
            pipe.flush()
        except (OSError, ValueError):  # a dead session: the server side will let go by itself
            return


# One wording for each connection failure, whichever SSH side met it.
def _msg_unknown_key(t: SshTarget) -> str:
    port = "" if t.port == 22 else f"-p {t.port} "
    return (f"host key for {t.known_hosts_name} is not in {t.files.known_hosts}; refusing to connect. "
            f"Check the fingerprint and add it (ssh-keyscan {port}{t.hostname} >> {t.files.known_hosts}), "
            f"connect once with 'ssh {t.host}', or set strict_host_key_checking: accept-new for this server")


def _msg_changed_key(t: SshTarget) -> str:
    return (f"the host key of {t.known_hosts_name} has CHANGED since it was recorded in {t.files.known_hosts}; "
            "refusing to connect (possible man-in-the-middle). If the server was reinstalled, remove the old key "
            f"with: ssh-keygen -R '{t.known_hosts_name}' -f {t.files.known_hosts}")


def _where(t: SshTarget) -> str:
    return f"{t.user}@{t.hostname}:{t.port}"


def _msg_auth(t: SshTarget) -> str:
    keys = ", ".join(t.identity_files) or "no key files (agent only)"
    return (f"authentication failed for {_where(t)} with {keys}; "
            "check ssh_key/user in the config, or that the key is in the server's authorized_keys")


def _msg_resolve(t: SshTarget) -> str:
    return f"cannot resolve host name '{t.hostname}'; check host in the config or ~/.ssh/config"


def _msg_timeout(t: SshTarget) -> str:
    return f"timed out connecting to {_where(t)} after {t.connect_timeout}s; is the server up and the port open?"


def _msg_refused(t: SshTarget) -> str:
    return f"cannot connect to {_where(t)}: connection refused; is sshd running on that port?"


def ssh_error(t: SshTarget, stderr: str) -> ModelSyncError:
    """OpenSSH's failure to connect (its stderr), as one line."""
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "has changed and you have requested" in stderr:
        return HostKeyError(t.alias, _msg_changed_key(t))
    if "Host key verification failed" in stderr:
        return HostKeyError(t.alias, _msg_unknown_key(t))
    if "Permission denied" in stderr:
        return ConnectError(t.alias, _msg_auth(t))
    if "Could not resolve hostname" in stderr:
        return ConnectError(t.alias, _msg_resolve(t))
    if "timed out" in stderr:
        return ConnectError(t.alias, _msg_timeout(t))
    if "Connection refused" in stderr:
        return ConnectError(t.alias, _msg_refused(t))
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Warning: Permanently")]
    return ConnectError(t.alias, f"cannot connect to {_where(t)}: {lines[-1] if lines else 'ssh failed'}")


class _Refuse:
    """Unknown host key with StrictHostKeyChecking=yes: refuse, and say how to fix it."""

    def __init__(self, target: SshTarget):
        self.target = target

    def missing_host_key(self, client, hostname, key):
        raise HostKeyError(self.target.alias, _msg_unknown_key(self.target))


class _AcceptNew:
    """StrictHostKeyChecking=accept-new: trust and record a first-seen key.
    A changed key still fails (paramiko raises BadHostKeyException)."""

    def __init__(self, known_hosts: Path):
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.known_hosts, "a", encoding="utf-8") as fh:
            fh.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _connect_error(t: SshTarget, exc: BaseException) -> Exception:
    """paramiko's failure to connect (exec), as one line."""
    import paramiko

    if isinstance(exc, HostKeyError):
        return exc
    if isinstance(exc, paramiko.BadHostKeyException):
        return HostKeyError(t.alias, _msg_changed_key(t))
    if isinstance(exc, paramiko.AuthenticationException):
        return ConnectError(t.alias, _msg_auth(t))
    if isinstance(exc, socket.gaierror):
        return ConnectError(t.alias, _msg_resolve(t))
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return ConnectError(t.alias, _msg_timeout(t))
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return ConnectError(t.alias, _msg_refused(t))
    if isinstance(exc, (paramiko.SSHException, OSError, EOFError)):
        return ConnectError(t.alias, f"cannot connect to {_where(t)}: {exc or type(exc).__name__}")
    return exc


def open_host(alias: str, config: Config) -> LocalHost | RemoteHost:
    """The host for an alias; a remote one connects lazily on first use (or
    is already connecting, after warm_up)."""
    server = config.server(alias)
    if server.is_local:
        return LocalHost(server)
    host = _warming.pop(alias, None)
    if host is not None and host.server == server:
        return host
    if host is not None:
        host.close()
    return RemoteHost(server, resolve(server, config), config.path)


# Hosts whose connection started before the command needed them (warm_up).
_warming: dict[str, RemoteHost] = {}


def warm_up(alias: str, config: Config) -> None:
    """Start connecting to a server in the background, so the handshake runs
    while the rest of the command loads and lists the local side. The next
    open_host(alias) takes it over; a failure is reported there, as if it
    happened then. Never raises."""
    if alias in _warming:
        return
    try:
        server = config.server(alias)
        if server.is_local:
            return
        host = RemoteHost(server, resolve(server, config), config.path)
    except ModelSyncError:
        return  # the command itself will say what is wrong
    _warming[alias] = host
    if len(_warming) == 1:
        import atexit

        atexit.register(_close_unclaimed)
    threading.Thread(target=host._connect_in_background, daemon=True).start()


def _close_unclaimed() -> None:
    """Connections started for a command that ended before using them."""
    while _warming:
        _, host = _warming.popitem()
        host.close()


