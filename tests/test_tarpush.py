"""A new model of many small files goes as one tar stream (tarpush): the
same tree, modes, times and manifest as the rsync path would give, checked
file by file on the server before it is published; anything else, or a
stream that fails, publishes nothing."""

import os
import subprocess

import pytest

from test_transfer import push_json

from model_sync import tarpush

N = tarpush.MIN_FILES + 20


def _small_model(root, n=N):
    for i in range(n):
        p = root / f"layer-{i % 9}" / f"t-{i:04d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(i % 700))
    (root / "empty").mkdir()
    (root / "odd name -x.bin").write_bytes(b"odd")
    os.chmod(root / "layer-3", 0o750)
    os.chmod(root / "layer-1" / "t-0001.bin", 0o600)
    os.symlink("layer-0/t-0000.bin", root / "latest.bin")
    os.utime(root / "layer-2" / "t-0002.bin", (1_700_000_000, 1_700_000_000))
    return root


def _uniform_model(root, size, n=tarpush.MIN_FILES + 100):
    """n random files of `size` bytes in five directories."""
    for i in range(n):
        (root / f"d{i % 5}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 5}" / f"t{i}.bin").write_bytes(os.urandom(size))
    return root


def _state(root):
    """Every entry below root: type, size, mode, mtime (whole seconds), link target."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if rel == ".model-sync.xxh128":
            continue
        out[rel] = (p.is_symlink(), p.is_dir(), st.st_size if p.is_file() and not p.is_symlink() else 0,
                    st.st_mode & 0o7777, int(st.st_mtime), os.readlink(p) if p.is_symlink() else None)
    return out


def test_new_small_file_model_goes_as_one_checked_stream(bed, tmp_path):
    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250715")
    res, doc = push_json(str(m), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "tar" and doc["verified"] is True and doc["published"] is True
    assert doc["files"] == N + 1 and doc["bytes"] == sum(i % 700 for i in range(N)) + 3
    dest = bed.remote_base / m.name
    assert _state(dest) == _state(m)
    assert (dest.stat().st_mode & 0o777) == (m.stat().st_mode & 0o777)
    # the manifest lists every file and is what xxhsum -c reads
    lines = (dest / ".model-sync.xxh128").read_text().splitlines()
    assert len(lines) == N + 1
    check = subprocess.run(["xxhsum", "-c", "--quiet", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert not list(bed.remote_base.glob(f".{m.name}.model-sync-*ing")) and not list(dest.glob(".model-sync-end-*"))
    # and the next push finds nothing to do
    res, doc = push_json(str(m), "bed")
    assert res.returncode == 0 and doc["up_to_date"] is True, res.stderr


@pytest.mark.parametrize("case", ["few files", "filter", "existing"])
def test_everything_else_takes_the_rsync_path(bed, tmp_path, case):
    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250716", n=20 if case == "few files" else N)
    args = [str(m), "bed"]
    if case == "filter":
        args += ["--exclude", "*.json"]
    if case == "existing":
        assert push_json(*args)[1]["via"] == "tar"
        (m / "layer-0" / "t-0000.bin").write_bytes(b"changed")
    res, doc = push_json(*args)
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "rsync" and doc["published"] is True
    assert _state(bed.remote_base / m.name) == _state(m)


def test_a_file_that_arrives_different_publishes_nothing(bed, tmp_path, monkeypatch):
    """The server checks each file against the sender's hashes: one wrong
    hash (as if the file had changed on the way) and nothing is published."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import VerificationError

    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250717")
    real = tarpush.closing_archive

    def one_wrong(end, hashes):
        return real(end, {**hashes, "layer-4/t-0004.bin": "0" * 32})

    monkeypatch.setattr(tarpush, "closing_archive", one_wrong)
    with pytest.raises(VerificationError, match=r"1 file\(s\) differ.*layer-4/t-0004.bin.*nothing was published"):
        api.push(str(m), "bed", load_config())
    assert not (bed.remote_base / m.name).exists()
    assert not (bed.remote_base / f".{m.name}.model-sync-staging").exists()


