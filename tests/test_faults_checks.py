"""Checks that check (issue 13, items 6 to 8), against the real sshd:

- `diff --checksum` reads the bytes on both ends; no manifest stands in for them;
- the quick check compares mtimes to the nanosecond (to the second where a
  copy only has whole seconds), and rsync compares as finely as the plan;
- the free-space check counts what a staging copy left behind holds, and
  when it still does not fit, says so and how to drop that copy.

Faults are injected by hand: a byte flipped under a kept mtime, times set to
the nanosecond, a small tmpfs under the test's model base."""

import json
import os
import shlex
import shutil
import subprocess

import pytest

from conftest import run_cli
from test_transfer import make_model, push_json, tree
from test_transfer_edges import _queued_push

SECOND = 1_700_000_000  # a whole second some time ago: every file of a model gets it
MiB = 1 << 20


def _flip_keeping_mtime(path):
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[7] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _set_times(root, nsec):
    """Every file of root to SECOND plus nsec nanoseconds."""
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, ns=(SECOND * 10**9, SECOND * 10**9 + nsec))


# -- 6: diff --checksum ----------------------------------------------------------------
def test_checksum_reads_the_bytes_on_both_ends(bed, tmp_path):
    model = make_model(tmp_path / "src" / "M", {"config.json": b"{}\n" * 30, "w.bin": os.urandom(40_000)})
    _set_times(model, 123_456_789)  # older than the manifests the pushes write
    for alias in ("bed", "local"):
        res = run_cli("push", str(model), alias)
        assert res.returncode == 0, res.stderr
    on_bed, on_local = bed.remote_base / "M" / "w.bin", bed.local_base / "M" / "w.bin"

    _flip_keeping_mtime(on_bed)  # the right side: its manifest still has the old hash
    res = run_cli("--json", "diff", str(model), "bed", "--checksum")
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert [e["path"] for e in doc["entries"] if e["status"] == "modified"] == ["w.bin"]
    assert doc["left"]["hashed"] == 2 and doc["right"]["hashed"] == 2

    _flip_keeping_mtime(on_local)  # the left side of a server-to-server diff, with a manifest too
    res = run_cli("--json", "diff", "local:M", str(model), "--checksum")
    assert res.returncode == 1, res.stdout + res.stderr
    assert [e["path"] for e in json.loads(res.stdout)["entries"] if e["status"] == "modified"] == ["w.bin"]

    # push keeps rsync's quick check (size and mtime): by design it sees
    # nothing to do; verify (and diff --checksum) are what read the bytes
    assert push_json(str(model), "bed")[1]["up_to_date"] is True
    assert run_cli("verify", str(model), "bed").returncode == 4


# -- 7: mtimes to the nanosecond --------------------------------------------------------
def _twins(tmp_path):
    """Two different models: same names, sizes and mtime seconds, other nanoseconds."""
    a = make_model(tmp_path / "a" / "M", {"config.json": b"A" * 100, "w/model.bin": os.urandom(60_000)})
    b = make_model(tmp_path / "b" / "M", {"config.json": b"B" * 100, "w/model.bin": os.urandom(60_000)})
    _set_times(a, 111_111_111)
    _set_times(b, 222_222_222)
    return a, b


