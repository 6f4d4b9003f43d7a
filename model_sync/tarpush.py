"""A new model directory of many small files, pushed as one tar stream.

rsync pays for every file: a temporary name and a rename on the server, a
turn of its protocol. For thousands of small files that the server does not
have yet (nothing to compare, nothing to resume) one tar stream moves them in
about half its time. It all happens in the inspection's own ssh session
(every session costs a shell start on the server): the server finds the
model absent, takes the destination lock and makes the staging directory,
and offers the stream; the sender answers with it. The files land in the
stage, the server checks every one (`xxhsum -c`, two at once) against the
xxh3-128 hashes the sender took of the stream as it went (the manifest
travels at the end of the stream), and only then is the stage renamed into
place. A stream that is mostly tar's own headers and padding (tiny files) is
gzipped on the way. Anything else takes the rsync path: filters, an existing
destination or staging copy, a lock someone else holds, big files (parallel
rsync streams win there), names a manifest line cannot hold, no GNU tar on
either end, no xxhsum 0.8 on the server.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
import threading
import time

from . import destination
from .destination import Names
from .early import temp_prefix
from .errors import ModelSyncError, RemoteError, TransferCancelled, TransferStalled, VerificationError
from .hosts import SessionGate, pump, stale_seconds, stop_process_group
from .manifest import MANIFEST_NAME, local_version, manifest_text

MIN_FILES = 500  # below this, rsync's per-file cost is small
MAX_MEAN_SIZE = 1 << 20  # larger files: parallel rsync streams do better over latency
MAX_BYTES = 2 << 30  # one stream, no resume inside it: keep it to what a retry can afford
READ_AHEAD = 64 << 20  # of the stream, read and hashed before the server takes it (bounds the memory)

# Appended to the inspection (probe.inspect_script: $target and $stage are
# set): when the model is new here and nobody holds its lock, take the lock
# (an flock, as hosts.lock takes it), make the stage, and offer the stream;
# then wait for the answer ("T" and the stream, or nothing). One session for
# the inspection, the lock and the stream: each session costs a shell start on
# the server (0.09 s here), which rsync pays once.
_OFFER = r"""
lock={lock}; owner={owner}
ms_absent() {{ [ ! -e "$target" ] && [ ! -L "$target" ] && [ ! -e "$stage" ] && [ ! -L "$stage" ]; }}
ms_offer() {{
  for p in "$lock" "$versions" "$link"; do [ ! -L "$p" ] || return 1; done  # (the rsync path refuses them)
  ms_absent && command -v flock >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1 || return 1
  {{ read -r _ < /proc/$$/io; }} 2>/dev/null || return 1  # the watchdog below reads progress there
  true 2>/dev/null >>"$lock" || return 1  # (a missing parent: the rsync path makes it)
  exec 9>>"$lock"
  if flock -n 9 && [ "$lock" -ef /dev/fd/9 ] && ms_absent && mkdir -- "$stage" 2>/dev/null; then
    if true 2>/dev/null >"$owner"; then return 0; fi
    rmdir -- "$stage"
  fi
  exec 9>&-
  return 1
}}
if ms_offer; then
  trap 'rm -f -- "$owner" "$owner.0" "$owner.1" "$owner.out" "$lock"' EXIT; trap 'exit 1' HUP INT TERM PIPE
  if command -v gzip >/dev/null 2>&1; then z=gzip; else z=plain; fi
  printf '%s %s\n' {offered} $z
  # the answer: T, a tar stream; Z, gzipped (tar -z runs gzip -d); nothing, no.
  # While the sender still works it out, a "k" every few seconds.
  while :; do
    a=$(timeout {stale} head -c 1); waited=$?
    case $a in
      k) ;;
      T) z=; break ;;
      Z) z=-z; break ;;
      *) rmdir -- "$stage"; if [ $waited = 124 ]; then exit 10; fi; exit 0 ;;
    esac
  done
  dest=$target
{receive}fi
"""

# The stream goes into the stage; every file is checked against the manifest
# near its end; then the stage becomes the destination (still absent: we hold
# the lock, and it was absent when we took it). The very end is a small file
# named with this run's token (it holds half the manifest's line count): a
# stream cut short (the sender failed or was stopped) never has it, and is
# not published even without verification.
# The lock lapses when the stream stops coming for {stale} seconds (a dead
# network, a stopped sender: tar reads nothing): a watchdog then stops tar, so
# that a later run may resume this stage without us still writing into it.
# While tar reads, the watchdog prints a "." now and then: the sender's
# io_timeout counts from the last one, so a stall on this side is seen there
# even when the whole rest of the stream sits in buffers on the way.
_RECEIVE = r"""
unset TAR_OPTIONS
end=./{end}
cd -- "$stage" || exit 3
exec 3<&0
tar -x $z -b 256 -i -p -f - <&3 3<&- 9>&- & t=$!
exec 3<&-
(trap '' PIPE; last=; n=0
 while kill -0 $t 2>/dev/null; do
   if [ ! -e "$owner" ]; then kill -9 $t; exit 0; fi
   r=; while read -r k v; do if [ "$k" = rchar: ]; then r=$v; fi; done < /proc/$t/io
   if [ "$r" = "$last" ]; then n=$((n + 1)); else last=$r; n=0; printf .; fi
   if [ $n -ge {ticks} ]; then rm -f -- "$owner"; kill -9 $t; exit 0; fi
   sleep 0.2 2>/dev/null || sleep 1
 done) </dev/null 2>/dev/null 9>&- & w=$!
