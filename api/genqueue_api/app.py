"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from genqueue import __version__, queue
from genqueue.db.session import Database, ensure_migrated
from genqueue.events import FinishedListener
from genqueue.publisher import Publisher
from genqueue.reconcile import Reconciler
from genqueue.registry import Registry
from genqueue.schemas import BulkCreate, ImageInput, JobCreate, TextInput
from genqueue.settings import Settings, get_settings
from genqueue_api import console, errors, fastpath, httpmetrics, metrics, review_metrics
from genqueue_api.routes import batches, completions, feed, files, health, jobs, models, quotas, review
from genqueue_api.state import AppState

log = logging.getLogger(__name__)


def build_state(settings: Settings) -> AppState:
    db = Database.from_settings(settings)
    ensure_migrated(db)  # refuse to serve on an un-migrated database
    registry = Registry(settings.models_dir)
    for err in registry.errors:
        log.warning("model skipped: %s", err)
    broker_url = queue.resolve_broker_url(settings)
    celery = queue.make_celery(settings, broker_url)
    publisher = Publisher(settings, db, celery, on_unpublished=metrics.UNPUBLISHED.inc)
    return AppState(settings=settings, db=db, registry=registry, celery=celery, broker_url=broker_url,
                    publisher=publisher)


def create_app(settings: Settings | None = None, state: AppState | None = None) -> FastAPI:
    settings = settings or get_settings()
    app_state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        app_state.listener = FinishedListener(app_state.broker_url)
        app_state.listener.start()
        reconciler = None
        if settings.reconcile_interval_s > 0:
            reconciler = Reconciler(app_state.db, app_state.publisher, settings.reconcile_interval_s,
                                    settings.republish_after_s)
            reconciler.start()
        yield
        if reconciler is not None:
            reconciler.stop()
        app_state.close()  # requests have answered: no row is left waiting for its group
        app_state.publisher.close()  # what is still coalescing goes out now, not with the reconciler
        await app_state.listener.stop()
        app_state.db.dispose()

    app = FastAPI(title="genqueue", version=__version__, lifespan=lifespan,
                  description="Asynchronous job queue for AI content generation.")
    app.state.genqueue = app_state
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(review.router)
    app.include_router(feed.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(completions.router)
    app.include_router(quotas.router)
    console.install(app)  # the moderators' web console at /console
    # Middleware added first runs innermost: single submits leave the stack after the size limit and metrics.
    submit_route = next(r for r in jobs.router.routes if getattr(r, "path", None) == "/v1/jobs"
                        and "POST" in getattr(r, "methods", ()))
    app.add_middleware(fastpath.SingleSubmit, state=app_state, route=submit_route)
    app.add_middleware(errors.BodySizeLimit, max_bytes=settings.max_body_bytes,
                       larger={"/v1/files": settings.batch_max_bytes, "/v1/batches": settings.batch_max_bytes})
    app.add_middleware(httpmetrics.RequestMetrics)  # outermost: counts every answer, 413s included
    review_metrics.watch(app_state.db)

    # The job routes read raw JSON (so that bulk items fail one by one); publish their schemas anyway.
    original_openapi = app.openapi

    def openapi() -> dict:  # type: ignore[type-arg]
        if app.openapi_schema:
            return app.openapi_schema
        schema = original_openapi()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (JobCreate, BulkCreate, TextInput, ImageInput):  # `input` is one of the last two
            comps[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(comps[model.__name__].pop("$defs", {}))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
