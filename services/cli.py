"""The `distillery` command.

    distillery serve                      start the service (Ray Serve + vLLM) on server.host:port
    distillery prepare-model              convert the embedded model once (serve does it on first start)
    distillery adapters list              versions, status, which one `student` serves
    distillery adapters load PATH [--name NAME]   validate, register as the next version, load
    distillery adapters promote VERSION   hot-swap `student` to VERSION
    distillery adapters rollback          return `student` to the previously promoted version
    distillery adapters unload VERSION    free a loaded version (not the promoted one)
    distillery config                     print the effective configuration (secrets masked)
    distillery mags list [--usable] [--json]      recorded debates (Multi-Agent Interaction Graphs)
    distillery mags show ID [--json] [--full]     one debate, round by round
    distillery debate --dataset FILE.jsonl [--limit N]   batch debates over labelled data (service running)
    distillery teacher serve [--name N] [--error-rate R] ...   a reference teacher as an OpenAI endpoint
    distillery teachers check [--json]    ask every configured teacher one question and one review; exit 1
                                          unless every answer and score was read
    distillery tasks --split train|eval --n N     write the built-in arithmetic task suite as JSONL
    distillery train --once               run one training cycle now, in the foreground (service running)
    distillery train --api                ask the running service to start a cycle (POST /admin/train)
    distillery jobs [ID] [--json]         training cycles: outcome, phase, data, evaluation
    distillery purge [--yes] [--json]     delete captures, MAGs, jobs and adapter files past `retention.*`
                                          (without --yes: print what would be deleted, delete nothing)
    distillery experiment [--quick]       the papers' ablation on the task suite (results.json, table, chart)
    distillery experiment --task banking77   the loop on BANKING77 traffic through the gateway (base vs promoted)

`mags` reads the store directly (no service needed). Adapter commands talk to the running service over
HTTP (`--url`, default from the config) with the admin key
from DISTILLERY_SERVER__ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.config import Settings, load_settings


def _client(settings: Settings, url: str | None) -> Any:
    import httpx

    headers = {}
    if settings.server.admin_key is not None:
        headers["Authorization"] = f"Bearer {settings.server.admin_key.get_secret_value()}"
    base = url or f"http://{settings.server.host}:{settings.server.port}"
    return httpx.Client(base_url=base, headers=headers, timeout=120)


def _call(settings: Settings, url: str | None, method: str, path: str, body: Any = None) -> dict[str, Any]:
    import httpx

    try:
        with _client(settings, url) as c:
            r = c.request(method, path, json=body)
    except httpx.ConnectError:
        sys.exit(f"error: no Distillery service answers at {url or 'the configured address'} (is it running?)")
    data = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code >= 400:
        msg = data.get("error", {}).get("message", r.text) if isinstance(data, dict) else r.text
        sys.exit(f"error ({r.status_code}): {msg}")
    return data


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    from services.gateway.exposure import UnsafeExposure
    from services.launcher import serve_forever

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    try:
        serve_forever(settings)
    except UnsafeExposure as e:  # the operator's to fix: say how, not a traceback
        sys.exit(f"error: refusing to start: {e}")


def cmd_prepare_model(args: argparse.Namespace, settings: Settings) -> None:
    from services.student.model_prep import resolve_base_model

    print(resolve_base_model(settings, print))


def cmd_adapters(args: argparse.Namespace, settings: Settings) -> None:
    url = args.url
    if args.action == "list":
        data = _call(settings, url, "GET", "/admin/adapters")
        if args.json:
            print(json.dumps(data, indent=2))
            return
        print(f"`{data['alias']}` serves: {data['serving']}   (base model: {data['base_model']})")
        rows = [[a["version"], a["label"] or "", a["status"], "yes" if a["loaded"] else "", str(a["rank"]),
                 a["created_at"][:19], a["path"]] for a in data["adapters"]]
        print(_table(rows, ["VERSION", "LABEL", "STATUS", "LOADED", "RANK", "CREATED", "PATH"]) if rows
              else "no adapters registered")
    elif args.action == "load":
        body = {"lora_name": args.name or Path(args.target).name, "lora_path": str(Path(args.target).resolve())}
        data = _call(settings, url, "POST", "/v1/load_lora_adapter", body)
        print(f"registered and loaded {data['version']} ({data['load_seconds']}s) from {data['path']}")
    elif args.action == "promote":
        data = _call(settings, url, "POST", f"/admin/adapters/{args.target}/promote", {"reason": args.reason})
        print(f"promoted: `student` now serves {data['promoted']} (swap {data['swap_seconds']}s)")
    elif args.action == "rollback":
        data = _call(settings, url, "POST", "/admin/adapters/rollback", {"reason": args.reason})
        print(f"rolled back: `student` now serves {data['promoted']} (swap {data['swap_seconds']}s)")
    elif args.action == "unload":
        data = _call(settings, url, "POST", "/v1/unload_lora_adapter", {"lora_name": args.target})
        print(f"unloaded {data['version']}")


def cmd_config(args: argparse.Namespace, settings: Settings) -> None:
    print(json.dumps(settings.public_dict(), indent=2, default=str))


def cmd_mags(args: argparse.Namespace, settings: Settings) -> None:
    from services.debate.render import SUMMARY_HEADER, render_mag, summary_row
    from services.store.db import Database
    from services.store.mags import MagStore

    db = Database(settings.db_url)
    db.create_all()
    store = MagStore(db)
    if args.action == "list":
        mags = store.list(limit=args.limit, usable=True if args.usable else None, status=args.status)
        if args.json:
            print(json.dumps([m.to_dict() for m in mags], indent=2, default=str))
            return
        stats = store.stats()
        print(f"queue: {stats['queue'] or 'empty'}   usable MAGs: {stats['usable']}   "
              f"peer review accepted {stats['accepted']}/{stats['reviewed']}")
        print(_table([summary_row(m) for m in mags], SUMMARY_HEADER) if mags else "no debates recorded yet")
        return
    if args.id is None or not args.id.isdigit():
        sys.exit("error: `distillery mags show` needs a debate id (see `distillery mags list`)")
    mag = store.get(int(args.id))
    if mag is None:
        sys.exit(f"error: no debate with id {args.id}")
    print(json.dumps(mag.to_dict(), indent=2, default=str) if args.json else render_mag(mag, full=args.full))


def cmd_debate(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from services.debate.batch import run_batch

    path = Path(args.dataset)
    if not path.is_file():
        sys.exit(f"error: no dataset file at {path}")
    url = args.url or f"http://{settings.server.host}:{settings.server.port}"
    _call(settings, url, "GET", "/ready")  # fails with a clear message when no service runs
    total = args.limit
    t0 = time.monotonic()

    def progress(s: Any) -> None:
        done = f"{s.debates}/{total}" if total else str(s.debates)
        sys.stderr.write(f"\rdebates {done}  solved {s.outcomes.get('solved', 0)}  "
                         f"unsolved {s.outcomes.get('unsolved', 0)}  {time.monotonic() - t0:.0f}s   ")
        sys.stderr.flush()

    try:
        summary = asyncio.run(run_batch(settings, path, url, args.limit, args.concurrency, progress))
    except ValueError as e:
        sys.exit(f"error: {e}")
    sys.stderr.write("\n")
    print(json.dumps(summary.to_dict(), indent=2) if args.json else summary.render())


def cmd_teacher(args: argparse.Namespace, settings: Settings) -> None:
    import uvicorn

    from services.config import ReferenceProfile, TeacherConfig
    from services.teachers.server import build_teacher_app

    if args.configured:
        teachers = [t for t in settings.debate.teachers if t.reference is not None]
    else:
        profile = ReferenceProfile(error_rate=args.error_rate, seed=args.seed, latency_s=args.latency,
                                   **({"error_styles": args.error_styles} if args.error_styles else {}))
        teachers = [TeacherConfig(name=args.name, reference=profile)]
    where = f"http://{args.host}:{args.port}"
    for t in teachers:
        print(f"reference teacher `{t.name}` at {where}/{t.name}/v1"
              + (f" (and {where}/v1)" if len(teachers) == 1 else ""))
    uvicorn.run(build_teacher_app(teachers), host=args.host, port=args.port, log_level="warning")


def cmd_teachers(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from services.launcher import teachers_url
    from services.teachers.check import HEADER, check_configured, table_row

    rows = asyncio.run(check_configured(settings, teachers_url(settings)))
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        print(_table([table_row(r) for r in rows], HEADER))
    if not all(r.passed for r in rows):
        sys.exit(1)


def cmd_tasks(args: argparse.Namespace, settings: Settings) -> None:
    from services.tasks.arithmetic import generate

    out = open(args.out, "w") if args.out else sys.stdout  # noqa: SIM115
    for p in generate(args.split, args.n, args.seed):
        out.write(json.dumps({"question": p.question, "answer": p.answer, "steps": p.steps}) + "\n")
    if args.out:
        out.close()
        print(f"wrote {args.n} {args.split} problems to {args.out}", file=sys.stderr)


def cmd_train(args: argparse.Namespace, settings: Settings) -> None:
    if args.api:
        job = _call(settings, args.url, "POST", "/admin/train")
        print(f"training job {job['id']} started by the service; follow it with `distillery jobs {job['id']}`")
        return
    from ray_jobs.cycle import run_job
    from services.scheduler.scheduler import fresh_mags
    from services.store.controls import Controls
    from services.store.db import Database
    from services.store.jobs import JobRunning, JobStore
    from services.store.mags import MagStore

    db = Database(settings.db_url)
    db.create_all()
    if args.if_due and Controls(db).paused():
        print("distillation is paused (distillery distillation resume): no job started")
        return
    if args.if_due and fresh_mags(MagStore(db), JobStore(db).last()) == 0:
        print("no usable MAG finished since the last cycle started: nothing to train on, no job started")
        return
    try:
        job_id = JobStore(db).start("cli")
    except JobRunning as e:
        sys.exit(f"error: {e}")
    try:
        res = run_job(settings, job_id, url=args.url)
    except Exception as e:
        sys.exit(f"error: training job {job_id} failed: {type(e).__name__}: {e}")
    print(f"job {job_id}: {res.outcome}: {res.reason}")


def cmd_distillation(args: argparse.Namespace, settings: Settings) -> None:
    if args.action == "status":
        state = _call(settings, args.url, "GET", "/admin/distillation")
    else:
        state = _call(settings, args.url, "POST", f"/admin/distillation/{args.action}", {"reason": args.reason})
    since = f" since {state['since']}" if state["since"] else ""
    why = f" ({state['reason']})" if state["reason"] else ""
    print(f"distillation is {'PAUSED' if state['paused'] else 'running'}{since}{why}")


def cmd_db(args: argparse.Namespace, settings: Settings) -> None:
    from services.store.db import Database
    from services.store.migrate import TargetNotEmpty, copy_store

    source = args.source or settings.db_url
    print(f"copying {Database.describe(source)} -> {Database.describe(args.to)}")
    try:
        counts = copy_store(Database(source), Database(args.to), progress=lambda s: print(f"  {s}"))
    except TargetNotEmpty as e:
        sys.exit(f"error: {e}")
    print(f"done: {sum(counts.values())} rows; now point DISTILLERY_DATABASE_URL at the target and restart")


def cmd_purge(args: argparse.Namespace, settings: Settings) -> None:
    from services.registry import AdapterRegistry
    from services.scheduler.retention import Retention

    model = settings.student.model  # only read to find versions, never to validate one
    registry = AdapterRegistry.from_settings(settings, base_id=model, model_path=model)
    report = Retention(settings, registry.db, registry).run(dry_run=not args.yes)
    if args.json:
        print(json.dumps({"dry_run": not args.yes, **report.as_dict()}, indent=2))
        return
    verb = "deleted" if args.yes else "would delete"
    for kind, items in report.as_dict().items():
        if isinstance(items, list):
            print(f"{verb} {len(items)} {kind.replace('_', ' ')}" + (": " + " ".join(map(str, items)) if items else ""))
    if report.store.mags_skipped:
        print(f"MAGs kept this time: {report.store.mags_skipped}")
    if not args.yes:
        print("dry run: nothing was deleted; run `distillery purge --yes` to delete")


def _job_line(j: dict[str, Any]) -> list[str]:
    ev = j["metrics"].get("eval", {})
    acc = " ".join(f"{k}={v['accuracy']:.3f}" for k, v in ev.items())
    return [str(j["id"]), j["started_at"][:19], j["trigger"], j["status"], j["outcome"] or "-", j["phase"],
            str(j["data"].get("mags", "-")), str(j["data"].get("tree_pairs", "-")), j["candidate"] or "-", acc]


def _print_task_evals(j: dict[str, Any]) -> None:
    """The newest job's evaluation per task: what the gate compared and protected."""
    rows = [[model, task, f"{r['accuracy']:.3f}", f"{r['correct']}/{r['n']}", f"{r['mean_total_tokens']:.1f}",
             f"{r.get('weight', 0):.2f}"]
            for model, ev in j["metrics"].get("eval", {}).items() for task, r in ev.get("tasks", {}).items()]
    if rows:
        print(f"\njob {j['id']} per task:")
        print(_table(rows, ["MODEL", "TASK", "ACCURACY", "CORRECT", "TOKENS/QUERY", "WEIGHT"]))


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> None:
    from services.store.db import Database
    from services.store.jobs import JobStore

    db = Database(settings.db_url)
    db.create_all()
    store = JobStore(db)
    if args.id is not None:
        job = store.get(args.id)
        if job is None:
            sys.exit(f"error: no training job {args.id}")
        print(json.dumps(job.as_dict(), indent=2, default=str))
        return
    jobs = [j.as_dict() for j in store.list(args.limit)]
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return
    print(_table([_job_line(j) for j in jobs], ["ID", "STARTED", "TRIGGER", "STATUS", "OUTCOME", "PHASE", "MAGS",
                                                 "PAIRS", "CANDIDATE", "EVAL ACCURACY"])
          if jobs else "no training jobs yet")
    for j in jobs[:1]:
        _print_task_evals(j)
        if j["reason"] or j["error"]:
            print(f"\nlatest ({j['id']}): {j['error'] or j['reason']}")


