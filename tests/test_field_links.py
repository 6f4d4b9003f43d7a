"""Symlinks and destinations as real model folders have them (issue 14,
items 1, 2 and 6), against the real sshd: a Hugging Face cache snapshot
(every file a link into ../../blobs), pull into a folder that does not exist
yet, and links on the server (a `latest -> VERSION`, a link out of
model_base, given to the CLI and to the MCP server)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from conftest import run_cli

REV = "0123456789abcdef0123456789abcdef01234567"
OLD_REV = "fedcba9876543210fedcba9876543210fedcba98"


def cli_json(*args):
    res = run_cli("--json", *args)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def hf_repo(root: Path, name: str = "models--acme--tiny") -> Path:
    """A Hugging Face hub cache folder as huggingface_hub leaves it: the
    content in blobs/<hash>, each snapshot file a relative link into it,
    refs/main naming the current snapshot; an older snapshot beside it."""
    repo = root / "hub" / name
    blobs = repo / "blobs"
    blobs.mkdir(parents=True)
    contents = {"config.json": b'{"model_type": "tiny"}\n', "model.safetensors": os.urandom(200_000),
                "tokenizer/vocab.json": b'{"a": 1}\n'}
    for rel, data in contents.items():
        (blobs / f"blob-{len(data)}-{rel.replace('/', '-')}").write_bytes(data)
    for rev, which in ((REV, contents), (OLD_REV, {"config.json": b"old\n"})):
        snap = repo / "snapshots" / rev
        for rel, data in which.items():
            if rev == OLD_REV:
                (blobs / "old").write_bytes(data)
                blob = "old"
            else:
                blob = f"blob-{len(data)}-{rel.replace('/', '-')}"
            link = snap / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("../" * (rel.count("/") + 2) + "blobs/" + blob)
    (repo / "snapshots" / REV / "latest.json").symlink_to("config.json")  # inside: stays a link
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return repo


def real_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".model-sync.xxh128"}


HF_BYTES = len(b'{"model_type": "tiny"}\n') + 200_000 + len(b'{"a": 1}\n')


# -- item 1: symlinks in what is sent ------------------------------------------------------------
def test_hf_snapshot_push_sends_the_files_its_links_point_to(bed, tmp_path):
    snap = hf_repo(tmp_path) / "snapshots" / REV
    res, doc = cli_json("push", str(snap), "bed:tiny")
    assert res.returncode == 0, res.stderr
    dest = bed.remote_base / "tiny"
    got = real_files(dest)
    assert got["config.json"] == b'{"model_type": "tiny"}\n' and len(got["model.safetensors"]) == 200_000
    assert got["tokenizer/vocab.json"] == b'{"a": 1}\n'
    assert os.readlink(dest / "latest.json") == "config.json"  # a link inside the model stays one
    assert doc["files"] == 3 and doc["bytes"] == HF_BYTES and doc["verified"] is True
    # the manifest covers what was sent, checkable with the standard tool
    check = subprocess.run(["xxhsum", "-c", ".model-sync.xxh128"], cwd=dest, capture_output=True, text=True)
    assert check.returncode == 0 and "config.json: OK" in check.stdout, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 3  # (latest.json is a link: not hashed)

    res, doc = cli_json("push", str(snap), "bed:tiny")  # nothing changed: nothing to do
    assert res.returncode == 0 and doc["up_to_date"] is True, res.stdout + res.stderr
    res, doc = cli_json("verify", str(snap), "bed:tiny")
    assert res.returncode == 0 and doc["ok"] is True and doc["files"] == 3, res.stdout + res.stderr
    res, doc = cli_json("diff", str(snap), "bed:tiny", "--checksum")
    assert res.returncode == 0, res.stdout + res.stderr
    assert {e["status"] for e in doc["entries"]} == {"same"} and len(doc["entries"]) == 4


def test_push_of_the_hf_repo_folder_takes_the_snapshot_refs_main_names(bed, tmp_path):
    repo = hf_repo(tmp_path)
    res = run_cli("push", str(repo), "bed")
    assert res.returncode == 0, res.stderr
    assert f"Resolved models--acme--tiny refs/main -> snapshots/{REV}" in res.stdout, res.stdout
    dest = bed.remote_base / "models--acme--tiny"
    assert set(real_files(dest)) == {"config.json", "model.safetensors", "tokenizer/vocab.json"}
    assert (dest / "config.json").read_bytes() == b'{"model_type": "tiny"}\n'  # not the older snapshot
    res, doc = cli_json("push", str(repo), "bed")
    assert res.returncode == 0 and doc["up_to_date"] is True and doc["resolved"] == f"snapshots/{REV}"


def test_a_new_model_of_many_small_linked_files_goes_as_files(bed, tmp_path):
    """Many small files would go as one tar stream, which would carry the
    links themselves: with links to follow, rsync takes them."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snap"
    blobs.mkdir()
    snap.mkdir()
    for i in range(600):
        (blobs / f"b{i}").write_bytes(b"%d\n" % i)
        (snap / f"f{i}.json").symlink_to(f"../blobs/b{i}")
    res, doc = cli_json("push", str(snap), "bed:many")
    assert res.returncode == 0, res.stderr
    assert doc["files"] == 600 and doc["via"] == "rsync" and doc["verified"] is True
    got = real_files(bed.remote_base / "many")
    assert len(got) == 600 and got["f599.json"] == b"599\n"


