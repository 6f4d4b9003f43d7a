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


# -- item 8: local paths over MCP --------------------------------------------------------------
@pytest.fixture
def anyio_backend():
    return "asyncio"


@asynccontextmanager
async def mcp_session(bed):
    params = StdioServerParameters(command=sys.executable, args=["-m", "model_sync.mcp_server"],
                                   env={"HOME": str(bed.home), "MODEL_SYNC_CONFIG": str(bed.config)})
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


def text_of(result: types.CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    return result.content[0].text


@pytest.mark.anyio
async def test_mcp_says_where_a_relative_local_path_is_taken(bed):
    async with mcp_session(bed) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        for tool, arg in (("push", "model"), ("verify", "model"), ("diff", "model"), ("pull", "local_dir")):
            assert "'local' server's model_base" in tools[tool].input_schema["properties"][arg]["description"], tool
        r = await session.call_tool("push", {"model": "RTX3090_N2501_NOPE_250101", "server": "bed"})
    assert r.is_error
    assert text_of(r) == (f"model 'RTX3090_N2501_NOPE_250101' is not a directory here: "
                          f"{bed.local_base / 'RTX3090_N2501_NOPE_250101'} does not exist (a relative model is "
                          f"taken under the 'local' server's model_base, {bed.local_base}; an absolute path inside "
                          "it works too)")


@pytest.mark.anyio
async def test_mcp_takes_an_absolute_local_path_inside_a_local_model_base(bed, tmp_path):
    src = write_model(bed.local_base / "team" / "RTX3090_N2501_ASR_250101", {"w.bin": b"weights"})
    outside = write_model(tmp_path / "elsewhere" / "RTX3090_N2501_ASR_250101", {"w.bin": b"weights"})
    async with mcp_session(bed) as session:
        r = await session.call_tool("push", {"model": str(src), "server": "bed"})
        assert not r.is_error, text_of(r)
        assert (bed.remote_base / src.name / "w.bin").read_bytes() == b"weights"
        r = await session.call_tool("verify", {"model": str(src), "server": "bed"})
        assert not r.is_error and r.structured_content["ok"] is True, text_of(r)
        r = await session.call_tool("push", {"model": str(outside), "server": "bed", "remote_path": "other"})
        assert r.is_error and text_of(r).startswith(
            f"model '{outside}' is not inside the model_base of a local server ({bed.local_base})")
        (bed.local_base / "link").symlink_to(tmp_path / "elsewhere")  # inside by name, outside in fact
        r = await session.call_tool("pull", {"server": "bed", "remote_path": src.name,
                                             "local_dir": str(bed.local_base / "link")})
        assert r.is_error and "is not inside the model_base of a local server" in text_of(r)
    assert list((tmp_path / "elsewhere").iterdir()) == [outside]


@pytest.mark.anyio
async def test_diff_of_a_local_model_that_does_not_exist_is_an_error(bed, cli):
    write_model(bed.remote_base / "RTX3090_N2501_ASR_250101", {"w.bin": b"weights"})
    async with mcp_session(bed) as session:
        r = await session.call_tool("diff", {"model": "RTX3090_N2501_ASR_250101", "server": "bed"})
    assert r.is_error, text_of(r)
    assert f"{bed.local_base / 'RTX3090_N2501_ASR_250101'} does not exist" in text_of(r)
    # the command line's `local:` spelling of the same
    res = cli("diff", "local:RTX3090_N2501_ASR_250101", "bed")
    assert res.returncode == 2 and "does not exist" in error_line(res)


# -- item 9: config edge cases -------------------------------------------------------------------
def servers_with(bed, text: str):
    bed.write_config(text)
    return run_cli("servers", env={"MODEL_SYNC_CONFIG": str(bed.config)})


def test_a_server_defined_twice_names_both_lines(bed):
    res = servers_with(bed, "servers:\n  reaper:\n    host: a\n    model_base: /m\n"
                            "  tracer:\n    host: b\n    model_base: /m\n"
                            "  reaper:\n    host: c\n    model_base: /n\n")
    assert res.returncode == 2 and res.stdout == ""
    assert error_line(res) == (f"model-sync: error: {bed.config}:8: 'reaper' is defined twice, on lines 2 and 8; "
                               "YAML would keep only the last, so remove or rename one")
    # a key that overrides one a merge key (`<<: *common`) brings in is no duplicate
    res = servers_with(bed, "servers:\n  a: &common {host: h, user: june, model_base: /m}\n"
                            "  b:\n    <<: *common\n    host: h2\n")
    assert res.returncode == 0, res.stderr
    assert "| b | h2 | june |" in res.stdout


def test_a_relative_model_base_is_refused_at_load(bed):
    res = servers_with(bed, "servers:\n  a:\n    host: h\n    model_base: models\n")
    assert res.returncode == 2
    assert error_line(res) == (f"model-sync: error: {bed.config}:4: servers.a.model_base 'models' is not an "
                               "absolute path; give one (/data/models), or one under the home directory (~/models)")


@pytest.mark.parametrize("text", ["", "# nothing yet\n"])
def test_an_empty_config_says_it_has_no_servers(bed, text):
    res = servers_with(bed, text)
    assert res.returncode == 2 and "the file is empty, so no servers are configured" in error_line(res)


def laughs(levels: int) -> str:
    """A port that is a list of lists of aliases: each level ten of the one before."""
    lines = ["servers:", "  a:", "    host: h", "    model_base: /m", "    port:",
             "      - &l0 [" + ", ".join(["lol"] * 10) + "]"]
    lines += [f"      - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_yaml_aliases_cannot_blow_up_a_config(bed):
    # 10 million values once expanded, in a value an error message shows
    res = servers_with(bed, laughs(7))
    assert res.returncode == 2
    line = error_line(res)
    assert line == (f"model-sync: error: {bed.config}:10: YAML aliases repeat the value that starts here into "
                    "more than 100,000 values; write the values out instead")


def test_a_huge_value_is_cut_in_the_message(bed):
    res = servers_with(bed, "servers:\n  a:\n    host: h\n    model_base: /m\n    port: '" + "9" * 100_000 + "'\n")
    assert res.returncode == 2
    line = error_line(res)
    assert "servers.a.port must be a whole number, not a string ('99999" in line and len(line) < 300


def test_servers_are_resolved_side_by_side(bed, monkeypatch):
    # one `ssh -G` per server: a config of thousands listed them one after another
    from model_sync import api, sshconf
    from model_sync.config import load_config

    bed.write_config("servers:\n" + "".join(f"  s{i}:\n    host: h{i}\n    model_base: /m\n" for i in range(8)))
    running, most = [0], [0]
    lock = threading.Lock()

    def ssh_g(argv):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return f"hostname {argv[-1]}\nuser u\nport 22\n"

    monkeypatch.setattr(sshconf, "_ssh_g", ssh_g)
    result = api.list_servers(load_config(bed.config))
    assert [s.host for s in result.servers if not s.local] == [f"h{i}" for i in range(8)]
    assert most[0] > 1


def test_only_a_transfer_is_said_to_resume_after_an_interruption(bed, tmp_path):
    proc = subprocess.Popen([str(VENV_BIN / "model-sync"), "exec", "local", "sleep 8"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            env={**os.environ, "MODEL_SYNC_CONFIG": str(bed.config)})
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == "model-sync: interrupted\n"


# -- item 10: small things ---------------------------------------------------------------------------
def test_no_eta_until_a_rate_is_known():
    from rich.console import Console

    from model_sync.cli import progress_bar, reporter

    clock = [0.0]
    bar = progress_bar(Console(file=io.StringIO()), get_time=lambda: clock[0])
    report = reporter(bar, bar.add_task("transfer", total=None, moving_since=None))

    def eta_at(seconds: float, done: int) -> str:
        clock[0] = seconds
        report(done, 10 << 30)
        out = Console(file=io.StringIO(), width=200)
        out.print(bar.make_tasks_table(bar.tasks))
        return out.file.getvalue().split()[-1]

    assert eta_at(0.1, 0) == "-:--:--"
    assert eta_at(0.2, 64 << 10) == "-:--:--"  # one buffer in 0.1 s: an ETA would be a guess
    assert eta_at(1.0, 3 << 20) == "-:--:--"
    assert eta_at(6.0, 200 << 20) not in ("-:--:--", "")


def test_a_resumed_push_says_so_and_how_much_was_there(bed, tmp_path):
    src = write_model(tmp_path / "RTX3090_N2501_ASR_250101", {"a.bin": os.urandom(1000), "w.bin": os.urandom(300_000)})
    assert run_cli("push", str(src), "bed").returncode == 0
    # what a push interrupted after rsync had sent the new w.bin leaves: the stage
    old = (src / "w.bin").stat().st_mtime
    (src / "w.bin").write_bytes(os.urandom(300_000))
    os.utime(src / "w.bin", (old + 10, old + 10))
    stage = bed.remote_base / f".{src.name}.model-sync-staging"
    stage.mkdir()
    subprocess.run(["cp", "-al", f"{bed.remote_base / src.name}/.", f"{stage}/"], check=True)
    (stage / "w.bin").unlink()
    shutil.copy2(src / "w.bin", stage / "w.bin")
    res = run_cli("push", str(src), "bed", "--format", "markdown")
    assert res.returncode == 0, res.stderr
    assert "Resumed an interrupted push: 300KB of this model was already there and was not sent again" \
        in res.stdout
    (src / "a.bin").write_bytes(b"changed")
    res = run_cli("--json", "push", str(src), "bed")
    doc = json.loads(res.stdout)
    assert doc["resumed"] is False and doc["resumed_bytes"] == 0  # an ordinary push


def test_not_a_directory_comes_before_any_naming_warning(bed, tmp_path):
    loose = tmp_path / "notes.txt"
    loose.write_text("not a model")
    res = run_cli("push", str(loose), "bed")
    assert res.returncode == 2
    assert res.stderr.splitlines()[1:] == [f"model-sync: error: {loose} is not a directory; push sends a "
                                           "model directory"]  # after the banner only the error: no warning


def test_list_modified_is_when_the_files_changed_not_when_pushed(bed, tmp_path):
    month_ago = int(time.time()) - 30 * 86400
    pushed = write_model(tmp_path / "RTX3090_N2501_ASR_250101", {"w.bin": b"w", "sub/c.json": b"{}"},
                         mtime=month_ago)
    assert run_cli("push", str(pushed), "bed").returncode == 0
    # one copied by hand, whose files are newer than its directory
    by_hand = write_model(bed.remote_base / "RTX3090_N2501_ASR_250102", {"w.bin": b"w"}, mtime=month_ago + 60)
    os.utime(by_hand, (month_ago, month_ago))
    doc = json.loads(run_cli("--json", "list", "bed").stdout)
    assert {m["name"]: m["modified"] for m in doc["models"]} == {pushed.name: month_ago,
                                                                  by_hand.name: month_ago + 60}


def test_a_mistyped_server_gets_the_nearest_name(bed, cli):
    res = cli("exec", "bde", "true")
    assert res.returncode == 2
    assert error_line(res).startswith("model-sync: error: unknown server 'bde' (did you mean 'bed'?); "
                                      "configured servers: bed, down, local")
