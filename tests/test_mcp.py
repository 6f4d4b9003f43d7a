"""The MCP server, driven by the SDK's real client.

Tool tests start the server as a subprocess over stdio against the test sshd;
the helper tests (confirmation, time limits, progress) use an in-process
server, since the tools that need them (push, prune) come later."""

import json
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import anyio
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client, types
from mcp.server.mcpserver import Context

from conftest import bed_config
from model_sync import mcp_server
from model_sync.api import ExecResult
from model_sync.errors import UsageError
from model_sync.mcp_server import (
    DESTRUCTIVE, READ_ONLY, REDACTED, CallAbandoned, Confirm, Confirmed, ModelSyncMCP, call, confirmation,
    inside_base, local_path, require_confirmation,
)
from sshbed import keygen

pytestmark = pytest.mark.anyio

TOOLS = {"list_servers", "exec", "push", "pull", "verify", "list_models", "versions", "diff", "prune"}
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def anyio_backend():
    return "asyncio"


def server_env(bed, **extra) -> dict:
    return {"HOME": str(bed.home), "MODEL_SYNC_CONFIG": str(bed.config), **extra}


@asynccontextmanager
async def connect(env: dict, argv: list[str] | None = None):
    """A ClientSession on a fresh server process (protocol 2025-11-25)."""
    argv = argv or [sys.executable, "-m", "model_sync.mcp_server"]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


@pytest.fixture
async def session(bed):
    async with connect(server_env(bed)) as s:
        yield s


def allow_exec(bed, extra_servers: str = ""):
    bed.write_config(bed_config(bed.sshd, bed.remote_base, bed.local_base, bed.down_port,
                                extra_servers + "mcp:\n  allow_exec: true\n"))


def text_of(result: types.CallToolResult) -> str:
    assert len(result.content) == 1 and isinstance(result.content[0], types.TextContent)
    return result.content[0].text


# -- tool listing ------------------------------------------------------------------
async def test_every_tool_has_annotations_and_described_inputs(session):
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == TOOLS
    for tool in tools.values():
        ann = tool.annotations
        assert None not in (ann.read_only_hint, ann.destructive_hint, ann.idempotent_hint, ann.open_world_hint)
        assert tool.description and tool.title
        assert tool.output_schema and tool.output_schema["type"] == "object"
        for name, prop in tool.input_schema["properties"].items():
            assert prop.get("description"), f"{tool.name}.{name} has no description"
    assert tools["list_servers"].annotations.read_only_hint is True
    assert tools["exec"].annotations.destructive_hint is True
    assert tools["exec"].annotations.open_world_hint is True
    assert tools["exec"].input_schema["required"] == ["server", "command"]
    assert tools["exec"].input_schema["properties"]["timeout_seconds"]["maximum"] == mcp_server.EXEC_MAX_TIMEOUT


# -- list_servers --------------------------------------------------------------------
async def test_list_servers_same_data_as_cli_json(session, bed, cli):
    r = await session.call_tool("list_servers", {})
    assert not r.is_error
    cli_doc = json.loads(cli("--json", "servers", env={"MODEL_SYNC_CONFIG": str(bed.config)}).stdout)
    assert r.structured_content == cli_doc
    assert [s["alias"] for s in r.structured_content["servers"]] == ["bed", "down", "local"]
    text = text_of(r)
    assert text.startswith("## Servers\n")
    assert f"| bed | 127.0.0.1 | {bed.sshd.user} | {bed.sshd.port} | {bed.remote_base} |" in text
    assert "\x1b[" not in text


async def test_list_servers_check_reports_each_host(session, bed):
    r = await session.call_tool("list_servers", {"check": True})
    assert not r.is_error  # an unreachable server is a row, not a failed call
    checks = {c["alias"]: c for c in r.structured_content["checks"]}
    assert checks["bed"]["reachable"] is True and checks["bed"]["error"] is None
    assert checks["down"]["reachable"] is False and "connection refused" in checks["down"]["error"]
    assert "| down |" in text_of(r) and "2 ok, 1 failed" in text_of(r)


