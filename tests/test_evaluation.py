"""Tests for difflab.evaluation and difflab.classifier: FID and precision/recall math on
synthetic features, the classifier cache on a tiny model, and (when cached) the real MNIST
classifier."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import pytest
import torch

from difflab import classifier as clf
from difflab import evaluation as ev
from difflab import metrics
from difflab.infra.outputs import sha256_file


# --------------------------------------------------------------------------
# FID on synthetic features
# --------------------------------------------------------------------------


def _random_psd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_fid_of_a_set_with_itself_is_zero():
    feats = torch.randn(2000, 32, generator=torch.Generator().manual_seed(0))
    assert metrics.fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)


def test_fid_of_diagonal_gaussians_matches_closed_form():
    # For diagonal S_a = diag(a), S_b = diag(b): FID = ||mu_a - mu_b||^2 + sum (sqrt(a) - sqrt(b))^2.
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([1.0, 1.0, 0.0, -0.5])
    a, b = torch.tensor([1.0, 4.0, 0.25, 2.0]), torch.tensor([9.0, 1.0, 0.25, 0.5])
    exact = ((mu_a - mu_b) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum()
    got = metrics.fid_from_statistics(mu_a, torch.diag(a), mu_b, torch.diag(b))
    assert got == pytest.approx(exact.item(), rel=1e-10)
    # The same from samples: only sampling error remains.
    g = torch.Generator().manual_seed(1)
    xa = mu_a + a.sqrt() * torch.randn(50_000, 4, generator=g)
    xb = mu_b + b.sqrt() * torch.randn(50_000, 4, generator=g)
    assert metrics.fid_from_features(xa, xb) == pytest.approx(exact.item(), rel=0.03)


def test_fid_full_covariance_matches_eigenvalues_of_the_product():
    # Independent route: Tr (S_a S_b)^{1/2} = sum sqrt(eigvals(S_a S_b)), with the
    # eigenvalues of the non-symmetric product taken in complex arithmetic.
    ca, cb = _random_psd(12, 0), _random_psd(12, 1)
    mu_a, mu_b = torch.zeros(12, dtype=torch.float64), torch.full((12,), 0.3, dtype=torch.float64)
    tr_sqrt = torch.linalg.eigvals(ca @ cb).sqrt().real.sum()
    exact = (mu_a - mu_b).square().sum() + ca.trace() + cb.trace() - 2 * tr_sqrt
    got = metrics.fid_from_statistics(mu_a, ca, mu_b, cb)
    assert got == pytest.approx(exact.item(), rel=1e-8)
    assert got == pytest.approx(metrics.fid_from_statistics(mu_b, cb, mu_a, ca), rel=1e-8)  # symmetric


def test_fid_handles_singular_covariances():
    # Post-ReLU features often have dead units: covariance rank-deficient, still finite.
    g = torch.Generator().manual_seed(2)
    a = torch.relu(torch.randn(500, 16, generator=g))
    a[:, :4] = 0.0
    b = torch.relu(torch.randn(500, 16, generator=g) + 0.5)
    fid = metrics.fid_from_features(a, b)
    assert math.isfinite(fid) and fid > 0.1


def test_fid_grows_with_noise_on_synthetic_features():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(3000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    noise = torch.randn(real.shape, generator=g)
    fids = [metrics.fid_from_features(real, real + s * noise) for s in (0.0, 0.3, 1.0, 3.0)]
    assert all(x < y for x, y in zip(fids, fids[1:])), fids


# --------------------------------------------------------------------------
# Precision / recall on synthetic features
# --------------------------------------------------------------------------


def _two_modes(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    x[n // 2 :, 0] += 20.0  # second mode far away along the first axis
    return x


def test_precision_recall_of_identical_sets_is_one():
    x = _two_modes(1000, 0)
    p, r = metrics.precision_recall(x, x.clone(), k=3, chunk=300)
    assert p == pytest.approx(1.0) and r == pytest.approx(1.0)


def test_precision_recall_does_not_depend_on_the_chunk_size():
    real, fake = _two_modes(700, 0), _two_modes(600, 1) * 1.3
    results = {metrics.precision_recall(real, fake, k=5, chunk=c) for c in (64, 250, 10_000)}
    assert len(results) == 1, results


def test_mode_collapse_keeps_precision_but_loses_recall():
    real = _two_modes(2000, 0)
    fake = torch.randn(2000, 8, generator=torch.Generator().manual_seed(1))  # first mode only
    p, r = metrics.precision_recall(real, fake, k=3)
    assert p > 0.85, p
    assert r < 0.6, r  # about half the real points (the missed mode) are uncovered


def test_far_away_fakes_have_zero_precision():
    real = _two_modes(500, 0)
    p, r = metrics.precision_recall(real, real + 100.0, k=3)
    assert p == 0.0 and r == 0.0


# --------------------------------------------------------------------------
# Classifier training, cache and hash check (tiny model, synthetic digits)
# --------------------------------------------------------------------------


def _synthetic_split(split: str, data_dir=None, dataset: str = "mnist", device: str = "cpu"):
    """Stand-in for data.load_split: digit d is a bright bar at row 2 + 2d, on noise."""
    n = 512 if split == "train" else 256
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) * 0.3 - 1.0
    for d in range(10):
        images[labels == d, 0, 2 + 2 * d : 5 + 2 * d, 4:24] = 1.0
    return images.to(device), labels.to(device)


def test_random_shift_moves_each_image_by_at_most_max_shift():
    x = torch.full((400, 1, 28, 28), -1.0)
    x[:, 0, 10, 17] = 1.0  # one bright pixel, off the diagonal so a transpose would show
    out = clf.random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and ((out == 1.0).sum(dim=(1, 2, 3)) == 1).all()
    rows, cols = (out[:, 0] == 1.0).nonzero()[:, 1:].T
    assert set(rows.tolist()) == set(range(8, 13)) and set(cols.tolist()) == set(range(15, 20))


TINY = clf.TrainSettings(epochs=1, batch_size=64, train_subset=256)


@pytest.fixture(scope="module")
def tiny_trained(tmp_path_factory):
    """Train the tiny classifier once per module; tests get a copy of its cache."""
    data_dir = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clf, "load_split", _synthetic_split)
        clf.load_classifier(data_dir, settings=TINY)
    return data_dir


@pytest.fixture
def tiny_cache(tiny_trained, tmp_path, monkeypatch):
    """(data_dir, model): a fresh copy of the tiny cache in tmp_path, loaded from it."""
    shutil.copytree(tiny_trained / "classifier", tmp_path / "classifier")
    monkeypatch.setattr(clf, "load_split", _synthetic_split)  # (re)training
    monkeypatch.setattr(ev, "load_split", _synthetic_split)  # the reference features
    return tmp_path, clf.load_classifier(tmp_path, settings=TINY, train_if_missing=False)


def test_training_writes_weights_and_hash(tiny_cache):
    data_dir, model = tiny_cache
    weights, meta_path = clf.classifier_paths(data_dir)
    meta = json.loads(meta_path.read_text())
    assert meta["sha256"] == sha256_file(weights)
    assert meta["settings"] == dataclasses.asdict(TINY) and 0.0 <= meta["test_accuracy"] <= 1.0
    assert not model.training and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert model.features(torch.zeros(2, 1, 28, 28)).shape == (2, clf.FEATURE_DIM)


def test_cached_classifier_is_loaded_not_retrained(tiny_cache, monkeypatch):
    data_dir, model = tiny_cache

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    monkeypatch.setattr(clf, "train_classifier", no_training)
    loaded = clf.load_classifier(data_dir, settings=TINY)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_tampered_weights_are_detected_and_retrained_deterministically(tiny_cache, capsys):
    data_dir, _ = tiny_cache
    weights, meta_path = clf.classifier_paths(data_dir)
    original = json.loads(meta_path.read_text())["sha256"]
    state = torch.load(weights, weights_only=True)
    state["head.bias"] += 1.0  # a plausible-looking but wrong file
    torch.save(state, weights)
    capsys.readouterr()

    with pytest.raises(FileNotFoundError, match="SHA-256"):
        clf.load_classifier(data_dir, settings=TINY, train_if_missing=False)
    clf.load_classifier(data_dir, settings=TINY)
    assert "SHA-256" in capsys.readouterr().out
    # Same seed, same data -> bit-identical weights, so the hash comes back.
    assert sha256_file(weights) == original


def test_other_settings_trigger_retraining(tiny_cache, capsys):
    data_dir, _ = tiny_cache
    capsys.readouterr()
    clf.load_classifier(data_dir, settings=clf.TrainSettings(epochs=1, batch_size=64, train_subset=128))
    assert "other settings" in capsys.readouterr().out


def test_evaluate_images_mechanics(tiny_cache):
    data_dir, model = tiny_cache
    images, labels = _synthetic_split("test")
    out = ev.evaluate_images(images[:100], labels[:100], model, data_dir=data_dir)
    assert set(out) >= {"fid", "fid_floor", "accuracy", "per_digit_accuracy", "precision", "recall", "n"}
    assert out["n"] == 100 and set(out["per_digit_accuracy"]) <= set(range(10))
    # Accuracy from the features' one pass equals the two-pass conditional_accuracy.
    assert (out["accuracy"], out["per_digit_accuracy"]) == ev.conditional_accuracy(model, images[:100], labels[:100])
    # Reference statistics and the floor for N=100 are cached per classifier.
    cached = ev._CACHE[model]
    assert ("floor", "test", str(data_dir), 100) in cached
    floor_before = cached[("floor", "test", str(data_dir), 100)]
    noisy = ev.evaluate_images(images[:100] + torch.randn(100, 1, 28, 28), None, model, data_dir=data_dir)
    assert noisy["fid_floor"] == floor_before and noisy["accuracy"] is None
    assert noisy["fid"] > out["fid"]
    with pytest.raises(ValueError, match="0..9"):
        ev.evaluate_images(images[:10], torch.full((10,), 10), model, data_dir=data_dir)  # null class


# --------------------------------------------------------------------------
# The real classifier on real MNIST (only if already trained and cached)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    """(classifier, test images, test labels, metadata), or skip with the reason."""
    try:
        from difflab.data import DataError

        images, labels = ev.load_split("test")
    except (ImportError, DataError, FileNotFoundError) as err:
        pytest.skip(f"MNIST not available ({err}); run `python setup_mnist.py`")
    try:
        model = clf.load_classifier(train_if_missing=False)
    except FileNotFoundError as err:
        pytest.skip(f"no cached classifier ({err})")
    meta = json.loads(clf.classifier_paths()[1].read_text())
    return model, images, labels, meta


def test_real_classifier_accuracy_matches_its_record(real):
    model, images, labels, meta = real
    acc, per_digit = ev.conditional_accuracy(model, images, labels)
    # Same weights, same images: equal up to at most one image whose top-2 logits tie
    # within rounding (the record may come from another machine or thread count).
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-4)
    assert acc >= 0.99 and min(per_digit.values()) > 0.97 and set(per_digit) == set(range(10))


def test_real_fid_grows_with_noise(real):
    model, images, _, _ = real
    ref = ev.features(model, images[5000:])
    x = images[:2000]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    fids = [metrics.fid_from_features(ref, ev.features(model, (x + s * noise).clamp(-1, 1)))
            for s in (0.0, 0.2, 0.5, 1.0)]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_each_dataset_has_its_own_judge_and_a_model_is_judged_by_its_own(tmp_path, monkeypatch):
    """Issue 28: Fashion-MNIST gets its classifier, cached apart; a Fashion model is not scored by MNIST's judge."""
    from conftest import tiny_config, tiny_data
    from difflab.pipeline import Pipeline
    from difflab.training import Trainer

    seen = []

    def split(split, data_dir=None, dataset="mnist", device="cpu"):
        seen.append(dataset)
        return _synthetic_split(split, data_dir, dataset, device)

    monkeypatch.setattr(clf, "load_split", split)
    monkeypatch.setattr(ev, "load_split", split)
    fashion = clf.load_classifier(tmp_path, settings=TINY, dataset="fashion_mnist")
    assert set(seen) == {"fashion_mnist"} and fashion.dataset == "fashion_mnist"
    assert clf.classifier_paths(tmp_path, "fashion_mnist")[0].is_file()
    assert not clf.classifier_paths(tmp_path, "mnist")[0].exists()  # MNIST's judge is another file

    cfg = tiny_config(tmp_path, data={"dataset": "fashion_mnist"}, training={"max_steps": 2})
    trainer = Trainer(cfg, data=tiny_data(32), quiet=True)
    trainer.fit()
    pipe = Pipeline.from_checkpoint(trainer.out_dir / "checkpoints" / "last.pt", "cpu")
    seen.clear()
    scores = ev.evaluate_pipeline(pipe, fashion, 20, steps=2, data_dir=tmp_path, progress=False)
    assert set(seen) == {"fashion_mnist"} and scores["fid"] > 0  # real images: Fashion-MNIST's
    mnist_judge = clf.MNISTClassifier().eval()
    with pytest.raises(ValueError, match="trained on fashion_mnist, the judge on mnist"):
        ev.evaluate_pipeline(pipe, mnist_judge, 20, steps=2, data_dir=tmp_path, progress=False)
