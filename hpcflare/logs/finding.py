"""One thing `hpcflare logs diagnose` found: how bad, what happened, and what to do about it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Finding:
    severity: str  # error | warning | info
    what: str
    fix: str = ""

    def render(self) -> str:
        return f"[{self.severity.upper():7}] {self.what}" + (
            f"\n          fix: {self.fix}" if self.fix else ""
        )
