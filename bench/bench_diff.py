"""diff and list benchmark: model-sync against rsync's own dry run, same run.

A 20,000-file model tree exists locally and (identical, or with 100 files
changed) on a throwaway sshd on 127.0.0.1. Alternating, round by round:
  - rsync -an --itemize-changes -e 'ssh ...' SRC/ HOST:DEST/
  - model-sync diff SRC bench:DEST
Then `model-sync list bench` over 200 model directories. Prints markdown.

    python bench/bench_diff.py --files 20000 --changed 100 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from sshbed import start_sshd  # noqa: E402


def make_tree(root: Path, files: int) -> list[Path]:
    paths = []
    for i in range(files):
        p = root / f"shard-{i // 500:03d}" / f"tensor-{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(i.to_bytes(4, "little") * 16)
        paths.append(p)
    return paths


def timed(argv, env, ok=(0,)) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    took = time.perf_counter() - start
    if res.returncode not in ok:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(argv)}\n{res.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--changed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", type=int, default=200)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ms-bench-diff-"))
    bed = start_sshd(work / "sshd")
    try:
        home = work / "home"
        (home / ".ssh").mkdir(parents=True)
        kh = home / ".ssh" / "known_hosts"
        kh.write_text(bed.known_hosts_line)
        base = work / "remote"
        cfg = home / ".model-sync.yaml"
        cfg.write_text(f"servers:\n  bench:\n    host: 127.0.0.1\n    port: {bed.port}\n    user: {bed.user}\n"
                       f"    ssh_key: {bed.client_key}\n    model_base: {base}\n")
        env = dict(os.environ, HOME=str(home), MODEL_SYNC_CONFIG=str(cfg))
        env.pop("SSH_AUTH_SOCK", None)
        src = work / "src" / "RTX3090_N2501_BIG_250101"
        paths = make_tree(src, args.files)
        dest = base / src.name
        base.mkdir(parents=True, exist_ok=True)
        subprocess.run(["rsync", "-a", f"{src}/", f"{dest}/"], check=True)
        ms = str(Path(sys.executable).parent / "model-sync")  # this environment's, not another on PATH
        ssh = (f"ssh -i {bed.client_key} -p {bed.port} -o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes "
               "-o BatchMode=yes -o IdentitiesOnly=yes")
        rsync_argv = ["rsync", "-an", "--itemize-changes", "-e", ssh, f"{src}/", f"{bed.user}@127.0.0.1:{dest}/"]
        diff_argv = [ms, "--json", "diff", str(src), f"bench:{src.name}"]
        report = []
        for label, change in (("identical", 0), (f"{args.changed} files changed", args.changed)):
            for p in paths[:change]:
                p.write_bytes(b"changed" + p.read_bytes())
            t_rsync, t_ms = [], []
            for r in range(args.rounds):
                pair = [("rsync", rsync_argv, t_rsync), ("ms", diff_argv, t_ms)]
                for _, argv, acc in (pair if r % 2 == 0 else pair[::-1]):
                    acc.append(timed(argv, env, ok=(0, 1)))
            report.append((label, statistics.median(t_rsync), statistics.median(t_ms), t_rsync, t_ms))

        for i in range(args.models):
            d = base / f"RTX3090_N25{i % 12 + 1:02d}_MODEL{i % 7}_{250000 + i}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "w.bin").write_bytes(b"x" * 1000)
        t_list = [timed([ms, "--json", "list", "bench"], env) for _ in range(args.rounds)]

        print(f"### diff: {args.files}-file tree over loopback SSH (median of {args.rounds}, alternating)\n")
        print("| Case | rsync -an --itemize-changes | model-sync diff | Ratio |")
        print("|---|---|---|---|")
        for label, r_med, m_med, _, _ in report:
            print(f"| {label} | {r_med:.2f}s | {m_med:.2f}s | {m_med / r_med:.2f}x |")
        print(f"\n### list: {args.models + 1} model directories\n")
        print(f"model-sync list: median {statistics.median(t_list):.2f}s (runs: "
              + ", ".join(f"{t:.2f}" for t in t_list) + ")")
    finally:
        bed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
