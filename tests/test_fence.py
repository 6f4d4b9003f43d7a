"""The fence (model_sync/fence.py) on this machine, without SSH: real
processes in and around a directory, the function run by dash and by bash."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from model_sync.fence import FENCE_SH

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]
# quotes, blanks, glob characters and a backslash: the fence must match them literally
HOSTILE = "st a'g\"e *[x]? \\ $HOME"


def fence(sh: str, *dirs, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sh, "-c", FENCE_SH + 'ms_fence "$@"; echo "rc=$?"', "ms_fence", *map(str, dirs)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def rc(res) -> int:
    assert res.stdout.startswith("rc="), (res.stdout, res.stderr)
    return int(res.stdout.strip()[3:])


class Procs:
    """sleep processes started for a test, each where it should be; all
    stopped at the end, whatever the fence did."""

    def __init__(self):
        self.procs = []

    def sleep(self, cwd: Path, shell_redirect: str = "") -> subprocess.Popen:
        # exec: the sleep itself holds the cwd and the redirected file
        p = subprocess.Popen(["sh", "-c", f"exec sleep 300 {shell_redirect}"], cwd=cwd,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)
        return p

    def settle(self):
        # until every sleep has exec'ed (its redirections opened)
        deadline = time.monotonic() + 10
        for p in self.procs:
            while Path(f"/proc/{p.pid}/comm").read_text().strip() != "sleep":
                assert time.monotonic() < deadline
                time.sleep(0.01)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


def gone(p: subprocess.Popen) -> bool:
    try:
        return p.wait(timeout=5) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def layout(tmp_path):
    top = tmp_path / "top"
    stage = top / HOSTILE
    dest = top / "model"
    (stage / "sub").mkdir(parents=True)
    dest.mkdir()
    (stage / "part.bin").write_bytes(b"x")
    (dest / "w.bin").write_bytes(b"w")
    (dest / "r.bin").write_bytes(b"r")
    # a name that starts with the stage's: outside it (the trailing slash)
    (top / (HOSTILE + "2")).mkdir()
    return top, stage, dest


@pytest.mark.parametrize("sh", SHELLS)
def test_fence_stops_what_is_inside_and_nothing_else(sh, tmp_path, procs):
    top, stage, dest = layout(tmp_path)
    in_stage = procs.sleep(stage / "sub")  # working directory inside
    stopped = procs.sleep(stage)  # a paused writer (stopped below): SIGKILL must reach it too
    reading = procs.sleep(top, "3< " + shlex_quote(stage / "part.bin"))  # a file open inside
    writing = procs.sleep(top, "3>> " + shlex_quote(dest / "w.bin"))  # writes into the model
    # left alone: a reader of the model, a shell cd'ed into it, a neighbour, the parent
    reader = procs.sleep(top, "3< " + shlex_quote(dest / "r.bin"))
    in_model = procs.sleep(dest)
    neighbour = procs.sleep(top / (HOSTILE + "2"))
    parent = procs.sleep(top)
    procs.settle()
    os.kill(stopped.pid, signal.SIGSTOP)
    res = fence(sh, stage, "", dest)
    assert rc(res) == 1, res.stderr
    for p in (in_stage, stopped, reading, writing):
        assert gone(p), p.args
    for p in (reader, in_model, neighbour, parent):
        assert p.poll() is None, p.args
    # nothing left: a second fence finds nothing
    assert rc(fence(sh, stage, "", dest)) == 0


@pytest.mark.parametrize("sh", SHELLS)
def test_fence_with_nothing_there(sh, tmp_path, procs):
    top, stage, dest = layout(tmp_path)
    outside = procs.sleep(top)
    procs.settle()
    assert rc(fence(sh, stage, "", dest)) == 0
    assert rc(fence(sh, tmp_path / "absent", "", tmp_path / "absent too")) == 0
    assert outside.poll() is None


@pytest.mark.parametrize("sh", SHELLS)
def test_fence_spares_its_shell_and_ancestors(sh, tmp_path, procs):
    """Called from inside the directory (model-sync run from there, on this
    machine): the shell that calls it, and what started that, go on."""
    top, stage, dest = layout(tmp_path)
    inside = procs.sleep(stage)
    procs.settle()
    res = fence(sh, ".", cwd=stage)
    assert rc(res) == 1 and gone(inside)


@pytest.mark.parametrize("sh", SHELLS)
def test_fence_never_follows_a_link_in_place_of_a_directory(sh, tmp_path, procs):
    top, stage, dest = layout(tmp_path)
    elsewhere = procs.sleep(top)
    link = tmp_path / "planted"
    link.symlink_to(top)
    procs.settle()
    assert rc(fence(sh, link)) == 0
    assert elsewhere.poll() is None


def test_fence_without_find_lname(tmp_path, procs):
    """A find that lacks -lname (busybox): the same answer, one readlink a link."""
    top, stage, dest = layout(tmp_path)
    in_stage = procs.sleep(stage)
    writing = procs.sleep(top, "3>> " + shlex_quote(dest / "w.bin"))
    reader = procs.sleep(top, "3< " + shlex_quote(dest / "r.bin"))
    procs.settle()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "find").write_text("#!/bin/sh\necho 'find: unrecognized: -lname' >&2; exit 1\n")
    (bin_dir / "find").chmod(0o755)
    res = fence("dash" if "dash" in SHELLS else "sh", stage, "", dest,
                env=dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert rc(res) == 1, res.stderr
    assert gone(in_stage) and gone(writing) and reader.poll() is None


def shlex_quote(p) -> str:
    import shlex

    return shlex.quote(str(p))
