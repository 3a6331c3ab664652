"""ssljax.eval.bank: features kept sharded over 8 devices give the single-device k-NN and
linear results (raw pixels of a few hundred Fashion-MNIST images: no encoder to compile)."""

from pathlib import Path

import helpers
import jax
import numpy as np
import pytest

from ssljax import configlib, train
from ssljax.eval import bank, knn, linear
from ssljax.eval import features as feats

ROOT = Path(__file__).parent.parent
MEMORY, QUERIES = "train[:300]", "test[:100]"  # 300 = 4 batches of 64 + 44 (20 padding rows)


@pytest.fixture(scope="module")
def run():
    config = configlib.load(str(ROOT / "configs" / "byol.py:smoke"))
    config.eval.batch_size = 64
    return train.setup(config)


@pytest.fixture(scope="module")
def banks(run):
    return bank.extract(run, None, MEMORY, raw_pixels=True), bank.extract(
        run, None, QUERIES, raw_pixels=True
    )


def test_each_device_keeps_only_its_rows_and_the_order_is_the_gathered_one(run, banks):
    memory, _ = banks
    assert run.mesh.devices.size == 8
    shards = memory.features.addressable_shards
    assert len(shards) == 8 and {s.data.shape[0] for s in shards} == {40}  # 320 rows / 8
    expected_x, expected_y = feats.extract_features(run, None, MEMORY, raw_pixels=True)
    assert len(memory) == 300 and memory.valid.sum() == 300
    np.testing.assert_array_equal(memory.to_numpy(), expected_x)
    np.testing.assert_array_equal(memory.ordered_labels(), expected_y)


def test_sharded_knn_equals_the_single_device_knn(banks):
    memory, queries = banks
    x, y, q = memory.to_numpy(), memory.ordered_labels(), queries.to_numpy()
    for k in (20, 200):  # 200 > the 40 rows a device holds: the merge must reach across
        sharded = knn.predict(memory, queries, k, 0.07, 10, chunk=32)
        single = knn.knn_predict(x, y, q, k, 0.07, 10)
        np.testing.assert_array_equal(sharded, single)
    assert np.mean(sharded == queries.ordered_labels()) > 0.5


def test_linear_on_sharded_features_equals_the_single_device_training(banks):
    memory, queries = banks
    recipe = linear.get_protocol("moco", epochs=2)
    recipe = linear.dataclasses.replace(recipe, learning_rates=(0.01,), batch_size=64)
    sharded, lr, _ = linear.select_and_train(memory, None, 10, recipe)
    single, _, _ = linear.select_and_train(memory.to_numpy(), memory.ordered_labels(), 10, recipe)
    sharded, single = bank.local_value(sharded), bank.local_value(single)
    for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    on_bank = linear.accuracy(sharded, queries, None, 10, chunk=32)
    on_host = linear.accuracy(single, queries.to_numpy(), queries.ordered_labels(), 10)
    assert on_bank == on_host and on_bank["top1"] > 0.3


def test_the_cache_restores_the_same_sharded_bank(run, banks, tmp_path, monkeypatch):
    variables = {"params": {"w": np.ones(3, np.float32)}, "batch_stats": {}}
    monkeypatch.setattr(bank, "extract", lambda *args: banks[1])
    first = bank.cached(run, variables, QUERIES, tmp_path, "random_init")
    assert (tmp_path / "eval/features/random_init_fashion_mnist_test-100.npz").exists()
    monkeypatch.setattr(bank, "extract", lambda *args: pytest.fail("not read from the cache"))
    again = bank.cached(run, variables, QUERIES, tmp_path, "random_init")
    np.testing.assert_array_equal(again.to_numpy(), first.to_numpy())
    np.testing.assert_array_equal(again.order, first.order)
    assert again.features.sharding == first.features.sharding


def test_two_processes_of_four_devices_equal_the_single_device_results():
    workers = helpers.start_processes("multihost_eval_worker.py")
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]
    results = [out.strip().splitlines()[-1] for out in outputs]
    assert results[0] == results[1]
    assert results[0].startswith("equal: knn True linear True")
