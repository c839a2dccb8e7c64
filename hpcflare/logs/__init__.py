"""Post-mortem tools that read a job's logs: ``hpcflare logs diagnose`` and ``hpcflare logs timeline``.

The rank logger that writes those logs is :mod:`hpcflare.rank_logger` (every rank imports it; these tools
import the job model and Slurm's accounting, which no rank needs)."""
