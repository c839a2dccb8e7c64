"""The files a training script needs beside it: the local modules it imports, as ``python client.py`` finds
them (NVFlare ships a job's custom code with its app; an unchanged job.py names none of it)."""

from __future__ import annotations

import ast
from pathlib import Path

MAX_FILES = 64
"""At most this many local modules are shipped (followed through their own imports)."""


def _imported(path: Path) -> set[str]:
    try:
        tree = ast.parse(path.read_text(errors="replace"))
    except (OSError, SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def local_imports(script: str | Path) -> list[Path]:
    """Modules (``name.py``) and packages (``name/``) beside ``script`` that it imports, directly or through
    one another; never the script itself."""
    script = Path(script).resolve()
    folder, queue = script.parent, [script]
    found: dict[Path, None] = {}
    while queue and len(found) < MAX_FILES:
        for name in sorted(_imported(queue.pop())):
            for candidate in (folder / f"{name}.py", folder / name):
                if candidate in found or candidate == script:
                    continue
                if candidate.is_file() or (candidate.is_dir() and (candidate / "__init__.py").is_file()):
                    found[candidate] = None
                    if candidate.is_file():
                        queue.append(candidate)
    return list(found)
