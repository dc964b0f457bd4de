"""The naive baseline, as a user gets it without genqueue or tuning: one Celery task per job.

Run with Celery's defaults, ``celery -A bench.naive_worker worker -Q bench.naive``: the prefork pool with one
process per core, and one torch thread per process (the processes already fill the cores, and a batch-1
step of a small model loses more to thread hand-offs than it gains). Each pool process loads the PyTorch
models once, before its first task, and keeps them; each task reads its row, generates for that one job alone
(batch size 1) under ``torch.inference_mode()`` with a KV cache, and writes the result back in one UPDATE.
Sampling matches genqueue's: softmax(logits / temperature) then one draw per token, EOS ends the job and is
not counted, max_new_tokens is clamped to the context left after the prompt, and the prompt starts with BOS
when the model was trained that way (or is empty).

Configuration comes from the environment (the bench driver sets it): BENCH_NAIVE_BROKER,
BENCH_NAIVE_DATABASE, BENCH_NAIVE_CHECKPOINTS (gpt.pt, generator.pt) and BENCH_NAIVE_TOKENIZER.
"""

from __future__ import annotations

import io
import os
import time
from functools import lru_cache
from typing import Any

import torch
from celery import Celery
from celery.signals import worker_process_init
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from tokenizers import Tokenizer

from bench.naive_store import naive_jobs
from genqueue.db.session import make_engine
from genqueue_exporter.dcgan import DCGANConfig, Generator
from genqueue_exporter.gpt import GPT, GPTConfig

QUEUE = "bench.naive"
SUBMIT_QUEUE = "bench.submit"


@lru_cache(maxsize=1)
def db() -> Engine:
    # The same SQL as genqueue, configured the same way (SQLite: WAL, synchronous=NORMAL, busy timeout).
    return make_engine(os.environ["BENCH_NAIVE_DATABASE"])


def load_text_model(checkpoints: str, tokenizer: str) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    ckpt = torch.load(os.path.join(checkpoints, "gpt.pt"))
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), Tokenizer.from_file(tokenizer), ckpt["tokens"]


@lru_cache(maxsize=1)
def text_model() -> tuple[GPT, Tokenizer, dict[str, Any]]:
    return load_text_model(os.environ["BENCH_NAIVE_CHECKPOINTS"], os.environ["BENCH_NAIVE_TOKENIZER"])


def prompt_ids(tok: Tokenizer, prompt: str, special: dict[str, Any]) -> list[int]:
    ids = tok.encode(prompt, add_special_tokens=False).ids
    return [special["bos_token_id"], *ids] if special["prepend_bos"] or not ids else ids


@lru_cache(maxsize=1)
def image_model() -> Generator:
    ckpt = torch.load(os.path.join(os.environ["BENCH_NAIVE_CHECKPOINTS"], "generator.pt"))
    model = Generator(DCGANConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


@torch.inference_mode()
def generate(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int,
             eos: int) -> list[int]:
    """One sequence, KV cache carried between steps: prefill the prompt once, then one token per step."""
    ctx = model.config.block_size
    max_new = max(0, min(max_new_tokens, ctx - len(prompt_ids)))
    gen = torch.Generator().manual_seed(seed)
    cur = torch.tensor([prompt_ids], dtype=torch.long)  # [1,S]
    past = model.empty_past(1)
    t = 0
    out: list[int] = []
    for _ in range(max_new):
        s = cur.shape[1]
        mask = torch.ones(1, t + s, dtype=torch.long)
        pos = torch.arange(t, t + s).unsqueeze(0)
        logits, *past = model(cur, mask, pos, *past)
        last = logits[0, -1]  # [V]
        if temperature == 0:
            tok = int(last.argmax())
        else:
            tok = int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=gen))
        if tok == eos:
            break
        out.append(tok)
        t += s
        cur = torch.tensor([[tok]], dtype=torch.long)
    return out


TORCH_THREADS = 1


@worker_process_init.connect
def _warm(**_: Any) -> None:
    """Each pool process: one torch thread, both models loaded before its first task (a warm worker)."""
    torch.set_num_threads(TORCH_THREADS)
    text_model()
    if os.path.exists(os.path.join(os.environ["BENCH_NAIVE_CHECKPOINTS"], "generator.pt")):
        image_model()
    print(f"torch threads: {torch.get_num_threads()} in process {os.getpid()}", flush=True)


def _load(job_id: str) -> dict[str, Any]:
    with db().connect() as c:
        return dict(c.execute(select(naive_jobs.c.input).where(naive_jobs.c.id == job_id)).one()._mapping)["input"]


def _store(job_id: str, started: float, **values: Any) -> None:
    with db().begin() as c:
        c.execute(update(naive_jobs).where(naive_jobs.c.id == job_id)
                  .values(status="succeeded", started=started, finished=time.time(), **values))


def generate_text(job_id: str) -> None:
    started = time.time()
    inp = _load(job_id)
    model, tok, special = text_model()
    out = generate(model, prompt_ids(tok, inp["prompt"], special), int(inp.get("max_new_tokens", 64)), float(inp.get("temperature", 0.8)),
                   int(inp.get("seed", 0)), special["eos_token_id"])
    _store(job_id, started, output=tok.decode(out, skip_special_tokens=True), tokens=len(out))


def generate_image(job_id: str) -> None:
    started = time.time()
    inp = _load(job_id)
    model = image_model()
    gen = torch.Generator().manual_seed(int(inp.get("seed", 0)))
    with torch.inference_mode():
        z = torch.randn(1, model.config.latent_size, generator=gen) * float(inp.get("truncation", 1.0))
        label = torch.tensor([int(inp.get("class_label", 0))])
        img = model(z, label)[0]  # [C,H,W] in [-1,1]
    pixels = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(0).numpy()
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    _store(job_id, started, image=buf.getvalue(), tokens=1)


def submitted(job_id: str) -> None:
    """The submit scenario's target task; nothing consumes its queue during the measurement."""


def make_app(broker_url: str) -> Celery:
    """The user's Celery app with its three tasks (a function, so the bench driver can talk to each stack's
    Redis; the worker process uses the module-level ``app``)."""
    app = Celery("naive", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    broker_connection_retry_on_startup=True, task_default_queue=QUEUE,
                    task_routes={"bench.submit.noop": {"queue": SUBMIT_QUEUE}})
    app.task(name="bench.naive.text")(generate_text)
    app.task(name="bench.naive.image")(generate_image)
    app.task(name="bench.submit.noop")(submitted)
    return app


app = make_app(os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/0"))
