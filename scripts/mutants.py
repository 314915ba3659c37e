"""Mutation testing of the answer readers, the tree builder, the DPO loss, the gate and the registry (`make mutants`).

Runs mutmut 3 (configured in pyproject.toml `[tool.mutmut]`: which files, which fast tests) with one worker, then
reads its per-file results and reports, per module, killed / survived / total and the kill rate, and writes them to
`bench/results/mutants-<time>.json`. mutmut maps each mutated function to the tests that call it, so each mutant
runs only those. Results are cached in mutants/: a second run retests only what changed (delete mutants/ to start
over).

    python scripts/mutants.py                      # run everything, then report
    python scripts/mutants.py --only 'services.registry*'   # rerun one module's mutants (mutmut name globs)
    python scripts/mutants.py --report             # report the last results without running (and write none)
    python scripts/mutants.py --survivors          # also list the surviving mutants' names (`mutmut show NAME`)
    python scripts/mutants.py --sample 100         # a seeded random sample of at most 100 mutants per file
    python scripts/mutants.py --sample 100 --rerun-survivors   # after adding tests: retest the sample's survivors

With `--sample`, the report counts the sampled mutants only (the same sample every time for the same seed and
mutants): a kill rate measured on 100 mutants is within about +-10 points of the file's own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
MODULES = {
    "answers": "services/tasks/answers.py",
    "trees": "ray_jobs/trees/build.py",
    "dpo_loss": "ray_jobs/tdpo/loss.py",
    "gate": "ray_jobs/evaluate/gate.py",
    "registry": "services/registry/",
}
# mutmut's exit-code verdicts (mutmut/stats.py), folded: a timeout or a crash is a kill, not-run is not counted.
KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9, 37}
SURVIVED = {0}
NO_TESTS = {5, 33}


def module_of(source: str) -> str | None:
    return next((m for m, p in MODULES.items() if source == p or (p.endswith("/") and source.startswith(p))), None)


def results_by_file() -> dict[str, dict[str, int | None]]:
    """Each mutated file's mutants and their mutmut exit codes (None: not tested yet)."""
    out = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        source = str(meta.relative_to(ROOT / "mutants"))[: -len(".meta")]
        if module_of(source) is not None:
            out[source] = json.loads(meta.read_text())["exit_code_by_key"]
    return out


def sample(cap: int, seed: int) -> set[str]:
    """At most `cap` mutants per file, drawn at random (seeded), drawn once and kept in mutants/: an edit of a source
    file renames its mutants, and the before/after comparison must stay on the same mutants (those of a function
    that changed since are dropped)."""
    kept = ROOT / "mutants" / f"sample-{cap}-{seed}.json"
    if kept.exists():
        existing = {n for codes in results_by_file().values() for n in codes}
        return set(json.loads(kept.read_text())) & existing
    chosen: set[str] = set()
    for source, codes in results_by_file().items():
        names = sorted(codes)
        chosen |= set(names if len(names) <= cap else random.Random(f"{seed}-{source}").sample(names, cap))
    kept.write_text(json.dumps(sorted(chosen), indent=0) + "\n")
    return chosen


