"""~/.ssh/config is honoured, and the same resolved settings reach Fabric and
the ssh argv rsync uses; HOME alone decides which ~/.ssh is read."""

import subprocess

from model_sync.config import load_config
from model_sync.sshconf import resolve


def _alias_config(bed, host="mybox", extra_server=""):
    return f"""\
servers:
  box:
    host: {host}
    model_base: {bed.remote_base}
{extra_server}"""


def _write_ssh_config(bed, text):
    (bed.home / ".ssh" / "config").write_text(text)


def test_ssh_config_alias_reaches_both_sides(cli, bed):
    _write_ssh_config(bed, f"""\
Host mybox
    HostName 127.0.0.1
    Port {bed.sshd.port}
    User {bed.sshd.user}
    IdentityFile {bed.sshd.client_key}
""")
    bed.write_config(_alias_config(bed))
    res = cli("servers")
    assert f"| box | 127.0.0.1 | {bed.sshd.user} | {bed.sshd.port} |" in res.stdout
    res = cli("exec", "box", "echo via-fabric")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "via-fabric\n"

    cfg = load_config()
    target = resolve(cfg.server("box"), cfg)
    assert (target.hostname, target.port, target.identity_files) == ("127.0.0.1", bed.sshd.port, (str(bed.sshd.client_key),))
    argv = target.ssh_argv()
    # the files come from $HOME, not from the passwd entry ssh would use by itself
    assert f"UserKnownHostsFile={bed.home}/.ssh/known_hosts" in argv
    assert argv[1:3] == ["-F", f"{bed.home}/.ssh/config"]
    ssh = subprocess.run(argv + ["echo via-ssh"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout == "via-ssh\n"


def test_tilde_identity_file_expands_from_home(cli, bed):
    import shutil

    shutil.copy(bed.sshd.client_key, bed.home / ".ssh" / "id_ed25519")
    _write_ssh_config(bed, f"Host mybox\n    HostName 127.0.0.1\n    Port {bed.sshd.port}\n    User {bed.sshd.user}\n")
    bed.write_config(_alias_config(bed))
    cfg = load_config()
    target = resolve(cfg.server("box"), cfg)
    assert target.identity_files == (f"{bed.home}/.ssh/id_ed25519",)
    res = cli("exec", "box", "echo default-key")
    assert res.returncode == 0, res.stderr


def test_missing_identity_in_ssh_config(cli, bed):
    _write_ssh_config(bed, "Host mybox\n    HostName 127.0.0.1\n    IdentityFile ~/.ssh/nope_key\n")
    bed.write_config(_alias_config(bed))
    res = cli("exec", "box", "true")
    assert res.returncode == 2
    assert "nope_key" in res.stderr and "does not exist" in res.stderr


def test_proxyjump_through_the_bed(cli, bed):
    """ProxyJump from ~/.ssh/config: both sides go through the jump host with
    the same known_hosts and key (OpenSSH's -J would not pass them on)."""
    _write_ssh_config(bed, f"""\
Host jumpbox
    HostName 127.0.0.1
    Port {bed.sshd.port}
    User {bed.sshd.user}
Host behind
    HostName 127.0.0.1
    Port {bed.sshd.port}
    User {bed.sshd.user}
    ProxyJump jumpbox
Host *
    IdentityFile {bed.sshd.client_key}
""")
    bed.write_config(_alias_config(bed, host="behind"))
    res = cli("exec", "box", "echo jumped")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "jumped\n"
    cfg = load_config()
    target = resolve(cfg.server("box"), cfg)
    assert target.proxy_jump == "jumpbox"
    proxy = target.proxy_command()
    assert proxy[-3:] == ["-W", f"127.0.0.1:{bed.sshd.port}", "jumpbox"]
    assert f"UserKnownHostsFile={bed.home}/.ssh/known_hosts" in proxy
    ssh = subprocess.run(target.ssh_argv() + ["echo jumped-ssh"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=30)
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout == "jumped-ssh\n"
    # and an unknown jump host is refused on the way
    (bed.home / ".ssh" / "known_hosts").write_text("")
    assert cli("exec", "box", "true").returncode == 3
