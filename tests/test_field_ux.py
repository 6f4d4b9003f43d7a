"""What a new user met in the field (issue 14, items 4, 8, 9, 10): the skill
copied on its own, MCP's local paths, config edge cases, and small things a
user notices. Against the real sshd (`bed`), the installed command
(`run_cli`), the MCP SDK's own client over stdio, and a copy of the skill in
a temporary HOME."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client, types

from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def write_model(root: Path, files: dict[str, bytes], mtime: float | None = None) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
    return root


def error_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# -- item 4: the skill copied on its own ----------------------------------------------------
def copy_skill(home: Path) -> Path:
    """What a user does by hand: SKILL.md and scripts/ into the skills folder."""
    skill = home / ".claude" / "skills" / "model-sync"
    (skill / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "SKILL.md", skill / "SKILL.md")
    for name in ("model-sync.sh", "install.sh"):
        shutil.copy2(REPO / "scripts" / name, skill / "scripts" / name)
    return skill


def fake_installer_python(bindir: Path) -> Path:
    """A python3 for install.sh: `-m venv DIR` makes a pip that logs what it
    was asked to install and leaves a model-sync behind (no network here)."""
    bindir.mkdir(exist_ok=True)
    pip = ('#!/bin/sh\necho "$@" >> "$(dirname "$0")/../pip.log"\n'
           'printf \'#!/bin/sh\\necho "model-sync, version 0"\\n\' > "$(dirname "$0")/model-sync"\n'
           'chmod +x "$(dirname "$0")/model-sync"\n')
    exe = bindir / "python3"
    exe.write_text('#!/bin/sh\ncase "$1" in\n  -c) exit 0 ;;\n'
                   '  -m) mkdir -p "$3/bin" && cat > "$3/bin/pip" <<\'EOF\'\n' + pip + 'EOF\n'
                   '      chmod +x "$3/bin/pip" ;;\nesac\n')
    exe.chmod(0o755)
    return bindir


def skill_env(home: Path, path: str, **extra) -> dict:
    # BIN_DIR: never the real /usr/local/bin when the tests run as root
    return {"PATH": path, "HOME": str(home), "BIN_DIR": str(home / "bin"), **extra}


def test_copied_skill_finds_model_sync_installed_off_the_path(isolated_home):
    # install.sh's virtualenv, with ~/.local/bin not on the assistant's PATH
    skill = copy_skill(isolated_home)
    venv_bin = isolated_home / ".local" / "share" / "model-sync" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "model-sync").symlink_to(VENV_BIN / "model-sync")
    assert shutil.which("model-sync", path="/usr/bin:/bin") is None
    res = subprocess.run([str(skill / "scripts" / "model-sync.sh"), "servers"], capture_output=True, text=True,
                         env=skill_env(isolated_home, "/usr/bin:/bin"), cwd=isolated_home)
    assert res.returncode == 0, res.stderr
    assert "| local | localhost |" in res.stdout


def test_hand_copied_skill_prints_an_install_command_that_works(isolated_home, tmp_path):
    skill = copy_skill(isolated_home)
    fake = fake_installer_python(tmp_path / "fakebin")
    env = skill_env(isolated_home, f"{fake}:/usr/bin:/bin")
    res = subprocess.run(["/bin/bash", str(skill / "scripts" / "model-sync.sh"), "servers"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 127 and res.stdout == ""
    command = next(line for line in res.stderr.splitlines() if line.startswith("Install it with: "))
    assert command == f"Install it with: MODEL_SYNC_SOURCE=CHECKOUT bash {skill}/scripts/install.sh"
    # run as printed, CHECKOUT being a clone: it installs from the clone, not from the copy
    home = isolated_home / ".local" / "share" / "model-sync"
    inst = subprocess.run(["/bin/bash", str(skill / "scripts" / "install.sh")], capture_output=True, text=True,
                          env={**env, "MODEL_SYNC_SOURCE": str(REPO)})
    assert inst.returncode == 0, inst.stderr
    assert (home / "pip.log").read_text().split()[-1] == str(REPO)
    # without a source, the copy's installer says what it needs instead of feeding pip the copy
    shutil.rmtree(home)
    inst = subprocess.run(["/bin/bash", str(skill / "scripts" / "install.sh")], capture_output=True, text=True,
                          env=env)
    assert inst.returncode == 2 and "MODEL_SYNC_SOURCE=CHECKOUT" in error_line(inst)
    assert not (home / "pip.log").exists()


def test_skill_copied_by_the_installer_runs_through_its_checkout(isolated_home, tmp_path):
    fake = fake_installer_python(tmp_path / "fakebin")
    target = isolated_home / "skills" / "model-sync"
    inst = subprocess.run(["/bin/bash", str(REPO / "scripts" / "install.sh"), "--skill", str(target)],
                          capture_output=True, text=True, env=skill_env(isolated_home, f"{fake}:/usr/bin:/bin"))
    assert inst.returncode == 0, inst.stderr
    assert (target / "SKILL.md").read_text() == (REPO / "SKILL.md").read_text()
    assert (target / "scripts" / "source").read_text().splitlines()[0] == str(REPO)
    shutil.rmtree(isolated_home / ".local")  # the installed command gone: the copy falls back to its checkout
    # a python3 with model-sync's dependencies, and no model-sync anywhere
    real = tmp_path / "realbin"
    real.mkdir()
    (real / "python3").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (real / "python3").chmod(0o755)
    res = subprocess.run([str(target / "scripts" / "model-sync.sh"), "--version"], capture_output=True, text=True,
                         env=skill_env(isolated_home, f"{real}:/usr/bin:/bin"), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith("model-sync, version "), res.stderr
    # and with no python that can run it, the command it prints is the checkout's installer
    res = subprocess.run(["/bin/bash", str(target / "scripts" / "model-sync.sh"), "servers"], capture_output=True,
                         text=True, env=skill_env(isolated_home, "/nonexistent"))
    assert res.returncode == 127 and f"Install it with: bash {REPO}/scripts/install.sh" in res.stderr


def test_skill_runs_its_script_by_full_path_never_from_its_own_folder():
    text = (REPO / "SKILL.md").read_text()
    assert "paths are from this skill's directory" not in text
    assert "Never `cd` into the skill's directory" in text
    assert "No model directory named?" in text
    commands = []
    for block in text.split("```bash")[1:]:
        commands += [ln.strip() for ln in block.split("```", 1)[0].splitlines() if ln.strip()]
    assert commands
    for line in commands:  # a relative scripts/... only works from inside the skill's folder
        assert line.startswith(("SKILL_DIR/scripts/model-sync.sh ", "~/.claude/skills/model-sync/scripts/")), line
