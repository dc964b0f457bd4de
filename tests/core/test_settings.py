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
