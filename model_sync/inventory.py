"""What is on a server: compare two model trees, list the model directories
under model_base, group them into versions, resolve `MODEL@latest`, prune
old versions. Every function returns a dataclass; render.py turns it into text.

Costs: a server's listing is one round trip whatever the number of entries
(one script; names come back NUL-separated and are only ever data). Sizes are
apparent sizes as `du -s --apparent-size -B1 DIR` reports them for each model
directory on its own (the same number as `du -sb DIR`: file and directory
sizes in bytes, hard links within the directory counted once); the Modified
time is the newest mtime of the model's files (see _MEASURE)."""

from __future__ import annotations

import collections
import fnmatch
import functools
import os
import posixpath
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .config import Config
from .destination import LOCK_SUFFIX, MANIFEST_NAME, VERSIONS_SUFFIX
from .errors import RemoteError, UsageError
from .hosts import LocalHost, open_host, remote_path_expr
from .manifest import (SHA256, XXH128, Tree, chunked, hash_files,
                       list_tree, remote_hash_method, same_nsec)
from .paths import under
from .naming import (SORTS, SelectorError, compile_pattern, example_name, group_models, parse_name, resolve_selector,
                     version_key)

_GLOB_CHARS = "*?["
_ARGS_MAX = 100_000  # bytes of quoted paths per deletion script (one argv item is capped at 128 KiB)


# -- listing the directories under a path -------------------------------------------
# Top-level, non-hidden directories only: real ones (published by an older
# model-sync, or by hand) and the links model-sync publishes (NAME ->
# .NAME<versions suffix>/ID, see destination.py); staging copies, locks and
# other dot entries, plain files and other symlinks are skipped. `info` is
# du's line ("SIZE<TAB>MTIME<TAB>.") and "rc=N", or empty when sizes are not asked.
_DIRS = r"""
base=@BASE@; vs=@VSUFFIX@
if [ ! -d "$base" ]; then echo MISSING; exit 0; fi
cd -- "$base" || exit 3
printf 'OK\n%s\0' "$PWD"
for d in *; do
  [ -d "$d" ] || continue
  if [ -L "$d" ]; then [ -d ".$d$vs" ] && [ ! -L ".$d$vs" ] || continue; fi
  info=
  @MEASURE@
  printf '%s\0%s\0' "$info" "$d"
done
"""
# Modified: the newest mtime of the model's files. rsync keeps each file's
# time from the source, so a copy shows when the model last changed, the
# same on every server; model-sync's manifest (rewritten by a push) and
# directory times (changed by publishing) do not count.
# A directory without files: du's time, its own.
_MEASURE = ('info=$(cd -- "./$d" 2>/dev/null && '
            '{ du -s --apparent-size -B1 --time --time-style=+%s . 2>/dev/null; r=$?; '
            'find . -type f ! -path ' + shlex.quote("./" + MANIFEST_NAME) + ' -printf \'%T@\\n\' 2>/dev/null '
            '| awk \'NR == 1 || $1 > m { m = $1 } END { if (NR) printf "files=%d\\n", m }\'; echo "rc=$r"; })')


def _fill(template: str, **values: str) -> str:
    """Put quoted values into a script's @NAME@ slots in one pass, so text
    inside a value is never taken for another slot."""
    return re.sub(r"@([A-Z]+)@", lambda m: values[m.group(1)], template)


@dataclass
class DirInfo:
    name: str
    bytes: int | None = None  # None: not measured, or du could not read it
    modified: int | None = None  # epoch seconds, newest mtime inside
    complete: bool = True  # False: du met unreadable entries, the size is a lower bound


@dataclass
class DirListing:
    base: str  # absolute path on the host ($PWD after cd)
    exists: bool
    dirs: list[DirInfo] = field(default_factory=list)


def list_dirs(host, directory: str, sizes: bool = False) -> DirListing:
    """The model directories directly under `directory`, in one round trip."""
    script = _fill(_DIRS, BASE=remote_path_expr(directory), MEASURE=_MEASURE if sizes else "",
                   VSUFFIX=shlex.quote(VERSIONS_SUFFIX))
    res = host.script(script, timeout=1800 if sizes else 120)
    out = res.stdout
    if not out.startswith(("OK", "MISSING")):
        raise RemoteError(host.alias, f"cannot list {directory}: {res.stderr.strip() or 'exit ' + str(res.exit_code)}"
                                      "; check that the directory is readable there", res.exit_code, res.stderr)
    if out.startswith("MISSING"):
        return DirListing(directory, exists=False)
    parts = out[3:].split("\0")
    listing = DirListing(parts[0], exists=True)
    for i in range(1, len(parts) - 1, 2):
        listing.dirs.append(_dir_info(parts[i + 1], parts[i], sizes))
    return listing


