"""Servers that differ the way real ones do, as logins on one real sshd.

Each variant is a user of its own on one sshd of this module (tests/sshbed.py's
start_sshd; its authorized_keys serves every user), so a variant costs a
useradd, not a server:

  zsh     a non-root user whose login shell is zsh (clean)
  chatty  bash, and a ~/.bashrc that prints a banner to stdout before its
          interactive-shell check, as conda and cluster banners do
  noxxh   no xxhsum on PATH, a python3 without xxhash: hashes by sha256
  pyxxh   no xxhsum on PATH, a python3 with xxhash

Fixtures; import them into a test module (`from serverbed import field,
fleet  # noqa: F401`), they build on conftest.py's `bed`:

- `fleet` (session): a Fleet, its sshd and a Login per variant. Users are
  made with useradd (tests run as root), marked by their GECOS comment, kept
  while any test session holds a shared flock on LOCK, and removed
  (userdel -r) by the last session to end. A user of these names that is not
  ours is never touched: the fixture fails instead.
- `field` (per test): a FieldBed. The test's config (the `bed`, `down` and
  `local` aliases of conftest.py) gets an alias per variant, each with a
  fresh model_base `~/models-TOKEN` in that user's home (removed after the
  test), and `aliased`: the zsh user, reached by a Host alias that only
  ~/.ssh/config defines (the model-sync config names nothing but the alias).

A test that changes a user's files (e.g. rewrites ~/.bashrc) puts them back
with `Login.replaced(name, text)`, a context manager."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from sshbed import SshBed, start_sshd

LOCK = Path("/run/model-sync-serverbed.lock")
MARK = "model-sync test bed"  # the GECOS comment of users this module made
PREFIX = "ms-"

BANNER = ("Welcome to the field cluster: /home is 93% full", "(base) conda environment activated")

# name -> (login shell, {file in home: text}, hide xxhsum, python3 with xxhash)
VARIANTS: dict[str, tuple[str, dict[str, str], bool, bool]] = {
    "zsh": ("zsh", {}, False, False),
    "chatty": ("bash", {".bashrc": "".join(f"echo '{line}'\n" for line in BANNER)
                        + "case $- in *i*) ;; *) return;; esac\n"}, False, False),
    "noxxh": ("bash", {".bashrc": 'PATH=$HOME/.bin; export PATH\n'
                                  "case $- in *i*) ;; *) return;; esac\n"}, True, False),
    "pyxxh": ("bash", {".bashrc": 'PATH=$HOME/.bin; export PATH; PYTHONPATH=$HOME/.pylib; export PYTHONPATH\n'
                                  "case $- in *i*) ;; *) return;; esac\n"}, True, True),
}


@dataclass
class Login:
    """One variant: a user on the fleet's sshd."""

    name: str  # the variant, e.g. "zsh"
    user: str  # e.g. "ms-zsh"
    uid: int
    gid: int
    home: Path
    shell: str  # absolute path of the login shell

    def write(self, name: str, text: str) -> Path:
        """Put a file in the user's home, owned by the user (atomically: other
        test sessions may be logging in as this user)."""
        path = self.home / name
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text)
        os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, path)
        return path

    @contextlib.contextmanager
    def replaced(self, name: str, text: str):
        """The file `name` in the home holds `text` for the with-block."""
        path = self.home / name
        old = path.read_text() if path.exists() else None
        self.write(name, text)
        try:
            yield path
        finally:
            if old is None:
                path.unlink(missing_ok=True)
            else:
                self.write(name, old)


@dataclass
class Fleet:
    sshd: SshBed
    logins: dict[str, Login]


def _user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _ensure_user(name: str, shell: str) -> Login:
    user = PREFIX + name
    entry = _user(user)
    if entry is not None and entry.pw_gecos != MARK:
        raise RuntimeError(f"user {user} exists and was not made by tests/serverbed.py; remove or rename it")
    path = shutil.which(shell) or f"/bin/{shell}"
    if not os.path.exists(path):
        raise RuntimeError(f"{shell} is not installed: scripts/test.sh installs it (apt-get install {shell})")
    if entry is None:
        # -p '*': no password, yet not locked (sshd refuses a locked account's key)
        subprocess.run(["useradd", "-m", "-s", path, "-c", MARK, "-p", "*", user], check=True,
                       capture_output=True)
    elif entry.pw_shell != path:
        subprocess.run(["usermod", "-s", path, user], check=True, capture_output=True)
    entry = pwd.getpwnam(user)
    return Login(name, user, entry.pw_uid, entry.pw_gid, Path(entry.pw_dir), path)


