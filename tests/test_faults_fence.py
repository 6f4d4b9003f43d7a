"""Fault injection against the real sshd: no process writes into a stage or
a published model unless it holds that destination's lock right now.

- a push killed with SIGKILL mid-transfer: its local rsync streams die with
  it, and the next push stops whatever it left on the server before it takes
  the stage over;
- a paused client (model-sync and every process it started, SIGSTOPped): when
  its lock lapses, the server stops its writers before letting the lock go,
  and nothing the client does when it wakes reaches the published model.

Both hold the server-side rsync receivers of the first push where they are
(SIGSTOP) to stand for a slow link, and release them after the second push
has published. The same machine plays both ends, so /proc shows either."""

import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_transfer import make_model, push_json, tree


def _inside(link: str, path: str) -> bool:
    try:
        target = os.readlink(link)
    except OSError:
        return False
    return target == path or target.startswith(path + "/")


def using(*paths: Path) -> list[int]:
    """Processes whose working directory or an open file is inside one of these."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [f"/proc/{pid}/cwd"] + [f"/proc/{pid}/fd/{n}" for n in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(_inside(link, str(p)) for link in links for p in paths):
            found.append(int(pid))
    return found


def rsyncs_in(path: Path) -> list[int]:
    """rsync processes (the server's receivers) whose working directory is inside path."""
    out = []
    for pid in using(path):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "rsync" and _inside(f"/proc/{pid}/cwd", str(path)):
                out.append(pid)
    return out


def rsyncs_sending(src: Path) -> list[int]:
    """Local rsync streams with this source on their command line."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"rsync") and any(a.startswith(os.fsencode(src)) for a in argv):
                out.append(int(pid))
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(p))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def signal_all(pids, sig) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def start_push(src: Path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "model_sync.cli", "push", str(src), "bed", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def hold_receivers(push: subprocess.Popen, stage: Path, streams: int) -> list[int]:
    """SIGSTOP the server-side rsyncs writing into the stage as they appear,
    until every stream has its pair (generator, receiver) stopped there
    and data has arrived: the push is mid-transfer, and stays so."""
    held: list[int] = []
    deadline = time.monotonic() + 60
    while len(held) < 2 * streams or not any(p.is_file() and p.stat().st_size for p in stage.rglob("*")):
        assert push.poll() is None, push.communicate()
        assert time.monotonic() < deadline, f"only {len(held)} receivers appeared"
        new = [p for p in rsyncs_in(stage) if p not in held] if stage.is_dir() else []
        signal_all(new, signal.SIGSTOP)
        held += new
        time.sleep(0.002)
    return held


def published_intact(dest: Path, src: Path) -> None:
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert tree(dest) == tree(src)
    assert not list(dest.rglob(".rsync-partial")), "a writer without the lock left its partial files"


def models(tmp_path, files: int, size: int) -> tuple[Path, Path]:
    """Two versions of model m: same names and sizes, different bytes."""
    return tuple(make_model(tmp_path / v / "m", {f"w{i}.bin": os.urandom(size) for i in range(files)})
                 for v in ("one", "two"))


def test_a_killed_push_leaves_no_writer(bed, tmp_path):
    # two files a stream: an orphaned stream would go on to its second file
    one, two = models(tmp_path, 8, 24 << 20)
    dest, stage = bed.remote_base / "m", bed.remote_base / ".m.model-sync-staging"
    first = start_push(one, "--streams", "4")
    held = []
    try:
        held = hold_receivers(first, stage, 4)
        first.kill()  # kill -9
        first.communicate()
        deadline = time.monotonic() + 5
        while rsyncs_sending(one) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphans = rsyncs_sending(one)  # a stream that outlived model-sync
        res, doc = push_json(str(two), "bed", "--streams", "4")
        assert res.returncode == 0 and doc["verified"] is True, res.stderr
        signal_all(held, signal.SIGCONT)  # whatever is left of the first push may move now
        time.sleep(5)
        published_intact(dest, two)
        assert using(dest, stage) == []
        assert orphans == [], "rsync streams outlived the killed model-sync"
    finally:
        signal_all(held + rsyncs_sending(one), signal.SIGKILL)


def test_a_paused_client_loses_its_writers_with_its_lock(bed, tmp_path):
    bed.write_config(bed.config.read_text() + "  io_timeout: 5\n")  # the lock lapses after max(30, 5) s
    one, two = models(tmp_path, 8, 24 << 20)
    dest, stage = bed.remote_base / "m", bed.remote_base / ".m.model-sync-staging"
    first = start_push(one, "--streams", "4")
    held, paused = [], []
    try:
        held = hold_receivers(first, stage, 4)
        # the client pauses (a laptop lid, a frozen VM): model-sync and all it started
        paused = descendants(first.pid)
        signal_all(paused, signal.SIGSTOP)
        owner = glob.escape(str(bed.remote_base / ".m.model-sync-lock")) + ".owner-*"
        deadline = time.monotonic() + 90
        while glob.glob(owner):  # until the lock lapses
            assert time.monotonic() < deadline, "the lock never lapsed"
            time.sleep(0.2)
        # the holder stopped the writers before it let the lock go
        assert rsyncs_in(stage) == []
        res, doc = push_json(str(two), "bed", "--streams", "4")
        assert res.returncode == 0 and doc["verified"] is True, res.stderr
        signal_all(held + paused, signal.SIGCONT)  # the first push wakes up
        _, err = first.communicate(timeout=120)  # a hang guard, not a timing check
        assert first.returncode != 0, err
        time.sleep(3)
        published_intact(dest, two)
        assert using(dest, stage) == []
    finally:
        signal_all(paused + held + rsyncs_sending(one), signal.SIGKILL)


def test_a_writer_found_at_publish_time_publishes_nothing(bed, tmp_path):
    """Under the lock, after our own rsyncs have ended, anything still in the
    stage is a writer without the lock: what it touched was never verified."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import RemoteError

    src = make_model(tmp_path / "src" / "m", {"a.bin": os.urandom(1 << 20)})
    stage = bed.remote_base / ".m.model-sync-staging"
    intruders: list[subprocess.Popen] = []

    def intrude(done, total):  # during the transfer: one more process in the stage
        if not intruders:
            intruders.append(subprocess.Popen(["sleep", "300"], cwd=stage, stdin=subprocess.DEVNULL))

    try:
        try:
            api.push(str(src), "bed", load_config(), progress=intrude)
            raised = None
        except RemoteError as exc:
            raised = exc
        assert intruders, "the transfer reported no progress"
        assert raised is not None and "nothing was published" in str(raised)
        assert intruders[0].wait(timeout=10) == -signal.SIGKILL
        assert not (bed.remote_base / "m").exists()
    finally:
        for p in intruders:
            p.kill()
            p.wait()