def _dir_info(name: str, info: str, measured: bool) -> DirInfo:
    if not measured:
        return DirInfo(name)
    lines = info.splitlines()
    rc = lines[-1] if lines and lines[-1].startswith("rc=") else "rc=?"
    newest = next((line[6:] for line in lines if line.startswith("files=")), "")
    fields = lines[0].split("\t") if lines and not lines[0].startswith(("rc=", "files=")) else []
    if len(fields) >= 2 and fields[0].isdigit() and fields[1].lstrip("-").isdigit():
        modified = int(newest) if newest.lstrip("-").isdigit() else int(fields[1])
        return DirInfo(name, int(fields[0]), modified, complete=rc == "rc=0")
    return DirInfo(name, None, None, complete=False)


# -- list -----------------------------------------------------------------------------
@dataclass
class ModelEntry:
    name: str  # directory name under model_base
    path: str  # absolute on the server
    bytes: int | None
    modified: int | None  # epoch seconds
    matches: bool  # follows the naming convention
    fields: dict[str, str] = field(default_factory=dict)  # GPU, DATE, MODEL, VERSION, ... ('' when not matching)
    complete: bool = True

    __json_properties__ = ("modified_iso",)

    @property
    def modified_iso(self) -> str | None:
        return None if self.modified is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.modified))


@dataclass
class ModelList:
    server: str
    model_base: str
    exists: bool
    pattern: str
    fields: list[str]  # the pattern's fields, in order: the extra columns
    filter: str | None
    sort: str
    models: list[ModelEntry]

    __json_properties__ = ("total_bytes", "count")

    @property
    def total_bytes(self) -> int:
        return sum(m.bytes or 0 for m in self.models)

    @property
    def count(self) -> int:
        return len(self.models)


def name_matches(name: str, pattern: str | None) -> bool:
    """--filter: a case-insensitive substring, or a glob when it has * ? or [."""
    if not pattern:
        return True
    if any(c in pattern for c in _GLOB_CHARS):
        return fnmatch.fnmatchcase(name.casefold(), pattern.casefold())
    return pattern.casefold() in name.casefold()


def list_models(alias: str, config: Config, filter: str | None = None, sort: str = "name") -> ModelList:
    if sort not in SORTS:
        raise UsageError(f"--sort {sort!r} is not one of {', '.join(SORTS)}")
    server = config.server(alias)
    fields = list(compile_pattern(config.naming_pattern).fields)
    host = open_host(alias, config)
    try:
        listing = list_dirs(host, server.model_base, sizes=True)
    finally:
        host.close()
    entries = []
    for d in listing.dirs:
        if not name_matches(d.name, filter):
            continue
        parsed = parse_name(d.name, config.naming_pattern)
        entries.append(ModelEntry(
            name=d.name, path=posixpath.join(listing.base, d.name), bytes=d.bytes, modified=d.modified,
            matches=parsed is not None, fields={f: (parsed.fields.get(f, "") if parsed else "") for f in fields},
            complete=d.complete))
    return ModelList(server=alias, model_base=listing.base, exists=listing.exists, pattern=config.naming_pattern,
                     fields=fields, filter=filter, sort=sort, models=sort_models(entries, sort, config.naming_pattern))


def sort_models(entries: list[ModelEntry], sort: str, pattern: str) -> list[ModelEntry]:
    """name: natural order (v9 before v10); size: largest first; modified:
    newest first; version: by model and GPU, newest version first, names
    that do not follow the convention last."""
    by_name = sorted(entries, key=lambda e: version_key(e.name))
    if sort == "size":
        return sorted(by_name, key=lambda e: -1 if e.bytes is None else e.bytes, reverse=True)
    if sort == "modified":
        return sorted(by_name, key=lambda e: -1 if e.modified is None else e.modified, reverse=True)
    if sort == "version":
        index = {e.name: e for e in by_name}
        ordered = [index[p.name] for g in group_models(index, pattern) for p in g.versions]
        seen = {e.name for e in ordered}
        return ordered + [e for e in by_name if e.name not in seen]
    return by_name


