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
    if "<!-- cli-reference -->" in markdown:
        markdown = markdown.replace("<!-- cli-reference -->", cli_reference())
    return markdown


def cli_reference() -> str:
    """Every `hpcflare` command's --help, from the parser itself."""
    import argparse
    import contextlib
    import io

    from hpcflare import cli

    captured: dict[str, argparse.ArgumentParser] = {}
    original = argparse._SubParsersAction.add_parser

    def keep(self: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub = original(self, name, **kwargs)
        captured[sub.prog.split(" ", 1)[-1]] = sub  # "job run" apart from "run"
        return sub

    argparse._SubParsersAction.add_parser = keep  # type: ignore[method-assign]
    try:
        with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):
            cli.main(["--help"])
    finally:
        argparse._SubParsersAction.add_parser = original  # type: ignore[method-assign]
    sections = []
    for name, sub in captured.items():
        sub.prog = f"hpcflare {name}"
        sub.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=110)
        sections.append(f"## hpcflare {name}\n\n```text\n{sub.format_help().rstrip()}\n```\n")
    return "\n".join(sections)
