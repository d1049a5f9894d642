"""The error shape and the log level of client errors, without a server."""

import json
import logging
import sys

from bentoml.exceptions import BentoMLException

from serving.errors import ClientErrorsAtInfo, field_path, reshaped


def test_bentoml_list_answers_and_validation_counts_become_one_shape():
    assert json.loads(reshaped(b'[{"error": "items: empty"}]')) == {"error": "items: empty"}
    detail = [{"type": "greater_than", "loc": ["items", 0, "quantity"], "msg": "Input should be greater than 0"}]
    body = json.loads(reshaped(json.dumps({"error": "1 validation error for Input", "detail": detail}).encode()))
    assert body == {"error": "items[0].quantity: Input should be greater than 0", "detail": detail}
    assert reshaped(b'{"error": "unknown sweep_id"}') is None and reshaped(b"not json") is None
    assert field_path(("items", 2, "images", 0)) == "items[2].images[0]"


def record_of(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("bentoml", logging.ERROR, __file__, 1, "Exception on %s [%s]", ("/price", "POST"), info)


def test_client_errors_log_one_info_line_and_server_errors_stay_errors():
    client = record_of(BentoMLException("spu_id: unknown", error_code=404))
    assert ClientErrorsAtInfo().filter(client)
    assert client.levelno == logging.INFO and client.exc_info is None
    assert "client error 404" in client.getMessage() and "spu_id: unknown" in client.getMessage()
    server = record_of(BentoMLException("boom", error_code=500))
    assert ClientErrorsAtInfo().filter(server)
    assert server.levelno == logging.ERROR and server.exc_info is not None
    crash = record_of(RuntimeError("bug"))
    ClientErrorsAtInfo().filter(crash)
    assert crash.levelno == logging.ERROR and crash.exc_info is not None
