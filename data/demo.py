"""A deterministic synthetic catalogue for demos and tests: SPUs with drawn images, titles, reviews,
order histories, market snapshots and a book of pledged positions.

Each SPU has latent attributes (category, material, size, pattern, colour, brand tier, quality). Price
is a product of their effects, and each one shows somewhere a model can read it:

| attribute    | price effect        | in the image                  | in the title          |
|--------------|---------------------|-------------------------------|-----------------------|
| category     | base price level    | silhouette                    | always (the noun)     |
| material     | x0.6 .. x3.0        | fill texture and tint         | 35% of titles         |
| size         | x0.8 .. x1.5        | how much of the frame it fills| 40% of titles         |
| pattern      | x1.0 .. x1.15       | overlay                       | 30% of titles         |
| brand tier   | x0.7 .. x1.6        | -                             | always (brand name)   |
| quality      | x0.86 .. x1.16      | -                             | -  (reviews' tone)    |

So a title-only model misses most of material and size, and the image tower has something to add.
The same seed gives byte-identical files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, ImageDraw

from data.market import derive_market
from data.schemas import ORDERS, POSITIONS, REVIEWS, SPUS

# category: (title noun, base price, daily log-price volatility, cancel rate, silhouette)
CATEGORIES = {
    "watch": ("Watch", 120.0, 0.010, 0.04, "circle"),
    "handbag": ("Handbag", 90.0, 0.012, 0.06, "bag"),
    "sneaker": ("Sneakers", 70.0, 0.015, 0.08, "shoe"),
    "lamp": ("Table Lamp", 45.0, 0.008, 0.05, "lamp"),
    "vase": ("Vase", 30.0, 0.006, 0.03, "vase"),
    "kettle": ("Kettle", 40.0, 0.007, 0.04, "kettle"),
    "headphones": ("Headphones", 80.0, 0.020, 0.07, "headphones"),
    "backpack": ("Backpack", 55.0, 0.010, 0.05, "backpack"),
    "chair": ("Chair", 110.0, 0.006, 0.05, "chair"),
    "mug": ("Mug", 12.0, 0.005, 0.02, "mug"),
    "sunglasses": ("Sunglasses", 60.0, 0.018, 0.06, "glasses"),
    "perfume": ("Perfume", 65.0, 0.012, 0.03, "bottle"),
}
# material: (price multiplier, RGB of its look, texture)
MATERIALS = {
    "plastic": (0.6, None, "flat"),
    "ceramic": (0.9, (236, 232, 224), "gloss"),
    "wood": (1.0, (139, 94, 52), "grain"),
    "steel": (1.4, (160, 166, 172), "brushed"),
    "leather": (1.8, None, "grainy"),
    "gold": (3.0, (212, 175, 55), "brushed"),
}
SIZES = {"S": (0.8, 0.50, "Small"), "M": (1.0, 0.65, "Medium"), "L": (1.25, 0.78, "Large"), "XL": (1.5, 0.92, "XL")}
PATTERNS = {"plain": 1.0, "striped": 1.08, "dotted": 1.03, "checked": 1.15}
COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 190), "green": (40, 150, 70), "black": (30, 30, 30),
           "white": (245, 245, 245), "orange": (240, 140, 30)}
BRANDS = {  # name: price tier
    "Aurora": 1.6, "Kestrel": 1.5, "Monarch": 1.4, "Vantage": 1.3, "Halden": 1.2, "Brightway": 1.1,
    "Corvid": 1.0, "Nimbus": 1.0, "Tessera": 0.95, "Larkspur": 0.9, "Quill": 0.85, "Dunmore": 0.8,
    "Basix": 0.75, "ValueCo": 0.7,
}
BORROWERS = ["Harbor Trading Ltd", "Eastgate Wholesale", "Blue Finch Retail", "Meridian Goods", "Sable Imports",
             "Northwind Supply", "Crescent Distribution", "Oakline Merchants"]
WAREHOUSES = ["WH-LON-01", "WH-MAN-02", "WH-BHX-03", "WH-GLA-04", "WH-FRA-05", "WH-RTM-06"]
POSITIVE = ["Great {n}, well made and exactly as pictured.", "Excellent quality {n}, would buy again.",
            "Love this {n}. Sturdy and looks premium.", "Very happy with the {n}; fast delivery, solid build."]
NEUTRAL = ["The {n} is okay for the price.", "Decent {n}, nothing special.", "Average {n}; does the job."]
NEGATIVE = ["Poor quality {n}, broke after a week.", "Terrible {n}. Cheap materials, returned it.",
            "Disappointed: the {n} arrived scratched and feels flimsy.", "Awful {n}, stopped working, want a refund."]

START = date(2024, 1, 1)
IMAGE_SIZE = 96


@dataclass(frozen=True)
class DemoCatalog:
    root: Path
    spus: pl.DataFrame
    reviews: pl.DataFrame
    orders: pl.DataFrame
    market: pl.DataFrame
    positions: pl.DataFrame
    truth: pl.DataFrame  # latent attributes and the noise-free price: for evaluation only

    TABLES = ("spus", "reviews", "orders", "market", "positions", "truth")


def generate_demo_catalog(out: Path | str, *, n_spus: int = 2000, seed: int = 0, days: int = 120,
                          new_share: float = 0.1) -> DemoCatalog:
    """Write the demo catalogue to ``out`` (parquet tables + images/) and return it."""
    if n_spus < 12:
        raise ValueError(f"n_spus must be >= 12 (one per category), got {n_spus}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    truth = _draw_latents(rng, n_spus)
    spus = _titles(rng, truth)
    for row in truth.iter_rows(named=True):
        _draw_image(np.random.default_rng([seed, row["index"]]), row).save(out / f"images/{row['spu_id']}.png",
                                                                             optimize=False)
    reviews = _reviews(rng, truth)
    has_history = rng.random(n_spus) >= new_share
    orders = _orders(rng, truth, has_history, days)
    # buyers come from their own stream, so the rest of the catalogue is what it was before they existed
    orders = orders.with_columns(_buyers(np.random.default_rng([seed, 0, 1]), orders, n_spus)).cast(ORDERS.polars_schema)
    market = derive_market(orders)
    positions = _positions(rng, truth, market, days)

    catalog = DemoCatalog(out, spus, reviews, orders, market, positions, truth)
    for name in DemoCatalog.TABLES:
        getattr(catalog, name).write_parquet(out / f"{name}.parquet", statistics=False)
    return catalog


def _draw_latents(rng: np.random.Generator, n: int) -> pl.DataFrame:
    cats = list(CATEGORIES)
    category = np.array(cats)[np.arange(n) % len(cats)]  # balanced, then shuffled
    rng.shuffle(category)
    material = rng.choice(list(MATERIALS), n)
    size = rng.choice(list(SIZES), n)
    pattern = rng.choice(list(PATTERNS), n, p=[0.4, 0.2, 0.2, 0.2])
    colour = rng.choice(list(COLOURS), n)
    brand = rng.choice(list(BRANDS), n)
    quality = np.clip(rng.normal(0, 1, n), -2.5, 2.5)
    price = (
        np.array([CATEGORIES[c][1] for c in category])
        * np.array([MATERIALS[m][0] for m in material])
        * np.array([SIZES[s][0] for s in size])
        * np.array([PATTERNS[p] for p in pattern])
        * np.array([BRANDS[b] for b in brand])
        * np.exp(0.06 * quality)
        * np.exp(rng.normal(0, 0.08, n))
    )
    return pl.DataFrame({
        "index": np.arange(n), "spu_id": [f"DEMO{i:05d}" for i in range(n)], "category": category,
        "material": material, "size": size, "pattern": pattern, "colour": colour, "brand": brand,
        "quality": quality.round(4), "true_price": price.round(2),
    })


def _titles(rng: np.random.Generator, truth: pl.DataFrame) -> pl.DataFrame:
    n = truth.height
    shows = {k: rng.random(n) < p for k, p in {"material": 0.35, "size": 0.4, "pattern": 0.3, "colour": 0.6}.items()}
    letters = rng.integers(65, 91, (n, 2))
    numbers = rng.integers(100, 999, n)
    titles = []
    for i, row in enumerate(truth.iter_rows(named=True)):
        words = [row["brand"], f"{chr(letters[i, 0])}{chr(letters[i, 1])}-{numbers[i]}"]
        if shows["colour"][i]:
            words.append(row["colour"].title())
        if shows["material"][i]:
            words.append(row["material"].title())
        if shows["pattern"][i] and row["pattern"] != "plain":
            words.append(row["pattern"].title())
        words.append(CATEGORIES[row["category"]][0])
        if shows["size"][i]:
            words.append(SIZES[row["size"]][2])
        titles.append(" ".join(words))
    return pl.DataFrame({
        "spu_id": truth["spu_id"], "title": titles, "category": truth["category"], "brand": truth["brand"],
        "images": [[f"images/{s}.png"] for s in truth["spu_id"]],
    }, schema=SPUS.polars_schema)


def _reviews(rng: np.random.Generator, truth: pl.DataFrame) -> pl.DataFrame:
    counts = rng.poisson(3.0, truth.height)
    rows = []
    for row, count in zip(truth.iter_rows(named=True), counts):
        noun = CATEGORIES[row["category"]][0].lower()
        for _ in range(count):
            rating = int(np.clip(round(3 + 1.2 * row["quality"] + rng.normal(0, 0.8)), 1, 5))
            pool = POSITIVE if rating >= 4 else NEGATIVE if rating <= 2 else NEUTRAL
            text = pool[rng.integers(len(pool))].format(n=noun)
            at = datetime.combine(START, datetime.min.time()) + timedelta(minutes=int(rng.integers(0, 180 * 1440)))
            rows.append((row["spu_id"], text, rating, at))
    frame = pl.DataFrame(rows, schema=REVIEWS.polars_schema, orient="row")
    return frame.unique(subset=list(REVIEWS.key), keep="first", maintain_order=True)


def _buyers(rng: np.random.Generator, orders: pl.DataFrame, n_spus: int) -> pl.Series:
    """Who bought each line: a quarter are guest orders (no id, as on a real web shop); of the rest, 40% come
    from the SPU's three regulars and the others from the whole pool, a few big buyers taking most."""
    pool, m = max(50, n_spus // 2), orders.height
    spu = orders["spu_id"].rank("dense").to_numpy().astype(np.int64) - 1
    regular = (spu * 7919 + rng.integers(0, 3, m)) % pool
    anyone = np.minimum(rng.zipf(1.6, m) - 1, pool - 1)
    buyer = np.where(rng.random(m) < 0.4, regular, anyone)
    guest = rng.random(m) < 0.25
    return pl.Series("customer_id", [None if g else f"B{b:05d}" for g, b in zip(guest, buyer)], dtype=pl.String)


def _orders(rng: np.random.Generator, truth: pl.DataFrame, has_history: np.ndarray, days: int) -> pl.DataFrame:
    n = truth.height
    cats = truth["category"].to_numpy()
    vol = np.array([CATEGORIES[c][2] for c in cats]) * np.exp(rng.normal(0, 0.3, n))
    trend = rng.normal(0, 0.0008, n)
    steps = rng.normal(0, 1, (n, days)) * vol[:, None]
    log_path = np.cumsum(steps, axis=1) + trend[:, None] * np.arange(days)
    # Shocks: a share of SPUs take a lasting price hit (fashion turns, a recall, a competitor's launch).
    shocked = rng.random(n) < 0.12
    shock_day = rng.integers(days // 3, days, n)
    shock_size = np.log(rng.uniform(0.6, 0.85, n))
    log_path += np.where(shocked[:, None] & (np.arange(days) >= shock_day[:, None]), shock_size[:, None], 0.0)
    price_path = truth["true_price"].to_numpy()[:, None] * np.exp(log_path)

    velocity = np.exp(rng.normal(np.log(0.45), 0.7, n)) * np.where(truth["quality"].to_numpy() > -1, 1.0, 0.5)
    demand_trend = rng.normal(0, 0.004, n)
    rate = velocity[:, None] * np.exp(demand_trend[:, None] * np.arange(days)) * has_history[:, None]
    rate *= np.where(shocked[:, None] & (np.arange(days) >= shock_day[:, None]), 0.5, 1.0)
    lines = rng.poisson(rate)  # order lines per SPU and day
    spu_idx, day_idx = np.nonzero(lines)
    repeat = lines[spu_idx, day_idx]
    spu_idx, day_idx = np.repeat(spu_idx, repeat), np.repeat(day_idx, repeat)
    m = spu_idx.size

    cancel_rate = np.array([CATEGORIES[c][3] for c in cats]) * np.where(truth["quality"].to_numpy() < -1, 3.0, 1.0)
    unit_price = np.round(price_path[spu_idx, day_idx] * np.exp(rng.normal(0, 0.03, m)), 2)
    ordered_at = (np.datetime64(START, "us") + day_idx.astype("timedelta64[D]")
                  + rng.integers(8 * 3600, 20 * 3600, m).astype("timedelta64[s]"))
    frame = pl.DataFrame({
        "order_id": [f"DO{i:08d}" for i in range(m)],
        "spu_id": truth["spu_id"].to_numpy()[spu_idx],
        "quantity": 1 + rng.poisson(1.5, m),
        "unit_price": np.maximum(unit_price, 0.01),
        "ordered_at": ordered_at,
        "cancelled": rng.random(m) < cancel_rate[spu_idx],
    })
    return frame.sort("ordered_at", "order_id")


def _positions(rng: np.random.Generator, truth: pl.DataFrame, market: pl.DataFrame, days: int) -> pl.DataFrame:
    pledge_day = START + timedelta(days=int(days * 0.75))
    recent = (market.filter(pl.col("date").is_between(pledge_day - timedelta(days=30), pledge_day))
              .group_by("spu_id").agg(pl.col("price").median().alias("price"), pl.len().alias("days"),
                                      (pl.col("units_sold").sum() / 30).alias("units_per_day"))
              .filter(pl.col("days") >= 3).sort("spu_id"))
    n = min(recent.height, max(20, truth.height // 5))
    pick = np.sort(rng.choice(recent.height, n, replace=False))
    chosen = recent[pick]
    # Borrowers pledge a few weeks to a few months of sales: what a lender would finance at all.
    quantity = np.maximum(10, np.round(chosen["units_per_day"].to_numpy() * rng.uniform(15, 120, n))).astype(np.int64)
    pledge_unit_price = np.round(chosen["price"].to_numpy() * 0.7, 2)
    offset = rng.integers(0, 30, n)
    loan_of = rng.integers(0, max(1, n // 3), n)
    return pl.DataFrame({
        "position_id": [f"P{i:06d}" for i in range(n)],
        "loan_id": [f"L{j:05d}" for j in loan_of],
        "borrower": [BORROWERS[j % len(BORROWERS)] for j in loan_of],
        "spu_id": chosen["spu_id"],
        "quantity": quantity,
        "warehouse": np.array(WAREHOUSES)[rng.integers(0, len(WAREHOUSES), n)],
        "pledged_at": [pledge_day - timedelta(days=int(o)) for o in offset],
        "loan_amount": np.round(quantity * pledge_unit_price * rng.uniform(0.8, 1.0, n), 2),
        "pledge_unit_price": pledge_unit_price,
    }, schema=POSITIONS.polars_schema)


def _draw_image(rng: np.random.Generator, row: dict) -> Image.Image:
    s = IMAGE_SIZE
    background = tuple(int(v) for v in rng.integers(215, 250, 3))
    img = Image.new("RGB", (s, s), background)
    draw = ImageDraw.Draw(img)
    scale = SIZES[row["size"]][1] * rng.uniform(0.95, 1.05)
    w = h = s * scale
    cx, cy = s / 2 + rng.uniform(-3, 3), s / 2 + rng.uniform(-3, 3)
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)

    mask = Image.new("L", (s, s), 0)
    _silhouette(ImageDraw.Draw(mask), CATEGORIES[row["category"]][4], box)
    fill = _material_fill(rng, row["material"], COLOURS[row["colour"]], s)
    _overlay_pattern(ImageDraw.Draw(fill), row["pattern"], COLOURS[row["colour"]], row["material"], s)
    img.paste(fill, (0, 0), mask)
    draw.rectangle((0, 0, s - 1, s - 1), outline=(200, 200, 200))
    return img


def _silhouette(d: ImageDraw.ImageDraw, shape: str, box) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        d.ellipse(box, fill=255)
        d.rectangle((x0 + w * 0.4, y0 - h * 0.1, x1 - w * 0.4, y1 + h * 0.1), fill=255)  # strap
    elif shape == "bag":
        d.rounded_rectangle((x0, y0 + h * 0.3, x1, y1), radius=w * 0.08, fill=255)
        d.arc((x0 + w * 0.25, y0, x1 - w * 0.25, y0 + h * 0.6), 180, 360, fill=255, width=max(2, int(w * 0.07)))
    elif shape == "shoe":
        d.polygon([(x0, y1), (x0, y0 + h * 0.45), (x0 + w * 0.45, y0 + h * 0.4), (x1, y0 + h * 0.75), (x1, y1)],
                  fill=255)
    elif shape == "lamp":
        d.polygon([(x0 + w * 0.2, y0 + h * 0.45), (x0 + w * 0.35, y0), (x1 - w * 0.35, y0), (x1 - w * 0.2, y0 + h * 0.45)],
                  fill=255)
        d.rectangle((x0 + w * 0.46, y0 + h * 0.45, x1 - w * 0.46, y1 - h * 0.1), fill=255)
        d.rectangle((x0 + w * 0.25, y1 - h * 0.1, x1 - w * 0.25, y1), fill=255)
    elif shape == "vase":
        d.ellipse((x0 + w * 0.1, y0 + h * 0.35, x1 - w * 0.1, y1), fill=255)
        d.rectangle((x0 + w * 0.35, y0, x1 - w * 0.35, y0 + h * 0.5), fill=255)
    elif shape == "kettle":
        d.pieslice((x0, y0 + h * 0.15, x1 - w * 0.15, y1 + h * 0.6), 180, 360, fill=255)
        d.polygon([(x1 - w * 0.2, y0 + h * 0.6), (x1, y0 + h * 0.3), (x1, y0 + h * 0.4), (x1 - w * 0.1, y0 + h * 0.75)],
                  fill=255)
    elif shape == "headphones":
        d.arc((x0, y0, x1, y1), 180, 360, fill=255, width=max(2, int(w * 0.1)))
        d.rounded_rectangle((x0, y0 + h * 0.45, x0 + w * 0.25, y1), radius=w * 0.05, fill=255)
        d.rounded_rectangle((x1 - w * 0.25, y0 + h * 0.45, x1, y1), radius=w * 0.05, fill=255)
    elif shape == "backpack":
        d.rounded_rectangle((x0 + w * 0.1, y0, x1 - w * 0.1, y1), radius=w * 0.25, fill=255)
    elif shape == "chair":
        d.rectangle((x0 + w * 0.15, y0, x0 + w * 0.3, y1), fill=255)
        d.rectangle((x0 + w * 0.15, y0 + h * 0.5, x1 - w * 0.15, y0 + h * 0.62), fill=255)
        d.rectangle((x1 - w * 0.3, y0 + h * 0.5, x1 - w * 0.15, y1), fill=255)
    elif shape == "mug":
        d.rectangle((x0 + w * 0.1, y0 + h * 0.15, x1 - w * 0.3, y1), fill=255)
        d.arc((x1 - w * 0.45, y0 + h * 0.35, x1, y0 + h * 0.8), 270, 90, fill=255, width=max(2, int(w * 0.08)))
    elif shape == "glasses":
        d.ellipse((x0, y0 + h * 0.3, x0 + w * 0.45, y0 + h * 0.7), fill=255)
        d.ellipse((x1 - w * 0.45, y0 + h * 0.3, x1, y0 + h * 0.7), fill=255)
        d.rectangle((x0 + w * 0.4, y0 + h * 0.45, x1 - w * 0.4, y0 + h * 0.5), fill=255)
    elif shape == "bottle":
        d.rounded_rectangle((x0 + w * 0.15, y0 + h * 0.3, x1 - w * 0.15, y1), radius=w * 0.1, fill=255)
        d.rectangle((x0 + w * 0.4, y0, x1 - w * 0.4, y0 + h * 0.32), fill=255)
    else:  # pragma: no cover - CATEGORIES lists every silhouette
        raise ValueError(f"unknown silhouette {shape!r}")


def _material_fill(rng: np.random.Generator, material: str, colour: tuple[int, int, int], s: int) -> Image.Image:
    base = np.array(MATERIALS[material][1] or colour, dtype=np.float32)
    texture = MATERIALS[material][2]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    if texture == "grain":
        shade = 1 + 0.18 * np.sin(xx / 2.2 + 3 * np.sin(yy / 9 + rng.uniform(0, 6)))
    elif texture == "brushed":
        shade = 0.8 + 0.45 * (xx + yy) / (2 * s) + 0.05 * rng.normal(0, 1, (s, 1))
    elif texture == "grainy":
        shade = 0.85 + 0.25 * rng.random((s, s))
    elif texture == "gloss":
        shade = 1 + 0.25 * np.exp(-(((xx - s * 0.35) ** 2 + (yy - s * 0.3) ** 2) / (2 * (s * 0.12) ** 2)))
    else:  # flat plastic: saturated and uniform
        shade = np.ones((s, s), dtype=np.float32)
    pixels = np.clip(base[None, None, :] * shade[..., None], 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _overlay_pattern(d: ImageDraw.ImageDraw, pattern: str, colour, material: str, s: int) -> None:
    ink = tuple(255 - c for c in colour) if MATERIALS[material][1] is None else colour
    if pattern == "striped":
        for x in range(-s, s, 10):
            d.line((x, 0, x + s, s), fill=ink, width=3)
    elif pattern == "dotted":
        for x in range(4, s, 11):
            for y in range(4, s, 11):
                d.ellipse((x, y, x + 4, y + 4), fill=ink)
    elif pattern == "checked":
        for x in range(0, s, 12):
            d.line((x, 0, x, s), fill=ink, width=2)
            d.line((0, x, s, x), fill=ink, width=2)


def latent_price_effects() -> dict[str, dict[str, float]]:
    """The multipliers above, for documentation and for tests that check the signal is there."""
    return {
        "category": {k: v[1] for k, v in CATEGORIES.items()},
        "material": {k: v[0] for k, v in MATERIALS.items()},
        "size": {k: v[0] for k, v in SIZES.items()},
        "pattern": dict(PATTERNS),
        "brand": dict(BRANDS),
        "quality_per_sd": math.exp(0.06),
    }
