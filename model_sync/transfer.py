"""push and pull: a model leaves one machine and arrives intact on another,
and nobody ever sees it half-copied.

The destination is never written in place. Files go into a staging
directory next to it (a hard-link clone of the current copy, so unchanged
files cost nothing and files missing from the source stay unless --delete),
are verified there, and the staging directory then replaces the destination
in one rename. An interrupted run leaves its staging directory (and rsync's
partial files) behind for the next run to resume from."""

from __future__ import annotations

import os
import posixpath
import shlex
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from typing import Callable

from . import tarpush
from .config import Config
from .early import temp_prefix
from .errors import ModelSyncError, RemoteError, TransferCancelled, UsageError, VerificationError
from . import destination
from .destination import Names
from .hosts import LocalHost, open_host, remote_path_expr, stale_seconds
from .manifest import SHA256, XXH128, hash_both, hash_files, list_tree, manifest_text, remote_hash_method, same_nsec
from .paths import pull_destination, relative_or_absolute, system_place
from .probe import HostFacts, TargetState, inspect, parse_state, state_script
from .rsync import (Item, RsyncOptions, RsyncRun, build_rsync_argv, bwlimit_kib, check_bwlimit, check_result,
                    run_rsync, stream_bwlimit)

SPACE_MARGIN = 1.02  # a little room for directories and rsync's temp names


@dataclass
class TransferOptions:
    verify: bool = True
    compress: bool = False
    delete: bool = False
    dry_run: bool = False
    excludes: tuple[str, ...] = ()
    includes: tuple[str, ...] = ()
    bwlimit: str | None = None
    wait: bool = True  # for the destination lock
    io_timeout: int | None = None  # seconds a stalled transfer waits; None: defaults.io_timeout
    streams: int | None = None  # parallel rsync streams; None: defaults.streams
    confirmed: bool = False  # --yes: deletions were approved
    fsync: bool = True  # flush the new version to disk before publishing it
    force: bool = False  # replace an existing directory model-sync did not publish
    grace_minutes: int = destination.DEFAULT_GRACE_MINUTES  # a replaced version stays readable this long


@dataclass
class PlannedFile:
    path: str
    size: int
    action: str  # "send" | "delete"


@dataclass
class TransferResult:
    direction: str  # "push" | "pull"
    server: str
    source: str
    destination: str
    files: int  # files sent
    bytes: int  # size of the files sent
    seconds: float
    verified: bool | None  # None: not checked (--no-verify or dry run)
    algorithm: str | None
    dry_run: bool = False
    published: bool = False
    planned: list[PlannedFile] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    up_to_date: bool = False  # nothing to send: the destination already matched, nothing was touched
    via: str = "rsync"  # how the files went: "rsync", or "tar" (a new model of many small files, see tarpush)
    # the staging copy of an interrupted run was picked up: what it already
    # held that matched the source (not sent again), and rsync's partial files
    resumed: bool = False
    resumed_bytes: int = 0
    resumed_partial_bytes: int = 0

    __json_properties__ = ("speed_bytes_per_s",)

    @property
    def speed_bytes_per_s(self) -> float | None:
        return round(self.bytes / self.seconds, 1) if self.seconds > 0 and self.bytes else None


class ConfirmationNeeded(ModelSyncError):
    """--delete would remove files; the caller must show them and confirm."""

    exit_code = 2

    def __init__(self, deletions: list[PlannedFile], destination: str, why: str = ""):
        names = ", ".join(d.path for d in deletions[:5]) + (" ..." if len(deletions) > 5 else "")
        super().__init__(f"{why}--delete would remove {len(deletions)} file(s) from {destination}: {names}; "
                         "nothing was published; rerun with --yes to confirm (or --dry-run to see the list)")
        self.deletions = deletions


class InsufficientSpace(ModelSyncError):
    pass


Progress = Callable[[int, int], None]  # (bytes done, bytes total)


