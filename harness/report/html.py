"""The report as one self-contained HTML file: inline CSS, figures as base64 PNG data
URIs, no script, no external resource of any kind (it opens with no network)."""
from __future__ import annotations

import base64
from html import escape
import re

from harness.report.document import Bullets, Document, Figure, Heading, Paragraph, Table, Verdicts
from harness.verdicts import Verdict, shown_ratio, verdict_lines

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 0; color: #1d1d1f;
       background: #fafafa; font-size: 14px; line-height: 1.45; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e3e3e3; }
h3 { font-size: 16px; margin: 22px 0 8px; }
h4 { font-size: 14px; margin: 18px 0 6px; }
nav { background: #f3f5f8; padding: 8px 14px; border-radius: 6px; margin: 12px 0 18px; font-size: 13px; }
nav a { color: #24528c; text-decoration: none; margin-right: 14px; white-space: nowrap; }
.scroll { overflow-x: auto; margin: 8px 0 4px; }
table { border-collapse: collapse; font-size: 12.5px; min-width: 40%; }
th, td { border: 1px solid #dcdcdc; padding: 4px 8px; vertical-align: top; }
th { background: #eef1f5; text-align: left; position: sticky; top: 0; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafbfc; }
tr.invalid td { background: #fdecec; color: #8b1b1b; }
tr.estimate td { color: #6b6b6b; font-style: italic; }
tr.suspect td { background: #fff4e0; }
.bad { color: #b3261e; font-weight: 600; }
.est { color: #6b6b6b; font-style: italic; }
.caption { color: #555; font-size: 12px; margin: 2px 0 14px; }
figure { margin: 14px 0 22px; }
figure img { max-width: 100%; border: 1px solid #e5e5e5; }
figcaption { color: #444; font-size: 12.5px; margin-top: 4px; }
code { background: #f1f1f1; padding: 0 3px; border-radius: 3px; font-size: 12.5px; }
.verdict { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 700; font-size: 12px; }
.SUPPORTED { background: #dff3e4; color: #17692f; }
.REFUTED { background: #fbe0e0; color: #a11c1c; }
.INCONCLUSIVE { background: #fff1cc; color: #7a5600; }
.IMPLAUSIBLE { background: #e8defa; color: #4b1f8c; }
ul { margin: 6px 0 10px; padding-left: 22px; }
li { margin: 2px 0; }
"""

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")
_EM = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_FLAGS = re.compile(r"\b(INVALID|FAILED|SUSPECT|ESTIMATE|estimate)\b")
_VERDICT = re.compile(r"\b(SUPPORTED|REFUTED|INCONCLUSIVE|IMPLAUSIBLE)\b")
# the words of the two patterns above, for a quick "does it occur at all" test before a regex runs
_VERDICT_WORDS = _VERDICT.pattern[3:-3].split("|")
_FLAG_WORDS = _FLAGS.pattern[3:-3].split("|")


def inline(text: str, flags: bool = False) -> str:
    """Escape, then the little Markdown our text uses: **bold**, `code`, *emphasis*."""
    s = escape(str(text), quote=False)
    # each pattern only where its marker occurs: a report's tables hold ~10^5 cells (issue 21)
    if "`" in s:
        s = _CODE.sub(r"<code>\1</code>", s)
    if "*" in s:
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        s = _EM.sub(r"<em>\1</em>", s)
    if any(w in s for w in _VERDICT_WORDS):
        s = _VERDICT.sub(r'<span class="verdict \1">\1</span>', s)
    if flags and any(w in s for w in _FLAG_WORDS):
        s = _FLAGS.sub(lambda m: f'<span class="{"est" if m.group(1).lower() == "estimate" else "bad"}">'
                       f'{m.group(1)}</span>', s)
    return s


def _slug(text: str, used: set) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "s"
    s, i = base, 2
    while s in used:
        s, i = f"{base}-{i}", i + 1
    used.add(s)
    return s


def table_html(t: Table) -> str:
    right = set(t.right)
    head = "".join(f'<th class="r">{escape(c)}</th>' if c in right else f"<th>{escape(c)}</th>" for c in t.columns)
    body = []
    for row, cls in zip(t.rows, t.row_classes):
        tds = "".join(f'<td class="r">{inline(v, True)}</td>' if c in right else f"<td>{inline(v, True)}</td>"
                      for c, v in zip(t.columns, row))
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    out = f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    if t.caption:
        out += f'<div class="caption">{inline(t.caption)}</div>'
    return out


def _bullets(lines: list[str]) -> str:
    """'- x' / '  - y' Markdown bullets -> nested <ul>."""
    out, depth = [], 0
    for line in lines:
        m = re.match(r"^(\s*)- (.*)$", line)
        if not m:
            continue
        d = len(m.group(1)) // 2 + 1
        while depth < d:
            out.append("<ul>")
            depth += 1
        while depth > d:
            out.append("</ul>")
            depth -= 1
        out.append(f"<li>{inline(m.group(2), True)}</li>")
    out += ["</ul>"] * depth
    return "".join(out)


def verdicts_html(verdicts: list[Verdict], used: set) -> str:
    t = Table(["#", "claim", "metric", "factor", "measured ratio [95% CI]", "verdict", "required"],
              right=("#", "factor", "measured ratio [95% CI]"))
    for i, v in enumerate(verdicts, 1):
        t.add([i, v.claim.name, v.claim.metric, f">= {v.claim.at_least:g}x",
               shown_ratio(v), v.verdict, "yes" if v.claim.required else "no"])
    out = [table_html(t)]
    for i, v in enumerate(verdicts, 1):
        title = f"{i}. {v.claim.name}"
        out.append(f'<h3 id="{_slug(title, used)}">{inline(title)} <span class="verdict {v.verdict}">{v.verdict}</span></h3>')
        out.append(_bullets(verdict_lines(v, html_escape=False)))  # inline() escapes each line once
    return "".join(out)


def to_html(doc: Document) -> str:
    used: set = set()
    toc, body = [], []
    for b in doc.blocks:
        if isinstance(b, Heading):
            level = min(6, b.level)
            sid = _slug(b.text, used)
            if level == 2:
                toc.append(f'<a href="#{sid}">{escape(b.text)}</a>')
            body.append(f'<h{level} id="{sid}">{inline(b.text)}</h{level}>')
        elif isinstance(b, Paragraph):
            body.append(f"<p>{inline(b.text, True)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{inline(x, True)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            body.append(table_html(b))
        elif isinstance(b, Figure):
            data = base64.b64encode(doc.images[b.key]).decode("ascii")
            body.append(f'<figure><img alt="{escape(b.caption)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{inline(b.caption, True)}</figcaption></figure>")
        elif isinstance(b, Verdicts):
            body.append(verdicts_html(b.verdicts, used))
    nav = f"<nav>{''.join(toc)}</nav>" if toc else ""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(doc.title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>{escape(doc.title)}</h1>{nav}{''.join(body)}</main></body></html>\n")
