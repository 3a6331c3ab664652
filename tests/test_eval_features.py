"""The per-checkpoint feature cache and the names of the evaluation files."""

import types

import ml_collections
import numpy as np

from ssljax import configlib, train
from ssljax.eval import bank, results
from ssljax.eval import features as feats


def _fake_run():
    config = configlib.base_config()
    config.dataset.name = "fashion_mnist"
    return types.SimpleNamespace(
        config=config,
        dataset=types.SimpleNamespace(eval_resize=1.0),
        mesh=bank.from_numpy(np.zeros((1, 1)), np.zeros(1)).mesh,
    )


def test_features_are_cached_per_tag_and_recomputed_when_the_weights_change(tmp_path, monkeypatch):
    calls = []

    def extract(run, variables, split, raw_pixels=False):
        calls.append((split, raw_pixels))
        value = variables["params"]["w"].sum()
        return bank.from_numpy(np.full((3, 2), value, np.float32), np.arange(3))

    monkeypatch.setattr(bank, "extract", extract)
    run = _fake_run()
    variables = {"params": {"w": np.ones(4, np.float32)}, "batch_stats": {}}

    x = bank.cached(run, variables, "train[:10%]", tmp_path, "step_5")
    assert (tmp_path / "eval/features/step_5_fashion_mnist_train-10.npz").exists()
    again = bank.cached(run, variables, "train[:10%]", tmp_path, "step_5")
    assert len(calls) == 1 and np.array_equal(x.to_numpy(), again.to_numpy())
    assert again.ordered_labels().tolist() == [0, 1, 2]

    changed = {"params": {"w": 2 * np.ones(4, np.float32)}, "batch_stats": {}}
    fresh = bank.cached(run, changed, "train[:10%]", tmp_path, "step_5")
    assert len(calls) == 2 and fresh.to_numpy()[0, 0] == 8.0  # same step, new weights

    bank.cached(run, variables, "test", tmp_path, "random_init")
    bank.cached(run, variables, "test", tmp_path, None, raw_pixels=True)
    bank.cached(run, variables, "test", tmp_path, None, raw_pixels=True)
    assert calls[2:] == [("test", False), ("test", True), ("test", True)]  # pixels: no cache


def test_result_names_keep_the_newest_checkpoint_in_the_plain_file(tmp_path):
    config = ml_collections.ConfigDict({"dataset": {"name": "fashion_mnist"}})
    train.save_config(config, tmp_path)
    for step in (3, 6):
        (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
    (tmp_path / "checkpoints" / "6" / "_CHECKPOINT_METADATA").write_text("{}")
    (tmp_path / "checkpoints" / "3" / "_CHECKPOINT_METADATA").write_text("{}")
    name = results.result_name
    assert name(tmp_path, "knn", None, "trained", None) == "knn"
    assert name(tmp_path, "knn", None, "random_init", None) == "knn_random_init"
    assert name(tmp_path, "linear", None, "raw_pixels", None) == "linear_raw_pixels"
    assert name(tmp_path, "knn", "cifar10", "trained", None) == "knn_cifar10"
    assert name(tmp_path, "knn", "fashion_mnist", "trained", None) == "knn"
    assert feats.checkpoint_step(tmp_path) == 6
    assert name(tmp_path, "knn", None, "trained", 3) == "knn_step_3"
    assert name(tmp_path, "knn", None, "trained", 6) == "knn"
