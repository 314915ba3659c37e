"""Debate overhead on serving: the same closed-loop chat load with 0% and 100% of requests captured for debates.

    python bench/debate_overhead.py [--duration 90] [--concurrency 4] [--repeats 1] [--quick]

Each configuration starts a fresh `distillery serve` (embedded defaults: three built-in reference teachers, the
debate worker yielding the student to traffic), sends arithmetic word problems from the eval split for
`--duration` seconds at `--concurrency`, and records throughput and latency percentiles, plus what the debate
service did meanwhile (items captured, debates finished, teacher calls). Configurations alternate (0%, 100%,
0%, ...) so drift on the machine hits both. Target: p50 and p99 latency at 100% within 5% of 0%.
Prints a table; writes bench/results/debate_overhead-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, run_load, start, stop, table, wait_ready, write_json
from services.config import Settings
from services.student.model_prep import resolve_base_model
from services.tasks.arithmetic import generate


def store_counts(data_dir: Path) -> dict[str, Any]:
    db = data_dir / "distillery.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as c:
        q = dict(c.execute("select status, count(*) from capture_queue group by status").fetchall())
        debates = c.execute("select count(*) from debates where status='done'").fetchone()[0]
        teacher_calls = c.execute("select count(*) from mag_nodes where role='teacher'").fetchone()[0]
        student_turns = c.execute("select count(*) from mag_nodes where role='student'").fetchone()[0]
    return {"captured": sum(q.values()), "queue": q, "debates_done": debates, "teacher_calls": teacher_calls,
            "student_turns": student_turns}


async def measure(url: str, args: argparse.Namespace, questions: list[str]) -> Any:
    await run_load(url, label="warmup", concurrency=2, requests=4, max_tokens=args.max_tokens,
                   headers={"x-distillery-no-distill": "1"}, questions=questions)
    res, _ = await run_load(url, label="load", concurrency=args.concurrency, requests=0, duration_s=args.duration,
                            max_tokens=args.max_tokens, questions=questions)
    return res


def run_config(rate: float, rep: int, args: argparse.Namespace, model_dir: str, work: Path,
               questions: list[str]) -> dict[str, Any]:
    data = work / f"data-{rate}-{rep}"
    port = 8110 + rep * 2 + (1 if rate else 0)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILLERY_DATA_DIR": str(data),
           "DISTILLERY_STUDENT__MODEL": model_dir, "DISTILLERY_SERVER__PORT": str(port),
           "DISTILLERY_CAPTURE__SAMPLE_RATE": str(rate), "DISTILLERY_SERVER__MAX_CONCURRENT_REQUESTS": "256"}
    proc = start([sys.executable, "-m", "services.cli", "serve"], env, work / f"serve-{rate}-{rep}.log")
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/ready", 300, proc)
        res = asyncio.run(measure(f"http://127.0.0.1:{port}", args, questions))
        counts = store_counts(data)
    finally:
        stop(proc)
    row = {"sample_rate": rate, "repeat": rep, "rps": res.rps, "p50_s": res.p50_s, "p99_s": res.p99_s,
           "requests": res.requests, "failed": res.failed, **counts}
    print(f"  sample {rate:.0%} #{rep}: {res.rps:.2f} req/s  p50 {res.p50_s:.3f}s  p99 {res.p99_s:.3f}s  "
          f"captured {counts.get('captured', 0)}  debates done {counts.get('debates_done', 0)}  "
          f"teacher calls {counts.get('teacher_calls', 0)}  student turns {counts.get('student_turns', 0)}",
          flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=90)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="30 s per configuration (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.duration = 30
    model_dir = resolve_base_model(Settings(), print)
    work = Path(tempfile.mkdtemp(prefix="distillery-bench-debate-"))
    questions = [p.question for p in generate("eval", 64)]
    print(f"machine: {machine()}\nwork dir: {work}", flush=True)
    rows = [run_config(rate, rep, args, model_dir, work, questions)
            for rep in range(args.repeats) for rate in (0.0, 1.0)]

    def mean(rate: float, key: str) -> float:
        xs = [r[key] for r in rows if r["sample_rate"] == rate]
        return sum(xs) / len(xs)

    summary = {k: round(mean(1.0, k) / mean(0.0, k) - 1, 4) for k in ("p50_s", "p99_s", "rps")}
    print()
    print(table(rows, ["sample_rate", "repeat", "rps", "p50_s", "p99_s", "requests", "failed", "captured",
                       "debates_done", "teacher_calls", "student_turns"]))
    print(f"\n100% vs 0% sampling: p50 {summary['p50_s']:+.1%}, p99 {summary['p99_s']:+.1%}, "
          f"throughput {summary['rps']:+.1%}  (target: latency within +5%)")
    path = write_json("debate_overhead", {"machine": machine(), "args": vars(args), "rows": rows,
                                          "change_100_vs_0": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