@dataclass
class _Side:
    """One end of a transfer: a host and a path on it (with what we know of it)."""

    host: object
    path: str
    tree: dict = field(default_factory=dict)  # source side: its files and symlinks
    state: TargetState | None = None  # destination side: as inspected
    dirs: dict = field(default_factory=dict)  # source side: its directories -> mode
    stage: str = ""
    followed: list = field(default_factory=list)  # source side: symlinks sent as what they point to

    def rsync_spec(self) -> str:
        if self.host.is_local:
            # a leading '-' must not read as an option; rsync sees paths after --
            return self.path
        return f"{self.host.target.host}:{self.path}"


def _check_rsync(facts: HostFacts, alias: str) -> None:
    if facts.rsync_version is None:
        raise RemoteError(alias, "rsync is not installed on the server; install rsync 3.2+ there "
                                 "(Debian/Ubuntu: apt-get install rsync; RHEL: dnf install rsync)")
    if not facts.rsync_ok:
        raise RemoteError(alias, f"the server has rsync {facts.rsync_version}; model-sync needs 3.2+ "
                                 "(upgrade rsync there)")


def _local_rsync() -> None:
    if not shutil.which("rsync"):
        raise ModelSyncError("rsync is not installed on this machine; install it (apt-get install rsync)")


def _check_destination(alias: str, where: str, state: TargetState, base: str | None, force: bool = False) -> None:
    """Refuse destinations a rename-based publish would damage."""
    path = state.path
    if state.is_link:
        raise UsageError(f"{where} is a symlink model-sync did not make; publishing replaces it by rename, which "
                         "would replace the link. Give the directory it points to, or remove the link first")
    if state.is_other:
        raise UsageError(f"{where} exists and is not a directory; give a directory path for the model")
    if system_place(path):
        raise UsageError(f"{where} is a system or home directory; model-sync never publishes there. "
                         "Give the model's own directory, e.g. MODEL_BASE/NAME")
    if path == "/" or (base and (path == base.rstrip("/") or base.startswith(path.rstrip("/") + "/"))):
        raise UsageError(f"{where} is the model store itself (or above it); give the model's own directory, "
                         "e.g. MODEL_BASE/NAME")
    if state.foreign and not force:
        raise UsageError(f"{where} exists and was not published by model-sync (no manifest of ours in it); "
                         "publishing would replace it. Pick another destination, or add --force to replace it")


def _check_links(where: str, tree: dict, dangling: list[str]) -> None:
    """A source's symlinks that point at nothing: rsync would send one as a
    link to nothing (or fail on it), and a model with it is broken anyway."""
    if dangling:
        from .render import cell

        shown = ", ".join(f"{cell(p)} -> {cell(tree[p].target)}" for p in dangling[:3])
        raise UsageError(f"{where}: {len(dangling)} symlink(s) point at nothing (dangling, or a loop): {shown}"
                         f"{' ...' if len(dangling) > 3 else ''}; nothing was sent. Put the files they name "
                         "in place, or remove the links")


def _run_script(host, script: str, what: str, stdin: bytes | None = None) -> str:
    res = host.script(script, timeout=3600, stdin=stdin)
    if res.exit_code != 0:
        raise RemoteError(host.alias, f"{what} failed: {res.stderr.strip() or 'exit ' + str(res.exit_code)}",
                          res.exit_code, res.stderr)
    return res.stdout.strip()


