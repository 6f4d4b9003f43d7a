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
