"""Listing and hashing model trees, on this machine or a server.

A listing costs one round trip whatever the number of files (one `find`).
Hashes are xxh3-128 (`xxhsum -H2`); on a server without xxhsum we use
python3's xxhash module, and without either, sha256 on both sides.
The manifest `.model-sync.xxh128` inside a model directory is in xxhsum's
own format, so `cd MODEL && xxhsum -c .model-sync.xxh128` checks a copy."""

from __future__ import annotations

import codecs
import hashlib
import re
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import RemoteError

from .destination import MANIFEST_NAME, PARTIAL_DIR  # noqa: E402,F401  (their home is the destination protocol)
XXH128 = "xxh3-128"
SHA256 = "sha256"
_CHUNK = 100_000  # bytes of file names per remote hashing command (one argv item is capped at 128 KiB)


@dataclass(slots=True)  # tens of thousands per listing: slots make them cheap
class FileEntry:
    path: str  # relative, '/'-separated
    size: int
    mtime: int  # whole seconds
    kind: str = "f"  # 'f' file, 'l' symlink
    target: str = ""  # symlink target
    mode: int = 0  # permission bits (rsync -a keeps them)
    nsec: int = 0  # the mtime's sub-second part, in nanoseconds
    points: str = ""  # a symlink in a source listing: what it resolves to, 'f' or 'd'; 'n': nothing (dangling, a loop)

    def same_quick(self, other: "FileEntry") -> bool:
        if self.kind != other.kind:
            return False
        if self.kind == "l":
            return self.target == other.target
        return self.size == other.size and self.mtime == other.mtime and same_nsec(self.nsec, other.nsec)


_PRECISIONS = tuple(10 ** k for k in range(9, 0, -1))  # 1 s, 100 ms, ..., 10 ns


def same_nsec(a: int, b: int) -> bool:
    """Two mtimes' sub-second parts (ns) equal at the coarser precision of
    the two. A filesystem that keeps whole seconds (ext3) shows 0 here, one
    that keeps microseconds ends in 000: a copy there can only match to what
    it keeps. rsync sets mtimes to the ns where both ends can, so a copy on a
    filesystem that keeps them matches exactly."""
    if a == b:
        return True
    for p in _PRECISIONS:
        if a % p == 0 or b % p == 0:
            return a // p == b // p
    return False


@dataclass
class Tree:
    root: str
    exists: bool
    files: dict[str, FileEntry] = field(default_factory=dict)
    is_dir: bool = True
    manifest: dict[str, str] = field(default_factory=dict)  # the directory's .model-sync.xxh128
    dirs: dict[str, int] = field(default_factory=dict)  # directories below root -> mode
    followed: list[str] = field(default_factory=list)  # symlinks listed as what they point to (follow_links)
    dangling: list[str] = field(default_factory=list)  # symlinks that point at nothing, listed as links

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values() if f.kind == "f")


# Every file, symlink and directory below `.`, NUL-separated
# "KIND SIZE MTIME MODE PATH\0TARGET\0" records (MODE in octal); shared by
# every listing script so they all read alike.
FIND_FILES = (r"find . -mindepth 1 -name {partial} -prune -o \( -type f -o -type l \) ! -path ./{manifest} "
              r"-printf '%y %s %T@ %m %P\0%l\0' -o -type d -printf 'd 0 %T@ %m %P\0\0'"
              ).format(partial=PARTIAL_DIR, manifest=MANIFEST_NAME)

# The same for a source (what rsync --copy-unsafe-links reads): each symlink's
# record says what it resolves to, F a file, D a directory, N nothing (see
# follow_links).
_SOURCE_EXPR = (r"\( -type l \( -xtype f -printf 'F %s %T@ %m {path}\0%l\0' "
                r"-o -xtype d -printf 'D %s %T@ %m {path}\0%l\0' "
                r"-o -printf 'N %s %T@ %m {path}\0%l\0' \) -o -type f -printf 'f %s %T@ %m {path}\0\0' "
                r"-o -type d -printf 'd 0 %T@ %m {path}\0\0' \)")
FIND_SOURCE = (r"find . -mindepth 1 -name {partial} -prune -o ! -path ./{manifest} "
               ).format(partial=PARTIAL_DIR, manifest=MANIFEST_NAME) + _SOURCE_EXPR.format(path="%P")

# What the symlinks named on stdin (NUL-separated, each "./PATH") point to, as
# FIND_SOURCE records: a file's own size, time and mode, a directory's
# entries (find -H follows only the names given; the links below them are
# reported as links, for the next round).
_FOLLOW = (r"cd -- {root} || exit 3" "\n"
           r"exec xargs -0 sh -c {find}" " sh\n")