# -- exec --------------------------------------------------------------------------
async def test_exec_is_off_unless_config_allows_it(session, bed):
    r = await session.call_tool("exec", {"server": "bed", "command": "echo hi"})
    assert r.is_error
    assert text_of(r) == (f"exec is turned off for MCP clients; to allow it, add 'mcp: {{allow_exec: true}}' "
                          f"to {bed.config} (it lets the assistant run any command on your servers)")


async def test_exec_runs_on_server_when_allowed(session, bed):
    allow_exec(bed)  # read on the next call: no restart
    r = await session.call_tool("exec", {"server": "bed", "command": "echo hi; echo oops >&2; exit 3"})
    assert not r.is_error  # a failing command is a result
    data = r.structured_content
    assert (data["server"], data["exit_code"], data["stdout"], data["stderr"]) == ("bed", 3, "hi\n", "oops\n")
    assert data["timed_out"] is False
    text = text_of(r)
    assert "| Exit code | 3 |" in text and "stdout:\n```\nhi\n```" in text and "stderr:\n```\noops\n```" in text


async def test_exec_timeout_is_bounded(session, bed):
    allow_exec(bed)
    # the suite's own timeout would catch a call that hangs on the 600 s sleep
    r = await session.call_tool("exec", {"server": "bed", "command": "sleep 600", "timeout_seconds": 1})
    assert r.structured_content["timed_out"] is True and r.structured_content["exit_code"] == 124


async def test_server_answers_while_a_command_runs(session, bed):
    allow_exec(bed)
    done = []

    async def long_exec():
        await session.call_tool("exec", {"server": "local", "command": "sleep 30"})
        done.append(True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(long_exec)
        await anyio.sleep(0.5)
        r = await session.call_tool("list_servers", {})
        # answered while the 30 s command was still running
        assert not r.is_error and not done
        tg.cancel_scope.cancel()


# -- errors ------------------------------------------------------------------------
async def test_unknown_alias_same_message_as_cli(session, bed, cli):
    allow_exec(bed)
    r = await session.call_tool("exec", {"server": "nosuch", "command": "true"})
    assert r.is_error
    res = cli("exec", "nosuch", "true")
    assert res.returncode == 2
    assert res.stderr == f"model-sync: error: {text_of(r)}\n"
    assert text_of(r).startswith("unknown server 'nosuch'; configured servers: bed, down, local")


async def test_config_error_same_message_as_cli(session, bed, cli):
    bed.write_config("servers:\n  bad:\n    host: x\n")
    r = await session.call_tool("list_servers", {})
    assert r.is_error
    res = cli("servers", env={"MODEL_SYNC_CONFIG": str(bed.config)})
    assert res.stderr == f"model-sync: error: {text_of(r)}\n"
    assert text_of(r).startswith(f"{bed.config}:2: servers.bad has no model_base")


async def test_bad_arguments_are_one_line(session, bed):
    r = await session.call_tool("exec", {"server": "bed", "command": "true", "timeout_seconds": 99999})
    assert r.is_error
    assert text_of(r) == "invalid arguments for exec: timeout_seconds: Input should be less than or equal to 3600"
    r = await session.call_tool("exec", {"server": "bed"})
    assert r.is_error and text_of(r) == "invalid arguments for exec: command: Field required"


# -- secrets -----------------------------------------------------------------------
async def test_no_key_path_in_any_result(session, bed, tmp_path):
    stranger_key = keygen(tmp_path / "stranger_key")  # not in the sshd's authorized_keys
    ghost_key = tmp_path / "ghost_key"  # named in the config, missing on disk
    allow_exec(bed, f"""\
  stranger:
    host: 127.0.0.1
    port: {bed.sshd.port}
    user: {bed.sshd.user}
    ssh_key: {stranger_key}
    model_base: /srv/models
  ghost:
    host: 127.0.0.1
    port: {bed.sshd.port}
    ssh_key: {ghost_key}
    model_base: /srv/models
""")
    calls = [
        ("list_servers", {}),
        ("list_servers", {"check": True}),
        ("exec", {"server": "bed", "command": "echo hi"}),
        ("exec", {"server": "bed", "command": f"ls {bed.sshd.client_key}; cat ~/.ssh/known_hosts"}),
        ("exec", {"server": "down", "command": "true"}),
        ("exec", {"server": "stranger", "command": "true"}),
        ("exec", {"server": "ghost", "command": "true"}),
        ("exec", {"server": "nosuch", "command": "true"}),
    ]
    dumps = {}
    for name, args in calls:
        r = await session.call_tool(name, args)
        dumps[f"{name} {args}"] = r.model_dump_json()
    secrets = [str(bed.sshd.client_key), str(stranger_key), str(ghost_key)]
    for label, dump in dumps.items():
        for secret in secrets:
            assert secret not in dump, f"{label} shows {secret}"
    # the calls that would have shown a key path did run and were redacted
    assert "authentication failed" in dumps["exec {'server': 'stranger', 'command': 'true'}"]
    for label in ("exec {'server': 'stranger', 'command': 'true'}", "exec {'server': 'ghost', 'command': 'true'}"):
        assert REDACTED in dumps[label]
    assert REDACTED in dumps[f"exec {calls[3][1]}"]


# -- entry points --------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    [str(VENV_BIN / "model-sync"), "--config", "{config}", "mcp"],
    [str(VENV_BIN / "model-sync-mcp"), "--config", "{config}"],
], ids=["model-sync mcp", "model-sync-mcp"])
async def test_console_scripts_serve_with_given_config(bed, tmp_path, argv):
    config = tmp_path / "elsewhere.yaml"
    config.write_text(bed.config.read_text())
    argv = [a.replace("{config}", str(config)) for a in argv]
    async with connect({"HOME": str(bed.home)}, argv) as session:
        r = await session.call_tool("list_servers", {})
    assert not r.is_error and r.structured_content["config_path"] == str(config)


