"""`python -m ssljax.export`: the exported encoder gives ssljax's features in torchvision/timm.

One smoke run per architecture (module-scoped, one training step at 32 px) is exported,
loaded with `strict=True` by the library's own constructor and fed 4 photos normalised
the way that library's users do; its pooled features must equal `ssljax.load_encoder`'s.
"""

import json
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# The CUDA build of torch imports triton through torch._dynamo (torchvision imports it), and
# triton's LLVM crashes a process that loaded TensorFlow first, as conftest does. The CPU
# needs no triton: hide it.
sys.modules.setdefault("triton", None)
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

import ssljax  # noqa: E402
from ssljax import configlib, train  # noqa: E402
from ssljax.export import convert, files  # noqa: E402
from ssljax.export.__main__ import main as export_main  # noqa: E402
from ssljax.models.backbones import build_backbone  # noqa: E402

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


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """name -> workdir of a one-step BYOL run, trained on first use."""
    runs = {}

    def get(name):
        if name not in runs:
            workdir = tmp_path_factory.mktemp(name)
            train.train(_smoke_config(name, **EXPORTS[name][2]), workdir)
            runs[name] = workdir
        return runs[name]

    return get


def _torch_features(model, images: np.ndarray, mean, std) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).numpy()


def _relative_error(theirs: np.ndarray, ours: np.ndarray) -> float:
    return float(np.abs(theirs - ours).max() / np.abs(ours).max())


def _library_model(name: str, card: dict):
    """The model built the way a torchvision / timm user builds it, without ssljax."""
    if card["format"] == "torchvision":
        model = getattr(torchvision.models, name)(weights=None)
        setattr(model, card["identity_head"], torch.nn.Identity())
        return model
    return timm.create_model(*card["args"], **card["kwargs"])


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exported_encoder_gives_ssljax_features_in_its_library(name, smoke_runs, tmp_path):
    workdir = smoke_runs(name)
    format, suffix, _ = EXPORTS[name]
    out = tmp_path / f"{name}{suffix}"
    export_main([f"--workdir={workdir}", f"--format={format}", f"--out={out}"])
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["strict"] and card["input_size"] == [3, 32, 32]
    assert card["source"]["network"] == "online" and card["source"]["checkpoint"] == 1

    model = _library_model(name, card)
    state_dict = (
        safetensors_torch.load_file(str(out))
        if suffix == ".safetensors"
        else torch.load(out, weights_only=True)
    )
    model.load_state_dict(state_dict, strict=True)
    mean, std = card["mean"], card["std"]
    if card["format"] == "timm":  # a timm user takes mean/std from timm's data config
        data_config = timm.data.resolve_data_config({}, model=model)
        assert list(data_config["mean"]) == mean and list(data_config["std"]) == std

    images = _photos()
    encoder = ssljax.load_encoder(str(workdir))
    ours = np.asarray(encoder(jnp.asarray(images))["pooled"])
    theirs = _torch_features(model, images, mean, std)
    assert theirs.shape == ours.shape == (4, card["num_features"])
    error = _relative_error(theirs, ours)
    print(f"{name} {format}{suffix}: max relative difference {error:.2e}")
    assert error < RELATIVE_TOLERANCE
    reloaded = _torch_features(files.load_torch_model(out), images, mean, std)
    np.testing.assert_array_equal(reloaded, theirs)


def _randomised(tree, seed: int):
    """Every float leaf moved by N(0, 0.1²) (variances kept positive): BN scales away from 0
    and statistics away from (0, 1), so a wrongly mapped tensor cannot hide."""
    rng = np.random.default_rng(seed)

    def move(path, leaf):
        leaf = np.asarray(leaf)
        moved = leaf + rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        return np.abs(moved) + 0.5 if path[-1].key == "var" else moved

    return jax.tree_util.tree_map_with_path(move, tree)


