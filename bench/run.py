"""Every model-sync benchmark in one run, against plain rsync in the same run.

    python bench/run.py                # writes BENCHMARKS.md at the repository root
    python bench/run.py --rounds 5 --link-rounds 3 --out /tmp/b.md

Needs root (a tmpfs mount, network namespaces), sshd, rsync and xxhsum: the
README's test command installs them. Creates everything it uses under one
temporary directory: the data (4 x 1 GiB random shards, a 20,000-file tree,
200 small model directories), a throwaway sshd on 127.0.0.1, a tmpfs, and a
network namespace reached through a 1 Gbit tbf-shaped veth and a relay that
adds 25 ms each way. Every case alternates model-sync and its reference,
round by round, and reports medians and ratios. Everything started is
stopped by PID, the namespace removed and the tmpfs unmounted at the end.
Traffic goes only to 127.0.0.1 and into the benchmark's own namespace.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from sshbed import free_port, start_sshd  # noqa: E402

# the model-sync of this interpreter's environment, else the one on PATH
MS = str(Path(sys.executable).parent / "model-sync") if (Path(sys.executable).parent / "model-sync").exists() \
    else (shutil.which("model-sync") or "model-sync")
LINK_RATE_BYTES = 125_000_000  # 1 Gbit/s


@dataclass
class Case:
    name: str
    reference: str  # what we compare against, in words
    ref_cmd: list[str] | None
    ms_cmd: list[str]
    target: str
    met: callable = None  # (ref median, ms median) -> bool
    ref: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    extra: str = ""


def run(argv: list[str], env: dict, ok=(0,)) -> float:
    start = time.perf_counter()
    res = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if res.returncode not in ok:
        raise SystemExit(f"benchmark command failed ({res.returncode}): {shlex.join(argv)}\n{res.stderr}")
    return took


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        left = size
        while left:
            n = min(8 << 20, left)
            fh.write(os.urandom(n))
            left -= n


def make_tree(root: Path, files: int, size: int) -> None:
    for i in range(files):
        p = root / f"layer-{i // 500:03d}" / f"tensor-{i:05d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(size))


def alternate(case: Case, rounds: int, env: dict, before=None, after=None) -> None:
    """Run reference and model-sync alternately; who goes first rotates."""
    for r in range(rounds):
        order = [("ref", case.ref_cmd), ("ms", case.ms_cmd)]
        if r % 2:
            order.reverse()
        for who, cmd in order:
            if cmd is None:
                continue
            argv = [a.replace("{run}", f"{who}-{r}") for a in cmd]
            if before:
                before(who, r)
            took = run(argv, env, ok=(0, 1) if "diff" in argv else (0,))
            (case.ref if who == "ref" else case.ms).append(took)
            if after:
                after(who, r)
        print(f"  {case.name}: round {r + 1}: ref={case.ref[-1] if case.ref else 0:.2f}s "
              f"ms={case.ms[-1]:.2f}s", file=sys.stderr, flush=True)


def drop(base: Path, name: str) -> None:
    """A pushed copy and what model-sync keeps beside it (its versions; a plain rsync copy is a directory)."""
    for p in base.glob(f"*{name}*"):
        if p.is_symlink() or p.is_file():
            p.unlink()
        else:
            shutil.rmtree(p, ignore_errors=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.machine())
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    rsync = subprocess.run(["rsync", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    xxh = subprocess.run(["xxhsum", "-V"], capture_output=True, text=True)
    return (f"{os.cpu_count()} cores, {cpu}; Linux {platform.release()}; Python {platform.python_version()}; "
            f"{ssh}; {rsync}; {(xxh.stdout or xxh.stderr).strip().splitlines()[0]}")


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ms-bench-", dir="/var/tmp"))
        self.stops: list = []  # cleanups, run in reverse

    def cleanup(self):
        for fn in reversed(self.stops):
            try:
                fn()
            except Exception as exc:  # keep cleaning up
                print(f"cleanup: {exc}", file=sys.stderr)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- set-up ---------------------------------------------------------------------
    def setup(self):
        w = self.work
        # bytecode for every module, as pip writes it at install time: with
        # PYTHONDONTWRITEBYTECODE set, an edited module would otherwise be
        # compiled again on every run of model-sync
        with open(shutil.which(MS) or MS, "rb") as fh:  # a console script: '#!<its python>'
            python = fh.readline()[2:].decode().strip()
        pkg = subprocess.run([python, "-c",
                              "import model_sync, os; print(os.path.dirname(model_sync.__file__))"],
                             capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "compileall", "-q", pkg], check=True)
        bed = start_sshd(w / "sshd")
        self.stops.append(bed.stop)
        self.bed = bed
        tmpfs = w / "tmpfs"
        tmpfs.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7g", "model-sync-bench", str(tmpfs)], check=True)
        self.stops.append(lambda: subprocess.run(["umount", str(tmpfs)], check=False))
        self.tmpfs = tmpfs
        home = w / "home"
        (home / ".ssh").mkdir(parents=True)
        self.kh = home / ".ssh" / "known_hosts"
        self.kh.write_text(bed.known_hosts_line)
        for d in ("dest", "inv", "tmpfs/small", "tmpfs/far"):
            (w / d).mkdir(parents=True, exist_ok=True)
        self.aliases = {"bench": (bed.port, w / "dest", bed.client_key),
                        "small": (bed.port, tmpfs / "small", bed.client_key),
                        "inv": (bed.port, w / "inv", bed.client_key)}
        self.env = dict(os.environ, HOME=str(home), MODEL_SYNC_CONFIG=str(home / ".model-sync.yaml"))
        self.env.pop("SSH_AUTH_SOCK", None)
        self.write_config()
        self.ssh = (f"ssh -i {bed.client_key} -p {bed.port} -o UserKnownHostsFile={self.kh} "
                    "-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes")
        print("making data ...", file=sys.stderr, flush=True)
        self.shards = w / "src" / "RTX3090_N2501_SHARDS_250101"
        for i in range(4):
            write_random(self.shards / f"model-{i:05d}-of-00004.safetensors", self.args.shard_mib << 20)
        self.tree = w / "src" / "RTX3090_N2501_TREE_250101"
        make_tree(self.tree, 20_000, 2048)
        for i in range(200):
            d = w / "inv" / f"RTX3090_N25{i % 12 + 1:02d}_MODEL{i % 20}_2507{i % 28 + 1:02d}{i // 28}"
            write_random(d / "config.json", 512)
            write_random(d / "1" / "model.onnx", 4096)

    def write_config(self):
        text = "servers:\n"
        for alias, (port, base, key) in self.aliases.items():
            text += (f"  {alias}:\n    host: 127.0.0.1\n    port: {port}\n    user: {self.bed.user}\n"
                     f"    ssh_key: {key}\n    model_base: {base}\n")
        Path(self.env["MODEL_SYNC_CONFIG"]).write_text(text)

    def rsync_to(self, src: Path, dest: str, ssh: str | None = None, flags: str = "-a") -> list[str]:
        return ["rsync", flags, "-e", ssh or self.ssh, f"{src}/", f"{self.bed.user}@127.0.0.1:{dest}/"]

    # -- cases ----------------------------------------------------------------------
    def fresh_pushes(self, name: str, src: Path, alias: str, max_ratio: float, extra_rounds: int = 0) -> Case:
        """Pushes of `src` to a new directory each run, removed afterwards."""
        dest = self.aliases[alias][1]
        c = Case(name, "`rsync -a -e ssh` (default cipher)", self.rsync_to(src, f"{dest}/{{run}}"),
                 [MS, "push", str(src), f"{alias}:{{run}}"], f"<= {max_ratio:.2f}x", lambda r, m: m <= max_ratio * r)
        alternate(c, self.args.rounds + extra_rounds, self.env,
                  after=lambda who, r: drop(dest, f"{who}-{r}"))
        return c

    @property
    def shard(self) -> str:
        mib = self.args.shard_mib
        return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"

    def push_big(self) -> Case:
        return self.fresh_pushes(f"push 4 x {self.shard}, loopback", self.shards, "bench", 0.70)

    def fsync_cost(self) -> Case:
        """What flushing each new version to disk before its publish costs,
        on the disk-backed destination: the same push with --no-fsync is the
        reference (the README says why fsync is the default)."""
        dest = self.aliases["bench"][1]
        c = Case(f"fsync cost: push 4 x {self.shard} to disk, default against --no-fsync",
                 "the same push with `--no-fsync`", [MS, "push", "--no-fsync", str(self.shards), "bench:{run}"],
                 [MS, "push", str(self.shards), "bench:{run}"], "recorded (no target)", lambda r, m: True)
        alternate(c, self.args.rounds, self.env,
                  after=lambda who, r: drop(dest, f"{who}-{r}"))
        return c

    def push_small(self) -> tuple[Case, Case]:
        dest = self.tmpfs / "small"
        # short runs that vary by 0.1 to 0.2 s: two more rounds, as for the other 20,000-file cases
        c = self.fresh_pushes("push 20,000 small files (2 KiB each) to tmpfs", self.tree, "small", 0.85, extra_rounds=2)
        # no-op: both copies in place, then the same commands again
        run(self.rsync_to(self.tree, f"{dest}/ref-noop"), self.env)
        run([MS, "push", str(self.tree), "small:ms-noop"], self.env)
        n = Case("no-op re-push of 20,000 files (verification on)", "the same rsync, no-op",
                 self.rsync_to(self.tree, f"{dest}/ref-noop"), [MS, "push", str(self.tree), "small:ms-noop"],
                 "<= 1.0x", lambda r, m: m <= r)
        alternate(n, self.args.rounds + 2, self.env)
        return c, n

    def diff(self) -> tuple[Case, Case]:
        dest = self.work / "dest" / self.tree.name
        run(self.rsync_to(self.tree, str(dest)), self.env)
        changed = self.work / "src2" / self.tree.name
        shutil.copytree(self.tree, changed, copy_function=os.link)
        for i in range(0, 20_000, 200):  # 100 files get new contents (new inode, new mtime)
            p = changed / f"layer-{i // 500:03d}" / f"tensor-{i:05d}.bin"
            p.unlink()
            p.write_bytes(os.urandom(2048))
        out = []
        for label, src in (("identical", self.tree), ("100 files changed", changed)):
            c = Case(f"diff 20,000 files, {label}", "`rsync -an --itemize-changes`",
                     self.rsync_to(src, str(dest), flags="-an") + ["--itemize-changes"],
                     [MS, "diff", str(src), f"bench:{self.tree.name}"], "<= 1.0x", lambda r, m: m <= r)
            alternate(c, self.args.rounds + 2, self.env)
            out.append(c)
        return tuple(out)

    def list_models(self) -> Case:
        c = Case("list 200 model directories", "-", None, [MS, "list", "inv"], "< 1 s", lambda r, m: m < 1.0)
        alternate(c, self.args.rounds + 2, self.env)
        return c

    def verify(self) -> Case:
        dest = self.work / "dest" / "verify"
        run([MS, "push", "--no-verify", str(self.shards), "bench:verify"], self.env)
        both = (f"(cd {shlex.quote(str(self.shards))} && xxhsum -H2 -- *) >/dev/null & "
                f"{self.ssh} 127.0.0.1 'cd {shlex.quote(str(dest))} && xxhsum -H2 -- *' >/dev/null; wait")
        c = Case(f"verify 4 x {self.shard}", "`xxhsum -H2` on both ends at once (local, and over ssh)",
                 ["sh", "-c", both], [MS, "verify", str(self.shards), "bench:verify"], "<= 1.3x",
                 lambda r, m: m <= 1.3 * r)
        alternate(c, self.args.rounds, self.env)
        return c

    def help_time(self) -> Case:
        c = Case("`model-sync --help`", "-", None, [MS, "--help"], "<= 0.25 s", lambda r, m: m <= 0.25)
        alternate(c, 10, self.env)
        return c

    @staticmethod
    def no_leaks() -> None:
        import netbed

        if netbed.leaks():
            print(f"WARNING: {netbed.leaks()} packet(s) for {netbed.RANGE} tried to leave this machine "
                  "(dropped by the guard)", file=sys.stderr)

    def link(self) -> Case | None:
        import netbed

        why = netbed.available()
        if why:
            print(f"skipping the link case: {why}", file=sys.stderr)
            return None
        netbed.cleanup_stale()
        host = netbed.make_host(7, self.work / "far-sshd")  # the test network's rules: blackhole route, leak counter
        self.stops.append(host.remove)
        self.stops.append(self.no_leaks)
        host.shape("tbf", "rate", "1gbit", "burst", "1mb", "latency", "100ms")
        port = free_port()
        relay = subprocess.Popen([sys.executable, str(HERE / "relay.py"), str(port), host.address,
                                  str(host.sshd.port), "25"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 text=True)
        self.stops.append(lambda: (relay.send_signal(signal.SIGTERM), relay.wait(10)))
        relay.stdout.readline()  # "ready"
        with open(self.kh, "a") as fh:
            fh.write(f"[127.0.0.1]:{port} {host.sshd.host_key_pub}\n")
        far = self.tmpfs / "far"
        self.aliases["far"] = (port, far, host.sshd.client_key)
        self.write_config()
        ssh = self.ssh.replace(f"-p {self.bed.port}", f"-p {port}").replace(str(self.bed.client_key),
                                                                             str(host.sshd.client_key))
        size = 4 * (self.args.shard_mib << 20)
        c = Case(f"push 4 x {self.shard} over 1 Gbit with 50 ms round trip", "single-stream `rsync -a -e ssh` on the same link",
                 ["rsync", "-a", "-e", ssh, f"{self.shards}/", f"{self.bed.user}@127.0.0.1:{far}/{{run}}/"],
                 [MS, "push", str(self.shards), "far:{run}"], ">= 2.5x throughput and >= 70% of 1 Gbit",
                 lambda r, m: r / m >= 2.5 and size / m >= 0.7 * LINK_RATE_BYTES)
        alternate(c, self.args.link_rounds, self.env,
                  after=lambda who, r: drop(far, f"{who}-{r}"))
        mr, mm = median(c.ref), median(c.ms)
        c.extra = (f"Throughput: rsync {size / mr / 1e6:.0f} MB/s, model-sync {size / mm / 1e6:.0f} MB/s "
                   f"({mr / mm:.2f}x; {size / mm / LINK_RATE_BYTES * 100:.0f}% of the 1 Gbit link).")
        return c


def report(cases: list[Case], args, seconds: float) -> str:
    cmd = "python bench/run.py" + "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(vars(args).items())
                                          if k != "out" and v != "")
    lines = ["# Benchmarks", "",
             "Generated by `bench/run.py`; every figure below is from one run of:", "",
             f"    {cmd}", "",
             f"Run on {datetime.date.today().isoformat()}, {seconds / 60:.0f} min. Machine: {machine()}.", "",
             "Each case alternates model-sync and its reference round by round (who goes first rotates); "
             "times are wall-clock medians. model-sync runs as users run it: verification on, default "
             "streams and cipher. No timing is asserted by any test.", "",
             "| Case | Reference | Reference median | model-sync median | Ratio | Target | Met |",
             "|---|---|---|---|---|---|---|"]
    for c in cases:
        r, m = median(c.ref), median(c.ms)
        ratio = f"{m / r:.2f}x" if c.ref else "-"
        met = "yes" if c.met(r, m) else "**no**"
        lines.append(f"| {c.name} | {c.reference} | {f'{r:.2f} s' if c.ref else '-'} | {m:.2f} s | {ratio} | "
                     f"{c.target} | {met} |")
    lines += ["", "## Commands and every run", ""]
    for c in cases:
        lines += [f"### {c.name}", ""]
        if c.ref_cmd:
            lines += [f"- reference: `{shlex.join(c.ref_cmd)}`: " + ", ".join(f"{t:.2f}" for t in c.ref)]
        lines += [f"- model-sync: `{shlex.join(c.ms_cmd)}`: " + ", ".join(f"{t:.2f}" for t in c.ms)]
        if c.extra:
            lines += ["", c.extra]
        lines.append("")
    lines += ["(`{run}` is a fresh destination per run; paths are under the run's temporary directory.)", ""]
    analysis = HERE / "ANALYSIS.md"  # written by hand: where the time goes, from profiling
    if analysis.exists():
        lines += [analysis.read_text()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--link-rounds", type=int, default=2)
    ap.add_argument("--shard-mib", type=int, default=1024)
    ap.add_argument("--only", default="", help="comma-separated case groups: big,fsync,small,diff,list,verify,help,link")
    ap.add_argument("--out", default=str(HERE.parent / "BENCHMARKS.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/run.py needs root (tmpfs, network namespaces)")
    start = time.monotonic()
    b = Bench(args)
    cases: list[Case] = []
    only = set(filter(None, args.only.split(",")))
    try:
        b.setup()
        groups = [("help", lambda: [b.help_time()]), ("big", lambda: [b.push_big()]),
                  ("fsync", lambda: [b.fsync_cost()]), ("small", lambda: list(b.push_small())), ("diff", lambda: list(b.diff())),
                  ("list", lambda: [b.list_models()]), ("verify", lambda: [b.verify()]),
                  ("link", lambda: [c for c in [b.link()] if c])]
        for name, fn in groups:
            if not only or name in only:
                print(f"case group: {name}", file=sys.stderr, flush=True)
                cases += fn()
    finally:
        b.cleanup()
    text = report(cases, args, time.monotonic() - start)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