def test_a_dangling_link_is_an_error_naming_it(bed, tmp_path):
    snap = hf_repo(tmp_path) / "snapshots" / REV
    (snap / "generation_config.json").symlink_to("../../blobs/never-downloaded")
    res = run_cli("push", str(snap), "bed:tiny")
    assert res.returncode == 2, res.stdout + res.stderr
    assert "generation_config.json -> ../../blobs/never-downloaded" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("model-sync: error: ")  # one line
    assert not (bed.remote_base / "tiny").exists()


def test_pull_sends_a_server_side_link_out_of_the_model_as_its_file(bed, tmp_path):
    """The same on the server: a model whose files link into a blob store
    beside it arrives as files, counted and verified; the same dangling rule."""
    hf_repo(bed.remote_base)
    res, doc = cli_json("pull", f"bed:hub/models--acme--tiny/snapshots/{REV}", str(tmp_path / "out") + "/")
    assert res.returncode == 0, res.stderr
    got = tmp_path / "out" / REV
    assert set(real_files(got)) == {"config.json", "model.safetensors", "tokenizer/vocab.json"}
    assert os.readlink(got / "latest.json") == "config.json"
    assert doc["files"] == 3 and doc["bytes"] == HF_BYTES and doc["verified"] is True
    (bed.remote_base / "hub" / "models--acme--tiny" / "blobs" / "old").unlink()
    res = run_cli("pull", f"bed:hub/models--acme--tiny/snapshots/{OLD_REV}", str(tmp_path / "out") + "/")
    assert res.returncode == 2 and "config.json -> ../../blobs/old" in res.stderr, res.stderr


