"""The agent skill: SKILL.md against the real command tree and the spec's
limits, the wrapper script it runs, and the MCP client examples."""

import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
import yaml

from model_sync import docs, errors
from model_sync.cli import cli

REPO = Path(__file__).resolve().parent.parent
SKILL = REPO / "SKILL.md"
SCRIPT = REPO / "scripts" / "model-sync.sh"
VENV_BIN = Path(sys.executable).parent
# commands the skill's examples already use; each lands in cli.py in turn
PLANNED = {"push", "pull", "diff", "list", "versions", "verify", "prune", "exec", "servers"}
ANSI = "\x1b["
BOX = ("┏", "━", "┃", "│")


def skill_parts() -> tuple[dict, str]:
    text = SKILL.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "SKILL.md must start with YAML frontmatter"
    return yaml.safe_load(match.group(1)), match.group(2)


# -- SKILL.md ---------------------------------------------------------------------
def test_frontmatter_follows_the_spec():
    meta, body = skill_parts()
    assert meta["name"] == "model-sync"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", meta["name"]) and len(meta["name"]) <= 64
    assert 0 < len(meta["description"]) <= 1024
    assert len(meta.get("compatibility", "")) <= 500
    for phrase in ("sync model to reaper", "deploy model to server", "모델 동기화", "모델 배포",
                   "rsync 모델", "서버로 전송"):
        assert phrase in meta["description"]
    assert len(body.splitlines()) < 500


def test_command_reference_matches_the_cli():
    text = SKILL.read_text(encoding="utf-8")
    assert docs.refresh(text) == text, "SKILL.md is stale: run python -m model_sync.docs"
    block = docs.BLOCK.search(text).group("body")
    ctx = click.Context(cli)
    for name in cli.list_commands(ctx):
        assert f"#### `{name}`" in block
        assert f"scripts/model-sync.sh {name} " in block or f"scripts/model-sync.sh {name}\n" in block


def test_docs_entry_point_checks_the_repository():
    res = subprocess.run([sys.executable, "-m", "model_sync.docs", "--check"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_refresh_renders_every_marked_block(tmp_path):
    stale = "# Readme\n<!-- commands:start -->\nSTALE TEXT\n<!-- commands:end -->\ntail\n"
    new = docs.refresh(stale)
    assert "STALE TEXT" not in new and new.endswith("<!-- commands:end -->\ntail\n")
    assert "```\nmodel-sync servers [OPTIONS]\n```" in new  # no prog= means the command itself
    assert "- `--check`: Connect to every server" in new
    assert docs.refresh(new) == new


def test_examples_use_real_commands():
    _, body = skill_parts()
    used = set(re.findall(r"scripts/model-sync\.sh (\w+)", body.replace("<command>", "")))
    known = set(cli.list_commands(click.Context(cli)))
    assert PLANNED <= known, f"commands the skill documents are missing: {PLANNED - known}"
    assert used - {"servers"}, "no examples found"
    assert used <= known, f"unknown commands in SKILL.md: {used - known}"


def test_exit_code_table_matches_errors():
    _, body = skill_parts()
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", body, re.M)}
    defined = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert documented == defined


# -- scripts/model-sync.sh -------------------------------------------------------------
def run_in_pty(argv: list[str], env: dict, timeout: float = 60) -> tuple[int, str]:
    """Run with stdout on a terminal, where `auto` output would be rich."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=10), out.decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def script_env(home: Path, path: str, **extra) -> dict:
    return {"PATH": path, "HOME": str(home), "TERM": "xterm-256color", "COLUMNS": "120", **extra}


def fake_python(bindir: Path, body: str) -> Path:
    bindir.mkdir(exist_ok=True)
    exe = bindir / "python3"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return bindir


def test_script_is_executable():
    assert os.access(SCRIPT, os.X_OK)


def test_script_prints_markdown_on_a_terminal(isolated_home):
    env = script_env(isolated_home, f"{VENV_BIN}:/usr/bin:/bin")
    # control: on a terminal the command itself draws rich tables
    code, direct = run_in_pty([str(VENV_BIN / "model-sync"), "servers"], env)
    assert code == 0 and (ANSI in direct or any(c in direct for c in BOX)), direct
    code, out = run_in_pty([str(SCRIPT), "servers"], env)
    assert code == 0, out
    assert "| Alias | Host | User | Port | Model base |" in out
    assert "| local | localhost |" in out
    assert ANSI not in out and not any(c in out for c in BOX)


@pytest.mark.parametrize("args", [["--json", "servers"], ["servers", "--json"], ["servers", "--format", "json"]])
def test_script_leaves_a_chosen_format_alone(isolated_home, args):
    res = subprocess.run([str(SCRIPT), *args], capture_output=True, text=True,
                         env=script_env(isolated_home, f"{VENV_BIN}:/usr/bin:/bin"))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["servers"][0]["alias"] == "local"


def test_script_passes_arguments_verbatim(isolated_home, tmp_path):
    marker = tmp_path / "marker"
    env = script_env(isolated_home, f"{VENV_BIN}:/usr/bin:/bin")
    res = subprocess.run([str(SCRIPT), "exec", f"nosuch$(touch {marker})", "true"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert res.stderr.startswith(f"model-sync: error: unknown server 'nosuch$(touch {marker})'")
    assert not marker.exists()
    res = subprocess.run([str(SCRIPT), "exec", "local", "printf '<%s>' \"a  b\" '$HOME'"],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0 and res.stdout == "<a  b><$HOME>"


def test_script_falls_back_to_the_repository_package(isolated_home, tmp_path):
    # no model-sync on PATH; a python3 that has the dependencies
    bindir = fake_python(tmp_path / "bin", f'exec "{sys.executable}" "$@"')
    res = subprocess.run(["/bin/bash", str(SCRIPT), "--version"], capture_output=True, text=True,
                         env=script_env(isolated_home, str(bindir)))
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("model-sync, version ")


@pytest.mark.parametrize("python", ["lacks the dependencies", "missing"])
def test_script_says_how_to_install(isolated_home, tmp_path, python):
    bindir = tmp_path / "bin"
    if python == "missing":
        bindir.mkdir()
    else:
        fake_python(bindir, "exit 1")
    res = subprocess.run(["/bin/bash", str(SCRIPT), "servers"], capture_output=True, text=True,
                         env=script_env(isolated_home, str(bindir)))
    assert res.returncode == 127
    assert res.stdout == ""
    assert f"Install it with: bash {REPO}/scripts/install.sh" in res.stderr


# -- MCP client examples ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["claude_desktop_config.json", "mcp.json"])
def test_mcp_client_examples_start_our_server(name):
    entry = json.loads((REPO / "examples" / name).read_text())["mcpServers"]["model-sync"]
    assert entry["command"] == "model-sync" and entry["args"] == ["mcp"]
    assert "mcp" in cli.commands
    if name == "mcp.json":
        assert entry["type"] == "stdio"


def test_walkthrough_names_files_that_exist():
    text = (REPO / "examples" / "WALKTHROUGH.md").read_text()
    named = set(re.findall(r"\b((?:examples|scripts)/[\w.-]+)", text))
    assert named
    for rel in named:
        assert (REPO / rel).exists(), rel
