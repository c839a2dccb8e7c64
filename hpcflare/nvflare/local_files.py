"""The files a training script needs beside it: the local modules it imports, as ``python client.py`` finds
them (NVFlare ships a job's custom code with its app; an unchanged job.py names none of it)."""

from __future__ import annotations

import ast
import inspect
import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from hpcflare.errors import ConfigError

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


def object_spec(obj: Any, what: str) -> tuple[Path | None, str, str, dict[str, Any]]:
    """(module file to ship or None, module name, class name, constructor arguments) of an object built in
    job.py that the sites rebuild (a statistics generator, a data loader): its arguments are read back from the
    attributes of the same names, as NVFlare's job configuration does. Classes hpcflare provides ship nothing."""
    cls = type(obj)
    source: Path | None = None
    module = cls.__module__
    if not module.startswith("hpcflare."):
        try:
            source = Path(inspect.getsourcefile(cls) or "")
        except TypeError:
            source = Path()
        if not source.is_file():
            raise ConfigError(f"{what} {cls.__name__}: its class must be defined in a file beside job.py")
        module = source.stem
    args: dict[str, Any] = {}
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            args[name] = getattr(obj, name)
        elif parameter.default is parameter.empty:
            raise ConfigError(
                f"{what} {cls.__name__}: constructor argument {name!r} is not kept as self.{name}, so the "
                "sites cannot rebuild it (NVFlare has the same rule)"
            )
    try:
        json.dumps(args)
    except TypeError as exc:
        raise ConfigError(f"{what} {cls.__name__}: its arguments must be JSON values ({exc})") from None
    return source, module, cls.__name__, args


def shipped(source: Path | None) -> list[Path]:
    """A rebuilt object's module file and the local modules it imports (nothing for hpcflare's own)."""
    return [] if source is None else [source, *local_imports(source)]


def scratch_folder(owner: object, prefix: str) -> Path:
    """A temporary folder for the files a recipe generates (a site script, its settings), removed when the
    recipe object is."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    weakref.finalize(owner, shutil.rmtree, folder, True)
    return folder
