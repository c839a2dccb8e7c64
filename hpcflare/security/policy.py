"""A site's own policy, from its startup kit: which training scripts it agrees to run.

``kit.yaml`` ``policy``: ``allowed_scripts`` (name + sha256, written by ``hpcflare provision`` from the
project file) and ``allow_any_script``. With a non-empty list only those exact files run; with an empty list
``allow_any_script: false`` refuses every script (a site that only serves evaluation, say).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hpcflare.errors import PolicyRefusedError
from hpcflare.security.tls import StartupKit


def script_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_script(kit: StartupKit | None, script: Path) -> None:
    """Raise PolicyRefusedError unless the site's policy allows running ``script``."""
    if kit is None:
        return
    allowed = [e for e in kit.policy.get("allowed_scripts") or [] if isinstance(e, dict)]
    if not allowed and kit.policy.get("allow_any_script", True):
        return
    digest = script_digest(script)
    if any(e.get("sha256") == digest for e in allowed):
        return
    listed = ", ".join(f"{e.get('name')} ({str(e.get('sha256'))[:12]})" for e in allowed) or "none"
    raise PolicyRefusedError(
        f"site policy in {kit.path / 'kit.yaml'} refuses to run {script.name} (sha256 "
        f"{digest[:12]}): allowed scripts: {listed}. Ask the site's admin to add this exact "
        "file to allowed_scripts (hpcflare provision hashes it) or to set allow_any_script"
    )
