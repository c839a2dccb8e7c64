"""The ranks themselves: server orchestration, client agent, and the per-rank launcher."""
