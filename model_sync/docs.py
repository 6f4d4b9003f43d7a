"""The command reference in SKILL.md and README.md, rendered from the click
command tree so it cannot drift from the code.

A document opts in with a marked block; `prog=` names the command its
examples use (the skill runs the wrapper script, the README the command):

    <!-- commands:start prog=scripts/model-sync.sh -->
    ...generated...
    <!-- commands:end -->

`python -m model_sync.docs` rewrites the blocks; `--check` only reports
stale ones (exit 1), as tests/test_skill.py does."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = ("SKILL.md", "README.md")
BLOCK = re.compile(r"(<!-- commands:start(?: prog=(?P<prog>\S+))? -->\n)(?P<body>.*?)(<!-- commands:end -->)", re.S)
# shared by every command and documented once, under the global options
SHARED = {"--json", "--format", "--help"}


def _help_records(command: click.Command, ctx: click.Context, skip=frozenset()) -> list[tuple[str, str]]:
    records = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option) and not param.hidden and not (set(param.opts) & skip):
            record = param.get_help_record(ctx)
            if record:
                records.append(record)
    return records


def _option_lines(records: list[tuple[str, str]]) -> list[str]:
    return [f"- `{flags}`: {' '.join(text.split())}" for flags, text in records]


def command_reference(prog: str = "model-sync", group: click.Group | None = None) -> str:
    """Markdown for every visible command: one-line help, usage and options."""
    if group is None:
        from .cli import cli as group

    root = click.Context(group, info_name=prog)
    out = ["Global options (before the command; `--json` and `--format` also after it):", ""]
    out += _option_lines(_help_records(group, root, skip={"--help"}))
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=root)
        usage = " ".join([prog, name, *command.collect_usage_pieces(ctx)])
        out += ["", f"#### `{name}`", "", command.get_short_help_str(limit=300), "",
                "```", usage, "```"]
        options = _option_lines(_help_records(command, ctx, skip=SHARED))
        if options:
            out += [""] + options
    return "\n".join(out) + "\n"


def refresh(text: str) -> str:
    """`text` with every marked block rendered afresh."""
    return BLOCK.sub(lambda m: m.group(1) + command_reference(m.group("prog") or "model-sync") + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    check = "--check" in argv
    stale = []
    for name in DOCUMENTS:
        path = REPO / name
        if not path.exists():
            continue
        text = path.read_text(encoding="utf-8")
        new = refresh(text)
        if new != text:
            stale.append(name)
            if not check:
                path.write_text(new, encoding="utf-8")
    verb = "out of date" if check else "rewrote"
    for name in stale:
        print(f"model-sync docs: {verb}: {name}", file=sys.stderr)
    if check and stale:
        print("run 'python -m model_sync.docs' to regenerate the command reference", file=sys.stderr)
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
