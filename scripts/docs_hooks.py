"""MkDocs hook: render each stage's config reference from the same field metadata `reins <stage> --help` prints.

A page holds `<!-- config-reference: NAME -->` (one stage) or `<!-- config-reference: all -->` (every stage in
reins.entry.STAGES, so a stage added there appears without editing the docs), `<!-- stage-table -->` (the stage
names and one-line descriptions `reins --help` prints), `<!-- pgcore-functions -->` (`python -m pgcore`'s
listing) or `<!-- portable-example -->` (the numpy policy loop `reins export` puts in a policy's README).
Nothing here restates a key, a description or a docstring.
"""

from __future__ import annotations

import importlib
import re

MARKER = re.compile(r"<!-- config-reference: ([\w-]+) -->")


def _rows(name: str) -> str:
    from reins.config import config_help
    from reins.entry import STAGES

    module = importlib.import_module(STAGES[name][0])
    cls = getattr(module, "Config", None)
    if cls is None:  # a stage with plain command-line arguments (export)
        return f"`reins {name}` takes command-line arguments, not a config; `reins {name} --help` lists them.\n"
    lines = config_help(cls)
    out = ["| key | type | default | help |", "|---|---|---|---|"]
    for head, help_line in zip(lines[::2], lines[1::2]):
        key, rest = head.strip().split(": ", 1)
        typ, default = rest.split(" = ", 1)
        cells = [f"`{key}`", f"`{typ}`", f"`{default}`", help_line.strip()]
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"


def render(name: str) -> str:
    from reins.entry import STAGES

    if name != "all":
        return _rows(name)
    parts = []
    for stage, (_, desc) in STAGES.items():
        parts.append(f"## {stage}\n\n{desc}.\n\n{_rows(stage)}")
    return "\n".join(parts)


def stage_table() -> str:
    from reins.entry import STAGES

    rows = ["| stage | what |", "|---|---|"]
    rows += [f"| `reins {name}` | {desc} |" for name, (_, desc) in STAGES.items()]
    return "\n".join(rows) + "\n"


def pgcore_functions() -> str:
    from pgcore.__main__ import listing

    return "```\n" + listing() + "\n```\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - mkdocs hook signature
    markdown = markdown.replace("<!-- stage-table -->", stage_table())
    markdown = markdown.replace("<!-- pgcore-functions -->", pgcore_functions())
    if "<!-- portable-example -->" in markdown:
        from rl.portable import EXAMPLE

        markdown = markdown.replace("<!-- portable-example -->", "```python\n" + EXAMPLE + "```\n")
    return MARKER.sub(lambda m: render(m.group(1)), markdown)
