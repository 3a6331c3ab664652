import json
from pathlib import Path

import jax
import numpy as np
import pytest

from ssljax import configlib, train
from ssljax.errors import UserError

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def config():
    config = configlib.load(str(CONFIGS / "byol.py:smoke"))
    config.total_steps = 4
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    return config


def _rows(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full(config, tmp_path_factory):
    """The uninterrupted 4-step run the resumed and stopped runs must end equal to."""
    workdir = tmp_path_factory.mktemp("full")
    return workdir, jax.device_get(train.train(config, workdir))


def _assert_same_state(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_a_resumed_run_continues_exactly_as_an_uninterrupted_one(config, full, tmp_path):
    full_dir, full_state = full
    train.train(config, tmp_path / "resumed", stop_at=2)
    assert (tmp_path / "resumed" / "checkpoints" / "2").exists()
    resumed = jax.device_get(train.train(config, tmp_path / "resumed"))

    assert int(resumed.step) == int(full_state.step) == 4
    _assert_same_state(full_state, resumed)
    full_rows, resumed_rows = _rows(full_dir), _rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed_rows] == [1, 2, 3, 4]
    for name in ("loss", "lr", "tau", "online_top1"):
        assert [r[name] for r in resumed_rows] == [r[name] for r in full_rows], name
    starts = json.loads((tmp_path / "resumed" / "run.json").read_text())["starts"]
    assert [s["step"] for s in starts] == [0, 2]  # provenance of the start and the resume


def test_metrics_rows_carry_the_documented_fields(full):
    workdir, _ = full
    row = _rows(workdir)[0]
    assert {"step", "epoch", "loss", "lr", "tau", "images_per_sec", "online_top1"} <= set(row)
    assert row["images_per_sec_per_device"] == pytest.approx(row["images_per_sec"] / 8)
    assert 0.0 <= row["data_wait_fraction"] <= 1.0
    assert row["mfu"] > 0  # from the compiled step's FLOPs and the measured CPU peak
    assert (workdir / "config.json").exists()
    assert any((workdir / "tensorboard").iterdir())


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
        for p in sorted(directory.rglob("*"))
    }


def test_resuming_with_another_config_is_refused_and_changes_nothing(config, full):
    workdir, _ = full
    before = _snapshot(workdir)
    other = config.copy_and_resolve_references()
    other.optimizer.base_lr = 1.0
    with pytest.raises(UserError, match="different config.*optimizer.base_lr: .* → 1.0"):
        train.train(other, workdir)
    assert _snapshot(workdir) == before


def test_fields_added_since_fields_the_method_no_longer_reads_and_run_control_may_differ():
    saved = {"seed": 0, "model": {"name": "resnet18"}, "max_train_seconds": 0}
    newer = {**saved, "model": {"name": "resnet18", "patch_size": 16}, "max_train_seconds": 60}
    assert train.config_differences(saved, newer) == []
    changed = {"seed": 1, "model": {"name": "resnet50"}}
    assert train.config_differences(saved, changed) == [
        "seed: 0 → 1",
        "model.name: 'resnet18' → 'resnet50'",
    ]
    # A field the method does not read any more (older ssljax wrote every field): ignored.
    assert train.config_differences({**saved, "bn_group": "sync"}, saved) == []


def test_a_time_budget_stops_with_a_checkpoint_and_running_again_resumes(config, full, tmp_path):
    budget = config.copy_and_resolve_references()
    budget.max_train_seconds = 1e-3  # spent before the first step ends
    stopped = train.train(budget, tmp_path / "run")
    assert int(stopped.step) == 1
    assert (tmp_path / "run" / "checkpoints" / "1").exists()
    (row,) = _rows(tmp_path / "run")
    assert row["step"] == 1 and row["stopped_by_time_limit"] == 1.0

    # The budget is not part of the experiment: resuming without it is allowed, and goes on
    # from the saved step as any resumed run, to the uninterrupted run's state.
    resumed = jax.device_get(train.train(config, tmp_path / "run"))
    assert [r["step"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4]
    _assert_same_state(full[1], resumed)


def test_an_absurd_learning_rate_stops_after_the_allowed_skips_with_finite_checkpoints(
    config, tmp_path
):
    from ssljax.checkpoint import Checkpointer
    from ssljax.errors import TrainingDiverged

    absurd = config.copy_and_resolve_references()
    absurd.optimizer.base_lr = 1e40  # the LR overflows float32: every update is infinite
    absurd.nonfinite_max_skips = 2
    absurd.checkpoint_every_steps = 1
    with pytest.raises(TrainingDiverged, match="stopped at step 2: .*2 consecutive skipped"):
        train.train(absurd, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [1] and rows[0]["skipped_steps"] == 1.0
    run = train.setup(absurd)
    checkpointer = Checkpointer(tmp_path / "run" / "checkpoints", asynchronous=False)
    assert checkpointer.all_steps() == [1]
    saved = jax.device_get(checkpointer.restore(run.init, run.rngs()[0], run.replicated))
    initial = jax.device_get(run.init(run.rngs()[0]))
    for a, b in zip(
        jax.tree_util.tree_leaves(saved.params), jax.tree_util.tree_leaves(initial.params)
    ):
        assert np.isfinite(a).all()
        np.testing.assert_array_equal(a, b)  # the skipped step changed nothing


def test_sigterm_saves_at_the_next_step_and_the_rerun_ends_as_an_uninterrupted_run(
    config, tmp_path
):
    """A real `main.py` process gets SIGTERM mid-run, and a second trainer on its
    workdir is refused meanwhile; the persistent compilation cache lets the in-process
    runs reuse its compiled step."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).parent.parent
    # The session's cache (tests/conftest.py) if there is one: jax opens its cache once.
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or tmp_path / "jax_cache"
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(root),
    )
    long = config.copy_and_resolve_references()
    long.total_steps = 10
    workdir = tmp_path / "interrupted"
    process = subprocess.Popen(
        [
            sys.executable,
            "main.py",
            "--config=configs/byol.py:smoke",
            f"--workdir={workdir}",
            "--config.total_steps=10",
            "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=100",  # the preemption save is the only one
        ],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines, refusal = [], None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("step 3/10"):
            try:  # a second trainer on the workdir the process is training
                train.train(long, workdir)
            except UserError as e:
                refusal = str(e)
            process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 0, "".join(lines[-30:])
    assert refusal is not None and f"being trained by process {process.pid} (" in refusal
    assert f"--workdir={workdir}" in refusal.split("(", 1)[1]  # its command line
    (stopped,) = [line for line in lines if line.startswith("preempted: saved step")]
    step = int(stopped.split()[3])
    assert 3 <= step < 10 and "resume with the same command: python main.py" in stopped
    assert [p.name for p in (workdir / "checkpoints").iterdir()] == [str(step)]
    assert _rows(workdir)[-1]["step"] == step

    previous_cache = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(cache))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        long.log_every_steps, long.checkpoint_every_steps = 1, 100
        resumed = jax.device_get(train.train(long, workdir))
        uninterrupted = jax.device_get(train.train(long, tmp_path / "uninterrupted"))
    finally:
        jax.config.update("jax_compilation_cache_dir", previous_cache)
    assert int(resumed.step) == int(uninterrupted.step) == 10
    _assert_same_state(uninterrupted, resumed)
