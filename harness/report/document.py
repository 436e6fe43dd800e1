"""The report as a document (headings, paragraphs, tables, figures, verdicts) and its
Markdown rendering. harness.report.html renders the same document as one
self-contained HTML file."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.verdicts import Verdict, verdicts_markdown


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    row_classes: list[str | None] = field(default_factory=list)  # invalid | estimate | suspect | None
    right: tuple[str, ...] = ()  # right-aligned (numeric) columns
    caption: str = ""

    def add(self, row: list, cls: str | None = None) -> None:
        self.rows.append(["-" if v is None else str(v) for v in row])
        self.row_classes.append(cls)


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Figure:
    key: str  # the PNG's name in Document.images (plots/<key>.png beside report.md)
    caption: str


@dataclass
class Verdicts:
    verdicts: list[Verdict]


Block = Heading | Paragraph | Bullets | Table | Figure | Verdicts


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    cells: list = field(default_factory=list)  # the ResultCells it was built from (report --print reuses them)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Heading(level, text))

    def p(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def ul(self, items: list[str]) -> None:
        if items:
            self.blocks.append(Bullets(list(items)))

    def table(self, t: Table) -> None:
        self.blocks.append(t)

    def img(self, key: str, png: bytes, caption: str) -> None:
        self.images[key] = png
        self.blocks.append(Figure(key, caption))

    def verdicts(self, verdicts: list[Verdict]) -> None:
        self.blocks.append(Verdicts(verdicts))


# --- Markdown ------------------------------------------------------------------------------

def md_escape(s: object) -> str:
    """Text from a run (suite names, descriptions, labels, model names, error messages) made
    inert in Markdown: a Markdown viewer passes raw HTML through, so `<script>`, `<img
    onerror=...>` in a suite name would run there. Escaping `&`, `<` and `>` as entities
    renders the same characters and starts no tag. Our own formatting (`**`, `_`, backticks,
    tables) is Markdown, not HTML, so it is untouched; inside a code span an entity shows
    literally, which is inert too."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _md_cell(s: str) -> str:
    return md_escape(s).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    if not t.rows:
        return "(no rows)"
    lines = ["| " + " | ".join(_md_cell(c) for c in t.columns) + " |",
             "|" + "|".join("---:" if c in t.right else "---" for c in t.columns) + "|"]
    for row, cls in zip(t.rows, t.row_classes):
        cells = [_md_cell(v) for v in row]
        if cls == "invalid":
            cells = [f"**{v}**" if v.startswith(("INVALID", "FAILED")) else v for v in cells]
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if t.caption:
        out += f"\n\n_{md_escape(t.caption)}_"
    return out


def to_markdown(doc: Document, image_dir: str = "plots") -> str:
    esc = md_escape
    out = [f"# {esc(doc.title)}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * b.level} {esc(b.text)}", ""]
        elif isinstance(b, Paragraph):
            out += [esc(b.text), ""]
        elif isinstance(b, Bullets):
            out += [f"- {esc(x)}" for x in b.items] + [""]
        elif isinstance(b, Table):
            out += [table_markdown(b), ""]
        elif isinstance(b, Figure):
            out += [f"![{esc(b.caption)}]({image_dir}/{b.key}.png)", "", f"_{esc(b.caption)}_", ""]
        elif isinstance(b, Verdicts):  # under the report's own "Claim verdicts" heading
            # built in harness.verdicts from claim names and reasons: escaped here, once, line by line
            out += [esc(x) for x in verdicts_markdown(b.verdicts, heading="##", html_escape=False).splitlines()[2:]] + [""]
    return "\n".join(out).rstrip() + "\n"
