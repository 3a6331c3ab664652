import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from ssljax import configlib, train
from ssljax.errors import UserError
from ssljax.eval import semi

CONFIGS = Path(__file__).parent.parent / "configs"


def _labels(seed=0):
    """6000 images of 10 unequal classes, shuffled."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), [300, 400, 500, 550, 600, 650, 700, 700, 700, 900])
    return rng.permutation(labels)


def test_subsets_are_class_balanced_and_the_same_for_the_same_seed():
    labels = _labels()
    for fraction in (0.01, 0.1):
        subset = semi.balanced_subset(labels, fraction, seed=3)
        per_class = np.bincount(labels[subset], minlength=10)
        assert per_class.tolist() == [round(fraction * 600)] * 10
        assert len(np.unique(subset)) == len(subset)  # no image twice
        np.testing.assert_array_equal(subset, semi.balanced_subset(labels, fraction, seed=3))
    assert not np.array_equal(
        semi.balanced_subset(labels, 0.1, seed=3), semi.balanced_subset(labels, 0.1, seed=4)
    )


def test_the_1_percent_subset_is_inside_the_10_percent_one():
    labels = _labels()
    small, large = (semi.balanced_subset(labels, f, seed=0) for f in (0.01, 0.1))
    assert set(small) <= set(large)


def test_a_class_smaller_than_its_share_gives_all_its_images():
    labels = np.array([0] * 95 + [1] * 5)
    subset = semi.balanced_subset(labels, 0.2, seed=0)  # 10 a class wanted, class 1 has 5
    assert np.bincount(labels[subset]).tolist() == [10, 5]


def test_recipe_is_simclrs_with_a_small_batch_off_imagenet():
    one, ten = semi.get_recipe(0.01, "imagenet2012"), semi.get_recipe(0.1, "imagenet2012")
    assert (one.epochs, ten.epochs, one.batch_size, one.lr, one.nesterov) == (
        60,
        30,
        4096,
        0.8,
        True,
    )
    small = semi.get_recipe(0.1, "fashion_mnist", epochs=2)
    assert (small.batch_size, small.lr, small.epochs) == (256, 0.05, 2)
    with pytest.raises(UserError, match="fraction"):
        semi.get_recipe(0.0, "fashion_mnist")


def test_cli_fine_tunes_a_random_init_encoder_and_writes_semi_json(tmp_path, capsys, monkeypatch):
    from ssljax.data import registry
    from ssljax.eval.__main__ import main

    small = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], memory_split="train[:640]", test_split="test[:256]"
    )
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", small)
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    train.save_config(config, tmp_path)
    main(
        [
            "semi",
            f"--workdir={tmp_path}",
            "--random-init",
            "--fraction=0.1",
            "--epochs=2",
            "--batch-size=32",
        ]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "eval" / "semi_10pct_random_init.json").read_text())
    assert printed == written
    assert (written["num_train"], written["per_class"], written["num_test"]) == (60, 6, 256)
    assert (written["steps"], written["epochs"], written["batch_size"]) == (2, 2, 32)
    assert 0.0 <= written["top1"] <= written["top5"] <= 1.0
    assert np.isfinite(written["final_train_loss"])
