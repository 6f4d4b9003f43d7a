"""Config loading and validation: the seed's file loads unchanged; every
mistake is one line naming file (and line) and the fix, exit code 2."""

import pytest

from model_sync.config import LOCAL_ALIAS, load_config, parse_config
from model_sync.errors import ConfigError, UnknownServerError

SEED = """\
servers:
  reaper:
    host: reaper.internal
    user: june
    model_base: /nfs/train/langdetector/models
    ssh_key: ~/.ssh/id_rsa
  local:
    model_base: ~/workspace/models
defaults:
  verify: true
  compress: true
  delete: false
naming:
  pattern: "{GPU}_{DATE}_{MODEL}_{VERSION}"
"""


def test_seed_shape_loads_unchanged(tmp_path):
    cfg = parse_config(SEED, tmp_path / "c.yaml")
    reaper = cfg.server("reaper")
    assert (reaper.host, reaper.user, reaper.model_base, reaper.ssh_key) == (
        "reaper.internal", "june", "/nfs/train/langdetector/models", "~/.ssh/id_rsa")
    assert reaper.strict_host_key_checking == "yes"
    assert cfg.server("local").is_local and cfg.server("local").model_base == "~/workspace/models"
    assert (cfg.defaults.verify, cfg.defaults.compress, cfg.defaults.delete) == (True, True, False)
    assert cfg.naming_pattern == "{GPU}_{DATE}_{MODEL}_{VERSION}"


def test_builtin_local_without_any_file(isolated_home):
    cfg = load_config()
    assert not cfg.exists
    assert list(cfg.servers) == [LOCAL_ALIAS]


def test_ssh_options_mapping_and_list(tmp_path):
    cfg = parse_config("""\
servers:
  a: {host: h, model_base: /m, ssh_options: {ServerAliveInterval: 15, Compression: false}}
  b: {host: h, model_base: /m, ssh_options: ["Ciphers=aes128-gcm@openssh.com"], strict_host_key_checking: accept-new}
  c: {host: h, model_base: /m, strict_host_key_checking: yes}
""", tmp_path / "c.yaml")
    assert cfg.server("a").ssh_options == (("ServerAliveInterval", "15"), ("Compression", "no"))
    assert cfg.server("b").ssh_options == (("Ciphers", "aes128-gcm@openssh.com"),)
    assert cfg.server("b").strict_host_key_checking == "accept-new"
    assert cfg.server("c").strict_host_key_checking == "yes"  # YAML's bare yes is a bool


@pytest.mark.parametrize("text, expected", [
    ("servers:\n  a: {host: h, model_base: /m\n", r"c\.yaml:\d+: YAML syntax error"),
    ("servers:\n  a:\n    hots: h\n    model_base: /m\n", r"c\.yaml:3: unknown key 'hots' in servers\.a \(did you mean 'host'\?\)"),
    ("server:\n  a: {}\n", r"c\.yaml:1: unknown key 'server' in the top level \(did you mean 'servers'\?\)"),
    ("servers:\n  a:\n    host: h\n", r"c\.yaml:2: servers\.a has no model_base; add 'model_base:"),
    ("servers:\n  a:\n    host: h\n    port: ssh\n    model_base: /m\n", r"c\.yaml:4: servers\.a\.port must be a whole number, not a string"),
    ("servers:\n  a:\n    host: h\n    port: true\n    model_base: /m\n", r"servers\.a\.port must be a whole number, not true/false"),
    ("servers:\n  a: {host: h, model_base: /m, strict_host_key_checking: no}\n", r"must be 'yes' or 'accept-new'"),
    ("servers: [a, b]\n", r"'servers' must be a mapping"),
    ("defaults:\n  verify: maybe\n", r"c\.yaml:2: defaults\.verify must be true or false"),
    ("servers:\n  'a:b': {model_base: /m}\n", r"server name 'a:b' may not contain"),
])
def test_validation_messages(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        parse_config(text, tmp_path / "c.yaml")
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_alias_lists_known(tmp_path):
    cfg = parse_config(SEED, tmp_path / "c.yaml")
    with pytest.raises(UnknownServerError, match=r"unknown server 'doomfist'; configured servers: local, reaper"):
        cfg.server("doomfist")


@pytest.mark.parametrize("text, expected", [
    ("servers:\n  a: {host: h\n", "YAML syntax error"),
    ("servers:\n  a:\n    hots: h\n    model_base: /m\n", "did you mean 'host'"),
    ("servers:\n  a:\n    host: h\n", "has no model_base"),
])
def test_cli_config_errors_are_one_line_exit_2(cli, isolated_home, text, expected):
    cfg = isolated_home / "bad.yaml"
    cfg.write_text(text)
    res = cli("--config", str(cfg), "servers")
    assert res.returncode == 2, res
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and str(cfg) in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_cli_env_config_missing_file(cli, isolated_home):
    res = cli("servers", env={"MODEL_SYNC_CONFIG": str(isolated_home / "nope.yaml")})
    assert res.returncode == 2
    assert "nope.yaml: no such config file; create one with 'model-sync init'" in res.stderr


def test_cli_unknown_alias(cli, bed):
    res = cli("exec", "doomfist", "true")
    assert res.returncode == 2
    assert res.stderr.strip() == ("model-sync: error: unknown server 'doomfist'; configured servers: bed, down, local "
                                  "(add it under 'servers:' in the config, or run 'model-sync servers')")


def test_cli_missing_key_file(cli, bed):
    text = bed.config.read_text().replace(str(bed.sshd.client_key), str(bed.home / "missing_key"), 1)
    bed.write_config(text)
    res = cli("exec", "bed", "true")
    assert res.returncode == 2
    assert "servers.bed.ssh_key:" in res.stderr and "missing_key does not exist" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_debug_shows_traceback(cli, isolated_home):
    cfg = isolated_home / "bad.yaml"
    cfg.write_text("servers: [\n")
    res = cli("--config", str(cfg), "servers", env={"MODEL_SYNC_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_init_writes_starter_and_refuses_overwrite(cli, isolated_home):
    target = isolated_home / ".model-sync.yaml"
    res = cli("init")
    assert res.returncode == 0, res.stderr
    text = target.read_text()
    assert text.startswith("# model-sync configuration")
    load_config(target)  # the starter is itself a valid config
    target.write_text(text + "# mine\n")
    res = cli("init")
    assert res.returncode == 2 and "already exists; pass --force" in res.stderr
    assert target.read_text().endswith("# mine\n")
    assert cli("init", "--force").returncode == 0
    assert not target.read_text().endswith("# mine\n")


def test_init_json(cli, isolated_home):
    import json

    res = cli("init", "--json")
    assert res.returncode == 0
    assert json.loads(res.stdout) == {"written": str(isolated_home / ".model-sync.yaml")}
