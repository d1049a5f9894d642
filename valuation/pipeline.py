"""What a user triggers to get a model, written once for the CLI, the service and the benches: read the
training tables (a catalogue folder or an Online Retail file), train the image tower when the default one
is missing, train the model, find a trained model by BentoML tag or folder, and hand the monitor its
value function. Defaults (paths, model tag, encoder) live here and nowhere else.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import polars as pl

from data import load_catalog, read_online_retail
from embeddings.encoder import DEFAULT_CONFIG
from valuation.model import MODEL_NAME, PledgeModel

MODEL_TAG = os.environ.get("PLEDGEVAL_MODEL", f"{MODEL_NAME}:latest")
DEFAULT_TOWER = Path("var/models/image-tower.pt")   # the demo's trained image tower
DEFAULT_INDEX = Path("var/index")
VECTOR_CACHE = Path("var/cache/vectors.db")
TOWER_EPOCHS = 20
MIN_TOWER_PAIRS = 20      # fewer SPUs with an image: no tower is trained
EMPTY_VALUES = {"spu_id": pl.String, "value": pl.Float64, "value_low": pl.Float64, "value_high": pl.Float64}


def training_tables(catalog: Path | None = None, online_retail: Path | None = None,
                    until: str | None = None) -> dict[str, pl.DataFrame]:
    """spus, reviews and orders of a catalogue folder, or spus and orders of an Online Retail file read up
    to ``until``. Exactly one source; raises ValueError otherwise and DataFileError on a bad file."""
    if (catalog is None) == (online_retail is None):
        raise ValueError("give exactly one of --catalog or --online-retail")
    if online_retail is not None:
        retail = read_online_retail(online_retail, until=until)
        return {"spus": retail.spus, "orders": retail.orders}
    return load_catalog(catalog, ("spus", "reviews", "orders"))


def train_tower(spus: pl.DataFrame, out: Path, config: str = DEFAULT_CONFIG, *, epochs: int = TOWER_EPOCHS,
                batch_size: int = 128, seed: int = 0, time_budget: float | None = None, log=print):
    """Train the image tower against the locked text tower on the SPUs' (first image, title) pairs and save
    it at ``out``; returns the training report (held-out recall)."""
    from embeddings import create_encoder, train_image_tower

    with_images = spus.filter(pl.col("images").list.len() > 0)
    if with_images.height < MIN_TOWER_PAIRS:
        raise ValueError(f"only {with_images.height} SPUs with images; training needs at least {MIN_TOWER_PAIRS}")
    encoder = create_encoder(config)
    log and log(f"training the image tower of '{config}' on {with_images.height} (image, title) pairs ...")
    return train_image_tower(encoder, with_images["title"].to_list(), with_images["images"].list.first().to_list(),
                             epochs=epochs, batch_size=batch_size, seed=seed, time_budget_s=time_budget,
                             checkpoint=out, log=log)


def default_checkpoint(config: str, checkpoint: Path | None) -> Path | None:
    """The checkpoint to use: the one asked for, else the demo's trained tower where the default encoder
    is used and that tower exists. Raises FileNotFoundError for a checkpoint that is not there."""
    if checkpoint is None and config == DEFAULT_CONFIG and DEFAULT_TOWER.is_file():
        checkpoint = DEFAULT_TOWER
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    return checkpoint


def encoder_for(config: str = DEFAULT_CONFIG, checkpoint: Path | None = None):
    from embeddings import create_encoder

    return create_encoder(config, checkpoint=default_checkpoint(config, checkpoint))


def train_model(tables: dict[str, pl.DataFrame], *, config: str = DEFAULT_CONFIG, checkpoint: Path | None = None,
                tower_epochs: int = TOWER_EPOCHS, cache: Path = VECTOR_CACHE, log=print) -> PledgeModel:
    """Train the pledge model. With the default encoder and no checkpoint, a catalogue with images gets the
    default image tower, trained first when it does not exist yet."""
    spus = tables["spus"]
    if (checkpoint is None and config == DEFAULT_CONFIG and "images" in spus.columns
            and spus.filter(pl.col("images").list.len() > 0).height >= MIN_TOWER_PAIRS):
        if not DEFAULT_TOWER.is_file():
            train_tower(spus, DEFAULT_TOWER, config, epochs=tower_epochs, log=log)
        checkpoint = DEFAULT_TOWER
    return PledgeModel.train(tables, encoder_config=config, checkpoint=default_checkpoint(config, checkpoint),
                             cache_path=cache, log=log)


def resolve_model(ref: str | None = None) -> PledgeModel:
    """A trained model by saved folder or BentoML tag (default MODEL_TAG). Raises LookupError naming the
    reference and the next step when there is none."""
    ref = ref or MODEL_TAG
    try:
        return PledgeModel.load(ref) if Path(ref).is_dir() else PledgeModel.load_from_store(ref)
    except Exception as exc:  # bentoml raises its own NotFound; the user needs the tag and a next step
        raise LookupError(f"cannot load model '{ref}': {exc}. Train one first: pledgeval train --catalog DIR") \
            from exc


def value_function(model: PledgeModel) -> Callable[[list[str]], pl.DataFrame]:
    """spu_ids -> spu_id, value, value_low, value_high of the known ones: the monitor's value for SPUs
    whose market price is stale."""
    def values(spu_ids: list[str]) -> pl.DataFrame:
        answers = model.price([{"spu_id": s} for s in spu_ids if s in model.known_spu_ids])
        if answers.height == 0:
            return pl.DataFrame(schema=EMPTY_VALUES)
        return answers.select(*EMPTY_VALUES).drop_nulls("value")
    return values
