"""The ASGI application: dashboard page, job API, `/metrics` and the OpenAPI description.

Every route but the page and its static files needs the bearer token when one is set. Swagger's
/docs is off (it loads from a CDN); `/openapi.json` is served.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..errors import ConfigError
from ..report import metrics
from .auth import ServeSettings, authorized, is_public
from .history import History
from .jobs import JobNotFoundError, JobStateError, JobStore

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
SAMPLE_EVERY_S = 1.0
_SUBMIT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "description": "run settings: RunConfig field names, "
                                    "as in a --config YAML (input is required)"}},
    "application/yaml": {"schema": {"type": "string", "description": "a task file (task_type: distill …)"}}}}}


def create_app(settings: ServeSettings) -> FastAPI:
    """The server for `settings` (checked: a token is required off loopback)."""
    settings.check()
    store, history = JobStore(settings), History()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(_sample_forever(store, history))
        yield
        task.cancel()

    app = FastAPI(title="mpdistill", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Submit, watch and stop mpdistill jobs. Send `Authorization: Bearer <token>` "
                              "when the server was started with a token.")
    app.state.store, app.state.history = store, history

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if is_public(request.url.path) or authorized(request.headers.get("authorization"), settings.token):
            return await call_next(request)
        return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_routes(app, store, history)
    return app


def _add_routes(app: FastAPI, store: JobStore, history: History) -> None:
    @app.get("/", include_in_schema=False)
    def dashboard():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/jobs", summary="Every job and run the server sees")
    def list_jobs():
        return {"jobs": _views(store)}

    @app.post("/api/jobs", status_code=201, summary="Submit a job: a JSON run config or a task YAML",
              openapi_extra=_SUBMIT_BODY, responses={422: {"description": "invalid config (names the key)"}})
    async def submit(request: Request):
        body = await request.body()
        try:
            return await asyncio.to_thread(store.submit, body, request.headers.get("content-type"))
        except ConfigError as err:
            raise HTTPException(status_code=422, detail=str(err)) from err

    @app.get("/api/jobs/{job_id}", summary="One job: state, exit code and its status JSON")
    def get_job(job_id: str):
        return _found(store.view, job_id)

    @app.post("/api/jobs/{job_id}/stop", status_code=202, summary="Stop gracefully, like --stop (now: cancel in flight)")
    def stop_job(job_id: str, now: bool = False):
        return _found(store.stop, job_id, now)

    @app.post("/api/jobs/{job_id}/resume", status_code=202, summary="Start a stopped job again; it resumes")
    def resume_job(job_id: str):
        return _found(store.resume, job_id)

    @app.get("/api/jobs/{job_id}/summary", summary="The summary JSON written when the run ended")
    def job_summary(job_id: str):
        summary = _found(store.summary, job_id)
        if summary is None:
            raise HTTPException(status_code=404, detail=f"job {job_id} has no summary yet")
        return summary

    @app.get("/api/jobs/{job_id}/console", response_class=PlainTextResponse, summary="The end of a job's console output")
    def job_console(job_id: str):
        _found(store.view, job_id)
        return store.console_tail(job_id)

    @app.get("/api/dashboard", summary="Every run with its recent history, for the dashboard")
    def dashboard_data():
        return {"runs": [{**v, "history": history.points(v["id"])} for v in _views(store)]}

    @app.get("/metrics", summary="Prometheus metrics of every run the server sees")
    def prometheus():
        return Response(metrics.render(_distinct_runs(_views(store))),
                        media_type="text/plain; version=0.0.4; charset=utf-8")


def _views(store: JobStore) -> list[dict]:
    return [v for v in (_view(store, rid) for rid in store.ids()) if v]


def _distinct_runs(views: list[dict]) -> list[dict]:
    """The runs' statuses; a run name seen twice (two folders) gets `@<id>`, so no series repeats."""
    statuses, names = [], set()
    for view in views:
        status = view.get("status")
        if not status:
            continue
        if status.get("run") in names:
            status = {**status, "run": f"{status.get('run')}@{view['id']}"}
        names.add(status.get("run"))
        statuses.append(status)
    return statuses


def _view(store: JobStore, run_id: str) -> dict | None:
    try:
        return store.view(run_id)
    except JobNotFoundError:
        return None   # removed between listing and reading


def _found(method, job_id: str, *args):
    try:
        return method(job_id, *args)
    except JobNotFoundError as err:
        raise HTTPException(status_code=404, detail=str(err)) from err
    except JobStateError as err:
        raise HTTPException(status_code=409, detail=str(err)) from err


async def _sample_forever(store: JobStore, history: History) -> None:
    while True:
        try:
            await asyncio.to_thread(_sample, store, history)
        except Exception:  # a half-written folder must not end the sampling for good
            log.exception("sampling the runs failed")
        await asyncio.sleep(SAMPLE_EVERY_S)


def _sample(store: JobStore, history: History) -> None:
    ids = store.ids()
    for rid in ids:
        view = _view(store, rid)
        history.record(rid, view and view.get("status"))
    history.forget_except(ids)
