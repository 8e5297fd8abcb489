"""The report as a list of sections of blocks, rendered as one self-contained HTML file or Markdown.

HTML embeds every figure as a base64 PNG data URI and needs no script, stylesheet or network;
Markdown refers to the figure files next to it.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from noisypref.reports.figures import FigureFiles
from noisypref.reports.tables import Table


@dataclass
class Text:
    text: str


@dataclass
class Note:
    """A statement that something was skipped or is incomplete, and why."""

    text: str


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class FigureBlock:
    files: FigureFiles
    caption: str


@dataclass
class TableBlock:
    table: Table


Block = Text | Note | Code | FigureBlock | TableBlock


@dataclass
class ReportSection:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


@dataclass
class Document:
    title: str
    sections: list[ReportSection]


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #111; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; vertical-align: top; }
thead th { border-bottom: 2px solid #333; } .num { text-align: right; white-space: nowrap; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #333; }
pre { background: #f5f5f5; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { background: #fff6e0; border-left: 4px solid #E69F00; padding: 0.4em 0.8em; }
ul.notes { font-size: 0.8em; color: #333; margin-top: 0; }
nav ul { columns: 2; font-size: 0.9em; }
"""


def _anchor(index: int) -> str:
    return f"section-{index}"


def render_html(document: Document) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(document.title)}</title>",
        f"<style>{STYLE}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(document.title)}</h1>",
        "<nav><ul>",
        *(
            f'<li><a href="#{_anchor(i)}">{html.escape(section.title)}</a></li>'
            for i, section in enumerate(document.sections)
            if section.level == 2
        ),
        "</ul></nav>",
    ]
    for index, section in enumerate(document.sections):
        level = section.level
        parts.append(f'<h{level} id="{_anchor(index)}">{html.escape(section.title)}</h{level}>')
        parts.extend(_html_block(block) for block in section.blocks)
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Note):
        return f'<p class="note">{html.escape(block.text)}</p>'
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, FigureBlock):
        data = base64.b64encode(block.files.png.read_bytes()).decode("ascii")
        caption = html.escape(block.caption)
        return (
            f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    if isinstance(block, TableBlock):
        return block.table.to_html()
    raise TypeError(f"unknown block {block!r}")


def render_markdown(document: Document, report_dir: Path) -> str:
    parts = [f"# {document.title}", ""]
    for section in document.sections:
        parts += [f"{'#' * section.level} {section.title}", ""]
        for block in section.blocks:
            parts += [_markdown_block(block, report_dir), ""]
    return "\n".join(parts).rstrip() + "\n"


def _markdown_block(block: Block, report_dir: Path) -> str:
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Note):
        return f"> **Note.** {block.text}"
    if isinstance(block, Code):
        return f"```{block.language}\n{block.text.rstrip()}\n```"
    if isinstance(block, FigureBlock):
        png = block.files.png.relative_to(report_dir).as_posix()
        svg = block.files.svg.relative_to(report_dir).as_posix()
        return f"![{block.caption}]({png})\n\n*{block.caption}* ([SVG]({svg}))"
    if isinstance(block, TableBlock):
        return block.table.to_markdown().rstrip()
    raise TypeError(f"unknown block {block!r}")
