"""The command line ends with one short message and a non-zero exit, never a traceback."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args, tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")  # 8 devices: tests/conftest.py
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _main(tmp_path, *overrides, config="configs/byol.py:smoke"):
    return _run(
        "main.py",
        f"--config={config}",
        f"--workdir={tmp_path / 'w'}",
        *overrides,
        tmp_path=tmp_path,
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.batch_size=12"], "multiple of the 8 devices"),
        (["--config.optimizer.base_lr=-0.1"], "base_lr"),
        (
            ["--config.dataset.name=cifar10", "--config.dataset.data_dir=/nonexistent/tfds"],
            "tfds build",
        ),
        (["--config.dataset.name=mnist"], "fashion_mnist"),
        (["--config.method=simclr_typo"], "unknown method"),
    ],
)
def test_bad_values_end_with_a_short_message(tmp_path, overrides, message):
    result = _main(tmp_path, *overrides)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_refused_without_traceback(tmp_path):
    result = _main(tmp_path, "--config.no_such_field=1")
    assert result.returncode != 0
    assert "no_such_field" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_preset_is_refused_without_traceback(tmp_path):
    result = _main(tmp_path, config="configs/byol.py:no_such_preset")
    assert result.returncode != 0
    assert "no_such_preset" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_of_a_directory_without_a_run_is_a_short_message(tmp_path):
    result = _run("-m", "ssljax.eval", "knn", f"--workdir={tmp_path}", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "config.json" in result.stderr and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------
# Every refusal, in-process (no compilation: each fails before the first step is traced).


def _main_module():
    """main.py as a module, imported once (it defines absl flags)."""
    import importlib.util

    if "ssljax_main_cli" not in sys.modules:
        spec = importlib.util.spec_from_file_location("ssljax_main_cli", ROOT / "main.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["ssljax_main_cli"] = module
        spec.loader.exec_module(module)
    return sys.modules["ssljax_main_cli"]


def _in_process_main(argv):
    from absl import flags

    module = _main_module()
    saved_argv, sys.argv = sys.argv, ["main.py", *argv]  # config_flags reads overrides here
    try:
        module.main(module.parse_flags(sys.argv))
        return 0
    except SystemExit as e:
        return e.code
    finally:
        sys.argv = saved_argv
        for name in [n for n in flags.FLAGS if n.startswith("config.")]:
            delattr(flags.FLAGS, name)  # config_flags defines one per override
        flags.FLAGS.unparse_flags()


def _in_process_eval(argv):
    from ssljax.eval import __main__ as eval_main

    try:
        eval_main.main(argv)
        return 0
    except SystemExit as e:
        return e.code


def _snapshot(path: Path):
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Prepared inputs: damaged copies of the Fashion-MNIST data, odd workdirs."""
    from ssljax import configlib, train
    from ssljax.data import registry

    root = tmp_path_factory.mktemp("refusals")
    source = Path(registry.default_data_dir()) / "fashion_mnist"
    registry.get_dataset("fashion_mnist")  # prepared from Debian's files if needed
    version = next(p for p in source.iterdir() if p.is_dir())
    for name in ("truncated", "bad_info"):
        target = root / name / "fashion_mnist" / version.name
        target.mkdir(parents=True)
        for file in version.iterdir():
            os.link(file, target / file.name)  # hard links: nothing copied
    record = root / "truncated" / "fashion_mnist" / version.name
    record /= "fashion_mnist-train.tfrecord-00000-of-00001"
    data = record.read_bytes()[:1000]
    record.unlink()
    record.write_bytes(data)
    info = root / "bad_info" / "fashion_mnist" / version.name / "dataset_info.json"
    info.unlink()
    info.write_text('{"name": "fashion_mni')
    (root / "a_file").write_text("not a directory\n")
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text('{"method": "by')
    (root / "no_checkpoints").mkdir()
    train.save_config(
        configlib.load(str(ROOT / "configs" / "byol.py:smoke")), root / "no_checkpoints"
    )
    (root / "empty").mkdir()
    return root


