"""Where SaGe's step goes on this machine: FLOPs (XLA's cost analysis) and CPU seconds
(median of 3 after one untimed call) of its parts at the imagenet preset's shapes.

    python benchmarks/sage_parts.py [--batch-size 8] [--image-size 224]

Parts: a ResNet-50 forward, its gradient w.r.t. the parameters (batch-statistics BN, as
the encoder trains), its gradient w.r.t. the input (the evaluator's path into the
reconstruction), and the decoder's gradients w.r.t. its parameters and its input
features, with the up-blocks as `decoder.UpConv` and, for comparison, as
`nn.ConvTranspose` (the same function and kernel; docs/performance.md has the figures).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ssljax import perf
from ssljax.bench.step import load_average
from ssljax.models import decoder as decoder_module
from ssljax.models.backbones import build_backbone
from ssljax.models.norm import BatchNorm


def timed(name: str, fn, *args) -> None:
    compiled = jax.jit(fn).lower(*args).compile()
    flops = perf.step_flops(compiled) or 0.0
    jax.block_until_ready(compiled(*args))
    seconds = []
    for _ in range(3):
        start = time.process_time()
        jax.block_until_ready(compiled(*args))
        seconds.append(time.process_time() - start)
    cpu = statistics.median(seconds)
    print(
        f"{name:58s} {flops / 1e9:8.1f} GFLOP {cpu:7.2f} CPU s "
        f"{flops / 1e9 / cpu:6.1f} GFLOP/CPU s  load {load_average()}",
        flush=True,
    )


def total(tree) -> jax.Array:
    return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(tree))


class ConvTransposeUp(nn.Module):
    """The up-block as it was before `UpConv`: flax's transposed convolution."""

    features: int
    kernel_init: object = decoder_module.kaiming_fan_in
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        return nn.ConvTranspose(
            self.features,
            (4, 4),
            strides=(2, 2),
            padding="SAME",
            use_bias=False,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    b, s = args.batch_size, args.image_size
    print(f"B = {b}, {s} px, {jax.devices()[0].device_kind}, {os.cpu_count()} cores")

    model = ml_collections.ConfigDict(
        dict(
            name="resnet50",
            width=1.0,
            small_stem=False,
            zero_init_residual="none",
            dtype="float32",
            bn_momentum=0.9,
            drop_path_rate=0.0,
        )
    )
    net = build_backbone(model, s, bn_group="local", axis_name=None)
    images = jax.random.normal(jax.random.PRNGKey(0), (b, s, s, 3))
    variables = net.init(jax.random.PRNGKey(1), images, train=False)

    def apply(params, x, train):
        out = net.apply({**variables, "params": params}, x, train=train, mutable=["batch_stats"])
        return total(out[0])

    params = variables["params"]
    timed("ResNet-50 forward, inference BN", functools.partial(apply, train=False), params, images)
    timed(
        "ResNet-50 gradient w.r.t. parameters, batch BN",
        jax.grad(functools.partial(apply, train=True)),
        params,
        images,
    )
    timed(
        "ResNet-50 gradient w.r.t. the input, batch BN",
        jax.grad(lambda x, p: apply(p, x, True)),
        images,
        params,
    )

    grid = net.feature_grid(s)
    features = jax.random.normal(jax.random.PRNGKey(2), (b, grid, grid, net.num_features))
    bn = functools.partial(BatchNorm, group="local", axis_name=None)
    for label, up in (("UpConv", decoder_module.UpConv), ("nn.ConvTranspose", ConvTransposeUp)):
        original = decoder_module.UpConv
        decoder_module.UpConv = up
        try:
            dec = decoder_module.Decoder(grid=grid, image_size=s, bn=bn)
            dec_vars = dec.init(jax.random.PRNGKey(3), features, train=False)

            def loss(p, f, dec=dec, dec_vars=dec_vars):
                out = dec.apply({**dec_vars, "params": p}, f, train=True, mutable=["batch_stats"])
                return jnp.sum(out[0])

            timed(
                f"decoder gradient w.r.t. parameters, {label}",
                jax.grad(loss),
                dec_vars["params"],
                features,
            )
            timed(
                f"decoder gradient w.r.t. the features, {label}",
                jax.grad(loss, argnums=1),
                dec_vars["params"],
                features,
            )
        finally:
            decoder_module.UpConv = original


if __name__ == "__main__":
    main()