# -- versions -----------------------------------------------------------------------------
@dataclass
class VersionEntry:
    name: str
    version: str
    date: str
    bytes: int | None
    modified: int | None
    latest: bool
    path: str
    complete: bool = True


@dataclass
class VersionGroup:
    model: str
    gpu: str
    versions: list[VersionEntry]  # newest first

    __json_properties__ = ("latest",)

    @property
    def latest(self) -> str:
        return self.versions[0].name


@dataclass
class VersionsResult:
    server: str
    model_base: str
    pattern: str
    model: str | None  # the --model filter
    gpu: str | None
    groups: list[VersionGroup]
    unmatched: list[str]  # directories that do not follow the convention


def _groups(alias: str, config: Config, host, model: str | None, gpu: str | None, sizes: bool = True):
    """The listing and the version groups of model_base, narrowed to a model
    and GPU; an unknown model or GPU is a one-line error naming the known ones."""
    listing = list_dirs(host, config.server(alias).model_base, sizes=sizes)
    names = [d.name for d in listing.dirs]
    groups = group_models(names, config.naming_pattern)
    if model is not None:
        mine = [g for g in groups if g.model.casefold() == model.casefold()]
        if not mine:
            known = ", ".join(dict.fromkeys(g.model for g in groups)) or "none"
            raise UsageError(f"{alias}: no model {model!r} under {listing.base}; models there: {known} "
                             f"(see 'model-sync versions {alias}')")
        groups = mine
    if gpu is not None:
        mine = [g for g in groups if g.gpu.casefold() == gpu.casefold()]
        if not mine:
            known = ", ".join(dict.fromkeys(g.gpu for g in groups if g.gpu)) or "none"
            what = f"model {groups[0].model}" if model is not None and groups else "any model"
            raise UsageError(f"{alias}: {what} has no version on GPU {gpu!r}; GPUs: {known}")
        groups = mine
    return listing, groups


def versions(alias: str, config: Config, model: str | None = None, gpu: str | None = None) -> VersionsResult:
    host = open_host(alias, config)
    try:
        listing, groups = _groups(alias, config, host, model, gpu)
    finally:
        host.close()
    info = {d.name: d for d in listing.dirs}
    out = []
    for g in groups:
        entries = [VersionEntry(name=p.name, version=p.version, date=p.date, bytes=info[p.name].bytes,
                                modified=info[p.name].modified, latest=i == 0,
                                path=posixpath.join(listing.base, p.name), complete=info[p.name].complete)
                   for i, p in enumerate(g.versions)]
        out.append(VersionGroup(g.model, g.gpu, entries))
    unmatched = sorted((d.name for d in listing.dirs if parse_name(d.name, config.naming_pattern) is None),
                       key=version_key)
    return VersionsResult(server=alias, model_base=listing.base, pattern=config.naming_pattern, model=model,
                          gpu=gpu, groups=out, unmatched=unmatched)


# -- selectors ------------------------------------------------------------------------------
def has_selector(path: str | None) -> bool:
    return bool(path) and "@" in posixpath.basename(path.rstrip("/"))


def resolve_remote_model(host, config: Config, path: str | None, gpu: str | None = None) -> str | None:
    """`ASR@latest` -> the directory it means, in the same form as given
    (relative to model_base, or absolute); other paths come back unchanged.
    The last component is the selector; the directory above it (model_base
    for a bare name) is listed in one round trip. An exact directory name
    wins even when it contains '@'."""
    if not has_selector(path):
        if gpu is not None:
            raise UsageError(f"--gpu only narrows a MODEL@latest or MODEL@VERSION selector, and "
                             f"'{path or ''}' has none; e.g. {host.alias}:ASR@latest --gpu {gpu}")
        return path
    parent, selector = posixpath.split(path.rstrip("/"))
    server = host.server
    if not parent:
        directory = server.model_base
    elif parent.startswith("/"):
        directory = posixpath.normpath(parent)
    else:
        directory = under(server.model_base, parent, host.alias)
    listing = list_dirs(host, directory)
    try:
        name = resolve_selector([d.name for d in listing.dirs], selector, config.naming_pattern, gpu)
    except SelectorError as exc:
        hint = "" if listing.exists else f" ({directory} does not exist there)"
        raise UsageError(f"{host.alias}: {exc}{hint}; see 'model-sync versions {host.alias}'") from None
    return posixpath.join(parent, name) if parent else name


