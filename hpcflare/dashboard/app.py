"""``hpcflare dashboard [JOB_ROOT]``: a read-only web page over job folders, live while jobs run.

Starlette serves a small JSON API and one page; Chart.js (vendored, MIT) draws the charts in the browser, which
polls the API every ``refresh`` seconds. Every request needs the dashboard's token (login nodes are shared):
``Authorization: Bearer TOKEN``, or the ``token`` query parameter of the URL the command prints, after which a
cookie scoped to this dashboard carries it. The server binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import hmac
import secrets
import tempfile
import threading
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hpcflare.dashboard import data
from hpcflare.job import JobDir

STATIC = Path(__file__).parent / "static"
COOKIE = "hpcflare_dashboard"


class TokenCheck(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
            # the token leaves the address bar (and browser history) for a cookie only this server reads
            response: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        cookie = request.cookies.get(COOKIE, "")
        if not any(hmac.compare_digest(c.encode(), self.token.encode()) for c in (bearer, cookie) if c):
            return PlainTextResponse(
                "401: this dashboard needs its token; open the URL `hpcflare dashboard` printed "
                "(or send Authorization: Bearer TOKEN)\n",
                status_code=401,
            )
        return await call_next(request)


class Dashboard:
    """The jobs under ``root``, served read-only."""

    def __init__(self, root: Path, refresh: float = 2.0) -> None:
        self.root, self.refresh = root, refresh
        self._timelines: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def jobs(self) -> dict[str, JobDir]:
        return data.find_jobs(self.root)

    def job(self, request: Request) -> tuple[str, JobDir]:
        job_id = request.path_params["job_id"]
        jobs = self.jobs()
        if job_id not in jobs:  # only ids the listing shows: no path is ever built from the request
            raise KeyError(job_id)
        return job_id, jobs[job_id]

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_jobs(self, request: Request) -> Response:
        jobs = self.jobs()
        rows = [data.summary(job_id, job) for job_id, job in jobs.items()]
        note = (
            ""
            if rows
            else f"no jobs under {self.root} (no job.yaml within {data.SEARCH_DEPTH} folder levels)"
        )
        return JSONResponse({"root": str(self.root), "jobs": rows, "note": note, "refresh": self.refresh})

    async def api_job(self, request: Request) -> Response:
        try:
            job_id, job = self.job(request)
        except KeyError:
            return JSONResponse({"error": "no such job"}, status_code=404)
        return JSONResponse(data.detail(job_id, job))

    async def timeline(self, request: Request) -> Response:
        try:
            job_id, job = self.job(request)
        except KeyError:
            return PlainTextResponse("no such job", status_code=404)
        stamp = data.logs_changed(job)
        with self._lock:
            cached = self._timelines.get(job_id)
        if cached is None or cached[0] != stamp:
            try:
                from hpcflare.logs.timeline import draw

                with tempfile.TemporaryDirectory() as tmp:
                    png = draw(job, Path(tmp) / "timeline.png").read_bytes()
            except ImportError:
                return PlainTextResponse(
                    "the timeline needs matplotlib: pip install 'hpcflare[plots]'", status_code=404
                )
            except Exception as exc:  # noqa: BLE001 - a job with no events yet
                return PlainTextResponse(f"no timeline yet: {exc}", status_code=404)
            cached = (stamp, png)
            with self._lock:
                self._timelines[job_id] = cached
        return Response(cached[1], media_type="image/png", headers={"Cache-Control": "no-store"})


def make_app(root: Path, token: str, refresh: float = 2.0) -> Starlette:
    board = Dashboard(root, refresh)
    routes = [
        Route("/", board.index),
        Route("/api/jobs", board.api_jobs),
        Route("/api/jobs/{job_id}", board.api_job),
        Route("/api/jobs/{job_id}/timeline.png", board.timeline),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(TokenCheck, token=token)])


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(root: Path, host: str, port: int, token: str, refresh: float = 2.0) -> None:
    import uvicorn

    uvicorn.run(make_app(root, token, refresh), host=host, port=port, log_level="warning", access_log=False)
