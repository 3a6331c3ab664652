import json

from ssljax import report
from ssljax.eval import results
from ssljax.logger import MetricsLogger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tiny_run(workdir, method, knn_top1, random_top1, resumed_at=None):
    """The files a short run and its evaluations leave: config, metrics, eval JSONs."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(
        json.dumps({"method": method, "dataset": {"name": "fashion_mnist"}})
    )
    logger = MetricsLogger(workdir, total_steps=6, steps_per_epoch=3, batch_size=32)
    for step in (2, 4, 6):
        if step == resumed_at:  # a second invocation: elapsed_sec starts again
            logger = MetricsLogger(workdir, 6, 3, 32, start_step=step - 2)
        logger.log(step, {"loss": 4.0 - 0.1 * step, "lr": 0.01 * step, "online_top1": 0.1 * step})
    for step, top1 in ((3, knn_top1 - 0.05), (6, knn_top1)):
        name = "knn" if step == 6 else f"knn_step_{step}"
        results.write_result(
            workdir,
            name,
            {
                "top1": top1,
                "top1_k20": top1,
                "top1_k200": top1,
                "checkpoint": step,
                "features": "trained",
            },
        )
    results.write_result(workdir, "knn_random_init", {"top1": random_top1, "top1_k20": random_top1})
    results.write_result(workdir, "linear", {"top1": knn_top1 - 0.02, "top5": 0.99})


def test_report_renders_a_table_and_plots_from_two_tiny_runs(tmp_path, capsys):
    _tiny_run(tmp_path / "byol_run", "byol", 0.80, 0.64, resumed_at=4)
    _tiny_run(tmp_path / "simclr_run", "simclr", 0.60, 0.64)
    results.write_result(
        tmp_path / "byol_run", "knn_raw_pixels", {"top1": 0.846, "top1_k20": 0.846}
    )
    out = tmp_path / "docs" / "results.md"
    capsys.readouterr()  # the loggers' progress lines
    report.main(
        [
            str(tmp_path / "byol_run"),
            str(tmp_path / "simclr_run"),
            f"--out={out}",
            "--note=Command: `bash benchmarks/fashion_mnist_suite.sh`",
        ]
    )
    text = out.read_text()
    assert text == capsys.readouterr().out.rstrip("\n") + "\n"

    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == (
        "| run | method | steps | wall time | img/s | online top-1 | 20-NN | 200-NN | "
        "linear top-1 | linear top-5 | random-init 20-NN |"
    )
    byol_row = table[2].split(" | ")
    assert byol_row[:3] == ["| byol_run", "byol", "6"] and byol_row[6] == "80.00"
    assert table[4].startswith("| raw pixels (fashion_mnist) | — |") and "84.60" in table[4]
    assert "1 of 2 runs beat their random-init network in 20-NN top-1 (not: simclr_run)." in text
    assert "The best 20-NN top-1, byol_run (80.00%), does not beat raw pixels (84.60%)." in text
    assert "Command: `bash benchmarks/fashion_mnist_suite.sh`" in text

    images = sorted((tmp_path / "docs" / "images" / "results").iterdir())
    assert [p.name for p in images] == [
        "knn.png",
        "loss_lr.png",
        "online_probe.png",
        "throughput.png",
    ]
    for image in images:
        assert image.read_bytes()[:8] == PNG_MAGIC
        assert f"](images/results/{image.name})" in text


def test_wall_time_sums_the_invocations_of_a_resumed_run(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    rows = [
        {"step": 2, "elapsed_sec": 10.0},
        {"step": 4, "elapsed_sec": 20.0},
        {"step": 6, "elapsed_sec": 5.0},
        {"step": 8, "elapsed_sec": 15.0},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.load_run(run_dir).wall_seconds == 35.0