# -- the transfer --------------------------------------------------------------------
def transfer(direction: str, local_path: str, alias: str, remote_path: str | None, config: Config,
             opts: TransferOptions, progress: Progress | None = None, on_item: Callable[[Item], None] | None = None,
             on_wait: Callable[[], None] | None = None, cancel: threading.Event | None = None,
             host=None) -> TransferResult:
    """Push or pull one model directory. `host`: an open host for `alias` to
    reuse (the caller closes it); otherwise one is opened and closed here."""
    if direction not in ("push", "pull"):
        raise UsageError(f"unknown direction {direction!r}")
    if opts.io_timeout is None:
        opts = replace(opts, io_timeout=config.defaults.io_timeout)
    if opts.streams is None:
        opts = replace(opts, streams=config.defaults.streams)
    if opts.bwlimit is not None:
        check_bwlimit(opts.bwlimit)  # (API callers: the command line checked it already)
    _local_rsync()
    local_abs = os.path.abspath(os.path.expanduser(local_path))
    if direction == "push" and not os.path.isdir(local_abs):
        raise UsageError(f"{local_path} is not a directory; push sends a model directory")
    rel = relative_or_absolute(remote_path, alias, os.path.basename(local_abs.rstrip("/"))
                                if direction == "push" else None)
    start = time.monotonic()
    server = host or open_host(alias, config)
    here = server if server.is_local else LocalHost.this_machine()
    offer = None
    try:
        # one round trip: the server's tools, and the model directory there
        # (for a push, the local listing meanwhile); for a push that could go
        # as a tar stream, the same session offers it when the model is new there
        with ThreadPoolExecutor(max_workers=1) as pool:
            local_tree = pool.submit(list_tree, here, local_abs) if direction == "push" else None
            if direction == "push" and not server.is_local and tarpush.may_offer(opts):
                facts, remote, offer = tarpush.inspect_offering(server, rel, opts)
            else:
                facts, remote = inspect(server, rel, use_stage=direction == "push", source=direction == "pull")
            local_tree = local_tree.result() if local_tree else None
        if not server.is_local:
            _check_rsync(facts, alias)
        method = "xxhsum" if server.is_local else remote_hash_method(facts)
        rpath = remote.path
        if direction == "push":
            _check_links(local_path, local_tree.files, local_tree.dangling)
            _check_destination(alias, f"{alias}:{rpath}", remote, facts.base_abs, opts.force)
            src = _Side(here, local_abs, tree=local_tree.files, dirs=local_tree.dirs, followed=local_tree.followed)
            dst = _Side(server, rpath, state=remote)
        else:
            if not remote.is_dir:
                raise UsageError(f"{alias}:{rpath} is not a model directory on the server; "
                                 f"see 'model-sync list {alias}'")
            _check_links(f"{alias}:{rpath}", remote.files, remote.dangling)
            local_abs = pull_destination(local_path, posixpath.basename(rpath))
            _, local_state = inspect(here, local_abs, use_stage=True)
            if local_state.foreign and not opts.force and local_abs == os.path.abspath(os.path.expanduser(local_path)):
                raise UsageError(f"{local_abs} exists and was not published by model-sync (no manifest of ours "
                                 f"in it); to pull into it, end the path with a slash ({local_path.rstrip('/')}/: "
                                 f"the model lands in {os.path.join(local_abs, posixpath.basename(rpath))}); "
                                 "to replace it, add --force")
            _check_destination(alias, local_abs, local_state, None, opts.force)
            src = _Side(server, rpath, tree=remote.files, dirs=remote.dirs, followed=remote.followed)
            dst = _Side(here, local_abs, state=local_state)
        if server.is_local:  # both ends on this machine: neither may hold the other
            a, b = os.path.realpath(src.path), os.path.realpath(dst.path)
            if os.path.commonpath([a, b]) in (a, b):
                raise UsageError(f"{dst.path} and {src.path} overlap (one holds the other); "
                                 "pick a destination outside the source")
        server_side = dst if direction == "push" else src
        if _up_to_date(src, dst.state, opts):
            return TransferResult(direction=direction, server=alias, source=_show(src, server_side, alias),
                                  destination=_show(dst, server_side, alias), files=0, bytes=0,
                                  seconds=round(time.monotonic() - start, 3), verified=None, algorithm=None,
                                  up_to_date=True)
        return _transfer(direction, alias, src, dst, server_side, opts, method, progress, on_item, on_wait, cancel,
                         start, facts, offer)
    finally:
        if offer is not None:
            offer.close()  # if declined: the server drops its empty stage and the lock
        if host is None:
            server.close()


