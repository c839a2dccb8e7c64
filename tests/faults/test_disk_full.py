"""ENOSPC while checkpointing: the job ends 'failed' with "disk full at <path>", the traceback is in the
server's JSON log, diagnose says so, and the last good checkpoint stays intact (checksum). Real tmpfs."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from hpcflare.errors import JobFailedError
from hpcflare.exitcodes import ExitCode
from hpcflare.fileio import sha256_file
from hpcflare.logs.diagnose import diagnose
from tests.conftest import events, load_result

SCRIPT = """
import hpcflare.client as flare
flare.init()
while flare.is_running():
    model = flare.receive()
    flare.send(flare.FLModel(params={k: v + 1 for k, v in model.params.items()}))
"""


@pytest.fixture
def small_models_dir(tmp_path):
    mounted = []

    def mount(path, size_kb):
        keep = tmp_path / "keep"
        shutil.copytree(path, keep)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {out.stderr.strip()}")
        mounted.append(path)
        for f in keep.iterdir():
            shutil.copy2(f, path / f.name)

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_full_while_checkpointing_is_recorded_and_keeps_the_last_checkpoint(
    make_recipe, local_env, small_models_dir
):
    model = {"w": np.zeros(64 * 1024, np.float32)}  # 256 KiB: initial + one checkpoint fit, a second does not
    job = make_recipe(SCRIPT, model=model, n_clients=2, num_rounds=3).export(local_env.job_root)
    small_models_dir(job.models_dir, 700)
    run = local_env.deploy(job)
    with pytest.raises(JobFailedError, match="disk full at .*models"):
        run.get_result(timeout=120)
    status = job.read_status()
    assert status["state"] == "failed" and status["exit_code"] == ExitCode.DISK_FULL
    tracebacks = [e for e in events(job.root, "server") if e["event"] == "traceback"]
    assert tracebacks and "No space left on device" in tracebacks[0]["msg"]
    record = json.loads((job.models_dir / "checkpoint.json").read_text())
    checkpoint = job.models_dir / record["file"]
    assert record["round"] == 1 and sha256_file(checkpoint) == record["sha256"]
    np.testing.assert_array_equal(load_result(checkpoint)["w"], np.ones(64 * 1024, np.float32))
    findings, _ = diagnose(job)
    assert any("disk full at" in f.what and "hpcflare job resume" in f.fix for f in findings)


def test_a_full_upload_spool_is_the_servers_fault_not_a_sites(
    make_recipe, local_env, small_models_dir, tmp_path, monkeypatch
):
    spool = tmp_path / "spool"
    spool.mkdir()
    small_models_dir(spool, 64)
    monkeypatch.setenv("HPCFLARE_SPOOL_DIR", str(spool))  # the server's uploads spool here (64 KiB)
    model = {"w": np.zeros(64 * 1024, np.float32)}  # a 256 KiB upload does not fit
    run = make_recipe(
        SCRIPT,
        model=model,
        n_clients=2,
        num_rounds=2,
        settings={"spool_tensor_bytes": 1024, "shared_memory": False},
    ).execute(local_env)
    with pytest.raises(JobFailedError, match=f"disk full at {spool}: .*upload spool.*HPCFLARE_SPOOL_DIR"):
        run.get_result(timeout=120)
    assert run.get_status()["exit_code"] == ExitCode.DISK_FULL
    assert run.exit_codes["site-1"] == 0 and run.exit_codes["site-2"] == 0  # told the job ended; not blamed
    findings, _ = diagnose(run.job_dir)
    errors = [f.what for f in findings if f.severity == "error"]
    assert len(errors) == 1 and "upload spool" in errors[0] and "site-" not in errors[0]
