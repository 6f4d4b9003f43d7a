"""Fixtures shared by every test.

- every test gets its own HOME and no MODEL_SYNC_CONFIG from outside, so no
  test reads the developer's real home directory;
- one real OpenSSH sshd on 127.0.0.1 for the whole session (`sshd`), and a
  `bed` per test: known_hosts, a model-sync config whose aliases point at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sshbed import SshBed, free_port, start_sshd  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    for var in ("MODEL_SYNC_CONFIG", "SSH_AUTH_SOCK", "MODEL_SYNC_DEBUG", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    return home


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SshBed:
    bed = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield bed
    bed.stop()


@dataclass
class Bed:
    """A test's view of the real sshd: its home, config file and model bases."""

    sshd: SshBed
    home: Path
    config: Path
    remote_base: Path  # model_base of alias `bed` (same machine, reached over SSH)
    local_base: Path  # model_base of alias `local`
    down_port: int

    def write_config(self, text: str) -> Path:
        self.config.write_text(text)
        return self.config

    def trust(self):
        (self.home / ".ssh" / "known_hosts").write_text(self.sshd.known_hosts_line)


def bed_config(bed_sshd: SshBed, remote_base: Path, local_base: Path, down_port: int, extra: str = "") -> str:
    return f"""\
servers:
  bed:
    host: 127.0.0.1
    port: {bed_sshd.port}
    user: {bed_sshd.user}
    ssh_key: {bed_sshd.client_key}
    model_base: {remote_base}
  down:
    host: 127.0.0.1
    port: {down_port}
    user: {bed_sshd.user}
    ssh_key: {bed_sshd.client_key}
    model_base: /srv/models
  local:
    model_base: {local_base}
{extra}defaults:
  verify: true
  compress: false
  delete: false
  connect_timeout: 5
"""


@pytest.fixture
def bed(sshd, isolated_home, tmp_path, monkeypatch) -> Bed:
    remote_base = tmp_path / "remote models"  # a space on purpose
    local_base = tmp_path / "local_models"
    remote_base.mkdir()
    local_base.mkdir()
    cfg = isolated_home / ".model-sync.yaml"
    down_port = free_port()
    cfg.write_text(bed_config(sshd, remote_base, local_base, down_port))
    b = Bed(sshd, isolated_home, cfg, remote_base, local_base, down_port)
    b.trust()
    return b


def run_cli(*args, input: str | None = None, env: dict | None = None, timeout: float = 120):
    """Run the installed `model-sync` as a user would, in a subprocess."""
    # the model-sync of the environment running the tests, not another install on PATH
    exe = Path(sys.executable).parent / "model-sync"
    exe = str(exe) if exe.exists() else shutil.which("model-sync")
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([exe, *args], capture_output=True, text=True, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          env=full_env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