@pytest.mark.parametrize(
    "name, format, model",
    [
        ("resnet34", "torchvision", {}),
        ("resnet101", "timm", {}),
        ("mobilenet_v2", "torchvision", {"width": 0.5}),
        ("vit_small", "timm", {"patch_size": 8, "depth": 1, "width": 0.5}),
    ],
)
def test_conversion_is_exact_for_every_tensor(name, format, model):
    config = _smoke_config(name, **model).model
    module = build_backbone(config, 32, axis_name=None)
    images = jnp.asarray(_photos())
    variables = jax.jit(lambda: module.init(jax.random.PRNGKey(0), images, train=False))()
    variables = _randomised(dict(variables), seed=1)
    variables.setdefault("batch_stats", {})
    ours = np.asarray(jax.jit(module.apply, static_argnames="train")(variables, images, False))
    spec = convert.target(config, 32, format)
    card = {"constructor": spec.constructor, "args": spec.args, "kwargs": spec.kwargs}
    model = files.build_torch_model({**card, "identity_head": spec.identity_head})
    state_dict = convert.state_dict(module, variables, spec)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()})
    mean, std = convert.input_mean_std(module, spec)
    assert _relative_error(_torch_features(model, _photos(), mean, std), ours["pooled"]) < 1e-5


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
    config = _smoke_config("resnet18", **model)
    train.save_config(config, tmp_path)
    out = tmp_path / "encoder.pth"
    with pytest.raises(SystemExit) as exit_info:
        export_main([f"--workdir={tmp_path}", f"--format={format}", f"--out={out}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_an_unknown_file_suffix_exits_2(smoke_runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(
            [
                f"--workdir={smoke_runs('resnet18')}",
                "--format=torchvision",
                f"--out={tmp_path}/x.h5",
            ]
        )
    assert exit_info.value.code == 2 and ".safetensors" in capsys.readouterr().err


def test_target_network_exports_and_evaluates_other_weights_than_online(
    smoke_runs, tmp_path, monkeypatch
):
    workdir = smoke_runs("resnet18")
    exported = {}
    for network in ("online", "target"):
        out = tmp_path / f"{network}.safetensors"
        export_main(
            [f"--workdir={workdir}", "--format=torchvision", f"--out={out}", f"--network={network}"]
        )
        assert json.loads(out.with_suffix(".json").read_text())["source"]["network"] == network
        exported[network] = safetensors_torch.load_file(str(out))
    differing = [
        k for k, v in exported["online"].items() if not torch.equal(v, exported["target"][k])
    ]
    assert "conv1.weight" in differing and "layer4.1.conv2.weight" in differing

    from ssljax.eval import features, knn

    seen = {}

    def fake_features(run, variables, split, workdir, tag, raw_pixels=False):
        seen[tag] = variables
        return np.eye(4, dtype=np.float32), np.arange(4)

    monkeypatch.setattr(features, "cached_features", fake_features)
    target = knn.evaluate(str(workdir), network="target", ks=(1,))
    knn.evaluate(str(workdir), ks=(1,))
    assert target["network"] == "target" and (workdir / "eval" / "knn_target.json").exists()
    kernel = ("params", "stem_conv", "kernel")
    online_kernel = np.asarray(seen["step_1"]["params"]["stem_conv"]["kernel"])
    target_kernel = np.asarray(seen["step_1_target"]["params"]["stem_conv"]["kernel"])
    assert not np.array_equal(online_kernel, target_kernel), kernel
    np.testing.assert_allclose(
        exported["target"]["conv1.weight"].numpy(), target_kernel.transpose(3, 2, 0, 1)
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
    fields = method.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
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
    plain = method.encoder.apply(variables, images, train=False)["pooled"]
    teacher = method.teacher(0.0).encoder
    momentum = teacher.apply(
        {"params": variables["params"], "momentum_stats": fields["momentum_stats"]["encoder"]},
        images,
        train=False,
    )["pooled"]
    np.testing.assert_allclose(plain, momentum, rtol=1e-4, atol=1e-6)
