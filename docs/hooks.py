"""MkDocs hook: the settings and exit-code reference pages are generated from the code, so they cannot drift."""

from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if "<!-- settings-table -->" in markdown:
        from hpcflare.settings import Settings

        docs, defaults = Settings.field_docs(), Settings().as_dict()
        rows = ["| setting | default | what it is |", "|---|---|---|"]
        rows += [f"| `{k}` | `{v}` | {' '.join(docs.get(k, '').split())} |" for k, v in defaults.items()]
        markdown = markdown.replace("<!-- settings-table -->", "\n".join(rows))
    if "<!-- exit-code-table -->" in markdown:
        from hpcflare.exitcodes import HELP, ExitCode

        rows = ["| code | name | what to do |", "|---:|---|---|"]
        rows += [f"| {int(c)} | `{c.name}` | {HELP[c]} |" for c in ExitCode]
        markdown = markdown.replace("<!-- exit-code-table -->", "\n".join(rows))
    return markdown
