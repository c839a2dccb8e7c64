"""The base of hpcflare's state and kind enums: members compare equal to their wire strings and print as them,
so they go into JSON, msgpack and log lines unchanged."""

from __future__ import annotations

import enum


class NamedEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)