def _up_to_date(src: _Side, dst: TargetState, opts: TransferOptions) -> bool:
    """Nothing to do: the published destination already has every file and
    symlink as the source has it (size, mtime as manifest.same_nsec compares
    it, and mode; link target), every directory with its mode, and its
    manifest lists every file. Then we skip
    the lock, the staging copy and rsync. Anything else takes the full path:
    filters, a dry run, a staging copy left by an interrupted run, and with
    --delete any entry the source lacks. Owner and directory times are not
    compared (publishing ignores directory-time-only changes too)."""
    if opts.dry_run or opts.excludes or opts.includes or not dst.is_dir or dst.stage_is_dir or dst.is_link:
        return False
    have, have_dirs = dst.files, dst.dirs
    # the manifest keeps a hash of every published file: an incomplete one is completed
    manifest = dst.manifest if opts.verify else None
    for path, f in src.tree.items():  # tens of thousands: FileEntry.same_quick inlined
        g = have.get(path)
        if g is None or f.kind != g.kind:
            return False
        if f.kind == "l":
            if f.target != g.target:
                return False
        elif f.size != g.size or f.mtime != g.mtime or f.mode != g.mode or (
                f.nsec != g.nsec and not same_nsec(f.nsec, g.nsec)) or (
                manifest is not None and path not in manifest):
            return False
    if any(have_dirs.get(d) != mode for d, mode in src.dirs.items()):
        return False
    return not opts.delete or (have.keys() <= src.tree.keys() and have_dirs.keys() <= src.dirs.keys())


def _exact_times(state: TargetState) -> bool:
    """Whether rsync compares mtimes to the ns (as our quick check does where
    both times have them) rather than to the second, its default: with the
    default, a file our plan sends would be skipped when its copy has the
    same size and second. Not where every file of the destination (or its
    staging copy) has a whole-second time, as on a filesystem that keeps only
    seconds: there our check compares seconds too (same_nsec), and rsync at
    the ns would rewrite every file of every push."""
    times = [f.nsec for f in state.files.values() if f.kind == "f"]
    return not times or any(times)


def _show(side: _Side, server_side: _Side, alias: str) -> str:
    return f"{alias}:{side.path}" if side is server_side else side.path


def _rsh(side_a: _Side, side_b: _Side) -> str | None:
    for s in (side_a, side_b):
        if not s.host.is_local:
            return s.host.rsync_rsh()
    return None


def _plan(src: _Side, dst: _Side, ropts: RsyncOptions, rsh, cancel) -> list[PlannedFile]:
    """What will be sent and deleted. From rsync's own dry run where its rules
    matter (filters, deletion); otherwise from the two listings we already have."""
    if not (ropts.excludes or ropts.includes or ropts.delete):
        have = dst.state.files
        return [PlannedFile(p, f.size, "send") for p, f in sorted(src.tree.items())
                if f.kind == "f" and (p not in have or not f.same_quick(have[p]))]
    target = dst.stage if dst.state.stage_is_dir else dst.path if dst.state.is_dir else None
    with tempfile.TemporaryDirectory(prefix=temp_prefix("plan")) as empty:
        plan_dst = _Side(dst.host, target) if target else _Side(LocalHost.this_machine(), empty)
        run = run_rsync(build_rsync_argv(src.rsync_spec(), plan_dst.rsync_spec(), _rsh(src, plan_dst),
                                         RsyncOptions(**{**ropts.__dict__, "dry_run": True})), cancel=cancel)
    check_result(run, dst.host.alias, ropts.io_timeout)
    planned = [PlannedFile(i.path, src.tree[i.path].size if i.path in src.tree else i.size, "send")
               for i in run.sent_files]
    return planned + [PlannedFile(p.rstrip("/"), 0, "delete") for p in run.deleted]


