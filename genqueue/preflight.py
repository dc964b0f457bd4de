"""Start-up checks: a process that cannot work with its configuration stops at once, naming the setting.

Without them a wrong database URL surfaced as a driver traceback on the first request, and a missing models
folder as a worker that served nothing.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from genqueue.settings import Settings


class Misconfigured(Exception):
    """A setting the process cannot run with; ``str()`` is the one line to print."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def masked(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e  # SQLAlchemy wraps the driver's error
    text = str(orig).strip().splitlines()
    return text[0] if text else orig.__class__.__name__


def check_database(settings: Settings, timeout_s: int = 5) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    url = settings.sqlalchemy_url
    args = {"connect_timeout": timeout_s} if url.startswith("postgresql") else {}
    try:
        engine = create_engine(url, poolclass=NullPool, connect_args=args)
    except Exception as e:  # a malformed URL or a driver that is not installed
        raise Misconfigured("GENQUEUE_DATABASE_URL", f"cannot use {masked(url)}: {_first_line(e)}") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        raise Misconfigured("GENQUEUE_DATABASE_URL", f"cannot connect to {masked(url)}: {_first_line(e)}") from None
    finally:
        engine.dispose()


def check_redis(settings: Settings) -> None:
    """Only a configured Redis: without GENQUEUE_REDIS_URL the process starts an embedded one."""
    if not settings.redis_url:
        return
    from genqueue.queue import redis_client

    try:
        redis_client(settings.redis_url).ping()
    except Exception as e:
        raise Misconfigured("GENQUEUE_REDIS_URL", f"cannot connect to {masked(settings.redis_url)}: {_first_line(e)}") from None


def check_models_dir(settings: Settings) -> None:
    path = settings.models_dir
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise Misconfigured("GENQUEUE_MODELS_DIR", f"{path.resolve()} {what}; build models into it with "
                                                   "`genqueue export builtin --models-dir " f"{path}`")


def check(settings: Settings, *, database: bool = True, redis: bool = False, models: bool = False) -> None:
    """Runs the checks a service needs; raises Misconfigured on the first that fails.

    Services do not check Redis: the API accepts jobs while Redis is down (the reconciler publishes them
    later) and the worker waits for it, so an unreachable Redis at start is an outage to ride out, not a
    misconfiguration."""
    if models:
        check_models_dir(settings)
    if database:
        check_database(settings)
    if redis:
        check_redis(settings)