async def test_modern_client_protocol(bed):
    params = StdioServerParameters(command=sys.executable, args=["-m", "model_sync.mcp_server"], env=server_env(bed))
    async with Client(params) as client:  # negotiates the newest protocol
        r = await client.call_tool("list_servers", {})
    assert not r.is_error and r.structured_content["servers"][0]["alias"] == "bed"


# -- helpers: paths ------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ("ASR_250820", "ASR_250820"), ("a/b/../c", "a/c"), ("./x/", "x"), (".", "."), ("ASR@latest", "ASR@latest"),
])
def test_inside_base_accepts_relative_paths(given, expected):
    assert inside_base(given) == expected


@pytest.mark.parametrize("given, fragment", [
    ("/etc/passwd", "must be relative"), ("~/x", "must be relative"), ("..", "leaves"),
    ("a/../../b", "leaves"), ("", "is empty"), ("a\x00b", "NUL byte"),
])
def test_inside_base_rejects_escapes(given, fragment):
    with pytest.raises(UsageError, match=fragment) as info:
        inside_base(given)
    assert "\n" not in str(info.value)


def test_local_path_follows_symlinks(bed):
    from model_sync.config import load_config

    config = load_config(bed.config)
    (bed.local_base / "m").mkdir()
    (bed.local_base / "out").symlink_to("/tmp")
    assert local_path(config, "m") == bed.local_base / "m"
    with pytest.raises(UsageError, match="outside .* through a symlink"):
        local_path(config, "out/x")


# -- helpers: confirmation, with an in-process server -----------------------------------
def wipe_question(model: str, delete: bool) -> str | None:
    return f"Delete {model} on reaper?" if delete else None


async def wipe_question_async(model: str, delete: bool) -> str | None:
    await anyio.sleep(0)  # e.g. a dry run that lists what would go
    return wipe_question(model, delete)