def _transfer(direction, alias, src: _Side, dst: _Side, server_side: _Side, opts: TransferOptions, method,
              progress, on_item, on_wait, cancel,
              start: float, facts: HostFacts, offer: "tarpush.Offer | None" = None) -> TransferResult:
    algorithm = SHA256 if method == "sha256" else XXH128
    names = Names(dst.path)
    parent, dst.stage, lock = names.parent, names.stage, names.lock
    rsh = _rsh(src, dst)
    ropts = RsyncOptions(compress=opts.compress, delete=opts.delete, excludes=opts.excludes,
                         includes=opts.includes, bwlimit=opts.bwlimit, io_timeout=opts.io_timeout,
                         exact_times=_exact_times(dst.state))

    def show(side: _Side) -> str:
        return _show(side, server_side, alias)

    def stop_if_cancelled(when: str) -> None:
        if cancel is not None and cancel.is_set():
            raise TransferCancelled(alias, when)

    result = TransferResult(direction=direction, server=alias, source=show(src), destination=show(dst),
                            files=0, bytes=0, seconds=0.0, verified=None, algorithm=None)

    # a new model of many small files: one tar stream (see tarpush), into the
    # stage the inspection's session made under the lock it holds
    # (not with a symlink to follow: tar would send the link itself)
    if offer is not None and not src.followed and tarpush.accepts(facts, opts, method) and \
            tarpush.suits(src.tree, opts):
        _check_space(alias, parent, dst.state.free_bytes, sum(f.size for f in src.tree.values() if f.kind == "f"))
        stop_if_cancelled("before the transfer")
        if offer.start(src.path, src.tree, src.dirs):  # (False: it lapsed meanwhile)
            offer.send(opts.io_timeout, progress, cancel)
            # the plan (every file: the destination is new) while the server checks them
            result.planned = [PlannedFile(p, f.size, "send") for p, f in sorted(src.tree.items()) if f.kind == "f"]
            result.sent, result.bytes = offer.finish()
            result.files, result.published, result.via = len(result.sent), True, "tar"
            if opts.verify:
                result.verified, result.algorithm = True, XXH128
            if on_item:
                for p in result.sent:
                    on_item(Item(">f+++++++++", src.tree[p].size, p))
            result.seconds = round(time.monotonic() - start, 3)
            return result
    if offer is not None:
        offer.close()  # declined (or lapsed), before the rsync path takes the lock

    # 1. plan, confirmation of deletions, room on the destination (from the
    # inspection before the lock: what the user decides on)
    result.planned = _plan(src, dst, ropts, rsh, cancel)
    to_send = sum(p.size for p in result.planned if p.action == "send")
    deletions = [p for p in result.planned if p.action == "delete"]
    if opts.dry_run:
        result.dry_run = True
        result.files = sum(1 for p in result.planned if p.action == "send")
        result.bytes = to_send
        result.deleted = [d.path for d in deletions]
        result.seconds = round(time.monotonic() - start, 3)
        return result
    if deletions and not opts.confirmed:
        raise ConfirmationNeeded(deletions, result.destination)
    _check_space(alias, parent, dst.state.free_bytes, to_send, src, dst)
    stop_if_cancelled("before the transfer")

    # 2. under the lock: stage (clone, or resume), then look again at the stage
    # and the destination: what we act on is what is there now
    d, st = remote_path_expr(dst.path), remote_path_expr(dst.stage)
    then = destination.prepare_script(names, remote_path_expr) + state_script(
        d, st, remote_path_expr(names.versions), use_stage=True, both=True)
    with dst.host.lock(lock, wait=opts.wait, on_wait=on_wait, then=then, stale_after=opts.io_timeout,
                       fence=[dst.stage]) as held:
        how, _, rest = held.output.partition("\n")
        if how.startswith("not-ours: "):
            raise destination.not_ours(alias, how)
        if how == "dest-symlink" or how == "dest-not-dir":
            _check_destination(alias, result.destination, TargetState(
                dst.path, False, False, None, {}, {}, is_link=how == "dest-symlink", is_other=True), None)
        now = parse_state(rest, dst.path, both=True)
        staged = dict(now.files)  # the stage, as it is before rsync
        published = now.target_files or {}
        # what an older stage holds that neither the source nor the published
        # copy has (or has so): back to the published copy's state
        stale = sorted(p for p, f in staged.items()
                       if p not in src.tree and (p not in published or not f.same_quick(published[p])))
        if stale:
            _reset_to_published(dst.host, dst.path, dst.stage, stale, published)
            for p in stale:
                if p in published:
                    staged[p] = published[p]
                else:
                    staged.pop(p)
        # files an interrupted run left in the stage that differ from the
        # published copy: not verified yet, whatever rsync thinks of them
        carried = {p for p, f in staged.items() if p not in published or not f.same_quick(published[p])}
        if how == "resume":
            result.resumed = True
            result.resumed_bytes = sum(g.size for p in carried if (g := src.tree.get(p)) is not None
                                       and g.kind == "f" and staged[p].kind == "f" and staged[p].same_quick(g))
            result.resumed_partial_bytes = now.stage_partial_bytes
        run = _send(src, _Side(dst.host, dst.stage), rsh, ropts, result.planned, opts.streams or 1, progress,
                    on_item, cancel)
        stop_if_cancelled("during the transfer")
        check_result(run, alias, opts.io_timeout)
        sent = [i.path for i in run.sent_files]
        result.sent = sent
        result.deleted = [p.rstrip("/") for p in run.deleted]
        result.files = len(sent)
        result.bytes = sum(src.tree[p].size if p in src.tree else 0 for p in sent)
        unapproved = sorted(set(result.deleted) - {p.path for p in deletions})
        if unapproved:
            raise ConfirmationNeeded([PlannedFile(p, 0, "delete") for p in unapproved], result.destination,
                                     "the destination changed since the plan, and ")
        final = (set(staged) | set(sent)) - set(result.deleted)
        # every sent file, and what an interrupted run left; a sent file the
        # source no longer has fails the comparison (the source changed)
        to_check = sorted(set(sent) | (carried & final & {p for p, f in src.tree.items() if f.kind == "f"}))

        # 3. verify what was sent (and what an interrupted run sent), both ends at once
        hashes: dict[str, str] = {}
        # the manifest is xxh3-128 whatever the server can hash: where it checks
        # by sha256, the xxh3-128 hashes come from this machine's copy (the
        # sender's for a push), read meanwhile and checked equal by sha256
        here = dst if src is server_side else src
        here_root = dst.stage if here is dst else src.path
        if opts.verify:
            result.algorithm = algorithm
            with ThreadPoolExecutor(max_workers=1) as pool:
                xxh = pool.submit(hash_files, here.host, here_root, to_check, "xxhsum") \
                    if algorithm == SHA256 else None
                src_h, dst_h = hash_both(src.host, src.path, dst.host, dst.stage, to_check, method)
                xxh = xxh.result() if xxh is not None else src_h
            bad = sorted(p for p in to_check if src_h.get(p) is None or src_h.get(p) != dst_h.get(p))
            if bad:
                result.mismatched = bad
                result.verified = False
                # drop the bad copies so the next run sends them again
                _run_script(dst.host, "cd -- " + st + " && rm -f -- " +
                            " ".join(shlex.quote("./" + p) for p in bad), "removing corrupt copies")
                raise VerificationError(
                    f"{alias}: {len(bad)} file(s) differ after transfer ({', '.join(bad[:5])}); "
                    f"nothing was published. Rerun to send them again; if it repeats, check the disk on {alias}")
            result.verified = True
            hashes = xxh
        stop_if_cancelled("before publishing")

        # 4. the manifest: earlier entries of untouched files, plus what we hashed;
        # only for files that will be in the published copy
        gone = set(sent) | set(result.deleted) | carried
        old_manifest = now.manifest
        manifest = {p: h for p, h in old_manifest.items() if p not in gone and p in final}
        if opts.verify:
            manifest.update(hashes)
            missing = [p for p in final if p not in manifest and p in src.tree and src.tree[p].kind == "f"]
            if algorithm == XXH128:
                manifest.update(hash_files(src.host, src.path, missing, method))
            else:
                manifest.update(hash_files(here.host, here_root, missing, "xxhsum"))

        # 5. publish in one step (with the manifest, in the same round trip)
        write = manifest != old_manifest
        # any change rsync made (symlinks, new directories, types, modes, a
        # directory's mode) counts; a directory's time alone does not
        # (itemized YXcstpoguax: flags[5] is the permission change)
        changed = any(not i.flags.startswith(".d") or i.flags[5:6] == "p" for i in run.items)
        swap = bool(gone) or write or changed or not now.is_dir
        res = dst.host.script(destination.publish_script(
            names, remote_path_expr, held.owner, write_manifest=write, swap=swap, fsync=opts.fsync,
            grace=opts.grace_minutes, files=len(final)), timeout=3600,
            stdin=manifest_text(manifest).encode("utf-8", "surrogateescape") if write else None)
        if res.exit_code == destination.NOT_OURS_EXIT:
            raise destination.not_ours(alias, res.stderr)
        if res.exit_code == 9:
            raise ModelSyncError(f"{alias}: this run's lock on the destination lapsed (no heartbeat for "
                                 f"{stale_seconds(opts.io_timeout)}s: was the process stopped, or the network down?); "
                                 "nothing was published. Run the same command again")
        if res.exit_code != 0:
            raise RemoteError(alias, f"publishing failed: {res.stderr.strip() or 'exit ' + str(res.exit_code)}",
                              res.exit_code, res.stderr)
        result.published = True
    result.seconds = round(time.monotonic() - start, 3)
    return result