def cmd_experiment(args: argparse.Namespace, settings: Settings) -> None:
    from ray_jobs.experiment.report import cycles_table, table
    from ray_jobs.experiment.run import FULL, QUICK, Experiment

    if args.task is not None:
        from ray_jobs.experiment.traffic import DEFAULT_DATA, TrafficDemo, TrafficPlan

        tplan = TrafficPlan(task=args.task)
        for key in ("cycles", "requests_per_cycle"):
            if getattr(args, key):
                setattr(tplan, key, getattr(args, key))
        data = Path(args.data) if args.data else DEFAULT_DATA / args.task
        if not (data / "train.jsonl").is_file():
            sys.exit(f"error: no {data / 'train.jsonl'}: give the dataset folder with --data")
        results = TrafficDemo(settings, Path(args.out), tplan, data, progress=lambda m: print(m, flush=True)).run()
        print()
        print(table(results))
        print()
        print(cycles_table(results))
        return

    plan = QUICK if args.quick else FULL
    if args.train_questions:
        plan.train_questions = args.train_questions
    if args.eval_questions:
        plan.eval_questions = args.eval_questions
    out = Path(args.out)
    results = Experiment(settings, out, plan, progress=lambda m: print(m, flush=True)).run()
    print()
    print(table(results))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillery", description="Distillery: serve a student, distill it daily.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="start the service")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("prepare-model", help="convert the embedded model into the data directory")
    s.set_defaults(func=cmd_prepare_model)

    s = sub.add_parser("adapters", help="list, load, promote, roll back adapter versions")
    s.add_argument("action", choices=["list", "load", "promote", "rollback", "unload"])
    s.add_argument("target", nargs="?", help="adapter folder (load) or version (promote, unload)")
    s.add_argument("--name", help="label for a loaded adapter (default: the folder name)")
    s.add_argument("--reason", help="recorded with a promotion or rollback")
    s.add_argument("--url", help="service URL (default: http://server.host:server.port)")
    s.add_argument("--json", action="store_true", help="machine-readable output (list)")
    s.set_defaults(func=cmd_adapters)

    s = sub.add_parser("config", help="print the effective configuration")
    s.set_defaults(func=cmd_config)

    s = sub.add_parser("mags", help="recorded debates (Multi-Agent Interaction Graphs)")
    s.add_argument("action", choices=["list", "show"])
    s.add_argument("id", nargs="?", help="debate id (show)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--usable", action="store_true", help="only MAGs usable for training")
    s.add_argument("--status", choices=["running", "done", "interrupted", "failed", "superseded"])
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--full", action="store_true", help="show: every line of every output")
    s.set_defaults(func=cmd_mags)

    s = sub.add_parser("debate", help="run debates over a labelled JSONL dataset (question, answer)")
    s.add_argument("--dataset", required=True, help="JSONL with `question` and `answer` (GSM8K's `#### X` works)")
    s.add_argument("--limit", type=int, help="first N items only")
    s.add_argument("--concurrency", type=int, default=2, help="debates at once")
    s.add_argument("--url", help="service URL (default: http://server.host:server.port)")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=cmd_debate)

    s = sub.add_parser("teacher", help="run a reference teacher (OpenAI-compatible) on its own")
    s.add_argument("action", choices=["serve"])
    s.add_argument("--name", default="reference")
    s.add_argument("--error-rate", type=float, default=0.0)
    s.add_argument("--error-styles", nargs="+", choices=["wrong_operation", "off_by_one", "dropped_step"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    s.add_argument("--configured", action="store_true", help="serve every reference teacher of the config")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    s.set_defaults(func=cmd_teacher)

    s = sub.add_parser("teachers", help="check every configured teacher: one answer and one peer review, read")
    s.add_argument("action", choices=["check"])
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_teachers)

    s = sub.add_parser("tasks", help="write the built-in arithmetic word problems as JSONL")
    s.add_argument("--split", choices=["train", "eval"], default="train")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="file (default: stdout)")
    s.set_defaults(func=cmd_tasks)

    s = sub.add_parser("train", help="run a training cycle (trees -> SFT -> T-DPO -> eval -> gate -> promote)")
    how = s.add_mutually_exclusive_group(required=True)
    how.add_argument("--once", action="store_true", help="run one cycle here, in the foreground")
    how.add_argument("--api", action="store_true", help="ask the running service to start one (POST /admin/train)")
    s.add_argument("--if-due", action="store_true",
                   help="with --once: start only if usable MAGs finished since the last cycle (for cron triggers)")
    s.add_argument("--url", help="service URL (default: http://server.host:server.port)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("distillation", help="pause or resume capture, debates and scheduled training (no restart)")
    s.add_argument("action", choices=["status", "pause", "resume"])
    s.add_argument("--reason", help="recorded with the switch")
    s.add_argument("--url", help="service URL (default: http://server.host:server.port)")
    s.set_defaults(func=cmd_distillation)

    s = sub.add_parser("db", help="the store's database")
    s.add_argument("action", choices=["copy"], help="copy: every row into an empty database (SQLite -> Postgres)")
    s.add_argument("--to", required=True, help="target SQLAlchemy URL, e.g. postgresql+psycopg://u:p@host/db")
    s.add_argument("--from", dest="source", help="source URL (default: the configured store)")
    s.set_defaults(func=cmd_db)

    s = sub.add_parser("purge", help="delete what is past the retention settings (retention.*); a dry run by default")
    s.add_argument("--yes", action="store_true", help="delete (without it: only print what would be deleted)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_purge)

    s = sub.add_parser("jobs", help="training cycles and their outcomes")
    s.add_argument("id", nargs="?", type=int, help="one job, in full")
    s.add_argument("--limit", type=int, default=20)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)

    s = sub.add_parser("experiment", help="the papers' ablation on the task suite with the reference teachers")
    s.add_argument("--quick", action="store_true", help="a small run (minutes) instead of the full one")
    s.add_argument("--out", default="experiment", help="output folder (results.json, results.md, results.png)")
    s.add_argument("--train-questions", type=int, help="debated train questions (default: by plan)")
    s.add_argument("--eval-questions", type=int, help="held-out questions (default: by plan)")
    s.add_argument("--task", help="instead: the loop on a dataset's traffic sent through the gateway as its app "
                   "would (e.g. banking77: ../shared/data/banking77)")
    s.add_argument("--data", help="--task: the dataset folder (train.jsonl, labels.json, system_prompt.txt)")
    s.add_argument("--cycles", type=int, help="--task: training cycles, each after a batch of traffic")
    s.add_argument("--requests-per-cycle", type=int, help="--task: messages sent before each cycle")
    s.set_defaults(func=cmd_experiment)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "adapters" and args.action in {"load", "promote", "unload"} and not args.target:
        sys.exit(f"error: `distillery adapters {args.action}` needs a target")
    try:
        settings = load_settings()
    except Exception as e:  # a config error is the user's to fix: say what, not a traceback
        sys.exit(f"error: invalid configuration: {e}")
    args.func(args, settings)


if __name__ == "__main__":
    main()