def confirm_app(done: list) -> ModelSyncMCP:
    app = ModelSyncMCP()

    @app.tool(title="Wipe", annotations=DESTRUCTIVE)
    async def wipe(model: str, ok: Annotated[Confirmed, confirmation(wipe_question)],
                   delete: bool = True, confirm: Confirm = False) -> str:
        require_confirmation(ok)
        done.append(model)
        return f"wiped {model}"

    @app.tool(title="Wipe (async question)", annotations=DESTRUCTIVE)
    async def wipe_async(model: str, ok: Annotated[Confirmed, confirmation(wipe_question_async)],
                         delete: bool = True, confirm: Confirm = False) -> str:
        return await wipe(model, ok, delete, confirm)

    return app


def answering(action: str, confirm: bool = True, asked: list | None = None):
    async def callback(context, params):
        if asked is not None:
            asked.append(params.message)
        content = {"confirm": confirm} if action == "accept" else None
        return types.ElicitResult(action=action, content=content)
    return callback


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("tool", ["wipe", "wipe_async"])
async def test_confirmation_without_elicitation(mode, tool):
    done = []
    async with Client(confirm_app(done), mode=mode) as client:
        for listed in (await client.list_tools()).tools:
            assert set(listed.input_schema["properties"]) == {"model", "delete", "confirm"}
        r = await client.call_tool(tool, {"model": "ASR"})
        assert r.is_error and text_of(r) == ("Delete ASR on reaper? Nothing was done: call again with "
                                             "confirm=true once the user has agreed.")
        assert done == []
        assert not (await client.call_tool(tool, {"model": "ASR", "confirm": True})).is_error
        assert not (await client.call_tool(tool, {"model": "LID", "delete": False})).is_error
    assert done == ["ASR", "LID"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("action, confirm, error", [
    ("accept", True, None),
    ("accept", False, "not confirmed by the user; nothing was done"),
    ("decline", False, "the user declined; nothing was done"),
    ("cancel", False, "the user cancelled; nothing was done"),
])
async def test_confirmation_asks_the_user(mode, action, confirm, error):
    done, asked = [], []
    async with Client(confirm_app(done), mode=mode, elicitation_callback=answering(action, confirm, asked)) as client:
        r = await client.call_tool("wipe", {"model": "ASR"})
        assert asked == ["Delete ASR on reaper?"]
        assert r.is_error == (error is not None)
        assert text_of(r) == (error or "wiped ASR")
        # an explicit confirm (or nothing to delete) asks nothing
        await client.call_tool("wipe", {"model": "A", "confirm": True})
        await client.call_tool("wipe", {"model": "B", "delete": False})
        assert len(asked) == 1
    assert done == (["ASR"] if error is None else []) + ["A", "B"]


# -- helpers: time limit, progress, cancellation ----------------------------------------
def progress_app(stopped: threading.Event) -> ModelSyncMCP:
    app = ModelSyncMCP()

    def work(steps: int, delay: float, progress) -> ExecResult:  # stands in for a transfer
        try:
            for i in range(1, steps + 1):
                time.sleep(delay)
                progress(i * 1000, steps * 1000)
        except CallAbandoned:
            stopped.set()
            raise
        return ExecResult("bed", "work", 0, steps * delay, False)

    @app.tool(title="Work", annotations=READ_ONLY)
    async def job(steps: int, delay: float, limit: float, ctx: Context) -> types.CallToolResult:
        return await call(work, steps, delay, limit=limit, report_to=ctx, label="bed: work")

    return app


async def test_progress_reaches_the_client():
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async with Client(progress_app(threading.Event())) as client:
        r = await client.call_tool("job", {"steps": 4, "delay": 0.05, "limit": 30}, progress_callback=on_progress)
    assert not r.is_error and r.structured_content["command"] == "work"
    assert seen[0] == (1000, 4000, "1.0KB of 4.0KB") and seen[-1] == (4000, 4000, "4.0KB of 4.0KB")
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)