_FOLLOW_FIND = (r'exec find -H "$@" -name {partial} -prune -o '
                ).format(partial=PARTIAL_DIR) + _SOURCE_EXPR.format(path="%p")
MAX_LINK_ROUNDS = 16  # links below links below links...: deeper than this is taken for a loop

# The listing and, in the same round trip, the manifest's text. Framed as
# SectionReader reads it.
_LIST = r"""
root={root}
if [ ! -e "$root" ]; then printf 'MISSING\n@@DATA\n'; exit 0; fi
if [ ! -d "$root" ]; then printf 'NOTDIR\n@@DATA\n'; exit 0; fi
{inside}cd -- "$root" || exit 3
printf 'OK\n@@DATA\n@@LIST tree\0\0'
{find}
printf '@@END\0\0'
m=./{manifest}
if [ -f "$m" ] && [ ! -L "$m" ]; then
  echo MANIFEST && tr -d '\000' < "$m"
fi
"""


def list_tree(host, root: str, base: str | None = None) -> Tree:
    """Every file and symlink under root, with size and mtime, and the
    directory's manifest, in one round trip; as a source: what rsync sends
    of it (see follow_links; one more round trip where a link leaves it).
    `base`: root was given relative to this model_base, and must stay under
    it with links followed (paths.outside_base)."""
    from .hosts import remote_path_expr
    from .paths import INSIDE_SH, outside_base

    inside = INSIDE_SH.format(base=remote_path_expr(base), target='"$root"', parent=0) if base else ""
    reader = SectionReader()
    res = host.script(_LIST.format(root=remote_path_expr(root), find=FIND_SOURCE, manifest=MANIFEST_NAME,
                                   inside=inside),
                      timeout=600, on_output=reader.feed)
    head, lists, dirs, rest = reader.finish()
    if head is not None and head.startswith("outside="):
        raise outside_base(host.alias, root, base, head[len("outside="):])
    if head not in ("OK", "MISSING", "NOTDIR") or (head == "OK" and "tree" not in lists):
        raise RemoteError(host.alias, f"cannot list {root}: {res.stderr.strip() or 'exit ' + str(res.exit_code)}",
                          res.exit_code, res.stderr)
    if head != "OK":
        return Tree(root, exists=head == "NOTDIR", is_dir=False)
    tree = Tree(root, exists=True, files=lists["tree"], dirs=dirs["tree"])
    tree.followed, tree.dangling = follow_links(host, root, tree.files, tree.dirs)
    if rest.startswith("MANIFEST\n"):
        tree.manifest = parse_manifest(rest[len("MANIFEST\n"):])
    return tree


# -- symlinks in a source -------------------------------------------------------------
def unsafe_link(path: str, target: str) -> bool:
    """Whether rsync --copy-unsafe-links sends the symlink at `path` (relative
    to the model directory, clean) as what it points to, by the text of its
    target alone, as rsync's unsafe_symlink() decides: an absolute target;
    one whose '..' climbs above the model directory at any point; and, since
    rsync 3.4.0 (CVE-2024-12088, backported by distributions), one with a
    '..' after its leading ones ('a/../x', './../x', 'a/..'). An older rsync
    keeps such a link a link: the copy is still whole, only the next push
    is not found up to date."""
    if not target or target.startswith("/"):
        return True
    rest = target
    while rest.startswith("../"):
        rest = rest[3:].lstrip("/")
    if "/../" in rest or (len(target) > 3 and target.endswith("/..")):
        return True
    depth = path.count("/")  # directories above the link, inside the model
    *middle, last = target.split("/")
    for part in middle:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return last == ".." and depth == 0


