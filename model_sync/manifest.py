"""Listing and hashing model trees, on this machine or a server.

A listing costs one round trip whatever the number of files (one `find`).
Hashes are xxh3-128 (`xxhsum -H2`); on a server without xxhsum we use
python3's xxhash module, and without either, sha256 on both sides.
The manifest `.model-sync.xxh128` inside a model directory is in xxhsum's
own format, so `cd MODEL && xxhsum -c .model-sync.xxh128` checks a copy."""

from __future__ import annotations

import hashlib
import shlex
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RemoteError

MANIFEST_NAME = ".model-sync.xxh128"
PARTIAL_DIR = ".rsync-partial"  # rsync --partial-dir: kept for resume, never listed
XXH128 = "xxh3-128"
SHA256 = "sha256"
_CHUNK = 100_000  # bytes of file names per remote hashing command (one argv item is capped at 128 KiB)


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, '/'-separated
    size: int
    mtime: int  # whole seconds, as rsync's quick check compares them
    kind: str = "f"  # 'f' file, 'l' symlink
    target: str = ""  # symlink target

    def same_quick(self, other: "FileEntry") -> bool:
        if self.kind != other.kind:
            return False
        if self.kind == "l":
            return self.target == other.target
        return self.size == other.size and self.mtime == other.mtime


@dataclass
class Tree:
    root: str
    exists: bool
    files: dict[str, FileEntry] = field(default_factory=dict)
    is_dir: bool = True
    manifest: dict[str, str] = field(default_factory=dict)  # the directory's .model-sync.xxh128
    manifest_mtime: int | None = None  # whole seconds

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values() if f.kind == "f")

    def trusted_hash(self, entry: FileEntry) -> str | None:
        """The manifest's hash of a file, when the manifest is newer than the
        file: file mtime (whole seconds) strictly before the manifest's, so a
        change in the same second as the manifest is hashed again. A change
        that restores the old mtime on a side with a manifest is not seen
        (verify rehashes everything)."""
        if self.manifest_mtime is None or entry.kind != "f":
            return None
        h = self.manifest.get(entry.path)
        return h if h and entry.mtime < self.manifest_mtime else None


# Every file and symlink below `.`, NUL-separated "KIND SIZE MTIME PATH\0TARGET\0"
# records; shared by every listing script so they all read alike.
FIND_FILES = (r"find . -name {partial} -prune -o \( -type f -o -type l \) ! -path ./{manifest} "
              r"-printf '%y %s %T@ %P\0%l\0'").format(partial=PARTIAL_DIR, manifest=MANIFEST_NAME)

# The listing and, in the same round trip, the manifest's mtime and text (stat
# before cat: a manifest replaced in between reads as older, never newer).
_LIST = r"""
root={root}
if [ ! -e "$root" ]; then echo MISSING; exit 0; fi
if [ ! -d "$root" ]; then echo NOTDIR; exit 0; fi
cd -- "$root" || exit 3
printf 'OK\n'
{find}
m=./{manifest}
if [ -f "$m" ] && [ ! -L "$m" ]; then
  find "$m" -maxdepth 0 -printf 'MANIFEST %T@\n' && tr -d '\000' < "$m"
fi
"""


def list_tree(host, root: str) -> Tree:
    """Every file and symlink under root, with size and mtime, and the
    directory's manifest, in one round trip."""
    from .hosts import remote_path_expr

    res = host.script(_LIST.format(root=remote_path_expr(root), find=FIND_FILES, manifest=MANIFEST_NAME),
                      timeout=600)
    out = res.stdout
    if not out.startswith(("OK", "MISSING", "NOTDIR")):
        raise RemoteError(host.alias, f"cannot list {root}: {res.stderr.strip() or 'exit ' + str(res.exit_code)}",
                          res.exit_code, res.stderr)
    if out.startswith("MISSING"):
        return Tree(root, exists=False, is_dir=False)
    if out.startswith("NOTDIR"):
        return Tree(root, exists=True, is_dir=False)
    tree = Tree(root, exists=True)
    tree.files, rest = parse_listing(out[3:])
    if rest.startswith("MANIFEST "):
        head, _, text = rest.partition("\n")
        try:
            tree.manifest_mtime = int(float(head.split()[1]))
            tree.manifest = parse_manifest(text)
        except (IndexError, ValueError):
            pass
    return tree