def test_the_listing_agrees_with_what_rsync_sends(tmp_path):
    """Links of every shape: our source listing (manifest.list_tree) says
    exactly what model-sync's own rsync argv puts at the other end."""
    from model_sync.hosts import LocalHost
    from model_sync.manifest import list_tree
    from model_sync.rsync import RsyncOptions, build_rsync_argv

    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "blob").write_bytes(b"blob")
    (out / "d" / "f").write_bytes(b"in d")
    (out / "d" / "in").symlink_to("f")  # inside the followed directory: stays a link
    m = tmp_path / "m"
    (m / "a" / "b").mkdir(parents=True)
    (m / "a" / "x").write_bytes(b"x")
    links = {"top": "../out/blob", "a/l1": "../../out/blob", "a/b/l2": "../../../out/blob",
             "tricky": "a/../../out/blob", "absin": str(m / "a" / "x"), "extd": "../out/d",
             "a/b/safe": "../x", "cur": "a", "a/up": ".././a/x"}
    for rel, target in links.items():
        (m / rel).symlink_to(target)
    here = LocalHost.this_machine()
    listed = list_tree(here, str(m))
    argv = build_rsync_argv(str(m), str(tmp_path / "copy"), None, RsyncOptions())
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    copy = tmp_path / "copy"
    seen = {str(p.relative_to(copy)): p for p in copy.rglob("*") if p.name != ".model-sync.xxh128"}
    assert set(seen) == set(listed.files) | set(listed.dirs)
    for rel, p in seen.items():
        if rel in listed.dirs:
            assert p.is_dir() and not p.is_symlink(), rel
            continue
        f = listed.files[rel]
        if f.kind == "l":
            assert p.is_symlink() and os.readlink(p) == f.target, rel
        else:
            assert not p.is_symlink() and p.stat().st_size == f.size, rel
    assert {p for p, f in listed.files.items() if f.kind == "l"} == {"a/b/safe", "cur", "a/up", "extd/in"}
    assert listed.files["top"].size == 4 and listed.dangling == []


@pytest.mark.parametrize("path, target, unsafe", [
    ("config.json", "../../blobs/abc", True), ("a/b/l", "../../x", False), ("a/b/l", "../../../x", True),
    ("l", "/abs", True), ("l", "", True), ("l", "a/x", False), ("a/l", "..", False), ("l", "..", True),
    ("a/l", ".././x", False), ("a/l", "..//x", False), ("a/b/l", "..//../x", False),
    # rsync 3.4.0 on (CVE-2024-12088): a '..' after the leading ones, or at the end after a name
    ("a/l", "./../x", True), ("a/b/l", "c/../../x", True), ("a/b/l", "c/..", True),
])
def test_unsafe_link_is_rsyncs_rule(path, target, unsafe):
    from model_sync.manifest import unsafe_link

    assert unsafe_link(path, target) is unsafe


# -- item 2: where a pull lands ------------------------------------------------------------------
@pytest.fixture
def served(bed, tmp_path):
    name = "RTX3090_N2501_ASR_250820"
    src = tmp_path / "src" / name
    (src / "1").mkdir(parents=True)
    (src / "config.pbtxt").write_bytes(b"name: asr\n")
    (src / "1" / "model.onnx").write_bytes(os.urandom(50_000))
    res = run_cli("push", str(src), "bed")
    assert res.returncode == 0, res.stderr
    return name, src


@pytest.mark.parametrize("spelling", ["models/", "models"])
def test_pull_into_a_folder_that_does_not_exist_lands_in_folder_slash_model(bed, tmp_path, served, spelling,
                                                                           monkeypatch):
    name, src = served
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # the same command twice: the same place, never a model inside a model
        res = run_cli("pull", f"bed:{name}", spelling)
        assert res.returncode == 0, res.stderr
        assert real_files(tmp_path / "models" / name) == real_files(src)
        assert [e for e in os.listdir(tmp_path / "models") if not e.startswith(".")] == [name]
        assert not (tmp_path / "models" / name / name).exists()
    # a folder that exists receives FOLDER/MODEL too
    (tmp_path / "there").mkdir()
    res = run_cli("pull", f"bed:{name}", "there")
    assert res.returncode == 0, res.stderr
    assert real_files(tmp_path / "there" / name) == real_files(src)


def test_pull_to_the_models_own_path_updates_it(bed, tmp_path, served):
    name, src = served
    for _ in range(2):
        res = run_cli("pull", f"bed:{name}", str(tmp_path / "models" / name))
        assert res.returncode == 0, res.stderr
        assert real_files(tmp_path / "models" / name) == real_files(src)
    # a directory of that name that is not a model of ours is left alone, and the message says how to pull into it
    (tmp_path / "work" / name).mkdir(parents=True)
    (tmp_path / "work" / name / "notes.txt").write_text("mine")
    res = run_cli("pull", f"bed:{name}", str(tmp_path / "work" / name))
    assert res.returncode == 2 and "end the path with a slash" in res.stderr, res.stderr
    assert os.listdir(tmp_path / "work" / name) == ["notes.txt"]
    res = run_cli("pull", f"bed:{name}", str(tmp_path / "work" / name) + "/")
    assert res.returncode == 0, res.stderr
    assert real_files(tmp_path / "work" / name / name) == real_files(src)


