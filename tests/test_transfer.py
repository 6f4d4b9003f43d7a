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
import xxhash

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
    import pwd

    login_home = Path(pwd.getpwuid(os.getuid()).pw_dir)  # where remote commands start
    assert not list(login_home.glob("PWNED*"))
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
    assert tree(out / model.name) == tree(model)  # out did not exist: it is made, the model lands inside
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
        # nothing was transferred (the lock file stays, as after every push)
        assert [p.name for p in small.iterdir()] in ([], [".m.model-sync-lock"])
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
        seen = []
        for line in proc.stderr:  # queued behind the lock: it says so, and waits
            seen.append(line)
            if line.startswith("waiting: another model-sync holds this destination"):
                break
        assert proc.poll() is None, seen
        assert not (bed.remote_base / model.name).exists()
        release.set()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(seen) + err
    finally:
        release.set()
        t.join()
        host.close()
    assert tree(bed.remote_base / model.name) == tree(model)


def test_interrupted_push_resumes_and_never_shows_partial_files(bed, tmp_path):
    big = os.urandom(6_000_000)
    src = make_model(tmp_path / "src" / "RTX3090_N2501_BIG_250101", {"a.bin": os.urandom(1000), "weights.bin": big})
    dest = bed.remote_base / src.name
    # an older copy published by model-sync (its manifest says so) that readers are using meanwhile
    dest.mkdir()
    (dest / "weights.bin").write_bytes(b"old weights")
    (dest / ".model-sync.xxh128").write_text(f"{xxhash.xxh3_128_hexdigest(b'old weights')}  weights.bin\n")
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


# -- what an interrupted run leaves behind, and destinations that need care ----------------------
def _stage_of(bed, name):
    return bed.remote_base / f".{name}.model-sync-staging"


def _leave_finished_stage(bed, model, new_bytes):
    """What a push killed after rsync finished (before publishing) leaves:
    a hard-link clone of the published copy with the new file in it."""
    import shutil

    dest = bed.remote_base / model.name
    stage = _stage_of(bed, model.name)
    subprocess.run(["cp", "-al", f"{dest}/.", f"{stage}/"], check=True) if stage.mkdir() is None else None
    old = (model / "1" / "model.onnx").stat().st_mtime
    (model / "1" / "model.onnx").write_bytes(new_bytes)
    # a later second than the old copy: a same-size rewrite within one second
    # is invisible to the size-and-mtime check (rsync's too)
    os.utime(model / "1" / "model.onnx", (old + 10, old + 10))
    (stage / "1" / "model.onnx").unlink()
    shutil.copy2(model / "1" / "model.onnx", stage / "1" / "model.onnx")  # same size and mtime as the source
    return dest, stage


