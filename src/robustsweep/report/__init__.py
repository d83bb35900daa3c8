"""`robustsweep report`: a sweep's MLflow runs as the study's tables and figures, in one offline HTML page.

:func:`make_report` writes into the output folder:

* ``runs.csv`` — the tidy table, one row per finished run (config and metric columns);
* ``tables.md`` — per dataset and regime: configuration rows, mean ± std (n) over seeds;
* ``correlation.csv`` — Spearman rho, p-value and n between the top eigenvalue and each attack ratio;
* ``*.png`` — each measurement against batch size, learning curves, the correlation scatter;
* ``index.html`` — all of the above on one page that works offline;
* ``problems.csv`` — failed, diverged, collapsed and unfinished trials and runs missing metrics, with the reason;
* ``cost.csv`` — seconds per trial in each phase (training, test passes, attacks, Hessian), per variant;
* ``claims.csv`` — every testable claim of the study (:mod:`.claims`), one row per claim and eps, with this
  sweep's statistics and a verdict;
* ``table2.csv`` — the study's Table 2 (CIFAR-10) beside this sweep's runs of the same settings;
* ``autoattack_gap.csv`` — where AutoAttack ran: PGD's and AutoAttack's accuracy on the same images per run;
* ``claims_autoattack.csv`` — there, each claim resting on PGD with its verdict under PGD and under AutoAttack
  on those images (:mod:`.autoattack_claims`);
* ``control.csv`` — where some runs were trained to a training accuracy (``stop_train_acc``): take-away 1's
  batch-size trends on them beside the same trends on runs trained for the fixed epochs (:mod:`.control`);
* ``scale.csv`` — with ``compare``: each claim's verdict here beside its verdict in the other sweep(s);
* ``search.csv`` and ``search_pareto.png`` — for a search (:mod:`.search_section`): every searched trial with its
  objectives and constraints, the best trial, and for two objectives the Pareto front and its trials.

The page opens with the scale the runs were trained and measured at (:mod:`.scale`). Several sweeps of one
grid report as one (:func:`.collect.collect_many`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..metrics import CHANCE_ACCURACY, COLLAPSE_MARGIN, measurement_keys
from .autoattack_claims import claims_under_autoattack
from .autoattack_gap import GAP_FLAG, autoattack_gap
from .collect import SweepRuns, collect, collect_many, for_analysis
from .scale import compare_verdicts, scale_statement, split_comparison
from .claims import claims_table, evaluate_claims
from .control import TITLE as CONTROL_TITLE, control_html, control_markdown, fit_control
from .claims_section import claims_html, claims_markdown, table2_html, TABLE2_NOTE
from .study_table2 import table2_beside_ours
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
    claims: pd.DataFrame | None = None
    table2: pd.DataFrame | None = None

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


UNDER_AUTOATTACK = ("Each claim with a PGD sub-test, tested again on the images AutoAttack attacked: its PGD "
                    "sub-tests with PGD's results on those images, then with AutoAttack's (its other sub-tests "
                    "left out), so the two verdicts differ only in the attack.")

#: Measurement columns the tables show beside the study's, when some run has them.
EXTRA_TABLE_COLUMNS = ["lr_x_top_eig", "hessian_trace"]


def _extra_columns(df: pd.DataFrame, eps: list[float]) -> list[str]:
    """AutoAttack's accuracy and ratio at each eps, the trace, and lr x top eigenvalue, where some run has them."""
    from ..metrics import attack_key

    wanted = [attack_key("autoattack", what, e) for e in eps for what in ("acc", "ratio")] + EXTRA_TABLE_COLUMNS
    return [c for c in wanted if c in df and df[c].notna().any()]


