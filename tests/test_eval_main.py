"""`python -m ssljax.eval`: the subcommands, their common flags and the printed JSON line."""

import dataclasses
import json
from pathlib import Path

import pytest

from ssljax import configlib, train
from ssljax.eval.__main__ import parse_args

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("command", ["knn", "linear", "semi"])
def test_every_subcommand_takes_the_common_flags(command):
    args = parse_args(
        [command, "--workdir=w", "--checkpoint=500", "--dataset=cifar10", "--random-init"]
    )
    assert (args.protocol, args.workdir, args.checkpoint, args.dataset, args.random_init) == (
        command,
        "w",
        500,
        "cifar10",
        True,
    )


def test_semi_defaults_to_the_1_percent_subset():
    args = parse_args(["semi", "--workdir=w", "--fraction=0.1"])
    assert (args.fraction, args.epochs, args.batch_size, args.seed) == (0.1, None, None, 0)
    assert parse_args(["semi", "--workdir=w"]).fraction == 0.01


def test_perceptual_without_its_module_is_a_one_line_error(monkeypatch, capsys):
    import importlib

    real_import = importlib.import_module

    def import_module(name, *args):
        if name == "ssljax.eval.perceptual":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", import_module)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["perceptual", "--workdir=w"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: the perceptual test is not available in this version "
        "(ssljax/eval/perceptual.py is missing)"
    ]
    assert parse_args(["knn", "--workdir=w"]).protocol == "knn"  # other commands unaffected


def test_knn_prints_one_json_line_with_both_ks_and_caches_the_features(
    tmp_path, capsys, monkeypatch
):
    from ssljax.data import registry
    from ssljax.eval.__main__ import main

    small = dataclasses.replace(
        registry.DATASETS["fashion_mnist"], memory_split="train[:512]", test_split="test[:256]"
    )
    monkeypatch.setitem(registry.DATASETS, "fashion_mnist", small)
    train.save_config(configlib.load(str(ROOT / "configs" / "byol.py:smoke")), tmp_path)
    main(["knn", f"--workdir={tmp_path}", "--random-init"])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == json.loads((tmp_path / "eval" / "knn_random_init.json").read_text())
    assert (last["num_memory"], last["num_queries"], last["features"]) == (512, 256, "random_init")
    assert 0.0 <= last["top1_k200"] <= 1.0 and last["top1"] == last["top1_k20"]
    cached = sorted(p.name for p in (tmp_path / "eval" / "features").iterdir())
    assert cached == [
        "random_init_fashion_mnist_test-256.npz",
        "random_init_fashion_mnist_train-512.npz",
    ]


@pytest.mark.parametrize("command", ["knn", "linear", "semi"])
def test_network_defaults_to_the_methods_choice_and_takes_online_or_target(command, capsys):
    assert parse_args([command, "--workdir=w"]).network is None
    assert parse_args([command, "--workdir=w", "--network=target"]).network == "target"
    with pytest.raises(SystemExit) as exit_info:
        parse_args([command, "--workdir=w", "--network=teacher"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
