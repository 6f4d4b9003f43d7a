"""`model-sync exec`: the user's command in the server's shell, streamed, with
its exit code; bounded by --timeout."""

import json
import time
import uuid


def test_exec_streams_output_and_exit_code(cli, bed):
    res = cli("exec", "bed", "echo out; echo err >&2; exit 7")
    assert res.returncode == 7
    assert res.stdout == "out\n"
    assert res.stderr == "err\n"


def test_exec_runs_in_remote_shell_as_typed(cli, bed):
    res = cli("exec", "bed", 'cd / && for x in a b; do printf "%s-" "$x"; done; echo "$HOME"')
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("a-b-/")


def test_exec_words_after_double_dash(cli, bed):
    # like ssh, several words are joined with spaces into one command line
    res = cli("exec", "bed", "--", "ls", "-d", "/", "/tmp")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["/", "/tmp"]


def test_exec_json_collects_output(cli, bed):
    res = cli("exec", "bed", "--json", "printf 'a\\nb'; exit 3")
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    assert doc["stdout"] == "a\nb" and doc["exit_code"] == 3 and doc["server"] == "bed"


def test_exec_timeout_stops_remote_command(cli, bed):
    secs = 3000 + uuid.uuid4().int % 999  # a sleep no other test runs
    res = cli("exec", "bed", "--timeout", "1", f"sleep {secs}; true")
    assert res.returncode == 124
    assert "timed out after 1s" in res.stderr
    # the remote command itself was stopped, not just our wait for it
    time.sleep(0.5)
    check = cli("exec", "local", f"pgrep -f 'slee[p] {secs}' || echo gone")
    assert check.stdout.strip() == "gone"


def test_exec_local_alias_runs_here(cli, bed, tmp_path):
    res = cli("exec", "local", f"touch {tmp_path}/made && echo $((6*7))")
    assert res.returncode == 0 and res.stdout == "42\n"
    assert (tmp_path / "made").exists()


def test_exec_local_timeout(cli, bed):
    res = cli("exec", "local", "--timeout", "0.5", "sleep 20")
    assert res.returncode == 124


def test_exec_unreachable_server(cli, bed):
    res = cli("exec", "down", "true")
    assert res.returncode == 3
    assert "connection refused" in res.stderr and len(res.stderr.strip().splitlines()) == 1