def make_report(sweep: str | list[str], out: str | Path, *, tracking_uri: str | None = None,
                storage_path: str | None = None, compare: list[str] | None = None,
                compare_tracking_uri: str | None = None) -> Report:
    """The report of one sweep, or of several sweeps of one grid read as one; ``compare``: other sweeps
    (files or names) whose claims' verdicts are set beside these (the Scale section)."""
    sweeps = [sweep] if isinstance(sweep, str) else list(sweep)
    runs = collect_many(sweeps, tracking_uri=tracking_uri, storage_path=storage_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not runs.table.empty and "hessian_top_eig" in runs.table:
        # Kaur, Cohen & Lipton (2022): the raw top eigenvalue scales with 1/lr; lr x eigenvalue compares across
        # rates, and 2 is gradient descent's edge of stability (Cohen et al. 2021). The rate is the last epoch's.
        rate = runs.table["final_lr"] if "final_lr" in runs.table else runs.table["lr"]
        runs.table["lr_x_top_eig"] = rate.fillna(runs.table["lr"]) * runs.table["hessian_top_eig"]
    runs.table.to_csv(out / "runs.csv", index=False)
    df = for_analysis(runs.table)  # collapsed runs' ratios and eigenvalues stay out of every statistic
    report = Report(out, runs)
    problems = pd.DataFrame(runs.problems, columns=["trial_id", "kind", "reason", "run_id"])
    problems.to_csv(out / "problems.csv", index=False)

    statement = scale_statement(runs.table)
    markdown = [f"# Sweep {runs.name}", "", f"MLflow: {runs.tracking_uri}, experiment {runs.experiment}", "",
                "## What was run", "", *[f"- {line}" for line in statement], ""]
    sections = []
    all_ratios: list[str] = []
    for dataset in sorted(df["dataset"].dropna().unique()) if not df.empty else []:
        eps = runs.eps.get(dataset, [])
        part = df[df["dataset"] == dataset]
        metrics = measurement_keys(eps) + _extra_columns(part, eps)
        all_ratios += [m for m in measurement_keys(eps) if "_ratio_" in m and m not in all_ratios]
        markdown += [f"## {dataset}", ""]
        blocks = []
        for group in dict.fromkeys(part["group"]):
            agg = aggregate(part[part["group"] == group], ROW_KEYS, metrics)
            table = display_table(agg, ROW_KEYS, metrics)
            markdown += [f"### {group}", "", to_markdown(table), ""]
            blocks.append(f"<h3>{html.escape(group)}</h3>{to_html(table)}")
        images = []
        for metric in [m for m in metrics if m != "lr_x_top_eig"]:
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

    if runs.search is not None:
        from .search_section import search_section

        body, lines, figures = search_section(runs.table, runs.problems, runs.search, out, to_html, to_markdown)
        report.figures += figures
        sections.insert(0, ("search", f"Search {runs.search.group}: the best trial", body))
        markdown += lines

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

    claim_results = evaluate_claims(df, runs.eps)
    report.claims = claims_table(claim_results)
    report.claims.to_csv(out / "claims.csv", index=False)
    gaps = autoattack_gap(runs.table, runs.eps)
    if not gaps.empty:
        gaps.to_csv(out / "autoattack_gap.csv", index=False)
        flagged = gaps[gaps["flag"] != ""]
        shown = gaps.assign(**{c: gaps[c].map(lambda v: f"{v:.4f}") for c in ("pgd_acc", "autoattack_acc", "gap")})
        under = claims_under_autoattack(df, runs.eps)
        if not under.empty:
            under.to_csv(out / "claims_autoattack.csv", index=False)
        moved = int((under["changed"] != "").sum()) if not under.empty else 0
        verdicts = (f"<h3>The claims that rest on PGD, with AutoAttack</h3><p>{html.escape(UNDER_AUTOATTACK)} "
                    f"{moved} of {len(under)} verdicts change.</p>{to_html(under)}" if not under.empty else "")
        sections.append(("autoattack", "PGD against AutoAttack on the same images",
                         f"<p>Per run and eps: PGD's accuracy and AutoAttack's (APGD-CE + APGD-T) on the images "
                         f"AutoAttack attacked. {len(flagged)} of {len(gaps)} rows show PGD more than "
                         f"{GAP_FLAG * 100:g} points above AutoAttack, a sign that PGD was too weak or the gradients "
                         f"are masked there.</p>{verdicts}<h3>Per run</h3>{to_html(shown)}"))
        markdown += ["## PGD against AutoAttack on the same images", ""]
        if not under.empty:
            markdown += ["### The claims that rest on PGD, with AutoAttack", "",
                         f"{UNDER_AUTOATTACK} {moved} of {len(under)} verdicts change.", "", to_markdown(under), ""]
        markdown += ["### Per run", "", to_markdown(shown), ""]
    control = fit_control(df, runs.eps)
    if control is not None:
        control.verdicts.to_csv(out / "control.csv", index=False)
        sections.insert(0, ("control", CONTROL_TITLE, control_html(control)))
        markdown += control_markdown(control)
    if compare:
        other = collect_many(list(compare), tracking_uri=compare_tracking_uri, storage_path=storage_path,
                             curves=False)
        scale = compare_verdicts(report.claims, claims_table(evaluate_claims(for_analysis(other.table), other.eps)),
                                 runs.name, other.name)
        scale.to_csv(out / "scale.csv", index=False)
        changed, same, neither = split_comparison(scale)
        lead = (f"Each claim's verdict in this sweep ({runs.name}) beside its verdict in {other.name}, from the same "
                f"statistics on that sweep's runs: {len(changed)} of {len(scale)} verdicts changed, "
                f"{len(same)} stayed, and {len(neither)} are of claims neither sweep ran.")
        not_run = f"Not run in either sweep: {', '.join(neither)}." if neither else ""
        sections.insert(0, ("scale", f"Scale: these verdicts beside those of {other.name}",
                            f"<p>{html.escape(lead)}</p><h3>Changed ({len(changed)})</h3>{to_html(changed)}"
                            f"<details><summary>Unchanged ({len(same)})</summary>{to_html(same)}</details>"
                            f"<p>{html.escape(not_run)}</p>"))
        markdown += [f"## Scale: these verdicts beside those of {other.name}", "", lead, "",
                     f"### Changed ({len(changed)})", "", to_markdown(changed), "",
                     f"### Unchanged ({len(same)})", "", to_markdown(same), "", not_run, ""]
    report.table2 = table2_beside_ours(df)
    report.table2.to_csv(out / "table2.csv", index=False)

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
    markdown[7 + len(statement):7 + len(statement)] = [*claims_markdown(claim_results), "## Attack settings", "", settings, "",
                     "## The study's Table 2 beside ours", "", TABLE2_NOTE, "", to_markdown(report.table2), ""]
    (out / "tables.md").write_text("\n".join(markdown))
    toc = [("claims", "Claims: the study's findings, tested"), ("attacks", "Attack settings"),
           ("table2", "The study's Table 2 beside ours (CIFAR-10)"), *[(i, t) for i, t, _ in sections],
           ("curvature", "Curvature and robustness"), ("cost", "Cost"),
           ("problems", "Failed, diverged, collapsed and unfinished trials")]
    report.index.write_text(_PAGE.format(
        name=html.escape(runs.name), uri=html.escape(runs.tracking_uri), experiment=html.escape(runs.experiment),
        n=len(df), scale="".join(f"<li>{html.escape(line)}</li>" for line in statement),
        claims=claims_html(claim_results), table2=table2_html(report.table2), margin=COLLAPSE_MARGIN, chance=CHANCE_ACCURACY,
        attacks=html.escape(settings), problems=problems_html, correlation=corr_html,
        cost=to_html(cost) if not cost.empty else "<p>No timings logged.</p>",
        toc="".join(f'<li><a href="#{i}">{html.escape(t)}</a></li>' for i, t in toc),
        sections="".join(f'<h2 id="{i}">{html.escape(t)}</h2>{body}' for i, t, body in sections)))
    return report


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
<h2 id="claims">Claims: the study's findings, tested</h2>
{claims}
<h2 id="attacks">Attack settings</h2><p>{attacks}</p>
<h2 id="table2">The study's Table 2 beside ours (CIFAR-10)</h2>
{table2}
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
