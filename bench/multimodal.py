"""What the image adds: pricing real fashion products from text alone vs text + image.

Myntra layout (``products.parquet`` + ``images/<id>.jpg``). Everything is trained on ``--train`` only:
the image towers (open_clip ClipLoss against the locked MiniLM text tower, on (image, title) pairs), the
SPU index, the lexical model and the value head with its conformal calibration. Each test product is
priced by two models, one per arm, fitted on the same training rows with the same settings:
  (a) title + catalogue attributes,  (b) the same + the image (its vector and comparables by image).
Each arm fits its own head and calibration (arm (a) never sees an image), so the difference is what the
image adds to a model that can use it. Target: selling price (``discounted_price`` > 0). Issue 14's two
public recipes (``bench/recipes.py``: Mercari's sparse MLPs, the Amazon teams' kNN prices + trees over title,
image and combined spaces) are fitted on the same training products and scored on the same test products.

The split keeps near-duplicates on one side. Products that share a normalised title or a byte-identical
image file are joined into one group (union-find over both keys, over all priced products); without
``--test``, whole groups that hold ~20% of the products with an image are held out, their imaged
products are the test set and their other products are left out of training. With ``--test``, training
products in a group with a test product are left out. ``--seeds`` repeats everything per seed (split,
towers, heads) and reports each seed and the spread; the bootstrap interval inside a seed covers only
the choice of test products.

Image vectors, the same kind for every product: each group with an image is put in one of two folds, an
image tower is trained on each fold's training pairs, and every product's image (training or test) is
embedded by the tower of the other fold, which saw neither the product nor its near-duplicates. So the
head trains on image vectors as far from their titles as those it meets at pricing time (a tower that
trained on a product maps its image almost onto its title, and a head fitted on such vectors learns to
trust them too much; ``--in-sample`` prices from one tower trained on all training pairs, for
comparison). Recall@10 is that of the image vectors the head prices from, on the test products.

    python bench/multimodal.py --train ../shared/data/myntra [--test DIR] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

# Waiting OpenMP threads (torch, scikit-learn's trees) sleep instead of spinning: on a machine shared with
# other work, spinning threads slowed this bench's tree heads ~15x and tower steps ~2x (measured on 2 busy
# cores); on an idle machine it costs little. Set before torch and scikit-learn load their OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, shared  # noqa: E402
from bench.recipes import knn_boosted_trees, mercari_mlp  # noqa: E402
from data import MyntraCatalog, read_myntra  # noqa: E402
from embeddings import SpuEmbedder, SpuIndex, SpuVectors, create_encoder, train_image_tower  # noqa: E402
from embeddings.encoder import Encoder  # noqa: E402
from embeddings.features import ORDER_FEATURES  # noqa: E402
from embeddings.spu import _normalise, fuse  # noqa: E402
from embeddings.training import TrainReport, retrieval_recall  # noqa: E402
from valuation.attributes import ATTRIBUTES  # noqa: E402
from valuation.metrics import paired_smape_gain, value_metrics  # noqa: E402
from valuation.training import ValueModel  # noqa: E402

TEST_SHARE = 0.2


def normalised_title(title: str | None) -> str:
    return re.sub(r"[^0-9a-z]+", " ", (title or "").lower()).strip()


def duplicate_groups(spus: pl.DataFrame) -> np.ndarray:
    """Group id per row: rows that share a normalised title or a byte-identical first image are one group
    (union-find, so chains join: A~B by title and B~C by image puts A, B and C together)."""
    parent = list(range(spus.height))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, (title, images) in enumerate(zip(spus["title"].to_list(), spus["images"].to_list())):
        key = normalised_title(title)
        keys = [f"title:{key}"] if key else []
        if images:
            keys.append(f"image:{hashlib.sha256(Path(images[0]).read_bytes()).hexdigest()}")
        for key in keys:
            a, b = root(i), root(first_with.setdefault(key, i))
            if a != b:
                parent[a] = b
    return np.array([root(i) for i in range(spus.height)])


@dataclass
class Split:
    train_ids: list[str]
    test_ids: list[str]
    left_out: int             # products kept out of training because a near-duplicate is tested
    fold_of: dict[str, int]   # imaged product -> 0/1: its image is embedded by the other fold's tower


def split(spus: pl.DataFrame, group: np.ndarray, is_test: np.ndarray | None, seed: int) -> Split:
    """Without ``is_test``: hold out whole duplicate groups until ~20% of the imaged products are held
    out; test products all have an image (the claim is about images). With it: the given test products,
    and training loses the products grouped with one of them. Then every group with an image gets a fold."""
    rng = np.random.default_rng(seed)
    ids = np.array(spus["spu_id"].to_list())
    imaged = (spus["images"].list.len() > 0).to_numpy()
    if is_test is None:
        counts = np.bincount(group, weights=imaged)
        candidates = rng.permutation(np.flatnonzero(counts > 0))
        target = round(TEST_SHARE * imaged.sum())
        held = candidates[:np.searchsorted(np.cumsum(counts[candidates]), target) + 1]
        tested = np.isin(group, held)
        is_test = tested & imaged
    else:
        tested = np.isin(group, group[is_test])
    train = ~tested
    # Folds for the two image towers, by group and balanced by imaged products.
    counts = np.bincount(group, weights=imaged)
    order = rng.permutation(np.flatnonzero(counts > 0))
    fold_of_group = dict(zip(order.tolist(), (np.cumsum(counts[order]) > counts.sum() / 2).astype(int).tolist()))
    fold_of = {ids[i]: fold_of_group[group[i]] for i in np.flatnonzero(imaged & (train | is_test))}
    return Split(train_ids=ids[train].tolist(), test_ids=ids[is_test & imaged].tolist(),
                 left_out=int((tested & ~is_test).sum()), fold_of=fold_of)


def pricing_frame(catalog: MyntraCatalog) -> pl.DataFrame:
    """SPUs whose text is title + attributes: what both arms are priced from."""
    return (catalog.spus.join(catalog.text, on="spu_id", how="left", maintain_order="left")
            .with_columns(pl.col("text").alias("title")).drop("text"))


def with_title_cache(encoder: Encoder, cache: dict[str, np.ndarray]) -> Encoder:
    """The text tower is locked, the same in every tower, so the titles a tower trains against are
    encoded once for all towers and seeds (``train_image_tower`` asks ``encoder.encode_texts``)."""
    encode = encoder.encode_texts

    def encode_texts(texts, *args, **kwargs) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            cache.update(zip(missing, encode(missing, *args, **kwargs)))
        return np.stack([cache[t] for t in texts]) if len(texts) else encode([], *args, **kwargs)

    encoder.encode_texts = encode_texts
    return encoder


def with_images(text_vectors: SpuVectors, spu_ids: list[str], image: np.ndarray) -> SpuVectors:
    """Text-only vectors plus these image vectors (rows in ``spu_ids`` order); content and fused vectors
    are rebuilt as ``SpuEmbedder.embed`` builds them (no reviews, no orders here)."""
    row = {s: i for i, s in enumerate(text_vectors.spu_ids)}
    rows = np.array([row[s] for s in spu_ids], dtype=np.int64)
    full = np.zeros_like(text_vectors.title)
    full[rows] = _normalise(image)
    has_image = np.zeros(len(full), dtype=bool)
    has_image[rows] = True
    content = _normalise(text_vectors.title + full)
    zeros = np.zeros((len(content), len(ORDER_FEATURES)), dtype=np.float32)
    return replace(text_vectors, image=full, content=content, has={**text_vectors.has, "image": has_image},
                   vectors=fuse(content, np.zeros_like(content), zeros))


def price_arm(vectors: SpuVectors, spus: pl.DataFrame, prices: pl.DataFrame, parts: Split, dim: int,
              fingerprint: str, seed: int) -> tuple[pl.DataFrame, str]:
    """Value per test SPU (value, low, high) from a model fitted on the training SPUs."""
    train_vectors = vectors.take(parts.train_ids)
    index = SpuIndex(dim, fingerprint, "flat")
    index.add(parts.train_ids, train_vectors.content)
    titles = dict(zip(spus["spu_id"].to_list(), spus["title"].to_list()))
    launch = pl.DataFrame({"spu_id": parts.train_ids}).join(prices, on="spu_id", how="left", maintain_order="left")
    # category (article type) and brand, as the spus table gives them to `pledgeval train`
    attributes = {row.pop("spu_id"): row for row in spus.select("spu_id", *ATTRIBUTES).iter_rows(named=True)}
    model = ValueModel(random_state=seed).fit(index, train_vectors, titles, launch, attributes=attributes)
    values, _ = model.predict(index, vectors.take(parts.test_ids), [titles[s] for s in parts.test_ids],
                              attributes=[attributes[s] for s in parts.test_ids])
    out = values.select("spu_id", pl.col("log_value").exp().alias("value"), pl.col("log_low").exp().alias("low"),
                        pl.col("log_high").exp().alias("high"))
    return out, model.cold.head_.chosen_


def recipe_baselines(vectors: SpuVectors, spus: pl.DataFrame, prices: pl.DataFrame, parts: Split,
                     seed: int) -> dict[str, np.ndarray]:
    """Issue 14's public recipes on the same training and test products as the arms: Mercari's MLPs on
    the title + attributes text; the Amazon teams' trees over the title and image vectors with kNN
    price statistics by title, by image and by the combined vector. Training rows in catalogue order."""
    train = (pl.DataFrame({"spu_id": parts.train_ids}).join(prices, on="spu_id", how="left", maintain_order="left")
             .sort("first_sold", maintain_order=True))
    ids, y = train["spu_id"].to_list(), np.log(train["price"].to_numpy())
    titles = dict(zip(spus["spu_id"].to_list(), spus["title"].to_list()))
    mlp = mercari_mlp([titles[s] for s in ids], y, [titles[s] for s in parts.test_ids], seed=seed)
    tr, te = vectors.take(ids), vectors.take(parts.test_ids)
    spaces = [(getattr(tr, kind), tr.has[kind], getattr(te, kind), te.has[kind]) for kind in ("title", "image")]
    spaces.append((tr.content, np.ones(len(ids), dtype=bool), te.content, np.ones(len(parts.test_ids), dtype=bool)))
    knn, _ = knn_boosted_trees(spaces, ids, y, (np.hstack([tr.title, tr.image]), np.hstack([te.title, te.image])),
                               seed=seed)
    return {"Mercari: sparse TF-IDF MLPs": np.exp(mlp), "Amazon: kNN prices + GBT": np.exp(knn)}


@dataclass
class Bench:
    """What every seed shares: the catalogue, the text-only vectors, the locked text tower's title vectors."""
    args: argparse.Namespace
    catalog: pl.DataFrame       # spus with their own titles (the towers train on these)
    spus: pl.DataFrame          # the same rows, title = title + attributes (the arms price from these)
    prices: pl.DataFrame
    group: np.ndarray           # near-duplicate group per row (see ``duplicate_groups``)
    is_test: np.ndarray | None  # rows from --test
    text_vectors: SpuVectors
    text_encoder: Encoder
    titles: dict[str, np.ndarray]

    def tower(self, pairs: pl.DataFrame, seed: int) -> tuple[SpuEmbedder, TrainReport]:
        encoder = with_title_cache(create_encoder(self.args.config), self.titles)
        report = train_image_tower(encoder, pairs["title"].to_list(), pairs["images"].list.first().to_list(),
                                   epochs=self.args.epochs, test_share=0.05, seed=seed,
                                   time_budget_s=self.args.tower_budget, log=None)
        return SpuEmbedder(encoder), report

    def run(self, seed: int) -> dict:
        """Split, towers, both arms and their figures for one seed."""
        started = time.monotonic()
        parts = split(self.catalog, self.group, self.is_test, seed)
        used = self.catalog.filter(pl.col("spu_id").is_in(list(parts.fold_of)))  # imaged, train or test
        ids, paths = used["spu_id"].to_list(), used["images"].list.first().to_list()
        pairs = used.filter(pl.col("spu_id").is_in(parts.train_ids))
        image = np.zeros((len(ids), self.text_encoder.dim), dtype=np.float32)
        reports = []
        if self.args.in_sample:
            embedder, report = self.tower(pairs, seed)
            image[:], reports = embedder.encode_images(paths), [report]
        else:
            fold = np.array([parts.fold_of[s] for s in ids])
            fold_of_pair = np.array([parts.fold_of[s] for s in pairs["spu_id"]])
            for k in (0, 1):
                embedder, report = self.tower(pairs.filter(pl.Series(fold_of_pair == k)), 2 * seed + k)
                rows = np.flatnonzero(fold != k)  # this tower embeds the other fold's images
                image[rows] = embedder.encode_images([paths[i] for i in rows])
                reports.append(report)
        vectors = with_images(self.text_vectors, ids, image)
        tower_s = time.monotonic() - started

        test = vectors.take(parts.test_ids)
        own_title = dict(zip(self.catalog["spu_id"].to_list(), self.catalog["title"].to_list()))
        recall = retrieval_recall(test.image, np.stack([self.titles[own_title[s]] for s in parts.test_ids]),
                                  ks=(1, 10))
        dim, fingerprint = self.text_encoder.dim, self.text_encoder.fingerprint
        arms = {"title + attributes": price_arm(self.text_vectors, self.spus, self.prices, parts, dim, fingerprint, seed),
                "title + attributes + image": price_arm(vectors, self.spus, self.prices, parts, dim, fingerprint, seed)}
        baselines = {} if self.args.skip_recipes else recipe_baselines(vectors, self.spus, self.prices, parts, seed)
        truth = pl.DataFrame({"spu_id": parts.test_ids}).join(self.prices, on="spu_id", how="left", maintain_order="left")
        category = pl.DataFrame({"spu_id": parts.test_ids}).join(self.catalog, on="spu_id", how="left",
                                                                  maintain_order="left")["category"]
        return figures(seed, parts, reports, recall, truth["price"].to_numpy(),
                       category.fill_null("(none)").to_numpy(), arms, baselines, tower_s, time.monotonic() - started)


