"""launch/tpu_pod.sh under a fake `gcloud` on PATH that records its argv (no Cloud access)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LAUNCHER = ROOT / "launch" / "tpu_pod.sh"
RUNTIMES = {
    "v4-32": "tpu-ubuntu2204-base",
    "v5litepod-16": "v2-alpha-tpuv5-lite",
    "v5p-8": "v2-alpha-tpuv5",
    "v6e-64": "v2-alpha-tpuv6e",
}
AWKWARD = [
    "--config.optimizer.decay_at=(0.5,0.75)",
    '--config.name=it\'s a "quoted" name with  two spaces',
    "--config.note=$HOME `date` ; echo injected > /tmp/x && true",
    "--config.eq=a=b=c",
    "--config.empty=",
]

# Each call's argv goes to CALLS/NNNN, NUL-separated (arguments may hold newlines); bash,
# not python, so that a call costs milliseconds.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
calls=$GCLOUD_LOG
n=$(ls "$calls" | wc -l)
printf '%s\0' "$@" > "$calls/$(printf %04d "$n")"
args=" $* "
state=$calls/../qr_state
if [[ $args == *" scp "* ]]; then cp "$5" "$calls/../copied.tgz"; fi
if [[ $args == *" queued-resources create "* ]]; then echo ACTIVE > "$state"; fi
if [[ $args == *" queued-resources describe "* ]]; then
  if [[ -f $state ]]; then cat "$state"; else echo "${FAKE_QR_STATE:-}"; fi
fi
"""


