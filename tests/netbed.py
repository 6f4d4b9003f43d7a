"""Test hosts in network namespaces: each is a namespace with a veth pair to
this machine, its own address in 10.213.N.0/24 and a real sshd inside.
Traffic goes only into namespaces we create here; we remove them at the end.
`tc` on our end of the veth limits the rate (tbf), nftables in the host's
namespace drops a share of packets at random, and `cut()` takes the link
down. (netem is not in every kernel, this one's included; tbf and nftables are.)"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sshbed import SshBed, start_sshd

PREFIX = "mstest"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, stdin=subprocess.DEVNULL)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    probe = f"{PREFIX}probe{os.getpid()}"
    res = ip("netns", "add", probe, check=False)
    if res.returncode != 0:
        return res.stderr.strip()
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class NetHost:
    index: int
    ns: str
    veth: str  # our end
    address: str  # the host's address, inside its namespace
    sshd: SshBed

    def shape(self, *qdisc: str) -> None:
        """Replace the qdisc on our end, e.g. shape('netem', 'delay', '30ms', 'loss', '3%')."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.veth, "root", *qdisc], check=True,
                       capture_output=True, text=True)

    def unshape(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth, "root"], capture_output=True, text=True)
        self.nft("delete table inet mstest", check=False)

    def nft(self, rule: str, check: bool = True) -> None:
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", *rule.split()], check=check,
                       capture_output=True, text=True)

    def drop(self, percent: int) -> None:
        """Lose `percent`% of the packets arriving at this host, at random."""
        self.nft("add table inet mstest")
        self.nft("add chain inet mstest in { type filter hook input priority 0 ; }")
        self.nft(f"add rule inet mstest in numgen random mod 100 < {percent} drop")

    def cut(self) -> None:
        ip("link", "set", "dev", self.veth, "down")

    def restore(self) -> None:
        ip("link", "set", "dev", self.veth, "up")

    @property
    def known_hosts_line(self) -> str:
        return f"[{self.address}]:{self.sshd.port} {self.sshd.host_key_pub}\n"

    def remove(self) -> None:
        self.sshd.stop()
        ip("netns", "del", self.ns, check=False)
        ip("link", "del", self.veth, check=False)


def cleanup_stale() -> None:
    """Namespaces a killed earlier run of this suite left behind."""
    res = ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX):
            ip("netns", "del", name, check=False)


def make_host(index: int, directory: Path) -> NetHost:
    tag = f"{os.getpid() % 100000}{index}"
    ns, ours, theirs = f"{PREFIX}{tag}", f"msh{tag}"[:15], f"msn{tag}"[:15]
    ip("netns", "add", ns)
    try:
        ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
        ip("link", "set", theirs, "netns", ns)
        ip("addr", "add", f"10.213.{index}.1/24", "dev", ours)
        ip("link", "set", ours, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"10.213.{index}.2/24", "dev", theirs)
        ip("netns", "exec", ns, "ip", "link", "set", theirs, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        address = f"10.213.{index}.2"
        sshd = start_sshd(directory, port=2222, address=address, netns=ns)
    except BaseException:
        ip("netns", "del", ns, check=False)
        ip("link", "del", ours, check=False)
        raise
    return NetHost(index, ns, ours, address, sshd)
