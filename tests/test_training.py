import numpy as np
import pytest

from embeddings import create_encoder, train_image_tower
from embeddings.training import retrieval_recall


def test_retrieval_recall_counts_rank_of_own_title():
    eye = np.eye(4, dtype=np.float32)
    shuffled = eye[[1, 0, 2, 3]]
    assert retrieval_recall(eye, eye, ks=(1,)) == {1: 1.0}
    assert retrieval_recall(shuffled, eye, ks=(1, 2)) == {1: 0.5, 2: 1.0}


@pytest.mark.slow
def test_image_tower_learns_and_checkpoint_round_trips(tmp_path):
    from data import generate_demo_catalog, load_catalog

    generate_demo_catalog(tmp_path / "c", n_spus=400, seed=11)
    spus = load_catalog(tmp_path / "c", ("spus",))["spus"]
    encoder = create_encoder()
    untrained = encoder.fingerprint
    before = encoder.encode_images(spus["images"].list.first().to_list()[:4])
    report = train_image_tower(encoder, spus["title"].to_list(), spus["images"].list.first().to_list(),
                               epochs=15, batch_size=64, test_share=0.1, seed=0, checkpoint=tmp_path / "t.pt",
                               log=None)
    assert report.n_test == 40 and report.n_train == 360
    assert report.recall_at_5 > 2 * report.chance_at_5  # learned, not luck (chance@5 = 1/8)
    loaded = create_encoder(checkpoint=tmp_path / "t.pt")
    # new weights, new fingerprint (cached vectors of the old weights are never served as new) ...
    assert encoder.fingerprint != untrained and encoder.fingerprint == loaded.fingerprint
    after = loaded.encode_images(spus["images"].list.first().to_list()[:4])
    assert np.abs(after - encoder.encode_images(spus["images"].list.first().to_list()[:4])).max() < 1e-5
    assert np.abs(after - before).max() > 1e-3
    # the text tower stayed locked
    assert np.abs(loaded.encode_texts(["mug"]) - create_encoder().encode_texts(["mug"])).max() < 1e-6


def test_training_without_a_checkpoint_still_changes_the_fingerprint(tmp_path):
    from data import generate_demo_catalog, load_catalog

    generate_demo_catalog(tmp_path / "c", n_spus=40, seed=3)
    spus = load_catalog(tmp_path / "c", ("spus",))["spus"]
    encoder = create_encoder()
    untrained = encoder.fingerprint
    train_image_tower(encoder, spus["title"].to_list(), spus["images"].list.first().to_list(), epochs=1,
                      batch_size=16, log=None)
    assert encoder.fingerprint != untrained


def test_too_few_pairs_refused(encoder):
    with pytest.raises(ValueError, match="at least 20"):
        train_image_tower(encoder, ["a"] * 5, [b""] * 5)
    with pytest.raises(ValueError, match="titles but"):
        train_image_tower(encoder, ["a"] * 5, [b""] * 4)