wait $t; rc=$?
kill $w 2>/dev/null; wait $w  # (no "." after this)
if [ ! -e "$owner" ]; then echo "the lock lapsed" >&2; exit 9; fi
if [ $rc != 0 ]; then echo "tar could not unpack the stream" >&2; exit 4; fi
if [ ! -f "$end" ]; then echo "the stream was cut short" >&2; exit 4; fi
half=; read -r half < "$end"
if [ {verify} = 1 ]; then
  if [ ! -f ./{manifest} ]; then echo "the stream ended before its manifest" >&2; exit 4; fi
  echo @@CHECK
  case $half in ''|*[!0-9]*) half=0;; esac
  if [ "$half" -gt 0 ]; then  # two checkers, a half of the manifest each
    # (next to the owner file: the stage's own directory may be read-only now)
    head -n "$half" ./{manifest} > "$owner.0" && tail -n "+$((half + 1))" ./{manifest} > "$owner.1" || exit 3
    xxhsum -c --quiet -- "$owner.0" > "$owner.out" 2>&1 & c=$!
    xxhsum -c --quiet -- "$owner.1"; ok=$?
    wait $c || ok=1
    if [ -s "$owner.out" ]; then cat -- "$owner.out"; fi
  else
    xxhsum -c --quiet -- ./{manifest}; ok=$?
  fi
  if [ $ok != 0 ]; then cd / && rm -rf -- "$stage"; exit 6; fi
