"""Where evaluation results go: `DIR/eval/NAME.json`, one file per evaluation.

NAME = the protocol (`knn`, `linear`, `linear_byol`, `semi_1pct`, ...), then `_<dataset>`
when evaluating on another dataset than the run's, `_random_init` or `_raw_pixels` for the
baselines, and `_step_N` when `--checkpoint=N` is not the newest checkpoint. So
`knn.json` always describes the newest checkpoint and `knn_step_*.json` older ones.
"""

from __future__ import annotations

import jax
from etils.epath import Path

from ssljax import files, train
from ssljax.eval import features as feats


def features_kind(random_init: bool, raw_pixels: bool = False) -> str:
    return "raw_pixels" if raw_pixels else ("random_init" if random_init else "trained")


def cache_tag(workdir: str | Path, checkpoint: int | None, random_init: bool) -> str:
    """The feature-cache tag of an encoder: `random_init` or `step_N`."""
    return "random_init" if random_init else f"step_{feats.checkpoint_step(workdir, checkpoint)}"


def result_name(
    workdir: str | Path, protocol: str, dataset: str | None, kind: str, checkpoint: int | None
) -> str:
    name = protocol
    if dataset and dataset != train.load_config(workdir).dataset.name:
        name += f"_{dataset}"
    if kind != "trained":
        name += f"_{kind}"
    elif checkpoint is not None and checkpoint != feats.checkpoint_step(workdir):
        name += f"_step_{checkpoint}"
    return name


def write_result(workdir: str | Path, name: str, result: dict) -> Path:
    """Write `result` to `DIR/eval/NAME.json` (process 0 only); returns the path."""
    out = Path(workdir) / "eval" / f"{name}.json"
    if jax.process_index() == 0:
        files.write_json(out, result)
    return out
