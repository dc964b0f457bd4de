"""The SDK's wait() keeps waiting through an API restart (the job is safe in SQL), and stops on real answers."""

from __future__ import annotations

import httpx
import pytest

from genqueue.client import Client, GenqueueError


def scripted(answers: list[object]) -> httpx.MockTransport:
    """A stand-in for the API's HTTP side only (no store involved): each GET takes the next answer."""

    def handle(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    return httpx.MockTransport(handle)


def job(status: str) -> httpx.Response:
    return httpx.Response(200, json={"id": "j1", "status": status})


def test_wait_rides_out_a_restarting_api() -> None:
    answers: list[object] = [
        job("running"),
        httpx.Response(500, text="Internal Server Error"),  # uvicorn cancelling held waits on shutdown
        httpx.ConnectError("connection refused"),  # the API is down for a moment
        httpx.Response(503, json={"error": {"code": "not_ready", "message": "starting", "details": []}}),
        job("succeeded"),
    ]
    with Client("http://api", "gq_x", transport=scripted(answers)) as c:
        assert c.wait("j1", timeout=30)["status"] == "succeeded"
    assert answers == []


def test_wait_stops_on_an_answer_that_is_not_an_outage() -> None:
    answers: list[object] = [job("running"),
                             httpx.Response(404, json={"error": {"code": "not_found", "message": "no", "details": []}})]
    with Client("http://api", "gq_x", transport=scripted(answers)) as c, pytest.raises(GenqueueError) as e:
        c.wait("j1", timeout=30)
    assert e.value.status == 404


def test_wait_still_ends_at_its_timeout_while_the_api_is_down() -> None:
    answers: list[object] = [job("running"), *[httpx.ConnectError("refused")] * 50]
    with Client("http://api", "gq_x", transport=scripted(answers)) as c, pytest.raises(TimeoutError):
        c.wait("j1", timeout=2)