def test_resume_after_rsync_finished_publishes_and_verifies(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    new = os.urandom(300_000)
    dest, stage = _leave_finished_stage(bed, model, new)
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["files"] == 0  # rsync had nothing left to send...
    assert doc["verified"] is True and doc["published"] is True
    assert (dest / "1" / "model.onnx").read_bytes() == new  # ...and the finished work was published
    assert not stage.exists()
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_resume_catches_a_corrupt_file_left_in_the_stage(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    dest, stage = _leave_finished_stage(bed, model, os.urandom(300_000))
    bad = stage / "1" / "model.onnx"
    st = bad.stat()
    data = bytearray(bad.read_bytes())
    data[10] ^= 1
    bad.write_bytes(bytes(data))
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    old = (dest / "1" / "model.onnx").read_bytes()
    res = run_cli("push", str(model), "bed")
    assert res.returncode == 4 and "1/model.onnx" in res.stderr and "nothing was published" in res.stderr
    assert (dest / "1" / "model.onnx").read_bytes() == old
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0 and doc["sent"] == ["1/model.onnx"]
    assert tree(dest) == tree(model)


def test_stale_stage_keeps_what_the_destination_gained(bed, model):
    assert push_json(str(model), "bed")[0].returncode == 0
    dest = bed.remote_base / model.name
    stage = _stage_of(bed, model.name)
    subprocess.run(["cp", "-al", f"{dest}/", str(stage)], check=True)  # an old interrupted run's stage
    (dest / "added-later.txt").write_bytes(b"someone put this here")
    half = bed.remote_base / f".{model.name}.model-sync-staging.tmp"  # and a half-made clone
    half.mkdir()
    (model / "config.pbtxt").write_bytes(b"name: v2\n")
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert (dest / "added-later.txt").read_bytes() == b"someone put this here"  # not lost without --delete
    assert (dest / "config.pbtxt").read_bytes() == b"name: v2\n"
    assert not half.exists() or not any(half.iterdir())


@pytest.mark.parametrize("kind", ["symlink", "file", "model_base"])
def test_destinations_that_would_be_damaged_are_refused(bed, model, tmp_path, kind):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.bin").write_bytes(b"keep")
    if kind == "symlink":
        os.symlink(real, bed.remote_base / "current")
        target, why = "bed:current", "is a symlink"
    elif kind == "file":
        (bed.remote_base / "afile").write_bytes(b"x")
        target, why = "bed:afile", "is not a directory"
    else:
        target, why = f"bed:{bed.remote_base}", "is the model store itself"
    res = run_cli("push", str(model), target, "--delete", "--yes")
    assert res.returncode == 2 and why in res.stderr, res.stderr
    assert (real / "keep.bin").read_bytes() == b"keep" and list(real.iterdir()) == [real / "keep.bin"]
    if kind == "file":
        assert (bed.remote_base / "afile").read_bytes() == b"x"


def test_excluded_files_stay_out_of_the_manifest(bed, model):
    res, doc = push_json(str(model), "bed", "--exclude", "*.plan")
    assert res.returncode == 0, res.stderr
    dest = bed.remote_base / model.name
    assert not (dest / "1" / "model.plan").exists()
    text = (dest / ".model-sync.xxh128").read_text()
    assert "model.plan" not in text
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_newline_in_the_model_directory_name(bed, tmp_path):
    src = make_model(tmp_path / "src" / "weird\nname", {"w.bin": b"weights"})
    (bed.remote_base / "weird").mkdir()  # an unrelated model the name must not be confused with
    (bed.remote_base / "weird" / "other.bin").write_bytes(b"other")
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0, res.stderr
    assert (bed.remote_base / "weird\nname" / "w.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in (bed.remote_base / "weird").iterdir()) == ["other.bin"]


def test_two_concurrent_pushes_never_mix(bed, tmp_path):
    a = make_model(tmp_path / "a" / "RTX3090_N2501_RACE_250101", {f"f{i}.bin": b"A" * 200_000 for i in range(4)})
    b = make_model(tmp_path / "b" / "RTX3090_N2501_RACE_250101", {f"f{i}.bin": b"B" * 200_000 for i in range(4)})
    procs = [subprocess.Popen([sys.executable, "-m", "model_sync.cli", "--json", "push", str(m), "bed"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for m in (a, b)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dest = bed.remote_base / a.name
    got = tree(dest)
    assert got in (tree(a), tree(b))  # all of one push, none of a mix
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_push_through_the_skill_script(bed, model):
    script = Path(__file__).resolve().parent.parent / "scripts" / "model-sync.sh"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    res = subprocess.run(["bash", str(script), "push", str(model), "bed"], capture_output=True, text=True, env=env,
                         stdin=subprocess.DEVNULL, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "| Verified | yes (xxh3-128) |" in res.stdout and "\x1b[" not in res.stdout
    assert tree(bed.remote_base / model.name) == tree(model)


def test_cancel_stops_rsync_keeps_partial_and_publishes_nothing(bed, tmp_path):
    """What an MCP cancel or time limit does: the core's cancel event."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import ModelSyncError
    from model_sync.transfer import TransferOptions

    src = make_model(tmp_path / "src" / "RTX3090_N2501_CANCEL_250101", {"w.bin": os.urandom(4_000_000)})
    cancel = threading.Event()

    def progress(done, total):
        if done > 0:
            cancel.set()

    with pytest.raises(ModelSyncError, match="cancelled during the transfer; nothing was published"):
        api.push(str(src), "bed", load_config(), opts=TransferOptions(bwlimit="500K"), progress=progress,
                 cancel=cancel)
    assert not (bed.remote_base / src.name).exists()
    assert _stage_of(bed, src.name).exists()  # kept for resume
    res, doc = push_json(str(src), "bed")
    assert res.returncode == 0 and doc["verified"] is True
    assert tree(bed.remote_base / src.name) == tree(src)


def test_lock_lets_go_when_the_holder_goes_silent(bed, model):
    """A holder whose connection stays open but says nothing (a dead network,
    a frozen machine) loses the lock once its heartbeats stop."""
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from model_sync.config import load_config
from model_sync.hosts import open_host
host = open_host("bed", load_config())
with host.lock({str(bed.remote_base / f".{model.name}.model-sync-lock")!r}, stale_after=5):
    print("held", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGSTOP)  # socket open, no heartbeats, no goodbye
        bed.write_config(bed.config.read_text().replace("  connect_timeout: 5\n", "  connect_timeout: 5\n  io_timeout: 5\n"))
        res = run_cli("--json", "push", str(model), "bed", timeout=180)
        assert res.returncode == 0, res.stderr
        assert "waiting: another model-sync holds this destination" in res.stderr
        assert tree(bed.remote_base / model.name) == tree(model)
    finally:
        holder.kill()
        holder.wait()


def test_parallel_streams_carry_everything(bed, tmp_path, monkeypatch):
    """Several rsync streams for the files, then the ordinary pass for the
    rest: the result is the same tree, every file verified once."""
    from model_sync import api, transfer
    from model_sync.config import load_config
    from model_sync.transfer import TransferOptions

    monkeypatch.setattr(transfer, "PARALLEL_MIN_BYTES", 0)
    calls = []
    real_run = transfer.run_rsync

    def counting(argv, *a, **kw):
        calls.append(argv)
        return real_run(argv, *a, **kw)

    monkeypatch.setattr(transfer, "run_rsync", counting)
    files = {name: os.urandom(50_000 + i) for i, name in enumerate(HOSTILE)}
    files.update({f"shards/model-{i:05d}-of-00004.safetensors": os.urandom(120_000) for i in range(4)})
    src = make_model(tmp_path / "src" / "RTX3090_N2501_STREAMS_250101", files)
    os.symlink("shards/model-00000-of-00004.safetensors", src / "latest.safetensors")
    (src / "empty-dir").mkdir()
    seen = []
    res = api.push(str(src), "bed", load_config(), opts=TransferOptions(streams=3),
                   progress=lambda done, total: seen.append((done, total)))
    dest = bed.remote_base / src.name
    assert tree(dest) == tree(src)
    assert os.readlink(dest / "latest.safetensors") == "shards/model-00000-of-00004.safetensors"
    assert (dest / "empty-dir").is_dir()
    assert sorted(res.sent) == sorted(files) and res.verified is True
    assert seen[-1][0] == seen[-1][1] == sum(len(v) for v in files.values())
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    streamed = [a for a in calls if any(x.startswith("--files-from=") for x in a)]
    assert len(streamed) == 3 and len(calls) == 4  # three streams, then the ordinary pass
    # and an update with --delete through the same path
    (src / "shards" / "model-00003-of-00004.safetensors").unlink()
    (src / HOSTILE[0]).write_bytes(b"changed")
    res = api.push(str(src), "bed", load_config(), opts=TransferOptions(streams=3, delete=True, confirmed=True))
    assert res.sent == [HOSTILE[0]] and res.deleted == ["shards/model-00003-of-00004.safetensors"]
    assert tree(dest) == tree(src)
