"""Second-review regressions: each scenario below once published a wrong
tree, deleted something unconfirmed, or claimed a verification it never did."""

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_transfer import make_model, push_json, tree


@contextlib.contextmanager
def _queued_push(bed, name, *args):
    """Hold the destination's lock, start model-sync (args as on its command
    line) and yield it once it says it waits for that lock; let the lock go
    when the block ends."""
    from model_sync.config import load_config
    from model_sync.hosts import open_host

    host = open_host("bed", load_config())
    release, held = threading.Event(), threading.Event()

    def hold():
        with host.lock(str(bed.remote_base / f".{name}.model-sync-lock")):
            held.set()
            release.wait(60)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(15)
        proc = subprocess.Popen([sys.executable, "-m", "model_sync.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        for line in proc.stderr:
            if line.startswith("waiting"):
                break
        yield proc
    finally:
        release.set()
        t.join()
        host.close()


def test_symlink_and_new_directory_changes_are_published(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a", "b.bin": b"b"})
    os.symlink("a.bin", src / "latest")
    assert push_json(str(src), "bed")[0].returncode == 0
    os.unlink(src / "latest")
    os.symlink("b.bin", src / "latest")
    (src / "newdir").mkdir()
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    dest = bed.remote_base / "m"
    assert os.readlink(dest / "latest") == "b.bin" and (dest / "newdir").is_dir()


def test_non_utf8_names_are_verified_and_pushed_again(bed, tmp_path):
    src = tmp_path / "src" / "m"
    src.mkdir(parents=True)
    (src / "ok.bin").write_bytes(b"x" * 10)
    with open(os.path.join(os.fsencode(src), b"bad\xff.bin"), "wb") as f:
        f.write(b"y" * 10)
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    assert len(doc["sent"]) == 2 and doc["verified"] is True
    (src / "ok.bin").write_bytes(b"x2" * 10)
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    dest = os.fsencode(bed.remote_base / "m")
    assert open(os.path.join(dest, b"bad\xff.bin"), "rb").read() == b"y" * 10
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_delete_never_removes_what_was_not_confirmed(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a", "b.bin": b"b"})
    assert push_json(str(src), "bed")[0].returncode == 0
    dest, stage = bed.remote_base / "m", bed.remote_base / ".m.model-sync-staging"
    subprocess.run(["cp", "-al", f"{dest}/", str(stage)], check=True)  # an older interrupted run's stage
    (dest / "gained.bin").write_bytes(b"important")  # the plan (made from that stage) cannot see this
    res = run_cli("push", str(src), "bed", "--delete")
    assert res.returncode == 2 and "gained.bin" in res.stderr and "nothing was published" in res.stderr
    assert (dest / "gained.bin").read_bytes() == b"important"


def test_delete_after_waiting_for_the_lock(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a"})
    assert push_json(str(src), "bed")[0].returncode == 0
    (src / "a.bin").write_bytes(b"a2")  # something to send: an up-to-date push would not need the lock
    dest = bed.remote_base / "m"
    with _queued_push(bed, "m", "push", str(src), "bed", "--delete") as proc:
        (dest / "added-meanwhile.bin").write_bytes(b"from the push holding the lock")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "added-meanwhile.bin" in err
    assert (dest / "added-meanwhile.bin").exists()


def test_stale_stage_does_not_bring_back_removed_files(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a"})
    dest, stage = bed.remote_base / "m", bed.remote_base / ".m.model-sync-staging"
    dest.mkdir()
    (dest / "obsolete.bin").write_bytes(b"old")
    subprocess.run(["cp", "-al", f"{dest}/", str(stage)], check=True)
    (dest / "obsolete.bin").unlink()  # removed from the published copy since
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    assert not (dest / "obsolete.bin").exists() and (dest / "a.bin").read_bytes() == b"a"


def test_partial_files_are_never_published(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a"})
    assert push_json(str(src), "bed")[0].returncode == 0
    dest, stage = bed.remote_base / "m", bed.remote_base / ".m.model-sync-staging"
    subprocess.run(["cp", "-al", f"{dest}/", str(stage)], check=True)
    (stage / ".rsync-partial").mkdir()
    (stage / ".rsync-partial" / "gone.bin").write_bytes(b"half a file")
    (src / "a.bin").write_bytes(b"a2")
    assert push_json(str(src), "bed")[0].returncode == 0
    assert not list(dest.rglob(".rsync-partial"))


def test_tilde_server_paths_are_refused(bed, model_dir=None, tmp_path=None):
    src = make_model(Path(bed.local_base) / "t", {"a.bin": b"a"})
    res = run_cli("push", str(src), "bed:~/x")
    assert res.returncode == 2 and "'~' is not expanded" in res.stderr


def test_a_file_added_while_waiting_is_verified(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a"})
    with _queued_push(bed, "m", "--json", "push", str(src), "bed") as proc:
        (src / "late.bin").write_bytes(b"written while waiting")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert "late.bin" in doc["sent"] and doc["verified"] is True
    assert "late.bin" in (bed.remote_base / "m" / ".model-sync.xxh128").read_text()


def test_a_lapsed_lock_publishes_nothing(bed, tmp_path):
    """When the holder's heartbeats stop it lets go (and removes its owner
    file); a run that lost its lock that way must not publish."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import ModelSyncError
    from model_sync.transfer import TransferOptions

    src = make_model(tmp_path / "src" / "m", {"a.bin": os.urandom(2_000_000)})
    lock = str(bed.remote_base / ".m.model-sync-lock")

    def lapse(done, total):
        for owner in glob.glob(glob.escape(lock) + ".owner-*"):
            os.unlink(owner)

    with pytest.raises(ModelSyncError, match="lock on the destination lapsed"):
        api.push(str(src), "bed", load_config(), opts=TransferOptions(bwlimit="2M"), progress=lapse)
    assert not (bed.remote_base / "m").exists()
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0 and tree(bed.remote_base / "m") == tree(src)


def test_interrupting_parallel_streams_stops_every_rsync(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": os.urandom(40 << 20), "b.bin": os.urandom(40 << 20)})
    stage = bed.remote_base / ".m.model-sync-staging"
    proc = subprocess.Popen([sys.executable, "-m", "model_sync.cli", "push", str(src), "bed", "--bwlimit", "1500K"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        while not (stage.exists() and any(p.is_file() and p.stat().st_size for p in stage.rglob("*"))):
            assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)  # a hang guard, not a timing check
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    left = subprocess.run(["pgrep", "-f", f"rsync .*--files-from.*{tmp_path}"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "an rsync stream outlived the interrupted push"
    assert not (bed.remote_base / "m").exists()
    # the streams were stopped part-way (left for resume), not waited for to the end
    sizes = [p.stat().st_size for p in stage.rglob("*") if p.is_file() and p.name.lstrip(".").startswith(("a.bin", "b.bin"))]
    assert sizes and min(sizes) < 40 << 20, sizes


def test_destination_overlapping_the_source_is_refused(bed, tmp_path):
    parent = bed.local_base / "m"
    src = make_model(parent / "sub", {"w.bin": b"w"})
    (parent / "other.bin").write_bytes(b"o")
    res = run_cli("push", str(src), "local:m", "--delete", "--yes")
    assert res.returncode == 2 and "overlap" in res.stderr
    assert (src / "w.bin").exists() and (parent / "other.bin").exists()


def test_streams_option(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": os.urandom(40 << 20), "b.bin": os.urandom(40 << 20)})
    res = run_cli("push", str(src), "bed", "--streams", "0")
    assert res.returncode == 2 and "--streams" in res.stderr
    for n in ("1", "3"):
        res, doc = push_json(str(src), f"bed:m{n}", "--streams", n)
        assert res.returncode == 0 and doc["verified"] is True, res.stderr
        assert (bed.remote_base / f"m{n}" / "b.bin").read_bytes() == (src / "b.bin").read_bytes()


def test_interrupted_while_queued_for_the_lock_leaves_no_waiter(bed, tmp_path):
    src = make_model(tmp_path / "src" / "m", {"a.bin": b"a"})
    assert push_json(str(src), "bed")[0].returncode == 0
    (src / "a.bin").write_bytes(b"a2")  # something to send, so the push needs the lock
    with _queued_push(bed, "m", "push", str(src), "bed") as proc:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
    # the queued waiter on the server gave up with its session: it never takes
    # the lock after the holder lets go, so no owner file is left behind
    lock_dir = bed.remote_base
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and subprocess.run(
            ["pgrep", "-f", "flock -w 2 9"], capture_output=True).returncode == 0:
        time.sleep(0.2)
    assert subprocess.run(["pgrep", "-f", "flock -w 2 9"], capture_output=True).returncode == 1
    assert glob.glob(str(lock_dir / ".m.model-sync-lock.owner-*")) == []
    assert (bed.remote_base / "m" / "a.bin").read_bytes() == b"a"  # nothing was published