def test_a_stream_cut_short_is_not_published_even_unverified(bed, tmp_path, monkeypatch):
    """Without its end marker (the sender died, or tar failed midway) the
    server publishes nothing, with or without verification; the next run
    resumes over rsync from what arrived."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import RemoteError
    from model_sync.transfer import TransferOptions

    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250718")
    real = tarpush.closing_archive
    monkeypatch.setattr(tarpush, "closing_archive", lambda end, hashes: b"")
    with pytest.raises(RemoteError, match="the stream was cut short"):
        api.push(str(m), "bed", load_config(), opts=TransferOptions(verify=False))
    assert not (bed.remote_base / m.name).exists()
    assert (bed.remote_base / f".{m.name}.model-sync-staging").is_dir()
    monkeypatch.setattr(tarpush, "closing_archive", real)
    res, doc = push_json(str(m), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "rsync" and doc["verified"] is True
    assert _state(bed.remote_base / m.name) == _state(m)


def test_stream_hashes_are_the_files_hashes_however_the_stream_is_cut(tmp_path):
    """The sender's hashes come from the tar stream as it passes: they must
    equal each file's own xxh3-128, for long names (GNU 'L' records), empty
    files and odd names, whatever the chunking."""
    import random

    import xxhash

    from model_sync.tarpush import StreamHashes

    root = tmp_path / "m"
    deep = root / ("d" * 120)
    deep.mkdir(parents=True)
    files = {deep / ("f" * 150 + ".bin"): os.urandom(5000), root / "empty": b"",
             root / "n\u00e9\u00fc x.bin": os.urandom(513), root / "nl\nname": b"z" * 1024}
    files.update({root / f"f{i}": os.urandom(i * 97) for i in range(40)})
    for p, data in files.items():
        p.write_bytes(data)
    os.symlink("f1", root / "link")
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = tmp_path / "names"
    listing.write_bytes(b"".join(b"./" + n.encode() + b"\0" for n in names))
    stream = subprocess.run(["tar", "-c", "-f", "-", "--format=gnu", "--null", "--verbatim-files-from", "--no-recursion",
                             "-C", str(root), "-T", str(listing)], capture_output=True, check=True).stdout
    expect = {str(p.relative_to(root)): xxhash.xxh3_128(d).hexdigest() for p, d in files.items()}
    rng = random.Random(3)
    for _ in range(20):
        h, i = StreamHashes(), 0
        while i < len(stream):
            step = rng.choice([1, 7, 511, 512, 513, 4096, 65536])
            h.feed(stream[i:i + step])
            i += step
        assert h.hashes == expect


@pytest.mark.parametrize("why", ["bwlimit", "compress"])
def test_options_tar_cannot_honour_take_the_rsync_path(bed, tmp_path, why):
    m = _small_model(tmp_path / "src" / f"RTX3090_N2501_TOKENS_2507{20 + len(why)}")
    res, doc = push_json(str(m), "bed", "--bwlimit=50M" if why == "bwlimit" else "--compress")
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "rsync" and _state(bed.remote_base / m.name) == _state(m)


def test_tar_options_from_the_environment_do_not_reach_the_stream(bed, tmp_path):
    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250730")
    res, doc = push_json(str(m), "bed", "--no-verify", env={"TAR_OPTIONS": "--exclude=*.bin"})
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "tar" and _state(bed.remote_base / m.name) == _state(m)


def test_a_lapsed_lock_stops_the_server_side_unpacking(bed, tmp_path):
    """When the lock lapses mid-stream (its owner file goes, as when this
    process is stopped and the heartbeats stop), the server's tar is stopped
    at once: a later run may resume that stage and must not find us still
    writing. Nothing is published."""
    import time

    from model_sync import api
    from model_sync.config import load_config

    m = _uniform_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250731", 100_000)
    stage = bed.remote_base / f".{m.name}.model-sync-staging"
    seen = {}

    def progress(done, total):
        if "lapsed" not in seen and done:
            for owner in bed.remote_base.glob(f".{m.name}.model-sync-lock.owner-*"):
                owner.unlink()
                seen["lapsed"] = True
            time.sleep(1)  # the watchdog looks every 0.2 s
            seen["files"] = sum(1 for _ in stage.rglob("*"))

    with pytest.raises(Exception, match="lock .*lapsed"):
        api.push(str(m), "bed", load_config(), progress=progress)
    assert seen.get("lapsed")
    assert not (bed.remote_base / m.name).exists()
    # the server's tar was stopped: the stage no longer grows
    time.sleep(0.5)
    settled = sum(1 for _ in stage.rglob("*"))
    time.sleep(1)
    assert sum(1 for _ in stage.rglob("*")) == settled < tarpush.MIN_FILES + 100


def test_a_stalled_server_ends_the_push_after_io_timeout(bed, tmp_path):
    """If the server stops taking the stream (here its tar is frozen), the
    push gives up after io_timeout seconds without progress, as rsync's
    --timeout does, instead of holding the lock for ever."""
    import signal
    import time

    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import ModelSyncError
    from model_sync.transfer import TransferOptions

    m = _uniform_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250732", 100_000)
    frozen = []

    def progress(done, total):
        if not frozen and done:
            pids = subprocess.run(["pgrep", "-x", "-f", "tar -x -b 256 -i -p -f -"], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                os.kill(int(pid), signal.SIGSTOP)
            frozen.extend(pids)

    start = time.monotonic()
    try:
        with pytest.raises(ModelSyncError, match=r"no progress for 3s \(io_timeout\); nothing was published"):
            api.push(str(m), "bed", load_config(), opts=TransferOptions(io_timeout=3), progress=progress)
    finally:
        for pid in frozen:
            try:
                os.kill(int(pid), signal.SIGKILL)
                os.kill(int(pid), signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert frozen and time.monotonic() - start < 60
    assert not (bed.remote_base / m.name).exists()


def test_a_declined_offer_frees_the_lock_at_once(bed, tmp_path):
    """The inspection's session offers the stream for any new model; one that
    does not suit it (here: too few files) is declined, and the server drops
    its empty stage and the lock before the rsync path asks for the lock,
    even with --no-wait."""
    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250733", n=20)
    res, doc = push_json(str(m), "bed", "--no-wait")
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "rsync" and _state(bed.remote_base / m.name) == _state(m)
    assert not list(bed.remote_base.glob(f".{m.name}.model-sync-*ing"))
    assert not list(bed.remote_base.glob(f".{m.name}.model-sync-lock.owner-*"))


def test_no_offer_while_another_writer_holds_the_lock(bed, tmp_path):
    """The offer takes the lock only if it is free; otherwise the push queues
    for it as every push does, and goes over rsync once it has it."""
    import sys

    m = _small_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250734")
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from model_sync.config import load_config
from model_sync.hosts import open_host
host = open_host("bed", load_config())
with host.lock({str(bed.remote_base / f".{m.name}.model-sync-lock")!r}):
    print("held", flush=True)
    time.sleep(3)
"""], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline().strip() == "held"
        res, doc = push_json(str(m), "bed")
    finally:
        holder.wait(30)
    assert res.returncode == 0, res.stderr
    assert "waiting: another model-sync holds this destination" in res.stderr
    assert doc["via"] == "rsync" and _state(bed.remote_base / m.name) == _state(m)


