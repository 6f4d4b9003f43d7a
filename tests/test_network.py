"""Several hosts and real network faults, in network namespaces: two servers
with their own addresses, a slow link losing packets, and a link cut in the
middle of a transfer (bounded failure, nothing published, then resume)."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

import netbed
from conftest import run_cli

WHY = netbed.available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"network namespaces unavailable: {WHY}")


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    # on the way out: every host removed, and not one packet for the test range left this machine
    with netbed.network(tmp_path_factory.mktemp("net"), (1, 2)) as made:
        yield made


@pytest.fixture
def net(hosts, bed, tmp_path):
    """A config with aliases a and b (the namespace hosts) besides the bed's."""
    bases = {}
    lines = ["servers:"]
    for h, alias in zip(hosts, "ab"):
        base = tmp_path / f"models-{alias}"  # the namespaces share our filesystem
        base.mkdir()
        bases[alias] = base
        lines += [f"  {alias}:", f"    host: {h.address}", f"    port: {h.sshd.port}", f"    user: {h.sshd.user}",
                  f"    ssh_key: {h.sshd.client_key}", f"    model_base: {base}"]
    lines += ["  local:", f"    model_base: {bed.local_base}",
              "defaults:", "  connect_timeout: 5", "  io_timeout: 5"]
    bed.write_config("\n".join(lines) + "\n")
    (bed.home / ".ssh" / "known_hosts").write_text("".join(h.known_hosts_line for h in hosts))
    yield bases
    for h in hosts:
        h.unshape()
        h.restore()


def _model(tmp_path, size=300_000):
    root = tmp_path / "src" / "RTX3090_N2501_NETTEST_250101"
    (root / "1").mkdir(parents=True)
    (root / "config.pbtxt").write_bytes(b"name: net\n")
    (root / "1" / "model.onnx").write_bytes(os.urandom(size))
    return root


def _tree(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and p.name != ".model-sync.xxh128"}


def test_two_hosts_check_push_and_compare(net, tmp_path):
    res = run_cli("--json", "servers", "--check")
    checks = {c["alias"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["a"]["reachable"] and checks["b"]["reachable"], res.stdout
    assert checks["a"]["host"].endswith("@10.213.1.2:2222") and checks["b"]["host"].endswith("@10.213.2.2:2222")

    src = _model(tmp_path)
    assert run_cli("push", str(src), "a").returncode == 0
    d = run_cli("--json", "diff", f"a:{src.name}", f"b:{src.name}")
    assert d.returncode == 1  # only on a so far
    assert run_cli("push", str(src), "b").returncode == 0
    d = run_cli("--json", "diff", f"a:{src.name}", f"b:{src.name}", "--checksum")
    assert d.returncode == 0, d.stdout + d.stderr
    assert _tree(net["a"] / src.name) == _tree(net["b"] / src.name) == _tree(src)


def test_lossy_slow_link_still_verified(net, hosts, tmp_path):
    hosts[0].drop(3)
    hosts[0].shape("tbf", "rate", "20mbit", "burst", "64kbit", "latency", "400ms")
    src = _model(tmp_path, size=2_000_000)
    res = run_cli("--json", "push", str(src), "a", timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verified"] is True
    assert _tree(net["a"] / src.name) == _tree(src)
    out = tmp_path / "back"
    out.mkdir()
    res = run_cli("--json", "pull", f"a:{src.name}", str(out), timeout=300)
    assert res.returncode == 0, res.stderr
    assert _tree(out / src.name) == _tree(src)


def test_link_cut_mid_transfer_fails_bounded_then_resumes(net, hosts, tmp_path):
    host = hosts[0]
    src = _model(tmp_path, size=3_000_000)
    dest = net["a"] / src.name
    stage = net["a"] / f".{src.name}.model-sync-staging"
    host.shape("tbf", "rate", "2mbit", "burst", "32kbit", "latency", "400ms")
    proc = subprocess.Popen([sys.executable, "-m", "model_sync.cli", "push", str(src), "a"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            partial = [p for p in stage.rglob("*") if p.is_file() and p.stat().st_size > 0] if stage.exists() else []
            if any("model.onnx" in p.name for p in partial):
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        host.cut()
        # the stalled transfer gives up by itself (io_timeout 5 s): the suite timeout catches a hang
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    assert "stalled" in err or "connection" in err, err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err  # banner + one error line
    assert not dest.exists()  # nothing published under the final name

    host.restore()
    host.unshape()
    # the lock the dead session held lets go once its heartbeats stop; then resume
    res = run_cli("--json", "push", str(src), "a", timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["verified"] is True
    assert _tree(dest) == _tree(src)
    assert not stage.exists()


def _connects(address: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_a_cut_link_keeps_its_route_and_nothing_leaves_the_machine(hosts):
    """The guard of the test network: while a host is cut, its address still
    routes into its own veth (not through a gateway, not the blackhole), a
    connection fails here, and the leak counter stays at zero. An address of
    the range with no host behind it goes nowhere."""
    host = hosts[1]
    before = netbed.leaks()
    assert _connects(host.address, host.sshd.port, 5)
    host.cut()
    try:
        route = netbed.route_of(host.address)
        assert f"dev {host.veth}" in route and " via " not in route and not route.startswith("blackhole"), route
        assert not _connects(host.address, host.sshd.port, 2)
        route = netbed.route_of(host.address)  # still there after the failed attempt
        assert f"dev {host.veth}" in route, route
    finally:
        host.restore()
    assert _connects(host.address, host.sshd.port, 5)
    nobody = netbed.RANGE.rsplit(".", 2)[0] + ".250.2"  # in the range, no host behind it
    assert netbed.route_of(nobody).startswith("blackhole") or not netbed.route_of(nobody)
    assert not _connects(nobody, 22, 2)
    assert netbed.leaks() == before == 0
