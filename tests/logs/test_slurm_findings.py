"""Slurm's accounting read into findings: every life of a requeued job, numbers said as Slurm gives them."""

from __future__ import annotations

from hpcflare.job import JobDir
from hpcflare.logs.slurm_findings import sacct_findings

KEYS = ("JobID", "JobName", "State", "ExitCode", "MaxRSS", "ReqMem", "Elapsed", "NodeList")


class Accounting:
    """sacct's rows for one job id, as SlurmCommands.accounting returns them."""

    def __init__(self, *rows: tuple[str, ...]) -> None:
        self.rows = [dict(zip(KEYS, row)) for row in rows]

    def accounting(self, job_id: str) -> list[dict[str, str]]:
        return self.rows


def job(tmp_path) -> JobDir:
    (tmp_path / "slurm_job_id").write_text("41\n")
    return JobDir(tmp_path)


def test_a_completed_job_is_called_requeued_only_when_it_had_an_earlier_life(tmp_path):
    earlier = ("41", "hpcflare", "NODE_FAIL", "0:0", "", "4000M", "00:01:00", "node2")
    later = ("41", "hpcflare", "COMPLETED", "0:0", "", "4000M", "00:02:00", "node1")
    (finding,) = sacct_findings(job(tmp_path), Accounting(earlier, later), completed=True)
    assert (
        finding.severity == "info"
        and "requeued and completed" in finding.fix
        and "lost a node" in finding.what
    )
    step = ("41.1", "hpcflare-rank", "CANCELLED by 0", "0:15", "", "", "00:00:30", "node2")
    (finding,) = sacct_findings(job(tmp_path), Accounting(step), completed=True)
    assert finding.severity == "warning" and "requeued" not in finding.fix and "lost" in finding.fix


def test_max_rss_without_a_memory_request_reads_plainly(tmp_path):
    oom = ("41.0", "hpcflare-rank", "OUT_OF_MEMORY", "0:125", "73372K", "", "00:00:10", "node3")
    (finding,) = sacct_findings(job(tmp_path), Accounting(oom))
    assert finding.severity == "error" and "(MaxRSS 73372K) on node3" in finding.what
    oom = ("41.0", "hpcflare-rank", "OUT_OF_MEMORY", "0:125", "73372K", "64M", "00:00:10", "node3")
    (finding,) = sacct_findings(job(tmp_path), Accounting(oom))
    assert "(MaxRSS 73372K of 64M requested)" in finding.what


def test_a_failed_step_only_echoes_a_failure_the_job_recorded(tmp_path):
    step = ("41", "hpcflare", "FAILED", "31:0", "", "", "00:03:00", "node1")
    (finding,) = sacct_findings(job(tmp_path), Accounting(step))
    assert finding.severity == "error" and "TIME_LIMIT" in finding.fix
    (finding,) = sacct_findings(job(tmp_path), Accounting(step), recorded=True)
    assert finding.severity == "info" and "the job's own finding" in finding.fix


def test_a_lost_node_is_named_and_the_steps_it_cancelled_are_its_consequence(tmp_path):
    from hpcflare.logs.slurm_findings import output_findings

    job_dir = job(tmp_path)
    job_dir.log_dir.mkdir(parents=True)
    (job_dir.log_dir / "slurm-41.out").write_text(
        "srun: error: Node failure on node2\n"
        "slurmstepd: error: *** STEP 41.0 ON node1 CANCELLED AT 2026-12-05T10:00:00 ***\n"
    )
    findings = output_findings(job_dir, completed=False)
    lost = [f for f in findings if "node failure" in f.what]
    cancelled = [f for f in findings if "cancelled" in f.what]
    assert lost and lost[0].severity == "error" and "requeue" in lost[0].fix
    assert cancelled and cancelled[0].severity == "info" and "consequence" in cancelled[0].fix


def test_steps_of_a_life_slurm_ended_are_consequences_not_errors(tmp_path):
    """sacct -D as Slurm 22.05 wrote it for a job that lost node2, was requeued and completed: the first life's
    srun step FAILED because the node went away; that is the node failure's consequence, not an error."""
    rows = [
        ("41", "t", "NODE_FAIL", "0:0", "", "", "00:00:20", "node[1-2]"),
        ("41.batch", "batch", "CANCELLED", "0:15", "", "", "00:00:20", "node1"),
        ("41.0", "python", "FAILED", "1:0", "80096K", "", "00:00:19", "node[1-2]"),
        ("41", "t", "COMPLETED", "0:0", "", "", "00:00:30", "node[1-2]"),
        ("41.batch", "batch", "COMPLETED", "0:0", "", "", "00:00:30", "node1"),
        ("41.0", "python", "COMPLETED", "0:0", "", "", "00:00:29", "node[1-2]"),
    ]
    findings = sacct_findings(job(tmp_path), Accounting(*rows), completed=True)
    assert [f.severity for f in findings] == ["info"] * 3, findings
    assert "a consequence of the node failure" in findings[2].fix
    # a node lost in the job's only life: the job's end is the error, its steps follow from it
    findings = sacct_findings(job(tmp_path), Accounting(*rows[:3]))
    assert [f.severity for f in findings] == ["error", "info", "info"], findings
    assert "lost a node" in findings[0].what