async def test_time_limit_abandons_a_hung_call():
    stopped = threading.Event()
    async with Client(progress_app(stopped)) as client:
        # 1000 steps of 0.1 s: only the 0.5 s limit can end this call early
        r = await client.call_tool("job", {"steps": 1000, "delay": 0.1, "limit": 0.5})
    assert r.is_error and text_of(r) == ("bed: work: no answer within 0.5s, so the call was abandoned; "
                                         "check the server with list_servers check=true")
    assert await anyio.to_thread.run_sync(stopped.wait, 5), "the worker was not told to stop"


async def test_client_cancel_stops_the_worker():
    stopped = threading.Event()
    async with Client(progress_app(stopped), mode="legacy") as client:
        with anyio.move_on_after(0.5) as scope:
            await client.call_tool("job", {"steps": 1000, "delay": 0.1, "limit": 60})
        assert scope.cancelled_caught
        assert await anyio.to_thread.run_sync(stopped.wait, 5), "the worker was not told to stop"


async def test_unexpected_exception_is_one_line_without_traceback():
    app = ModelSyncMCP()

    @app.tool(title="Crash", annotations=READ_ONLY)
    async def crash() -> str:
        raise ValueError("boom\n  File \"x.py\", line 1")

    async with Client(app) as client:
        r = await client.call_tool("crash", {})
    assert r.is_error and text_of(r) == "internal error in crash: ValueError: boom (details in the server's log)"


# -- transfers over MCP (real sshd, real rsync) ---------------------------------------------
def _local_model(bed, name="RTX3090_N2501_LANGDETECTOR_250715"):
    root = bed.local_base / name
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_bytes(b"name: m\n")
    (root / "1" / "model.onnx").write_bytes(bytes(range(256)) * 400)
    return root


async def test_push_pull_verify_over_mcp_with_progress(session, bed):
    src = _local_model(bed)
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    r = await session.call_tool("push", {"model": src.name, "server": "bed"}, progress_callback=on_progress)
    assert not r.is_error, r.content
    data = r.structured_content
    assert data["files"] == 2 and data["verified"] is True and data["published"] is True
    assert "| Verified | yes (xxh3-128) |" in text_of(r)
    assert (bed.remote_base / src.name / "1" / "model.onnx").read_bytes() == (src / "1" / "model.onnx").read_bytes()
    assert seen and seen[-1][0] == seen[-1][1] == 102_400 + 8

    r = await session.call_tool("verify", {"model": src.name, "server": "bed"})
    assert not r.is_error and r.structured_content["ok"] is True

    r = await session.call_tool("pull", {"server": "bed", "remote_path": src.name, "local_dir": "pulled"})
    assert not r.is_error, r.content
    assert (bed.local_base / "pulled" / src.name / "config.pbtxt").read_bytes() == b"name: m\n"


async def test_push_streams_and_up_to_date_over_mcp(session, bed):
    src = _local_model(bed)
    r = await session.call_tool("push", {"model": src.name, "server": "bed", "streams": 0})
    assert r.is_error  # outside 1..16, refused by the schema
    r = await session.call_tool("push", {"model": src.name, "server": "bed", "streams": 2})
    assert not r.is_error and r.structured_content["published"] is True, r.content
    r = await session.call_tool("push", {"model": src.name, "server": "bed"})
    assert not r.is_error and r.structured_content["up_to_date"] is True
    assert "Already up to date" in text_of(r)


