import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest

from ssljax import configlib, run, train
from ssljax.data import registry
from ssljax.errors import UserError
from ssljax.eval import features

CONFIGS = Path(__file__).parent.parent / "configs"


def assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A BYOL smoke run of 2 steps: (workdir, its final state on the host, its config)."""
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.total_steps = 2
    config.checkpoint_every_steps = 2
    workdir = tmp_path_factory.mktemp("run") / "byol"
    return workdir, jax.device_get(train.train(config, workdir)), config


def test_load_run_restores_the_state_training_ended_with_without_its_optimiser(smoke_run):
    workdir, final, _ = smoke_run
    loaded = run.load_run(workdir)
    assert loaded.step == 2 and loaded.config.method == "byol"
    assert loaded.state.opt_state is None
    for name in ("params", "batch_stats", "target_params", "target_batch_stats"):
        jax.tree.map(
            np.testing.assert_array_equal, getattr(loaded.state, name), getattr(final, name)
        )
    online = loaded.encoder_variables()
    assert_equal(online["params"], final.params["encoder"])
    target = loaded.encoder_variables("target")
    assert_equal(target["params"], final.target_params["encoder"])
    with pytest.raises(UserError, match="no checkpoint for step 7"):
        run.load_run(workdir, step=7)


def test_random_init_is_the_network_the_run_started_from(smoke_run):
    workdir, _, config = smoke_run
    setup = train.setup(config)
    started = jax.device_get(setup.init(setup.rngs()[0]))
    loaded = run.load_run(workdir, random_init=True)
    assert loaded.step == 0
    jax.tree.map(
        np.testing.assert_array_equal,
        loaded.encoder_variables()["params"],
        started.params["encoder"],
    )


def test_evaluating_on_a_dataset_with_another_class_count_restores(smoke_run, monkeypatch):
    workdir, final, _ = smoke_run
    five = dataclasses.replace(registry.DATASETS["fashion_mnist"], name="five", num_classes=5)
    monkeypatch.setitem(registry.DATASETS, "five", five)
    evaluation, variables = features.load_encoder(workdir, dataset="five")
    assert evaluation.dataset.num_classes == 5 and evaluation.config.dataset.name == "five"
    assert evaluation.config.dataset.train_split is None
    assert_equal(variables["params"], final.params["encoder"])
    # the online probe keeps the shape it was trained with: 10 Fashion-MNIST classes
    assert run.load_run(workdir).state.params["probe"]["dense"]["kernel"].shape[-1] == 10


def test_a_workdir_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is .* the --workdir of a training run"):
        run.load_run(tmp_path)
