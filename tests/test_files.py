"""Workdir files are written whole or not at all, and JSON stays strict JSON."""

import json
import math

import helpers
import pytest

from ssljax import files
from ssljax.errors import UserError
from ssljax.logger import MetricsLogger


def test_a_whole_file_replaces_the_old_one_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "config.json"
    files.write_text(path, "old")
    files.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]


def test_a_write_that_dies_midway_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    files.write_json(path, {"a": 1})

    def crash(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(files.os, "fsync", crash)  # after the new bytes were written
    with pytest.raises(OSError, match="disk gone"):
        files.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_non_finite_values_are_strict_json_and_read_back_as_floats(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": math.nan, "lr": math.inf, "tau": -math.inf, "top1": 0.5}]
    files.write_jsonl(path, rows)
    line = path.read_text().splitlines()[0]
    json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert '"NaN"' in line and '"Infinity"' in line and '"-Infinity"' in line
    (row,) = files.read_jsonl(path)
    assert math.isnan(row["loss"]) and row["lr"] == math.inf and row["tau"] == -math.inf


def test_a_cut_off_last_line_is_dropped_with_a_warning_and_earlier_rows_kept(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    files.write_jsonl(path, [{"step": 1}, {"step": 2}])
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert files.read_jsonl(path) == [{"step": 1}, {"step": 2}]
    assert "cut-off last line 3" in capsys.readouterr().err


def test_an_unreadable_line_before_the_last_is_a_user_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2 of .* is not JSON"):
        files.read_jsonl(path)


@pytest.mark.parametrize("damage", ["truncated", "emptied"])
def test_the_logger_resumes_after_a_kill_mid_write_and_appends(tmp_path, damage, capsys):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(tmp_path, total_steps=10, steps_per_epoch=5, batch_size=8)
    for step in (1, 2):
        logger.log(step, {"loss": 1.0 / step, "lr": 0.1})
    if damage == "truncated":
        with open(path, "a") as f:
            f.write('{"step": 3, "loss"')
    else:
        path.write_text("")
    resumed = MetricsLogger(tmp_path, total_steps=10, steps_per_epoch=5, batch_size=8, start_step=2)
    resumed.log(3, {"loss": math.nan, "lr": 0.1})
    steps = [r["step"] for r in files.read_jsonl(path)]
    assert steps == ([1, 2, 3] if damage == "truncated" else [3])
    if damage == "emptied":
        assert "no rows up to step 2" in capsys.readouterr().err
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}"))


def test_a_workdir_lock_refuses_a_second_holder_names_it_and_frees_on_kill(tmp_path):
    """Another process holds the lock: a second is refused with its pid and command line,
    nothing is written in the workdir, and the lock is free once that process is killed."""
    with helpers.holding_workdir_lock(tmp_path, "--marker=trainer") as holder:
        lock = files.WorkdirLock(tmp_path)
        refusal = lock.acquire()
        assert refusal is not None
        assert f"is being trained by process {holder.pid} (" in refusal
        assert "--marker=trainer" in refusal and "choose another --workdir" in refusal
        assert list(tmp_path.iterdir()) == []
    assert lock.acquire() is None  # the holder got SIGKILL: no stale lock
    second = files.WorkdirLock(tmp_path)
    assert "is being trained by process" in second.acquire()  # this process holds it now
    lock.release()
    assert second.acquire() is None
    second.release()


def test_a_workdir_lock_does_not_apply_to_a_missing_directory_or_an_object_store(tmp_path):
    assert files.WorkdirLock(tmp_path / "not_yet").acquire() is None
    assert not (tmp_path / "not_yet").exists()
    assert files.WorkdirLock("gs://bucket/run").acquire() is None
