"""Building rsync's argv (pure) and running it with progress.

Output parsing relies on rsync escaping unprintable bytes in names as
`\\#ooo`, so a file name can never fake a line of its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConnectError, ModelSyncError, RemoteError, TransferStalled, UsageError
from .hosts import stop_process_group
from .manifest import MANIFEST_NAME, PARTIAL_DIR

# Weights do not compress; these skip -z even when compression is on.
INCOMPRESSIBLE = ("safetensors", "bin", "pt", "pth", "ckpt", "gguf", "onnx", "plan", "engine", "h5", "npz",
                  "tflite", "pb", "msgpack", "zip", "gz", "zst", "xz", "bz2", "7z", "tar")
IO_TIMEOUT = 120  # default seconds without any I/O before rsync gives up on a hung peer


@dataclass(frozen=True)
class RsyncOptions:
    compress: bool = False
    delete: bool = False
    dry_run: bool = False
    excludes: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    bwlimit: str | None = None
    io_timeout: int = IO_TIMEOUT
    exact_times: bool = True  # compare mtimes to the ns (see build_rsync_argv)


# rsync's RATE: a number (a '.' fraction allowed), then an optional unit (b, K,
# M, G, T, P: powers of 1024; KB, MB...: of 1000; KiB...: of 1024; none: K),
# then an optional +1 or -1 (bytes); 0 means no limit, else 512 bytes/s or more
_RATE = re.compile(r"(\d+\.?\d*|\.\d+)(?:([bkmgtp])(b|ib)?)?([+-]1)?", re.IGNORECASE)


def bwlimit_bytes(value: str) -> int:
    """Bytes per second of rsync's --bwlimit RATE (0: no limit); a UsageError
    that says what it accepts where rsync would refuse it (checked before
    anything is contacted: rsync's own refusal would come only once the
    destination's lock is held)."""
    m = _RATE.fullmatch(value)
    if m is not None:
        number, unit, base, offset = m.groups()
        size = int(float(number) * (1000 if base and base.lower() == "b" else 1024)
                   ** "bkmgtp".index((unit or "k").lower())) + int(offset or 0)
        if size == 0 or 512 <= size < 2 ** 63:
            return size
    raise UsageError(f"--bwlimit {value[:40]!r} is not a rate rsync takes: give bytes per second as a number and a "
                     "unit, e.g. 10M, 500K or 1.5G (a bare number is KiB/s; KB, MB, GB are powers of 1000; "
                     "at least 512 bytes/s; 0 means no limit)")


def check_bwlimit(value: str) -> str:
    bwlimit_bytes(value)
    return value


def bwlimit_kib(rate: str) -> int:
    """RATE in KiB/s, as rsync rounds it (0: no limit)."""
    return (bwlimit_bytes(rate) + 512) // 1024


def stream_bwlimit(rate: str | None, streams: int) -> str | None:
    """--bwlimit for each of `streams` rsyncs that run at once, so that
    together they keep to RATE: an equal share in whole KiB/s (rsync's own
    unit), rounded down; at least 1 (the caller runs no more streams than
    that allows)."""
    kib = bwlimit_kib(rate) if rate else 0
    return str(max(1, kib // streams)) if kib else rate


def build_rsync_argv(source: str, dest: str, rsh: str | None, opts: RsyncOptions,
                     files_from: str | None = None) -> list[str]:
    """rsync argv copying the *contents* of directory `source` into `dest`.
    `source`/`dest` are either local paths or `host:path` (with rsh).
    `files_from`: a local file of NUL-separated paths: only those are sent."""
    argv = ["rsync", "-a", "-s",  # -s: names travel verbatim, not through the remote shell
            # a symlink out of the model (a Hugging Face snapshot's, into ../../blobs) goes as the
            # file it points to; one inside stays a link (manifest.follow_links lists the same)
            "--copy-unsafe-links",
            "--partial-dir=" + PARTIAL_DIR,  # resume: partial files survive, outside final names
            "--out-format=%i|%l|%n%L", "--info=progress2", "--outbuf=L",
            f"--timeout={opts.io_timeout}"]
    if rsh:
        argv += ["-e", rsh]
    if opts.exact_times:
        # rsync sets mtimes to the ns (protocol 31+) but by default compares
        # whole seconds: a same-size file of the same second would be skipped
        # although our quick check (and the plan) saw it differ
        argv.append("--modify-window=-1")
    if opts.compress:
        argv += ["-z", "--skip-compress=" + "/".join(INCOMPRESSIBLE)]
    if opts.delete:
        argv += ["--delete-during"]
    if opts.dry_run:
        argv.append("--dry-run")
    if opts.bwlimit:
        argv.append("--bwlimit=" + opts.bwlimit)
    if files_from:
        argv += ["--from0", "--files-from=" + files_from]
    for pat in opts.includes:
        argv.append("--include=" + pat)
    for pat in opts.excludes:
        argv.append("--exclude=" + pat)
    # our manifest is written after verification; never copied over or deleted by rsync
    argv.append("--filter=P /" + MANIFEST_NAME)
    argv.append("--exclude=/" + MANIFEST_NAME)
    argv += ["--", _dir(source), _dir(dest)]
    return argv


def _dir(spec: str) -> str:
    return spec if spec.endswith("/") else spec + "/"


# -- output parsing -------------------------------------------------------------
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+)\s+(\d+:\d+:\d+)")
_ESCAPE = re.compile(r"\\#([0-7]{3})")


def unescape_name(name: str) -> str:
    raw = _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), name)
    # rsync escapes bytes; rebuild them and decode as listings do (bytes that
    # are not UTF-8 kept as surrogates), so the names match
    try:
        return raw.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return raw


