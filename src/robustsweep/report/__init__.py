"""`robustsweep report`: a sweep's MLflow runs as the study's tables and figures, in one offline HTML page.

:func:`make_report` writes into the output folder:

* ``runs.csv`` — the tidy table, one row per finished run (config and metric columns);
* ``tables.md`` — per dataset and regime: configuration rows, mean ± std (n) over seeds;
* ``correlation.csv`` — Spearman rho, p-value and n between the top eigenvalue and each attack ratio;
* ``*.png`` — each measurement against batch size, learning curves, the correlation scatter;
* ``index.html`` — all of the above on one page that works offline;
* ``problems.csv`` — failed, diverged, collapsed and unfinished trials and runs missing metrics, with the reason;
* ``cost.csv`` — seconds per trial in each phase (training, test passes, attacks, Hessian), per variant;
* ``conclusions.csv`` — the study's claims (:mod:`.conclusions`), each with this sweep's statistic and a verdict.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..metrics import CHANCE_ACCURACY, COLLAPSE_MARGIN, measurement_keys
from .collect import SweepRuns, collect, for_analysis
from .conclusions import conclusions, findings_table
from .study_figures import STUDY_FIGURES, study_figure
from .correlation import correlation_table
from .figures import batch_size_figure, correlation_figure, learning_curves_figure, metric_label
from .tables import ROW_KEYS, aggregate, cost_table, display_table, to_html, to_markdown

__all__ = ["make_report", "Report", "collect"]


@dataclass
class Report:
    out: Path
    runs: SweepRuns
    figures: list[Path] = field(default_factory=list)
    correlation: pd.DataFrame | None = None
    conclusions: pd.DataFrame | None = None

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def attack_settings(table: pd.DataFrame) -> str:
    """One paragraph: how the attacks were run, and why PGD below FGSM is expected (unlike the study's Table 2)."""
    if table.empty or "pgd_steps" not in table:
        return "No finished runs."
    done = table[~table["diverged"]]
    steps = sorted({int(s) for s in done["pgd_steps"].dropna()})
    sizes = sorted({"2.5 eps / steps (Madry et al.)" if pd.isna(v) else f"{v:g}" for v in done["pgd_step_size"]})
    subsets = sorted({"the whole test set" if not v else f"the first {int(v)} test images"
                      for v in done["attack_subset"].fillna(0)})
    return (f"FGSM: one signed-gradient step of size eps. PGD: {', '.join(map(str, steps))} steps of "
            f"{', '.join(sizes)}, from a uniform random start in the l-inf ball, projected onto it and onto "
            f"[0, 1] after each step (torchattacks). Attacked: {', '.join(subsets)}; ratio = attack accuracy / "
            "clean accuracy on those images. A multi-step PGD with random start is normally at least as strong as FGSM, "
            "so PGD accuracy is expected at or below FGSM's. The study's Table 2 reports PGD accuracy above FGSM in "
            "every row, so its PGD was weaker: a gap between its PGD numbers and ours is a difference of "
            "attack, not of training.")


def make_report(sweep: str, out: str | Path, *, tracking_uri: str | None = None,
                storage_path: str | None = None) -> Report:
    runs = collect(sweep, tracking_uri=tracking_uri, storage_path=storage_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs.table.to_csv(out / "runs.csv", index=False)
    df = for_analysis(runs.table)  # collapsed runs' ratios and eigenvalues stay out of every statistic
    report = Report(out, runs)
    problems = pd.DataFrame(runs.problems, columns=["trial_id", "kind", "reason", "run_id"])
    problems.to_csv(out / "problems.csv", index=False)

    markdown = [f"# Sweep {runs.name}", "", f"MLflow: {runs.tracking_uri}, experiment {runs.experiment}", ""]
    sections = []
    all_ratios: list[str] = []
    for dataset in sorted(df["dataset"].dropna().unique()) if not df.empty else []:
        eps = runs.eps.get(dataset, [])
        metrics = measurement_keys(eps)
        all_ratios += [m for m in metrics if "_ratio_" in m and m not in all_ratios]
        part = df[df["dataset"] == dataset]
        markdown += [f"## {dataset}", ""]
        blocks = []
        for group in dict.fromkeys(part["group"]):
            agg = aggregate(part[part["group"] == group], ROW_KEYS, metrics)
            table = display_table(agg, ROW_KEYS, metrics)
            markdown += [f"### {group}", "", to_markdown(table), ""]
            blocks.append(f"<h3>{html.escape(group)}</h3>{to_html(table)}")
        images = []
        for metric in metrics:
            path = batch_size_figure(df, dataset, metric, out / f"{_slug(dataset)}_{_slug(metric)}_vs_batch.png")
            if path:
                images.append((path, f"{metric_label(metric)} against batch size (log2 axis): one panel per "
                                     "sweep group, one line per configuration, mean ± std over seeds"))
        curves = learning_curves_figure(df, runs.curves, dataset, out / f"{_slug(dataset)}_learning_curves.png")
        if curves:
            images.append((curves, "learning curves: training loss and test accuracy per epoch, one panel per "
                                   "sweep group"))
        report.figures += [p for p, _ in images]
        figs = "".join(f'<figure><img src="{p.name}" alt="{html.escape(a)}"><figcaption>{html.escape(a)}'
                       f"</figcaption></figure>" for p, a in images)
        sections.append((f"dataset-{_slug(dataset)}", f"{dataset}: tables and figures by sweep group",
                         f"<p>One table per sweep group: a row per configuration, each measurement as mean ± "
                         f"sample standard deviation over seeds (n runs).</p>{''.join(blocks)}"
                         f"<h3>Figures</h3>{figs}"))

    study_html = ""
    mnist_eps = runs.eps.get("mnist", [])
    for figure in STUDY_FIGURES if not df.empty and mnist_eps else ():
        path = study_figure(df, figure, mnist_eps, out / f"figure{figure.number}.png")
        if path:
            report.figures.append(path)
            caption = (f"Figure {figure.number}. {figure.title}: clean accuracy, FGSM and PGD accuracy relative to "
                       f"clean accuracy, and the top Hessian eigenvalue against batch size; one line per "
                       f"{' and '.join(k.replace('_', ' ') for k in figure.lines)}, mean ± std over seeds.")
            study_html += (f'<figure><img src="{path.name}" alt="Figure {figure.number}">'
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    if study_html:
        sections.insert(0, ("study-figures", "Figures 1-5, laid out as in the study (MNIST)", study_html))

    findings = findings_table(conclusions(df, mnist_eps))
    findings.to_csv(out / "conclusions.csv", index=False)
    report.conclusions = findings

    corr = correlation_table(df, all_ratios) if not df.empty else pd.DataFrame()
    report.correlation = corr
    corr.to_csv(out / "correlation.csv", index=False)
    scatter = correlation_figure(df, all_ratios, out / "curvature_vs_robustness.png") if not df.empty else None
    if scatter:
        report.figures.append(scatter)
    corr_display = corr.copy()
    for col in ("spearman rho", "p-value"):
        if col in corr_display:
            corr_display[col] = corr_display[col].map(lambda v: f"{v:.3g}")
    markdown += ["## Curvature and robustness (Spearman)", "", to_markdown(corr_display), ""]
    cost = cost_table(runs.table)
    cost.to_csv(out / "cost.csv", index=False)
    markdown += ["## Cost: seconds per trial in each phase (mean), and the sweep's total hours", "",
                 to_markdown(cost) if not cost.empty else "No timings logged.", ""]
    markdown += ["## Failed, diverged, collapsed and unfinished trials", "",
                 to_markdown(problems) if not problems.empty else "None.", ""]

    corr_html = to_html(corr_display) + (f'<figure><img src="{scatter.name}" alt="curvature against robustness">'
                                         "<figcaption>attack ratio against top Hessian eigenvalue"
                                         "</figcaption></figure>" if scatter else "")
    problems_html = to_html(problems) if not problems.empty else "<p>None.</p>"
    settings = attack_settings(runs.table)
    markdown[4:4] = ["## Conclusions", "", to_markdown(findings), "", "## Attack settings", "", settings, ""]
    (out / "tables.md").write_text("\n".join(markdown))
    toc = [("conclusions", "Conclusions"), ("attacks", "Attack settings"), *[(i, t) for i, t, _ in sections],
           ("curvature", "Curvature and robustness"), ("cost", "Cost"),
           ("problems", "Failed, diverged, collapsed and unfinished trials")]
    report.index.write_text(_PAGE.format(
        name=html.escape(runs.name), uri=html.escape(runs.tracking_uri), experiment=html.escape(runs.experiment),
        n=len(df), conclusions=to_html(findings), margin=COLLAPSE_MARGIN, chance=CHANCE_ACCURACY,
        attacks=html.escape(settings), problems=problems_html, correlation=corr_html,
        cost=to_html(cost) if not cost.empty else "<p>No timings logged.</p>",
        toc="".join(f'<li><a href="#{i}">{html.escape(t)}</a></li>' for i, t in toc),
        sections="".join(f'<h2 id="{i}">{html.escape(t)}</h2>{body}' for i, t, body in sections)))
    return report


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>robustsweep report: {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em 2em; max-width: 1360px; line-height: 1.4; }}
h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }}
nav ol {{ columns: 2; }}
div.scroll {{ overflow-x: auto; }}
table.results {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.8em; }}
table.results th, table.results td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: left;
  vertical-align: top; }}
