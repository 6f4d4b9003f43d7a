"""push / pull / verify against the real sshd and rsync."""

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

HOSTILE = [
    "with space.bin", "quote'single.bin", 'quote"double.bin', "$(touch PWNED).bin", "`touch PWNED2`.bin",
    "semi;colon.bin", "-leading-dash.bin", "new\nline.bin", "모델-가중치.bin", "back\\slash.bin",
]


def make_model(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".model-sync.xxh128"}


def push_json(*args, **kw):
    res = run_cli("--json", "push", *args, **kw)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


@pytest.fixture
def model(tmp_path):
    return make_model(tmp_path / "src" / "RTX3090_N2501_LANGDETECTOR_250715", {
        "config.pbtxt": b"name: langdetector\n",
        "1/model.onnx": os.urandom(300_000),
        "1/model.plan": os.urandom(200_000),
    })


def test_round_trip_push_then_pull_identical(bed, model, tmp_path):
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    dest = bed.remote_base / model.name
    assert tree(dest) == tree(model)
    assert doc["files"] == 3 and doc["bytes"] == 500_000 + len(b"name: langdetector\n")
    assert doc["verified"] is True and doc["algorithm"] == "xxh3-128" and doc["published"] is True
    # the manifest is checkable with the standard tool
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout + check.stderr

    out = tmp_path / "pulled"
    out.mkdir()
    res = run_cli("--json", "pull", f"bed:{model.name}", str(out))
    assert res.returncode == 0, res.stderr
    assert tree(out / model.name) == tree(model)
    assert json.loads(res.stdout)["verified"] is True


def test_result_table_like_the_seed(bed, model):
    res = run_cli("push", str(model), "bed")
    assert res.returncode == 0, res.stderr
    for row in ("| Files | 3 |", "| Size | 500KB |", "| Verified | yes (xxh3-128) |"):
        assert row in res.stdout
    assert "| Time |" in res.stdout and "| Speed |" in res.stdout
    assert "\x1b[" not in res.stdout


