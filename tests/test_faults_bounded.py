"""Bounded, consistent failure (issue 13, item 9), against the real sshd:
a stalled transfer ends the same way on the rsync and the tar path, within
io_timeout and a few seconds; a bad --bwlimit is refused before anything is
locked; a pull that meets a push's publish says so in words; what a killed
model-sync left in $TMPDIR goes at the next start.

Faults are injected with signals: the server's side of a transfer is frozen
with SIGSTOP (found by its working directory, the staging directory, which
no other test shares)."""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_transfer import make_model

IO_TIMEOUT = 5
BOUND = IO_TIMEOUT + 10  # a liveness bound (measured: about io_timeout + 1 to 3 s), not a speed check


def _exe() -> str:
    return str(Path(sys.executable).parent / "model-sync")


def _with_io_timeout(bed):
    bed.write_config(bed.config.read_text().replace("  connect_timeout: 5\n",
                                                    f"  connect_timeout: 5\n  io_timeout: {IO_TIMEOUT}\n"))


def _working_in(directory: Path, names: tuple[str, ...]) -> list[int]:
    """Processes called one of `names` whose working directory is
    `directory` (a scan of /proc: quicker than pgrep, to catch a short tar)."""
    pids = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.readlink(f"/proc/{pid}/cwd") == str(directory):
                with open(f"/proc/{pid}/comm") as fh:
                    if fh.read().strip() in names:
                        pids.append(int(pid))
        except OSError:
            pass
    return sorted(pids)


def _has_data(directory: Path) -> bool:
    for p in directory.rglob("*"):
        try:
            if p.is_file() and p.stat().st_size:
                return True
        except OSError:
            pass  # (renamed meanwhile)
    return False


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rpartition(")")[2].split()[1])
    except OSError:
        return -1  # (gone)


def _one_stream(pids: list[int]) -> list[int]:
    """Of the server's rsyncs, one stream's: the first one found, and its
    parent or child among them (the generator and the receiver)."""
    first = pids[0]
    return [p for p in pids if p == first or _ppid(p) == first or _ppid(first) == p]


