"""hpcflare: a federated-learning runtime built for HPC clusters."""

__version__ = "0.1.0"
