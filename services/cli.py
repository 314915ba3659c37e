"""The `distillery` command.

    distillery serve                      start the service (Ray Serve + vLLM) on server.host:port
    distillery prepare-model              convert the embedded model once (serve does it on first start)
    distillery adapters list              versions, status, which one `student` serves
    distillery adapters load PATH [--name NAME]   validate, register as the next version, load
    distillery adapters promote VERSION   hot-swap `student` to VERSION
    distillery adapters rollback          return `student` to the previously promoted version
    distillery adapters unload VERSION    free a loaded version (not the promoted one)
    distillery config                     print the effective configuration (secrets masked)

Adapter commands talk to the running service over HTTP (`--url`, default from the config) with the admin key
from DISTILLERY_SERVER__ADMIN_KEY.
"""

from __future__ import annotations

import argparse
import json
import sys
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
    from services.launcher import serve_forever

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if overrides:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    serve_forever(settings)


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