def server_path(server, path: str | None, default_name: str | None) -> str:
    """Where `alias:path` points, spelt with the config's model_base (a
    leading ~ is expanded by the shell there): absolute as given, relative
    under model_base and not leaving it, none -> model_base/default_name."""
    return under(server.model_base, path, server.alias, default_name)


# -- names on push ---------------------------------------------------------------------------
@dataclass
class NameCheck:
    name: str
    matches: bool
    pattern: str
    example: str

    @property
    def message(self) -> str:
        return (f"'{self.name}' does not follow the naming convention {self.pattern} (e.g. {self.example}); "
                "list, versions, MODEL@latest and prune will not see it as a version")


def check_name(name: str, pattern: str) -> NameCheck:
    return NameCheck(name, parse_name(name, pattern) is not None, pattern, example_name(pattern))


# -- diff --------------------------------------------------------------------------------------
# A side of a diff is a manifest.Tree: its files (and its manifest, unused here).
SideTree = Tree
list_tree_with_manifest = list_tree


STATUSES = ("same", "new", "modified", "remote only")


@dataclass(slots=True)
class DiffEntry:
    path: str
    status: str  # same | new (left only) | modified | remote only (right only)
    left_size: int | None
    right_size: int | None
    left_mtime: int | None = None
    right_mtime: int | None = None
    kind: str = "f"  # 'f' file, 'l' symlink (compared by target); of the left side when present


@dataclass
class DiffSide:
    spec: str  # as given: ./langdetector, reaper, reaper:ASR@latest
    server: str | None  # alias; None for a path on this machine
    path: str  # on that host (model_base as the config spells it)
    label: str  # column header: Local, Remote, or the alias
    exists: bool = True
    files: int = 0
    bytes: int = 0
    resolved: str | None = None  # the directory a MODEL@... selector chose
    hashed: int = 0  # files hashed for --checksum

    __json_properties__ = ("display",)

    @property
    def display(self) -> str:
        return self.path if self.server is None else f"{self.server}:{self.path}"


@dataclass
class DiffResult:
    left: DiffSide
    right: DiffSide
    checksum: bool
    algorithm: str | None  # for --checksum
    entries: list[DiffEntry]
    seconds: float
    sync_command: str | None = None  # what would make the right side like the left

    __json_properties__ = ("same", "new", "modified", "remote_only", "identical")

    @functools.cached_property
    def _counts(self) -> collections.Counter:
        return collections.Counter(e.status for e in self.entries)

    same = property(lambda self: self._counts["same"])
    new = property(lambda self: self._counts["new"])
    modified = property(lambda self: self._counts["modified"])
    remote_only = property(lambda self: self._counts["remote only"])

    @property
    def identical(self) -> bool:
        return self.same == len(self.entries) and self.left.exists == self.right.exists

    @property
    def name(self) -> str:
        return posixpath.basename((self.left.resolved or self.left.path).rstrip("/")) or self.left.path


def _split_side(spec: str, config: Config, right: bool) -> tuple[str | None, str | None]:
    """(alias, path) for `alias:path` (alias configured); (None, path) for a
    local path. A bare word on the right is a server when configured."""
    alias, sep, path = spec.partition(":")
    if sep and alias in config.servers:
        return alias, path or None
    if sep and alias and "/" not in alias and not os.path.exists(os.path.expanduser(spec)):
        config.server(alias)  # 'reapr:M', a mistyped server: the error lists the configured ones
    if not sep and right:
        if alias in config.servers:
            return alias, None
        if "/" not in spec and not spec.startswith(("~", ".")) and not os.path.exists(spec):
            config.server(alias)  # a mistyped server: the error lists the configured ones
    return None, spec


def _open_side(spec: str, config: Config, right: bool, default_name: str | None, gpu: str | None):
    alias, path = _split_side(spec, config, right)
    if alias is None:
        full = os.path.abspath(os.path.expanduser(path))
        return LocalHost.this_machine(), DiffSide(spec, None, full, "Local")
    host = open_host(alias, config)
    try:
        resolved = resolve_remote_model(host, config, path, gpu) if has_selector(path) else path
        rpath = server_path(host.server, resolved, default_name)
    except BaseException:
        host.close()
        raise
    side = DiffSide(spec, alias, rpath, "Remote",
                    resolved=posixpath.basename(resolved) if resolved != path else None)
    return host, side


