"""The only module that turns results into text.

Three forms: rich tables on a terminal, markdown tables (plain text, no ANSI)
when stdout is not a terminal or for an assistant, and JSON for scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
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


# control characters, and bytes that are not UTF-8 (surrogate-escaped)
_UNSAFE = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")


def cell(value: Any) -> str:
    """Show any value in a table cell; control characters in file names are
    escaped so a crafted name cannot break a table or a terminal."""
    if value is None:
        return "-"
    text = str(value)
    if not _UNSAFE.search(text):  # nearly always: one C-level scan
        return text
    if any(ord(c) < 32 or c == "\x7f" for c in text):
        text = text.encode("unicode_escape").decode("ascii")
    if any("\udc80" <= c <= "\udcff" for c in text):  # bytes that are not UTF-8, shown as \xNN
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text


# -- views of each result ------------------------------------------------------
SAME_ROWS_MAX = 100  # a diff lists unchanged files only up to this many
VIEWS: dict[type, Callable[[Any], list[View]]] = {}


def view_of(cls):
    def register(fn):
        VIEWS[cls] = fn
        return fn
    return register


def views(result) -> list[View]:
    if not VIEWS:  # registered on first use: importing render stays cheap
        _register_builtin_views()
        _register_inventory_views()
    if type(result) in VIEWS:  # a subclass's own view before its parent's
        return VIEWS[type(result)](result)
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
        if r.resumed:
            notes.append(f"Resumed an interrupted {r.direction}: {human_size(r.resumed_bytes)} of this model was "
                         "already there and was not sent again"
                         + (f" (and {human_size(r.resumed_partial_bytes)} in partial files)"
                            if r.resumed_partial_bytes else ""))
        if r.up_to_date:
            notes.append("Already up to date: every file matches in size, time and mode, and the destination's "
                         "manifest lists them all; nothing was sent or changed")
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
        if r.resolved:
            notes.append(f"Resolved to {cell(r.resolved)}")
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


def human_date(ts: int | None) -> str:
    """A day, in this machine's time zone (as the seed's Modified column)."""
    if ts is None:
        return "-"
    import time

    return time.strftime("%Y-%m-%d", time.localtime(ts))


def _plural(n: int, word: str = "file", plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _register_inventory_views():
    import shlex

    from .api import TransferReport
    from .inventory import DiffResult, ModelList, PruneResult, VersionsResult
    from .transfer import TransferResult

    @view_of(TransferReport)
    def _report(r: TransferReport) -> list[View]:
        out = VIEWS[TransferResult](r)
        if r.selector:
            out[0].notes.insert(0, f"Resolved {r.selector} -> {cell(r.resolved)}")
        out[0].notes.extend(f"Warning: {cell(w)}" for w in r.warnings)
        return out

    def size_of(n: int | None, complete: bool = True) -> str:
        return human_size(n) if complete or n is None else ">=" + human_size(n)

    @view_of(DiffResult)
    def _diff(r: DiffResult) -> list[View]:
        # every difference; unchanged files too unless there are many (a 20,000-row
        # table helps nobody, and floods an assistant's context)
        listed = r.entries if r.same <= SAME_ROWS_MAX else [e for e in r.entries if e.status != "same"]
        rows = [[cell(e.path), "-" if e.left_size is None else human_size(e.left_size),
                 "-" if e.right_size is None else human_size(e.right_size), e.status] for e in listed]
        lo, ro = r.left.label, r.right.label
        short = {"Local": "local", "Remote": "remote", "Left": "left", "Right": "right"}
        notes = [f"{cell(r.left.display)} <-> {cell(r.right.display)}"]
        for side in (r.left, r.right):
            if side.resolved:
                notes.append(f"Resolved {cell(side.spec)} -> {cell(side.resolved)}")
            if not side.exists:
                notes.append(f"{cell(side.display)} does not exist")
        mode = f"Compared contents ({r.algorithm})" if r.checksum else "Compared size and modification time"
        if r.checksum:
            mode += f"; hashed {r.left.hashed + r.right.hashed}"
        only_right = "Remote only" if ro == "Remote" else f"Remote only ({short.get(ro, ro)})"
        if len(listed) < len(r.entries):
            notes.append(f"{_plural(r.same)} unchanged and not listed (--json lists every file)")
        notes += [mode, "", "Summary:", f"- Same: {_plural(r.same)}",
                  f"- New ({short.get(lo, lo)}): {_plural(r.new)}", f"- Modified: {_plural(r.modified)}",
                  f"- {only_right}: {_plural(r.remote_only)}", ""]
        if r.identical:
            notes.append("Identical: nothing to sync")
        elif r.sync_command:
            notes.append(f"Run '{r.sync_command}' to sync")
            if r.remote_only and r.sync_command.startswith("model-sync push"):
                notes.append(f"(add --delete to also remove the {_plural(r.remote_only)} only on "
                             f"{cell(r.right.server or r.right.display)})")
        return [View(f"Sync Status: {cell(r.name)}", ["File", lo, ro, "Status"], rows, notes)]

    @view_of(ModelList)
    def _list(r: ModelList) -> list[View]:
        rows = [[cell(m.name), size_of(m.bytes, m.complete), human_date(m.modified),
                 *[cell(m.fields.get(f, "")) if m.matches else "" for f in r.fields]] for m in r.models]
        title = f"Models on {r.server}" + (f" matching '{cell(r.filter)}'" if r.filter else "")
        noun = "model" if len(r.models) == 1 else "models"
        notes = [f"Total: {len(r.models)} {noun}, {human_size(r.total_bytes)}"]
        if not r.exists:
            notes.append(f"{cell(r.model_base)} does not exist on {r.server} yet")
        if any(not m.complete for m in r.models):
            notes.append(">= : some files could not be read, the size is a lower bound")
        return [View(title, ["Model", "Size", "Modified", *r.fields], rows, notes)]

    @view_of(VersionsResult)
    def _versions(r: VersionsResult) -> list[View]:
        rows = []
        for g in r.groups:
            for v in g.versions:
                rows.append([cell(g.model), cell(g.gpu), cell(v.version), cell(v.date), cell(v.name),
                             size_of(v.bytes, v.complete), human_date(v.modified), "latest" if v.latest else ""])
        title = f"Versions on {r.server}" + (f": {cell(r.model)}" if r.model else "") + \
            (f" ({cell(r.gpu)})" if r.gpu else "")
        count = sum(len(g.versions) for g in r.groups)
        models = len({g.model.casefold() for g in r.groups})
        gpus = len({g.gpu.casefold() for g in r.groups})
        notes = [f"{_plural(count, 'version')} of {_plural(models, 'model')} on {_plural(gpus, 'GPU')}; "
                 "newest first"]
        if r.unmatched and r.model is None:
            shown = ", ".join(cell(n) for n in r.unmatched[:10]) + (" ..." if len(r.unmatched) > 10 else "")
            notes.append(f"Not following {r.pattern}: {shown}")
        if r.groups:
            g = r.groups[0]
            notes.append(f"Pull the newest with 'model-sync pull {r.server}:{shlex.quote(g.model + '@latest')} ./'"
                         + (f" (add --gpu {g.gpu})" if len({x.gpu.casefold() for x in r.groups
                                                           if x.model.casefold() == g.model.casefold()}) > 1 else ""))
        return [View(title, ["Model", "GPU", "Version", "Date", "Directory", "Size", "Modified", "Latest"],
                     rows, notes)]

    @view_of(PruneResult)
    def _prune(r: PruneResult) -> list[View]:
        done = {i.path: i for i in r.removed + r.failed}
        rows = []
        for i in sorted(r.kept + r.to_remove, key=lambda i: (i.gpu.casefold(), i.status != "keep")):
            status = done[i.path].status if i.path in done else i.status
            rows.append([cell(i.name), cell(i.gpu), cell(i.version), human_size(i.bytes), status])
        title = f"Prune {cell(r.model)} on {r.server}: keep the newest {r.keep}" + \
            (f" ({cell(r.gpu)})" if r.gpu else "")
        if not r.to_remove:
            notes = ["Nothing to remove."]
        elif r.dry_run:
            notes = [f"Would remove {_plural(len(r.to_remove), 'directory', 'directories')}, "
                     f"freeing {human_size(r.bytes_to_free)}. Nothing was removed: rerun with --yes to delete them."]
        else:
            notes = [f"Removed {len(r.removed)} of {len(r.to_remove)}, freed {human_size(r.bytes_freed)}."]
            for i in r.failed:
                notes.append(f"Not removed: {cell(i.name)} ({_REASONS.get(i.status, i.status)})")
        return [View(title, ["Directory", "GPU", "Version", "Size", "Action"], rows, notes)]


_REASONS = {
    "missing": "already gone", "busy": "a transfer holds its lock; try again later",
    "symlink": "it is a symlink now", "outside": "not a directory directly under model_base",
    "failed": "rm failed; check permissions with 'model-sync exec'",
}


# -- output forms ---------------------------------------------------------------
def choose_format(fmt: str, stream=None) -> str:
    if fmt != "auto":
        return fmt
    stream = stream or sys.stdout
    return "rich" if stream.isatty() and os.environ.get("TERM") != "dumb" else "markdown"


_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    # dataclasses.fields() per object is slow on a 20,000-file diff
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls)) + \
            tuple(getattr(cls, "__json_properties__", ()))
    return names


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: to_jsonable(getattr(obj, name)) for name in _field_names(type(obj))}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def to_json(result, pretty: bool = True) -> str:
    # indent makes json use its pure-Python encoder: compact for pipes and scripts
    data, indent = to_jsonable(result), 2 if pretty else None
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: \u escapes keep the JSON valid
        text = json.dumps(data, indent=indent)
    return text


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
        file.write(to_json(result, pretty=file.isatty()) + "\n")
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

