"""The second naive baseline: what a user who already exported to ONNX writes without genqueue.

The same exported ONNX files genqueue serves, run by ONNX Runtime at batch 1, one Celery task per job, with
Celery's defaults (``celery -A bench.naive_ort_worker worker -Q bench.naive_ort``: prefork, one process per
core). Each process opens one ORT session per model with one intra-op thread (the processes already fill
the cores) and keeps it; a text task runs its own decode loop, feeding the graph's KV cache back each step
(the contract in the manifest, as ``genqueue_exporter.samples.generate_text`` documents it), and samples
softmax(logits / temperature) with numpy. Jobs, rows and sampling are those of bench/naive_worker.py, so
the two naive baselines differ only in the runtime.

Configuration from the environment (the bench driver sets it): BENCH_NAIVE_BROKER, BENCH_NAIVE_DATABASE,
BENCH_NAIVE_TEXT_MODEL and BENCH_NAIVE_IMAGE_MODEL (model folders holding manifest.json).
"""

from __future__ import annotations

import io
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from celery import Celery
from celery.signals import worker_process_init
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from tokenizers import Tokenizer

from bench.naive_store import naive_jobs
from genqueue.db.session import make_engine
from genqueue.registry import Manifest, load_manifest

QUEUE = "bench.naive_ort"
ORT_THREADS = 1  # per process: Celery's prefork already runs one process per core


@lru_cache(maxsize=1)
def db() -> Engine:
    return make_engine(os.environ["BENCH_NAIVE_DATABASE"])


def session(path: Path) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = ORT_THREADS
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class TextModel:
    def __init__(self, folder: Path) -> None:
        self.manifest: Manifest = load_manifest(folder)
        assert self.manifest.text is not None
        self.spec = self.manifest.text
        self.sess = session(folder / self.manifest.onnx_file)
        self.tok = Tokenizer.from_file(str(folder / self.spec.tokenizer_file))
        self.past_names = [s.name for s in self.manifest.inputs if s.name.startswith("past_key_values.")]
        self.out_names = [s.name for s in self.manifest.outputs]
        self.kv_dtype = np.float16 if self.spec.kv_dtype == "float16" else np.float32

    def prompt_ids(self, prompt: str) -> list[int]:
        ids = self.tok.encode(prompt, add_special_tokens=False).ids
        return [self.spec.bos_token_id, *ids] if self.spec.prepend_bos or not ids else ids

    def generate(self, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int) -> list[int]:
        """One sequence: prefill the prompt, then one token per step with the cache the graph returns."""
        s = self.spec
        past = [np.zeros((1, s.n_head, 0, s.head_dim), self.kv_dtype) for _ in self.past_names]
        rng = np.random.default_rng(seed)
        cur, total, out = prompt_ids, 0, []
        for _ in range(max(0, min(max_new_tokens, s.context_length - len(prompt_ids)))):
            total += len(cur)
            feed: dict[str, Any] = {"input_ids": np.array([cur], np.int64),
                                    "position_ids": np.arange(total - len(cur), total, dtype=np.int64)[None],
                                    **dict(zip(self.past_names, past, strict=True))}
            if s.kv_contract == "ragged":
                feed["seqlens_k"] = np.array([total - 1], np.int32)
                feed["total_sequence_length"] = np.array(total, np.int32)
            else:
                feed["attention_mask"] = np.ones((1, total), np.int64)
            logits, *kv = self.sess.run(self.out_names, feed)
            past = ([np.concatenate([p, n], axis=2) for p, n in zip(past, kv, strict=True)]
                    if s.kv_contract == "append" else kv)
            last = logits[0, -1].astype(np.float64)
            if temperature <= 0:
                nxt = int(last.argmax())
            else:
                p = np.exp((last - last.max()) / temperature)
                nxt = int(rng.choice(len(p), p=p / p.sum()))
            if nxt == s.eos_token_id:
                break
            out.append(nxt)
            cur = [nxt]
        return out


class ImageModel:
    def __init__(self, folder: Path) -> None:
        self.manifest: Manifest = load_manifest(folder)
        assert self.manifest.image is not None
        self.spec = self.manifest.image
        self.sess = session(folder / self.manifest.onnx_file)

    def png(self, seed: int, class_label: int, truncation: float) -> bytes:
        z = np.random.default_rng(seed).standard_normal((1, self.spec.latent_size)).astype(np.float32) * truncation
        feed: dict[str, Any] = {"z": z}
        if self.spec.num_classes > 0:
            feed["class_label"] = np.array([class_label], np.int64)
        img = self.sess.run(["images"], feed)[0][0]  # [C,H,W] in [-1,1]
        pixels = ((np.clip(img, -1, 1) + 1) * 127.5).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(buf, format="PNG")
        return buf.getvalue()


@lru_cache(maxsize=1)
def text_model() -> TextModel:
    return TextModel(Path(os.environ["BENCH_NAIVE_TEXT_MODEL"]))


@lru_cache(maxsize=1)
def image_model() -> ImageModel:
    return ImageModel(Path(os.environ["BENCH_NAIVE_IMAGE_MODEL"]))


@worker_process_init.connect
def _load(**_: Any) -> None:
    """Each pool process opens its sessions once, before its first task (a warm worker)."""
    if os.environ.get("BENCH_NAIVE_TEXT_MODEL"):
        text_model()
    if os.environ.get("BENCH_NAIVE_IMAGE_MODEL"):
        image_model()


def _input(job_id: str) -> dict[str, Any]:
    with db().connect() as c:
        return dict(c.execute(select(naive_jobs.c.input).where(naive_jobs.c.id == job_id)).one()._mapping)["input"]


def _store(job_id: str, started: float, **values: Any) -> None:
    with db().begin() as c:
        c.execute(update(naive_jobs).where(naive_jobs.c.id == job_id)
                  .values(status="succeeded", started=started, finished=time.time(), **values))


def generate_text(job_id: str) -> None:
    started = time.time()
    inp = _input(job_id)
    m = text_model()
    out = m.generate(m.prompt_ids(inp["prompt"]), int(inp.get("max_new_tokens", 64)),
                     float(inp.get("temperature", 0.8)), int(inp.get("seed", 0)))
    _store(job_id, started, output=m.tok.decode(out, skip_special_tokens=True), tokens=len(out))


def generate_image(job_id: str) -> None:
    started = time.time()
    inp = _input(job_id)
    png = image_model().png(int(inp.get("seed", 0)), int(inp.get("class_label", 0)), float(inp.get("truncation", 1.0)))
    _store(job_id, started, image=png, tokens=1)


def make_app(broker_url: str) -> Celery:
    app = Celery("naive_ort", broker=broker_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    broker_connection_retry_on_startup=True, task_default_queue=QUEUE)
    app.task(name="bench.naive_ort.text")(generate_text)
    app.task(name="bench.naive_ort.image")(generate_image)
    return app


app = make_app(os.environ.get("BENCH_NAIVE_BROKER", "redis://127.0.0.1:6379/0"))