def parse_listing(data: str) -> tuple[dict[str, FileEntry], str]:
    """FIND_FILES records, up to the first thing that is not one; returns the
    files and the rest of the text."""
    parts = data.split("\0")
    files: dict[str, FileEntry] = {}
    i = 0
    while i < len(parts) - 1 and parts[i][:2] in ("f ", "l "):
        kind, size, mtime, path = parts[i].split(" ", 3)
        files[path] = FileEntry(path, int(size), int(float(mtime)), kind, parts[i + 1] if kind == "l" else "")
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
for i, name in enumerate(sys.argv[1:]):
    h = new()
    try:
        with open(name, "rb") as fh:
            for chunk in iter(lambda: fh.read(8 << 20), b""):
                h.update(chunk)
    except OSError:
        continue
    print(i, h.hexdigest())
"""


def remote_hash_method(facts) -> str:
    """Pick how a server hashes: 'xxhsum', 'python' or 'sha256'."""
    if facts.xxhsum:
        return "xxhsum"
    if facts.python_xxhash:
        return "python"
    return "sha256"


def hash_with_script(host, root: str, paths: list[str], method: str) -> dict[str, str]:
    """Hash files under root on any host with a shell tool; file names travel
    as quoted arguments (data, never code) and come back matched by position."""
    from .hosts import remote_path_expr

    out: dict[str, str] = {}
    for chunk in chunked(paths):
        args = " ".join(shlex.quote("./" + p) for p in chunk)
        if method == "python":
            cmd = f"python3 -c {shlex.quote(_PY_HASH)} {args}"
        elif all(_plain_name(p) for p in chunk):
            tool = "xxhsum -H2" if method == "xxhsum" else "sha256sum"
            # one call for the chunk; each output line names its file (line-buffered
            # where stdbuf exists, so a long chunk keeps the channel alive)
            cmd = f'sb=; if command -v stdbuf >/dev/null 2>&1; then sb="stdbuf -oL"; fi\n$sb {tool} -- {args}'

        else:
            tool = "xxhsum -H2" if method == "xxhsum" else "sha256sum"
            # a name with a newline or backslash would be escaped or split in the
            # tool's output: one call per file ties each line to its index instead
            cmd = f'i=0; for f in {args}; do printf "%s " "$i"; {tool} < "$f" || echo; i=$((i+1)); done'
        res = host.script(f"cd -- {remote_path_expr(root)} || exit 3\n{cmd}\n", timeout=3600)
        if res.exit_code == 3 or (res.exit_code != 0 and not res.stdout):
            raise RemoteError(host.alias, f"hashing under {root} failed: {res.stderr.strip() or res.exit_code}",
                              res.exit_code, res.stderr)
        wanted = set(chunk)
        for line in res.stdout.splitlines():
            head, sep, name = line.partition("  ")
            if sep and _is_hex(head) and name.startswith("./") and name[2:] in wanted:
                out[name[2:]] = head.lower()  # batch form: "HASH  ./name"
                continue
            fields = line.split()
            if len(fields) >= 2 and fields[0].isdigit() and _is_hex(fields[1]):
                out[chunk[int(fields[0])]] = fields[1].lower()  # indexed form: "I HASH ..."
    return out


def _plain_name(p: str) -> bool:
    return not any(c in p for c in "\n\r\\")


def _is_hex(s: str) -> bool:
    return len(s) in (32, 64) and all(c in "0123456789abcdefABCDEF" for c in s)


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


def hash_files(host, root: str, paths: list[str], method: str) -> dict[str, str]:
    """Hashes of `paths` under `root` on `host`; missing files are left out."""
    if not paths:
        return {}
    if host.is_local:
        base = Path(root).expanduser()
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
    out = {}
    for line in text.splitlines():
        h, sep, name = line.partition("  ")
        if sep and _is_hex(h):
            out[name] = h.lower()
    return out
