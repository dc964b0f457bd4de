"""The `genqueue` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _settings(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from genqueue.settings import Settings

    overrides: dict[str, Any] = {}
    if getattr(args, "models_dir", None):
        overrides["models_dir"] = Path(args.models_dir)
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    try:
        return Settings(**overrides)
    except ValidationError as e:  # a GENQUEUE_* variable out of range: one line per variable, no traceback
        problems = "; ".join(_problem(err) for err in e.errors())
        raise SystemExit(_fail(f"invalid settings: {problems}")) from None


def _problem(err: Any) -> str:
    if not err["loc"]:  # a check across fields names its variables itself
        return str(err["msg"]).removeprefix("Value error, ")
    return f"GENQUEUE_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}"


def _ready(s: Any, service: str, **checks: bool) -> Any:
    """Logging for ``service``, then the start-up checks: a setting the process cannot run with stops it
    here in one line that names the variable."""
    from genqueue import logs
    from genqueue.preflight import Misconfigured, check

    logs.configure(s.resolved_log_format, s.log_level, service)
    try:
        check(s, **checks)
    except Misconfigured as e:
        raise SystemExit(_fail(str(e))) from None
    return s


def _fail(msg: str) -> int:
    print(f"genqueue: error: {msg}", file=sys.stderr)
    return 2


def _migrated_db(s: Any) -> Any:
    """The database of settings ``s``, or exit with one line when its schema is missing or out of date."""
    from genqueue.db.session import Database, NotMigrated, ensure_migrated

    db = Database.from_settings(s)
    try:
        ensure_migrated(db)
    except NotMigrated as e:
        db.dispose()
        raise SystemExit(_fail(str(e))) from None
    return db


def cmd_db(args: argparse.Namespace) -> int:
    from genqueue.db.session import head_revision, upgrade

    s = _settings(args)
    try:
        upgrade(s.sqlalchemy_url)
    except Exception as e:
        return _fail(f"cannot migrate {s.sqlalchemy_url.split('@')[-1]}: {e}")
    print(f"database at revision {head_revision()}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from genqueue import heap
    from genqueue.db.session import NotMigrated
    from genqueue_api.app import create_app

    s = _ready(_settings(args), "api", models=True)
    try:
        app = create_app(s)
    except NotMigrated as e:
        return _fail(str(e))
    state = app.state.genqueue

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            # Held long polls answer now, with the job as it stands, instead of being cancelled (a 500) when
            # the graceful timeout runs out; clients then wait again on the restarted API.
            state.stopping = True
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=args.host or s.api_host, port=args.port or s.api_port, log_level="warning",
                            timeout_graceful_shutdown=10)
    heap.settle(s.gc_gen0_threshold)
    Server(config).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from genqueue_worker.main import run

    models = [m for m in (args.models or "").split(",") if m] or None
    run(_ready(_settings(args), "worker", models=True), models)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    from genqueue.webhooks.consumer import run

    if args.concurrency < 1:
        return _fail("--concurrency must be at least 1")
    try:
        run(_settings(args), concurrency=args.concurrency)
    except ValueError as e:
        return _fail(str(e))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import time

    from genqueue.db.session import Database
    from genqueue.enums import Role
    from genqueue.stack import Stack
    from genqueue_api.auth import create_key

    s = _settings(args)
    stack = Stack(s, workers=args.workers, port=args.port or s.api_port)
    stack.start()
    db = Database.from_settings(s)
    with db.session() as session:
        _, secret = create_key(session, "serve-admin", Role.admin)
    print(f"genqueue is up at {stack.base_url}  (docs {stack.base_url}/docs)")
    print(f"redis: {stack.broker_url}\ndatabase: {s.sqlalchemy_url}\nlogs: {stack.log_dir}")
    print(f"admin key for this session: {secret}")
    stop = False

    def _on_signal(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    while not stop and all(p.poll() is None for p in stack.procs):
        time.sleep(0.5)
    stack.stop()
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    from genqueue import beat

    s = _ready(_settings(args), "beat")
    _migrated_db(s).dispose()
    return beat.run(s)


def cmd_gc(args: argparse.Namespace) -> int:
    import datetime as dt

    from genqueue import retention

    s = _ready(_settings(args), "gc")
    days = s.retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        return _fail("nothing to do: set GENQUEUE_RETENTION_DAYS or pass --older-than-days (> 0)")
    db = _migrated_db(s)
    try:
        done = retention.expire(db, dt.timedelta(days=days), batch_size=s.retention_batch_size,
                                pause_s=s.retention_pause_ms / 1000)
    finally:
        db.dispose()
    print(f"deleted the outputs of {done.jobs} jobs that ended over {days:g} days ago ({done.images} images)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from genqueue import queue, status
    from genqueue.db.session import Database
    from genqueue.registry import Registry

    s = _ready(_settings(args), "status", redis=True)
    if not s.redis_url:
        return _fail("GENQUEUE_REDIS_URL: status reads the deployment's Redis; set it (the embedded one is "
                     "private to `genqueue serve`)")
    db = Database.from_settings(s)
    try:
        known = Registry(s.models_dir).names() if s.models_dir.is_dir() else []
        snap = status.snapshot(db, queue.redis_client(s.redis_url), known)
    except Exception as e:  # e.g. an un-migrated database: one line, not a traceback
        return _fail(f"cannot read the deployment's state: {e.__class__.__name__}: {str(e).splitlines()[0]}")
    finally:
        db.dispose()
    print(json.dumps(snap, indent=2) if args.json else status.render(snap))
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from genqueue import settings_doc

    if args.write_readme:
        changed = settings_doc.write_readme(Path(args.write_readme))
        print(f"{args.write_readme}: {'updated' if changed else 'already current'}")
        return 0
    if args.markdown:
        print(settings_doc.markdown())
        return 0
    from genqueue.preflight import masked

    s = _settings(args)
    for name in type(s).model_fields:
        value = getattr(s, name)
        if value and name.endswith("_secret"):  # never print credentials
            value = "***"
        elif value and name.endswith("_url"):
            value = masked(value)
        print(f"GENQUEUE_{name.upper()}={'' if value is None else value}")
    return 0


def cmd_api_docs(args: argparse.Namespace) -> int:
    try:
        from genqueue_api import apidoc
    except ImportError as e:
        return _fail(f"the API reference needs the [server] extra (pip install 'genqueue[server]'): {e}")
    reference = apidoc.render(apidoc.served_schema())
    if args.write:
        doc = Path(args.write)
        if doc.exists() and apidoc.block(doc) is None:
            return _fail(f"{doc} has no HTTP reference markers; add the two marker lines from "
                         "genqueue_api/apidoc.py where the reference belongs")
        print(f"{doc}: {'updated' if apidoc.write(doc, reference) else 'already current'}")
        return 0
    print(reference, end="")
    return 0


def _client(args: argparse.Namespace) -> Any:
    from genqueue.client import Client

    key = args.key or os.environ.get("GENQUEUE_API_KEY")
    if not key:
        raise SystemExit("genqueue: error: no API key: pass --key or set GENQUEUE_API_KEY")
    url = args.url or os.environ.get("GENQUEUE_URL") or f"http://127.0.0.1:{os.environ.get('GENQUEUE_API_PORT', '8000')}"
    return Client(url, key)


def cmd_submit(args: argparse.Namespace) -> int:
    from genqueue.client import TERMINAL, GenqueueError

    try:
        inp: dict[str, Any] = json.loads(args.input) if args.input else {}
    except json.JSONDecodeError as e:
        return _fail(f"--input is not valid JSON: {e}")
    if args.prompt is not None:
        inp["prompt"] = args.prompt
    if args.wait < 0:
        return _fail("--wait must be >= 0 seconds")
    with _client(args) as c:
        deadline = time.monotonic() + args.wait
        try:
            job = c.submit(args.model, inp, priority=args.priority, review=args.review, wait=args.wait)
            if args.wait:
                job = _wait_until(c, job, deadline)
        except GenqueueError as e:
            return _fail(f"{e.code}: {e.message}")
    print(json.dumps(job, indent=2))
    if args.wait and job["status"] not in TERMINAL:
        # Accepted and kept (the JSON above has its id), but not finished in time: say so in the exit status.
        return _fail(f"job {job['id']} is still {job['status']} after {args.wait}s; `genqueue get {job['id']}` shows it later")
    return 0


def _wait_until(c: Any, job: dict[str, Any], deadline: float) -> dict[str, Any]:
    """The job once it ends, or as it stands at ``deadline`` (server-side long polls in between)."""
    from genqueue.client import TERMINAL
    left = deadline - time.monotonic()
    if job["status"] in TERMINAL or left <= 0:
        return job
    try:
        return c.wait(job["id"], timeout=left)  # type: ignore[no-any-return]
    except TimeoutError:
        return c.get(job["id"])  # type: ignore[no-any-return]


def cmd_get(args: argparse.Namespace) -> int:
    from genqueue.client import TERMINAL, GenqueueError

    if args.timeout < 0:
        return _fail("--timeout must be >= 0 seconds")
    wait = args.timeout if args.wait else 0
    with _client(args) as c:
        try:
            job = _wait_until(c, c.get(args.job_id), time.monotonic() + wait)
        except GenqueueError as e:
            return _fail(f"{e.code}: {e.message}")
    print(json.dumps(job, indent=2))
    if args.wait and job["status"] not in TERMINAL:
        return _fail(f"job {job['id']} is still {job['status']} after {wait}s")
    return 0


def cmd_export(argv: list[str]) -> int:
    try:
        from genqueue_exporter.cli import run
    except ImportError as e:
        return _fail(f"the exporter needs the [export] extra (pip install 'genqueue[export]'): {e}")
    return run(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genqueue", description="genqueue: a job queue for AI content generation")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--models-dir", help="models folder (GENQUEUE_MODELS_DIR)")
        sp.add_argument("--data-dir", help="data folder for SQLite and embedded Redis (GENQUEUE_DATA_DIR)")

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade"])
    common(db)
    db.set_defaults(func=cmd_db)

    from genqueue import keyscli

    keyscli.add_parser(sub, common)

    api = sub.add_parser("api", help="run the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    common(api)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a GPU worker (one per GPU)")
    worker.add_argument("--models", help="comma-separated model names (default: every model found)")
    common(worker)
    worker.set_defaults(func=cmd_worker)

    hooks = sub.add_parser("webhooks", help="run the webhook sender (the `webhooks` queue and its relay)")
    hooks.add_argument("--concurrency", type=int, default=8, help="attempts under way at once (default 8)")
    common(hooks)
    hooks.set_defaults(func=cmd_webhooks)

    serve = sub.add_parser("serve", help="run Redis (embedded unless configured), the API and workers")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    common(serve)
    serve.set_defaults(func=cmd_serve)

    beat = sub.add_parser("beat", help="run the periodic duties (the reconciler) in one process")
    common(beat)
    beat.set_defaults(func=cmd_beat)

    gc = sub.add_parser("gc", help="delete the outputs and images of jobs past the retention period")
    gc.add_argument("--older-than-days", type=float, help="override GENQUEUE_RETENTION_DAYS for this run")
    common(gc)
    gc.set_defaults(func=cmd_gc)

    st = sub.add_parser("status", help="queues, live workers, jobs by status, the oldest queued job")
    st.add_argument("--json", action="store_true", help="print it as JSON")
    common(st)
    st.set_defaults(func=cmd_status)

    se = sub.add_parser("settings", help="the effective settings, or the settings reference")
    se.add_argument("--markdown", action="store_true", help="print the reference table (as in README.md)")
    se.add_argument("--write-readme", metavar="PATH", help="rewrite the reference table inside this README")
    se.set_defaults(func=cmd_settings)

    ad = sub.add_parser("api-docs", help="the HTTP reference rendered from the app's OpenAPI schema (docs/api.md)")
    ad.add_argument("--markdown", action="store_true", help="print the reference (the default)")
    ad.add_argument("--write", metavar="PATH", help="rewrite the reference inside this file (docs/api.md)")
    ad.set_defaults(func=cmd_api_docs)

    for name, fn in (("submit", cmd_submit), ("get", cmd_get)):
        sp = sub.add_parser(name, help=f"{name} a job through the API")
        sp.add_argument("--url", help="API base URL (GENQUEUE_URL)")
        sp.add_argument("--key", help="API key (GENQUEUE_API_KEY)")
        if name == "submit":
            sp.add_argument("--model", required=True)
            sp.add_argument("--prompt")
            sp.add_argument("--input", help="the job input as JSON")
            sp.add_argument("--priority", type=int, default=5)
            sp.add_argument("--review", default="auto")
            sp.add_argument("--wait", type=int, default=0, help="wait up to N seconds for the result")
        else:
            sp.add_argument("job_id")
            sp.add_argument("--wait", action="store_true", help="wait for the job to end (at most --timeout)")
            sp.add_argument("--timeout", type=int, default=120, help="seconds --wait waits at most (default 120)")
        sp.set_defaults(func=fn)

    from genqueue import clientcli

    clientcli.add_parsers(sub)

    sub.add_parser("export", help="export PyTorch models to ONNX model folders (see `genqueue export -h`)",
                   add_help=False)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "export":
        raise SystemExit(cmd_export(argv[1:]))
    args = build_parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
