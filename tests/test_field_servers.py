"""Servers that differ the way real ones do (tests/serverbed.py): a login
shell that prints to stdout, zsh, no xxhsum, a Host alias only in
~/.ssh/config; and --bwlimit over several streams (issue 14, items 3, 5, 7)."""

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import xxhash

from conftest import run_cli
from serverbed import BANNER, field, fleet  # noqa: F401  (fixtures)
from test_transfer import make_model

NAME = "RTX3090_N2501_FIELD_250715"
GUARD_FIRST = "case $- in *i*) ;; *) return;; esac\n" + "".join(f"echo '{line}'\n" for line in BANNER)


def _model(tmp_path, files=None) -> Path:
    return make_model(tmp_path / "src" / NAME, files or {"config.json": b"{}\n", "1/model.onnx": os.urandom(50_000)})


def _json(*args, **kw):
    res = run_cli("--json", *args, **kw)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def _left_behind(base: Path) -> list[str]:
    """Entries in a model_base besides a free lock file of NAME (a file
    model-sync keeps between runs; held, it would be left behind)."""
    left = []
    for entry in sorted(os.listdir(base)):
        if entry == f".{NAME}.model-sync-lock":
            with open(base / entry) as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    continue
                except BlockingIOError:
                    pass
        left.append(entry)
    return left


def _says_noise(res, rcfile: str, guard: str):
    """One line, exit 3, naming what the shell printed and how to fix it."""
    err = res.stderr.strip().splitlines()
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr
    line = err[-1]
    assert BANNER[0] in line and "and 1 more line" in line and rcfile in line and guard in line, line
    assert ">&2" in line and "stdout" in line


def test_a_login_shell_that_prints_stops_each_command_first_and_leaves_nothing(field, tmp_path):
    chatty = field.login("chatty")
    base = field.base("chatty")
    assert field.ssh("chatty", "true").stdout.startswith(BANNER[0])  # the variant is what it says
    m = _model(tmp_path)

    res, doc = _json("servers", "--check")
    row = next(c for c in doc["checks"] if c["alias"] == "chatty")
    assert res.returncode == 1 and row["reachable"] is True and BANNER[0] in row["error"], row
    assert all(c["error"] is None for c in doc["checks"] if c["alias"] in ("zsh", "noxxh", "pyxxh", "aliased"))

    # a new model: the inspection that would offer a tar stream; with a filter: the rsync path
    for extra in ([], ["--exclude", "*.tmp"]):
        res = run_cli("push", str(m), "chatty", *extra, timeout=60)
        _says_noise(res, "~/.bashrc", "case $- in *i*) ;; *) return;; esac")
        assert _left_behind(base) == []
    _says_noise(run_cli("list", "chatty", timeout=60), "~/.bashrc", "return")
    _says_noise(run_cli("diff", str(m), "chatty", timeout=60), "~/.bashrc", "return")
    dest = tmp_path / "pulled"
    _says_noise(run_cli("pull", f"chatty:{NAME}", f"{dest}/", timeout=60), "~/.bashrc", "return")
    assert not dest.exists()

    # the fix the message gives works; a published model is then left as it was
    with chatty.replaced(".bashrc", GUARD_FIRST):
        res = run_cli("push", str(m), "chatty", timeout=60)
        assert res.returncode == 0, res.stderr
    published = os.readlink(base / NAME)
    (m / "2").mkdir()
    (m / "2" / "model.onnx").write_bytes(os.urandom(70_000))
    _says_noise(run_cli("push", str(m), "chatty", timeout=60), "~/.bashrc", "return")
    assert os.readlink(base / NAME) == published
    assert [e for e in _left_behind(base) if e not in (NAME, f".{NAME}.model-sync-versions")] == []
    assert not (base / NAME / "2").exists()