def test_same_second_other_nanoseconds_is_sent(bed, tmp_path):
    a, b = _twins(tmp_path)
    assert push_json(str(a), "bed")[0].returncode == 0
    dest = bed.remote_base / "M"
    res, doc = push_json(str(b), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["up_to_date"] is False and doc["published"] is True and doc["verified"] is True
    assert sorted(doc["sent"]) == ["config.json", "w/model.bin"]  # rsync too compared the nanoseconds
    assert tree(dest) == tree(b)
    # rsync keeps the nanoseconds, so the copy now matches exactly
    assert (dest / "w" / "model.bin").stat().st_mtime_ns == (b / "w" / "model.bin").stat().st_mtime_ns
    assert push_json(str(b), "bed")[1]["up_to_date"] is True

    # a copy on a filesystem that keeps only seconds: up to date when the
    # seconds agree, and a change sends what changed, not every file again
    _set_times(dest, 0)
    assert push_json(str(b), "bed")[1]["up_to_date"] is True
    (b / "config.json").write_bytes(b"B" * 101)
    res, doc = push_json(str(b), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["sent"] == ["config.json"] and tree(dest) == tree(b)


def test_race_the_second_push_sends_what_the_first_published(bed, tmp_path):
    """B inspects an absent destination, waits for the lock while A is
    published there, then finds A in its stage: same sizes and seconds."""
    a, b = _twins(tmp_path)
    dest = bed.remote_base / "M"
    with _queued_push(bed, "M", "--json", "push", str(b), "bed") as proc:
        shutil.copytree(a, dest)  # A, published meanwhile (copy2: times to the ns)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert sorted(doc["sent"]) == ["config.json", "w/model.bin"] and doc["verified"] is True
    assert tree(dest) == tree(b)


def test_nanoseconds_are_read_and_compared_at_the_coarser_precision():
    from model_sync.manifest import FileEntry, parse_listing, same_nsec

    files, _ = parse_listing("f 5 1700000000.1234567890 644 a\0\0f 5 1700000000.0000000000 644 b\0\0"
                             "f 5 1700000000 644 c\0\0")
    assert (files["a"].mtime, files["a"].nsec) == (1700000000, 123456789)
    assert files["b"].nsec == files["c"].nsec == 0
    assert same_nsec(123456789, 123456789) and not same_nsec(111111111, 222222222)
    assert same_nsec(0, 123456789) and same_nsec(123456789, 0)  # a whole-second copy: to the second
    assert same_nsec(123456000, 123456789) and not same_nsec(123457000, 123456789)  # microseconds
    quick = FileEntry("x", 5, 1700000000, nsec=1)
    assert not quick.same_quick(FileEntry("x", 5, 1700000000, nsec=2))
    assert not quick.same_quick(FileEntry("x", 5, 1700000001, nsec=1))


# -- 8: free space with a staging copy left behind --------------------------------------
@pytest.fixture
def small_disk(bed):
    """bed's model base on a 32 MiB tmpfs."""
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(bed.remote_base)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield bed.remote_base
    finally:
        if subprocess.run(["umount", str(bed.remote_base)]).returncode != 0:
            subprocess.run(["umount", "-l", str(bed.remote_base)])


def _leave_stage(base, model, partial: int = 0):
    """What an interrupted push leaves: a.bin and b.bin finished (as the
    source has them), c.bin a partial file in rsync's partial directory."""
    stage = base / f".{model.name}.model-sync-staging"
    stage.mkdir()
    for name in ("a.bin", "b.bin"):
        shutil.copy2(model / name, stage / name)
    if partial:
        (stage / ".rsync-partial").mkdir()
        (stage / ".rsync-partial" / "c.bin").write_bytes((model / "c.bin").read_bytes()[:partial])
    return stage


def test_free_space_counts_the_stage_and_says_how_to_drop_it(small_disk, tmp_path):
    base = small_disk
    model = make_model(tmp_path / "src" / "M", {n: os.urandom(6 * MiB) for n in ("a.bin", "b.bin", "c.bin")})
    dest = base / "M"

    # 12 of 18 MiB in the stage, 12 MiB free: less than the model, enough for the rest
    stage = _leave_stage(base, model)
    (base / "filler").write_bytes(b"\0" * (8 * MiB))
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["sent"] == ["c.bin"] and doc["published"] is True and tree(dest) == tree(model)
    dest.unlink()  # the published link, and its versions
    shutil.rmtree(base / ".M.model-sync-versions")

    # and a partial c.bin, 5 MiB free: rsync writes c.bin whole beside its partial, so it does not fit
    stage = _leave_stage(base, model, partial=4 * MiB)
    (base / "filler").write_bytes(b"\0" * (11 * MiB))
    res = run_cli("push", str(model), "bed")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("model-sync: error:")]
    assert len(errors) == 1, res.stderr
    err = errors[0]
    assert "not enough space" in err and str(stage) in err, err
    assert "holds 12.6MB of this model already" in err and "4.2MB in partial files" in err, err
    assert stage.is_dir() and not dest.exists()
    # the command the message gives drops the stage; then the model fits
    command = shlex.split(err.rsplit("): ", 1)[1])
    assert command[:3] == ["model-sync", "exec", "bed"], command
    assert run_cli(*command[1:]).returncode == 0
    assert not stage.exists()
    res, doc = push_json(str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert tree(dest) == tree(model)