def _check_space(alias: str, parent: str, free: int | None, to_send: int, src: _Side | None = None,
                 dst: _Side | None = None) -> None:
    """`to_send`: what the destination (its staging copy, when one is left)
    lacks; with `src` and `dst`, the error says what that staging copy holds."""
    if free is not None and to_send * SPACE_MARGIN > free:
        from .render import human_size

        raise InsufficientSpace(f"{alias}: not enough space at {parent}: need {human_size(int(to_send * SPACE_MARGIN))}, "
                                f"available {human_size(free)}; free some space (see 'model-sync prune') "
                                f"or pick another path{_stage_holds(src, dst) if dst else ''}")


def _stage_holds(src: _Side, dst: _Side) -> str:
    """For the free-space error: what a staging copy left by an interrupted
    run holds, and how to drop it. Its files that match the source are not
    sent again (the plan left them out); its partial files are not counted
    as room, as rsync writes such a file whole beside the partial one."""
    state = dst.state
    if not state.stage_is_dir:
        return ""
    from .render import human_size

    stage = Names(dst.path).stage
    held = sum(f.size for p, f in state.files.items()
               if f.kind == "f" and (g := src.tree.get(p)) is not None and f.same_quick(g))
    partial = state.stage_partial_bytes
    remove = "rm -rf -- " + shlex.quote(stage)
    # one argument for exec, which hands it to the server's shell: in double
    # quotes where that changes nothing (readable with the usual spaces)
    word = f'"{remove}"' if not any(c in remove for c in '"$`\\!') else shlex.quote(remove)
    how = remove if dst.host.is_local else f"model-sync exec {dst.host.alias} {word}"
    return (f"; the staging copy {stage} holds {human_size(held)} of this model already (not sent again)"
            + (f" and {human_size(partial)} in partial files (not counted: rsync rewrites those files whole)"
               if partial else "")
            + f"; to drop it and start over (when no other sync to it runs): {how}")