@pytest.fixture
def fake(tmp_path):
    """(run the launcher, read the recorded gcloud calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    log = tmp_path / "calls"
    log.mkdir()

    def launch(*args, env=None, cwd=tmp_path):
        full_env = {
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "GCLOUD_LOG": str(log),
            "TMPDIR": str(tmp_path),
            **(env or {}),
        }
        return subprocess.run(
            ["bash", str(LAUNCHER), *args], env=full_env, cwd=cwd, capture_output=True, text=True
        )

    def calls():
        return [f.read_text().split("\0")[:-1] for f in sorted(log.iterdir())]

    return launch, calls


def flag(call, name):
    values = [a.split("=", 1)[1] for a in call if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, call)
    return values[0]


RUN_ENV = {"WORKDIR": "gs://bucket/run", "TFDS_DATA_DIR": "gs://bucket/tfds"}


def test_the_launcher_parses():
    subprocess.run(["bash", "-n", str(LAUNCHER)], check=True)


def test_usage_needs_no_environment(fake):
    launch, calls = fake
    bare = subprocess.run(
        ["bash", str(LAUNCHER)], env={"PATH": "/usr/bin:/bin"}, text=True, capture_output=True
    )
    assert bare.returncode == 2 and "usage: launch/tpu_pod.sh" in bare.stdout
    assert launch("--help").returncode == 0
    assert launch("delete").returncode == 0  # no WORKDIR needed to delete
    assert calls() == [
        ["compute", "tpus", "tpu-vm", "delete", "ssljax", "--zone=us-central2-b", "--quiet"]
    ]


def test_train_without_workdir_says_what_to_set(fake):
    launch, calls = fake
    out = launch("train", "configs/byol.py")
    assert out.returncode == 2 and "set WORKDIR" in out.stderr and calls() == []


@pytest.mark.parametrize("accelerator", sorted(RUNTIMES))
def test_every_subcommand_for_every_tpu_generation(fake, accelerator):
    launch, calls = fake
    env = {"ACCELERATOR": accelerator, "TPU_NAME": "pod", "ZONE": "zone-a", **RUN_ENV}
    runtime = RUNTIMES[accelerator]

    assert launch("create", env=env).returncode == 0
    (create,) = calls()
    assert create[:5] == ["compute", "tpus", "tpu-vm", "create", "pod"]
    assert flag(create, "version") == runtime and flag(create, "accelerator-type") == accelerator

    assert launch("--spot", "create", env=env).returncode == 0
    queued = calls()[1]
    assert queued[:5] == ["compute", "tpus", "queued-resources", "create", "pod-qr"]
    assert flag(queued, "runtime-version") == runtime and "--spot" in queued
    assert flag(queued, "node-id") == "pod" and flag(queued, "zone") == "zone-a"

    for args in (["setup"], ["train", "configs/byol.py"], ["eval", "knn"], ["logs"], ["status"]):
        before = len(calls())
        result = launch(*args, env=env)
        assert result.returncode == 0, result.stderr
        ssh = [c for c in calls()[before:] if "ssh" in c]
        assert ssh and all("--worker=all" in c and flag(c, "zone") == "zone-a" for c in ssh)

    before = len(calls())
    assert launch("ssh", env=env).returncode == 0
    assert calls()[before] == [
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod",
        "--zone=zone-a",
        "--worker=0",
    ]
    assert launch("--spot", "delete", env=env).returncode == 0
    assert calls()[-1][:4] == ["compute", "tpus", "queued-resources", "delete"]
    assert "--force" in calls()[-1]


def test_runtime_override_and_unknown_accelerator(fake):
    launch, calls = fake
    assert launch("create", env={"ACCELERATOR": "v5p-8", "RUNTIME": "my-image"}).returncode == 0
    assert flag(calls()[0], "version") == "my-image"
    unknown = launch("create", env={"ACCELERATOR": "v9-8"})
    assert unknown.returncode == 2 and "set RUNTIME" in unknown.stderr and len(calls()) == 1


def test_dry_run_prints_every_gcloud_command_and_runs_none(fake):
    launch, calls = fake
    for args in (["--dry-run", "setup"], ["create"], ["train", "configs/byol.py"]):
        out = launch(*args, env={"DRY_RUN": "1", **RUN_ENV})
        assert out.returncode == 0
        printed = [line for line in out.stdout.splitlines() if line.startswith("gcloud ")]
        assert printed, out.stdout
    assert calls() == []


def _remote_argv(command: str, home: Path) -> list[str]:
    """Run the command a worker would get, with python replaced by an argv recorder."""
    (home / "ssljax").mkdir(parents=True, exist_ok=True)
    venv_bin = home / ".venvs" / "ssljax" / "bin"
    venv_bin.mkdir(parents=True, exist_ok=True)
    record = home / "argv.json"
    python = venv_bin / "python"
    python.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'tfds': os.environ.get('TFDS_DATA_DIR')}}, "
        f"open({str(record)!r}, 'w'))\n"
    )
    python.chmod(0o755)
    subprocess.run(
        ["bash", "-c", command], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, check=True
    )
    for _ in range(200):  # the command starts python detached (nohup ... &)
        if record.exists() and record.stat().st_size:
            break
        time.sleep(0.05)
    return json.loads(record.read_text())


@pytest.mark.parametrize("subcommand", ["train", "eval"])
def test_flags_reach_the_workers_byte_for_byte(fake, tmp_path, subcommand):
    launch, calls = fake
    first = "configs/byol.py:imagenet" if subcommand == "train" else "knn"
    assert launch(subcommand, first, *AWKWARD, env=RUN_ENV).returncode == 0
    (ssh,) = calls()
    assert "--worker=all" in ssh
    remote = _remote_argv(flag(ssh, "command"), tmp_path / "worker")
    if subcommand == "train":
        head = ["main.py", "--config=configs/byol.py:imagenet"]
    else:
        head = ["-m", "ssljax.eval", "knn"]
    assert remote["argv"] == [*head, "--workdir=gs://bucket/run", "--distributed", *AWKWARD]
    assert remote["tfds"] == "gs://bucket/tfds"
    assert "logs/" in flag(ssh, "command") and not Path("/tmp/x").exists()


def test_dry_run_lines_are_the_commands_a_shell_would_run(fake, tmp_path):
    launch, calls = fake
    out = launch("--dry-run", "train", "configs/byol.py", *AWKWARD, env=RUN_ENV)
    words = shlex.split(out.stdout)  # one command (over several lines)
    assert words[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and calls() == []
    remote = _remote_argv(flag(words, "command"), tmp_path / "worker")
    assert remote["argv"][-len(AWKWARD) :] == AWKWARD


def test_setup_copies_the_repository_root_from_any_directory(fake, tmp_path):
    launch, calls = fake
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert launch("setup", cwd=elsewhere).returncode == 0
    scp, ssh = calls()
    assert scp[:3] == ["compute", "tpus", "tpu-vm"] and "scp" in scp and "--worker=all" in scp
    with tarfile.open(tmp_path / "copied.tgz") as tar:
        names = set(tar.getnames())
    assert {"./main.py", "./setup.py", "./ssljax/__init__.py", "./launch/tpu_pod.sh"} <= names
    assert not any(n.startswith("./.git/") or n == "./.git" for n in names)
    install = flag(ssh, "command")
    assert "--worker=all" in ssh
    assert "uv venv --seed --python 3.12 --managed-python" in install
    assert "pip install -q -e '.[tpu]'" in install
    assert not list(tmp_path.glob("ssljax-*.tgz"))  # the local tarball is removed


@pytest.mark.parametrize("state", ["SUSPENDED", "ACTIVE"])
def test_resume_reprovisions_a_preempted_queued_resource(fake, state):
    launch, calls = fake
    env = {"SPOT": "1", "FAKE_QR_STATE": state, **RUN_ENV}
    result = launch("resume", "configs/byol.py", "--config.total_steps=10", env=env)
    assert result.returncode == 0, result.stderr
    verbs = [c[3] for c in calls()]
    if state == "ACTIVE":  # nothing to re-provision: setup and train again
        assert verbs == ["describe", "scp", "ssh", "ssh"]
    else:  # the preempted request is replaced by a new one, then setup and train
        assert verbs == ["describe", "delete", "create", "describe", "scp", "ssh", "ssh"]
        assert "--spot" in calls()[2] and "--force" in calls()[1]
    assert "--config.total_steps=10" in flag(calls()[-1], "command")
    assert "--workdir=gs://bucket/run" in flag(calls()[-1], "command")


def test_resume_without_a_queued_resource_says_so(fake):
    launch, calls = fake
    out = launch("resume", "configs/byol.py", env=RUN_ENV)
    assert out.returncode == 2 and "SPOT=1" in out.stderr and calls() == []


def test_a_worker_still_running_refuses_a_second_run(fake, tmp_path):
    launch, calls = fake
    assert launch("train", "configs/byol.py", env=RUN_ENV).returncode == 0
    command = flag(calls()[0], "command")
    home = tmp_path / "worker"
    python = home / ".venvs" / "ssljax" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec sleep 60\n")  # a run that is still going
    python.chmod(0o755)
    (home / "ssljax").mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    first = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    pid = int((home / "ssljax" / "logs" / "running.pid").read_text())
    try:
        second = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert first.returncode == 0
    assert second.returncode == 3 and f"still running (pid {pid})" in second.stderr


def test_docs_show_the_current_dry_run_session():
    """docs/tpu.md's session is what scripts/tpu_session_dry_run.sh prints today."""
    script = ROOT / "scripts" / "tpu_session_dry_run.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    docs = (ROOT / "docs" / "tpu.md").read_text()
    assert docs.split("```text\n")[1].split("```")[0] == out.stdout