def generate() -> None:
    """Write mutants/ (the mutated copy and its per-file result files) without testing anything."""
    code = ("from mutmut.__main__ import *\n"
            "from mutmut.__main__ import copy_src_dir, copy_also_copy_files, setup_source_paths, create_mutants\n"
            "import os; os.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def collect(only: set[str] | None = None) -> dict[str, dict]:
    per: dict[str, dict] = {m: {"killed": 0, "survived": 0, "no_tests": 0, "other": 0, "survivors": []}
                            for m in MODULES}
    for source, codes in results_by_file().items():
        module = module_of(source)
        for name, code in codes.items():
            if only is not None and name not in only:
                continue
            row = per[module]
            if code in KILLED:
                row["killed"] += 1
            elif code in SURVIVED:
                row["survived"] += 1
                row["survivors"].append(name)
            elif code in NO_TESTS:
                row["no_tests"] += 1
                row["survivors"].append(name)
            else:
                row["other"] += 1
    for row in per.values():
        tested = row["killed"] + row["survived"] + row["no_tests"]
        row["total"] = tested + row["other"]
        row["kill_rate"] = round(row["killed"] / tested, 4) if tested else None
    return per


def report(per: dict[str, dict], show_survivors: bool) -> None:
    print(f"{'module':<10} {'killed':>7} {'survived':>9} {'no tests':>9} {'not run':>8} {'total':>6} {'kill rate':>10}")
    totals = Counter()
    for module, row in per.items():
        rate = "-" if row["kill_rate"] is None else f"{row['kill_rate']:.1%}"
        print(f"{module:<10} {row['killed']:>7} {row['survived']:>9} {row['no_tests']:>9} {row['other']:>8} "
              f"{row['total']:>6} {rate:>10}")
        totals.update({k: row[k] for k in ("killed", "survived", "no_tests", "other", "total")})
    tested = totals["killed"] + totals["survived"] + totals["no_tests"]
    rate = f"{totals['killed'] / tested:.1%}" if tested else "-"
    print(f"{'all':<10} {totals['killed']:>7} {totals['survived']:>9} {totals['no_tests']:>9} {totals['other']:>8} "
          f"{totals['total']:>6} {rate:>10}")
    print("kill rate = killed / (killed + survived + no tests); 'not run' are mutants not yet tested")
    if show_survivors:
        for module, row in per.items():
            for name in row["survivors"]:
                print(f"  survived  {module:<10} {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", default=[], help="mutmut mutant-name globs to (re)run")
    ap.add_argument("--report", action="store_true", help="report the last results without running")
    ap.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    ap.add_argument("--label", default="", help="a word added to the results file's name (e.g. before, after)")
    ap.add_argument("--sample", type=int, default=0, help="test a seeded random sample of at most N mutants per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modules", nargs="*", default=[], choices=sorted(MODULES),
                    help="test only these modules' mutants (default: all five)")
    ap.add_argument("--rerun-survivors", action="store_true",
                    help="retest the mutants that survived (or had no test) last time, e.g. after adding tests")
    args = ap.parse_args()

    started = time.time()
    chosen = None
    if args.sample:
        if not results_by_file():
            generate()
        chosen = sample(args.sample, args.seed)
    if not args.report:
        names = list(args.only)
        if args.rerun_survivors:
            names = [n for row in collect(chosen).values() for n in row["survivors"]]
        elif chosen is not None and not names:  # the sample's mutants not tested yet
            names = sorted(n for codes in results_by_file().values() for n, c in codes.items()
                           if n in chosen and c is None)
        if args.modules:
            names = [n for n in names if any(n.startswith(MODULES[m].removesuffix(".py").replace("/", ".").rstrip("."))
                                             for m in args.modules)]
        env = dict(os.environ)
        # The registry tests' real adapters, trained once here instead of once per mutant (tests/registry/conftest.py).
        env.setdefault("DISTILLERY_TEST_ADAPTER_CACHE", str(ROOT / ".mutants-cache" / "adapters"))
        if names or not (args.sample or args.rerun_survivors):
            mutmut = [sys.executable, "-m", "mutmut", "run", "--max-children", "1", *names]
            rc = subprocess.run(mutmut, cwd=ROOT, env=env, check=False).returncode
            if rc != 0:
                print(f"mutmut run exited {rc}", file=sys.stderr)
    per = collect(chosen)
    report(per, args.survivors)
    if args.report and not args.label:
        return 0  # a look at the last results: nothing new to record
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    label = f"-{args.label}" if args.label else ""
    out = RESULTS_DIR / f"mutants{label}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "tool": f"mutmut {version('mutmut')}",
        "modules": MODULES, "only": args.only, "sample_per_file": args.sample or None, "seed": args.seed,
        "seconds": round(time.time() - started, 1), "results": per,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
