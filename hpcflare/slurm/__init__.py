"""Slurm provider: render sbatch scripts, submit and track jobs (sbatch/squeue/sacct/scancel)."""

from hpcflare.slurm.commands import SlurmCommands, SlurmError, SlurmNotFoundError, SubmissionRejectedError
from hpcflare.slurm.sbatch import SbatchSpec, render_sbatch

__all__ = [
    "SbatchSpec",
    "SlurmCommands",
    "SlurmError",
    "SlurmNotFoundError",
    "SubmissionRejectedError",
    "render_sbatch",
]
