"""The only module that turns results into text.

Three forms: rich tables on a terminal, markdown tables (plain text, no ANSI)
when stdout is not a terminal or for an assistant, and JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

FORMATS = ("auto", "rich", "markdown", "json")


@dataclass
class View:
    """A titled table plus summary lines: what every result becomes before
    being written in one of the three forms."""

    title: str | None
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


# -- small formatters --------------------------------------------------------
def human_size(n: int | None) -> str:
    """Decimal units, as the seed writes them (156MB, 2.1GB)."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(size)}B"
            return f"{size:.1f}{unit}" if size < 100 else f"{size:.0f}{unit}"
        size /= 1000
    return f"{size:.1f}PB"


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m {sec}s"
    h, m = divmod(m, 60)
    return f"{h}h {m}m"


def human_rate(bytes_: int, seconds: float) -> str:
    if not bytes_ or not seconds or seconds <= 0:
        return "-"
    return human_size(int(bytes_ / seconds)) + "/s"


def yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def cell(value: Any) -> str:
    """Show any value in a table cell; control characters in file names are
    escaped so a crafted name cannot break a table or a terminal."""
    if value is None:
        return "-"
    text = str(value)
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        text = text.encode("unicode_escape").decode("ascii")
    return text


# -- views of each result ------------------------------------------------------
VIEWS: dict[type, Callable[[Any], list[View]]] = {}


def view_of(cls):
    def register(fn):
        VIEWS[cls] = fn
        return fn
    return register


def views(result) -> list[View]:
    for cls, fn in VIEWS.items():
        if isinstance(result, cls):
            return fn(result)
    raise TypeError(f"no view for {type(result).__name__}")


def _register_builtin_views():
    from .api import ExecResult, ServersResult, VerifyResult
    from .transfer import TransferResult

    @view_of(ServersResult)
    def _servers(r: ServersResult) -> list[View]:
        if r.checks is None:
            rows = [[s.alias, s.host, cell(s.user), cell(s.port), s.model_base] for s in r.servers]
            return [View("Servers", ["Alias", "Host", "User", "Port", "Model base"], rows,
                         [f"Config: {r.config_path}"])]
        rows = []
        for c in r.checks:
            rows.append([
                c.alias, c.host, yes_no(c.reachable),
                "-" if c.rtt_ms is None else f"{c.rtt_ms:.0f}ms",
                cell(c.rsync), cell(c.xxhsum), cell(c.python_xxhash), human_size(c.free_bytes),
                cell(c.error) if c.error else "ok",
            ])
        failed = sum(1 for c in r.checks if not c.reachable or c.error)
        return [View("Server check", ["Alias", "Host", "Reachable", "RTT", "rsync", "xxhsum", "py-xxhash",
                                      "Free", "Status"], rows,
                     [f"{len(r.checks) - failed} ok, {failed} failed"])]

    @view_of(TransferResult)
    def _transfer(r: TransferResult) -> list[View]:
        if r.dry_run:
            rows = [[cell(p.path), human_size(p.size) if p.action == "send" else "-", p.action]
                    for p in r.planned]
            sends = sum(1 for p in r.planned if p.action == "send")
            dels = len(r.planned) - sends
            return [View(f"Dry run: {r.direction} {r.source} -> {r.destination}", ["File", "Size", "Action"], rows,
                         [f"Would send {sends} file(s), {human_size(r.bytes)}; would delete {dels}. Nothing was changed."])]
        verified = "-" if r.verified is None else ("yes" if r.verified else "NO")
        if r.verified and r.algorithm:
            verified += f" ({r.algorithm})"
        rows = [["Files", str(r.files)], ["Size", human_size(r.bytes)], ["Time", human_seconds(r.seconds)],
                ["Speed", human_rate(r.bytes, r.seconds)], ["Verified", verified]]
        if r.deleted:
            rows.append(["Deleted", str(len(r.deleted))])
        notes = [f"{r.source} -> {r.destination}"]
        if r.mismatched:
            notes.append("Mismatched: " + ", ".join(cell(p) for p in r.mismatched))
        return [View("Result", ["Metric", "Value"], rows, notes)]

    @view_of(VerifyResult)
    def _verify(r: VerifyResult) -> list[View]:
        rows = [["Files compared", str(r.files)], ["Size", human_size(r.bytes)], ["Algorithm", r.algorithm],
                ["Time", human_seconds(r.seconds)], ["Mismatched", str(len(r.mismatched))],
                ["Only local", str(len(r.only_local))], ["Only remote", str(len(r.only_remote))],
                ["Verified", "yes" if r.ok else "NO"]]
        notes = [f"{r.local} <-> {r.remote}"]
        for label, names in (("Mismatched", r.mismatched), ("Only local", r.only_local),
                             ("Only remote", r.only_remote)):
            if names:
                notes.append(f"{label}: " + ", ".join(cell(p) for p in names[:50]))
        return [View("Verify", ["Metric", "Value"], rows, notes)]

    @view_of(ExecResult)
    def _exec(r: ExecResult) -> list[View]:
        rows = [["Server", r.server], ["Command", cell(r.command)], ["Exit code", str(r.exit_code)],
                ["Time", human_seconds(r.seconds)]]
        if r.timed_out:
            rows.append(["Timed out", "yes"])
        return [View("Exec", ["Metric", "Value"], rows)]


# -- output forms ---------------------------------------------------------------
def choose_format(fmt: str, stream=None) -> str:
    if fmt != "auto":
        return fmt
    stream = stream or sys.stdout
    return "rich" if stream.isatty() and os.environ.get("TERM") != "dumb" else "markdown"


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for name in getattr(obj, "__json_properties__", ()):
            out[name] = to_jsonable(getattr(obj, name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def to_json(result) -> str:
    return json.dumps(to_jsonable(result), indent=2, ensure_ascii=False)


def markdown(result) -> str:
    """Markdown tables: what an assistant shows, and what a pipe receives."""
    out: list[str] = []
    for v in views(result):
        if v.title:
            out.append(f"## {v.title}\n")
        out.append("| " + " | ".join(_md(c) for c in v.columns) + " |")
        out.append("|" + "|".join("-" * (len(c) + 2) for c in v.columns) + "|")
        for row in v.rows:
            out.append("| " + " | ".join(_md(c) for c in row) + " |")
        if v.notes:
            out.append("")
            out.extend(v.notes)
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def _md(text: str) -> str:
    return cell(text).replace("|", "\\|")


def print_result(result, fmt: str = "auto", file=None) -> None:
    file = file or sys.stdout
    fmt = choose_format(fmt, file)
    if fmt == "json":
        file.write(to_json(result) + "\n")
    elif fmt == "markdown":
        file.write(markdown(result))
    else:
        from rich.console import Console
        from rich.table import Table

        console = Console(file=file)
        for v in views(result):
            table = Table(title=v.title, title_justify="left", title_style="bold")
            for col in v.columns:
                table.add_column(col, overflow="fold")
            for row in v.rows:
                table.add_row(*[cell(c) for c in row])
            console.print(table)
            for note in v.notes:
                console.print(note, highlight=False, markup=False)
    file.flush()


_register_builtin_views()