table.results th {{ background: #f2f2f2; }}
table.results td.num {{ text-align: right; }}
span.sd {{ color: #666; font-size: 0.9em; white-space: nowrap; }}
figure {{ margin: 1em 0 2em; }} img {{ max-width: 100%; height: auto; }}
figcaption {{ color: #444; font-size: 0.9em; max-width: 70em; }}
</style></head><body>
<h1>Sweep {name}</h1>
<p>{n} finished runs from MLflow <code>{uri}</code>, experiment <code>{experiment}</code>.
Cells are mean ± sample standard deviation over seeds (n = number of runs); attack ratio = attack accuracy /
clean accuracy on the attacked examples.</p>
<nav><ol>{toc}</ol></nav>
<h2 id="conclusions">Conclusions</h2>
<p>Each claim of the study, tested on this sweep's MNIST runs: Spearman's rho of the batch size against
the measurement (p-value two-sided; exact up to n = 8), over every seed. Supported: every test goes the claimed
way (p &lt; 0.05 for a trend); contradicted: every test goes against it; inconclusive: mixed or too weak.</p>
{conclusions}
<h2 id="attacks">Attack settings</h2><p>{attacks}</p>
{sections}
<h2 id="curvature">Curvature and robustness</h2>
<p>Spearman rank correlation between the top Hessian eigenvalue and each attack ratio, over all finished
trials and per dataset (diverged and collapsed trials excluded).</p>{correlation}
<h2 id="cost">Cost</h2>
<p>Seconds per trial in each phase, mean per variant, as the trials logged them; the last row is the sweep's
total, in hours. Process start, data loading and MLflow are outside the phases.</p>{cost}
<h2 id="problems">Failed, diverged, collapsed and unfinished trials</h2>
<p>A collapsed trial finished with clean accuracy within {margin:g} of chance ({chance:g}): attacks cannot lower it, so its
attack ratios and top eigenvalue are left out of the tables, figures and correlations.</p>{problems}
</body></html>
"""
