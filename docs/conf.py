"""Sphinx configuration: the Markdown guides (MyST) and the API reference (autodoc).

Build with ``make docs`` or ``python -m sphinx -W --keep-going -b html docs build/docs``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ctrader_twisted  # noqa: E402 - after the path is set

project = "ctrader-twisted"
author = "ctrader-twisted developers"
copyright = "ctrader-twisted developers"
release = version = ctrader_twisted.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "build"]

# Markdown: "#anchor" links to headings (recorder.md#when-it-cannot-start) resolve.
myst_heading_anchors = 3
# The HTML comments that mark code blocks for tests/test_docs_examples.py stay comments.

# The API reference: signatures from the type hints, members in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = False
autoclass_content = "both"
# Unresolved references inside docstrings are not errors (they name Twisted and protobuf
# types, and no inventory is fetched: the build stays offline); broken markup is.
nitpicky = False

html_theme = "alabaster"
html_title = f"ctrader-twisted {release}"
html_static_path: list[str] = []


def _message_index(app: object) -> None:
    """Register ``.. message-index::``: the generated message classes and enums, by name."""
    from docutils import nodes
    from google.protobuf.message import Message
    from sphinx.util.docutils import SphinxDirective

    from ctrader_twisted import messages

    class MessageIndex(SphinxDirective):
        def run(self) -> list[nodes.Node]:
            names = sorted(name for name in messages.__all__ if name.startswith("Proto"))
            classes = [
                name
                for name in names
                if isinstance(getattr(messages, name), type)
                and issubclass(getattr(messages, name), Message)
            ]
            enums = [name for name in names if name not in classes]
            result: list[nodes.Node] = []
            for title, group in (
                (f"{len(classes)} messages", classes),
                (f"{len(enums)} enums", enums),
            ):
                paragraph = nodes.paragraph()
                paragraph += nodes.strong(text=f"{title}: ")
                for index, name in enumerate(group):
                    if index:
                        paragraph += nodes.Text(", ")
                    paragraph += nodes.literal(text=name)
                result.append(paragraph)
            return result

    app.add_directive("message-index", MessageIndex)  # type: ignore[attr-defined]


def setup(app: object) -> dict[str, bool]:
    _message_index(app)
    return {"parallel_read_safe": True}