def _reset_to_published(host, dest: str, stage: str, paths: list[str], published: dict) -> None:
    """Put these stage entries back as the published copy has them (a hard
    link), or remove them where it has none."""
    lines = []
    for p in paths:
        s, d = shlex.quote(posixpath.join(stage, p)), shlex.quote(posixpath.join(dest, p))
        lines.append(f"rm -f -- {s}" + (f" && ln -- {d} {s}" if p in published and published[p].kind == "f"
                                          else f" && cp -P -- {d} {s}" if p in published else ""))
    for i in range(0, len(lines), 500):
        _run_script(host, "\n".join(["set -e"] + lines[i:i + 500]), "resetting the staging copy")


PARALLEL_MIN_BYTES = 64 << 20  # below this, a second stream costs more than it gains


def _send(src: _Side, stage: _Side, rsh, ropts: RsyncOptions, planned: list[PlannedFile], streams: int,
          progress, on_item, cancel) -> RsyncRun:
    """rsync the source into the stage. With several large files to send, they
    go first in `streams` concurrent rsyncs over disjoint lists (one ssh
    stream rarely keeps both ends busy); then one ordinary pass, which finds
    them there, does the rest: symlinks, directories, deletions, filters."""
    files = sorted((p for p in planned if p.action == "send"), key=lambda p: -p.size)
    total = max(sum(p.size for p in files), 1)
    done = [0] * (streams + 1)
    lock = threading.Lock()

    def reporter(i):
        def report(n: int) -> None:
            with lock:
                done[i] = n
                if progress:
                    progress(min(sum(done), total), total)
        return report

    # one event stops every rsync of this send: the caller's cancel, or an
    # interruption here (Ctrl-C reaches this thread, not the rsyncs' sessions)
    stop = threading.Event()
    if cancel is not None:
        def relay():
            while not stop.wait(0.2):
                if cancel.is_set():
                    stop.set()
        threading.Thread(target=relay, daemon=True).start()
    try:
        return _send_all(src, stage, rsh, ropts, files, total, streams, reporter, on_item, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        stop.set()  # ends the relay


def _send_all(src, stage, rsh, ropts, files, total, streams, reporter, on_item, cancel) -> RsyncRun:
    runs: list[RsyncRun] = []
    # --bwlimit is for the whole transfer: streams that run at once share it
    # (whole KiB/s each, so no more streams than the limit has KiB/s)
    kib = bwlimit_kib(ropts.bwlimit) if ropts.bwlimit else 0
    streams = min(streams, kib) if kib else streams
    if streams > 1 and len(files) > 1 and total >= PARALLEL_MIN_BYTES:
        groups: list[list[PlannedFile]] = [[] for _ in range(min(streams, len(files)))]
        for f in files:  # largest first into the lightest group
            min(groups, key=lambda g: sum(x.size for x in g)).append(f)
        with tempfile.TemporaryDirectory(prefix=temp_prefix("lists")) as tmp:
            lists = []
            for i, g in enumerate(groups):
                path = os.path.join(tmp, f"stream-{i}")
                with open(path, "wb") as fh:
                    fh.write(b"".join(p.path.encode("utf-8", "surrogateescape") + b"\0" for p in g))
                lists.append(path)
            stream_opts = RsyncOptions(**{**ropts.__dict__, "delete": False,
                                          "bwlimit": stream_bwlimit(ropts.bwlimit, len(lists))})
            failed = None
            with ThreadPoolExecutor(max_workers=len(lists)) as pool:
                futures = [pool.submit(run_rsync, build_rsync_argv(src.rsync_spec(), stage.rsync_spec(), rsh,
                                                                   stream_opts, files_from=path),
                                       progress=reporter(i), on_item=on_item, cancel=cancel)
                           for i, path in enumerate(lists)]
                try:
                    for f in as_completed(futures):
                        if f.result().exit_code != 0 and failed is None:
                            # the first failure is the send's: the other streams stop now
                            # (their partial files kept) rather than run on for nothing
                            failed = f.result()
                            cancel.set()
                    runs = [f.result() for f in futures]
                except BaseException:
                    cancel.set()  # before the pool's exit waits for the workers
                    raise
        if failed is not None:
            return failed
    final = run_rsync(build_rsync_argv(src.rsync_spec(), stage.rsync_spec(), rsh, ropts),
                      progress=reporter(streams), on_item=on_item, cancel=cancel)
    final.items = [i for r in runs for i in r.items] + final.items
    return final
