"""`python -m ssljax.export`: the exported encoder gives ssljax's features in torchvision/timm.

A run directory per architecture (module-scoped, 32 px) whose only checkpoint holds a
state of the run's shapes, scaled like an initial state, with every weight and statistic
then randomised (a wrongly mapped tensor cannot hide behind a default value; compiling
the init or a training step per architecture would cost more than these tests' budget,
and `tests/test_train.py` covers checkpoints written by training) is exported, loaded with
`strict=True` by the library's own constructor and fed 4 photos normalised the way that
library's users do; its pooled features must equal `ssljax.load_encoder`'s.
"""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ssljax
from ssljax import configlib, train
from ssljax.checkpoint import Checkpointer
from ssljax.export import convert, files
from ssljax.export.__main__ import main as export_main
from ssljax.models.backbones import build_backbone

LIBRARIES = ("torch", "torchvision", "timm", "safetensors")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in LIBRARIES),
    reason="needs the export extra: pip install -e '.[export]'",
)

ROOT = Path(__file__).parent.parent
RELATIVE_TOLERANCE = 1e-4

# architecture -> (format, file suffix, model overrides)
EXPORTS = {
    "resnet18": ("torchvision", ".pth", {}),
    "resnet50": ("torchvision", ".safetensors", {}),
    "mobilenet_v2": ("torchvision", ".pth", {}),
    "vit_tiny": ("timm", ".safetensors", {"patch_size": 4, "depth": 2}),
}


def _photos(size: int = 32) -> np.ndarray:
    """4 of scikit-image's bundled RGB photos, resized to `size`, in [0, 1]: [4, s, s, 3]."""
    from skimage import data, transform

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    return np.stack([transform.resize(p, (size, size), anti_aliasing=True) for p in photos]).astype(
        np.float32
    )


def _smoke_config(name: str, **model):
    config = configlib.load(str(ROOT / "configs" / "byol.py:smoke"))
    config.model.name = name
    config.model.width = 1.0
    config.model.small_stem = False
    config.model.update(model)
    config.batch_size = 8
    config.total_steps = 1
    config.online_probe = False
    return config


def _like_init(path, shape):
    """A value of `shape` scaled as an initialiser would: kernels N(0, 1/fan_in), scales
    and variances 1, the rest (biases, means, embeddings, counters) 0."""
    name = getattr(path[-1], "key", None)
    if name == "kernel":
        fan_in = int(np.prod(shape.shape[:-1]))
        rng = np.random.default_rng(len(path) * 1000 + fan_in)
        return (rng.standard_normal(shape.shape) / np.sqrt(fan_in)).astype(shape.dtype)
    if name in ("scale", "var"):
        return np.ones(shape.shape, shape.dtype)
    return np.zeros(shape.shape, shape.dtype)


def _randomised(tree, seed: int):
    """Every float leaf moved by N(0, 0.1²) (variances kept positive): BN scales away from 0
    and statistics away from (0, 1), so a wrongly mapped tensor cannot hide."""
    rng = np.random.default_rng(seed)

    def move(path, leaf):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind != "f":
            return leaf
        moved = leaf + rng.normal(0.0, 0.1, leaf.shape).astype(leaf.dtype)
        return np.abs(moved) + 0.5 if getattr(path[-1], "key", None) == "var" else moved

    return jax.tree_util.tree_map_with_path(move, tree)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> workdir: a run directory whose only checkpoint holds a state of the run's
    shapes, every weight and statistic randomised, online and target differently."""
    made = {}

    def get(name):
        if name not in made:
            workdir = tmp_path_factory.mktemp(name)
            config = _smoke_config(name, **EXPORTS[name][2])
            train.save_config(config, workdir)
            run = train.setup(config)
            # Compiling the init would cost more than filling its shapes on the host.
            shapes = jax.eval_shape(run.init, run.rngs()[0])
            state = jax.tree_util.tree_map_with_path(_like_init, shapes)
            fields = ("params", "batch_stats", "target_params", "target_batch_stats")
            state = state.replace(
                step=np.ones_like(state.step),  # as after one step
                **{f: _randomised(getattr(state, f), i) for i, f in enumerate(fields)},
            )
            checkpointer = Checkpointer(workdir / "checkpoints", asynchronous=False)
            checkpointer.save(1, jax.device_put(state, run.replicated), force=True)
            checkpointer.close()
            made[name] = workdir
        return made[name]

    return get


@pytest.fixture(scope="module")
def features():
    """workdir -> `ssljax.load_encoder(workdir)`'s pooled features of `_photos()`."""
    made = {}

    def get(workdir):
        if workdir not in made:
            encoder = ssljax.load_encoder(str(workdir))
            made[workdir] = np.asarray(encoder(jnp.asarray(_photos()))["pooled"])
        return made[workdir]

    return get