def test_repush_unchanged_sends_nothing_and_one_change_sends_one(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0 and doc["files"] == 0 and doc["bytes"] == 0
    (model / "config.pbtxt").write_bytes(b"name: langdetector-v2\n")
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["sent"] == ["config.pbtxt"] and doc["bytes"] == len(b"name: langdetector-v2\n")
    assert tree(bed.remote_base / model.name) == tree(model)


def test_verify_catches_flipped_byte(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    ok = run_cli("--json", "verify", str(model), "bed")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"] is True
    remote = bed.remote_base / model.name / "1" / "model.onnx"
    data = bytearray(remote.read_bytes())
    data[1234] ^= 0xFF
    st = remote.stat()
    remote.write_bytes(bytes(data))
    os.utime(remote, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime unchanged: only hashing can tell
    bad = run_cli("--json", "verify", str(model), "bed")
    assert bad.returncode == 4
    assert json.loads(bad.stdout)["mismatched"] == ["1/model.onnx"]
    md = run_cli("verify", str(model), "bed")
    assert "Mismatched: 1/model.onnx" in md.stdout and "| Verified | NO |" in md.stdout


def test_dry_run_changes_nothing(bed, model):
    res, doc = push_json(str(model), "bed", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert doc["dry_run"] is True and doc["files"] == 3 and doc["bytes"] == 500_019
    assert sorted(p["path"] for p in doc["planned"]) == ["1/model.onnx", "1/model.plan", "config.pbtxt"]
    assert list(bed.remote_base.iterdir()) == []


def test_delete_needs_confirmation(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    (model / "1" / "model.plan").unlink()
    dest = bed.remote_base / model.name
    res = run_cli("push", str(model), "bed", "--delete")
    assert res.returncode == 2
    assert "--delete would remove 1 file(s)" in res.stderr and "1/model.plan" in res.stderr and "--yes" in res.stderr
    assert (dest / "1" / "model.plan").exists()
    res, doc = push_json(str(model), "bed", "--dry-run", "--delete")
    assert [p["path"] for p in doc["planned"] if p["action"] == "delete"] == ["1/model.plan"]
    assert (dest / "1" / "model.plan").exists()
    # without --delete a file missing from the source stays
    assert push_json(str(model), "bed")[0].returncode == 0
    assert (dest / "1" / "model.plan").exists()
    res, doc = push_json(str(model), "bed", "--delete", "--yes")
    assert res.returncode == 0, res.stderr
    assert doc["deleted"] == ["1/model.plan"]
    assert not (dest / "1" / "model.plan").exists()
    assert tree(dest) == tree(model)


def test_hostile_names_transfer_exactly_and_run_nothing(bed, tmp_path):
    files = {name: name.encode() * 3 for name in HOSTILE}
    files["sub dir/$(id)/x;y"] = b"nested"
    src = make_model(tmp_path / "src" / "weird model $(touch PWNED3)", files)
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    dest = bed.remote_base / src.name
    assert tree(dest) == tree(src)
    assert doc["verified"] is True and doc["files"] == len(files)
    out = tmp_path / "back"
    out.mkdir()
    res = run_cli("--json", "pull", f"bed:{src.name}", str(out))
    assert res.returncode == 0, res.stderr
    assert tree(out / src.name) == tree(src)
    ver = run_cli("--json", "verify", str(src), "bed")
    assert ver.returncode == 0, ver.stdout + ver.stderr
    for d in (tmp_path, bed.remote_base, bed.home, Path.cwd()):
        assert not list(d.rglob("PWNED")) and not list(d.rglob("PWNED2")) and not list(d.rglob("PWNED3"))


def test_local_alias_push_pull_verify(bed, model, tmp_path):
    res, doc = push_json(str(model), "local")
    assert res.returncode == 0, res.stderr
    assert tree(bed.local_base / model.name) == tree(model)
    assert doc["destination"] == f"local:{bed.local_base / model.name}"
    out = tmp_path / "again"
    res = run_cli("--json", "pull", f"local:{model.name}", str(out))
    assert res.returncode == 0, res.stderr
    assert tree(out) == tree(model)  # out did not exist: it becomes the model directory
    assert run_cli("verify", str(model), "local").returncode == 0


def test_relative_path_cannot_escape_model_base(bed, model):
    res = run_cli("push", str(model), "bed:../outside")
    assert res.returncode == 2
    assert "leaves the server's model_base" in res.stderr
    assert not (bed.remote_base.parent / "outside").exists()


def test_absolute_and_nested_destination(bed, model, tmp_path):
    target = tmp_path / "abs target" / "deep" / "m"
    res, doc = push_json(str(model), f"bed:{target}")
    assert res.returncode == 0, res.stderr
    assert tree(target) == tree(model)
    res, doc = push_json(str(model), "bed:team/langdetector")
    assert res.returncode == 0, res.stderr
    assert tree(bed.remote_base / "team" / "langdetector") == tree(model)


def test_preflight_refuses_when_space_is_short(bed, model, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    assert mounted.returncode == 0, f"this test needs root to mount a tmpfs: {mounted.stderr}"
    try:
        res = run_cli("push", str(model), f"bed:{small}/m")
        assert res.returncode == 1
        assert "not enough space" in res.stderr and "need 510KB" in res.stderr and "available" in res.stderr
        assert list(small.iterdir()) == []  # nothing was transferred
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_lock_no_wait_and_wait(bed, model):
    from model_sync.config import load_config
    from model_sync.hosts import open_host

    host = open_host("bed", load_config())
    lock = str(bed.remote_base / f".{model.name}.model-sync-lock")
    release = threading.Event()
    held = threading.Event()

    def hold():
        with host.lock(lock):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(15)
        res = run_cli("push", str(model), "bed", "--no-wait")
        assert res.returncode == 1
        assert "another model-sync is writing to this destination" in res.stderr
        assert not (bed.remote_base / model.name).exists()
        proc = subprocess.Popen([sys.executable, "-m", "model_sync.cli", "--json", "push", str(model), "bed"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        time.sleep(2)
        assert proc.poll() is None  # queued behind the lock
        release.set()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "waiting: another model-sync holds this destination" in err
    finally:
        release.set()
        t.join()
        host.close()
    assert tree(bed.remote_base / model.name) == tree(model)


def test_interrupted_push_resumes_and_never_shows_partial_files(bed, tmp_path):
    big = os.urandom(6_000_000)
    src = make_model(tmp_path / "src" / "RTX3090_N2501_BIG_250101", {"a.bin": os.urandom(1000), "weights.bin": big})
    dest = bed.remote_base / src.name
    # an older published copy that readers are using meanwhile
    dest.mkdir()
    (dest / "weights.bin").write_bytes(b"old weights")
    seen_bad = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                for p in dest.rglob("*"):
                    if p.is_file() and p.name == "weights.bin":
                        data = p.read_bytes()
                        if data not in (b"old weights", big):
                            seen_bad.append(len(data))
            except FileNotFoundError:
                pass  # a rename in between: fine
            time.sleep(0.01)

    t = threading.Thread(target=reader)
    t.start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "model_sync.cli", "push", str(src), "bed", "--bwlimit", "1M"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        stage = bed.remote_base / f".{src.name}.model-sync-staging"
        deadline = time.monotonic() + 30
        partial = None
        while time.monotonic() < deadline:
            cands = [p for p in stage.rglob("*weights.bin*") if p.is_file() and 0 < p.stat().st_size < len(big)] \
                if stage.exists() else []
            if cands:
                partial = cands[0]
                break
            time.sleep(0.1)
        assert partial is not None, "the transfer never got under way"
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode != 0
        assert "Traceback" not in err
        assert (dest / "weights.bin").read_bytes() == b"old weights"  # nothing published
        kept = [p for p in stage.rglob("*") if p.is_file() and "weights" in p.name]
        assert kept and 0 < max(p.stat().st_size for p in kept) < len(big), "partial data kept for resume"
        res, doc = push_json(str(src), "bed")
        assert res.returncode == 0, res.stderr
        assert doc["verified"] is True
    finally:
        stop.set()
        t.join()
    assert seen_bad == []
    assert tree(dest) == tree(src)
    assert not stage.exists()


def test_push_not_a_directory_and_missing_remote(bed, tmp_path):
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    res = run_cli("push", str(f), "bed")
    assert res.returncode == 2 and "not a directory" in res.stderr
    res = run_cli("pull", "bed:nope", str(tmp_path))
    assert res.returncode == 2 and "is not a model directory on the server" in res.stderr
    res = run_cli("pull", "bed", str(tmp_path))
    assert res.returncode == 2 and "pull needs a path" in res.stderr


def test_progress_bar_on_a_terminal(bed, model):
    """On a terminal: a rich progress bar and a rich table; no animation when piped."""
    import pty

    exe = str(Path(sys.executable).parent / "model-sync")
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the terminal
        os.execvpe(exe, [exe, "push", str(model), "bed", "--bwlimit", "200K"],
                   dict(os.environ, TERM="xterm", COLUMNS="120"))
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "\x1b[" in text  # rich drew on the terminal
    assert "━" in text  # the progress bar
    assert "Verified" in text and "xxh3-128" in text
