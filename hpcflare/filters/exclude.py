"""Exclude variables: named tensors (fnmatch patterns) never leave the site; the server keeps their
global values (aggregation is per tensor)."""

from __future__ import annotations

import fnmatch

from hpcflare.errors import ConfigError
from hpcflare.filters.api import Filter, Outgoing


class ExcludeVars(Filter):
    kind = "exclude"

    def __init__(self, names: list[str]) -> None:
        if not names or not all(isinstance(n, str) for n in names):
            raise ConfigError("exclude filter needs 'names': a list of tensor names or patterns")
        self.names = list(names)

    def apply(self, out: Outgoing) -> Outgoing:
        keep = {k: v for k, v in out.params.items() if not any(fnmatch.fnmatchcase(k, p) for p in self.names)}
        if not keep:
            raise ConfigError(f"exclude filter {self.names} removed every tensor of the update")
        out.params = keep
        return out
