"""The serving bench's floor: the service's /price route doing no work.

Same BentoML settings (serving.config), the same input type (so the same request validation), the same
API-key and error middlewares; the answer is a constant real answer of /price (``PLEDGEVAL_FLOOR_ANSWER``,
a JSON file written by bench/serving.py), so its size and encoding cost are the same too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml

from serving.auth import ApiKeyMiddleware
from serving.config import service_config
from serving.errors import ErrorShapeMiddleware
from serving.schemas import PriceItem

ANSWER = json.loads(Path(os.environ["PLEDGEVAL_FLOOR_ANSWER"]).read_text())


@bentoml.service(**service_config())
class FloorService:
    @bentoml.api(route="/price")
    async def price(self, items: list[PriceItem]) -> list[dict]:
        return [ANSWER] * len(items)


FloorService.add_asgi_middleware(ApiKeyMiddleware)
FloorService.add_asgi_middleware(ErrorShapeMiddleware)
