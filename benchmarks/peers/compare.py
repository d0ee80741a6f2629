"""Tether beside DBOS Transact and LangGraph: the same workloads, on the same machine, in
one run.

Usage (``make bench-peers`` makes ``.venv-peers`` and runs the full comparison)::

    .venv-peers/bin/python benchmarks/peers/compare.py            # both backends, ~20-30 min
    .venv-peers/bin/python benchmarks/peers/compare.py --backends sqlite --rounds 2
    .venv/bin/python benchmarks/peers/compare.py --quick --systems tether   # CI smoke, ~10 s

Every invocation of a workload is a process of its own (``<system>_peer.py``, see
``_harness.py``) on a database of its own: a new SQLite file (WAL, ``synchronous=FULL``,
set by each system's script and read back) or a new PostgreSQL database on the server at
``TETHER_BENCH_POSTGRES_URL`` (``fsync`` printed). Rounds interleave the systems, A B C A B
C, so that each sees the machine in the same state; the figures are medians over rounds,
and each ratio is the median of the per-round ratios.

Workloads: (a) ``step``: one 200-step workflow of trivial steps, ms per step, beside (e) the
floor, one committed ``INSERT`` per transaction on the same disk in the same pattern;
(b) ``throughput``: 500 runs of 10 steps started concurrently, steps/s, and the same at
lower concurrency for the chart; (c) ``recovery``: a process killed with SIGKILL in the
middle of a 200-step run, then a fresh process: time to the first recovered step and to
completion, and completed steps executed again; (d) ``waiting``: 10,000 runs waiting on a
signal: the process's memory and OS threads, and the time to wake them all.
Figures are printed and written as JSON, never asserted.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import _harness as h  # noqa: E402

import _pgbench  # noqa: E402
import core  # noqa: E402

ROOT = HERE.parent.parent
BENCH_TMP = ROOT / ".bench-tmp"
RESULTS = ROOT / "benchmarks" / "results"
SYSTEMS = ("tether", "dbos", "langgraph")
WORKLOADS = ("step", "throughput", "concurrency", "recovery", "waiting")
DB_PREFIX = "tether_peers_"

# Targets of issue 8, as ratios measured in the same run.
TARGET_STEP_VS_DBOS = {"sqlite": 0.15, "postgres": 0.3}  # Tether ms/step over DBOS's, at most
TARGET_STEP_VS_FLOOR = 1.5  # Tether ms/step over the floor's ms/commit, at most
TARGET_THROUGHPUT = {"dbos": 10.0, "langgraph": 5.0}  # Tether steps/s over the peer's, at least


@dataclass(frozen=True)
class Plan:
    rounds: int
    step: dict[str, int]
    throughput: dict[str, int]
    levels: tuple[tuple[int, int], ...]  # (concurrency, runs) of the chart's points
    level_rounds: int
    recovery: dict[str, Any]
    waiting: dict[str, int]
    waiting_rounds: int
    timeout: float


FULL = Plan(
    rounds=3,
    step={"steps": 200, "warmup": 4, "repeats": 7},
    throughput={"runs": 500, "steps": 10, "concurrency": 500},
    levels=((1, 100), (10, 200), (50, 500), (100, 500), (500, 500)),
    level_rounds=1,
    recovery={"steps": 200, "pace": 0.005, "kill_after": 100},
    waiting={"runs": 10_000},
    waiting_rounds=1,
    timeout=1800.0,
)
QUICK = Plan(
    rounds=1,
    step={"steps": 50, "warmup": 1, "repeats": 2},
    throughput={"runs": 100, "steps": 10, "concurrency": 100},
    levels=((1, 10), (10, 50)),
    level_rounds=1,
    recovery={"steps": 40, "pace": 0.005, "kill_after": 20},
    waiting={"runs": 200},
    waiting_rounds=1,
    timeout=120.0,
)


# -- databases ----------------------------------------------------------------------------
@dataclass
class Databases:
    """A new database for every invocation, removed after it."""

    backend: str
    workdir: Path
    count: int = 0

    @contextmanager
    def fresh(self, label: str) -> Iterator[str]:
        self.count += 1
        if self.backend == "sqlite":
            folder = self.workdir / f"{self.count:04d}-{label}"
            folder.mkdir(parents=True)
            try:
                yield str(folder / "db.sqlite")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            return
        name = f"{DB_PREFIX}{os.getpid()}_{self.count}"
        _pgbench.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _pgbench.admin(f'CREATE DATABASE "{name}"')
        try:
            yield _pgbench.with_database(_pgbench.server_url(), name)
        finally:
            _pgbench.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- running a peer -----------------------------------------------------------------------
@dataclass
class Runner:
    python: dict[str, str]  # system -> interpreter
    plan: Plan
    log: list[str] = field(default_factory=list)

    def command(self, system: str, workload: str, backend: str, db: str, **opts: Any) -> list[str]:
        script = HERE / ("floor.py" if system == "floor" else f"{system}_peer.py")
        cmd = [self.python.get(system, sys.executable), str(script), workload]
        cmd += ["--backend", backend, "--db", db]
        for key, value in opts.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        return cmd

    def run(self, system: str, workload: str, backend: str, db: str, **opts: Any) -> dict[str, Any]:
        cmd = self.command(system, workload, backend, db, **opts)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=self.plan.timeout, cwd=ROOT
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {self.plan.timeout:.0f} s"}
        return parse_result(proc.returncode, proc.stdout, proc.stderr)


def parse_result(returncode: int, stdout: str, stderr: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if returncode != 0 or not lines:
        tail = (stderr or stdout).strip().splitlines()[-3:]
        return {"error": f"exit {returncode}: " + " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("RESULT "))
    return result


def recovery_once(
    runner: Runner, system: str, backend: str, db: str, folder: Path
) -> dict[str, Any]:
    """Kill a run's process with SIGKILL mid-run, then time a fresh process finishing it."""
    plan = runner.plan.recovery
    log = folder / f"steps-{system}.log"
    log.unlink(missing_ok=True)
    common = {"steps": plan["steps"], "pace": plan["pace"], "log": str(log), "run_id": "recover-me"}
    victim = subprocess.Popen(
        runner.command(system, "victim", backend, db, **common, kill_after=plan["kill_after"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + runner.plan.timeout
    try:
        while len(h.read_step_log(log)) < plan["kill_after"]:
            if victim.poll() is not None:
                err = (victim.stderr.read() if victim.stderr else "").strip().splitlines()[-3:]
                return {"error": f"victim ended ({victim.returncode}): " + " | ".join(err)}
            if time.monotonic() > deadline:
                return {"error": "the victim never reached the kill point"}
            time.sleep(0.002)
        victim.send_signal(signal.SIGKILL)
    finally:
        if victim.poll() is None:
            victim.kill()
        victim.wait()
    before = h.read_step_log(log)
    recorded = runner.run(system, "recorded", backend, db, steps=plan["steps"], run_id="recover-me")
    if "error" in recorded:
        return {"error": "recorded: " + recorded["error"]}
    spawned = time.time()
    result = runner.run(system, "recover", backend, db, **common)
    if "error" in result:
        return {"error": "recover: " + result["error"]}
    rows = h.read_step_log(log)
    victim_pid = before[0][0] if before else -1
    again = [(pid, i, t) for pid, i, t in rows if pid != victim_pid]
    if not again:
        return {"error": "the recovering process executed no step"}
    n_recorded = int(recorded["recorded"])
    first = min(t for _, _, t in again)
    done_before = {i for pid, i, _ in before if pid == victim_pid}
    executed_again = sorted({i for _, i, _ in again if i < n_recorded})
    in_flight_again = sorted({i for _, i, _ in again if i >= n_recorded and i in done_before})
    return {
        "first_step_from_spawn_s": first - spawned,
        "first_step_from_launch_s": first - result["launched_s"],
        "done_from_spawn_s": result["done_s"] - spawned,
        "steps_logged_before_kill": len(done_before),
        "recorded": n_recorded,
        "completed_steps_executed_again": len(executed_again),
        "unrecorded_steps_executed_again": len(in_flight_again),
        "missing_steps": sorted(set(range(plan["steps"])) - {i for _, i, _ in rows}),
        "result_ok": bool(result.get("result_ok")),
        "versions": result.get("versions", {}),
        "sqlite_pragmas": result.get("sqlite_pragmas"),
    }


# -- the comparison -----------------------------------------------------------------------
def _median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in rounds if "error" not in r]
    out: dict[str, Any] = {}
    if not good:
        return out
    for key, value in good[0].items():
        values = [r.get(key) for r in good]
        if isinstance(value, bool):
            out[key] = all(bool(v) for v in values)
        elif isinstance(value, int | float):
            out[key] = h.median([float(v) for v in values if isinstance(v, int | float)])
        else:
            out[key] = value
    return out


def _ratios(
    rounds: dict[str, list[dict[str, Any]]],
    key: str,
    over: str,
    over_key: str | None = None,
    base: str = "tether",
) -> dict[str, Any] | None:
    """The per-round ratio ``base[key] / over[over_key or key]`` and its median."""
    okey = over_key or key
    pairs = [
        (a[key], b[okey])
        for a, b in zip(rounds.get(base, []), rounds.get(over, []), strict=False)
        if key in a and b.get(okey)
    ]
    if not pairs:
        return None
    per_round = [a / b for a, b in pairs]
    return {"per_round": per_round, "median": h.median(per_round)}


def _section(params: dict[str, Any], got: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "params": params,
        "rounds": got,
        "median": {system: _median_of(rounds) for system, rounds in got.items()},
    }


def compare_backend(
    runner: Runner,
    backend: str,
    systems: list[str],
    workloads: list[str],
    workdir: Path,
    progress: Any,
) -> dict[str, Any]:
    plan = runner.plan
    dbs = Databases(backend, workdir / backend)
    out: dict[str, Any] = {}

    def rounds_of(
        workload: str, who: list[str], n: int, run: Any
    ) -> dict[str, list[dict[str, Any]]]:
        got: dict[str, list[dict[str, Any]]] = {s: [] for s in who}
        for r in range(n):
            for system in who:  # A B C, A B C: interleaved
                progress(f"{backend} {workload} round {r + 1}/{n}: {system}")
                with dbs.fresh(f"{workload}-{system}") as db:
                    got[system].append(run(system, db))
        return got

    if "step" in workloads:
        got = rounds_of(
            "step",
            [*systems, "floor"],
            plan.rounds,
            lambda s, db: runner.run(s, "step", backend, db, **plan.step),
        )
        out["step"] = {
            **_section(plan.step, got),
            "ratios": {
                f"tether/{peer}": _ratios(got, "per_step_ms", peer)
                for peer in [*systems, "floor"]
                if peer != "tether"
            },
        }
        if backend == "postgres" and "tether" in got:
            out["step"]["ratios"]["tether/floor async"] = _ratios(
                got, "per_step_ms", "floor", over_key="async_per_step_ms"
            )
    if "throughput" in workloads:
        got = rounds_of(
            "throughput",
            systems,
            plan.rounds,
            lambda s, db: runner.run(s, "throughput", backend, db, **plan.throughput),
        )
        out["throughput"] = {
            **_section(plan.throughput, got),
            "ratios": {
                f"tether/{peer}": _ratios(got, "steps_per_s", peer)
                for peer in systems
                if peer != "tether"
            },
        }
    if "concurrency" in workloads:
        levels: dict[str, Any] = {}
        for concurrency, runs in plan.levels:
            params = {"runs": runs, "steps": plan.throughput["steps"], "concurrency": concurrency}
            got = rounds_of(
                f"concurrency {concurrency}",
                systems,
                plan.level_rounds,
                lambda s, db, p=params: runner.run(s, "throughput", backend, db, **p),
            )
            levels[str(concurrency)] = _section(params, got)
        out["concurrency"] = levels
    if "recovery" in workloads:
        folder = workdir / backend / "logs"
        folder.mkdir(parents=True, exist_ok=True)
        got = rounds_of(
            "recovery",
            systems,
            plan.rounds,
            lambda s, db: recovery_once(runner, s, backend, db, folder),
        )
        out["recovery"] = _section(plan.recovery, got)
    if "waiting" in workloads:
        got = rounds_of(
            "waiting",
            systems,
            plan.waiting_rounds,
            lambda s, db: runner.run(s, "waiting", backend, db, **plan.waiting),
        )
        out["waiting"] = _section(plan.waiting, got)
    return out


# -- environment --------------------------------------------------------------------------
def machine(backends: list[str], workdir: Path) -> dict[str, Any]:
    info = core.machine_info(workdir)
    info["loadavg_start"] = os.getloadavg()
    if "postgres" in backends:
        info["postgres"] = _pgbench.server_info(_pgbench.server_url())
    return info


# -- report -------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _cell(figures: dict[str, Any], key: str, digits: int = 3) -> str:
    return _fmt(figures.get(key), digits) if figures else "failed"


def _errors(section: dict[str, Any]) -> list[str]:
    return [
        f"    {system} round {i + 1}: {r['error']}"
        for system, rounds in section.get("rounds", {}).items()
        for i, r in enumerate(rounds)
        if "error" in r
    ]


def _ratio(section: dict[str, Any], pair: str) -> float | None:
    found = section.get("ratios", {}).get(pair)
    return None if found is None else float(found["median"])


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISSED")


def report(results: dict[str, Any]) -> str:
    lines: list[str] = []
    say = lines.append
    m = results["machine"]
    say(
        f"peers: {m['nproc']} CPUs ({m['cpu']}), python {m['python']}, sqlite {m['sqlite']}, "
        f"{m['filesystem']['fstype']} on {m['filesystem']['device']}, "
        f"load {m['loadavg_start'][0]:.2f} at start"
    )
    if "postgres" in m:
        pg = m["postgres"]
        say(
            f"postgres {pg['server_version']}: fsync={pg['fsync']}, "
            f"synchronous_commit={pg['synchronous_commit']}"
        )
    for system, found in results.get("versions", {}).items():
        say(f"  {system}: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    for backend, sections in results["backends"].items():
        say("")
        say(f"== {backend} ==")
        systems = [s for s in results["systems"]]
        if "step" in sections:
            s = sections["step"]
            say(
                f"a. per-step, one {s['params']['steps']}-step run, ms/step (median of "
                f"{results['plan']['rounds']} rounds; each the median of "
                f"{s['params']['repeats']} runs after {s['params']['warmup']} warm-up)"
            )
            for system in [*systems, "floor"]:
                f = s["median"].get(system, {})
                label = "floor (one committed INSERT)" if system == "floor" else system
                say(f"    {label:30s} {_cell(f, 'per_step_ms')}")
                if system == "floor" and "async_per_step_ms" in f:
                    say(f"    {'floor, async psycopg':30s} {_cell(f, 'async_per_step_ms')}")
            for pair, found in s["ratios"].items():
                if found:
                    say(
                        f"    {pair:30s} {found['median']:.3f}x  (rounds: "
                        + ", ".join(f"{x:.3f}" for x in found["per_round"])
                        + ")"
                    )
            lines.extend(_errors(s))
        if "throughput" in sections:
            s = sections["throughput"]
            p = s["params"]
            say(
                f"b. throughput, {p['runs']} runs x {p['steps']} steps, "
                f"{p['concurrency']} at once, steps/s"
            )
            for system in systems:
                f = s["median"].get(system, {})
                say(f"    {system:30s} {_cell(f, 'steps_per_s', 0)}  ({_cell(f, 'seconds')} s)")
            for pair, found in s["ratios"].items():
                if found:
                    say(
                        f"    {pair:30s} {found['median']:.1f}x  (rounds: "
                        + ", ".join(f"{x:.1f}" for x in found["per_round"])
                        + ")"
                    )
            lines.extend(_errors(s))
        if "concurrency" in sections:
            say("   steps/s against concurrency (runs in flight at once)")
            say("    " + "concurrency".rjust(11) + "".join(f"{s:>12s}" for s in systems))
            for level, s in sections["concurrency"].items():
                cells = "".join(
                    f"{_cell(s['median'].get(x, {}), 'steps_per_s', 0):>12s}" for x in systems
                )
                say(f"    {level:>11s}{cells}")
                lines.extend(_errors(s))
        if "recovery" in sections:
            s = sections["recovery"]
            p = s["params"]
            say(
                f"c. recovery: SIGKILL after {p['kill_after']} of {p['steps']} steps "
                f"({p['pace'] * 1000:.0f} ms each), then a fresh process"
            )
            say(
                "    " + f"{'':12s}{'first step':>12s}{'(from open)':>13s}{'done':>10s}"
                f"{'recorded':>10s}{'again':>7s}{'in flight again':>17s}{'ok':>5s}"
            )
            for system in systems:
                f = s["median"].get(system, {})
                if not f:
                    say(f"    {system:12s} failed")
                    continue
                say(
                    f"    {system:12s}{f['first_step_from_spawn_s'] * 1000:10.1f}ms"
                    f"{f['first_step_from_launch_s'] * 1000:11.1f}ms{f['done_from_spawn_s']:9.2f}s"
                    f"{f['recorded']:10.0f}{f['completed_steps_executed_again']:7.0f}"
                    f"{f['unrecorded_steps_executed_again']:17.0f}{f['result_ok']!s:>6s}"
                )
            lines.extend(_errors(s))
        if "waiting" in sections:
            s = sections["waiting"]
            say(
                f"d. {s['params']['runs']:,} runs waiting on a signal: the process before and "
                "while they wait, then waking them all"
            )
            say(
                "    " + f"{'':12s}{'threads':>14s}{'RSS MiB':>18s}{'to wait':>10s}{'to wake':>10s}"
            )
            for system in systems:
                f = s["median"].get(system, {})
                if not f:
                    say(f"    {system:12s} failed")
                    continue
                say(
                    f"    {system:12s}{f['baseline_threads']:6.0f} -> {f['waiting_threads']:<6.0f}"
                    f"{f['baseline_rss_mb']:8.1f} -> {f['waiting_rss_mb']:<7.1f}"
                    f"{f['start_s']:9.2f}s{f['wake_s']:9.2f}s"
                )
            lines.extend(_errors(s))
        say("targets (ratios in this run):")
        for name, value, target, ok in targets(backend, sections):
            say(f"    {name:48s} {value:>10s}  target {target:>8s}  {_verdict(ok)}")
    return "\n".join(lines)


def targets(backend: str, sections: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []
    step = sections.get("step")
    if step:
        for peer, target, name in (
            ("dbos", TARGET_STEP_VS_DBOS[backend], "per-step, Tether / DBOS"),
            ("floor", TARGET_STEP_VS_FLOOR, "per-step, Tether / raw floor"),
        ):
            r = _ratio(step, f"tether/{peer}")
            rows.append(
                (
                    name,
                    "-" if r is None else f"{r:.3f}x",
                    f"<= {target}x",
                    None if r is None else r <= target,
                )
            )
    tp = sections.get("throughput")
    if tp:
        for peer, target in TARGET_THROUGHPUT.items():
            r = _ratio(tp, f"tether/{peer}")
            rows.append(
                (
                    f"throughput, Tether / {peer}",
                    "-" if r is None else f"{r:.1f}x",
                    f">= {target}x",
                    None if r is None else r >= target,
                )
            )
    waiting = sections.get("waiting")
    if waiting and waiting["median"].get("tether"):
        f = waiting["median"]["tether"]
        added = f["waiting_threads"] - f["baseline_threads"]
        rows.append(("threads added by waiting runs (Tether)", f"{added:.0f}", "0", added <= 0))
    return rows


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        print("no chart: matplotlib is not installed here (make bench-peers installs it)")
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    backends = [b for b, s in results["backends"].items() if "concurrency" in s]
    if not backends:
        return False
    fig, axes = plt.subplots(1, len(backends), figsize=(6 * len(backends), 4.2), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        levels = results["backends"][backend]["concurrency"]
        for system in results["systems"]:
            xs, ys = [], []
            for level, section in levels.items():
                value = section["median"].get(system, {}).get("steps_per_s")
                if value:
                    xs.append(int(level))
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, marker="o", label=system)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("runs in flight at once")
        ax.set_ylabel("steps / s (10-step runs)")
        ax.set_title(f"{backend}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(
        f"Throughput against concurrency, {results['date']}, {results['machine']['nproc']} CPUs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, help="rounds of (a), (b), (c) (default 3)")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round (CI smoke)")
    parser.add_argument(
        "--json",
        nargs="?",
        const="auto",
        help="write the figures (default: benchmarks/results/peers-<date>.json)",
    )
    parser.add_argument(
        "--chart",
        nargs="?",
        const="auto",
        help="write the PNG (default: benchmarks/results/peers-throughput-<date>.png)",
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="SYSTEM=PATH",
        help="interpreter of one system's process (default: this one)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    backends = [b for b in args.backends.split(",") if b]
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for name, allowed, given in (
        ("backend", ("sqlite", "postgres"), backends),
        ("system", SYSTEMS, systems),
        ("workload", WORKLOADS, workloads),
    ):
        wrong = [g for g in given if g not in allowed]
        if wrong:
            parser.error(f"unknown {name} {', '.join(wrong)}; choose from {', '.join(allowed)}")
    python = dict(item.split("=", 1) for item in args.python)
    BENCH_TMP.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="peers-", dir=BENCH_TMP))
    date = _dt.date.today().isoformat()
    results: dict[str, Any] = {
        "date": date,
        "systems": systems,
        "plan": plan.__dict__,
        "machine": machine(backends, workdir),
        "backends": {},
    }
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"  [{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)

    runner = Runner(python=python, plan=plan)
    try:
        for backend in backends:
            results["backends"][backend] = compare_backend(
                runner, backend, systems, workloads, workdir, progress
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_end"] = os.getloadavg()
    results["elapsed_s"] = time.monotonic() - started
    results["versions"] = _versions(results["backends"])
    print(report(results))
    if args.json:
        path = RESULTS / f"peers-{date}.json" if args.json == "auto" else Path(args.json)
        path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    if args.chart:
        path = (
            RESULTS / f"peers-throughput-{date}.png" if args.chart == "auto" else Path(args.chart)
        )
        if chart(results, path):
            print(f"wrote {path}")
    return 0


def _versions(node: Any, found: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Each system's ``versions``, from the first round that reported them."""
    found = {} if found is None else found
    if isinstance(node, dict):
        rounds = node.get("rounds")
        if isinstance(rounds, dict):
            for system, got in rounds.items():
                for r in got:
                    if r.get("versions"):
                        found.setdefault(system, r["versions"])
        for value in node.values():
            _versions(value, found)
    return found


if __name__ == "__main__":
    sys.exit(main())
