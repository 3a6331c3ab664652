"""ResNet: torchvision parameter counts, zero-init residuals, strides, in-model normalisation."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssljax.errors import UserError
from ssljax.models import BatchNorm, ResNet, build_resnet

TINY = 1 / 16


class _WithImageNetHead(nn.Module):
    """A backbone plus torchvision's 1000-way `fc`, to compare parameter counts."""

    backbone: ResNet

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(1000)(self.backbone(x, train=train)["pooled"])


def _abstract_variables(model, image_size, batch=1):
    x = jnp.zeros((batch, image_size, image_size, 3))
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def _shapes(model, image_size, batch=2):
    x = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    variables = _abstract_variables(model, image_size, batch)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return {k: v.shape for k, v in out.items()}


def _init(model, x):
    """Real variables, fast: the rbg key compiles ~5x faster than threefry on CPU."""
    key = jax.random.key(0, impl="unsafe_rbg")
    return jax.jit(functools.partial(model.init, train=False))(key, x)


@pytest.fixture(scope="module")
def tiny18():
    """A resnet18 at width 1/16 and 32 px, its variables and a random batch, built once."""
    model = build_resnet("resnet18", width=TINY, small_stem=True, axis_name=None)
    x = jax.random.uniform(jax.random.key(1), (16, 32, 32, 3))
    return model, _init(model, x), x


