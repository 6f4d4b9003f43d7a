"""Host keys are checked on both sides: Fabric (remote commands) and the ssh
that rsync spawns. Unknown host refused under `yes`; changed key always
refused; `accept-new` records a first-seen key."""

import subprocess

from sshbed import keygen

from model_sync.config import load_config
from model_sync.sshconf import resolve


def _ssh_side(alias="bed"):
    cfg = load_config()
    argv = resolve(cfg.server(alias), cfg).ssh_argv()
    return subprocess.run(argv + ["true"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


def test_unknown_host_refused_with_fix(cli, bed):
    kh = bed.home / ".ssh" / "known_hosts"
    kh.write_text("")
    res = cli("exec", "bed", "true")
    assert res.returncode == 3
    msg = res.stderr.strip()
    assert len(msg.splitlines()) == 1
    assert f"host key for [127.0.0.1]:{bed.sshd.port} is not in {kh}" in msg
    assert f"ssh-keyscan -p {bed.sshd.port} 127.0.0.1" in msg and "accept-new" in msg
    assert kh.read_text() == ""  # nothing was trusted behind the user's back
    ssh = _ssh_side()
    assert ssh.returncode == 255 and "Host key verification failed" in ssh.stderr


def test_changed_key_always_refused(cli, bed, tmp_path):
    other = keygen(tmp_path / "other_host_key")
    fake = " ".join((tmp_path / "other_host_key.pub").read_text().split()[:2])
    kh = bed.home / ".ssh" / "known_hosts"
    kh.write_text(f"[127.0.0.1]:{bed.sshd.port} {fake}\n")
    for policy in ("yes", "accept-new"):
        bed.write_config(bed.config.read_text().replace("    model_base: " + str(bed.remote_base),
                                                        f"    strict_host_key_checking: {policy}\n"
                                                        f"    model_base: {bed.remote_base}", 1))
        res = cli("exec", "bed", "true")
        assert res.returncode == 3, res.stderr
        assert "has CHANGED" in res.stderr and "ssh-keygen -R" in res.stderr
        ssh = _ssh_side()
        assert ssh.returncode == 255
        assert kh.read_text() == f"[127.0.0.1]:{bed.sshd.port} {fake}\n"
        bed.write_config(bed.config.read_text().replace(f"    strict_host_key_checking: {policy}\n", ""))
    assert other.exists()


def test_accept_new_records_key_for_both_sides(cli, bed):
    kh = bed.home / ".ssh" / "known_hosts"
    kh.write_text("# my comment\n")
    bed.write_config(bed.config.read_text().replace("    model_base: " + str(bed.remote_base),
                                                    "    strict_host_key_checking: accept-new\n"
                                                    f"    model_base: {bed.remote_base}", 1))
    res = cli("exec", "bed", "echo trusted")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "trusted\n"
    lines = kh.read_text().splitlines()
    assert lines[0] == "# my comment"  # appended, not rewritten
    assert lines[1] == f"[127.0.0.1]:{bed.sshd.port} {bed.sshd.host_key_pub}"
    # the ssh that rsync uses now trusts it too, even under StrictHostKeyChecking=yes
    bed.write_config(bed.config.read_text().replace("    strict_host_key_checking: accept-new\n", ""))
    assert _ssh_side().returncode == 0


def test_ssh_side_accept_new_writes_same_file(bed):
    kh = bed.home / ".ssh" / "known_hosts"
    kh.write_text("")
    bed.write_config(bed.config.read_text().replace("    model_base: " + str(bed.remote_base),
                                                    "    strict_host_key_checking: accept-new\n"
                                                    f"    model_base: {bed.remote_base}", 1))
    res = _ssh_side()
    assert res.returncode == 0, res.stderr
    assert f"[127.0.0.1]:{bed.sshd.port} {bed.sshd.host_key_pub}" in kh.read_text()