@dataclass
class Item:
    flags: str  # rsync's itemize string, e.g. '<f+++++++++'
    size: int
    path: str

    @property
    def is_file_transfer(self) -> bool:
        return self.flags[:2] in ("<f", ">f")

    @property
    def is_delete(self) -> bool:
        return self.flags.startswith("*deleting")


def parse_item(line: str) -> Item | None:
    if line.startswith("*deleting"):
        rest = line[len("*deleting"):].lstrip()
        parts = rest.split("|", 2)
        name = parts[2] if len(parts) == 3 else rest
        return Item("*deleting", 0, unescape_name(name))
    parts = line.split("|", 2)
    if len(parts) != 3 or len(parts[0]) < 9:
        return None
    flags, size, name = parts
    if " -> " in name and flags[1] == "L":
        name = name.split(" -> ", 1)[0]
    try:
        n = int(size)
    except ValueError:
        n = 0
    return Item(flags.strip(), n, unescape_name(name))


@dataclass
class RsyncRun:
    argv: list[str]
    exit_code: int
    items: list[Item] = field(default_factory=list)
    stderr: str = ""
    seconds: float = 0.0
    stalled: bool = False  # stopped here: no I/O for io_timeout seconds (see _watch_stall)

    @property
    def sent_files(self) -> list[Item]:
        return [i for i in self.items if i.is_file_transfer]

    @property
    def deleted(self) -> list[str]:
        return [i.path for i in self.items if i.is_delete]


ProgressFn = Callable[[int], None]  # bytes done so far in this run


