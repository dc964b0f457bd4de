"""genqueue's client SDK: what ``pip install genqueue`` installs (httpx and pydantic, nothing of the server).

    from genqueue.sdk import Client
    with Client("http://127.0.0.1:8000", api_key="gq_...") as gq:
        job = gq.submit("tiny-lm", {"prompt": "Once upon a time", "max_new_tokens": 32})
        print(gq.wait(job.id).text)

``AsyncClient`` has the same calls as coroutines. Both pool connections, retry 429, 502-504 and connection
errors with backoff (after the server's Retry-After when it sends one), and make up idempotency keys for
submits, so that a retry never makes a second job.
"""

from genqueue.sdk._core import RetryPolicy
from genqueue.sdk.aio import AsyncClient
from genqueue.sdk.errors import GenqueueConnectionError, GenqueueError
from genqueue.sdk.models import TERMINAL, ItemError, Job, JobError, JobPage
from genqueue.sdk.sync import Client

__all__ = ["AsyncClient", "Client", "GenqueueConnectionError", "GenqueueError", "ItemError", "Job", "JobError",
           "JobPage", "RetryPolicy", "TERMINAL"]