def figures(seed, parts, reports, recall, actual, category, arms, baselines, tower_s, seconds) -> dict:
    metrics = {name: value_metrics(actual, f["value"].to_numpy(), f["low"].to_numpy(), f["high"].to_numpy())
               for name, (f, _) in arms.items()}
    text_value, ours = (arms[name][0]["value"].to_numpy() for name in ("title + attributes", "title + attributes + image"))
    recipes = {name: {"smape": value_metrics(actual, predicted)["smape"], "value": predicted,
                      "gain_ci95": paired_smape_gain(actual, predicted, ours, seed=seed)}
               for name, predicted in baselines.items()}
    # How sure is the gain within the seed? Resample the test products (paired: both arms priced the same).
    ci_low, ci_high = paired_smape_gain(actual, text_value, ours, seed=seed)
    text, both = metrics["title + attributes"], metrics["title + attributes + image"]
    return {"seed": seed, "parts": parts, "reports": reports, "arms": arms, "metrics": metrics, "actual": actual,
            "recipes": recipes,
            "category": category, "tower_seconds": tower_s, "seconds": seconds,
            "smape_text": text["smape"], "smape_text_image": both["smape"], "image_gain": text["smape"] - both["smape"],
            "coverage90": both["coverage90"], "coverage90_text": text["coverage90"],
            "recall10_image_to_title": recall[10], "recall1": recall[1], "chance10": min(1.0, 10 / len(actual)),
            "n_test": both["n"], "image_gain_ci95_low": ci_low, "image_gain_ci95_high": ci_high}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=None, help="Myntra-layout folder (default: shared data)")
    parser.add_argument("--test", type=Path, default=None, help="held-out folder of the same layout")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; each repeats split, towers and heads")
    parser.add_argument("--config", default="minilm-rn-tiny")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tower-budget", type=float, default=None,
                        help="seconds per image tower (default: none, so the figures do not depend on how busy "
                             "the machine is; a tower cut short shows in the epochs reported)")
    parser.add_argument("--skip-recipes", action="store_true",
                        help="leave out issue 14's public recipes (Mercari MLPs, kNN + trees)")
    parser.add_argument("--in-sample", action="store_true",
                        help="price from one tower trained on all training pairs (no folds; optimistic)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if not seeds:
        parser.error("--seeds: give at least one seed")
    started = time.monotonic()

    catalogs = [read_myntra(args.train or shared("myntra"))] + ([read_myntra(args.test)] if args.test else [])
    catalog = pl.concat([c.spus for c in catalogs])
    spus = pl.concat([pricing_frame(c) for c in catalogs])
    prices = pl.concat([c.prices for c in catalogs])
    is_test = np.arange(catalog.height) >= catalogs[0].spus.height if args.test else None
    if catalog["spu_id"].n_unique() != catalog.height:
        raise SystemExit("spu_id repeats across --train and --test")

    # Text vectors once for all seeds (the text tower is locked); the cache encodes a repeated text once.
    text_encoder = create_encoder(args.config)
    with tempfile.TemporaryDirectory() as work:
        text_vectors = SpuEmbedder(text_encoder, cache_path=Path(work) / "vectors.db").embed(
            spus.with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("images")))
    imaged_titles = catalog.filter(pl.col("images").list.len() > 0)["title"].unique().to_list()
    titles = dict(zip(imaged_titles, text_encoder.encode_texts(imaged_titles)))
    bench = Bench(args, catalog, spus, prices, duplicate_groups(catalog), is_test, text_vectors, text_encoder,
                  titles)
    print(f"{catalog.height} priced products, {len(imaged_titles)} distinct titles with an image; "
          f"text vectors in {time.monotonic() - started:.0f}s", flush=True)

    runs = []
    for seed in seeds:
        runs.append(bench.run(seed))
        r = runs[-1]
        print(f"seed {seed}: train {len(r['parts'].train_ids)}, test {r['n_test']}, "
              f"image_gain {r['image_gain']:+.4f}, {r['seconds']:.0f}s", flush=True)
    report(runs, args, time.monotonic() - started)


