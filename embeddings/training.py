"""In-domain training of the image tower against the locked text tower, with open_clip's ClipLoss.

The text tower is locked, so its features for the training titles are computed once, in eval mode, and
reused every step: the same gradients for the image tower as running the frozen tower each step, at a
fraction of the cost (and without dropout noise in the targets).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from open_clip.loss import ClipLoss

from data.files import atomic_path

from embeddings.encoder import Encoder, ImageInput, load_image


@dataclass
class TrainReport:
    n_train: int
    n_test: int
    epochs: int
    seconds: float
    final_loss: float
    recall_at_1: float
    recall_at_5: float
    recall_at_10: float
    chance_at_5: float
    checkpoint: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def retrieval_recall(image_vectors: np.ndarray, text_vectors: np.ndarray, ks=(1, 5, 10)) -> dict[int, float]:
    """Share of images whose own title (same row) is among the k most similar titles."""
    sims = image_vectors @ text_vectors.T
    own = np.diag(sims)[:, None]
    rank = (sims > own).sum(axis=1)  # 0 = own title ranks first
    return {k: float((rank < k).mean()) for k in ks}


def train_image_tower(
    encoder: Encoder,
    titles: Sequence[str],
    images: Sequence[ImageInput],
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    test_share: float = 0.1,
    seed: int = 0,
    time_budget_s: float | None = None,
    checkpoint: str | Path | None = None,
    log=print,
) -> TrainReport:
    if len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles but {len(images)} images")
    if len(titles) < 20:
        raise ValueError(f"need at least 20 (image, title) pairs to train and test, got {len(titles)}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    order = rng.permutation(len(titles))
    n_test = max(10, int(len(titles) * test_share))
    test_idx, train_idx = order[:n_test], order[n_test:]

    model = encoder.model
    text_features = torch.from_numpy(encoder.encode_texts(titles))
    pixels = torch.stack([encoder.preprocess(load_image(img, f"image {i}")) for i, img in enumerate(images)])
    model.lock_text_tower()
    trainable = [p for n, p in model.named_parameters() if not n.startswith("text.")]
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith("text.")
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total, pct_start=0.1)
    loss_fn = ClipLoss()

    started, step, loss_value = time.monotonic(), 0, float("nan")
    model.visual.train()
    for epoch in range(epochs):
        perm = torch.from_numpy(rng.permutation(train_idx))
        for start in range(0, len(perm), batch_size):
            batch = perm[start:start + batch_size]
            if len(batch) < 2:
                continue
            image_features = model.encode_image(_augment(pixels[batch]), normalize=True)
            loss = loss_fn(image_features, text_features[batch], model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():  # as in CLIP: temperature capped at 100
                model.logit_scale.clamp_(0, math.log(100))
            step, loss_value = step + 1, loss.item()
        if log and (epoch % 5 == 4 or epoch == epochs - 1):
            log(f"epoch {epoch + 1}/{epochs}  loss {loss_value:.3f}  {time.monotonic() - started:.0f}s")
        if time_budget_s is not None and time.monotonic() - started > time_budget_s:
            if log:
                log(f"time budget of {time_budget_s:.0f}s reached after epoch {epoch + 1}")
            epochs = epoch + 1
            break
    model.eval()
    for param in model.parameters():
        param.requires_grad = False

    with torch.inference_mode():
        test_images = model.encode_image(pixels[test_idx], normalize=True).numpy()
    recall = retrieval_recall(test_images, text_features[test_idx].numpy())
    report = TrainReport(n_train=len(train_idx), n_test=n_test, epochs=epochs,
                         seconds=round(time.monotonic() - started, 1), final_loss=round(loss_value, 4),
                         recall_at_1=recall[1], recall_at_5=recall[5], recall_at_10=recall[10],
                         chance_at_5=min(1.0, 5 / n_test))
    if checkpoint is not None:
        report.checkpoint = str(save_tower_checkpoint(model, checkpoint, meta=report.as_dict()))
    encoder.weights_changed(report.checkpoint if checkpoint is not None else None)
    return report


def _augment(pixels: torch.Tensor) -> torch.Tensor:
    """Mirror half the batch: a product seen from the other side is the same product."""
    flip = torch.rand(pixels.shape[0]) < 0.5
    out = pixels.clone()
    out[flip] = out[flip].flip(-1)
    return out


def save_tower_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict | None = None) -> Path:
    """Save every weight outside the (locked, separately shipped) text tower; atomic: temp file + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith("text.")}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state, "meta": meta or {}}, tmp)
    return path
