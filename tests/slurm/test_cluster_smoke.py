"""The real local Slurm cluster is up and runs a multi-node job (later Slurm work builds on this)."""

import subprocess

import pytest

pytestmark = pytest.mark.slurm


def test_sbatch_job_spans_two_nodes(slurm, tmp_path):
    out = tmp_path / "smoke.out"
    script = tmp_path / "smoke.sbatch"
    script.write_text(f"""#!/bin/bash
#SBATCH --job-name=hpcflare-smoke
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --time=2
#SBATCH --output={out}
srun bash -c 'echo "rank=$SLURM_PROCID node=$SLURMD_NODENAME job=$SLURM_JOB_ID"'
""")
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", str(script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    lines = sorted(out.read_text().split())
    ranks = sorted(line for line in lines if line.startswith("rank="))
    nodes = {line for line in lines if line.startswith("node=")}
    assert ranks == ["rank=0", "rank=1"]
    assert len(nodes) == 2
    assert f"job={job_id}" in lines
