"""The CLI's client commands on genqueue.sdk: `bulk`, `wait` and `images`. They need only the base install
(httpx, pydantic, tqdm). Every error is one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_INTERRUPTED = 130


def _fail(msg: str) -> int:
    print(f"genqueue: error: {msg}", file=sys.stderr)
    return 2


def sdk_client(args: argparse.Namespace, timeout: float = 60.0) -> Any:
    from genqueue.sdk import Client

    key = args.key or os.environ.get("GENQUEUE_API_KEY")
    if not key:
        raise SystemExit(_fail("no API key: pass --key or set GENQUEUE_API_KEY"))
    url = args.url or os.environ.get("GENQUEUE_URL") or f"http://127.0.0.1:{os.environ.get('GENQUEUE_API_PORT', '8000')}"
    return Client(url, key, timeout=timeout)


def _guarded(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """API errors, unreachable servers and bad files as one line; Ctrl-C as a note on how to resume."""
    def run(args: argparse.Namespace) -> int:
        from genqueue.bulkfiles import BulkFileError
        from genqueue.sdk import GenqueueError

        try:
            return fn(args)
        except GenqueueError as e:
            return _fail(f"{e.code}: {e.message}" if e.status else e.message)
        except (BulkFileError, ValueError, OSError) as e:
            return _fail(str(e))
        except KeyboardInterrupt:
            print("\ngenqueue: interrupted; run the same command again to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    return run


@_guarded
def cmd_bulk(args: argparse.Namespace) -> int:
    from genqueue.bulk import Bulk, Options
    from genqueue.bulkfiles import read_input

    inp = read_input(Path(args.file))
    out = Path(args.out) if args.out else None
    journal = Path(args.state) if args.state else Path(f"{out or inp.path}.state")
    opts = Options(chunk=args.chunk, concurrency=args.concurrency, wait=out is not None and not args.no_wait,
                   timeout_s=args.timeout or None, progress=not args.quiet)
    with sdk_client(args) as c:
        summary = Bulk(c, inp, out, journal, opts).run()
    print(f"{summary.lines} lines: {summary.resumed} finished before, {summary.submitted} submitted "
          f"({summary.jobs_per_s:.1f} jobs/s), {summary.succeeded} succeeded, {summary.failed} failed, "
          f"{summary.unfinished} unfinished", file=sys.stderr)
    if summary.unfinished:
        return _fail(f"{summary.unfinished} jobs are still queued or running; run the same command again to "
                     "keep waiting")
    return 1 if summary.failed else 0


@_guarded
def cmd_wait(args: argparse.Namespace) -> int:
    """Each job as one JSON line, in the order they end."""
    ended, failed = 0, 0
    with sdk_client(args) as c:
        try:
            for job in c.as_completed(args.job_ids, timeout=args.timeout):
                print(job.model_dump_json(), flush=True)
                ended += 1
                failed += job.status != "succeeded"
        except TimeoutError:
            return _fail(f"{len(args.job_ids) - ended} of {len(args.job_ids)} jobs still not ended after "
                         f"{args.timeout}s")
    return 1 if failed else 0


@_guarded
def cmd_images(args: argparse.Namespace) -> int:
    """Save a job's images as DIR/<job id>-<n>.<format>."""
    out = Path(args.dir)
    with sdk_client(args) as c:
        job = c.get(args.job_id)
        if args.wait and not job.done:
            job = c.wait(job.id, timeout=args.timeout)
        if job.expired_at is not None:
            return _fail(f"job {job.id}'s images were deleted by retention on {job.expired_at.isoformat()}")
        if job.status != "succeeded":
            return _fail(f"job {job.id} is {job.status}; it has no images" + ("" if job.done else " yet (try --wait)"))
        images = (job.output or {}).get("images") or []
        if not images:
            return _fail(f"job {job.id} is a {job.kind or 'text'} job without images")
        out.mkdir(parents=True, exist_ok=True)
        for n, meta in enumerate(images):
            path = out / f"{job.id}-{n}.{meta.get('format', 'png')}"
            path.write_bytes(c.image(job.id, n))
            print(path)
    return 0


def add_parsers(sub: Any) -> None:
    def connection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", help="API base URL (GENQUEUE_URL)")
        sp.add_argument("--key", help="API key (GENQUEUE_API_KEY)")

    b = sub.add_parser("bulk", help="submit a JSONL file of job requests; resumable, with a progress bar")
    b.add_argument("file", help="one job request (the body of POST /v1/jobs) per line")
    b.add_argument("--out", help="write each result here (JSONL) as its job ends; without it, only submit")
    b.add_argument("--state", help="the journal that makes a rerun resume (default: OUT.state, or FILE.state)")
    b.add_argument("--chunk", type=int, default=512, help="jobs per bulk request (1-1000, default 512)")
    b.add_argument("--concurrency", type=int, default=4, help="bulk requests in flight (default 4)")
    b.add_argument("--no-wait", action="store_true", help="submit only, even with --out")
    b.add_argument("--timeout", type=float, default=0, help="stop following jobs after N seconds (0: never)")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    connection(b)
    b.set_defaults(func=cmd_bulk)

    w = sub.add_parser("wait", help="wait for jobs to end; prints each as a JSON line when it ends")
    w.add_argument("job_ids", nargs="+", metavar="ID")
    w.add_argument("--timeout", type=float, default=300, help="seconds to wait at most (default 300)")
    connection(w)
    w.set_defaults(func=cmd_wait)

    im = sub.add_parser("images", help="save a job's images to a folder")
    im.add_argument("job_id")
    im.add_argument("--dir", default=".", help="folder to write them to (default: here)")
    im.add_argument("--wait", action="store_true", help="wait for the job to end first")
    im.add_argument("--timeout", type=float, default=300, help="seconds --wait waits at most (default 300)")
    connection(im)
    im.set_defaults(func=cmd_images)
