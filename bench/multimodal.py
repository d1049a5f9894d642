"""What the image adds: pricing real fashion products from text alone vs text + image.

Myntra layout (``products.parquet`` + ``images/<id>.jpg``). Everything is trained on ``--train`` only:
the image tower (open_clip ClipLoss against the locked MiniLM text tower, on (image, title) pairs), the
SPU index, the lexical model and the value head with its conformal calibration. Then each test product
is priced twice with the same head and calibration, fitted on the same rows:
  (a) title + catalogue attributes,  (b) the same + its image,
so the difference is the image alone. Without ``--test``, a seeded 20% of the priced products that have
an image is held out. Target: selling price (``discounted_price`` > 0).

The head trains on image vectors it could also meet at pricing time: a training product's image is
embedded by a tower trained on the other half of the pairs (two more towers, each on half), so its image
vector is as far from its title as a new product's. The tower that trained on a product maps its image
almost onto its title, and a head fitted on such vectors learns to trust them too much
(``--in-sample`` prices from them, for comparison). Recall@10 is the main tower's.

    python bench/multimodal.py --train ../shared/data/myntra [--test DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, shared  # noqa: E402
from data import MyntraCatalog, read_myntra  # noqa: E402
from embeddings import SpuEmbedder, SpuIndex, SpuVectors, create_encoder, train_image_tower  # noqa: E402
from embeddings.features import ORDER_FEATURES  # noqa: E402
from embeddings.spu import _normalise, fuse  # noqa: E402
from embeddings.training import retrieval_recall  # noqa: E402
from valuation.metrics import value_metrics  # noqa: E402
from valuation.training import ValueModel  # noqa: E402


def split(train: MyntraCatalog, test: MyntraCatalog | None, seed: int) -> tuple[list[str], list[str]]:
    """Train and test spu_ids; test products all have an image (the claim is about images)."""
    with_image = train.spus.filter(pl.col("images").list.len() > 0)["spu_id"].to_list()
    if test is not None:
        test_ids = test.spus.filter(pl.col("images").list.len() > 0)["spu_id"].to_list()
        return train.spus["spu_id"].to_list(), test_ids
    rng = np.random.default_rng(seed)
    held = set(rng.choice(with_image, size=int(round(0.2 * len(with_image))), replace=False).tolist())
    return [s for s in train.spus["spu_id"] if s not in held], [s for s in with_image if s in held]


def pricing_frame(catalog: MyntraCatalog) -> pl.DataFrame:
    """SPUs whose text is title + attributes: what both arms are priced from."""
    return (catalog.spus.join(catalog.text, on="spu_id", how="left", maintain_order="left")
            .with_columns(pl.col("text").alias("title")).drop("text"))


def cross_fitted(vectors: SpuVectors, spus: pl.DataFrame, towers: list[SpuEmbedder], fold_of: dict[str, int]) -> SpuVectors:
    """Image vectors a head may train on honestly: a training product's image is embedded by the tower
    that did not see it (the towers share the locked text space, so their vectors are comparable); a
    test product's by the mean of all towers. Content and fused vectors are rebuilt from them."""
    paths = spus["images"].to_list()
    rows = [i for i, p in enumerate(paths) if p]
    by_tower = [t.encode_images([paths[i][0] for i in rows]) for t in towers]
    image = np.zeros_like(vectors.image)
    for k, i in enumerate(rows):
        fold = fold_of.get(vectors.spu_ids[i])
        image[i] = np.mean([v[k] for v in by_tower], axis=0) if fold is None else by_tower[1 - fold][k]
    image = _normalise(image)
    content = _normalise(vectors.title + image)
    zeros = np.zeros((len(content), len(ORDER_FEATURES)), dtype=np.float32)
    return replace(vectors, image=image, content=content,
                   vectors=fuse(content, np.zeros_like(content), zeros))


