import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from ssljax import configlib
from ssljax.errors import UserError
from ssljax.eval import linear
from ssljax.eval.__main__ import parse_args

CONFIGS = Path(__file__).parent.parent / "configs"


def _separable(num_classes=10, dim=32, per_class=200, seed=0):
    """Gaussian clusters around well-separated centres, offset from the origin like ReLU
    features: linearly separable with a wide margin."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((num_classes, dim)) + 2.0
    labels = np.repeat(np.arange(num_classes), per_class)
    features = centres[labels] + 0.5 * rng.standard_normal((len(labels), dim))
    order = rng.permutation(len(labels))
    return features[order].astype(np.float32), labels[order].astype(np.int32)


@pytest.mark.parametrize("protocol", ["moco", "byol"])
def test_linear_probe_reaches_99_percent_on_linearly_separable_features(protocol):
    train_x, train_y = _separable(seed=0)
    test_x, test_y = _separable(seed=0, per_class=50)  # same centres, fresh samples
    recipe = linear.get_protocol(protocol, epochs=5)
    params, lr, scores = linear.select_and_train(train_x, train_y, 10, recipe)
    result = linear.accuracy(params, test_x, test_y, 10)
    assert result["top1"] >= 0.99 and result["top5"] == 1.0
    if protocol == "byol":  # the LR is chosen on held-out training images
        assert set(scores) == {str(c) for c in recipe.learning_rates}
        assert lr == max(recipe.learning_rates, key=lambda c: scores[str(c)])
    else:
        assert (lr, scores) == (30.0, {})


def test_top1_and_top5_count_the_true_class_among_the_best_logits():
    features = np.eye(6, dtype=np.float32)  # logits = kernel rows; zero bias
    params = {"params": {"dense": {"kernel": np.diag(np.arange(6.0)), "bias": np.zeros(6)}}}
    # Image i's logits are 0 except i at class i, so class i is its top-1 (image 0: all
    # ties, the first index wins). Image 5 is labelled 0: a top-5 hit, not a top-1 hit.
    labels = np.array([0, 1, 2, 3, 4, 0])
    result = linear.accuracy(params, features, labels.astype(np.int32), 6)
    assert result["top1"] == pytest.approx(5 / 6)
    assert result["top5"] == pytest.approx(1.0)


def test_moco_protocol_is_the_papers_and_decays_at_60_and_80_percent():
    moco = linear.get_protocol("moco")
    assert (moco.learning_rates, moco.batch_size, moco.epochs, moco.weight_decay) == (
        (30.0,),
        256,
        100,
        0.0,
    )
    schedule = linear._learning_rate(moco, 30.0, 100)
    assert [float(schedule(s)) for s in (0, 59, 60, 79, 80, 99)] == pytest.approx(
        [30, 30, 3, 3, 0.3, 0.3]
    )
    byol = linear.get_protocol("byol", epochs=3)
    assert byol.epochs == 3 and byol.nesterov and byol.learning_rates[0] == 0.4
    with pytest.raises(UserError, match="unknown linear protocol"):
        linear.get_protocol("simclr")


def test_cli_parses_the_linear_subcommand():
    args = parse_args(["linear", "--workdir=w", "--protocol=byol", "--epochs=3"])
    assert (args.protocol, args.workdir, args.linear_protocol, args.epochs) == (
        "linear",
        "w",
        "byol",
        3,
    )
    assert parse_args(["linear", "--workdir=w"]).linear_protocol == "moco"


@pytest.mark.skipif(
    importlib.util.find_spec("ssljax.data.pipeline") is None,
    reason="ssljax.data.pipeline not written yet",
)
def test_cli_evaluates_a_random_init_encoder_and_writes_linear_json(tmp_path, capsys, monkeypatch):
    from ssljax import train
    from ssljax.data import registry
    from ssljax.eval.__main__ import main

    small = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], memory_split="train[:512]", test_split="test[:256]"
    )
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", small)
    config = configlib.load(str(CONFIGS / "moco_v2.py:smoke"))
    train.save_config(config, tmp_path)
    main(["linear", f"--workdir={tmp_path}", "--random-init", "--epochs=1"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "eval" / "linear_random_init.json").read_text())
    assert printed == written
    assert written["protocol"] == "moco" and written["epochs"] == 1
    assert (written["num_train"], written["num_test"]) == (512, 256)
    assert 0.0 <= written["top1"] <= written["top5"] <= 1.0
