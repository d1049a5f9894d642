"""Same-SPU matching on real data: calibrate the similarity threshold on Online Retail.

Stock codes with several descriptions give positive pairs (a variant spelling should match its own
code); codes left out of the index give new-SPU queries (nothing should match). The threshold is chosen
on half of the codes and its precision/recall reported on the other half.

    python bench/matching.py [--online-retail ../shared/data/online_retail]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import print_table, shared  # noqa: E402
from data import read_online_retail  # noqa: E402
from data.online_retail import title_variants  # noqa: E402
from embeddings import SpuEmbedder, SpuIndex, calibrate_match_threshold, create_encoder  # noqa: E402
from embeddings.matching import best_candidate, match_quality  # noqa: E402


def bucket(code: str, salt: str) -> float:
    return int(hashlib.sha256(f"{salt}:{code}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--online-retail", type=Path, default=None)
    parser.add_argument("--new-share", type=float, default=0.2, help="codes kept out of the index")
    parser.add_argument("--target-precision", type=float, default=0.95)
    args = parser.parse_args()
    path = args.online_retail or shared("online_retail")
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]

    retail = read_online_retail(path)
    variants = title_variants(files[0])
    canonical = retail.spus.select("spu_id", "title")
    codes = canonical["spu_id"].to_list()
    new_codes = {c for c in codes if bucket(c, "new") < args.new_share}
    indexed = canonical.filter(~pl.col("spu_id").is_in(list(new_codes)))

    embedder = SpuEmbedder(create_encoder())
    index = SpuIndex(embedder.encoder.dim, embedder.encoder.fingerprint, "flat")
    index.add(indexed["spu_id"].to_list(), embedder.encode_texts(indexed["title"].to_list()))

    # positives: other spellings of indexed codes; new: every spelling of codes not in the index
    queries = (variants.join(canonical.rename({"title": "canonical"}), on="spu_id")
               .filter(pl.col("spu_id").is_in(list(new_codes)) | (pl.col("title") != pl.col("canonical")))
               .with_columns(pl.col("spu_id").is_in(list(new_codes)).not_().alias("positive")))
    titles = indexed
    results = index.search(embedder.encode_texts(queries["title"].to_list()), k=10)
    decided = [best_candidate(q, hits.join(titles, on="spu_id", how="left", maintain_order="left"))
               for q, hits in zip(queries["title"].to_list(), results)]
    plain_top1 = [hits["spu_id"][0] for hits in results]
    queries = queries.with_columns(pl.Series("score", [d[1] for d in decided]),
                                   pl.Series("top", [d[0] for d in decided]),
                                   pl.Series("plain_score", [float(h["score"][0]) for h in results]),
                                   pl.Series("plain_top", plain_top1)).with_columns(
        (pl.col("top") == pl.col("spu_id")).alias("correct"),
        pl.col("spu_id").map_elements(lambda c: bucket(c, "half") < 0.5, return_dtype=pl.Boolean).alias("calib"))

    calib, report = queries.filter(pl.col("calib")), queries.filter(~pl.col("calib"))
    chosen = calibrate_match_threshold(calib["score"].to_numpy(), calib["correct"].to_numpy(),
                                       calib["positive"].to_numpy(), args.target_precision)
    held = match_quality(report["score"].to_numpy(), report["correct"].to_numpy() & report["positive"].to_numpy(),
                         report["positive"].to_numpy(), chosen.threshold)
    rows = []
    for t in sorted({chosen.threshold, 0.80, 0.85, 0.90, 0.95}):
        q = match_quality(report["score"].to_numpy(), report["correct"].to_numpy() & report["positive"].to_numpy(),
                          report["positive"].to_numpy(), t)
        rows.append([f"{t:.3f}" + (" (chosen)" if t == chosen.threshold else ""),
                     f"{q['precision']:.3f}", f"{q['recall']:.3f}", f"{q['f1']:.3f}"])
    plain = calibrate_match_threshold(calib["plain_score"].to_numpy(),
                                      (calib["plain_top"] == calib["spu_id"]).to_numpy(),
                                      calib["positive"].to_numpy(), args.target_precision)
    plain_held = match_quality(report["plain_score"].to_numpy(),
                               (report["plain_top"] == report["spu_id"]).to_numpy() & report["positive"].to_numpy(),
                               report["positive"].to_numpy(), plain.threshold)
    rows.append([f"cosine only, {plain.threshold:.3f}", f"{plain_held['precision']:.3f}",
                 f"{plain_held['recall']:.3f}", f"{plain_held['f1']:.3f}"])
    print_table(f"Same-SPU matching on Online Retail: {len(indexed):,} indexed codes; report half: "
                f"{int(report['positive'].sum())} variant spellings, {int((~report['positive']).sum())} new-SPU "
                f"titles", ["threshold", "precision", "recall", "F1"], rows)
    print(f"calibration half: threshold={chosen.threshold:.3f} precision={chosen.precision:.3f} "
          f"recall={chosen.recall:.3f} (target precision {args.target_precision})")
    print(f"match_threshold={chosen.threshold:.4f} precision={held['precision']:.4f} recall={held['recall']:.4f} "
          f"f1={held['f1']:.4f} cosine_only_precision={plain_held['precision']:.4f} "
          f"cosine_only_recall={plain_held['recall']:.4f} n_positive={int(report['positive'].sum())} n_new={int((~report['positive']).sum())}")


if __name__ == "__main__":
    main()
