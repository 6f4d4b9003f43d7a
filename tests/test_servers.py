"""`model-sync servers` and `servers --check` against the real sshd."""

import json


def test_servers_table_plain_when_piped(cli, bed):
    res = cli("servers")
    assert res.returncode == 0, res.stderr
    assert "\x1b[" not in res.stdout
    lines = res.stdout.splitlines()
    assert "| Alias | Host | User | Port | Model base |" in lines
    assert f"| bed | 127.0.0.1 | {bed.sshd.user} | {bed.sshd.port} | {bed.remote_base} |" in lines
    assert f"| local | localhost | - | - | {bed.local_base} |" in lines


def test_servers_json_is_one_document(cli, bed):
    res = cli("servers", "--json")
    data = json.loads(res.stdout)
    assert {s["alias"] for s in data["servers"]} == {"bed", "down", "local"}
    assert data["checks"] is None


def test_servers_check_reports_each_row(cli, bed):
    res = cli("--json", "servers", "--check")
    assert res.returncode == 1  # `down` is unreachable
    checks = {c["alias"]: c for c in json.loads(res.stdout)["checks"]}
    ok = checks["bed"]
    assert ok["reachable"] is True and ok["error"] is None
    assert ok["rsync"].startswith("3.") and ok["rtt_ms"] > 0
    assert ok["xxhsum"] and ok["free_bytes"] > 0 and ok["model_base_exists"] is True
    down = checks["down"]
    assert down["reachable"] is False
    assert f"cannot connect to {bed.sshd.user}@127.0.0.1:{bed.down_port}: connection refused" in down["error"]
    assert checks["local"]["reachable"] is True


def test_servers_check_markdown_shows_error_row(cli, bed):
    res = cli("servers", "--check")
    assert res.returncode == 1
    rows = [line for line in res.stdout.splitlines() if line.startswith("| down ")]
    assert rows and "connection refused" in rows[0]
    assert "2 ok, 1 failed" in res.stdout


def test_servers_check_bounded_on_hung_host(cli, bed):
    """A host that accepts TCP but never speaks SSH is reported, not waited on forever."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.5)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        text = bed.config.read_text().replace(f"port: {bed.down_port}", f"port: {port}")
        text = text.replace("connect_timeout: 5", "connect_timeout: 2")
        bed.write_config(text)
        res = cli("--json", "servers", "--check", timeout=60)
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()
    assert res.returncode == 1
    down = {c["alias"]: c for c in json.loads(res.stdout)["checks"]}["down"]
    assert down["reachable"] is False and down["error"]
    assert "Traceback" not in res.stderr