def price_arm(vectors: SpuVectors, spus: pl.DataFrame, prices: pl.DataFrame, train_ids: list[str],
              test_ids: list[str], dim: int, fingerprint: str) -> tuple[pl.DataFrame, str]:
    """Value per test SPU (value, low, high) from a head fitted on ``train_ids``."""
    train_vectors = vectors.take(train_ids)
    index = SpuIndex(dim, fingerprint, "flat")
    index.add(train_ids, train_vectors.content)
    titles = dict(zip(spus["spu_id"].to_list(), spus["title"].to_list()))
    launch = pl.DataFrame({"spu_id": train_ids}).join(prices, on="spu_id", how="left", maintain_order="left")
    model = ValueModel().fit(index, train_vectors, titles, launch)
    test = vectors.take(test_ids)
    values, _ = model.predict(index, test, [titles[s] for s in test_ids])
    out = values.select("spu_id", pl.col("log_value").exp().alias("value"), pl.col("log_low").exp().alias("low"),
                        pl.col("log_high").exp().alias("high"))
    return out, model.cold.head_.chosen_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=None, help="Myntra-layout folder (default: shared data)")
    parser.add_argument("--test", type=Path, default=None, help="held-out folder of the same layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="minilm-rn-tiny")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tower-budget", type=float, default=600.0,
                        help="seconds for the main image tower (each half tower gets half)")
    parser.add_argument("--in-sample", action="store_true",
                        help="train the head on the main tower's image vectors (no half towers; optimistic)")
    args = parser.parse_args()
    started = time.monotonic()

    train = read_myntra(args.train or shared("myntra"))
    test = read_myntra(args.test) if args.test else None
    train_ids, test_ids = split(train, test, args.seed)
    spus = pricing_frame(train) if test is None else pl.concat([pricing_frame(train), pricing_frame(test)])
    prices = train.prices if test is None else pl.concat([train.prices, test.prices])
    display = train.spus if test is None else pl.concat([train.spus, test.spus])
    display = pl.DataFrame({"spu_id": test_ids}).join(display, on="spu_id", how="left", maintain_order="left")
    tower_pairs = (train.spus.filter(pl.col("spu_id").is_in(train_ids) & (pl.col("images").list.len() > 0)))
    print(f"train: {len(train_ids)} priced products ({tower_pairs.height} with an image); "
          f"test: {len(test_ids)} with an image")

    with tempfile.TemporaryDirectory() as work:
        encoder = create_encoder(args.config)
        report = train_image_tower(encoder, tower_pairs["title"].to_list(), tower_pairs["images"].list.first().to_list(),
                                   epochs=args.epochs, test_share=0.05, seed=args.seed,
                                   time_budget_s=args.tower_budget, checkpoint=Path(work) / "tower.pt")
        tower_s = time.monotonic() - started
        encoder = create_encoder(args.config, checkpoint=Path(work) / "tower.pt")
        embedder = SpuEmbedder(encoder, cache_path=Path(work) / "vectors.db", progress=False)

        test_images = embedder.encode_images(display["images"].list.first().to_list())
        test_titles = embedder.encode_texts(display["title"].to_list())
        recall = retrieval_recall(test_images, test_titles, ks=(1, 10))
        chance10 = min(1.0, 10 / len(test_ids))

        dim, fingerprint = encoder.dim, encoder.fingerprint
        text_vectors = embedder.embed(spus.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("images")))
        image_vectors = embedder.embed(spus)
        if not args.in_sample:
            # two more towers, each on half of the training pairs, for out-of-sample training features
            rng = np.random.default_rng(args.seed + 1)
            halves = rng.permutation(tower_pairs.height) % 2
            fold_of = dict(zip(tower_pairs["spu_id"].to_list(), halves.tolist()))
            towers = []
            for fold in (0, 1):
                pairs = tower_pairs.filter(pl.Series(halves == fold))
                fold_encoder = create_encoder(args.config)
                train_image_tower(fold_encoder, pairs["title"].to_list(), pairs["images"].list.first().to_list(),
                                  epochs=args.epochs, test_share=0.05, seed=args.seed + 1 + fold,
                                  time_budget_s=args.tower_budget / 2, log=None)
                towers.append(SpuEmbedder(fold_encoder))
            image_vectors = cross_fitted(image_vectors, spus, towers, fold_of)
        text_only, chosen_text = price_arm(text_vectors, spus, prices, train_ids, test_ids, dim, fingerprint)
        with_image, chosen_image = price_arm(image_vectors, spus, prices, train_ids, test_ids, dim, fingerprint)

    truth = pl.DataFrame({"spu_id": test_ids}).join(prices, on="spu_id", how="left", maintain_order="left")
    category = display["category"].fill_null("(none)").to_numpy()
    actual = truth["price"].to_numpy()
    arms = {"title + attributes": (text_only, chosen_text), "title + attributes + image": (with_image, chosen_image)}
    metrics = {name: value_metrics(actual, f["value"].to_numpy(), f["low"].to_numpy(), f["high"].to_numpy())
               for name, (f, _) in arms.items()}
    rows = [[name, chosen, f"{m['smape']:.4f}", f"{m['median_ape']:.4f}", f"{m['mae']:.0f}",
             f"{m['coverage90']:.3f}", f"{m['median_width']:.2f}", str(m["n"])]
            for (name, (_, chosen)), m in zip(arms.items(), metrics.values())]
    print_table("Selling price of held-out products (INR): same head and calibration, with and without the image",
                ["inputs", "head", "SMAPE", "median APE", "MAE", "coverage90", "median width", "n"], rows)

    # How sure is the gain? Resample the test products (paired: both arms priced the same products).
    per_product = {name: 2 * np.abs(f["value"].to_numpy() - actual) / (f["value"].to_numpy() + actual)
                   for name, (f, _) in arms.items()}
    gain = per_product["title + attributes"] - per_product["title + attributes + image"]
    draws = np.random.default_rng(args.seed).integers(0, len(gain), size=(2000, len(gain)))
    ci_low, ci_high = np.percentile(gain[draws].mean(axis=1), [2.5, 97.5])
    print(f"image gain {gain.mean():+.4f} SMAPE, 95% interval {ci_low:+.4f} .. {ci_high:+.4f} (paired bootstrap "
          f"over the {len(gain)} test products; tower and head retraining noise not included)")

    smape_of = lambda f, mask: value_metrics(actual[mask], f["value"].to_numpy()[mask])["smape"]  # noqa: E731
    by_category = []
    counts = pl.Series("category", category).value_counts(sort=True).filter(pl.col("count") >= 20)
    for name in counts["category"].to_list()[:15]:
        mask = category == name
        a, b = smape_of(text_only, mask), smape_of(with_image, mask)
        by_category.append([name, str(int(mask.sum())), f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"])
    print_table("By category (>= 20 test products): SMAPE; gain = text - text+image (positive: the image helps)",
                ["category", "n", "text", "text + image", "gain"], by_category)

    print_table("Image tower (trained on --train pairs only)", ["measure", "value"], [
        ["training pairs", str(report.n_train)], ["epochs", str(report.epochs)], ["seconds", f"{report.seconds:.0f}"],
        ["test image -> title recall@1", f"{recall[1]:.4f}"], ["test image -> title recall@10", f"{recall[10]:.4f}"],
        ["chance@10", f"{chance10:.4f}"], ["recall@10 / chance", f"{recall[10] / chance10:.1f}x"],
        ["tower seconds / total seconds", f"{tower_s:.0f} / {time.monotonic() - started:.0f}"]])

    text, both = metrics["title + attributes"], metrics["title + attributes + image"]
    print(f"smape_text={text['smape']:.4f} smape_text_image={both['smape']:.4f} "
          f"image_gain={text['smape'] - both['smape']:.4f} coverage90={both['coverage90']:.4f} "
          f"coverage90_text={text['coverage90']:.4f} recall10_image_to_title={recall[10]:.4f} "
          f"chance10={chance10:.4f} n_test={both['n']} image_gain_ci95_low={ci_low:.4f} image_gain_ci95_high={ci_high:.4f} "
          f"seconds={time.monotonic() - started:.0f}")


if __name__ == "__main__":
    main()