def test_the_lock_lapses_when_the_stream_stops(bed, tmp_path, monkeypatch):
    """The session that holds the lock is the one the stream comes through:
    when nothing arrives for the lapse time (a stopped sender, a dead
    network), the server stops its tar and lets the lock go, so a re-run is
    not locked out; nothing is published, and the re-run resumes the stage."""
    import time

    from model_sync import api, hosts
    from model_sync.config import load_config
    from model_sync.errors import ModelSyncError
    from model_sync.transfer import TransferOptions

    monkeypatch.setattr(hosts, "MIN_STALE", 2)
    m = _uniform_model(tmp_path / "src" / "RTX3090_N2501_TOKENS_250735", 30_000)
    stalled = []

    def progress(done, total):
        if not stalled and done:
            stalled.append(done)
            time.sleep(5)  # silent for longer than the 2 s lapse time

    with pytest.raises(ModelSyncError, match="lock on the destination lapsed .the stream stopped for 2s"):
        api.push(str(m), "bed", load_config(), opts=TransferOptions(io_timeout=2), progress=progress)
    assert stalled and not (bed.remote_base / m.name).exists()
    assert not list(bed.remote_base.glob(f".{m.name}.model-sync-lock.owner-*"))
    res, doc = push_json(str(m), "bed", "--no-wait")  # the lock is free again
    assert res.returncode == 0, res.stderr
    assert doc["via"] == "rsync" and doc["verified"] is True
    assert _state(bed.remote_base / m.name) == _state(m)


