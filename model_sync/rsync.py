"""Building rsync's argv (pure) and running it with progress.

Output parsing relies on rsync escaping unprintable bytes in names as
`\\#ooo`, so a file name can never fake a line of its own."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .errors import ConnectError, ModelSyncError, RemoteError, UsageError
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


# rsync's --bwlimit RATE, read as rsync reads it: a number (a fraction too),
# then K, M, G, T or P (powers of 1024; "KiB" alike), "KB" and so on (powers
# of 1000), or b (bytes); a bare number is KiB; "+1"/"-1" offset by a byte.
_RATE = re.compile(r"(\d*\.?\d*)(?:([bkmgtp])(b|ib)?)?([+-]1)?", re.I)


def bwlimit_kib(rate: str) -> int:
    """The whole-transfer limit RATE in KiB/s, as rsync rounds it (0: no
    limit); UsageError naming the value when rsync would refuse it."""
    m = _RATE.fullmatch(rate.strip())
    if not m or not any(c.isdigit() for c in m.group(1)):
        raise UsageError(f"--bwlimit {rate[:40]!r} is not a rate; give bytes per second in rsync's syntax, e.g. "
                         "50M (MiB/s), 500K (KiB/s), 50MB (MB/s), or 0 for no limit")
    number, unit, kind, offset = m.groups()
    size = int(float(number) * (1000 if (kind or "").lower() == "b" else 1024) ** "bkmgtp".index(
        (unit or "k").lower())) + int(offset or 0)
    if 0 < size < 512:
        raise UsageError(f"--bwlimit {rate[:40]!r} is below rsync's least limit (512 bytes/s); "
                         "give at least 1K, or 0 for no limit")
    return (size + 512) // 1024


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
                                start_new_session=True, env=dict(os.environ, LC_ALL="C"))
    except FileNotFoundError:
        raise ModelSyncError("rsync is not installed here; install it (apt-get install rsync)") from None
    run = RsyncRun(argv=argv, exit_code=-1)
    err_chunks: list[bytes] = []
    t_err = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    t_err.start()
    if cancel is not None:
        threading.Thread(target=_watch_cancel, args=(proc, cancel), daemon=True).start()
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
        proc.wait()
    except BaseException:
        stop_process_group(proc, grace=10)  # rsync moves its partial file aside on TERM
        raise
    t_err.join(timeout=5)
    run.exit_code = proc.returncode
    run.stderr = b"".join(err_chunks).decode("utf-8", "replace")
    run.seconds = time.monotonic() - start
    return run


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


def _watch_cancel(proc: subprocess.Popen, cancel: threading.Event):
    while proc.poll() is None:
        if cancel.wait(0.2):
            stop_process_group(proc, grace=10)
            return


def check_result(run: RsyncRun, alias: str, io_timeout: int = IO_TIMEOUT) -> None:
    """Turn rsync's failure into one line that says what to do."""
    if run.exit_code == 0:
        return
    last = [ln for ln in run.stderr.strip().splitlines() if ln.strip()]
    detail = last[-1] if last else f"rsync exited with {run.exit_code}"
    if run.exit_code == 255 or "Host key verification failed" in run.stderr:
        raise ConnectError(alias, f"ssh for rsync failed: {detail}")
    if run.exit_code in (20,):
        raise ModelSyncError(f"{alias}: transfer interrupted; run the same command again to resume")
    if run.exit_code == 30:
        raise ConnectError(alias, f"transfer stalled for {io_timeout}s and was stopped; run the command again to resume")
    if "No space left" in run.stderr:
        raise RemoteError(alias, f"out of disk space during transfer: {detail}", run.exit_code, run.stderr)
    raise RemoteError(alias, f"rsync failed (exit {run.exit_code}): {detail}", run.exit_code, run.stderr)
