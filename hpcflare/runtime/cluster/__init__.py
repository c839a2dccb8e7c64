"""Cluster plumbing: ranks, rendezvous, GPUs, memory, staging."""