def _base_of(host, side: DiffSide, spec: str, config: Config) -> str | None:
    """A server side's model_base when its path was given relative to it (or
    not at all): the listing checks that it stays under it, links followed."""
    if side.server is None:
        return None
    path = _split_side(spec, config, True)[1]
    return None if (path or "").startswith("/") else host.server.model_base


def diff(left: str, right: str, config: Config, checksum: bool = False, gpu: str | None = None) -> DiffResult:
    """Compare two model trees; either side may be a local path or
    `server:path` (the right one also a bare server alias: the left's name
    under its model_base). Quick: size and mtime (see manifest.same_nsec);
    checksum: xxh3-128 of every file whose size agrees, read on both sides at
    once (a manifest says what a file held when it was written, not what it
    holds now, so none is trusted)."""
    start = time.monotonic()
    if gpu is not None and not (has_selector(_split_side(left, config, False)[1])
                                or has_selector(_split_side(right, config, True)[1])):
        raise UsageError("--gpu only narrows a MODEL@latest or MODEL@VERSION selector, and neither side has one")
    hosts = []
    try:
        lhost, lside = _open_side(left, config, False, None, gpu)
        hosts.append(lhost)
        rhost, rside = _open_side(right, config, True, posixpath.basename(lside.path.rstrip("/")), gpu)
        hosts.append(rhost)
        if lside.server and rside.server:
            same_alias = lside.server == rside.server
            lside.label = lside.display if same_alias else lside.server
            rside.label = rside.display if same_alias else rside.server
        elif not lside.server and not rside.server:
            lside.label, rside.label = "Left", "Right"
        with ThreadPoolExecutor(max_workers=2) as pool:
            fl = pool.submit(list_tree_with_manifest, lhost, lside.path, _base_of(lhost, lside, left, config))
            fr = pool.submit(list_tree_with_manifest, rhost, rside.path, _base_of(rhost, rside, right, config))
            ltree, rtree = fl.result(), fr.result()
        for side, tree in ((lside, ltree), (rside, rtree)):
            if tree.exists and not tree.is_dir:
                raise UsageError(f"{side.display} is not a directory; diff compares model directories")
            side.exists = tree.exists
            sizes = [f.size for f in tree.files.values() if f.kind == "f"]
            side.files, side.bytes = len(sizes), sum(sizes)
        # a missing left side is an error where it is this machine's (a
        # typo, not a model to fetch), whether given as a path or as `local:`
        here = lside.server is None or config.server(lside.server).is_local
        if not lside.exists and (here or not rside.exists):
            missing = lside if not lside.exists else rside
            raise UsageError(f"{missing.display} does not exist" +
                             ("" if missing.server else "; give the local model directory") +
                             (f" (see 'model-sync list {missing.server}')" if missing.server else ""))
        algorithm = None
        hashes: tuple[dict[str, str], dict[str, str]] = ({}, {})
        if checksum:
            algorithm, hashes = _checksums(lhost, rhost, lside, rside, ltree, rtree)
    finally:
        for h in hosts:
            h.close()
    entries = _compare(ltree, rtree, hashes if checksum else None)
    result = DiffResult(lside, rside, checksum, algorithm, entries, round(time.monotonic() - start, 3))
    result.sync_command = _sync_command(result)
    return result


def _checksums(lhost, rhost, lside: DiffSide, rside: DiffSide, ltree: SideTree, rtree: SideTree):
    from .probe import probe

    methods = [("xxhsum" if h.is_local else remote_hash_method(probe(h))) for h in (lhost, rhost)]
    algorithm = SHA256 if "sha256" in methods else XXH128
    if algorithm == SHA256:
        methods = ["sha256", "sha256"]
    candidates = [p for p, f in ltree.files.items()
                  if f.kind == "f" and (g := rtree.files.get(p)) is not None and g.kind == "f" and g.size == f.size]
    with ThreadPoolExecutor(max_workers=2) as pool:
        fl = pool.submit(hash_files, lhost, lside.path, candidates, methods[0])
        fr = pool.submit(hash_files, rhost, rside.path, candidates, methods[1])
        hashes = fl.result(), fr.result()
    lside.hashed = rside.hashed = len(candidates)
    return algorithm, hashes