def follow_links(host, root: str, files: dict[str, FileEntry], dirs: dict[str, int]) -> tuple[list[str], list[str]]:
    """Turn a FIND_SOURCE listing into what rsync --copy-unsafe-links sends:
    a symlink that leaves the model directory (unsafe_link) becomes what it
    points to, a file (its size, time and mode) or a directory (with its
    entries, whose own links are judged the same way); one that stays inside
    stays a link. Changes `files` and `dirs`; returns (the links followed,
    the dangling ones: left as links, for the caller to refuse or report).
    One round trip per level of links below links, none without such links."""
    from .hosts import remote_path_expr

    followed: dict[str, str] = {}  # link -> its target
    dangling: list[str] = []
    todo = [p for p, f in files.items() if f.kind == "l"]
    for _ in range(MAX_LINK_ROUNDS):
        unsafe = []
        for p in todo:
            f = files[p]
            if f.points not in ("f", "d"):
                dangling.append(p)
            elif unsafe_link(p, f.target):
                unsafe.append(p)
        if not unsafe:
            return sorted(followed), sorted(dangling)
        names = b"".join(("./" + p).encode("utf-8", "surrogateescape") + b"\0" for p in unsafe)
        script = _FOLLOW.format(root=remote_path_expr(root), find=shlex.quote(_FOLLOW_FIND))
        res = host.script(script, timeout=600, stdin=names)
        found: dict[str, int] = {}
        listed, rest = parse_listing(res.stdout, found)
        # (xargs exits 123 when find met something unreadable: listed as far as it goes, as the main listing)
        if res.exit_code not in (0, 123) or rest.strip("\0"):
            why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.exit_code}"
            raise RemoteError(host.alias, f"cannot read what the symlinks under {root} point to: {why}",
                              res.exit_code, res.stderr)
        for p in unsafe:
            followed[p] = files.pop(p).target
        todo = []
        for p, f in listed.items():
            p = p[2:]  # "./" off
            f.path = p
            files[p] = f
            if f.kind == "l":
                todo.append(p)
        dirs.update((p[2:], mode) for p, mode in found.items())
    from .errors import UsageError
    from .render import cell

    first = min((p for p in followed if todo[0].startswith(p + "/")), key=len, default=todo[0])
    raise UsageError(f"{root}: the symlink {cell(first)} -> {cell(followed.get(first, ''))} leads into a directory "
                     f"that holds it (a loop; links below links more than {MAX_LINK_ROUNDS} deep). "
                     "Replace it with the files it should hold, or remove it")


_KINDS = ("f ", "l ", "d ", "F ", "D ", "N ")  # how a FIND_FILES or FIND_SOURCE record begins
_POINTS = {"F": "f", "D": "d", "N": "n"}  # a FIND_SOURCE symlink record: what it points to
_OPEN, _CLOSE = "@@LIST ", "@@END\0\0"


class SectionReader:
    """The output of our listing scripts, fed in chunks as it arrives: a text
    head ending in a "@@DATA" line; then listings, each opened by an "@@LIST
    name" record and closed by "@@END" (no file name can fake either: none is
    empty or holds a NUL); then any text. Records are parsed as soon as each
    is complete, so with tens of thousands of them most of the parsing is
    done by the time the server finishes."""

    MARK = "\n@@DATA\n"

    def __init__(self, on_head=None):
        self._decode = codecs.getincrementaldecoder("utf-8")("surrogateescape").decode
        self.head: str | None = None
        self._on_head = on_head  # called with the head as soon as it is complete
        self.head_value = None  # what on_head returned
        self.lists: dict[str, dict[str, FileEntry]] = {}
        self.dirs: dict[str, dict[str, int]] = {}
        self._section: str | None = None  # the listing being read
        self._pending = ""  # received, not consumed yet
        self._tail: list[str] | None = None  # the text after the listings

    def feed(self, chunk: bytes, final: bool = False) -> None:
        self.feed_text(self._decode(chunk, final), final)

    def feed_text(self, text: str, final: bool = False) -> None:
        if self._tail is not None:
            self._tail.append(text)
            return
        data, self._pending = self._pending + text, ""
        while True:
            if self.head is None:
                head, sep, rest = data.partition(self.MARK)
                if not sep:
                    self._pending = data
                    return
                self.head, data = head, rest
                if self._on_head is not None:  # e.g. a manifest to parse while the listing comes
                    self.head_value = self._on_head(head)
            elif self._section is None:
                name, sep, rest = data[len(_OPEN):].partition("\0\0")
                if data.startswith(_OPEN) and sep:
                    self._section, data = name, rest
                    self.lists[name], self.dirs[name] = {}, {}
                elif not final and (_OPEN.startswith(data) or data.startswith(_OPEN)):
                    self._pending = data  # the opening record is not complete yet
                    return
                else:
                    self._tail = [data]
                    return
            else:
                # records are two NUL-terminated fields: up to the last complete one
                cut = len(data) if final else _after_pairs(data)
                files, rest = parse_listing(data[:cut], self.dirs[self._section])
                self.lists[self._section].update(files)
                rest += data[cut:]
                if rest.startswith(_CLOSE):
                    self._section, data = None, rest[len(_CLOSE):]
                elif not final and (len(rest) < 2 or rest[:2] in _KINDS or _CLOSE.startswith(rest)):
                    self._pending = rest  # a record or the closing one, not complete yet
                    return
                else:  # cut short: what is there is kept, the listing counts as unfinished
                    self.lists.pop(self._section)
                    self._tail = [rest]
                    return

    @property
    def tail(self) -> str:
        """The text after the listings, as far as it has come."""
        return "".join(self._tail or ())

    def finish(self) -> tuple[str | None, dict[str, dict[str, FileEntry]], dict[str, dict[str, int]], str]:
        """(head, listings by name, their directories, the text after them);
        the head is None when the "@@DATA" line never came."""
        self.feed(b"", final=True)
        return self.head, self.lists, self.dirs, self.tail