def _count(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# torchvision.models.resnet{18,34,50,101,152}(): sum(p.numel() for p in m.parameters()),
# typed from the torchvision model documentation (no torch on this machine).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_with_imagenet_head_equals_torchvision(name):
    model = _WithImageNetHead(build_resnet(name, axis_name=None))
    variables = _abstract_variables(model, image_size=32)
    assert _count(variables["params"]) == TORCHVISION_PARAMS[name]


def test_running_statistics_are_not_parameters():
    variables = _abstract_variables(build_resnet("resnet18", axis_name=None), 32)
    stats = jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
    assert {path[-1].key for path, _ in stats} == {"mean", "var"}
    params = jax.tree_util.tree_leaves_with_path(variables["params"])
    assert {path[-1].key for path, _ in params} == {"kernel", "scale", "bias"}


def test_resnet200_has_3_24_36_3_bottleneck_blocks():
    params = _abstract_variables(build_resnet("resnet200", axis_name=None), 32)["params"]
    for layer, blocks in zip(("layer1", "layer2", "layer3", "layer4"), (3, 24, 36, 3)):
        assert sum(k.startswith(f"{layer}_block") for k in params) == blocks
    assert "conv3" in params["layer4_block2"]


def test_unknown_name_is_a_user_error_listing_the_valid_ones():
    with pytest.raises(UserError, match="resnet18.*resnet200"):
        build_resnet("resnet51")


def _check_zero_init_residuals(model, params, zero=True):
    np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
    blocks = [k for k in params if "_block" in k]
    assert len(blocks) == sum(model.stage_sizes)
    for block in blocks:
        bns = sorted(k for k in params[block] if k.startswith("bn"))
        last = bns[-1]
        assert last == ("bn3" if model.bottleneck else "bn2")
        for bn in bns + (["shortcut_bn"] if "shortcut_bn" in params[block] else []):
            expected = 0.0 if bn == last and zero else 1.0
            np.testing.assert_array_equal(params[block][bn]["scale"], expected, err_msg=block)


def test_last_bn_of_every_basic_block_starts_at_zero_scale_and_every_other_at_one(tiny18):
    model, variables, _ = tiny18
    _check_zero_init_residuals(model, variables["params"])


def test_last_bn_of_every_bottleneck_block_starts_at_zero_scale_and_every_other_at_one():
    """'bottleneck' (Haiku's ResNet, BYOL/DetCon) zero-initialises bottleneck blocks."""
    model = build_resnet(
        "resnet50", width=TINY, small_stem=True, axis_name=None, zero_init_residual="bottleneck"
    )
    _check_zero_init_residuals(model, _init(model, jnp.zeros((1, 32, 32, 3)))["params"])


@pytest.mark.parametrize("mode", ["bottleneck", "none"])
def test_basic_blocks_keep_every_bn_scale_at_one_unless_all_blocks_are_zeroed(mode):
    """Haiku's basic block ('bottleneck') and torchvision's default ('none') do not zero."""
    bn = functools.partial(BatchNorm, axis_name=None)
    model = ResNet((1, 1, 1, 1), False, TINY, True, bn, zero_init_residual=mode)
    params = _init(model, jnp.zeros((1, 8, 8, 3)))["params"]
    _check_zero_init_residuals(model, params, zero=False)


def test_an_unknown_zero_init_residual_is_a_user_error():
    model = build_resnet("resnet18", width=TINY, axis_name=None, zero_init_residual="some")
    with pytest.raises(UserError, match="zero_init_residual"):
        _abstract_variables(model, 32)


@pytest.mark.parametrize(
    "config_name, expected",
    [
        ("byol", "bottleneck"),  # Haiku hk.nets.ResNet BlockV1: scale_init zeros in bn_2
        ("detcon_b", "bottleneck"),  # DetCon's networks.py: the same Haiku blocks
        ("simclr", "all"),  # SimCLR resnet.py: init_zero=True in both block kinds
        ("detcon_s", "all"),  # SimCLR's network (DetCon §3.1)
        ("moco_v1", "none"),  # torchvision resnet50(), zero_init_residual=False
        ("moco_v2", "none"),
        ("m2_teacher", "none"),  # resnet_mbn.py, zero_init_residual=False
        ("sage", "none"),  # OpenSelfSup ResNet, zero_init_residual=False
        ("sslight_dino", "none"),  # sslight/backbone/resnet.py default False
        ("sslight_swav", "none"),
        ("sslight_mocov2", "none"),
    ],
)
def test_each_method_zero_initialises_residual_blocks_as_its_reference(config_name, expected):
    from pathlib import Path

    from ssljax import configlib
    from ssljax.models.backbones import build_backbone

    config = configlib.load(str(Path(__file__).parent.parent / "configs" / f"{config_name}.py"))
    config.model.name = "resnet18"
    backbone = build_backbone(config.model, 32, axis_name=None)
    assert backbone.zero_init_residual == expected


@pytest.mark.parametrize(
    "spec",
    [
        "byol.py:fashion_mnist",
        "detcon_b.py:fashion_mnist",
        "moco_v2.py:fashion_mnist",
        "m2_teacher.py:fashion_mnist",
        "sage.py:fashion_mnist",
        "sslight_dino.py:fashion_mnist",
        "sslight_swav.py:fashion_mnist_baseline",
        "sslight_mocov2.py:fashion_mnist",
    ],
)
def test_cpu_presets_zero_initialise_every_residual_block(spec):
    """ssljax's own CPU presets, not a reference setting: live basic blocks made BYOL's
    trained network no better than its random init (configlib.small_cpu_model)."""
    from pathlib import Path

    from ssljax import configlib

    config = configlib.load(str(Path(__file__).parent.parent / "configs" / spec))
    assert config.model.zero_init_residual == "all"


def test_blocks_with_identity_shortcut_pass_their_input_through_at_init(tiny18):
    model, variables, x = tiny18
    _, state = model.apply(variables, x, train=False, capture_intermediates=True)
    outputs = state["intermediates"]
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        first = outputs[f"{layer}_block0"]["__call__"][0]
        second = outputs[f"{layer}_block1"]["__call__"][0]
        assert float(jnp.abs(first).max()) > 0
        np.testing.assert_allclose(second, first, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("small_stem", "image_size", "grid"), [(True, 32, 4), (False, 224, 7), (False, 32, 1)]
)
def test_layer4_grid_for_standard_and_small_stem(small_stem, image_size, grid):
    model = build_resnet("resnet50", small_stem=small_stem, axis_name=None)
    shapes = _shapes(model, image_size)
    assert shapes["layer4"] == (2, grid, grid, 2048)
    assert shapes["pooled"] == (2, 2048)
    assert model.feature_grid(image_size) == grid
    assert model.total_stride == image_size // grid


@pytest.mark.parametrize("small_stem", [True, False])
@pytest.mark.parametrize("image_size", [33, 96, 113, 160])
def test_feature_grid_agrees_with_the_real_output_for_every_layer(small_stem, image_size):
    model = build_resnet("resnet18", width=TINY, small_stem=small_stem, axis_name=None)
    shapes = _shapes(model, image_size)
    for layer, channels in model.layer_features.items():
        side = model.feature_grid(image_size, layer)
        assert shapes[layer] == (2, side, side, channels), layer


def test_feature_grid_of_an_unknown_layer_is_a_user_error():
    with pytest.raises(UserError, match="layer4"):
        build_resnet("resnet18").feature_grid(224, "layer5")


@pytest.mark.parametrize(("name", "features"), [("resnet18", 512 // 4), ("resnet50", 2048 // 4)])
def test_width_multiplier_scales_the_feature_dimension(name, features):
    model = build_resnet(name, width=0.25, axis_name=None)
    assert model.num_features == features
    assert _shapes(model, 64)["pooled"] == (2, features)


def test_tiny_width_never_drops_below_one_channel():
    model = build_resnet("resnet18", width=1 / 1000, axis_name=None)
    assert model.layer_features == {"layer1": 1, "layer2": 1, "layer3": 1, "layer4": 1}


def test_images_are_mean_std_normalised_inside_the_model(tiny18):
    model, variables, x = tiny18
    identity = model.clone(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    mean, std = jnp.asarray(model.mean), jnp.asarray(model.std)

    out = model.apply(variables, x, train=False)["layer4"]
    normalised_by_hand = identity.apply(variables, (x - mean) / std, train=False)["layer4"]
    np.testing.assert_allclose(out, normalised_by_hand, rtol=1e-5, atol=1e-5)

    mean_image = jnp.broadcast_to(mean, x.shape)
    from_mean = model.apply(variables, mean_image, train=False)["layer4"]
    from_zeros = identity.apply(variables, jnp.zeros_like(x), train=False)["layer4"]
    np.testing.assert_allclose(from_mean, from_zeros, atol=1e-6)


def test_pooled_is_the_spatial_mean_of_layer4(tiny18):
    model, variables, x = tiny18
    out = model.apply(variables, x, train=False)
    np.testing.assert_allclose(out["pooled"], out["layer4"].mean(axis=(1, 2)), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters_and_pooled_features():
    model = build_resnet("resnet18", width=TINY, small_stem=True, dtype=jnp.bfloat16)
    shapes_and_dtypes = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    )
    out, variables = shapes_and_dtypes
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert out["layer4"].dtype == jnp.bfloat16
    assert out["pooled"].dtype == jnp.float32


def test_sync_bn_under_shard_map_updates_batch_stats_like_one_global_batch(tiny18):
    unsharded, variables, x = tiny18
    sharded = unsharded.clone(bn=functools.partial(BatchNorm, group="sync", axis_name="data"))
    mesh = jax.make_mesh((8,), ("data",))

    @jax.jit
    @functools.partial(
        jax.shard_map, mesh=mesh, in_specs=(P(), P("data")), out_specs=(P("data"), P())
    )
    def train_forward(variables, x):
        out, updates = sharded.apply(variables, x, train=True, mutable=["batch_stats"])
        return out["pooled"], updates["batch_stats"]

    pooled, stats = train_forward(variables, jax.device_put(x, NamedSharding(mesh, P("data"))))
    out, updates = unsharded.apply(variables, x, train=True, mutable=["batch_stats"])

    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), stats, variables["batch_stats"])
    assert all(jax.tree.leaves(changed))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        stats,
        updates["batch_stats"],
    )
    np.testing.assert_allclose(pooled, out["pooled"], rtol=1e-4, atol=1e-5)
