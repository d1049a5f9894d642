"""The service's GET routes (position health and live changes, alerts since a cursor, sweep status and
report, the backtest report, catalogue thumbnails) and the desk page, as small Starlette apps the service mounts. Each hands
the work to the running ``PledgeService`` (``SERVICE_STATE["service"]``, set when a worker starts)."""

from __future__ import annotations

import os
from http import HTTPStatus
from pathlib import Path

from bentoml.exceptions import BentoMLException
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

# `pledgeval backtest` writes its report here (its --report default); the desk's book view links it
BACKTEST_REPORT = Path(os.environ.get("PLEDGEVAL_BACKTEST_REPORT", "var/reports/backtest.html"))


def _position_health(request: Request) -> JSONResponse:
    return JSONResponse(SERVICE_STATE["service"].position_health(request.path_params["position_id"]))


def _sweep_status(request: Request) -> JSONResponse:
    return JSONResponse(SERVICE_STATE["service"].sweep_status(request.path_params["sweep_id"]))


def _sweep_report(request: Request) -> HTMLResponse:
    return HTMLResponse(SERVICE_STATE["service"].sweep_report(request.path_params["sweep_id"]))


def _alerts(request: Request) -> JSONResponse:
    query = request.query_params
    return JSONResponse(SERVICE_STATE["service"].alerts_since(query.get("since"), query.get("limit")))


def _changes(request: Request) -> JSONResponse:
    query = request.query_params
    return JSONResponse(SERVICE_STATE["service"].changes_since(query.get("since"), query.get("limit")))


def _backtest_report(request: Request) -> Response:
    if not BACKTEST_REPORT.is_file():
        return JSONResponse({"error": f"no backtest report at {BACKTEST_REPORT}: run `pledgeval backtest` "
                                      "(or bench/backtest.py) first"}, status_code=HTTPStatus.NOT_FOUND)
    return HTMLResponse(BACKTEST_REPORT.read_text())


def _catalog_image(request: Request) -> Response:
    return Response(SERVICE_STATE["service"].catalog_thumbnail(request.path_params["spu_id"]),
                    media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def _http_errors(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, BentoMLException):
        return JSONResponse({"error": exc.message}, status_code=int(exc.error_code))
    raise exc


class MountRootPaths:
    """``GET /alerts?since=`` answered where it is asked: a mounted app's root is ``/alerts/`` to Starlette,
    which would redirect ``/alerts`` there, and a redirect costs every polling client a round trip."""

    ROOTS = ("/alerts",)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.ROOTS:
            scope = {**scope, "path": scope["path"] + "/", "raw_path": scope["path"].encode() + b"/"}
        await self.app(scope, receive, send)


SERVICE_STATE: dict = {}
positions_app = Starlette(routes=[Route("/changes", _changes), Route("/{position_id}/health", _position_health)],
                          exception_handlers={BentoMLException: _http_errors})
sweeps_app = Starlette(routes=[Route("/{sweep_id}", _sweep_status), Route("/{sweep_id}/report", _sweep_report)],
                       exception_handlers={BentoMLException: _http_errors})
alerts_app = Starlette(routes=[Route("/", _alerts)], exception_handlers={BentoMLException: _http_errors})
reports_app = Starlette(routes=[Route("/backtest", _backtest_report)])
catalog_app = Starlette(routes=[Route("/{spu_id}/image", _catalog_image)], exception_handlers={BentoMLException: _http_errors})
def _desk_settings(request: Request) -> JSONResponse:
    """What the page needs before any data: the catalogue's currency. Holds no data, so it is open like
    the page itself."""
    from valuation.policy import currency_of

    return JSONResponse({"currency": currency_of(SERVICE_STATE["service"].model.policy)})


# The desk page: static HTML/CSS/JS that calls the routes above with the key the officer enters.
desk_app = Starlette(routes=[Route("/settings.json", _desk_settings),
                             Mount("/", StaticFiles(directory=Path(__file__).with_name("desk"), html=True))])
