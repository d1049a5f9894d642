"""Request schemas of the HTTP service, and how item errors become HTTP status codes."""

from __future__ import annotations

import base64
import binascii
from http import HTTPStatus
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

MAX_BATCH = 256
MAX_REVIEWS = 50
MAX_REVIEW_CHARS = 2000
MAX_IMAGE_BYTES = 8 * 1024 * 1024
MAX_BODY_BYTES = 4 * MAX_IMAGE_BYTES + 1024 * 1024  # a few base64 images and the rest of the batch


class SpuQuery(BaseModel):
    title: str | None = Field(None, max_length=500, description="Product title")
    image_base64: str | None = Field(None, max_length=MAX_IMAGE_BYTES * 4 // 3 + 4,
                                     description="One product photo, base64 (JPEG/PNG/WebP)")

    @field_validator("image_base64")
    @classmethod
    def _decodable(cls, value: str | None) -> str | None:
        if value is not None:
            image_bytes(value)
        return value

    def images(self) -> list[bytes]:
        return [image_bytes(self.image_base64)] if self.image_base64 else []


class PriceItem(SpuQuery):
    spu_id: str = Field(min_length=1, max_length=128, description="Known SPU id, or a new id for a new SPU")
    # a review is embedded per request: the caps keep one item's text work to a fraction of a second
    reviews: list[Annotated[str, Field(max_length=MAX_REVIEW_CHARS)]] = Field(
        default_factory=list, max_length=MAX_REVIEWS, description=f"Review texts (at most {MAX_REVIEWS}, "
                                                                  f"{MAX_REVIEW_CHARS} characters each)")
    quantity: int = Field(1, gt=0, le=1_000_000_000, strict=True, description="Units pledged")
    category: str | None = Field(None, max_length=200, description="A new SPU's category (article type), if known; "
                                                                   "otherwise its nearest comparable's is used")
    brand: str | None = Field(None, max_length=200, description="A new SPU's brand, if known; otherwise its nearest "
                                                                "comparable's is used")

    def request(self) -> dict:
        return {"spu_id": self.spu_id, "title": self.title, "images": self.images(), "reviews": self.reviews,
                "quantity": self.quantity, "category": self.category, "brand": self.brand}


class MarketObservation(BaseModel):
    """One day of an SPU's market, as a desk's price feed sends it. Values are checked per item by the
    monitor (monitoring.market_updates), so one bad observation does not refuse the batch."""
    spu_id: str = Field(max_length=128, description="A known SPU")
    date: str = Field(max_length=32, description="ISO date of the observation (not in the future)")
    # strict: a price or units sent as text or true is a wrong type (a 400), not a number read into it;
    # the range only keeps units within the store's integers (the monitor checks the value)
    price: float = Field(strict=True, description="Median unit price paid that day (finite, > 0)")
    units: int = Field(strict=True, ge=-(2**63), lt=2**63, description="Units sold that day (>= 0)")
    source: str | None = Field(None, max_length=64, description="Where the observation comes from (kept with it)")


def image_bytes(value: str) -> bytes:
    try:
        data = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image_base64 is not valid base64: {exc}") from exc
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image is {len(data):,} bytes; at most {MAX_IMAGE_BYTES:,}")
    return data


def status_of(error: str) -> HTTPStatus:
    """The HTTP status a single failed item earns, from the field its error names."""
    if error.startswith("spu_id: unknown spu_id"):
        return HTTPStatus.NOT_FOUND
    if error.startswith("images:"):
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE if "pixel limit" in error else HTTPStatus.BAD_REQUEST
    return HTTPStatus.UNPROCESSABLE_ENTITY
