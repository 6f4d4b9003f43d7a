"""Faults around the destination: names of ours taken by planted links,
destinations model-sync must not replace, readers during a publish, and
flushing before a publish. Against the real sshd of conftest (and the
`local` alias, where a test must see what the publish runs)."""

import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from test_transfer import make_model, tree

NAME = "RTX3090_N2501_FAULTS_250101"


def _model(tmp_path, tag: bytes = b"v1", files: int = 3, size: int = 1000) -> Path:
    return make_model(tmp_path / "src" / NAME, {f"shard-{i:02d}.bin": tag + os.urandom(size) for i in range(files)})


# -- 3. planted links at our names --------------------------------------------------
@pytest.mark.parametrize("suffix", [".model-sync-staging", ".model-sync-lock", ".model-sync-versions"])
def test_a_link_planted_at_one_of_our_names_is_refused_and_never_followed(bed, tmp_path, suffix):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.bin").write_bytes(b"keep me")
    src = _model(tmp_path)
    os.symlink(outside if suffix != ".model-sync-lock" else outside / "lockfile",
               bed.remote_base / f".{NAME}{suffix}")
    res = run_cli("push", str(src), "bed", "--delete", "--yes")
    assert res.returncode == 2, res.stderr
    assert "not what model-sync left there" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # banner + one error line
    assert sorted(os.listdir(outside)) == ["precious.bin"]  # nothing written or deleted through the link
    assert (outside / "precious.bin").read_bytes() == b"keep me"
    assert not (bed.remote_base / NAME).exists()


def test_a_link_planted_at_the_lock_of_a_local_pull_is_refused(bed, tmp_path):
    src = _model(tmp_path)
    assert run_cli("push", str(src), "bed").returncode == 0
    out = tmp_path / "pulled"
    out.mkdir()
    os.symlink(tmp_path / "elsewhere", out / f".{NAME}.model-sync-lock")
    res = run_cli("pull", f"bed:{NAME}", str(out))
    assert res.returncode == 2 and "not what model-sync left there" in res.stderr, res.stderr
    assert not (tmp_path / "elsewhere").exists()


# -- 4. destinations model-sync did not publish ---------------------------------------
@pytest.mark.parametrize("where", ["/etc", "/usr/lib/x", "/", "/home/someone"])
def test_system_places_are_refused_always(bed, tmp_path, where):
    src = _model(tmp_path)
    for extra in ([], ["--dry-run"], ["--force"]):
        res = run_cli("push", str(src), f"bed:{where}", *extra)
        assert res.returncode == 2, (extra, res.stderr)
        assert "system or home directory" in res.stderr


def test_an_existing_directory_not_ours_is_refused_unless_forced(bed, tmp_path):
    other = tmp_path / "someones-data"
    other.mkdir()
    (other / "notes.txt").write_bytes(b"not a model")
    src = _model(tmp_path)
    for extra in ([], ["--dry-run"]):
        res = run_cli("push", str(src), f"bed:{other}", *extra)
        assert res.returncode == 2 and "was not published by model-sync" in res.stderr, res.stderr
        assert "--force" in res.stderr
    assert sorted(os.listdir(other)) == ["notes.txt"]
    res = run_cli("push", str(src), f"bed:{other}", "--force")
    assert res.returncode == 0, res.stderr
    assert tree(other) == {**tree(src), "notes.txt": b"not a model"}  # (no --delete: what was there stays)
    # published by model-sync now: the next push needs no --force
    (src / "shard-00.bin").write_bytes(b"v2")
    assert run_cli("push", str(src), f"bed:{other}").returncode == 0
    assert tree(other) == {**tree(src), "notes.txt": b"not a model"}


# -- 5. readers during publishes ---------------------------------------------------------
def _read_version(root: str, pause: float) -> tuple[set, bool]:
    """Every file under root, read by path (a pause half-way, as a slow
    loader has): (the version tags seen, whether a listed file vanished)."""
    tags = set()
    names = sorted(n for n in os.listdir(root) if not n.startswith("."))  # (not the manifest)
    for i, n in enumerate(names):
        if i == len(names) // 2:
            time.sleep(pause)
        try:
            with open(os.path.join(root, n), "rb") as fh:
                tags.add(fh.read(3))
        except FileNotFoundError:
            return tags, True
    return tags, False


def test_readers_that_resolve_once_see_exactly_one_version(bed, tmp_path):
    """A reader that resolves the model's path once (realpath) reads one
    whole version, and keeps it while newer ones are published; a reader
    that opens every file by the model's own path may see two (counted,
    and documented in the README)."""
    dest = bed.remote_base / NAME
    src = _model(tmp_path, b"v00", files=40, size=20_000)
    assert run_cli("push", str(src), "bed").returncode == 0
    stop = threading.Event()
    seen = {"once": [0, 0, 0], "path": [0, 0, 0]}  # reads, mixed, vanished

    def reader(kind: str):
        while not stop.is_set():
            root = os.path.realpath(dest) if kind == "once" else str(dest)
            tags, vanished = _read_version(root, 0.05)
            counts = seen[kind]
            counts[0] += 1
            counts[1] += len(tags) > 1
            counts[2] += vanished

    threads = [threading.Thread(target=reader, args=(k,)) for k in ("once", "path")]
    for t in threads:
        t.start()
    try:
        for v in range(1, 9):
            for f in src.iterdir():
                f.write_bytes(b"v%02d" % v + os.urandom(20_000))
            res = run_cli("push", str(src), "bed")
            assert res.returncode == 0, res.stderr
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"resolve-once readers: {seen['once']}, per-file path readers: {seen['path']} (reads, mixed, vanished)")
    assert seen["once"][0] >= 8
    assert seen["once"][1:] == [0, 0], seen
    assert tree(dest) == tree(src)
    # the published name is a link into an immutable version; older versions wait out their grace
    assert os.path.islink(dest) and os.readlink(dest).startswith(f".{NAME}.model-sync-versions/")
    versions = [p for p in (bed.remote_base / f".{NAME}.model-sync-versions").iterdir() if p.is_dir()]
    assert len(versions) == 9


