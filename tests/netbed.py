"""The test network: the one module that makes network namespaces for tests
and benchmarks, and the only place that knows their address range.

Each test host is a namespace with a veth pair to this machine, its own
address in RANGE (10.213.N.2, our end 10.213.N.1) and a real sshd inside.
Nothing it does may send a packet out of this machine:

- while any namespace of ours exists, the root namespace has a blackhole
  route for the whole RANGE, so an address without a live veth goes nowhere
  instead of out through the default route;
- a guard table in the root namespace counts (and drops) every packet for
  RANGE that leaves by an interface that is not one of ours (`leaks()`);
  the fixtures assert it stays at zero;
- `cut()` drops packets with nftables inside the host's namespace, both
  ways; it never sets our end of the veth down, which would delete the
  connected route and let the next packet follow the default route out.

`tc` on our end of the veth limits the rate (tbf) and nftables in the host's
namespace drops a share of packets at random (netem is not in every kernel,
this one's included; tbf and nftables are). The last namespace removed takes
the blackhole route and the guard table with it."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sshbed import SshBed, start_sshd

RANGE = "10.213.0.0/16"  # every test address; chosen once, here
PREFIX = "mstest"  # our namespaces
IFACE = "msh"  # every root-side interface of ours (veths, bridges) starts with this
GUARD_TABLE = "mstest_guard"  # root namespace: the leak counter
SHAPE_TABLE = "mstest"  # in a host's namespace: random loss
CUT_TABLE = "mstest_cut"  # in a host's namespace: the cut link


def _net(index: int) -> str:
    """The /24 of test host `index`, inside RANGE."""
    if not 1 <= index <= 254:
        raise ValueError(f"test host index {index} is outside 1..254")
    return ".".join(RANGE.split(".")[:2] + [str(index)])


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def nft(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["nft", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return subprocess.run(argv, capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    probe = f"{PREFIX}probe{os.getpid()}"
    res = ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return res.stderr.strip()
    ip("netns", "del", probe, check=False)
    if nft("list", "tables", check=False).returncode != 0:
        return "nft (nftables) is not usable"
    return None


# -- the root namespace's guard: blackhole route and leak counter --------------------
def guard() -> None:
    """Put the blackhole route and the guard table in place (again, if an
    earlier run removed or lost them). Idempotent."""
    ip("route", "replace", "blackhole", RANGE)
    nft("add", "table", "inet", GUARD_TABLE)
    for hook in ("output", "forward"):
        res = nft("list", "chain", "inet", GUARD_TABLE, hook, check=False)
        if res.returncode == 0:
            continue
        nft("add", "chain", "inet", GUARD_TABLE, hook,
            f"{{ type filter hook {hook} priority 0 ; policy accept ; }}")
        nft("add", "rule", "inet", GUARD_TABLE, hook, "ip", "daddr", RANGE, "oifname", "!=", f'"{IFACE}*"',
            "counter", "drop")


def leaks() -> int:
    """Packets for RANGE that tried to leave by an interface not ours, since
    the guard was put in place (they were dropped and counted)."""
    res = nft("list", "table", "inet", GUARD_TABLE, check=False)
    if res.returncode != 0:
        return 0
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", res.stdout))


def _ours() -> list[str]:
    res = ip("netns", "list", check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.split() and line.split()[0].startswith(PREFIX)]


def unguard_if_idle() -> None:
    """Remove the guard once no namespace of ours is left (another run may still use it)."""
    if _ours():
        return
    ip("route", "del", "blackhole", RANGE, check=False)
    nft("delete", "table", "inet", GUARD_TABLE, check=False)


def route_of(address: str) -> str:
    """`ip route get` for an address, as one line."""
    return ip("route", "get", address, check=False).stdout.strip()


# -- hosts ---------------------------------------------------------------------------
@dataclass
class NetHost:
    index: int
    ns: str
    veth: str  # our end
    address: str  # the host's address, inside its namespace
    sshd: SshBed

    def shape(self, *qdisc: str) -> None:
        """Replace the qdisc on our end, e.g. shape('tbf', 'rate', '20mbit', 'burst', '64kbit', 'latency', '400ms')."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.veth, "root", *qdisc], check=True,
                       capture_output=True, text=True)

    def unshape(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth, "root"], capture_output=True, text=True)
        nft("delete", "table", "inet", SHAPE_TABLE, netns=self.ns, check=False)

    def drop(self, percent: int) -> None:
        """Lose `percent`% of the packets arriving at this host, at random."""
        nft("add", "table", "inet", SHAPE_TABLE, netns=self.ns)
        nft("add", "chain", "inet", SHAPE_TABLE, "in", "{ type filter hook input priority 0 ; }", netns=self.ns)
        nft("add", "rule", "inet", SHAPE_TABLE, "in", "numgen", "random", "mod", "100", "<", str(percent), "drop",
            netns=self.ns)

    def cut(self) -> None:
        """Every packet to and from this host is dropped inside its namespace;
        the routes on this machine stay as they are."""
        nft("add", "table", "inet", CUT_TABLE, netns=self.ns)
        for hook in ("input", "output"):
            nft("add", "chain", "inet", CUT_TABLE, hook, f"{{ type filter hook {hook} priority -10 ; policy drop ; }}",
                netns=self.ns)

    def restore(self) -> None:
        nft("delete", "table", "inet", CUT_TABLE, netns=self.ns, check=False)

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.sshd.port} {self.sshd.host_key_pub}\n"

    def remove(self) -> None:
        self.sshd.stop()
        ip("netns", "del", self.ns, check=False)
        ip("link", "del", self.veth, check=False)
        unguard_if_idle()


def cleanup_stale() -> None:
    """Namespaces a killed earlier run of this suite left behind (and, with
    none left, the guard)."""
    for name in _ours():
        ip("netns", "del", name, check=False)
    unguard_if_idle()


def make_host(index: int, directory: Path) -> NetHost:
    tag = f"{os.getpid() % 100000}{index}"
    ns, ours, theirs = f"{PREFIX}{tag}", f"{IFACE}{tag}"[:15], f"msn{tag}"[:15]
    net = _net(index)
    guard()  # before the first packet can be sent to RANGE
    ip("netns", "add", ns)
    try:
        ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
        ip("link", "set", theirs, "netns", ns)
        ip("addr", "add", f"{net}.1/24", "dev", ours)
        ip("link", "set", ours, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/24", "dev", theirs)
        ip("netns", "exec", ns, "ip", "link", "set", theirs, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        address = f"{net}.2"
        sshd = start_sshd(directory, port=2222, address=address, netns=ns)
    except BaseException:
        ip("netns", "del", ns, check=False)
        ip("link", "del", ours, check=False)
        unguard_if_idle()
        raise
    return NetHost(index, ns, ours, address, sshd)


@contextlib.contextmanager
def network(directory: Path, indexes) -> "contextlib.AbstractContextManager[list[NetHost]]":
    """Hosts for a test module or a bench run; on the way out, every one is
    removed and the leak counter must still read zero."""
    cleanup_stale()
    made: list[NetHost] = []
    try:
        for i in indexes:
            made.append(make_host(i, directory / f"nshost{i}"))
        yield made
        leaked = leaks()
        assert leaked == 0, f"{leaked} packet(s) for {RANGE} tried to leave this machine"
    finally:
        for h in made:
            h.remove()
