"""MCP server faults: huge arguments, slow redaction, a blocked event loop.

The stdio tests drive a real server process with the SDK's client, through
test_mcp's helpers; the event-loop test uses an in-process server."""

import threading
import time

import anyio
import pytest
from mcp import Client, types

from model_sync import mcp_server
from model_sync.mcp_server import ARG_MAX_LENGTH, EXEC_COMMAND_MAX, READ_ONLY, REDACTED, ModelSyncMCP, redact
from test_mcp import anyio_backend, session, text_of  # noqa: F401  (fixtures)

pytestmark = pytest.mark.anyio

HUGE = "/x" * 5_000_000  # 10 MB, no separator: the worst case for the old key pattern


def _string_typed(prop: dict) -> bool:
    return prop.get("type") == "string" or any(p.get("type") == "string" for p in prop.get("anyOf", []))


async def test_every_string_argument_is_bounded(session):
    for tool in (await session.list_tools()).tools:
        for name, prop in tool.input_schema["properties"].items():
            if _string_typed(prop):
                limit = prop.get("maxLength") or max((p.get("maxLength", 0) for p in prop.get("anyOf", [])),
                                                     default=0)
                assert 0 < limit <= EXEC_COMMAND_MAX, f"{tool.name}.{name} has no size limit"


@pytest.mark.parametrize("tool, args, bad, limit", [
    ("versions", {"server": HUGE}, "server", ARG_MAX_LENGTH),
    ("push", {"model": HUGE, "server": "bed"}, "model", ARG_MAX_LENGTH),
    ("exec", {"server": "bed", "command": HUGE}, "command", EXEC_COMMAND_MAX),
], ids=["versions.server", "push.model", "exec.command"])
async def test_huge_argument_is_refused_and_server_answers(session, tool, args, bad, limit):
    # only a guard against a hang (the old server never answered); no timing is asserted
    with anyio.fail_after(60):
        r = await session.call_tool(tool, args)
        assert r.is_error
        assert text_of(r) == f"invalid arguments for {tool}: {bad}: String should have at most {limit} characters"
        assert not (await session.call_tool("list_servers", {})).is_error


def _sample(n: int, secrets: list[str]) -> tuple[str, str]:
    """About n characters mixing secrets, default key names and other text,
    half of it one word without a separator; and the text redacted."""
    pieces = [
        (secrets[0], REDACTED),
        (f"{secrets[1]}.pub", f"{REDACTED}.pub"),
        ("IdentityFile=/srv/keys/id_ed25519", REDACTED),
        ("'/opt/id_rsa_sk',", f"'{REDACTED}',"),
        ("model_id_rsa_v2", "model_id_rsa_v2"),  # not a key name: no word boundary before id_
        ("/models/RTX3090_N2501_ASR_250820/1/model.onnx", "/models/RTX3090_N2501_ASR_250820/1/model.onnx"),
        ("(ok)", "(ok)"),
    ]
    given, want = [], []
    while sum(map(len, given)) < n // 2:
        for g, w in pieces:
            given.append(g)
            want.append(w)
    word = "/x" * (n // 4)
    return " ".join(given) + "\n" + word, " ".join(want) + "\n" + word


def _seconds_per_character(text: str, secrets: list[str]) -> float:
    """Best of five rounds of at least 50 ms each: load on the machine only
    makes a round slower, so the best round is the redaction's own cost."""
    best = float("inf")
    for _ in range(5):
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < 0.05 or not calls:
            redact(text, secrets)
            calls += 1
        best = min(best, elapsed / calls / len(text))
    return best


def test_redaction_is_correct_and_linear(tmp_path):
    secrets = [str(tmp_path / ".ssh" / "bed_key"), str(tmp_path / "keys" / "other")]
    small, large = _sample(2_000, secrets), _sample(20_000, secrets)
    for given, want in (small, large):
        assert redact(given, secrets) == want
    # 10 times the text: the same cost per character when linear, 10 times it
    # when quadratic (as it was: 20,000 characters took 4.4 s)
    ratio = _seconds_per_character(large[0], secrets) / _seconds_per_character(small[0], secrets)
    assert ratio < 4, f"redaction cost per character grew {ratio:.1f}x for 10x the text"


async def test_redaction_does_not_block_the_event_loop(monkeypatch):
    app = ModelSyncMCP()
    entered, release = threading.Event(), threading.Event()
    events = []
    real = mcp_server._redact_result

    def slow_redact(result, secrets):  # a long redaction, held until the test lets it go
        if text_of(result) == "big":
            entered.set()
            release.wait(30)
            events.append("redacted")
        return real(result, secrets)

    monkeypatch.setattr(mcp_server, "_redact_result", slow_redact)

    @app.tool(title="Big", annotations=READ_ONLY)
    async def big() -> types.CallToolResult:
        return mcp_server.error_result("big")

    @app.tool(title="Ping", annotations=READ_ONLY)
    async def ping() -> str:
        return "pong"

    async with Client(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(client.call_tool, "big", {})
        assert await anyio.to_thread.run_sync(entered.wait, 30)
        assert text_of(await client.call_tool("ping", {})) == "pong"
        events.append("ping")
        release.set()
    # on the event loop, the redaction held every other call until it timed out
    assert events == ["ping", "redacted"]
