"""A push (or pull) with nothing to do answers from the one inspection: no
lock, no staging copy, no rsync, nothing touched. Anything rsync -a would
change (mode, an empty directory, a symlink) or a manifest that lacks a file
still takes the full path."""

import os

from test_transfer import make_model, push_json, tree


def _model(tmp_path):
    m = make_model(tmp_path / "src" / "RTX3090_N2501_NOOP_250715", {
        "config.json": b"{}\n", "1/model.onnx": os.urandom(100_000), "tok/vocab.txt": b"a\nb\n"})
    (m / "empty").mkdir()
    os.symlink("1/model.onnx", m / "latest.onnx")
    return m


def test_second_push_touches_nothing(bed, tmp_path):
    m = _model(tmp_path)
    res, first = push_json(str(m), "bed")
    assert res.returncode == 0 and first["up_to_date"] is False and first["published"] is True, res.stderr
    dest = bed.remote_base / m.name
    before = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in [dest, *dest.rglob("*")]}
    res, doc = push_json(str(m), "bed")
    assert res.returncode == 0, res.stderr
    assert doc["up_to_date"] is True and doc["files"] == 0 and doc["published"] is False
    assert doc["verified"] is None  # nothing was sent, so nothing was hashed
    after = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in [dest, *dest.rglob("*")]}
    assert after == before
    assert not (bed.remote_base / f".{m.name}.model-sync-staging").exists()


def test_changes_rsync_would_make_take_the_full_path(bed, tmp_path):
    m = _model(tmp_path)
    assert push_json(str(m), "bed")[0].returncode == 0
    dest = bed.remote_base / m.name
    changes = [
        lambda: os.chmod(m / "config.json", 0o600),                      # mode only
        lambda: (m / "new-empty").mkdir(),                                # an empty directory
        lambda: (os.unlink(m / "latest.onnx"), os.symlink("config.json", m / "latest.onnx")),  # link target
        lambda: os.chmod(m / "tok", 0o700),                              # a directory's mode
    ]
    for change in changes:
        change()
        res, doc = push_json(str(m), "bed")
        assert res.returncode == 0, res.stderr
        assert doc["up_to_date"] is False and doc["published"] is True
    assert (dest / "config.json").stat().st_mode & 0o777 == 0o600
    assert (dest / "new-empty").is_dir()
    assert os.readlink(dest / "latest.onnx") == "config.json"
    assert (dest / "tok").stat().st_mode & 0o777 == 0o700
    assert push_json(str(m), "bed")[1]["up_to_date"] is True


def test_incomplete_manifest_or_delete_take_the_full_path(bed, tmp_path):
    m = _model(tmp_path)
    assert push_json(str(m), "bed")[0].returncode == 0
    dest = bed.remote_base / m.name
    manifest = dest / ".model-sync.xxh128"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(ln for ln in lines if "vocab.txt" not in ln))
    res, doc = push_json(str(m), "bed")
    assert res.returncode == 0 and doc["up_to_date"] is False, res.stderr
    assert "vocab.txt" in manifest.read_text()  # completed
    (dest / "stray.bin").write_bytes(b"x")
    res, doc = push_json(str(m), "bed")
    assert doc["up_to_date"] is True  # without --delete, an extra file is fine
    res, doc = push_json("--delete", str(m), "bed")
    assert res.returncode == 2 and "stray.bin" in res.stderr  # asks, as before
    assert tree(dest)["stray.bin"] == b"x"