# -- item 6: links on the server -----------------------------------------------------------------
def test_pull_of_a_server_link_to_a_version_sends_and_counts_its_files(bed, tmp_path, served):
    name, src = served
    (bed.remote_base / "latest").symlink_to(name)  # a link to the published model (itself our link)
    res, doc = cli_json("pull", "bed:latest", str(tmp_path / "out") + "/")
    assert res.returncode == 0, res.stderr
    assert real_files(tmp_path / "out" / "latest") == real_files(src)
    assert doc["files"] == 2 and doc["bytes"] == sum(len(v) for v in real_files(src).values())
    assert doc["verified"] is True
    assert (tmp_path / "out" / "latest" / ".model-sync.xxh128").read_text().count("\n") == 2
    # the model's own published link still works for pull, diff and verify
    res = run_cli("pull", f"bed:{name}", str(tmp_path / "out") + "/")
    assert res.returncode == 0, res.stderr
    res, doc = cli_json("diff", str(src), f"bed:{name}")
    assert res.returncode == 0 and {e["status"] for e in doc["entries"]} == {"same"}, res.stdout + res.stderr
    res, doc = cli_json("verify", str(src), f"bed:{name}")
    assert res.returncode == 0 and doc["ok"] is True, res.stdout + res.stderr


@pytest.fixture
def shared(bed, tmp_path):
    """`shared` in model_base: a link to a model directory outside it."""
    outside = tmp_path / "elsewhere" / "shared-model"
    outside.mkdir(parents=True)
    (outside / "secret.bin").write_bytes(b"not under model_base")
    (bed.remote_base / "shared").symlink_to(outside)
    (bed.remote_base / "sub").symlink_to(outside.parent)
    return outside


def test_a_relative_path_that_leaves_model_base_through_a_link_is_refused(bed, tmp_path, shared):
    out = tmp_path / "out"
    model = tmp_path / "m"
    model.mkdir()
    (model / "w.bin").write_bytes(b"w")
    for args in (("pull", "bed:shared", str(out) + "/"), ("pull", "bed:sub/shared-model", str(out) + "/"),
                 ("diff", str(model), "bed:shared"), ("verify", str(model), "bed:shared")):
        res = run_cli(*args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert "leads outside the server's model_base" in res.stderr and str(shared) in res.stderr, res.stderr
    assert not out.exists()
    res = run_cli("push", str(model), "bed:sub/new-model")  # a push would write there
    assert res.returncode == 2 and "leads outside" in res.stderr, res.stderr
    assert sorted(os.listdir(shared.parent)) == ["shared-model"]
    # an absolute path is taken as given: the user meant it
    res = run_cli("pull", f"bed:{bed.remote_base}/shared", str(out) + "/")
    assert res.returncode == 0, res.stderr
    assert (out / "shared" / "secret.bin").read_bytes() == b"not under model_base"


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_mcp_pull_of_a_link_out_of_model_base_is_refused(bed, shared):
    (bed.local_base / "x").mkdir()
    env = {"HOME": str(bed.home), "MODEL_SYNC_CONFIG": str(bed.config)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "model_sync.mcp_server"], env=env)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            r = await session.call_tool("pull", {"server": "bed", "remote_path": "shared", "local_dir": "got"})
            assert r.is_error, r.content
            assert "leads outside the server's model_base" in r.content[0].text, r.content
            r = await session.call_tool("diff", {"model": "x", "server": "bed", "remote_path": "shared"})
            assert r.is_error and "leads outside" in r.content[0].text, r.content
    assert not (bed.local_base / "got" / "shared").exists()
    assert not any((bed.local_base / "got").rglob("secret.bin"))