SMOKE = "--config=configs/byol.py:smoke"
# (name, command line, a phrase the one-line error must contain); {root} is `places`.
REFUSALS = [
    ("keep no checkpoint", [SMOKE, "--config.keep_checkpoints=0"], "keep_checkpoints"),
    ("negative total_steps", [SMOKE, "--config.total_steps=-5"], "total_steps=-5"),
    ("tau above 1", [SMOKE, "--config.tau_base=2.0"], "tau_base=2.0"),
    ("unknown augment preset", [SMOKE, "--config.augment.preset=nosuch"], "augment.preset"),
    ("unknown dtype", [SMOKE, "--config.model.dtype=float8"], "model.dtype"),
    ("unknown split", [SMOKE, "--config.dataset.train_split=nosuch"], "Split 'nosuch'"),
    ("batch not divisible", [SMOKE, "--config.batch_size=12"], "multiple of the 8 devices"),
    ("negative LR", [SMOKE, "--config.optimizer.base_lr=-0.1"], "base_lr"),
    ("unknown method", [SMOKE, "--config.method=simclr_typo"], "unknown method"),
    ("unknown field", [SMOKE, "--config.no_such_field=1"], "no_such_field"),
    ("missing config file", ["--config=configs/nosuch.py"], "nosuch.py"),
    ("unknown preset", ["--config=configs/byol.py:no_such_preset"], "no_such_preset"),
    ("stray positional argument", [SMOKE, "extra"], "unexpected argument"),
    ("workdir is a file", [SMOKE, "--workdir={root}/a_file"], "is a file"),
    ("workdir under a file", [SMOKE, "--workdir={root}/a_file/run"], "cannot write"),
    ("text for an integer", [SMOKE, "--config.total_steps=abc"], "total_steps"),
    ("unknown nonfinite policy", [SMOKE, "--config.nonfinite=sometimes"], "nonfinite"),
    ("zero skips allowed", [SMOKE, "--config.nonfinite_max_skips=0"], "nonfinite_max_skips"),
    ("log every 0 steps", [SMOKE, "--config.log_every_steps=0"], "log_every_steps"),
    ("tiny images", [SMOKE, "--config.dataset.image_size=4"], "image_size"),
    ("corrupt config.json", [SMOKE, "--workdir={root}/corrupt"], "is corrupt"),
    ("different config", [SMOKE, "--workdir={root}/no_checkpoints", "--config.seed=1"], "seed"),
    (
        "corrupt dataset_info.json",
        [SMOKE, "--config.dataset.data_dir={root}/bad_info"],
        "prepare it again",
    ),
    (
        "truncated tfrecord",
        [SMOKE, "--config.dataset.data_dir={root}/truncated"],
        "cannot be read",
    ),
    ("unknown optimizer", [SMOKE, "--config.optimizer.name=adam2"], "optimizer.name"),
    ("unknown backbone", [SMOKE, "--config.model.name=resnet7"], "resnet7"),
    ("k-NN with k=0", [SMOKE, "--config.eval.knn_k=0"], "knn_k"),
    ("momentum above 1", [SMOKE, "--config.optimizer.momentum=1.5"], "momentum"),
    ("unknown dataset", [SMOKE, "--config.dataset.name=nosuch"], "nosuch"),
    ("unknown BN group", [SMOKE, "--config.bn_group=banana"], "banana"),
    ("no --workdir", [SMOKE, "--no-workdir"], "workdir"),
    ("eval: no run there", ["eval", "knn", "--workdir={root}/empty"], "config.json"),
    ("eval: corrupt config.json", ["eval", "knn", "--workdir={root}/corrupt"], "is corrupt"),
    ("eval: no checkpoint", ["eval", "knn", "--workdir={root}/no_checkpoints"], "no checkpoint"),
    ("eval: stray argument", ["eval", "knn", "--workdir={root}/empty", "extra"], "extra"),
    ("eval: unknown protocol", ["eval", "linear", "--workdir=x", "--protocol=nosuch"], "nosuch"),
    ("eval: text for a step", ["eval", "knn", "--workdir=x", "--checkpoint=last"], "last"),
]


def _workdir(argv, root):
    for arg in argv:
        if arg.startswith("--workdir="):
            return Path(arg.partition("=")[2])
    return root / "w"


@pytest.mark.parametrize("name, argv, phrase", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_every_refusal_is_one_line_with_exit_2_and_leaves_the_workdir_as_it_was(
    places, capsys, name, argv, phrase
):
    argv = [a.format(root=places) for a in argv]
    if argv[0] != "eval" and not any(a.startswith("--workdir") for a in argv):
        argv.append(f"--workdir={places / 'w'}")
    if "--no-workdir" in argv:
        argv = [a for a in argv if not a.startswith("--workdir") and a != "--no-workdir"]
    workdir = _workdir(argv, places)
    before = _snapshot(workdir)
    capsys.readouterr()
    if argv[0] == "eval":
        code = _in_process_eval(argv[1:])
    else:
        code = _in_process_main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    assert len(errors) == 1, err
    assert phrase in errors[0], errors[0]
    assert not re.search(r"error: \w+(Error|Exception):", errors[0]), errors[0]
    assert _snapshot(workdir) == before
    print(f"| {name} | `{' '.join(argv)}` | {errors[0]} |", file=sys.__stderr__)
