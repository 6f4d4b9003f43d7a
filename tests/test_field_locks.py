"""No lock files left behind (issue 14, item 10): a holder removes its lock
file as it lets go, and a waiter that then holds a file no longer there
locks the new one. Against the real sshd, for push (rsync and tar stream),
pull into a local folder, a queued second push and prune."""

import os
import subprocess
import sys
import time

from conftest import run_cli
from test_transfer import make_model

NAME = "RTX3090_N2501_LOCKS_250101"


def _locks(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".model-sync-lock") or ".model-sync-lock.owner" in n)


def test_push_and_pull_leave_no_lock_file(bed, tmp_path):
    src = make_model(tmp_path / "src" / NAME, {"a.bin": os.urandom(5000), "sub/b.bin": b"b"})
    assert run_cli("push", str(src), "bed").returncode == 0
    assert _locks(bed.remote_base) == []
    (src / "a.bin").write_bytes(b"v2")
    assert run_cli("push", str(src), "bed").returncode == 0  # the rsync path over an existing model
    assert _locks(bed.remote_base) == []
    many = make_model(tmp_path / "src" / "RTX3090_N2501_MANY_250101", {f"f{i:04d}.txt": b"x" * 64 for i in range(600)})
    res = run_cli("--json", "push", str(many), "bed")
    assert res.returncode == 0, res.stderr
    assert '"via": "tar"' in res.stdout  # the tar stream takes its lock in the inspection's session
    assert _locks(bed.remote_base) == []
    out = tmp_path / "pulled"
    out.mkdir()
    assert run_cli("pull", f"bed:{NAME}", str(out)).returncode == 0
    assert _locks(out) == []
    assert run_cli("push", str(src), "local").returncode == 0
    assert _locks(bed.local_base) == []


def test_a_queued_push_still_waits_and_no_lock_file_stays(bed, tmp_path):
    """The first push holds the lock (slowed by --bwlimit); the second waits
    for it, then takes a lock file of its own: both publish, in turn."""
    src = make_model(tmp_path / "src" / NAME, {"w.bin": os.urandom(1_500_000)})
    first = subprocess.Popen([sys.executable, "-m", "model_sync.cli", "push", str(src), "bed", "--bwlimit", "500K"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        stage = bed.remote_base / f".{NAME}.model-sync-staging"
        deadline = time.monotonic() + 30
        while not stage.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stage.exists(), "the first push never got under way"
        assert _locks(bed.remote_base), "the first push holds a lock file while it writes"
        second = run_cli("push", str(src), "bed", timeout=120)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    assert "waiting: another model-sync holds this destination" in second.stderr
    assert _locks(bed.remote_base) == []


def test_prune_takes_the_lock_and_leaves_no_lock_file(bed, tmp_path):
    for version in ("250101", "250102", "250103"):
        src = make_model(tmp_path / "src" / f"RTX3090_N2501_PRUNE_{version}", {"w.bin": version.encode()})
        assert run_cli("push", str(src), "bed").returncode == 0
    res = run_cli("prune", "bed", "--model", "PRUNE", "--keep", "1", "--yes")
    assert res.returncode == 0, res.stderr
    assert sorted(n for n in os.listdir(bed.remote_base) if not n.startswith(".")) == ["RTX3090_N2501_PRUNE_250103"]
    assert _locks(bed.remote_base) == []
    assert not (bed.remote_base / ".RTX3090_N2501_PRUNE_250101.model-sync-versions").exists()