def _hide_xxhsum(login: Login) -> None:
    """~/.bin: every command of the usual PATH but xxhsum (and its xxh*sum links)."""
    bin_dir = login.home / ".bin"
    bin_dir.mkdir(exist_ok=True)
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        for entry in os.scandir(d):
            link = bin_dir / entry.name
            if entry.name.startswith("xxh") or link.is_symlink():
                continue
            link.symlink_to(os.path.join(d, entry.name))


def _python_xxhash(login: Login) -> None:
    """~/.pylib/xxhash: this test environment's module, for the server's python3
    (the same Python version: its compiled part is for that version)."""
    import xxhash

    src = Path(xxhash.__file__).parent
    dst = login.home / ".pylib" / "xxhash"
    if not dst.exists():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["chown", "-R", f"{login.uid}:{login.gid}", str(login.home / ".pylib")], check=True)


def build(directory: Path) -> Fleet:
    """Make (or refresh) every variant's user and start the sshd."""
    logins = {}
    for name, (shell, files, hide, pyxxh) in VARIANTS.items():
        login = _ensure_user(name, shell)
        for fname, text in files.items():
            login.write(fname, text)
        if hide:
            _hide_xxhsum(login)
        if pyxxh:
            _python_xxhash(login)
        logins[name] = login
    sshd = start_sshd(directory)
    # sshd reads authorized_keys as the user logging in
    directory.chmod(0o755)
    (directory / "authorized_keys").chmod(0o644)
    return Fleet(sshd, logins)


def remove_users() -> None:
    for name in VARIANTS:
        entry = _user(PREFIX + name)
        if entry is not None and entry.pw_gecos == MARK:
            res = subprocess.run(["userdel", "-r", "-f", PREFIX + name], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"serverbed: userdel {PREFIX + name}: {res.stderr.strip()}", file=sys.stderr)


@pytest.fixture(scope="session")
def fleet() -> Fleet:
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    directory = Path(tempfile.mkdtemp(prefix="model-sync-serverbed-"))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one session creates at a time
        try:
            built = build(directory)
        finally:
            fcntl.flock(fd, fcntl.LOCK_SH)  # others may use them now; none removes them while we hold this
        try:
            yield built
        finally:
            built.sshd.stop()
            try:  # the last session to end removes the users
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                remove_users()
    finally:
        os.close(fd)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class FieldBed:
    bed: object  # conftest.Bed: home, config, local_base, ...
    fleet: Fleet
    bases: dict[str, Path]  # alias -> its model_base, absolute

    def login(self, alias: str) -> Login:
        return self.fleet.logins["zsh" if alias == "aliased" else alias]

    def base(self, alias: str) -> Path:
        return self.bases[alias]

    def ssh(self, alias: str, command: str) -> subprocess.CompletedProcess:
        """Run `command` as the variant's user through its login shell (as
        model-sync's sessions do), with the test's ssh settings."""
        s = self.fleet.sshd
        return subprocess.run(["ssh", "-F", "none", "-p", str(s.port), "-i", str(s.client_key),
                               "-o", f"UserKnownHostsFile={self.bed.home / '.ssh' / 'known_hosts'}",
                               "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                               f"{self.login(alias).user}@127.0.0.1", command],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)


@pytest.fixture
def field(bed, fleet) -> FieldBed:
    from conftest import bed_config

    s = fleet.sshd
    token = uuid.uuid4().hex[:8]
    bases, extra = {}, []
    for alias in [*VARIANTS, "aliased"]:
        login = fleet.logins["zsh" if alias == "aliased" else alias]
        name = f"models-{alias}-{token}"
        bases[alias] = login.home / name
        bases[alias].mkdir()
        os.chown(bases[alias], login.uid, login.gid)
        where = ("    host: ms-field\n" if alias == "aliased" else
                 f"    host: 127.0.0.1\n    port: {s.port}\n    user: {login.user}\n    ssh_key: {s.client_key}\n")
        extra.append(f"  {alias}:\n{where}    model_base: ~/{name}\n")
    bed.write_config(bed_config(bed.sshd, bed.remote_base, bed.local_base, bed.down_port, "".join(extra)))
    ssh_dir = bed.home / ".ssh"
    (ssh_dir / "config").write_text(
        f"Host ms-field\n  HostName 127.0.0.1\n  Port {s.port}\n  User {fleet.logins['zsh'].user}\n"
        f"  IdentityFile {s.client_key}\n  IdentitiesOnly yes\n")
    with open(ssh_dir / "known_hosts", "a") as fh:
        fh.write(s.known_hosts_line)
    try:
        yield FieldBed(bed, fleet, bases)
    finally:
        for path in bases.values():
            shutil.rmtree(path, ignore_errors=True)