def test_replaced_versions_go_after_their_grace(bed, tmp_path):
    bed.write_config(bed.config.read_text().replace("defaults:\n", "defaults:\n  keep_old_minutes: 0\n"))
    src = _model(tmp_path)
    for v in (b"v1", b"v2", b"v3"):
        (src / "shard-00.bin").write_bytes(v)
        assert run_cli("push", str(src), "bed").returncode == 0
    versions = bed.remote_base / f".{NAME}.model-sync-versions"
    assert [p.name for p in versions.iterdir()] == [os.readlink(bed.remote_base / NAME).rsplit("/", 1)[1]]
    # list, diff, pull and prune see the model through its link
    listed = json.loads(run_cli("--json", "list", "bed").stdout)
    assert [m["name"] for m in listed["models"]] == [NAME]
    assert run_cli("diff", str(src), f"bed:{NAME}", "--checksum").returncode == 0
    out = tmp_path / "back"
    out.mkdir()
    assert run_cli("pull", f"bed:{NAME}", str(out)).returncode == 0
    assert tree(out / NAME) == tree(src)


def test_a_directory_published_by_an_older_model_sync_becomes_a_version(bed, tmp_path):
    """The first publish over a real directory (an older model-sync's) swaps
    in the link in one step; the old directory is kept as a version."""
    src = _model(tmp_path)
    dest = bed.remote_base / NAME
    dest.mkdir()
    (dest / "old.bin").write_bytes(b"old")
    (dest / ".model-sync.xxh128").write_text("00000000000000000000000000000000  old.bin\n")
    res = run_cli("--json", "push", str(src), "bed")
    assert res.returncode == 0, res.stderr
    assert os.path.islink(dest) and tree(dest) == {**tree(src), "old.bin": b"old"}
    kept = [p for p in (bed.remote_base / f".{NAME}.model-sync-versions").iterdir() if p.is_dir()]
    assert len(kept) == 2 and any((p / "old.bin").exists() and not (p / "shard-00.bin").exists() for p in kept)


# -- 11. published means durable -------------------------------------------------------
def _sync_spy(tmp_path) -> tuple[dict, Path]:
    """A `sync` first on PATH that logs its arguments, then runs the real one."""
    spy = tmp_path / "spybin"
    spy.mkdir()
    log = tmp_path / "sync.log"
    real = "/bin/sync" if os.path.exists("/bin/sync") else "/usr/bin/sync"
    (spy / "sync").write_text(f"#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\" >> {log}; done\n"
                              f"exec {real} \"$@\"\n")
    (spy / "sync").chmod(0o755)
    return {"PATH": f"{spy}:{os.environ['PATH']}"}, log


@pytest.mark.parametrize("flag", [[], ["--no-fsync"]])
def test_every_file_is_flushed_before_the_publish(bed, tmp_path, flag):
    env, log = _sync_spy(tmp_path)
    src = _model(tmp_path)
    res = run_cli("push", str(src), "local", *flag, env=env)
    assert res.returncode == 0, res.stderr
    flushed = log.read_text().splitlines() if log.exists() else []
    if flag:
        assert flushed == []
        return
    stage = str(bed.local_base / f".{NAME}.model-sync-staging")
    for f in ["shard-00.bin", "shard-01.bin", "shard-02.bin", ".model-sync.xxh128"]:
        assert f"{stage}/{f}" in flushed, flushed
    assert str(bed.local_base / f".{NAME}.model-sync-versions") in flushed  # the rename into it
    assert str(bed.local_base) in flushed  # the link's rename


def test_a_model_of_many_files_is_flushed_by_its_filesystem(bed, tmp_path):
    """From 256 files on, one syncfs (`sync -f`) of the stage's filesystem
    stands for thousands of fsyncs; the renames are flushed as before."""
    env, log = _sync_spy(tmp_path)
    src = make_model(tmp_path / "src" / NAME, {f"f{i:04d}.txt": b"%d" % i for i in range(300)})
    res = run_cli("push", str(src), "local", env=env)
    assert res.returncode == 0, res.stderr
    flushed = log.read_text().splitlines()
    stage = str(bed.local_base / f".{NAME}.model-sync-staging")
    assert flushed[:3] == ["-f", "--", stage], flushed[:5]
    assert not any(f.startswith(stage + "/") for f in flushed)
    assert str(bed.local_base) in flushed