@pytest.mark.parametrize("size, gzipped", [(300, True), (30_000, False)])
def test_only_a_stream_of_mostly_tar_headers_is_gzipped(bed, tmp_path, monkeypatch, size, gzipped):
    """Tiny files make a stream of mostly 512-byte headers and padding,
    which gzip shrinks for less CPU than carrying it costs; larger files
    (weights) go as they are."""
    from model_sync import api
    from model_sync.config import load_config

    seen = []
    real = tarpush.LocalStream.__init__

    def spy(self, *args):
        seen.append(args[-1])  # gzip
        real(self, *args)

    monkeypatch.setattr(tarpush.LocalStream, "__init__", spy)
    m = _uniform_model(tmp_path / "src" / f"RTX3090_N2501_TOKENS_2507{36 + gzipped}", size, tarpush.MIN_FILES + 10)
    result = api.push(str(m), "bed", load_config())
    assert result.via == "tar" and result.verified is True and seen == [gzipped]
    assert _state(bed.remote_base / m.name) == _state(m)


def test_files_gone_before_tar_reads_them_fail_at_once(bed, tmp_path, monkeypatch):
    """Files that go between the listing and the stream make tar complain,
    one line each; its complaints are read as they come (a full pipe would
    stop tar, and the push would wait out io_timeout blaming the network)
    and the first one is shown."""
    from model_sync import api
    from model_sync.config import load_config
    from model_sync.errors import ModelSyncError
    from model_sync.transfer import TransferOptions

    m = tmp_path / "src" / "RTX3090_N2501_TOKENS_250738"
    deep = m / ("a-rather-long-directory-name-" * 2)
    for i in range(tarpush.MIN_FILES + 1500):
        deep.mkdir(parents=True, exist_ok=True)
        (deep / f"tensor-shard-with-a-long-name-{i:05d}.bin").write_bytes(b"x")
    real = tarpush.LocalStream.__init__

    def vanish_first(self, path, tree, *rest):
        for p in sorted(tree)[:1500]:
            os.unlink(os.path.join(path, p))
        real(self, path, tree, *rest)

    monkeypatch.setattr(tarpush.LocalStream, "__init__", vanish_first)
    with pytest.raises(ModelSyncError, match=r"tar could not read .*tensor-shard-with-a-long-name-00000.bin.*"
                                             r"nothing was published"):
        api.push(str(m), "bed", load_config(), opts=TransferOptions(io_timeout=5))
    assert not (bed.remote_base / m.name).exists()


@pytest.mark.parametrize("keep_open", [True, False])
def test_the_offer_waits_for_a_slow_sender_and_lapses_for_a_silent_one(bed, tmp_path, monkeypatch, keep_open):
    """While this side still lists and plans, it keeps the offer open; a
    sender that went silent (stopped) for longer than the lapse time finds
    the offer gone, the lock free, and pushes over rsync."""
    import time

    from model_sync import api, hosts
    from model_sync.config import load_config
    from model_sync.transfer import TransferOptions

    monkeypatch.setattr(hosts, "MIN_STALE", 2)
    if not keep_open:
        monkeypatch.setattr(tarpush.Offer, "_keep_open", lambda self: None)
    real = tarpush.suits

    def slow(tree, opts):
        time.sleep(4)  # twice the lapse time
        return real(tree, opts)

    monkeypatch.setattr(tarpush, "suits", slow)
    m = _small_model(tmp_path / "src" / f"RTX3090_N2501_TOKENS_2507{40 + keep_open}")
    result = api.push(str(m), "bed", load_config(), opts=TransferOptions(io_timeout=2))
    assert result.published and result.verified is True
    assert result.via == ("tar" if keep_open else "rsync")
    assert _state(bed.remote_base / m.name) == _state(m)
    assert not list(bed.remote_base.glob(f".{m.name}.model-sync-lock.owner-*"))