def _after_pairs(data: str) -> int:
    """The index just after the last complete pair of NUL-terminated fields."""
    last = data.rfind("\0")
    if last < 0:
        return 0
    if data.count("\0") % 2:  # an odd number: the last NUL ends a first field
        last = data.rfind("\0", 0, last)
    return last + 1


def parse_listing(data: str, dirs: dict[str, int] | None = None) -> tuple[dict[str, FileEntry], str]:
    """FIND_FILES records, up to the first thing that is not one; returns the
    files and symlinks, and the rest of the text. Directories go into `dirs`
    (path -> mode) when given."""
    parts = data.split("\0")
    files: dict[str, FileEntry] = {}
    i = 0
    while i < len(parts) - 1 and parts[i][:2] in _KINDS:
        kind, size, mtime, mode, path = parts[i].split(" ", 4)
        if kind == "d":
            if dirs is not None:
                dirs[path] = int(mode, 8)
        else:
            # find prints seconds and a fraction of 10 digits: nanoseconds and a 0
            sec, _, frac = mtime.partition(".")
            points = _POINTS.get(kind, "")
            if points:
                kind = "l"
            files[path] = FileEntry(path, int(size), int(sec), kind, parts[i + 1] if kind == "l" else "",
                                    int(mode, 8), int(frac[:9]) if len(frac) >= 9 else int((frac + "000000000")[:9]),
                                    points)
        i += 2
    return files, "\0".join(parts[i:])