fi
rm -f -- "$end" || exit 3
if [ ! -e "$owner" ]; then echo "the lock lapsed" >&2; exit 9; fi
if [ -e "$dest" ] || [ -L "$dest" ]; then echo "the destination appeared meanwhile" >&2; exit 7; fi
cd / && ms_publish
echo PUBLISHED
"""


def local_gnu_tar() -> bool:
    """GNU tar here (we use its --null, --verbatim-files-from and -i)."""
    return "GNU tar" in local_version("tar")


def may_offer(opts) -> bool:
    """Whether a push with these options could go as a tar stream: then its
    inspection asks the server for an offer."""
    return not (opts.excludes or opts.includes or opts.dry_run or opts.bwlimit or opts.compress)


def suits(tree: dict, opts) -> bool:
    """Whether this local model could go as one tar stream (see the module's
    docstring); the server has its say in accepts()."""
    if not may_offer(opts):
        return False  # rsync's filters, --bwlimit and --compress have no equivalent here
    sizes = [f.size for f in tree.values() if f.kind == "f"]
    total = sum(sizes)
    if len(sizes) < MIN_FILES or total > MAX_BYTES or total > MAX_MEAN_SIZE * len(sizes):
        return False
    if any("\n" in p or "\r" in p or "\\" in p for p in tree):  # a manifest line cannot carry these
        return False
    return local_gnu_tar()


def accepts(facts, opts, method: str) -> bool:
    """Whether the server can take and check the stream."""
    return facts.gnu_tar and (not opts.verify or (method == "xxhsum" and facts.xxhsum_checks))


def closing_archive(end: str, hashes: dict[str, str] | None) -> bytes:
    """What follows tar's own stream: the manifest (when verifying), then the
    end marker, as a second archive (the server's tar -i reads past the
    first one's end). The end marker holds half the manifest's line count:
    the server checks the two halves at once."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        members = [(MANIFEST_NAME, manifest_text(hashes).encode("utf-8", "surrogateescape"))] \
            if hashes is not None else []
        for name, data in members + [(end, f"{len(hashes or ()) // 2}\n".encode())]:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _stream_size(tree: dict, dirs: dict) -> int:
    """About how long tar's stream is (a header per entry, data in 512-byte
    blocks), to turn bytes sent into file bytes for the progress bar."""
    return 512 * (2 + len(dirs) + sum(1 + (f.size + 511) // 512 if f.kind == "f" else 1 for f in tree.values()))


def inspect_offering(host, path: str, opts):
    """probe.inspect, in a session that stays open if the server offers a
    stream (the model is new there and its lock is now ours). Returns
    (facts, state, an Offer or None); an Offer must be closed."""
    from .probe import inspect_script, inspection, state_reader, target_expr

    verify = opts.verify
    token = os.urandom(8).hex()
    stale = stale_seconds(opts.io_timeout)
    names = Names(path)
    lock = names.lock
    offered, end = f"@@OFFER-{token}", f".model-sync-end-{token}"
    # (2 s after the sender's own io_timeout: a stall of this side's tar is
    # reported there as a stall, not raced by the lapse)
    receive = _RECEIVE.format(end=end, ticks=(stale + 2) * 5, verify=1 if verify else 0,
                              manifest=MANIFEST_NAME)
    # the destination's variables and its publish step (destination.py), then the offer
    script = (inspect_script(host, path, use_stage=True) + destination.shell_vars(names, target_expr)
              # (a stream carries MIN_FILES or more: one syncfs flushes them)
              + destination.flush_settings(opts.fsync, MIN_FILES, opts.grace_minutes)
              + destination.FUNCTIONS + destination.PUBLISH_FN) + _OFFER.format(
        lock=target_expr(lock), owner=target_expr(f"{lock}.owner-{token}"), offered=offered,
        stale=stale, receive=receive)
    reader = state_reader()  # parses while the output arrives
    gate = SessionGate(reader.feed)  # a login shell's own output (hosts.ShellNoise)
    proc = subprocess.Popen(host.script_argv(gate.script(script)), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)

    def offer_line() -> str | None:
        """The offer's words after the marker (once the whole line came)."""
        _, mark, rest = reader.tail.partition(offered + " ")
        return rest.partition("\n")[0] if mark and "\n" in rest else None

    try:
        err = pump(proc, 600, gate.feed, until=lambda: offer_line() is not None)
        line = offer_line()
        if line is not None:
            offer = Offer(host, proc, err, end, verify, stale, gzip=line == "gzip")
            if gate.noise:  # declined: the server removes the stage and lets the lock go
                offer.close()
                gate.check(host)
            return (*inspection(host, path, reader, 0, ""), offer)
    except subprocess.TimeoutExpired:
        err = b"the inspection timed out"
    except BaseException:
        stop_process_group(proc)
        raise
    stop_process_group(proc)  # (it has ended, unless it timed out)
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
    why = err.decode("utf-8", "replace")
    gate.finish()
    host.check_session(proc.returncode, why)
    gate.check(host)
    return (*inspection(host, path, reader, 124 if proc.returncode is None else proc.returncode, why), None)


class Offer:
    """A server session that has inspected a new model's destination, holds
    its lock and has made its staging directory, and now waits for the
    answer: the stream (start, send, finish), or no (close)."""

    def __init__(self, host, proc: subprocess.Popen, err: bytes, end: str, verify: bool, stale: int, gzip: bool):
        self.host, self.proc, self._err = host, proc, err
        self.end, self.verify = end, verify  # the end marker's name; whether the server checks the files
        self.stale = stale  # seconds without input before the lock lapses
        self.gzip = gzip  # the server can take a gzipped stream
        self.stream: LocalStream | None = None
        self.closed = self.reading = False
        # until the answer: a "k" every stale/4 s keeps the offer open while
        # this side lists the model and plans
        self._answering = threading.Lock()
        self._answered = threading.Event()
        threading.Thread(target=self._keep_open, daemon=True).start()

    def _keep_open(self) -> None:
        while not self._answered.wait(self.stale / 4):
            with self._answering:
                if self._answered.is_set():
                    return
                try:
                    os.write(self.proc.stdin.fileno(), b"k")
                except OSError:
                    return  # the session ended: start() finds out

    def _answer(self) -> None:
        """No more keep-alives (the answer, or no answer, follows)."""
        with self._answering:
            self._answered.set()

    def close(self) -> None:
        """End the offer (again: nothing). Not started: declined (the server
        removes the empty stage and lets the lock go; waited for, so that the
        rsync path finds the lock free). Started: whatever still runs is
        stopped; a stage not published stays for the next run to resume."""
        if self.closed:
            return
        self.closed = True
        self._answer()
        if self.stream is not None:
            self.stream.stop()
            if self.proc.poll() is None:
                stop_process_group(self.proc)
        else:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                stop_process_group(self.proc)
        # (stdout and stderr stay open while send()'s readers may still be in
        # them: the master holds their other ends until the session ends)
        for f in (self.proc.stdin,) if self.reading else (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass

    def start(self, path: str, tree: dict, dirs: dict) -> bool:
        """Accept the offer: start the stream of the local model directory
        `path` (with its listing); send() then carries it. False if the offer
        had lapsed (this process was stopped longer than the lapse time): the
        server let the lock go, and the push takes the rsync path."""
        self._answer()
        if self.proc.poll() is not None:
            self.close()
            return False
        # gzip only a stream that is mostly tar's own headers and padding (many
        # tiny files): that costs less CPU than it saves; file contents,
        # weights above all, hardly compress
        size = _stream_size(tree, dirs)
        gzip = self.gzip and size - sum(f.size for f in tree.values() if f.kind == "f") > size // 2
        try:  # the answer first (a pipe takes one byte): the server starts its tar meanwhile
            os.write(self.proc.stdin.fileno(), b"Z" if gzip else b"T")
        except BrokenPipeError:
            pass  # the server went away: finish() reads why
        self.stream = LocalStream(path, tree, dirs, self.end, self.verify, gzip)
        return True

    def send(self, io_timeout: int, progress, cancel) -> None:
        """Carry the stream and its closing archive into the server's stage;
        finish() then waits while the server checks and publishes. Gives up
        after `io_timeout` seconds without progress, as rsync's --timeout does."""
        stream, ssh = self.stream, self.proc
        self._pipe, self._progress = _Pipe(ssh, self.host.alias, io_timeout, cancel), progress
        self._replies = {"out": bytearray(), "err": bytearray()}
        self._readers = [threading.Thread(target=self._read, args=(k, f), daemon=True)
                         for k, f in (("out", ssh.stdout), ("err", ssh.stderr))]
        for r in self._readers:
            r.start()
        self.reading = True
        try:
            if _relay(stream, self._pipe, progress):  # (else the server stopped reading: finish() says why)
                self._pipe.close()
        except BaseException:
            stop_process_group(ssh)
            raise
        finally:
            stream.stop()

    def _read(self, key: str, f) -> None:
        for chunk in iter(f.read1, b""):
            self._replies[key] += chunk
            if key == "out":
                self._pipe.heard(chunk)

    def finish(self) -> tuple[list[str], int]:
        """The server's verdict once it has checked every file and published
        the stage; returns (files sent, bytes)."""
        stream, alias = self.stream, self.host.alias
        try:
            code = self._pipe.wait(self._readers)
        except BaseException:
            stop_process_group(self.proc)
            raise
        replies = self._replies
        out = replies.get("out", b"").decode("utf-8", "surrogateescape")
        err = (self._err + replies.get("err", b"")).decode("utf-8", "replace").strip()
        self.host.check_session(code, err)
        if code == 6:
            bad = _failed_names(out.partition("@@CHECK\n")[2])
            raise VerificationError(f"{alias}: {len(bad) or 'some'} file(s) differ after transfer "
                                    f"({', '.join(bad[:5])}); nothing was published. Rerun to send them again; "
                                    f"if it repeats, check the disk on {alias}")
        if code == 9:
            raise ModelSyncError(f"{alias}: this run's lock on the destination lapsed (the stream stopped for "
                                 f"{self.stale}s: was the process stopped, or the network down?); nothing was "
                                 "published. Run the same command again")
        if code == destination.NOT_OURS_EXIT:
            raise destination.not_ours(alias, err)
        if code == 10:
            raise ModelSyncError(f"{alias}: the server stopped waiting for the stream (no word from this side for "
                                 f"{self.stale}s: was the process stopped?); nothing was published. "
                                 "Run the same command again")
        if code != 0 or not out.rstrip().endswith("PUBLISHED"):
            why = _first_error(err) or (f"the session ended (signal {-code})" if code < 0 else f"exit {code}")
            raise RemoteError(alias, f"receiving the stream failed: {why}; nothing was published. "
                                     "Run the same command again to resume", code, err)
        if self._progress:
            self._progress(stream.total, stream.total)
        return stream.files, stream.total


class LocalStream:
    """tar's stream of a local model directory, then the closing archive
    (the manifest if `verify`, and the end marker `end`), read, hashed and
    compressed if asked on a thread up to READ_AHEAD bytes ahead of the
    sending, so that reading the files and sending them overlap. The closing
    archive comes only if tar read every file. stop() when done or not wanted."""

    def __init__(self, path: str, tree: dict, dirs: dict, end: str, verify: bool, gzip: bool = False):
        import zlib

        self.path, self.end, self.verify = path, end, verify
        self.files = sorted(p for p, f in tree.items() if f.kind == "f")
        self.total = sum(tree[p].size for p in self.files)
        self.expected = _stream_size(tree, dirs)
        self.hashes = StreamHashes()  # also tells which files the stream really held
        # level 1: the bytes worth compressing are tar's headers and padding
        self.gzip = zlib.compressobj(1, zlib.DEFLATED, 31) if gzip else None
        self._chunks: list[tuple[bytes, int]] = []
        self._held = 0  # bytes of tar's stream read ahead, not taken yet
        self._ended = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        # "." first (the directory's own mode and time), then parents before children
        names = ["."] + ["./" + p for p in sorted(list(dirs) + list(tree))]
        self._listing = tempfile.NamedTemporaryFile(prefix=temp_prefix("names"))
        self._listing.write(b"".join(n.encode("utf-8", "surrogateescape") + b"\0" for n in names))
        self._listing.flush()
        env = {k: v for k, v in os.environ.items() if k != "TAR_OPTIONS"}  # no user options in our stream
        self.tar = subprocess.Popen(["tar", "-c", "-b", "256", "-f", "-", "--format=gnu", "--null", "--verbatim-files-from",
                                     "--no-recursion", "--hard-dereference", "-C", path, "-T", self._listing.name],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self._complaints = bytearray()  # tar's stderr, drained as it comes (a full pipe would stop tar)
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._drain, daemon=True)]
        for t in self._threads:
            t.start()

    def _drain(self) -> None:
        for line in self.tar.stderr:
            if len(self._complaints) < 1 << 16:  # the first ones say what went wrong
                self._complaints += line

    def _read(self) -> None:
        fd = self.tar.stdout.fileno()
        try:
            last = False
            while not last:
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    self.hashes.feed(chunk)
                else:  # tar is done: the closing archive, if it read everything
                    self._check()
                    chunk, last = closing_archive(self.end, self.hashes.hashes if self.verify else None), True
                raw = len(chunk)
                if self.gzip is not None:
                    chunk = self.gzip.compress(chunk) + (self.gzip.flush() if last else b"")
                with self._cond:
                    while self._held >= READ_AHEAD and not self._ended:
                        self._cond.wait()
                    if self._ended:  # stopped
                        return
                    self._chunks.append((chunk, raw))
                    self._held += raw
                    self._ended = last
                    self._cond.notify_all()
        except BaseException as e:  # handed to the sending side
            with self._cond:
                self._error, self._ended = e, True
                self._cond.notify_all()

    def take(self, timeout: float) -> list[tuple[bytes, int]] | None:
        """The parts of the stream read so far, each with how much of tar's
        stream it holds (at most 1 MiB): [] if none came within `timeout`,
        None at the end."""
        with self._cond:
            if not self._chunks and not self._ended:
                self._cond.wait(timeout)
            if self._error is not None:
                raise self._error
            if self._chunks:
                parts, self._chunks, self._held = self._chunks, [], 0
                self._cond.notify_all()
                return parts
            return None if self._ended else []

    def _check(self) -> None:
        """At the end of tar's stream: tar read everything, and every file is in it."""
        if self.tar.wait() != 0:
            self._threads[1].join(5)
            why = _first_error(self._complaints.decode("utf-8", "replace")) or f"exit {self.tar.returncode}"
            raise ModelSyncError(f"tar could not read {self.path}: {why}; nothing was published. "
                                 "Was the model changing while it was sent? Run again")
        gone = [p for p in self.files if p not in self.hashes.hashes]
        if gone:
            raise ModelSyncError(f"{len(gone)} file(s) went away while they were sent ({', '.join(gone[:5])}); "
                                 "nothing was published. Run again once the model stays put")

    def stop(self) -> None:
        """Stop tar and the reading (idempotent)."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        if self.tar.poll() is None:
            self.tar.kill()
        self.tar.wait()
        for t in self._threads:
            t.join(5)
        for f in (self.tar.stdout, self.tar.stderr, self._listing):
            f.close()


def _first_error(text: str) -> str:
    """The line of tar's (or the shell's) complaints that says what went
    wrong: the first `tar: ` line but the closing summary, else the last."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if ln.startswith("tar: ") and "Exiting with failure status" not in ln), None)
    return first or (lines[-1] if lines else "")


def _failed_names(report: str) -> list[str]:
    """The files `xxhsum -c --quiet` complained about: 'NAME: FAILED', or
    "...: Could not open or read 'NAME': ..." for a missing one."""
    names = []
    for line in report.splitlines():
        m = re.search(r"Could not open or read '(.*)'", line)
        if m:
            names.append(m.group(1))
        elif line.endswith(": FAILED"):
            names.append(line[:-len(": FAILED")])
    return names


class _Pipe:
    """The stdin of an ssh session, written without blocking: when for
    `io_timeout` seconds no write goes through and the server's tar reads
    nothing (its "."s), the transfer has stalled (a stuck server or network);
    a cancel is seen within 0.2 s."""

    def __init__(self, ssh: subprocess.Popen, alias: str, io_timeout: int, cancel):
        self.ssh, self.file, self.fd = ssh, ssh.stdin, ssh.stdin.fileno()
        self.alias, self.io_timeout, self.cancel = alias, io_timeout, cancel
        self.wrote = self.read = time.monotonic()  # the last write that went through; the server's last "."
        self.unpacked = False  # the server's tar is done: its checks (no deadline) or its verdict follow
        os.set_blocking(self.fd, False)

    def heard(self, chunk: bytes) -> None:
        """Output of the server's session came: "."s while its tar reads, then the rest."""
        self.read = time.monotonic()
        if chunk.strip(b"."):
            self.unpacked = True

    def check(self, since: float) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise TransferCancelled(self.alias, "during the transfer")
        if time.monotonic() - max(since, self.read) > self.io_timeout and self.ssh.poll() is None:
            raise TransferStalled(self.alias, self.io_timeout)  # (if ssh has ended, its exit code tells)

    def write(self, data: bytes) -> bool:
        """All of data; False when the server stopped reading."""
        import select

        view, since = memoryview(data), time.monotonic()
        while view:
            self.check(since)
            if not select.select([], [self.fd], [], 0.2)[1]:
                # the session ended: its ssh (a client of the shared connection) has
                # exited, while the master may keep the pipe's other end a while
                if self.ssh.poll() is not None:
                    return False
                continue
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except BrokenPipeError:
                return False
            view, since = view[n:], time.monotonic()
            self.wrote = since
        return True

    def close(self) -> None:
        try:
            self.file.close()  # nothing is buffered in it: every write went through os.write
        except OSError:
            pass

    def wait(self, readers: list[threading.Thread]) -> int:
        """The ssh's exit code once the readers of its output are done,
        seeing a cancel meanwhile, and a stall while the server's tar still
        reads what the buffers on the way hold (its check of every file then
        takes its time: no deadline there; a dead network ends the session
        through the master's keepalives). A thread's end is seen at once;
        Popen.wait with a timeout polls, up to 50 ms late."""
        for r in readers:
            while r.is_alive():
                r.join(0.2)
                self.check(time.monotonic() if self.unpacked else self.wrote)
        return self.ssh.wait()


def _relay(stream: LocalStream, pipe: _Pipe, progress) -> bool:
    """The stream to the server; False when the server stopped reading."""
    sent, since = 0, time.monotonic()
    while True:
        pipe.check(since)
        parts = stream.take(0.2)
        if parts is None:
            return True
        for data, raw in parts:
            if not pipe.write(data):
                return False
            sent += raw
            if progress:
                progress(min(stream.total, stream.total * sent // max(stream.expected, 1)), stream.total)
            since = time.monotonic()  # (after the callback: its time is not the network's)


class StreamHashes:
    """xxh3-128 of every regular file in a GNU tar stream, taken as the
    stream goes by: the bytes hashed are the bytes sent, and nothing is read
    twice. `hashes` maps each file's path (without the leading ./) to its
    hash."""

    def __init__(self):
        import xxhash

        self._new, self._digest = xxhash.xxh3_128, xxhash.xxh3_128_hexdigest
        self.hashes: dict[str, str] = {}
        self._head = b""  # a header not complete yet
        self._left = 0  # data bytes of the current member still to come
        self._pad = 0  # and the padding to its 512-byte boundary
        self._sink = None  # a hash (a file), a bytearray (a long name), or None (skipped)
        self._name = ""
        self._long_name: str | None = None  # from a GNU 'L' record, for the member after it

    def feed(self, data: bytes) -> None:
        view, pos, n = memoryview(data), 0, len(data)
        while pos < n:
            if not (self._left or self._pad or self._head) and n - pos >= 512 and self._long_name is None:
                # the common case: a plain file's header and data within this chunk, hashed in one call
                head = data[pos:pos + 512]
                kind, field = head[156:157], head[124:136]
                if kind in (b"0", b"\0", b"7") and head[0] and not field[0] & 0x80:  # (no name: the end blocks)
                    size = int(field.strip(b"\0 ") or b"0", 8)
                    if pos + 512 + size <= n:
                        name = head[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
                        self.hashes[name[2:] if name.startswith("./") else name] = \
                            self._digest(view[pos + 512:pos + 512 + size])
                        end = pos + 512 + size + (-size % 512)
                        pos, self._pad = min(end, n), max(0, end - n)
                        continue
            if self._left:
                take = min(self._left, n - pos)
                if isinstance(self._sink, bytearray):
                    self._sink.extend(view[pos:pos + take])
                elif self._sink is not None:
                    self._sink.update(view[pos:pos + take])
                self._left -= take
                pos += take
                if not self._left:
                    self._done()
            elif self._pad:
                take = min(self._pad, n - pos)
                self._pad -= take
                pos += take
            else:
                take = min(512 - len(self._head), n - pos)
                self._head += view[pos:pos + take]
                pos += take
                if len(self._head) == 512:
                    head, self._head = self._head, b""
                    self._start(head)

    def _start(self, head: bytes) -> None:
        if not head.strip(b"\0"):
            return  # an end-of-archive block
        field = head[124:136]
        size = int.from_bytes(field[1:], "big") if field[0] & 0x80 else int(field.strip(b"\0 ") or b"0", 8)
        kind = head[156:157]
        name = self._long_name if self._long_name is not None else \
            head[:100].rstrip(b"\0").decode("utf-8", "surrogateescape")
        self._long_name = None
        self._name = name[2:] if name.startswith("./") else name
        self._sink = bytearray() if kind == b"L" else self._new() if kind in (b"0", b"\0", b"7") else None
        self._left, self._pad = size, -size % 512
        if not size:
            self._done()

    def _done(self) -> None:
        sink, self._sink = self._sink, None
        if isinstance(sink, bytearray):
            self._long_name = bytes(sink).rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif sink is not None:
            self.hashes[self._name] = sink.hexdigest()
