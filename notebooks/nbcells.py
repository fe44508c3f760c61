"""The two cell builders every notebook generator uses (the generators run as `python notebooks/make_X.py` from
the repository root, so this module is importable beside them)."""

from textwrap import dedent

import nbformat as nbf


def md(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_markdown_cell(dedent(text).strip())


def code(text: str) -> nbf.NotebookNode:
    return nbf.v4.new_code_cell(dedent(text).strip())
