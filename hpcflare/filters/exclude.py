"""Exclude variables: named tensors (fnmatch ``names``, or a ``regex`` searched in each name, NVFlare's
exclude_vars) never leave the site; the server keeps their global values (aggregation is per tensor)."""

from __future__ import annotations

import fnmatch
import re

from hpcflare.errors import ConfigError
from hpcflare.filters.api import Filter, Outgoing


class ExcludeVars(Filter):
    kind = "exclude"

    def __init__(self, names: list[str] | None = None, regex: str | None = None) -> None:
        if (
            names is None
            and regex is None
            or names is not None
            and (not names or not all(isinstance(n, str) for n in names))
        ):
            raise ConfigError("exclude filter needs 'names' (a list of tensor names or patterns) or 'regex'")
        try:
            self.regex = re.compile(regex) if regex is not None else None
        except (re.error, TypeError) as exc:
            raise ConfigError(f"exclude filter: bad regex {regex!r}: {exc}") from None
        self.names = list(names or [])

    def _excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.names) or bool(
            self.regex and self.regex.search(name)
        )

    def apply(self, out: Outgoing) -> Outgoing:
        keep = {k: v for k, v in out.params.items() if not self._excluded(k)}
        if not keep:
            raise ConfigError(f"exclude filter {self.names} removed every tensor of the update")
        out.params = keep
        return out
