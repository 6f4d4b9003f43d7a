"""Commands that never open a connection must not pay for the SSH and MCP
libraries: `--help`, `servers`, and argument errors start without importing
paramiko, fabric, invoke or mcp (they are imported where used)."""

import subprocess
import sys

import pytest

HEAVY = ("paramiko", "fabric", "invoke", "mcp")

_PROBE = """
import sys
from model_sync.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print('HEAVY=' + ','.join(heavy), file=sys.stderr)
""" % (HEAVY,)


def _heavy_imports(*args) -> list[str]:
    res = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("HEAVY=")]
    assert line, res.stderr
    return [m for m in line[-1][6:].split(",") if m]


@pytest.mark.parametrize("args", [("--help",), ("servers",), ("push", "--help"), ("push",),
                                  ("diff", "only-one-arg"), ("list", "nosuchalias")])
def test_light_commands_do_not_import_ssh_or_mcp(args):
    assert _heavy_imports(*args) == []


def test_probe_sees_heavy_imports(bed):
    # the check itself can fail: exec on a server goes through Fabric
    assert {"fabric", "paramiko"} <= set(_heavy_imports("exec", "bed", "true"))


def test_early_value_options_match_the_cli():
    import click

    from model_sync import early
    from model_sync.cli import cli

    names = set()

    def walk(cmd):
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.is_flag and not p.count:
                names.update(o for o in p.opts if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(cli)
    assert names == early.VALUE_OPTIONS


def test_early_reads_servers_from_argv(tmp_path, monkeypatch):
    from model_sync.early import named_servers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reaper").mkdir()  # a local directory that shares a server's name
    known = {"reaper": [], "doomfist": []}
    assert named_servers(["diff", "./m", "doomfist"], known) == (None, ["doomfist"])
    assert named_servers(["--config", "c.yaml", "diff", "reaper:M", "doomfist:M"], known) == (
        "c.yaml", ["reaper", "doomfist"])
    assert named_servers(["push", "reaper", "doomfist"], known) == (None, ["doomfist"])
    assert named_servers(["push", "--exclude", "doomfist", "./m", "other"], known) == (None, [])
    assert named_servers(["list", "--filter=reaper", "doomfist"], known) == (None, ["doomfist"])
    assert named_servers(["exec", "doomfist", "ls"], known) == (None, [])  # exec: Fabric, not early
    assert named_servers(["--json", "versions", "--", "doomfist"], known) == (None, ["doomfist"])
    # only where the command takes a server, as the CLI reads it
    assert named_servers(["pull", "doomfist:ASR@latest", "reaper"], known) == (None, ["doomfist"])
    assert named_servers(["push", "reaper:v1", "doomfist"], known) == (None, ["doomfist"])
    assert named_servers(["diff", "reaper", "doomfist"], known) == (None, ["doomfist"])
    assert named_servers(["push", "--help", "./m", "reaper"], known) == (None, [])


def test_the_quick_exit_waits_for_working_threads():
    """The entry point leaves with os._exit (no object-by-object teardown),
    but not while another thread still works, such as an MCP tool call's
    transfer: then it exits normally, which waits for it."""
    import threading

    import pytest

    from model_sync import early

    done = threading.Event()
    worker = threading.Thread(target=done.wait, args=(5,))
    worker.start()
    try:
        with pytest.raises(SystemExit) as leaving:
            early._exit(3)
        assert leaving.value.code == 3
    finally:
        done.set()
        worker.join()