def _compare(ltree: SideTree, rtree: SideTree, hashes: tuple[dict[str, str], dict[str, str]] | None) -> list[DiffEntry]:
    # one pass over tens of thousands of paths: the common cases inline
    lfiles, rfiles = ltree.files, rtree.files
    entries: list[DiffEntry] = []
    add = entries.append
    for path in sorted(lfiles.keys() | rfiles.keys()):
        a, b = lfiles.get(path), rfiles.get(path)
        if b is None:
            add(DiffEntry(path, "new", a.size, None, a.mtime, None, a.kind))
            continue
        if a is None:
            add(DiffEntry(path, "remote only", None, b.size, None, b.mtime, b.kind))
            continue
        if a.kind != b.kind:
            same = False
        elif a.kind == "l":
            same = a.target == b.target
        elif a.size != b.size:
            same = False
        elif hashes is None:
            same = a.mtime == b.mtime and (a.nsec == b.nsec or same_nsec(a.nsec, b.nsec))
        else:
            ha = hashes[0].get(path)
            same = ha is not None and ha == hashes[1].get(path)
        add(DiffEntry(path, "same" if same else "modified", a.size, b.size, a.mtime, b.mtime, a.kind))
    return entries


def _sync_command(r: DiffResult) -> str | None:
    """The push or pull that makes the right side like the left (None when
    identical, or when model-sync has no single command for it)."""
    if r.identical:
        return None
    left, right = r.left, r.right
    q = shlex.quote
    if left.server is None and right.server is not None:
        target = right.spec if not right.resolved else f"{right.server}:{right.path}"
        return f"model-sync push {q(left.spec)} {q(target)}"
    if left.server is not None and right.server is None:
        source = left.spec if not left.resolved else f"{left.server}:{left.path}"
        name = posixpath.basename(left.path.rstrip("/"))
        if not right.exists:
            return f"model-sync pull {q(source)} {q(right.spec)}"
        if os.path.basename(right.path.rstrip("/")) == name:
            return f"model-sync pull {q(source)} {q(os.path.dirname(right.path.rstrip('/')) or '/')}"
    return None


# -- prune -------------------------------------------------------------------------------------
# Each path is re-checked on the server: a direct child of model_base, a real
# directory (not a symlink), physically where its name says; a directory a
# push holds the lock of is left alone. One "STATUS\0PATH\0" record each.
_PRUNE = r"""
base=@BASE@; ls=@LSUFFIX@; vs=@VSUFFIX@
cd -- "$base" || exit 3
real=$(pwd -P) || exit 3
for p in @PATHS@; do
  name=${p##*/}; parent=${p%/*}; v="$base/.$name$vs"
  if [ "$parent" != "$base" ] || [ -z "$name" ] || [ "$name" = . ] || [ "$name" = .. ]; then r=outside
  elif [ -L "$p" ]; then  # ours only when it points into its own versions directory
    case $(readlink -- "$p") in ".$name$vs"/*/*) r=symlink ;; ".$name$vs"/?*) r=ours ;; *) r=symlink ;; esac
    if [ $r = ours ] && { [ -L "$v" ] || [ ! -d "$v" ]; }; then r=symlink; fi
  elif [ ! -d "$p" ]; then r=missing
  elif [ "$(cd -- "$p" 2>/dev/null && pwd -P)" != "$real/$name" ]; then r=outside
  else r=ours
  fi
  if [ $r = ours ]; then
    lock="$base/.$name$ls"
    if [ -L "$lock" ] || { [ -e "$lock" ] && [ ! -f "$lock" ]; }; then rc=75  # not ours: never opened (busy)
    elif command -v flock >/dev/null 2>&1; then  # the writers' protocol (hosts.lock): lock, check, remove before release
      ( flock -n 9 && [ "$lock" -ef /dev/fd/9 ] || exit 75
        if [ -L "$p" ]; then rm -f -- "$p"; else rm -rf -- "$p"; fi && rm -rf -- "$v"; rc=$?; rm -f -- "$lock"; exit $rc
      ) 9>>"$lock"; rc=$?
    else
      if [ -L "$p" ]; then rm -f -- "$p"; else rm -rf -- "$p"; fi && rm -rf -- "$v"; rc=$?
    fi
    if [ "$rc" = 75 ] && { [ -e "$p" ] || [ -L "$p" ]; }; then r=busy; elif [ -e "$p" ] || [ -L "$p" ]; then r=failed; else r=removed; fi
  fi
  printf '%s\0%s\0' "$r" "$p"
done
"""


