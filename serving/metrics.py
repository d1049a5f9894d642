"""Request metrics with a bounded set of series: each route counted under its template.

BentoML labels every request's metrics (count, duration histogram, in-progress gauge) with the raw request
path. A route that carries an id (``/positions/P000355/health``, ``/sweeps/<id>``, ``/catalog/<spu>/image``)
and any path a client makes up then opens about 20 new series per worker, kept for the worker's life, in
memory and in the multiprocess files behind ``/metrics``. In a 35-minute soak on a book of 400 positions
they were the largest growth ``tracemalloc`` saw in a worker (about 4,000 new entries each); on a real
book, or under a scanner inventing paths, they grow without bound.

``install(mounts)`` has BentoML's metrics middleware see the route's template instead
(``/positions/{position_id}/health``; ``{unmatched}`` for a path no route serves). Every middleware and
route inside it still sees the real path, so access logs and routing are unchanged. The middleware is a
private part of BentoML: where it is not found, ``install`` leaves BentoML's own in place and logs why.
"""

from __future__ import annotations

import logging
import re

from starlette.routing import Mount

log = logging.getLogger(__name__)

BENTOML_ROUTES = frozenset({"/", "/docs", "/docs.json", "/metrics", "/healthz", "/livez", "/readyz"})
UNMATCHED = "{unmatched}"
REAL_PATH = "pledgeval.real_path"  # the scope key the real path travels in past the metrics middleware


class RouteLabels:
    """The label a request path is counted under, from the service's mounted Starlette apps (``mount_apps``:
    (app, prefix, name)), so that a route added there is labelled without an edit here: a route without
    parameters by its path (a mount's root, e.g. ``/alerts``, too), one with parameters by its template
    (``/positions/{position_id}/health``), a file under a static mount by ``<prefix>/{file}``."""

    def __init__(self, mounts) -> None:
        fixed, templates = set(BENTOML_ROUTES), []
        for app, prefix, *_ in mounts:
            for route in getattr(app, "routes", []):
                if route.path in ("", "/"):  # the app's root, asked with or without the slash
                    fixed |= {prefix, prefix + "/"}
                if isinstance(route, Mount):  # static files: one label for all of them
                    templates.append((re.compile(re.escape(prefix + route.path) + "/[^/]+"),
                                      f"{prefix}{route.path}/{{file}}"))
                elif route.param_convertors:
                    templates.append((re.compile(re.escape(prefix) + route.path_regex.pattern.lstrip("^").rstrip("$")),
                                      prefix + route.path))
                else:
                    fixed.add(prefix + route.path)
        self.fixed, self.templates = frozenset(fixed), tuple(templates)

    def __call__(self, path: str, api_routes: frozenset[str] = frozenset()) -> str:
        """Itself for a fixed route or an API route, the template of a route with parameters, ``{unmatched}``
        otherwise."""
        if path in self.fixed or path in api_routes:
            return path
        return next((template for pattern, template in self.templates if pattern.fullmatch(path)), UNMATCHED)


class _RealPath:
    """Inside the metrics middleware: gives the rest of the app the path the client sent."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if REAL_PATH in scope:
            scope = {**scope, "path": scope[REAL_PATH]}
        await self.app(scope, receive, send)


def install(mounts) -> bool:
    """Replace BentoML's request-metrics middleware by one that labels by route template (before the app
    is built: the worker builds it after importing the service); ``mounts``: the service's ``mount_apps``.
    True when installed."""
    try:
        from bentoml._internal.server.http import instruments

        base = instruments.RunnerTrafficMetricsMiddleware
    except (ImportError, AttributeError) as error:
        log.warning("request metrics keep BentoML's raw-path labels (%s)", error)
        return False
    if getattr(base, "labels_by_template", False):
        return True
    labels = RouteLabels(mounts)

    class TemplatedPathMetrics(base):
        labels_by_template = True

        def __init__(self, app, *args, **kwargs) -> None:
            super().__init__(_RealPath(app), *args, **kwargs)
            self._api_routes: frozenset[str] | None = None

        async def __call__(self, scope, receive, send):
            if scope.get("type") == "http":
                if self._api_routes is None:  # the worker sets its routes once, before serving
                    self._api_routes = _api_routes()
                template = labels(scope["path"], self._api_routes)
                if template != scope["path"]:
                    scope = {**scope, "path": template, REAL_PATH: scope["path"]}
            await super().__call__(scope, receive, send)

    instruments.RunnerTrafficMetricsMiddleware = TemplatedPathMetrics
    return True


def _api_routes() -> frozenset[str]:
    from bentoml._internal.context import server_context

    return frozenset(server_context.service_routes)