KEYS = ("smape_text", "smape_text_image", "image_gain", "coverage90", "coverage90_text", "recall10_image_to_title")


def report(runs: list[dict], args, seconds: float) -> None:
    print_table("Per seed (each: its own split, towers and heads); gain = SMAPE text - SMAPE text+image",
                ["seed", "train", "test", "left out", "tower epochs", "recall@10", "SMAPE text", "SMAPE text+image",
                 "gain", "gain 95% (test resampled)", "cov90 text", "cov90", "heads",
                 "seconds (towers)"],
                [[str(r["seed"]), str(len(r["parts"].train_ids)), str(r["n_test"]), str(r["parts"].left_out),
                  "/".join(str(t.epochs) for t in r["reports"]), f"{r['recall10_image_to_title']:.4f}",
                  f"{r['smape_text']:.4f}", f"{r['smape_text_image']:.4f}", f"{r['image_gain']:+.4f}",
                  f"{r['image_gain_ci95_low']:+.4f} .. {r['image_gain_ci95_high']:+.4f}",
                  f"{r['coverage90_text']:.3f}", f"{r['coverage90']:.3f}",
                  "/".join(chosen for _, chosen in r["arms"].values()),
                  f"{r['seconds']:.0f} ({r['tower_seconds']:.0f})"] for r in runs])
    spread = {k: np.array([r[k] for r in runs]) for k in KEYS}
    print_table(f"Over {len(runs)} seeds", ["figure", "mean", "std", "min", "max"],
                [[k, f"{v.mean():.4f}", f"{v.std(ddof=1) if len(v) > 1 else 0.0:.4f}", f"{v.min():.4f}",
                  f"{v.max():.4f}"] for k, v in spread.items()])

    # All seeds' test products together (a product tested in several seeds counts once per seed).
    actual = np.concatenate([r["actual"] for r in runs])
    category = np.concatenate([r["category"] for r in runs])
    names = list(runs[0]["arms"])
    pooled = {name: {col: np.concatenate([r["arms"][name][0][col].to_numpy() for r in runs])
                     for col in ("value", "low", "high")} for name in names}
    rows = []
    for name in names:
        m = value_metrics(actual, pooled[name]["value"], pooled[name]["low"], pooled[name]["high"])
        rows.append([name, f"{m['smape']:.4f}", f"{m['median_ape']:.4f}", f"{m['mae']:.0f}", f"{m['coverage90']:.3f}",
                     f"{m['median_width']:.2f}", str(m["n"])])
    for name in runs[0]["recipes"]:
        m = value_metrics(actual, np.concatenate([r["recipes"][name]["value"] for r in runs]))
        rows.append([f"{name} (recipe)", f"{m['smape']:.4f}", f"{m['median_ape']:.4f}", f"{m['mae']:.0f}", "-", "-",
                     str(m["n"])])
    print_table("Selling price of held-out products (INR), all seeds together: each arm its own head and "
                "calibration, fitted on the same rows; the public recipes on the same rows",
                ["inputs", "SMAPE", "median APE", "MAE", "coverage90", "median width", "n"], rows)
    if runs[0]["recipes"]:
        print_table("Ours (title + attributes + image) against each public recipe, per seed: SMAPE gain, paired "
                    "95% bootstrap over the test products (above zero: ours wins)", ["seed", "recipe", "recipe SMAPE",
                                                                                      "ours SMAPE", "gain 95%"],
                    [[str(r["seed"]), name, f"{rec['smape']:.4f}", f"{r['smape_text_image']:.4f}",
                      "{:+.4f} .. {:+.4f}".format(*rec["gain_ci95"])] for r in runs for name, rec in r["recipes"].items()])
    by_category = []
    counts = pl.Series("category", category).value_counts(sort=True).filter(pl.col("count") >= 20 * len(runs))
    for name in counts["category"].to_list()[:15]:
        mask = category == name
        a, b = (value_metrics(actual[mask], pooled[arm]["value"][mask])["smape"] for arm in names)
        by_category.append([name, str(int(mask.sum())), f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"])
    print_table("By category (>= 20 test products a seed), all seeds: SMAPE; gain = text - text+image "
                "(positive: the image helps)", ["category", "n", "text", "text + image", "gain"], by_category)
    print_table("Image towers (on --train pairs only; recall on each tower's own 5% of its pairs)",
                ["seed", "tower", "pairs", "epochs", "seconds", "recall@10"],
                [[str(r["seed"]), "all" if args.in_sample else f"fold {k}", str(t.n_train), str(t.epochs),
                  f"{t.seconds:.0f}", f"{t.recall_at_10:.4f}"] for r in runs for k, t in enumerate(r["reports"])])

    print(f"\n{seconds:.0f}s wall, {time.process_time():.0f}s CPU over all threads (on a busy machine the wall "
          f"time says more about the neighbours than about this bench)")
    mean = lambda k: float(np.mean([r[k] for r in runs]))  # noqa: E731
    gains = spread["image_gain"]
    print(" ".join(f"{k}={mean(k):.4f}" for k in KEYS) + f" chance10={mean('chance10'):.4f} "
          f"n_test={round(mean('n_test'))} image_gain_ci95_low={mean('image_gain_ci95_low'):.4f} "
          f"image_gain_ci95_high={mean('image_gain_ci95_high'):.4f} image_gain_min={gains.min():.4f} "
          f"image_gain_max={gains.max():.4f} image_gain_std={gains.std(ddof=1) if len(gains) > 1 else 0.0:.4f} "
          f"n_seeds={len(runs)} seconds={seconds:.0f}"
          + "".join(f" {key}_smape={np.mean([r['recipes'][name]['smape'] for r in runs]):.4f}"
                    f" gain_over_{key}_ci95_low={np.mean([r['recipes'][name]['gain_ci95'][0] for r in runs]):.4f}"
                    for key, name in (("mercari", "Mercari: sparse TF-IDF MLPs"), ("knn_gbt", "Amazon: kNN prices + GBT"))
                    if name in runs[0]["recipes"]))


if __name__ == "__main__":
    main()