@dataclass
class PruneItem:
    name: str
    path: str  # absolute on the server
    gpu: str
    version: str
    bytes: int | None
    status: str  # keep | unapproved | remove (planned) | removed | missing | busy | symlink | outside | failed


@dataclass
class PruneResult:
    server: str
    model_base: str
    model: str
    gpu: str | None
    keep: int
    dry_run: bool  # True without --yes: nothing was removed
    to_remove: list[PruneItem]  # the plan: all but the newest `keep` per model and GPU
    kept: list[PruneItem]
    removed: list[PruneItem] = field(default_factory=list)
    failed: list[PruneItem] = field(default_factory=list)  # planned but left in place, with the reason

    __json_properties__ = ("bytes_to_free", "bytes_freed", "ok")

    @property
    def bytes_to_free(self) -> int:
        return sum(i.bytes or 0 for i in self.to_remove)

    @property
    def bytes_freed(self) -> int:
        return sum(i.bytes or 0 for i in self.removed)

    @property
    def ok(self) -> bool:
        return not self.failed


def prune(alias: str, config: Config, model: str, keep: int, gpu: str | None = None,
          yes: bool = False, only: set[str] | None = None) -> PruneResult:
    """Plan (and with yes=True carry out) removing all but the `keep` newest
    versions of `model` per GPU, under model_base only, only directories
    that follow the naming convention. `only`: the names the user approved
    earlier; anything the plan has grown since is kept, not removed."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise UsageError(f"--keep must be 1 or more (got {keep!r}); prune never removes every version")
    if not model or not model.strip():
        raise UsageError("prune needs --model NAME; see 'model-sync versions SERVER' for the models")
    host = open_host(alias, config)
    try:
        listing, groups = _groups(alias, config, host, model, gpu)
        info = {d.name: d for d in listing.dirs}

        def item(p, status: str) -> PruneItem:
            return PruneItem(p.name, posixpath.join(listing.base, p.name), p.gpu, p.version, info[p.name].bytes,
                             status)

        kept = [item(p, "keep") for g in groups for p in g.versions[:keep]]
        plan = [item(p, "remove") for g in groups for p in g.versions[keep:]]
        if only is not None:
            kept += [item(p, "unapproved") for g in groups for p in g.versions[keep:] if p.name not in only]
            plan = [i for i in plan if i.name in only]
        result = PruneResult(server=alias, model_base=listing.base, model=groups[0].model, gpu=gpu, keep=keep,
                             dry_run=not yes, to_remove=plan, kept=kept)
        if yes and plan:
            outcome = _remove(host, listing.base, [i.path for i in plan])
            for i in plan:
                done = PruneItem(**{**i.__dict__, "status": outcome.get(i.path, "failed")})
                (result.removed if done.status == "removed" else result.failed).append(done)
        return result
    finally:
        host.close()


def _remove(host, base: str, paths: list[str]) -> dict[str, str]:
    """Remove exactly these direct children of base; {path: status}."""
    outcome: dict[str, str] = {}
    for chunk in chunked([shlex.quote(p) for p in paths], _ARGS_MAX, 1):
        script = _fill(_PRUNE, BASE=shlex.quote(base), PATHS=" ".join(chunk), LSUFFIX=shlex.quote(LOCK_SUFFIX),
                       VSUFFIX=shlex.quote(VERSIONS_SUFFIX))
        res = host.script(script, timeout=3600)
        parts = res.stdout.split("\0")
        for i in range(0, len(parts) - 1, 2):
            outcome[parts[i + 1]] = parts[i]
        if res.exit_code != 0 and not parts[0]:
            why = res.stderr.strip() or f"exit {res.exit_code}"
            raise RemoteError(host.alias, f"cannot prune under {base}: {why}", res.exit_code, res.stderr)
    return outcome


__all__ = [
    "DiffEntry", "DiffResult", "DiffSide", "DirInfo", "DirListing", "ModelEntry", "ModelList", "NameCheck",
    "PruneItem", "PruneResult", "VersionEntry", "VersionGroup", "VersionsResult", "check_name", "diff",
    "list_dirs", "list_models", "list_tree_with_manifest", "name_matches", "prune", "resolve_remote_model",
    "server_path", "sort_models", "versions",
]
