"""One SSH handshake per server per command: our scripts, the lock, hashing
and every rsync stream share one OpenSSH connection (a ControlMaster in a
private directory that is gone when the command ends). Counted from the
real sshd's log, where each handshake is one "Accepted publickey" line."""

import os
import subprocess

import pytest


def _logins(bed) -> int:
    return (bed.sshd.dir / "sshd.log").read_text(errors="replace").count("Accepted publickey")


def _model(root, name="RTX3090_N2501_CONN_250715"):
    src = root / name
    (src / "tok").mkdir(parents=True)
    for i in range(2):  # 80 MiB in two files: the push takes parallel streams
        (src / f"shard-{i}.safetensors").write_bytes(os.urandom(40 << 20))
    for i in range(20):
        (src / "tok" / f"part-{i}.json").write_text(f"{i}\n")
    return src


def test_each_command_pays_one_handshake(cli, bed, tmp_path):
    src = _model(tmp_path)
    name = src.name
    sockets = tmp_path / "tmp"
    sockets.mkdir()
    env = {"TMPDIR": str(sockets)}
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    (src / "tok" / "part-0.json").write_text("changed\n")
    commands = [
        ("push", str(src), "bed"),
        ("diff", str(src), f"bed:{name}"),
        ("diff", "--checksum", str(src), f"bed:{name}"),
        ("list", "bed"),
        ("versions", "bed"),
        ("verify", str(src), f"bed:{name}"),
        ("pull", f"bed:{name}", str(pulled)),
        ("push", "--delete", "--yes", str(src), "bed"),
    ]
    for args in commands:
        before = _logins(bed)
        res = cli(*args, env=env)
        assert res.returncode in (0, 1), (args, res.stderr)
        assert _logins(bed) - before == 1, args
        # the private socket directory and the master are gone with the command
        assert list(sockets.iterdir()) == [], args
        left = subprocess.run(["pgrep", "-f", f"ControlPath={sockets}"], capture_output=True, text=True)
        assert left.stdout == "", args
    assert (pulled / name / "shard-1.safetensors").read_bytes() == (src / "shard-1.safetensors").read_bytes()


def test_server_to_server_diff_one_handshake_each(cli, bed, tmp_path):
    src = _model(tmp_path)
    assert cli("push", str(src), "bed").returncode == 0
    assert cli("push", str(src), f"bed:copy/{src.name}").returncode == 0
    before = _logins(bed)
    res = cli("diff", f"bed:{src.name}", f"bed:copy/{src.name}")
    assert res.returncode == 0, res.stderr
    assert _logins(bed) - before == 2  # one per side: each side is its own server


@pytest.mark.parametrize("args", [("list", "bed"), ("push", "{src}", "bed")])
def test_connection_errors_name_the_fix(cli, bed, tmp_path, args):
    src = _model(tmp_path)
    kh = bed.home / ".ssh" / "known_hosts"
    kh.write_text("")
    res = cli(*(a.format(src=src) for a in args))
    assert res.returncode == 3, res.stderr
    assert "Traceback" not in res.stderr  # push announces itself first; the error is one line
    assert f"host key for [127.0.0.1]:{bed.sshd.port} is not in {kh}" in res.stderr.strip().splitlines()[-1]
    assert kh.read_text() == ""
    res = cli("list", "down")
    assert res.returncode == 3 and "connection refused; is sshd running" in res.stderr


def test_entry_point_starts_the_connection_early_and_only_if_it_matches(cli, bed):
    from model_sync.early import _load, _save

    ssh_dir = bed.home / ".ssh"
    (ssh_dir / "conf.d").mkdir()
    (ssh_dir / "conf.d" / "extra").write_text("Host *\n  ServerAliveCountMax 4\n")
    (ssh_dir / "config").write_text(f"Include {ssh_dir}/conf.d/*\n")
    cache = bed.home / ".cache" / "model-sync" / "connections.cache"
    assert cli("list", "bed").returncode == 0  # connects, and remembers how
    data = _load(str(cache))
    assert "ControlPath=@CONTROL@" in data["hosts"]["bed"]["argv"]
    before = _logins(bed)
    assert cli("list", "bed").returncode == 0  # started by the entry point, adopted: one handshake
    assert _logins(bed) - before == 1
    # an argv that is not what the command would use is started (the entry
    # point cannot know) but never adopted: closed, and a proper connection made
    data["hosts"]["bed"]["argv"][1:1] = ["-o", "ConnectTimeout=7"]
    _save(str(cache), data)
    before = _logins(bed)
    assert cli("list", "bed").returncode == 0
    assert _logins(bed) - before == 2
    # a change anywhere ssh reads its config (here an Include'd file) is seen
    # before connecting: nothing starts early, and the entry is recorded afresh
    assert cli("list", "bed").returncode == 0  # back to the proper argv
    (ssh_dir / "conf.d" / "extra").write_text("Host *\n  ServerAliveCountMax 5\n")
    before = _logins(bed)
    assert cli("list", "bed").returncode == 0
    assert _logins(bed) - before == 1
    assert "serveralivecountmax 5" in _load(str(cache))["hosts"]["bed"]["resolve"][1]
    # an edited model-sync config makes the whole cache stale
    bed.write_config(bed.config.read_text() + "\n")
    before = _logins(bed)
    assert cli("list", "bed").returncode == 0
    assert _logins(bed) - before == 1
