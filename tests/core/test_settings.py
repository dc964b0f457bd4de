"""Settings refuse values the engines cannot run with, at start-up rather than on the first job."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from genqueue.settings import Settings


@pytest.mark.parametrize("field", ["text_prompt_cache_mb", "text_prefill_ahead", "image_forward_parts", "image_encode_threads", "write_linger_ms"])
def test_negative_engine_settings_are_refused(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: -1})


def test_engine_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENQUEUE_TEXT_PROMPT_CACHE_MB", "0")
    monkeypatch.setenv("GENQUEUE_IMAGE_FORWARD_PARTS", "1")
    s = Settings()
    assert s.text_prompt_cache_mb == 0 and s.image_forward_parts == 1
    assert Settings.model_fields["text_prompt_cache_mb"].default == 32.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("text_max_running", 0), ("text_max_tokens_per_step", 0), ("image_max_batch_size", 0), ("worker_concurrency", 0),
     ("lease_seconds", -1), ("lease_seconds", 0), ("claim_linger_ms", -5), ("visibility_timeout_s", 0),
     ("max_body_bytes", -1), ("ort_threads", -3), ("worker_metrics_port", 70000), ("api_port", -1),
     ("rate_limit_jobs_per_min", -1), ("republish_after_s", 0), ("max_wait_seconds", -1),
     ("image_max_queue_delay_ms", -1)],
)
def test_settings_a_worker_or_api_cannot_run_with_are_refused(field: str, value: float) -> None:
    # A lease of -1 s would expire at once and run every job twice; a batch of 0 would never run one.
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_the_cli_names_a_bad_setting_in_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from genqueue import cli

    monkeypatch.setenv("GENQUEUE_LEASE_SECONDS", "-1")
    with pytest.raises(SystemExit) as e:
        cli.main(["db", "upgrade"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "GENQUEUE_LEASE_SECONDS: Input should be greater than 0" in err
