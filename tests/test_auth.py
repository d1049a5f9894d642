"""Request limits: the API-key and body-size middleware on a bare Starlette app, and the item caps."""

import logging
import sys

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.schemas import MAX_BODY_BYTES


async def echo(request: Request) -> JSONResponse:
    return JSONResponse({"bytes": len(await request.body())})


@pytest.fixture
def client(monkeypatch):
    monkeypatch.setenv("PLEDGEVAL_API_KEY", "s3cret")
    from serving.auth import ApiKeyMiddleware

    return TestClient(ApiKeyMiddleware(Starlette(routes=[Route("/echo", echo, methods=["POST"])])))


@pytest.mark.parametrize("headers", [{"X-API-Key": "s3cret"}, {"Authorization": "Bearer s3cret"},
                                     {"Authorization": "bearer s3cret"}, {"Authorization": "BEARER  s3cret "},
                                     {"X-API-Key": "", "Authorization": "Bearer s3cret"}])  # an empty one is none
def test_the_key_is_taken_from_either_header_and_the_scheme_in_any_case(client, headers):
    assert client.post("/echo", content=b"x", headers=headers).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"},
                                     {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
def test_a_missing_wrong_or_scheme_less_key_is_refused(client, headers):
    response = client.post("/echo", content=b"x", headers=headers)
    assert response.status_code == 401 and "API key" in response.json()["error"]


def test_a_chunked_body_over_the_limit_is_413_not_500(client):
    def chunks():
        piece = b"x" * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(piece) + 2):
            yield piece
    response = client.post("/echo", content=chunks(), headers={"X-API-Key": "s3cret"})
    assert response.status_code == 413 and "request body over" in response.json()["error"]
    small = client.post("/echo", content=iter([b"abc", b"def"]), headers={"X-API-Key": "s3cret"})
    assert small.status_code == 200 and small.json() == {"bytes": 6}


def test_a_body_over_the_limit_is_logged_as_a_client_error():
    """BentoML logs the exception the limit raises inside the app: one INFO line, not a server error."""
    from serving.auth import BodyTooLarge
    from serving.errors import ClientErrorsAtInfo

    try:
        raise BodyTooLarge("request body over the limit")
    except BodyTooLarge:
        record = logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on /price", (), sys.exc_info())
    ClientErrorsAtInfo().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None and "413" in record.getMessage()


@pytest.mark.parametrize("reviews", [["x" * 2001], ["fine"] * 51])
def test_reviews_are_capped_in_count_and_length_naming_the_field(reviews):
    from pydantic import ValidationError

    from serving.schemas import PriceItem

    with pytest.raises(ValidationError, match="reviews"):
        PriceItem(spu_id="a", reviews=reviews)
    assert len(PriceItem(spu_id="a", reviews=["x" * 2000] * 50).reviews) == 50