@pytest.fixture(scope="module")
def torch_worker(tmp_path_factory):
    """`tests/torch_worker.py` in its own process (no TensorFlow/JAX in it); call it with
    (exported file, card) → (features of `_photos()`, the mean/std the library user fed)."""
    folder = tmp_path_factory.mktemp("torch_worker")
    images = folder / "photos.npy"
    np.save(images, _photos())
    stderr = open(folder / "stderr.txt", "w")
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "torch_worker.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    ready = worker.stdout.readline()
    assert ready, (folder / "stderr.txt").read_text()
    calls = iter(range(10**6))

    def features(path: Path, card: dict) -> tuple[np.ndarray, dict]:
        out = folder / f"features_{next(calls)}.npy"
        request = {"file": str(path), "card": card, "images": str(images), "features": str(out)}
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        reply = json.loads(worker.stdout.readline())
        assert "error" not in reply, reply["error"]
        return np.load(out), reply

    yield features
    worker.stdin.close()
    worker.wait(timeout=60)
    stderr.close()


def _relative_error(theirs: np.ndarray, ours: np.ndarray) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exported_encoder_gives_ssljax_features_in_its_library(
    name, runs, features, torch_worker, tmp_path
):
    workdir = runs(name)
    format, suffix, _ = EXPORTS[name]
    out = tmp_path / f"{name}{suffix}"
    export_main([f"--workdir={workdir}", f"--format={format}", f"--out={out}"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["strict"] and card["input_size"] == [3, 32, 32]
    assert card["source"]["network"] == "online" and card["source"]["checkpoint"] == 1

    theirs, fed = torch_worker(out, card)  # strict=True load by the library's constructor
    assert (fed["mean"], fed["std"]) == (card["mean"], card["std"])  # timm: its data config
    ours = features(workdir)
    assert theirs.shape == ours.shape == (4, card["num_features"])
    # The photos give different features: the random weights do not saturate the network.
    assert np.ptp(ours, axis=0).max() > 0.01 * np.abs(ours).max()
    error = _relative_error(theirs, ours)
    print(f"{name} {format}{suffix}: max relative difference {error:.2e}")
    assert error < RELATIVE_TOLERANCE


def test_bottleneck_resnet_exports_exactly_to_timm_too(runs, features, torch_worker, tmp_path):
    workdir = runs("resnet50")
    out = tmp_path / "resnet50_timm.pth"
    export_main([f"--workdir={workdir}", "--format=timm", f"--out={out}"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["constructor"].startswith("timm") and card["strict"]
    theirs, _ = torch_worker(out, card)
    assert _relative_error(theirs, features(workdir)) < RELATIVE_TOLERANCE


def test_conversion_is_exact_for_every_tensor_of_a_narrow_mobilenet(torch_worker, tmp_path):
    config = _smoke_config("mobilenet_v2", width=0.5).model
    module = build_backbone(config, 32, axis_name=None)
    images = jnp.asarray(_photos())
    variables = jax.jit(lambda: module.init(jax.random.PRNGKey(0), images, train=False))()
    variables = _randomised(dict(variables), seed=1)
    variables.setdefault("batch_stats", {})
    ours = jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, images)["pooled"]
    spec = convert.target(config, 32, "torchvision")
    out = tmp_path / "mobilenet_v2.safetensors"
    files.write_state_dict(out, convert.state_dict(module, variables, spec))
    mean, std = convert.input_mean_std(module, spec)
    card = {**vars(spec), "args": list(spec.args), "mean": mean, "std": std}
    theirs, _ = torch_worker(out, card)
    assert _relative_error(theirs, np.asarray(ours)) < 1e-5


@pytest.mark.parametrize(
    "model, format, message",
    [
        ({"name": "vit_tiny"}, "torchvision", "torchvision has no vit_tiny"),
        ({"name": "mobilenet_v2"}, "timm", "export MobileNetV2 with --format=torchvision"),
        ({"name": "resnet200"}, "torchvision", "torchvision has no resnet200"),
        ({"name": "resnet50", "width": 2.0}, "timm", "at width 2"),
        ({"name": "resnet18", "small_stem": True}, "torchvision", "small_stem resnet18"),
    ],
)
def test_a_pair_no_library_has_exits_2_with_one_line_and_writes_nothing(
    model, format, message, tmp_path, capsys
):
    config = _smoke_config(**{"name": "resnet18", **model})
    train.save_config(config, tmp_path)
    out = tmp_path / "encoder.pth"
    with pytest.raises(SystemExit) as exit_info:
        export_main([f"--workdir={tmp_path}", f"--format={format}", f"--out={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_an_unknown_file_suffix_exits_2(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(
            [
                f"--workdir={runs('resnet18')}",
                "--format=torchvision",
                f"--out={tmp_path}/x.h5",
            ]
        )
    assert exit_info.value.code == 2 and ".safetensors" in capsys.readouterr().err


def test_target_network_exports_and_evaluates_other_weights_than_online(
    runs, tmp_path, monkeypatch
):
    from safetensors.numpy import load_file

    workdir = runs("resnet18")
    exported = {}
    for network in ("online", "target"):
        out = tmp_path / f"{network}.safetensors"
        export_main(
            [f"--workdir={workdir}", "--format=torchvision", f"--out={out}", f"--network={network}"]
        )
        assert json.loads(out.with_suffix(".json").read_text())["source"]["network"] == network
        exported[network] = load_file(str(out))
    differing = [
        k for k, v in exported["online"].items() if not np.array_equal(v, exported["target"][k])
    ]
    assert "conv1.weight" in differing and "layer4.1.conv2.weight" in differing

    from ssljax.eval import bank, knn

    seen = {}

    def fake_bank(run, variables, split, workdir, tag, raw_pixels=False):
        seen[tag] = variables
        return bank.from_numpy(np.eye(8, dtype=np.float32), np.arange(8))

    monkeypatch.setattr(bank, "cached", fake_bank)
    target = knn.evaluate(str(workdir), network="target", ks=(1,))
    knn.evaluate(str(workdir), ks=(1,))
    assert target["network"] == "target" and (workdir / "eval" / "knn_target.json").exists()
    online_kernel = np.asarray(seen["step_1"]["params"]["stem_conv"]["kernel"])
    target_kernel = np.asarray(seen["step_1_target"]["params"]["stem_conv"]["kernel"])
    assert not np.array_equal(online_kernel, target_kernel)
    np.testing.assert_allclose(
        exported["target"]["conv1.weight"], target_kernel.transpose(3, 2, 0, 1)
    )


def test_simclr_has_no_target_network(tmp_path, capsys):
    config = configlib.load(str(ROOT / "configs" / "simclr.py:smoke"))
    config.model.small_stem = False
    config.model.width = 1.0
    train.save_config(config, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        export_main(
            [
                f"--workdir={tmp_path}",
                "--format=torchvision",
                f"--out={tmp_path}/x.pth",
                "--network=target",
                "--random-init",
            ]
        )
    assert exit_info.value.code == 2
    assert "simclr has no target network" in capsys.readouterr().err


def test_momentum2_teacher_exports_its_teacher_with_momentum_bn_statistics():
    from ssljax.methods.m2_teacher import MomentumSquaredTeacher

    config = configlib.load(str(ROOT / "configs" / "m2_teacher.py:smoke"))
    config.momentum_bn_epsilon = 1e-3
    method = MomentumSquaredTeacher(config, total_steps=10)
    shapes = jax.eval_shape(method.init, jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
    fields = jax.tree_util.tree_map_with_path(_like_init, shapes)
    fields["momentum_stats"] = _randomised(fields["momentum_stats"], seed=2)
    state = types.SimpleNamespace(step=0, **fields)
    variables = method.encoder_variables(state)  # default: the teacher
    assert method.evaluated_network == "target"
    teacher_stats = fields["momentum_stats"]["encoder"]["stem_bn"]
    exported = variables["batch_stats"]["stem_bn"]
    np.testing.assert_array_equal(exported["mean"], teacher_stats["mean"])
    np.testing.assert_allclose(exported["var"], teacher_stats["var"] + 1e-3 - 1e-5, rtol=1e-6)
    assert variables["params"] is fields["target_params"]["encoder"]
    images = jnp.asarray(_photos())
    plain = jax.jit(method.encoder.apply, static_argnames="train")(variables, images, train=False)
    teacher = method.teacher(0.0).encoder
    momentum = jax.jit(teacher.apply, static_argnames="train")(
        {"params": variables["params"], "momentum_stats": fields["momentum_stats"]["encoder"]},
        images,
        train=False,
    )
    plain, momentum = plain["pooled"], momentum["pooled"]
    np.testing.assert_allclose(plain, momentum, rtol=1e-4, atol=1e-6)
