"""Push benchmark: model-sync against plain rsync, same machine, same run.

Starts a throwaway sshd on 127.0.0.1 (the test bed's), makes N random files,
then alternates, round by round:
  - plain:     rsync -a -e 'ssh -i KEY -p PORT ...' SRC/ HOST:DEST/
  - ms-noverify: model-sync push SRC bench:DEST --no-verify
  - ms-verify:   model-sync push SRC bench:DEST            (xxh3-128 on both ends)
and times `xxhsum -H2` over the same files. Every push goes to an empty
destination. Prints a markdown report (medians and ratios to plain rsync).

    python bench/bench_push.py --files 4 --size-mib 1024 --rounds 3 [--with-compress]

The files are named *.safetensors, so --compress skips them (rsync
--skip-compress) as a user's weights would be; random data is the honest
stand-in for trained weights, which do not compress either.
"""

from __future__ import annotations

import argparse
import os
import platform
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


def make_files(src: Path, count: int, size_mib: int) -> None:
    src.mkdir(parents=True, exist_ok=True)
    block = 8 << 20
    for i in range(count):
        with open(src / f"model-{i:02d}.safetensors", "wb") as fh:
            left = size_mib << 20
            while left:
                n = min(block, left)
                fh.write(os.urandom(n))
                left -= n


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    took = time.perf_counter() - start
    if res.returncode != 0:
        raise SystemExit(f"benchmark command failed ({res.returncode}): {' '.join(argv)}\n{res.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="where the data goes (default: a temp dir)")
    ap.add_argument("--with-compress", action="store_true", help="also time model-sync push --compress")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ms-bench-"))
    bed = start_sshd(work / "sshd")
    try:
        home = work / "home"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        kh = home / ".ssh" / "known_hosts"
        kh.write_text(bed.known_hosts_line)
        dest_base = work / "dest"
        dest_base.mkdir(exist_ok=True)
        cfg = home / ".model-sync.yaml"
        cfg.write_text(f"servers:\n  bench:\n    host: 127.0.0.1\n    port: {bed.port}\n    user: {bed.user}\n"
                       f"    ssh_key: {bed.client_key}\n    model_base: {dest_base}\n")
        env = dict(os.environ, HOME=str(home), MODEL_SYNC_CONFIG=str(cfg))
        env.pop("SSH_AUTH_SOCK", None)
        src = work / "src" / "RTX3090_N2501_BENCH_250101"
        make_files(src, args.files, args.size_mib)
        # the model-sync of this interpreter's environment, not another install on PATH
        ms = str(Path(sys.executable).parent / "model-sync")
        ssh = (f"ssh -i {bed.client_key} -p {bed.port} -o UserKnownHostsFile={kh} -o StrictHostKeyChecking=yes "
               "-o BatchMode=yes -o IdentitiesOnly=yes")
        variants = {
            "plain rsync -a -e ssh": lambda d: ["rsync", "-a", "-e", ssh, f"{src}/", f"{bed.user}@127.0.0.1:{d}/"],
            "model-sync push --no-verify": lambda d: [ms, "push", str(src), f"bench:{d}", "--no-verify"],
            "model-sync push (verify)": lambda d: [ms, "push", str(src), f"bench:{d}"],
        }
        if args.with_compress:
            variants["plain rsync -az -e ssh"] = \
                lambda d: ["rsync", "-az", "-e", ssh, f"{src}/", f"{bed.user}@127.0.0.1:{d}/"]
            variants["model-sync push --compress --no-verify"] = \
                lambda d: [ms, "push", str(src), f"bench:{d}", "--no-verify", "--compress"]
        times: dict[str, list[float]] = {k: [] for k in variants}
        hash_times: list[float] = []
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for name in order:
                d = dest_base / f"run-{r}-{names.index(name)}"
                times[name].append(timed(variants[name](d), env))
                shutil.rmtree(d)
            hash_times.append(timed(["sh", "-c", f"cd '{src}' && xxhsum -H2 -- *"], env))
            print(f"round {r + 1}: " + ", ".join(f"{k}={v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)

        base = statistics.median(times[names[0]])
        total_gib = args.files * args.size_mib / 1024
        cpu = ""
        try:
            cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
        print(f"### Push: {args.files} x {args.size_mib} MiB random files over loopback SSH\n")
        print(f"Machine: {os.cpu_count()} cores, {cpu or platform.machine()}; "
              f"{subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
              f"{subprocess.run(['rsync', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}\n")
        print("| Variant | Median time | Throughput | Ratio to plain rsync | Runs |")
        print("|---|---|---|---|---|")
        for name in names:
            med = statistics.median(times[name])
            print(f"| {name} | {med:.2f}s | {total_gib * 1024 / med:.0f} MiB/s | {med / base:.2f}x | "
                  + ", ".join(f"{t:.2f}" for t in times[name]) + " |")
        v_on, v_off = statistics.median(times[names[2]]), statistics.median(times[names[1]])
        print(f"\nVerification adds {v_on - v_off:.2f}s ({(v_on - v_off) / v_off * 100:.0f}% of the unverified push); "
              f"`xxhsum -H2` over the same files on one side: median {statistics.median(hash_times):.2f}s.")
    finally:
        bed.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
