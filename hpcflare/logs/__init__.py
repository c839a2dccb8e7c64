"""Per-rank logs (JSON lines + a concise human log) and the tools that read them."""

from hpcflare.logs.rank_logger import RankLogger

__all__ = ["RankLogger"]
