"""The report's two renderings of one list of sections: ``index.html`` (offline, one page) and ``tables.md``.

Each :class:`Section` carries its HTML body and its Markdown lines; :func:`write_page` puts them in the same
order in both files, under the same titles, after the sweep's name, store and what was run.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from .collect import SweepRuns


@dataclass(frozen=True)
class Section:
    """One section of the report: an anchor, a title, its HTML body and its Markdown lines (no heading)."""

    id: str
    title: str
    html: str
    markdown: list[str]


def write_page(out: Path, runs: SweepRuns, finished: int, statement: list[str], sections: list[Section]) -> None:
    """Write ``index.html`` and ``tables.md`` in ``out``: the sweep, what was run, a table of contents (HTML),
    then ``sections`` in order."""
    markdown = [f"# Sweep {runs.name}", "", f"MLflow: {runs.tracking_uri}, experiment {runs.experiment}", "",
                "## What was run", "", *[f"- {line}" for line in statement], ""]
    for section in sections:
        markdown += [f"## {section.title}", "", *section.markdown]
    (out / "tables.md").write_text("\n".join(markdown))
    (out / "index.html").write_text(_PAGE.format(
        name=html.escape(runs.name), uri=html.escape(runs.tracking_uri), experiment=html.escape(runs.experiment),
        n=finished, scale="".join(f"<li>{html.escape(line)}</li>" for line in statement),
        toc="".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in sections),
        sections="\n".join(f'<h2 id="{s.id}">{html.escape(s.title)}</h2>{s.html}' for s in sections)))


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>robustsweep report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em 2em; max-width: 1360px; line-height: 1.4; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
nav ol {{ padding-left: 2.2em; }}
nav li {{ break-inside: avoid; }}
@media (min-width: 44em) {{ nav ol {{ columns: 2; column-gap: 3em; }} }}
@media (max-width: 30em) {{ body {{ margin: 1em; }} }}
div.scroll {{ overflow-x: auto; }}
code {{ overflow-wrap: anywhere; }}
table.results {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.8em; }}
table.results th, table.results td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left;
  vertical-align: top; }}
table.results th {{ background: #f2f2f2; }}
table.results td.num {{ text-align: right; }}
span.sd {{ color: #666; font-size: 0.9em; white-space: nowrap; }}
span.note {{ color: #555; font-size: 0.9em; }}
table.claims td.statistic {{ font-size: 0.9em; min-width: 30em; }}
table.claims tr.supported td.verdict {{ background: #e3f4e1; }}
table.claims tr.contradicted td.verdict {{ background: #f9e0de; }}
table.claims tr.inconclusive td.verdict {{ background: #f4f1de; }}
table.claims tr.not-run td.verdict {{ background: #eee; }}
figure {{ margin: 1em 0 2em; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #444; font-size: 0.9em; max-width: 70em; }}
</style></head><body>
<h1>Sweep {name}</h1>
<p>{n} finished runs from MLflow <code>{uri}</code>, experiment <code>{experiment}</code>.
Cells are mean ± sample standard deviation over seeds (n = number of runs); attack ratio = attack accuracy /
clean accuracy on the attacked examples.</p>
<h2 id="scale-statement">What was run</h2><ul>{scale}</ul>
<nav><ol>{toc}</ol></nav>
{sections}
</body></html>
"""
