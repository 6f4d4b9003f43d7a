"""diff, list, versions, selectors, prune and push's name check: pure units,
then the real sshd (`bed`: same machine, reached over SSH)."""

import json
import os
import time
import subprocess
from pathlib import Path

import pytest

from conftest import run_cli
from model_sync import inventory, render
from model_sync.hosts import LocalHost
from model_sync.inventory import (DiffResult, DiffSide, ModelEntry, SideTree, _compare, _sync_command,
                                  check_name, list_tree_with_manifest, name_matches, sort_models)
from model_sync.manifest import FileEntry, manifest_text

PATTERN = "{GPU}_{DATE}_{MODEL}_{VERSION}"


def make(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def cli_json(*args):
    res = run_cli("--json", *args)
    return res, (json.loads(res.stdout) if res.stdout.strip() else None)


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--apparent-size", "-B1", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(out.split("\t")[0])


def same_mtime_edit(path: Path, flip_at: int = 10) -> None:
    """Change one byte, keep size and mtime: only hashing can tell."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[flip_at] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# -- pure units ---------------------------------------------------------------------
@pytest.mark.parametrize("name,pattern,hit", [
    ("RTX3090_N2501_ASR_250820", "asr", True),
    ("RTX3090_N2501_ASR_250820", "ASR", True),
    ("rtx3090_n2501_asr_250820", "Asr_25", True),
    ("RTX3090_N2501_LANGDETECTOR_250715", "asr", False),
    ("RTX3090_N2501_ASR_250820", "rtx3090_*_asr_*", True),
    ("A100_N2501_ASR_250820", "rtx3090_*", False),
    ("RTX3090_N2501_ASR_250820", "*_25082?", True),
    ("RTX3090_N2501_ASR_250820", "asr*", False),  # a glob matches the whole name
    ("RTX3090_N2501_ASR_250820", "[ar]tx3090_*", True),
    ("anything", None, True),
])
def test_filter_is_case_insensitive_substring_or_glob(name, pattern, hit):
    assert name_matches(name, pattern) is hit


def entry(name, size=0, modified=0):
    from model_sync.naming import parse_name

    parsed = parse_name(name, PATTERN)
    return ModelEntry(name, "/m/" + name, size, modified, parsed is not None, dict(parsed.fields) if parsed else {})


def test_sorts_are_natural_and_documented_directions():
    names = ["RTX3090_N2501_ASR_v9", "RTX3090_N2501_ASR_v10", "odd dir", "A100_N2501_ASR_v2",
             "RTX3090_N2501_LANGDETECTOR_MMS_251030", "RTX3090_N2501_asr_v11"]
    entries = [entry(n, size=i * 10, modified=100 - i) for i, n in enumerate(names)]
    by_version = [e.name for e in sort_models(entries, "version", PATTERN)]
    assert by_version == ["A100_N2501_ASR_v2", "RTX3090_N2501_asr_v11", "RTX3090_N2501_ASR_v10",
                          "RTX3090_N2501_ASR_v9", "RTX3090_N2501_LANGDETECTOR_MMS_251030", "odd dir"]
    assert [e.name for e in sort_models(entries, "name", PATTERN)][:3] == [
        "A100_N2501_ASR_v2", "odd dir", "RTX3090_N2501_ASR_v9"]
    assert [e.name for e in sort_models(entries, "size", PATTERN)][0] == "RTX3090_N2501_asr_v11"
    assert [e.name for e in sort_models(entries, "modified", PATTERN)][0] == "RTX3090_N2501_ASR_v9"


def tree(files: dict[str, FileEntry], manifest=None) -> SideTree:
    return SideTree("/x", True, files=files, is_dir=True, manifest=manifest or {})


def test_compare_statuses_quick_and_checksum():
    f = lambda p, size=5, mtime=100, kind="f", target="": FileEntry(p, size, mtime, kind, target)  # noqa: E731
    left = tree({"same": f("same"), "new": f("new"), "touched": f("touched", mtime=200),
                 "bigger": f("bigger", size=6), "link": f("link", kind="l", target="a"),
                 "relink": f("relink", kind="l", target="a"), "kind": f("kind")})
    right = tree({"same": f("same"), "gone": f("gone"), "touched": f("touched"), "bigger": f("bigger"),
                  "link": f("link", kind="l", target="a"), "relink": f("relink", kind="l", target="b"),
                  "kind": f("kind", kind="l", target="kind")})
    quick = {e.path: e.status for e in _compare(left, right, None)}
    assert quick == {"same": "same", "new": "new", "gone": "remote only", "touched": "modified",
                     "bigger": "modified", "link": "same", "relink": "modified", "kind": "modified"}
    hashes = ({"same": "aa", "touched": "bb"}, {"same": "aa", "touched": "bb"})
    content = {e.path: e.status for e in _compare(left, right, hashes)}
    assert content["touched"] == "same"  # only the mtime differs: same contents
    assert content["bigger"] == "modified" and content["link"] == "same" and content["relink"] == "modified"
    hashes[1]["same"] = "cc"
    assert {e.path: e.status for e in _compare(left, right, hashes)}["same"] == "modified"


def test_tree_listing_reads_the_manifest_in_the_same_round_trip(tmp_path):
    root = make(tmp_path / "m", {"a.bin": b"a" * 10, "sub/b.bin": b"b", "odd\nname": b"x",
                                 ".rsync-partial/p": b"partial"})
    (root / "link").symlink_to("a.bin")
    (root / ".model-sync.xxh128").write_text(manifest_text({"a.bin": "0" * 32, "sub/b.bin": "1" * 32}))
    t = list_tree_with_manifest(LocalHost.this_machine(), str(root))
    assert set(t.files) == {"a.bin", "sub/b.bin", "odd\nname", "link"}
    assert t.files["link"].kind == "l" and t.files["link"].target == "a.bin"
    assert t.manifest == {"a.bin": "0" * 32, "sub/b.bin": "1" * 32}
    missing = list_tree_with_manifest(LocalHost.this_machine(), str(tmp_path / "nope"))
    assert not missing.exists


def side(spec, server, path, exists=True):
    return DiffSide(spec, server, path, "Remote" if server else "Local", exists=exists)


def test_sync_command_says_how_to_make_the_right_side_like_the_left():
    def cmd(left, right):
        r = DiffResult(left, right, False, None, [inventory.DiffEntry("x", "new", 1, None)], 0.1)
        return _sync_command(r)

    assert cmd(side("./lang detector", None, "/h/lang detector"), side("reaper", "reaper", "/m/lang detector")) \
        == "model-sync push './lang detector' reaper"
    assert cmd(side("reaper:M", "reaper", "/m/M"), side("./out", None, "/h/out", exists=False)) \
        == "model-sync pull reaper:M ./out"
    assert cmd(side("reaper:M", "reaper", "/m/M"), side("./models/M", None, "/h/models/M")) \
        == "model-sync pull reaper:M /h/models"
    assert cmd(side("reaper:M", "reaper", "/m/M"), side("./other", None, "/h/other")) is None
    assert cmd(side("reaper:M", "reaper", "/m/M"), side("doomfist", "doomfist", "/d/M")) is None


def test_script_slots_are_filled_in_one_pass():
    assert inventory._fill("a=@A@ b=@B@", A="'@B@'", B="'x'") == "a='@B@' b='x'"


def test_name_check_names_the_pattern_and_an_example():
    bad = check_name("langdetector-v1", PATTERN)
    assert not bad.matches
    assert PATTERN in bad.message and "RTX3090_N2501_LANGDETECTOR_250715" in bad.message
    assert check_name("RTX3090_N2501_LANGDETECTOR_MMS_251030", PATTERN).matches


# -- the real sshd ---------------------------------------------------------------------
MODELS = {
    "RTX3090_N2501_LANGDETECTOR_250715": {"config.pbtxt": b"lang\n", "1/model.onnx": b"x" * 3000},
    "RTX3090_N2501_LANGDETECTOR_MMS_251030": {"w.bin": b"m" * 5000},
    "RTX3090_N2501_ASR_250715": {"w.bin": b"a" * 1000},
    "RTX3090_N2501_ASR_250820": {"w.bin": b"b" * 2000, "sub/x": b"y"},
    "rtx3090_n2501_Asr_v9": {"w.bin": b"c" * 10},
    "rtx3090_n2501_Asr_v10": {"w.bin": b"d" * 20},
    "notes and stuff": {"readme.txt": b"not a model"},
    "bad$(touch PWNED)name": {"f": b"z"},
}


@pytest.fixture
def server(bed, tmp_path):
    """A model_base with tricky names, and things list must skip."""
    for name, files in MODELS.items():
        make(bed.remote_base / name, files)
    make(bed.remote_base / ".RTX3090_N2501_ASR_250901.model-sync-staging", {"w.bin": b"half"})
    (bed.remote_base / ".RTX3090_N2501_ASR_250820.model-sync-lock").write_bytes(b"")
    (bed.remote_base / "RTX3090_N2501_TOPFILE_250101").write_bytes(b"a file, not a model")
    outside = make(tmp_path / "elsewhere" / "RTX3090_N2501_ASR_299999", {"w.bin": b"outside"})
    (bed.remote_base / "RTX3090_N2501_ASR_299999").symlink_to(outside)
    return bed


def test_list_rows_fields_and_totals_equal_du(server):
    res, doc = cli_json("list", "bed")
    assert res.returncode == 0, res.stderr
    rows = {m["name"]: m for m in doc["models"]}
    assert set(rows) == set(MODELS)  # no hidden entries, top-level files or symlinks
    for name in MODELS:
        assert rows[name]["bytes"] == du(server.remote_base / name), name
        assert rows[name]["path"] == str(server.remote_base / name)
    assert doc["total_bytes"] == sum(du(server.remote_base / n) for n in MODELS)
    assert doc["count"] == len(MODELS)
    mms = rows["RTX3090_N2501_LANGDETECTOR_MMS_251030"]
    assert mms["matches"] and mms["fields"] == {"GPU": "RTX3090", "DATE": "N2501", "MODEL": "LANGDETECTOR_MMS",
                                                "VERSION": "251030"}
    assert rows["rtx3090_n2501_Asr_v10"]["fields"]["MODEL"] == "Asr"
    assert not rows["notes and stuff"]["matches"] and rows["notes and stuff"]["fields"]["MODEL"] == ""
    newest = max(p.stat().st_mtime for p in (server.remote_base / "RTX3090_N2501_ASR_250820").rglob("*"))
    assert abs(rows["RTX3090_N2501_ASR_250820"]["modified"] - newest) < 1.01
    assert not list(server.remote_base.parent.rglob("PWNED"))

    md = run_cli("list", "bed")
    assert md.returncode == 0, md.stderr
    assert "## Models on bed" in md.stdout
    assert "| Model | Size | Modified | GPU | DATE | MODEL | VERSION |" in md.stdout
    mms_size = render.human_size(du(server.remote_base / "RTX3090_N2501_LANGDETECTOR_MMS_251030"))
    assert f"| RTX3090_N2501_LANGDETECTOR_MMS_251030 | {mms_size} |" in md.stdout
    assert "| RTX3090 | N2501 | LANGDETECTOR_MMS | 251030 |" in md.stdout
    assert f"Total: {len(MODELS)} models, {render.human_size(doc['total_bytes'])}" in md.stdout


def test_list_filter_substring_and_glob(server):
    _, doc = cli_json("list", "bed", "--filter", "asr")
    assert sorted(m["name"] for m in doc["models"]) == sorted(
        ["RTX3090_N2501_ASR_250715", "RTX3090_N2501_ASR_250820", "rtx3090_n2501_Asr_v9", "rtx3090_n2501_Asr_v10"])
    _, doc = cli_json("list", "bed", "--filter", "RTX3090_*_asr_2508*")
    assert [m["name"] for m in doc["models"]] == ["RTX3090_N2501_ASR_250820"]
    res = run_cli("list", "bed", "--filter", "nothing-like-this")
    assert res.returncode == 0 and "Total: 0 models, 0B" in res.stdout


def test_list_sort_version_is_natural(server):
    _, doc = cli_json("list", "bed", "--filter", "asr", "--sort", "version")
    assert [m["name"] for m in doc["models"]] == [
        "RTX3090_N2501_ASR_250820", "RTX3090_N2501_ASR_250715", "rtx3090_n2501_Asr_v10", "rtx3090_n2501_Asr_v9"]
    _, doc = cli_json("list", "bed", "--sort", "size")
    sizes = [m["bytes"] for m in doc["models"]]
    assert sizes == sorted(sizes, reverse=True)
    assert doc["models"][0]["name"] == max(MODELS, key=lambda n: du(server.remote_base / n))


def test_list_missing_model_base_and_names_with_newlines(bed, tmp_path):
    make(bed.remote_base / "RTX3090_N2501_NEW\nLINE_250101", {"f": b"1"})
    _, doc = cli_json("list", "bed")
    assert [m["name"] for m in doc["models"]] == ["RTX3090_N2501_NEW\nLINE_250101"]
    md = run_cli("list", "bed").stdout
    assert "RTX3090_N2501_NEW\\nLINE_250101" in md  # escaped: one table row
    bed.write_config(bed.config.read_text().replace(str(bed.local_base), str(tmp_path / "no such base")))
    res, doc = cli_json("list", "local")
    assert res.returncode == 0 and doc["exists"] is False and doc["models"] == []


def test_versions_grouped_newest_first_latest_marked(server):
    res, doc = cli_json("versions", "bed")
    assert res.returncode == 0, res.stderr
    groups = {(g["model"], g["gpu"]): g for g in doc["groups"]}
    asr = groups[("ASR", "RTX3090")]  # ASR and Asr are one model
    assert [v["name"] for v in asr["versions"]] == ["RTX3090_N2501_ASR_250820", "RTX3090_N2501_ASR_250715",
                                                    "rtx3090_n2501_Asr_v10", "rtx3090_n2501_Asr_v9"]
    assert [v["latest"] for v in asr["versions"]] == [True, False, False, False]
    assert asr["latest"] == "RTX3090_N2501_ASR_250820"
    assert ("LANGDETECTOR_MMS", "RTX3090") in groups and ("LANGDETECTOR", "RTX3090") in groups
    assert "notes and stuff" in doc["unmatched"]
    _, doc = cli_json("versions", "bed", "--model", "langdetector")
    assert [g["model"] for g in doc["groups"]] == ["LANGDETECTOR"]
    md = run_cli("versions", "bed", "--model", "asr").stdout
    assert "| ASR | RTX3090 | 250820 | N2501 | RTX3090_N2501_ASR_250820 |" in md and "| latest |" in md
    bad = run_cli("versions", "bed", "--model", "TTS")
    assert bad.returncode == 2 and "no model 'TTS'" in bad.stderr and "ASR" in bad.stderr


@pytest.fixture
def two_gpus(bed):
    for name, data in {"RTX3090_N2501_ASR_250715": b"old", "RTX3090_N2501_ASR_250820": b"new 3090",
                       "A100_N2502_ASR_250901": b"new a100", "A100_N2502_ASR_250820": b"a100 0820",
                       "A100_N2502_TTS_250101": b"tts"}.items():
        make(bed.remote_base / name, {"w.bin": data})
    return bed


def test_pull_latest_picks_the_newest_and_says_so(bed, tmp_path):
    for name in ("RTX3090_N2501_ASR_250715", "RTX3090_N2501_ASR_250820", "RTX3090_N2501_ASR_v9"):
        make(bed.remote_base / name, {"w.bin": name.encode()})
    out = tmp_path / "models"
    out.mkdir()
    res = run_cli("--json", "pull", "bed:asr@latest", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert "Resolved asr@latest -> RTX3090_N2501_ASR_250820" in res.stderr
    assert doc["selector"] == "asr@latest" and doc["resolved"] == "RTX3090_N2501_ASR_250820"
    assert doc["source"] == f"bed:{bed.remote_base / 'RTX3090_N2501_ASR_250820'}"
    assert (out / "RTX3090_N2501_ASR_250820" / "w.bin").read_bytes() == b"RTX3090_N2501_ASR_250820"
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == ["RTX3090_N2501_ASR_250820"]
    md = run_cli("pull", "bed:ASR@250715", str(out))
    assert md.returncode == 0, md.stderr
    assert "Resolved ASR@250715 -> RTX3090_N2501_ASR_250715" in md.stdout
    assert (out / "RTX3090_N2501_ASR_250715" / "w.bin").exists()
    for name in ("A100_N2502_ASR_1.9", "A100_N2502_ASR_1.10"):  # a selector below model_base, too
        make(bed.remote_base / "team" / name, {"w.bin": name.encode()})
    res, doc = cli_json("pull", "bed:team/ASR@latest", str(out))
    assert res.returncode == 0, res.stderr
    assert doc["resolved"] == "team/A100_N2502_ASR_1.10" and (out / "A100_N2502_ASR_1.10").is_dir()


def test_ambiguous_latest_lists_candidates_and_gpu_fixes_it(two_gpus, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    res = run_cli("pull", "bed:ASR@latest", str(out))
    assert res.returncode == 2
    assert "ambiguous" in res.stderr and "A100_N2502_ASR_250901" in res.stderr \
        and "RTX3090_N2501_ASR_250820" in res.stderr and "--gpu" in res.stderr
    assert [line for line in res.stderr.splitlines() if "error" in line] == [res.stderr.splitlines()[-1]]
    assert list(out.iterdir()) == []
    res, doc = cli_json("pull", "bed:ASR@latest", str(out), "--gpu", "a100")
    assert res.returncode == 0, res.stderr
    assert doc["resolved"] == "A100_N2502_ASR_250901"
    assert (out / "A100_N2502_ASR_250901" / "w.bin").read_bytes() == b"new a100"
    res = run_cli("pull", "bed:ASR@250820", str(out))  # one version on two GPUs
    assert res.returncode == 2 and "--gpu" in res.stderr
    res, doc = cli_json("pull", "bed:ASR@250820", str(out), "--gpu", "RTX3090")
    assert res.returncode == 0 and doc["resolved"] == "RTX3090_N2501_ASR_250820"
    res = run_cli("pull", "bed:ASR@latest", str(out), "--gpu", "H100")
    assert res.returncode == 2 and "no version on GPU 'H100'" in res.stderr and "A100" in res.stderr
    res = run_cli("pull", "bed:WHISPER@latest", str(out))
    assert res.returncode == 2 and "no model 'WHISPER'" in res.stderr and "versions bed" in res.stderr
    res = run_cli("pull", "bed:A100_N2502_TTS_250101", str(out), "--gpu", "A100")
    assert res.returncode == 2 and "--gpu only narrows" in res.stderr


def test_verify_and_diff_accept_selectors(two_gpus, tmp_path):
    out = tmp_path / "models"
    out.mkdir()
    assert run_cli("pull", "bed:ASR@latest", str(out), "--gpu", "A100").returncode == 0
    local = out / "A100_N2502_ASR_250901"
    res, doc = cli_json("verify", str(local), "bed:ASR@latest", "--gpu", "A100")
    assert res.returncode == 0, res.stderr
    assert doc["ok"] and doc["resolved"] == "A100_N2502_ASR_250901"
    res, doc = cli_json("diff", "bed:asr@latest", str(local), "--gpu", "A100")
    assert res.returncode == 0, res.stderr
    assert doc["left"]["resolved"] == "A100_N2502_ASR_250901" and doc["identical"] is True
    res = run_cli("diff", str(local), "bed", "--gpu", "A100")
    assert res.returncode == 2 and "--gpu only narrows" in res.stderr


@pytest.fixture
def pushed(bed, tmp_path):
    """A local model and its published copy on bed (with its manifest)."""
    model = make(tmp_path / "src" / "langdetector", {
        "config.pbtxt": b"name: langdetector\n" * 100, "1/model.onnx": os.urandom(45_000),
        "1/model.plan": os.urandom(20_000)})
    old = time.time() - 60  # files older than the manifest the push writes, whatever second it is
    for p in model.rglob("*"):
        os.utime(p, (old, old))
    res = run_cli("push", str(model), "bed")
    assert res.returncode == 0, res.stderr
    assert (bed.remote_base / "langdetector" / ".model-sync.xxh128").exists()
    return model


def test_diff_identical_exits_0(bed, pushed):
    res = run_cli("diff", str(pushed), "bed")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "## Sync Status: langdetector" in res.stdout
    assert "| File | Local | Remote | Status |" in res.stdout
    assert "| config.pbtxt | 1.9KB | 1.9KB | same |" in res.stdout
    assert "- Same: 3 files" in res.stdout and "Identical: nothing to sync" in res.stdout
    res, doc = cli_json("diff", str(pushed), "bed", "--checksum")
    assert res.returncode == 0, res.stderr
    # every file is read on both sides: the server's manifest is not taken for its files
    assert doc["right"]["hashed"] == 3 and doc["left"]["hashed"] == 3
    assert doc["algorithm"] == "xxh3-128"


def test_diff_statuses_summary_and_sync_command(bed, pushed):
    (pushed / "1" / "model.plan").unlink()
    (pushed / "1" / "new.bin").write_bytes(b"n" * 112)
    (pushed / "config.pbtxt").write_bytes(b"name: langdetector-v2\n")
    (bed.remote_base / "langdetector" / "extra.txt").write_bytes(b"only there")
    res = run_cli("diff", str(pushed), "bed")
    assert res.returncode == 1, res.stderr
    out = res.stdout
    for row in ("| 1/model.onnx | 45.0KB | 45.0KB | same |", "| 1/new.bin | 112B | - | new |",
                "| 1/model.plan | - | 20.0KB | remote only |", "| config.pbtxt | 22B | 1.9KB | modified |",
                "| extra.txt | - | 10B | remote only |"):
        assert row in out, out
    for line in ("- Same: 1 file", "- New (local): 1 file", "- Modified: 1 file", "- Remote only: 2 files",
                 f"Run 'model-sync push {pushed} bed' to sync", "add --delete"):
        assert line in out, out
    res, doc = cli_json("diff", str(pushed), "bed")
    assert res.returncode == 1
    assert (doc["same"], doc["new"], doc["modified"], doc["remote_only"]) == (1, 1, 1, 2)
    assert {e["path"]: e["status"] for e in doc["entries"]} == {
        "1/model.onnx": "same", "1/new.bin": "new", "1/model.plan": "remote only",
        "config.pbtxt": "modified", "extra.txt": "remote only"}
    assert doc["sync_command"] == f"model-sync push {pushed} bed"


def test_checksum_catches_a_change_quick_mode_misses(bed, pushed):
    same_mtime_edit(pushed / "1" / "model.onnx")
    quick = run_cli("diff", str(pushed), "bed")
    assert quick.returncode == 0, quick.stdout
    res, doc = cli_json("diff", str(pushed), "bed", "--checksum")
    assert res.returncode == 1, res.stderr
    assert {e["path"]: e["status"] for e in doc["entries"]} == {
        "1/model.onnx": "modified", "1/model.plan": "same", "config.pbtxt": "same"}


def test_checksum_reads_files_whatever_their_time(bed, pushed):
    remote = bed.remote_base / "langdetector" / "1" / "model.plan"
    st = remote.stat()
    os.utime(remote, (st.st_atime + 3600, st.st_mtime + 3600))  # newer than the manifest, same bytes
    quick = cli_json("diff", str(pushed), "bed")[1]
    assert {e["path"]: e["status"] for e in quick["entries"]}["1/model.plan"] == "modified"
    res, doc = cli_json("diff", str(pushed), "bed", "--checksum")
    assert res.returncode == 0, res.stdout
    assert doc["right"]["hashed"] == 3
    # now change it for real, keeping size and (new) mtime
    same_mtime_edit(remote)
    res, doc = cli_json("diff", str(pushed), "bed", "--checksum")
    assert res.returncode == 1
    assert [e["path"] for e in doc["entries"] if e["status"] == "modified"] == ["1/model.plan"]


def test_diff_two_servers(bed, pushed):
    assert run_cli("push", str(pushed), "local").returncode == 0
    res = run_cli("diff", "bed:langdetector", "local:langdetector")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "| File | bed | local | Status |" in res.stdout
    res, doc = cli_json("diff", "bed:langdetector", "local")  # bare alias: the same name there
    assert res.returncode == 0 and doc["right"]["path"] == str(bed.local_base / "langdetector")
    (bed.local_base / "langdetector" / "config.pbtxt").write_bytes(b"changed on local\n")
    (bed.remote_base / "langdetector" / "only-on-bed").write_bytes(b"x")
    res, doc = cli_json("diff", "bed:langdetector", "local:langdetector", "--checksum")
    assert res.returncode == 1
    assert {e["path"]: e["status"] for e in doc["entries"] if e["status"] != "same"} == {
        "config.pbtxt": "modified", "only-on-bed": "new"}
    assert doc["sync_command"] is None
    md = run_cli("diff", "bed:langdetector", "local:langdetector").stdout
    assert "- New (bed): 1 file" in md and "- Remote only (local): 0 files" in md


def test_diff_missing_sides_and_errors(bed, pushed, tmp_path):
    res, doc = cli_json("diff", str(pushed), "bed:not-there-yet")
    assert res.returncode == 1 and doc["new"] == 3 and doc["right"]["exists"] is False
    res = run_cli("diff", str(tmp_path / "nope"), "bed")
    assert res.returncode == 2 and "does not exist" in res.stderr
    for spec in ("reapr", "reapr:langdetector"):
        res = run_cli("diff", str(pushed), spec)
        assert res.returncode == 2 and "unknown server 'reapr'" in res.stderr and "bed" in res.stderr
    res = run_cli("diff", str(pushed), "bed:../outside")
    assert res.returncode == 2 and "leaves the server's model_base" in res.stderr
    res = run_cli("diff", str(pushed), "down")
    assert res.returncode == 3 and len(res.stderr.strip().splitlines()) == 1
    res, doc = cli_json("diff", "bed:langdetector", str(tmp_path / "fresh"))
    assert res.returncode == 1 and doc["sync_command"] == f"model-sync pull bed:langdetector {tmp_path / 'fresh'}"


def test_diff_symlinks_compare_by_target(bed, tmp_path):
    left = make(tmp_path / "m", {"a": b"1", "b": b"2"})
    (left / "cur").symlink_to("a")
    right = make(bed.remote_base / "m", {"a": b"1", "b": b"2"})
    for p in ("a", "b"):
        os.utime(right / p, ns=(0, (left / p).stat().st_mtime_ns))
    (right / "cur").symlink_to("a")
    assert run_cli("diff", str(left), "bed").returncode == 0
    (right / "cur").unlink()
    (right / "cur").symlink_to("b")
    res, doc = cli_json("diff", str(left), "bed", "--checksum")
    assert res.returncode == 1 and [e["path"] for e in doc["entries"] if e["status"] == "modified"] == ["cur"]


def versions_tree(base: Path) -> dict[str, int]:
    names = ["RTX3090_N2501_ASR_v1", "RTX3090_N2501_ASR_v2", "RTX3090_N2501_ASR_v10", "RTX3090_N2501_ASR_v9",
             "A100_N2502_ASR_250101", "A100_N2502_ASR_250202",
             "RTX3090_N2501_TTS_v1", "RTX3090_N2501_TTS_v2", "asr backup", "ASR_OLD"]
    for i, n in enumerate(names):
        make(base / n, {"w.bin": b"w" * (1000 * (i + 1))})
    make(base / ".RTX3090_N2501_ASR_v1.model-sync-staging", {"w": b"s"})
    return {n: du(base / n) for n in names}


def remaining(base: Path) -> set[str]:
    return {p.name for p in base.iterdir()}


def test_prune_without_yes_removes_nothing(bed):
    sizes = versions_tree(bed.remote_base)
    before = remaining(bed.remote_base)
    res = run_cli("prune", "bed", "--model", "asr", "--keep", "2")
    assert res.returncode == 0, res.stderr
    assert remaining(bed.remote_base) == before
    assert "Nothing was removed: rerun with --yes" in res.stdout
    for name in ("RTX3090_N2501_ASR_v2", "RTX3090_N2501_ASR_v1"):
        assert f"| {name} | RTX3090 |" in res.stdout and "remove |" in res.stdout
    res, doc = cli_json("prune", "bed", "--model", "asr", "--keep", "2")
    assert doc["dry_run"] is True and doc["removed"] == []
    assert sorted(i["name"] for i in doc["to_remove"]) == ["RTX3090_N2501_ASR_v1", "RTX3090_N2501_ASR_v2"]
    assert doc["bytes_to_free"] == sizes["RTX3090_N2501_ASR_v1"] + sizes["RTX3090_N2501_ASR_v2"]
    assert remaining(bed.remote_base) == before


def test_prune_yes_keeps_newest_per_gpu_and_touches_nothing_else(bed):
    sizes = versions_tree(bed.remote_base)
    res, doc = cli_json("prune", "bed", "--model", "ASR", "--keep", "1", "--yes")
    assert res.returncode == 0, res.stderr
    gone = {"RTX3090_N2501_ASR_v1", "RTX3090_N2501_ASR_v2", "RTX3090_N2501_ASR_v9", "A100_N2502_ASR_250101"}
    assert {i["name"] for i in doc["removed"]} == gone
    assert {i["name"] for i in doc["kept"]} == {"RTX3090_N2501_ASR_v10", "A100_N2502_ASR_250202"}
    assert doc["bytes_freed"] == sum(sizes[n] for n in gone) and doc["failed"] == [] and doc["ok"] is True
    assert remaining(bed.remote_base) == set(sizes) - gone | {".RTX3090_N2501_ASR_v1.model-sync-staging"}
    res = run_cli("prune", "bed", "--model", "ASR", "--keep", "1", "--yes")
    assert res.returncode == 0 and "Nothing to remove." in res.stdout


def test_prune_gpu_and_argument_checks(bed):
    versions_tree(bed.remote_base)
    res, doc = cli_json("prune", "bed", "--model", "ASR", "--keep", "1", "--gpu", "a100", "--yes")
    assert res.returncode == 0, res.stderr
    assert [i["name"] for i in doc["removed"]] == ["A100_N2502_ASR_250101"]
    assert (bed.remote_base / "RTX3090_N2501_ASR_v1").exists()
    for args, text in ((["--keep", "0"], "--keep"), (["--keep", "-1"], "--keep")):
        res = run_cli("prune", "bed", "--model", "ASR", *args, "--yes")
        assert res.returncode == 2 and text in res.stderr
    res = run_cli("prune", "bed", "--model", "WHISPER", "--keep", "1", "--yes")
    assert res.returncode == 2 and "no model 'WHISPER'" in res.stderr
    assert (bed.remote_base / "RTX3090_N2501_ASR_v2").exists()


def test_removal_rechecks_every_path_on_the_server(bed, tmp_path):
    from model_sync.config import load_config
    from model_sync.hosts import open_host

    base = bed.remote_base
    keep_out = make(tmp_path / "precious", {"f": b"keep me"})
    (base / "RTX3090_N2501_ASR_v1").symlink_to(keep_out)
    make(base / "RTX3090_N2501_ASR_v2", {"f": b"old"})
    make(base / "sub" / "RTX3090_N2501_ASR_v3", {"f": b"nested"})
    host = open_host("bed", load_config())
    try:
        outcome = inventory._remove(host, str(base), [
            str(base / "RTX3090_N2501_ASR_v1"), str(base / "RTX3090_N2501_ASR_v2"),
            str(base / "sub" / "RTX3090_N2501_ASR_v3"), str(base / ".." / "precious"), str(base / "gone")])
    finally:
        host.close()
    assert outcome == {str(base / "RTX3090_N2501_ASR_v1"): "symlink", str(base / "RTX3090_N2501_ASR_v2"): "removed",
                       str(base / "sub" / "RTX3090_N2501_ASR_v3"): "outside", str(base / ".." / "precious"): "outside",
                       str(base / "gone"): "missing"}
    assert (keep_out / "f").read_bytes() == b"keep me"
    assert (base / "sub" / "RTX3090_N2501_ASR_v3" / "f").exists()


def test_push_strict_refuses_a_name_outside_the_convention(bed, tmp_path):
    src = make(tmp_path / "langdetector-v1", {"w.bin": b"w"})
    res = run_cli("push", str(src), "bed", "--strict")
    assert res.returncode == 2
    assert "{GPU}_{DATE}_{MODEL}_{VERSION}" in res.stderr and "RTX3090_N2501_LANGDETECTOR_250715" in res.stderr
    assert list(bed.remote_base.iterdir()) == []
    res = run_cli("push", str(src), "bed")
    assert res.returncode == 0, res.stderr
    assert "model-sync: warning: 'langdetector-v1' does not follow the naming convention" in res.stderr
    assert "RTX3090_N2501_LANGDETECTOR_250715" in res.stderr
    assert (bed.remote_base / "langdetector-v1" / "w.bin").exists()
    res, doc = cli_json("push", str(src), "bed:RTX3090_N2501_LANGDETECTOR_250715", "--strict")
    assert res.returncode == 0 and doc["warnings"] == [] and "warning" not in res.stderr
    good = make(tmp_path / "A100_N2502_ASR_250101", {"w.bin": b"w"})
    res = run_cli("push", str(good), "bed", "--strict")
    assert res.returncode == 0 and "warning" not in res.stderr


HOSTILE = ["with space.bin", "quote'single.bin", "$(touch PWNED).bin", "-leading-dash.bin", "new\nline.bin",
           "back\\slash.bin", "tab\there.bin"]


def test_diff_and_prune_treat_hostile_names_as_data(bed, tmp_path):
    src = make(tmp_path / "src" / "RTX3090_N2501_ASR_v2", {n: n.encode() * 50 for n in HOSTILE})
    assert run_cli("push", str(src), "bed").returncode == 0
    res, doc = cli_json("diff", str(src), "bed", "--checksum")
    assert res.returncode == 0, res.stdout + res.stderr
    assert doc["same"] == len(HOSTILE)
    same_mtime_edit(src / "new\nline.bin")
    res, doc = cli_json("diff", str(src), "bed", "--checksum")
    assert res.returncode == 1 and [e["path"] for e in doc["entries"] if e["status"] != "same"] == ["new\nline.bin"]
    for name in ("RTX3090_N2501_ASR_v1'$(touch PWNED)'", "RTX3090_N2501_ASR_v0;touch PWNED2;"):
        make(bed.remote_base / name, {"w": b"old"})
    res, doc = cli_json("prune", "bed", "--model", "ASR", "--keep", "1", "--yes")
    assert res.returncode == 0, res.stderr
    assert sorted(i["name"] for i in doc["removed"]) == sorted(
        ["RTX3090_N2501_ASR_v1'$(touch PWNED)'", "RTX3090_N2501_ASR_v0;touch PWNED2;"])
    assert {n for n in remaining(bed.remote_base) if not n.startswith(".")} == {"RTX3090_N2501_ASR_v2"}
    for d in (tmp_path, bed.home, Path.cwd()):
        assert not list(d.rglob("PWNED")) and not list(d.rglob("PWNED2"))


def test_prune_removes_only_what_was_approved(bed):
    from model_sync import api
    from model_sync.config import load_config

    for v in ("250101", "250201", "250301", "250401"):
        (bed.remote_base / f"RTX3090_N2501_OCR_{v}").mkdir()
    # the user saw (and approved) two names; a third became removable since
    approved = {"RTX3090_N2501_OCR_250101", "RTX3090_N2501_OCR_250201"}
    res = api.prune("bed", "OCR", 1, load_config(), yes=True, only=approved)
    assert {i.name for i in res.removed} == approved
    assert (bed.remote_base / "RTX3090_N2501_OCR_250301").is_dir()
    assert "RTX3090_N2501_OCR_250301" in {i.name for i in res.kept if i.status == "unapproved"}


def test_markdown_lists_unchanged_files_only_when_few():
    from model_sync import render
    from model_sync.inventory import DiffEntry, DiffResult, DiffSide

    def result(same: int) -> DiffResult:
        entries = [DiffEntry(f"f{i:04d}", "same", 1, 1) for i in range(same)]
        entries.append(DiffEntry("changed.bin", "modified", 1, 2))
        return DiffResult(DiffSide("./m", None, "/x/m", "Local"), DiffSide("bed", "bed", "m", "Remote"),
                          False, None, entries, 0.1)

    few = render.markdown(result(render.SAME_ROWS_MAX))
    assert few.count("| same |") == render.SAME_ROWS_MAX and "not listed" not in few
    many = render.markdown(result(render.SAME_ROWS_MAX + 1))
    assert many.count("| same |") == 0 and "| changed.bin | 1B | 2B | modified |" in many
    assert f"{render.SAME_ROWS_MAX + 1} files unchanged and not listed (--json lists every file)" in many
    assert f"- Same: {render.SAME_ROWS_MAX + 1} files" in many
    assert len(render.to_jsonable(result(500))["entries"]) == 501  # JSON keeps every file
