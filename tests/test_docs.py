"""README.md cannot drift from the code: every config key and exit code the
code knows is documented, and the README's first command names a real model."""

import re
from pathlib import Path

from model_sync import config, errors

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_config_key_is_documented():
    for table in (config.SERVER_KEYS, config.DEFAULT_KEYS):
        for key in table:
            assert f"| `{key}` |" in README, key
    for section, table in (("naming", config.NAMING_KEYS), ("mcp", config.MCP_KEYS)):
        for key in table:
            assert f"| `{section}.{key}` |" in README, f"{section}.{key}"


def test_every_exit_code_is_documented():
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", README, re.M)}
    assert codes <= documented, codes - documented


def test_first_commands_are_install_and_test():
    block = README.split("```bash", 1)[1].split("```", 1)[0]
    commands = [ln for ln in block.splitlines() if ln and not ln.startswith("#")]
    assert commands[0].startswith("bash scripts/install.sh && model-sync push examples/")
    assert commands[1] == "bash scripts/test.sh"
    model = commands[0].split("push ", 1)[1].split()[0]
    assert (README and Path(__file__).resolve().parent.parent / model).is_dir()
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