# -- hashing ------------------------------------------------------------------------
def hash_local(root: str | Path, paths: list[str], algorithm: str = XXH128, workers: int = 4) -> dict[str, str]:
    """Hash files under a local root; several files at once (reads overlap)."""
    root = Path(root)

    def one(rel: str) -> tuple[str, str]:
        h = _new_hash(algorithm)
        with open(root / rel, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
        return rel, h.hexdigest()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(pool.map(one, paths))


def _new_hash(algorithm: str):
    if algorithm == XXH128:
        import xxhash

        return xxhash.xxh3_128()
    return hashlib.sha256()


_PY_HASH = r"""
import sys
try:
    import xxhash
    new = xxhash.xxh3_128
except ImportError:
    sys.exit(4)
for i, name in enumerate(sys.stdin.buffer.read().split(b"\0")[:-1]):
    h = new()
    try:
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                h.update(chunk)
    except OSError:
        continue
    print(i, h.hexdigest(), flush=True)
"""


def remote_hash_method(facts) -> str:
    """Pick how a server hashes: 'xxhsum', 'python' or 'sha256'."""
    if facts.xxhsum:
        return "xxhsum"
    if facts.python_xxhash:
        return "python"
    return "sha256"


def hash_with_script(host, root: str, paths: list[str], method: str) -> dict[str, str]:
    """Hash files under root on any host with a shell tool, in one session:
    the names travel NUL-separated on stdin (data, never code) to `xargs -0`
    or python. Names xxhsum would escape in its output (newline, backslash)
    go as quoted arguments, one call per file, matched by position."""
    from .hosts import remote_path_expr

    cd = f"cd -- {remote_path_expr(root)} || exit 3\n"
    tool = "xxhsum -H2" if method == "xxhsum" else "sha256sum"
    batch = paths if method == "python" else [p for p in paths if _plain_name(p)]
    odd = [] if method == "python" else [p for p in paths if not _plain_name(p)]
    out: dict[str, str] = {}
    if batch:
        names = b"".join(("./" + p).encode("utf-8", "surrogateescape") + b"\0" for p in batch)
        if method == "python":
            cmd = f"python3 -c {shlex.quote(_PY_HASH)}"
        else:
            # with stdbuf, each result line is one write (atomic in a pipe), so
            # up to 4 hashers can share the output: one per core
            cmd = (f'if command -v stdbuf >/dev/null 2>&1; then\n'
                   f'  j=$(nproc 2>/dev/null || echo 1); [ "$j" -gt 4 ] && j=4\n'
                   f'  exec xargs -0 -P "$j" -n $(( ({len(batch)} + j - 1) / j )) stdbuf -oL {tool} --\n'
                   f'fi\nexec xargs -0 {tool} --')
        _collect(host, root, host.script(cd + cmd + "\n", timeout=None, stdin=names), batch, out)
    for chunk in chunked(odd):
        args = " ".join(shlex.quote("./" + p) for p in chunk)
        cmd = f'i=0; for f in {args}; do printf "%s " "$i"; {tool} < "$f" || echo; i=$((i+1)); done'
        _collect(host, root, host.script(cd + cmd + "\n", timeout=None), chunk, out)
    return out


def _collect(host, root: str, res, names: list[str], out: dict[str, str]) -> None:
    """Hashes from a hashing command's output: "HASH  ./name" lines (the
    tools' own form) or "INDEX HASH" lines (into `names`)."""
    # xargs exits 123 when a hasher failed on some file (one that is gone):
    # those are left out, as documented; anything else without output failed
    if res.exit_code == 3 or (res.exit_code not in (0, 123) and not res.stdout):
        raise RemoteError(host.alias, f"hashing under {root} failed: {res.stderr.strip() or res.exit_code}",
                          res.exit_code, res.stderr)
    wanted = set(names)
    for line in res.stdout.splitlines():
        head, sep, name = line.partition("  ")
        if sep and _is_hex(head) and name.startswith("./") and name[2:] in wanted:
            out[name[2:]] = head.lower()
            continue
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and _is_hex(fields[1]) and int(fields[0]) < len(names):
            out[names[int(fields[0])]] = fields[1].lower()


def _plain_name(p: str) -> bool:
    return not any(c in p for c in "\n\r\\")


_HASH = r"[0-9a-fA-F]{32}(?:[0-9a-fA-F]{32})?"  # xxh3-128 or sha256, in hex
_HEX = re.compile(_HASH)
_MANIFEST_LINE = re.compile(rf"^({_HASH})  (.*)$", re.M)


def _is_hex(s: str) -> bool:
    return _HEX.fullmatch(s) is not None


def chunked(items: list[str], limit: int = _CHUNK, overhead: int = 8):
    """Split names into groups whose quoted length stays under `limit`, so
    each group fits in one command line (one argv item is capped at 128 KiB)."""
    chunk: list[str] = []
    size = 0
    for item in items:
        if chunk and size + len(item) + overhead > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += len(item) + overhead
    if chunk:
        yield chunk


@lru_cache(maxsize=None)
def local_version(tool: str, flag: str = "--version") -> str:
    """The first line `tool flag` prints here; "" when the tool is missing."""
    if not shutil.which(tool):
        return ""
    res = subprocess.run([tool, flag], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    return (res.stdout + res.stderr).strip().partition("\n")[0]


def xxh128_capable(version: str | None) -> bool:
    """An xxhsum of this version (its `-V` text) does xxh3-128 (-H2, -c):
    0.8 or later. For this machine's and for a server's."""
    return bool(version) and tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= (0, 8)


def _local_xxhsum() -> bool:
    return xxh128_capable(local_version("xxhsum", "-V"))


def hash_files(host, root: str, paths: list[str], method: str) -> dict[str, str]:
    """Hashes of `paths` under `root` on `host`; missing files are left out."""
    if not paths:
        return {}
    if host.is_local:
        base = Path(root).expanduser()
        if method == "xxhsum" and _local_xxhsum():
            # xxhsum in C beats Python threads on many small files, and is
            # the same tool the server side runs
            return hash_with_script(host, str(base), paths, method)
        present = [p for p in paths if (base / p).is_file()]
        return hash_local(base, present, SHA256 if method == "sha256" else XXH128)
    return hash_with_script(host, root, paths, method)


def hash_both(a_host, a_root: str, b_host, b_root: str, paths: list[str],
              method: str) -> tuple[dict[str, str], dict[str, str]]:
    """The same files hashed on two hosts at once."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        fa = pool.submit(hash_files, a_host, a_root, paths, method)
        fb = pool.submit(hash_files, b_host, b_root, paths, method)
        return fa.result(), fb.result()


# -- the manifest file ----------------------------------------------------------------
def manifest_text(hashes: dict[str, str]) -> str:
    """xxhsum's GNU-style lines. Names with a newline cannot be written in
    that format (xxhsum does not escape them) and are left out."""
    lines = [f"{h}  {p}\n" for p, h in sorted(hashes.items()) if "\n" not in p and "\r" not in p]
    return "".join(lines)


def parse_manifest(text: str) -> dict[str, str]:
    # one regex pass: manifests of tens of thousands of lines are read on every push
    return {name.rstrip("\r"): h.lower() for h, name in _MANIFEST_LINE.findall(text)}
