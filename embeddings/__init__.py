"""Turns SPUs into vectors (CLIP-style image and text towers) and keeps them in a FAISS index."""

from embeddings.encoder import Encoder, EncoderConfig, ImageError, create_encoder, load_image
from embeddings.index import IndexMismatchError, SpuIndex, UnknownSpuError
from embeddings.matching import MatchThreshold, calibrate_match_threshold
from embeddings.spu import SpuEmbedder, SpuVectors
from embeddings.training import TrainReport, train_image_tower

__all__ = [
    "Encoder", "EncoderConfig", "ImageError", "IndexMismatchError", "MatchThreshold", "SpuEmbedder", "SpuIndex",
    "SpuVectors", "TrainReport", "UnknownSpuError", "calibrate_match_threshold", "create_encoder", "load_image",
    "train_image_tower",
]
