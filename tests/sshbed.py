"""A real OpenSSH server on 127.0.0.1 for tests and benchmarks.

Key-only auth, a generated host key and client key, a known_hosts line for
the client; started on a free port and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_sshd() -> str:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if cand and os.path.exists(cand):
            return cand
    raise RuntimeError("sshd is not installed: apt-get install openssh-server (the README's test command does this)")


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "model-sync-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path


@dataclass
class SshBed:
    dir: Path
    port: int
    pid: int
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    client_key: Path
    user: str
    _proc: subprocess.Popen

    @property
    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_pub}\n"

    def stop(self):
        if self._proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._proc.wait()


def start_sshd(directory: Path, port: int | None = None, address: str = "127.0.0.1",
               netns: str | None = None) -> SshBed:
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "ssh_host_ed25519_key"
    if not host_key.exists():
        keygen(host_key)
    client_key = directory / "client_key"
    if not client_key.exists():
        keygen(client_key)
    auth = directory / "authorized_keys"
    auth.write_text((directory / "client_key.pub").read_text())
    os.chmod(auth, 0o600)
    port = port or free_port()
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
    cfg = directory / "sshd_config"
    cfg.write_text(
        f"Port {port}\n"
        f"ListenAddress {address}\n"
        f"HostKey {host_key}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {auth}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "AllowTcpForwarding yes\n"
        "MaxStartups 100:30:200\n"
        "MaxSessions 100\n"
        "LogLevel INFO\n"  # "Accepted publickey" lines count the handshakes

        "Subsystem sftp internal-sftp\n"
    )
    log = open(directory / "sshd.log", "ab")
    argv = [find_sshd(), "-D", "-e", "-f", str(cfg)]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited at start: {(directory / 'sshd.log').read_text()[-500:]}")
        try:
            with socket.create_connection((address, port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("sshd did not start listening within 15s")
            time.sleep(0.05)
    pub = (directory / "ssh_host_ed25519_key.pub").read_text().split()
    import pwd

    return SshBed(dir=directory, port=port, pid=proc.pid, host_key_pub=f"{pub[0]} {pub[1]}",
                  client_key=client_key, user=pwd.getpwuid(os.getuid()).pw_name, _proc=proc)