async def test_parallel_streams_report_progress_over_mcp(session, bed):
    """With 64 MiB or more in several files a push runs several rsyncs at
    once; their progress comes from the core's own threads and still reaches
    the client."""
    import os

    from model_sync.transfer import PARALLEL_MIN_BYTES

    src = bed.local_base / "RTX3090_N2501_SHARDS_250715"
    src.mkdir()
    for i in range(2):
        (src / f"shard-{i}.bin").write_bytes(os.urandom(PARALLEL_MIN_BYTES // 2 + 1))
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    r = await session.call_tool("push", {"model": src.name, "server": "bed", "streams": 2},
                                progress_callback=on_progress)
    assert not r.is_error, r.content
    assert r.structured_content["published"] is True and r.structured_content["verified"] is True
    assert seen and seen[-1][0] == seen[-1][1] == PARALLEL_MIN_BYTES + 2


async def test_push_with_delete_needs_confirm(session, bed):
    src = _local_model(bed)
    assert not (await session.call_tool("push", {"model": src.name, "server": "bed"})).is_error
    (src / "config.pbtxt").unlink()
    r = await session.call_tool("push", {"model": src.name, "server": "bed", "delete": True})
    assert r.is_error and "confirm=true" in text_of(r)
    assert (bed.remote_base / src.name / "config.pbtxt").exists()
    r = await session.call_tool("push", {"model": src.name, "server": "bed", "delete": True, "confirm": True})
    assert not r.is_error, r.content
    assert r.structured_content["deleted"] == ["config.pbtxt"]
    assert not (bed.remote_base / src.name / "config.pbtxt").exists()


@pytest.mark.parametrize("args, fragment", [
    ({"model": "../../etc", "server": "bed"}, "leaves the server's model_base"),
    ({"model": "/etc", "server": "bed"}, "is not inside the model_base of a local server"),
    ({"model": "x", "server": "bed", "remote_path": "../up"}, "leaves the server's model_base"),
])
async def test_transfer_paths_stay_under_model_base(session, bed, args, fragment):
    r = await session.call_tool("push", args)
    assert r.is_error and fragment in text_of(r)
    assert list(bed.remote_base.iterdir()) == []


async def test_list_versions_diff_prune_over_mcp(session, bed):
    for version in ("250101", "250301", "250201"):
        d = bed.remote_base / f"RTX3090_N2501_ASR_{version}"
        d.mkdir()
        (d / "w.bin").write_bytes(version.encode())
    (bed.remote_base / "notes").mkdir()

    r = await session.call_tool("list_models", {"server": "bed", "filter": "asr", "sort": "version"})
    assert not r.is_error, r.content
    assert "Total: 3 models" in text_of(r)

    r = await session.call_tool("versions", {"server": "bed", "model": "asr"})
    assert not r.is_error and "RTX3090_N2501_ASR_250301" in text_of(r)

    r = await session.call_tool("pull", {"server": "bed", "remote_path": "ASR@latest", "local_dir": "got"})
    assert not r.is_error, r.content
    assert (bed.local_base / "got" / "RTX3090_N2501_ASR_250301" / "w.bin").read_bytes() == b"250301"

    r = await session.call_tool("diff", {"model": "got/RTX3090_N2501_ASR_250301", "server": "bed",
                                         "remote_path": "RTX3090_N2501_ASR_250301"})
    assert not r.is_error, r.content
    assert "Same: 1" in text_of(r)

    # prune: refused without confirm (this client cannot be asked), then done with it
    r = await session.call_tool("prune", {"server": "bed", "model": "ASR", "keep": 1})
    assert r.is_error and "Remove 2 old version(s) of ASR on bed" in text_of(r) and "confirm=true" in text_of(r)
    assert len(list(bed.remote_base.glob("RTX3090_N2501_ASR_*"))) == 3
    r = await session.call_tool("prune", {"server": "bed", "model": "ASR", "keep": 1, "confirm": True})
    assert not r.is_error, r.content
    assert [p.name for p in bed.remote_base.glob("RTX3090_N2501_ASR_*")] == ["RTX3090_N2501_ASR_250301"]
    assert (bed.remote_base / "notes").is_dir()


async def test_selector_cannot_escape_model_base(session, bed):
    r = await session.call_tool("pull", {"server": "bed", "remote_path": "/etc/X@latest"})
    assert r.is_error and "must be relative" in text_of(r)