def test_a_zsh_login_shell_that_prints_is_named_with_its_own_fix(field, tmp_path):
    zsh = field.login("zsh")
    assert zsh.shell.endswith("/zsh") and zsh.uid != 0
    banner = "".join(f"echo '{line}'\n" for line in BANNER)
    with zsh.replaced(".zshenv", banner):
        for alias in ("zsh", "aliased"):  # (aliased: the same user, by a Host alias in ~/.ssh/config)
            _says_noise(run_cli("list", alias, timeout=60), "~/.zshenv", "[[ -o interactive ]] || return")
    with zsh.replaced(".zshenv", "[[ -o interactive ]] || return\n" + banner):
        res = run_cli("list", "aliased", timeout=60)
        assert res.returncode == 0, res.stderr


def _xxh128(path: Path) -> str:
    h = xxhash.xxh3_128()
    h.update(path.read_bytes())
    return h.hexdigest()


def test_a_server_without_xxhsum_gets_the_senders_xxh3_manifest(field, tmp_path):
    m = _model(tmp_path, {"config.json": b"{}\n", "1/model.onnx": os.urandom(80_000), "tok/a b.txt": b"x\n"})
    want = {p: _xxh128(m / p) for p in ("config.json", "1/model.onnx", "tok/a b.txt")}
    for alias, algorithm in (("noxxh", "sha256"), ("pyxxh", "xxh3-128")):
        assert field.ssh(alias, "command -v xxhsum").stdout == ""
        res, doc = _json("push", str(m), alias)
        assert res.returncode == 0 and doc["verified"] is True and doc["algorithm"] == algorithm, res.stderr
        manifest = field.base(alias) / NAME / ".model-sync.xxh128"
        assert manifest.is_file(), f"{alias}: no manifest"
        lines = dict(reversed(line.split("  ", 1)) for line in manifest.read_text().splitlines())
        assert lines == want
        # the manifest is xxhsum's own: it checks the copy
        check = subprocess.run(["xxhsum", "-c", "--quiet", ".model-sync.xxh128"], cwd=manifest.parent,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        res, doc = _json("push", str(m), alias)
        assert res.returncode == 0 and doc["up_to_date"] is True, res.stderr

        # a pull from it: this machine's copy gets the manifest too, and a re-pull does nothing
        local = tmp_path / f"pulled-{alias}"
        local.mkdir()  # (an existing folder receives FOLDER/NAME)
        res, doc = _json("pull", f"{alias}:{NAME}", f"{local}/")
        assert res.returncode == 0 and doc["verified"] is True, res.stderr
        got = dict(reversed(line.split("  ", 1)) for line in (local / NAME / ".model-sync.xxh128").read_text()
                   .splitlines())
        assert got == want
        res, doc = _json("pull", f"{alias}:{NAME}", f"{local}/")
        assert res.returncode == 0 and doc["up_to_date"] is True, res.stderr


MiB = 1 << 20


def test_bwlimit_is_for_the_whole_transfer_not_each_stream(field, tmp_path):
    # 8 files of 8 MiB: 64 MiB, enough for parallel streams (transfer.PARALLEL_MIN_BYTES)
    m = tmp_path / "src" / NAME
    m.mkdir(parents=True)
    for i in range(8):
        with open(m / f"shard-{i}.bin", "wb") as fh:
            fh.truncate(8 * MiB)
    limit = 12 * MiB  # --bwlimit 12M: MiB/s, as rsync reads it
    start = time.monotonic()
    res, doc = _json("push", str(m), "aliased", "--bwlimit", "12M", "--streams", "8", timeout=120)
    elapsed = time.monotonic() - start
    assert res.returncode == 0 and doc["bytes"] == 64 * MiB, res.stderr
    # a ceiling, with room: per stream it was 8 x the limit
    assert doc["bytes"] / elapsed <= 1.5 * limit, f"{doc['bytes'] / elapsed / MiB:.1f} MiB/s"


def test_bwlimit_rsync_would_refuse_is_refused_before_connecting(field, tmp_path):
    m = _model(tmp_path)
    for rate, why in (("10x", "not a rate"), ("100b", "512 bytes/s")):
        res = run_cli("push", str(m), "aliased", "--bwlimit", rate, timeout=60)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert f"--bwlimit '{rate}'" in line and why in line, line
    assert os.listdir(field.base("aliased")) == []
