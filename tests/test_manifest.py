"""Listing and hashing on a real server: every hashing method gives the same
answer as local hashing, whatever the file names; the manifest is xxhsum's."""

import hashlib
import os
import subprocess
import sys

import pytest
import xxhash

from model_sync.config import load_config
from model_sync.errors import RemoteError
from model_sync.hosts import LocalHost, open_host
from model_sync.manifest import (SHA256, XXH128, hash_files, hash_local, hash_with_script, list_tree, manifest_text,
                                 parse_manifest)
from model_sync.probe import HostFacts
from model_sync.transfer import _check_rsync

NAMES = ["plain.bin", "with space.bin", "new\nline.bin", "back\\slash.bin", "$(touch PWNED)", "-dash", "모델.bin",
         "sub/dir/deep.bin"]


@pytest.fixture
def files(bed):
    root = bed.remote_base / "m"
    for i, name in enumerate(NAMES):
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1000 + i))
    os.symlink("plain.bin", root / "link")
    return root


def _expected(root, algo):
    out = {}
    for name in NAMES:
        data = (root / name).read_bytes()
        out[name] = xxhash.xxh3_128_hexdigest(data) if algo == XXH128 else hashlib.sha256(data).hexdigest()
    return out


def test_list_tree_one_round_trip_all_names(bed, files):
    host = open_host("bed", load_config())
    try:
        tree = list_tree(host, str(files))
    finally:
        host.close()
    assert set(tree.files) == set(NAMES) | {"link"}
    assert tree.files["link"].kind == "l" and tree.files["link"].target == "plain.bin"
    assert tree.files["plain.bin"].size == 1000
    assert tree.files["plain.bin"].mtime == int((files / "plain.bin").stat().st_mtime)
    assert not (bed.remote_base / "m" / "PWNED").exists()


@pytest.mark.parametrize("method, algo", [("xxhsum", XXH128), ("sha256", SHA256)])
def test_remote_hash_methods_match_local(bed, files, method, algo):
    host = open_host("bed", load_config())
    try:
        got = hash_with_script(host, str(files), NAMES + ["missing.bin"], method)
    finally:
        host.close()
    assert got == _expected(files, algo)
    assert hash_local(files, NAMES, algo) == _expected(files, algo)
    assert not (files / "PWNED").exists() and not (bed.remote_base / "PWNED").exists()


def test_python_xxhash_method(bed, files, monkeypatch):
    # a host whose python3 has the xxhash module: this test's own interpreter
    bindir = bed.home / "pybin"
    bindir.mkdir()
    (bindir / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bindir / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    got = hash_with_script(LocalHost.this_machine(), str(files), NAMES, "python")
    assert got == _expected(files, XXH128)


def test_hash_files_many_files_in_chunks(bed, tmp_path):
    root = bed.remote_base / "many"
    root.mkdir()
    names = [f"{'x' * 150}-{i:05d}.bin" for i in range(900)]  # > one 100 KB chunk of names
    for n in names:
        (root / n).write_bytes(n.encode())
    host = open_host("bed", load_config())
    try:
        got = hash_files(host, str(root), names, "xxhsum")
    finally:
        host.close()
    assert len(got) == 900 and got[names[-1]] == xxhash.xxh3_128_hexdigest(names[-1].encode())


def test_manifest_is_xxhsum_checkable(tmp_path):
    for name in ("a b.bin", "back\\slash", "new\nline"):
        (tmp_path / name).write_bytes(name.encode())
    hashes = hash_local(tmp_path, ["a b.bin", "back\\slash", "new\nline"])
    text = manifest_text(hashes)
    assert "new\nline" not in text  # xxhsum cannot represent it; left out
    (tmp_path / "m.xxh128").write_text(text)
    res = subprocess.run(["xxhsum", "-c", "m.xxh128"], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.count("OK") == 2, res.stdout + res.stderr
    assert parse_manifest(text) == {k: v for k, v in hashes.items() if "\n" not in k}


def test_missing_or_old_rsync_is_refused_with_install_hint():
    base = dict(xxhsum=None, python_xxhash=None, free_bytes=1, base_exists=True)
    with pytest.raises(RemoteError, match=r"rsync is not installed on the server; install rsync 3.2\+ there \(Debian"):
        _check_rsync(HostFacts(rsync_version=None, **base), "reaper")
    with pytest.raises(RemoteError, match=r"has rsync 3.1.3; model-sync needs 3.2\+"):
        _check_rsync(HostFacts(rsync_version="3.1.3", **base), "reaper")
    _check_rsync(HostFacts(rsync_version="3.2.7", **base), "reaper")


def _find_records(root) -> bytes:
    """FIND_FILES's output for a real tree (what the server sends)."""
    from model_sync.manifest import FIND_FILES

    return subprocess.run(["sh", "-c", FIND_FILES], cwd=root, capture_output=True, check=True).stdout


def test_section_reader_same_result_however_the_output_is_split(tmp_path):
    """Listings are parsed while they arrive, in whatever pieces the pipe
    gives: any split (inside a record, a marker or a UTF-8 character) must
    read as the whole output does."""
    import random

    from model_sync.manifest import SectionReader

    root = tmp_path / "m"
    for i in range(300):
        p = root / f"d{i % 7}" / (f"f{i}.bin" if i % 5 else f"n\u00e9\u00fc {i}\nx.bin")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * i)
    os.symlink("d0/f1.bin", root / "link")
    rec = _find_records(root)
    outputs = [
        b"rsync=x\nMANIFEST-BEGIN\n" + b"ab" * 16 + b"  a\n\nMANIFEST-END\n@@DATA\n@@LIST look\0\0" + rec
        + b"@@END\0\0@@LIST target\0\0" + b"\0".join(rec.split(b"\0")[:20]) + b"\0@@END\0\0",
        b"OK\n@@DATA\n@@LIST tree\0\0" + rec + b"@@END\0\0MANIFEST 12.5\n" + b"cd" * 16 + b"  f1.bin\n",
        b"MISSING\n@@DATA\n",
    ]

    def read(chunks):
        r = SectionReader()
        for c in chunks:
            r.feed(c)
        return r.finish()

    rng = random.Random(7)
    for out in outputs:
        whole = read([out])
        assert whole[0] is not None
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(out)), min(len(out) - 1, rng.choice([1, 5, 50, 400]))))
            assert read([out[a:b] for a, b in zip([0] + cuts, cuts + [len(out)])]) == whole
    head, lists, dirs, rest = read([outputs[1]])
    assert head == "OK" and len(lists["tree"]) == 301 and set(dirs["tree"]) == {f"d{i}" for i in range(7)}
    assert lists["tree"]["link"].target == "d0/f1.bin" and rest.startswith("MANIFEST 12.5\n")
    assert lists["tree"]["d5/n\u00e9\u00fc 5\nx.bin"].size == 5


def test_section_reader_drops_a_listing_cut_short():
    """A listing without its closing record is not taken for a complete one
    (an empty or partial listing would read as files to send or delete)."""
    from model_sync.manifest import SectionReader

    r = SectionReader()
    r.feed(b"OK\n@@DATA\n@@LIST tree\0\0f 1 2.0 644 a\0\0f 3 4")
    head, lists, _, _ = r.finish()
    assert head == "OK" and "tree" not in lists