@pytest.mark.parametrize("path", ["rsync", "tar", "tar-buffered"])
def test_a_stall_ends_with_one_exit_code_within_io_timeout(bed, tmp_path, path):
    """rsync: two parallel streams; the server's side of one is frozen (a
    receiver stuck on a bad disk, say) while the other still moves. tar: the
    server's tar is frozen, with the rest of the stream larger than the
    buffers on the way, or (tar-buffered) all of it already in them, so that
    only the server can tell that it stopped reading. Each time: exit 3
    (a stall), within io_timeout and a margin, nothing published."""
    _with_io_timeout(bed)
    src = tmp_path / "src" / "RTX3090_N2501_STALL_250801"
    if path == "rsync":
        make_model(src, {"a.bin": os.urandom(40 << 20), "b.bin": os.urandom(40 << 20)})
        args, names = ["--bwlimit", "2M"], ("rsync",)  # (--bwlimit: the healthy stream runs on for 20 s)
    else:
        # tar-buffered: 3,000 files of 200 bytes, gzipped (mostly headers), well under
        # the ssh window; the server's tar takes a while to make them, time to freeze it
        n, size = (600, 100_000) if path == "tar" else (3000, 200)
        for i in range(n):
            make_model(src, {f"d{i % 5}/t{i}.bin": os.urandom(size)})
        args, names = [], ("tar",)
    stage = bed.remote_base / f".{src.name}.model-sync-staging"
    proc = subprocess.Popen([_exe(), "--json", "push", str(src), "bed", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    frozen: list[int] = []
    try:
        while not frozen:
            assert proc.poll() is None, proc.communicate()
            found = _working_in(stage, names)
            if found and (path != "rsync" or _has_data(stage)):
                frozen = _one_stream(found) if path == "rsync" else found
                for pid in frozen:
                    os.kill(pid, signal.SIGSTOP)
            time.sleep(0.005)
        stopped = time.monotonic()
        try:
            out, err = proc.communicate(timeout=120)  # (a hang guard)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: where it hangs
            pytest.fail(f"no end 120 s after the stall: {proc.communicate()[1]}")
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 3, err
    assert took < BOUND, f"the {path} path took {took:.1f}s to give up a stall (io_timeout {IO_TIMEOUT}s)"
    assert "transfer stalled: no progress for 5s (io_timeout); nothing was published" in err, err
    assert "Traceback" not in err
    assert not (bed.remote_base / src.name).exists()


@pytest.mark.parametrize("value", ["10M", "500K", "1.5G", "1.5g", "0", "100", "10MB", "10MiB", "1m+1", "10k-1",
                                   "512b", "1+1", ".5M", "8P", "garbage", "", "10X", "1,5M", "-5", "1e3",
                                   "511b", "100b", "0.1", "9999P", " 10M", "10M ", "1kk", "1E"])
def test_bwlimit_values_are_judged_as_rsync_judges_them(value, tmp_path):
    from model_sync.errors import UsageError
    from model_sync.rsync import check_bwlimit

    (tmp_path / "a").mkdir()
    theirs = subprocess.run(["rsync", "-a", "--dry-run", f"--bwlimit={value}", f"{tmp_path}/a/", f"{tmp_path}/b/"],
                            capture_output=True, text=True)
    try:
        ours = check_bwlimit(value) == value
    except UsageError as exc:
        ours = False
        assert repr(value) in str(exc) and "10M" in str(exc)
    # (rsync takes an empty RATE as 0, no limit; an empty option is refused here)
    assert ours == (theirs.returncode == 0 and value != ""), theirs.stderr


@pytest.mark.parametrize("command", ["push", "pull"])
def test_a_garbage_bwlimit_is_refused_before_the_lock_is_taken(bed, tmp_path, command):
    src = make_model(tmp_path / "src" / "RTX3090_N2501_BWLIMIT_250801", {"a.bin": b"a" * 1000})
    if command == "push":
        args = ["push", str(src), "bed", "--bwlimit", "garbage"]
    else:
        make_model(bed.remote_base / src.name, {"a.bin": b"a" * 1000})
        args = ["pull", f"bed:{src.name}", str(tmp_path / "out"), "--bwlimit", "garbage"]
    res = run_cli(*args)
    assert res.returncode == 2, res.stderr
    error = [ln for ln in res.stderr.splitlines() if ln.startswith("model-sync: error:")]
    assert len(error) == 1 and "'garbage'" in error[0] and "10M" in error[0] and "1.5G" in error[0], res.stderr
    assert "Traceback" not in res.stderr
    lock_dir = bed.remote_base if command == "push" else tmp_path
    assert not list(lock_dir.glob(".*.model-sync-lock*")) and not list(lock_dir.glob(".*.model-sync-staging"))


def test_a_garbage_bwlimit_is_refused_through_the_api(bed, tmp_path):
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import UsageError
    from model_sync.transfer import TransferOptions

    src = make_model(tmp_path / "src" / "RTX3090_N2501_BWLIMIT_250802", {"a.bin": b"a"})
    with pytest.raises(UsageError, match="--bwlimit 'garbage' is not a rate"):
        api.push(str(src), "bed", load_config(), opts=TransferOptions(bwlimit="garbage"))
    assert not list(bed.remote_base.glob(".*.model-sync-lock*"))


def test_a_pull_that_meets_a_vanished_file_says_what_happened(bed, tmp_path):
    """Files that go on the server while a pull reads them (a prune, an old
    version removed after a push replaced it) vanish under it (rsync's
    exit 24): said in words."""
    name = "RTX3090_N2501_VANISH_250801"
    served = make_model(bed.remote_base / name, {"a.bin": os.urandom(3_000_000), "z.bin": b"z" * 1000})
    out = tmp_path / "out"
    out.mkdir()
    stage = out / f".{name}.model-sync-staging"
    proc = subprocess.Popen([_exe(), "pull", f"bed:{name}", str(out), "--bwlimit", "1M"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        # a.bin is on its way (rsync sends in name order): z.bin goes
        while not (stage.is_dir() and any(p.is_file() and p.stat().st_size for p in stage.rglob("*"))):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        (served / "z.bin").unlink()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    error = [ln for ln in err.splitlines() if ln.startswith("model-sync: error:")]
    assert len(error) == 1, err
    assert "changed on the server while it was read" in error[0] and "z.bin" in error[0], err
    assert "a push or prune there may have replaced it" in error[0] and "run the same command again" in error[0].lower()
    assert "exit 24" not in error[0] and "code 24" not in error[0], err  # not rsync's raw code
    assert not (out / name).exists()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_what_a_killed_model_sync_left_in_tmpdir_goes_at_the_next_start(bed, tmp_path):
    """kill -9 leaves the ssh master's control directory and the parallel
    streams' file lists; the next start removes them. A live process's
    entries stay, and so does a control directory whose master still
    answers (it leaves by itself once idle)."""
    tmpdir = Path(tempfile.mkdtemp(prefix="ms-", dir="/tmp"))  # short: control sockets live here
    env = {"TMPDIR": str(tmpdir)}
    listener = None
    try:
        src = make_model(tmp_path / "src" / "RTX3090_N2501_KILLED_250801",
                         {"a.bin": os.urandom(40 << 20), "b.bin": os.urandom(40 << 20)})  # two streams
        stage = bed.remote_base / f".{src.name}.model-sync-staging"
        proc = subprocess.Popen([_exe(), "push", str(src), "bed", "--bwlimit", "1M"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env={**os.environ, **env})
        try:
            while not (stage.is_dir() and any(p.is_file() and p.stat().st_size for p in stage.rglob("*"))):
                assert proc.poll() is None
                time.sleep(0.05)
        finally:
            proc.kill()  # kill -9: no finally clauses, no atexit
            proc.wait()
        # what it started lives on (its rsync streams, the ssh master): stop those, as
        # they would end by themselves in time, leaving their files
        for pattern in (f"^rsync .*{src}", f"ControlPath={tmpdir}"):
            for pid in subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while subprocess.run(["pgrep", "-f", f"ControlPath={tmpdir}"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        left = sorted(p.name for p in tmpdir.iterdir())
        assert any("lists" in n for n in left) and any("lists" not in n for n in left), left

        # a live process's entries (this test's pid), and a dead one's whose master still answers
        live = [tmpdir / f"model-sync-{os.getpid()}-beef", tmpdir / f"model-sync-lists-{os.getpid()}-x1_y"]
        for d in live:
            d.mkdir()
        (live[1] / "stream-0").write_bytes(b"a.bin\0")
        serving = tmpdir / f"model-sync-{_dead_pid()}-cafe"
        serving.mkdir()
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(serving / "ssh"))
        listener.listen(1)
        res = run_cli("servers", env=env)
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in tmpdir.iterdir()) == sorted(p.name for p in live + [serving])
        assert (live[1] / "stream-0").exists()
    finally:
        if listener is not None:
            listener.close()
        subprocess.run(["rm", "-rf", "--", str(tmpdir)])