def run_rsync(argv: list[str], progress: ProgressFn | None = None, on_item: Callable[[Item], None] | None = None,
              cancel: threading.Event | None = None) -> RsyncRun:
    """Run rsync; report progress and items as they come. On cancel or
    interruption rsync is stopped with SIGTERM, which keeps partial files
    (in the partial dir) for the next run to resume from."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=dict(os.environ, LC_ALL="C"),
                                preexec_fn=_die_with_us())
    except FileNotFoundError:
        raise ModelSyncError("rsync is not installed here; install it (apt-get install rsync)") from None
    run = RsyncRun(argv=argv, exit_code=-1)
    err_chunks: list[bytes] = []  # as they come: the end of the pipe may not come (see below)
    t_err = threading.Thread(target=lambda: err_chunks.extend(iter(proc.stderr.read1, b"")), daemon=True)
    t_err.start()
    if cancel is not None:
        threading.Thread(target=_watch_cancel, args=(proc, cancel), daemon=True).start()
    io_timeout = _io_timeout(argv)
    if io_timeout:
        threading.Thread(target=_watch_stall, args=(proc, io_timeout, run), daemon=True).start()
    try:
        buf = b""
        while True:
            chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(65536)
            if not chunk:
                break
            buf += chunk
            *pieces, buf = re.split(rb"[\r\n]", buf)
            for piece in pieces:
                _handle(piece.decode("latin-1"), run, progress, on_item)
        if buf:
            _handle(buf.decode("latin-1"), run, progress, on_item)
        _sweep_group(proc)
        proc.wait()
    except BaseException:
        stop_process_group(proc, grace=10)  # rsync moves its partial file aside on TERM
        raise
    # its ssh handed rsync's stderr to the shared connection, which keeps it
    # open while the server's end of the session lives (a stalled peer): do
    # not wait for the pipe's end after a failure, only for what rsync wrote
    t_err.join(timeout=5 if proc.returncode == 0 else 1)
    run.exit_code = proc.returncode
    run.stderr = b"".join(err_chunks).decode("utf-8", "replace")
    run.seconds = time.monotonic() - start
    return run


def _die_with_us() -> Callable[[], None] | None:
    """A preexec_fn that makes rsync die (SIGKILL) with model-sync: a `kill -9`
    of model-sync must not leave streams writing into a stage whose lock it
    lost (the server-side fence, fence.py, stops their receivers when another
    push takes over; this stops the senders too).

    Why PR_SET_PDEATHSIG and not model-sync's process group: `kill -9 PID`
    reaches only that process, whatever the group; and rsync keeps its own
    session on purpose (Ctrl-C reaches us, and we stop rsync with TERM so that
    it keeps its partial file). PDEATHSIG fires when the *thread* that forked
    ends, not the process: every rsync is started by a thread that stays in
    run_rsync until that rsync has ended (_send_all's pool workers included),
    so it fires only when model-sync dies, or after stop_process_group gave up
    on a stuck rsync (a kill either way). Linux only; elsewhere nothing (the
    fence still holds on a Linux server)."""
    global _prctl
    if _prctl is None:  # (the pool's threads may get here at once: one assignment)
        found = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                found = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                pass
        _prctl = found
    if not _prctl:
        return None
    prctl, parent = _prctl, os.getpid()

    def die_with_parent() -> None:  # in the child, between fork and exec: no locks, no imports
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # we died before it was set
            os.kill(os.getpid(), signal.SIGKILL)

    return die_with_parent


_prctl = None  # libc's prctl once looked up; False where there is none


def _handle(line: str, run: RsyncRun, progress, on_item):
    if not line.strip():
        return
    m = _PROGRESS.match(line)
    if m:
        if progress:
            progress(int(m.group(1).replace(",", "")))
        return
    item = parse_item(line)
    if item:
        run.items.append(item)
        if on_item:
            on_item(item)


def _sweep_group(proc: subprocess.Popen) -> None:
    """Once rsync has exited, stop what it leaves in its process group: after
    a timeout it does not wait for its ssh, which lives on while the stalled
    peer keeps the session open, holding rsync's stderr (our reader would
    wait for it). The group's id cannot have gone to another process: rsync
    is waited for without being reaped, and if a watcher reaped it, a group
    with members left keeps its id."""
    if hasattr(os, "waitid"):
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left


def _io_timeout(argv: list[str]) -> int:
    """The --timeout rsync was given (0: none)."""
    for arg in argv:
        if arg.startswith("--timeout="):
            return int(arg.partition("=")[2])
        if arg == "--":
            break
    return 0


def _io_bytes(pid: int, depth: int = 0) -> int | None:
    """Bytes read and written so far by `pid` and its children (Linux's
    /proc); None where they cannot be read."""
    total = 0
    try:
        with open(f"/proc/{pid}/io", "rb") as fh:
            for line in fh:
                if line.startswith((b"rchar:", b"wchar:")):
                    total += int(line.split()[1])
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            children = fh.read().split()
    except (OSError, ValueError):
        return None
    for child in children if depth < 3 else ():
        total += _io_bytes(int(child), depth + 1) or 0  # (one that just ended counts nothing)
    return total


def _watch_stall(proc: subprocess.Popen, io_timeout: int, run: RsyncRun) -> None:
    """Stop rsync when it has neither read nor written anything for
    `io_timeout` seconds. rsync's own --timeout (kept: it also ends the
    server's rsync) looks only every io_timeout/2 seconds (up to a minute)
    and then gives up at the next look: up to 1.5 x io_timeout. Whatever
    rsync waits for, it keeps reading and writing: its peer sends keepalives
    every io_timeout/2 seconds while busy, so silence means a stall."""
    last, since = None, time.monotonic()
    while proc.poll() is None:
        time.sleep(0.25)
        now = _io_bytes(proc.pid)
        if now is None:
            return  # no /proc here: rsync's own --timeout acts
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= io_timeout:
            run.stalled = True
            stop_process_group(proc, grace=3)
            return


def _watch_cancel(proc: subprocess.Popen, cancel: threading.Event):
    while proc.poll() is None:
        if cancel.wait(0.2):
            stop_process_group(proc, grace=10)
            return


def check_result(run: RsyncRun, alias: str, io_timeout: int = IO_TIMEOUT) -> None:
    """Turn rsync's failure into one line that says what to do."""
    if run.exit_code == 0:
        return
    if run.stalled or run.exit_code == 30:  # 30: rsync's own --timeout
        raise TransferStalled(alias, io_timeout)
    last = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    detail = last[-1] if last else f"rsync exited with {run.exit_code}"
    if run.exit_code == 255 or "Host key verification failed" in run.stderr:
        raise ConnectError(alias, f"ssh for rsync failed: {detail}")
    if run.exit_code in (20,):
        raise ModelSyncError(f"{alias}: transfer interrupted; run the same command again to resume")
    if run.exit_code == 24:
        raise RemoteError(alias, _vanished(run), run.exit_code, run.stderr)
    if "No space left" in run.stderr:
        raise RemoteError(alias, f"out of disk space during transfer: {detail}", run.exit_code, run.stderr)
    raise RemoteError(alias, f"rsync failed (exit {run.exit_code}): {detail}", run.exit_code, run.stderr)


def _vanished(run: RsyncRun) -> str:
    """rsync's exit 24 in words: files of the source went while it read them."""
    gone = [ln.partition("file has vanished: ")[2].strip() for ln in run.stderr.splitlines()
            if "file has vanished: " in ln]
    which = f"{len(gone)} file(s) vanished, e.g. {gone[0]}" if gone else "files vanished"
    source = run.argv[-2] if "--" in run.argv else ""
    if "-e" in run.argv and ":" in source.partition("/")[0]:  # rsync's rule: a colon before any slash is host:path
        return (f"the model changed on the server while it was read ({which}): a push or prune there may have "
                "replaced it; nothing was published here. Run the same command again")
    return (f"the source changed while it was read ({which}); nothing was published. "
            "Run the same command again once it stays put")
