"""`robustsweep report`: a sweep's MLflow runs as the study's tables and figures, in one offline HTML page.

:func:`make_report` writes into the output folder:

* ``runs.csv`` — the tidy table, one row per finished run (config and metric columns);
* ``tables.md`` — the page's sections in Markdown, in its order (per dataset and regime: configuration rows, mean ± std (n) over seeds);
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

from ..metrics import CHANCE_ACCURACY, COLLAPSE_MARGIN, STOPPED_EPOCH, measurement_keys
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
from .page import Section, write_page
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


def _stopped_early(runs: pd.DataFrame) -> bool:
    """Whether some of ``runs`` were trained until a training accuracy and logged the epoch they stopped at."""
    return all(c in runs for c in ("stop_train_acc", STOPPED_EPOCH)) and (
        runs["stop_train_acc"].notna() & runs[STOPPED_EPOCH].notna()).any()


def make_report(sweep: str | list[str], out: str | Path, *, tracking_uri: str | None = None,
                storage_path: str | None = None, compare: list[str] | None = None,
                compare_tracking_uri: str | None = None) -> Report:
    """The report of one sweep, or of several sweeps of one grid read as one; ``compare``: other sweeps
    (files or names) whose claims' verdicts are set beside these (the Scale section). ``index.html`` and
    ``tables.md`` show the same sections in the same order (:mod:`.page`)."""
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

    claim_results = evaluate_claims(df, runs.eps)
    report.claims = claims_table(claim_results)
    report.claims.to_csv(out / "claims.csv", index=False)
    report.table2 = table2_beside_ours(df)
    report.table2.to_csv(out / "table2.csv", index=False)
    settings = attack_settings(runs.table)
    sections = [
        Section("claims", "Claims: the study's findings, tested", claims_html(claim_results),
                claims_markdown(claim_results)),
        Section("attacks", "Attack settings", f"<p>{html.escape(settings)}</p>", [settings, ""]),
        Section("table2", "The study's Table 2 beside ours (CIFAR-10)", table2_html(report.table2),
                [TABLE2_NOTE, "", to_markdown(report.table2), ""]),
        _scale_section(report, compare, compare_tracking_uri, storage_path),
        _control_section(df, runs, out),
        _study_figures_section(df, runs, report),
        _search_section(runs, report),
        *_dataset_sections(df, runs, report),
        _autoattack_section(df, runs, out),
        _correlation_section(df, report),
        _cost_section(runs, out),
        _problems_section(problems),
    ]
    write_page(out, runs, len(df), scale_statement(runs.table), [s for s in sections if s is not None])
    return report


def _problems_section(problems: pd.DataFrame) -> Section:
    lead = (f"A collapsed trial finished with clean accuracy within {COLLAPSE_MARGIN:g} of chance ({CHANCE_ACCURACY:g}): "
            "attacks cannot lower it, so its attack ratios and top eigenvalue are left out of the tables, figures and "
            "correlations.")
    return Section("problems", "Failed, diverged, collapsed and unfinished trials",
                   f"<p>{lead}</p>" + (to_html(problems) if not problems.empty else "<p>None.</p>"),
                   [lead, "", to_markdown(problems) if not problems.empty else "None.", ""])


def _scale_section(report: Report, compare: list[str] | None, compare_tracking_uri: str | None,
                   storage_path: str | None) -> Section | None:
    """Each claim's verdict here beside its verdict in the ``compare`` sweeps (``scale.csv``)."""
    if not compare:
        return None
    runs = report.runs
    other = collect_many(list(compare), tracking_uri=compare_tracking_uri, storage_path=storage_path, curves=False)
    scale = compare_verdicts(report.claims, claims_table(evaluate_claims(for_analysis(other.table), other.eps)),
                             runs.name, other.name)
    scale.to_csv(report.out / "scale.csv", index=False)
    changed, same, neither = split_comparison(scale)
    lead = (f"Each claim's verdict in this sweep ({runs.name}) beside its verdict in {other.name}, from the same "
            f"statistics on that sweep's runs: {len(changed)} of {len(scale)} verdicts changed, "
            f"{len(same)} stayed, and {len(neither)} are of claims neither sweep ran.")
    not_run = f"Not run in either sweep: {', '.join(neither)}." if neither else ""
    return Section("scale", f"Scale: these verdicts beside those of {other.name}",
                   f"<p>{html.escape(lead)}</p><h3>Changed ({len(changed)})</h3>{to_html(changed)}"
                   f"<details><summary>Unchanged ({len(same)})</summary>{to_html(same)}</details>"
                   f"<p>{html.escape(not_run)}</p>",
                   [lead, "", f"### Changed ({len(changed)})", "", to_markdown(changed), "",
                    f"### Unchanged ({len(same)})", "", to_markdown(same), "", not_run, ""])


def _control_section(df: pd.DataFrame, runs: SweepRuns, out: Path) -> Section | None:
    """Take-away 1's trends on runs trained to a training accuracy (``control.csv``), where there are some."""
    control = fit_control(df, runs.eps)
    if control is None:
        return None
    control.verdicts.to_csv(out / "control.csv", index=False)
    return Section("control", CONTROL_TITLE, control_html(control), control_markdown(control))


def _study_figures_section(df: pd.DataFrame, runs: SweepRuns, report: Report) -> Section | None:
    mnist_eps = runs.eps.get("mnist", [])
    figures = []
    for figure in STUDY_FIGURES if not df.empty and mnist_eps else ():
        path = study_figure(df, figure, mnist_eps, report.out / f"figure{figure.number}.png")
        if path:
            report.figures.append(path)
            caption = (f"Figure {figure.number}. {figure.title}: clean accuracy, FGSM and PGD accuracy relative to "
                       f"clean accuracy, and the top Hessian eigenvalue against batch size; one line per "
                       f"{' and '.join(k.replace('_', ' ') for k in figure.lines)}, mean ± std over seeds.")
            figures.append((path, f"Figure {figure.number}", caption))
    if not figures:
        return None
    return Section("study-figures", "Figures 1-5, laid out as in the study (MNIST)",
                   "".join(_figure_html(path, alt, caption) for path, alt, caption in figures),
                   [line for path, alt, caption in figures for line in (f"![{alt}]({path.name})", "", caption, "")])


def _figure_html(path: Path, alt: str, caption: str) -> str:
    return (f'<figure><img src="{path.name}" alt="{html.escape(alt)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _search_section(runs: SweepRuns, report: Report) -> Section | None:
    if runs.search is None:
        return None
    from .search_section import search_section

    body, lines, figures = search_section(runs.table, runs.problems, runs.search, report.out, to_html, to_markdown)
    report.figures += figures
    return Section("search", f"Search {runs.search.group}: the best trial", body, lines)


def _dataset_sections(df: pd.DataFrame, runs: SweepRuns, report: Report) -> list[Section]:
    """Per dataset: a table per sweep group (a row per configuration, mean ± std over seeds) and its figures."""
    sections = []
    for dataset in sorted(df["dataset"].dropna().unique()) if not df.empty else []:
        eps = runs.eps.get(dataset, [])
        part = df[df["dataset"] == dataset]
        metrics = measurement_keys(eps) + _extra_columns(part, eps)
        blocks, lines = [], []
        for group in dict.fromkeys(part["group"]):
            runs_here = part[part["group"] == group]
            # a group trained until a training accuracy (stop_train_acc): the epoch each stopped at, not its cap
            columns = metrics + ([STOPPED_EPOCH] if _stopped_early(runs_here) else [])
            agg = aggregate(runs_here, ROW_KEYS, columns)
            table = display_table(agg, ROW_KEYS, columns)
            lines += [f"### {group}", "", to_markdown(table), ""]
            blocks.append(f"<h3>{html.escape(group)}</h3>{to_html(table)}")
        images = []
        for metric in [m for m in metrics if m != "lr_x_top_eig"]:
            path = batch_size_figure(df, dataset, metric, report.out / f"{_slug(dataset)}_{_slug(metric)}_vs_batch.png")
            if path:
                images.append((path, f"{metric_label(metric)} against batch size (log2 axis): one panel per "
                                     "sweep group, one line per configuration, mean ± std over seeds"))
        curves = learning_curves_figure(df, runs.curves, dataset, report.out / f"{_slug(dataset)}_learning_curves.png")
        if curves:
            images.append((curves, "learning curves: training loss and test accuracy per epoch, one panel per "
                                   "sweep group"))
        report.figures += [p for p, _ in images]
        lead = ("One table per sweep group: a row per configuration, each measurement as mean ± sample standard "
                "deviation over seeds (n runs).")
        if _stopped_early(part):
            lead += (" A group trained until a training accuracy (stop_train_acc) has a stopped_epoch column: the "
                     "epoch its runs stopped at, where its epochs setting is only the cap.")
        figures = (f"<h3>Figures</h3>{''.join(_figure_html(p, a, a) for p, a in images)}" if images else "",
                   ["### Figures", "", *[line for p, a in images for line in (f"![{a}]({p.name})", "", a, "")]]
                   if images else [])
        sections.append(Section(f"dataset-{_slug(dataset)}", f"{dataset}: tables and figures by sweep group",
                                f"<p>{lead}</p>{''.join(blocks)}{figures[0]}", [lead, "", *lines, *figures[1]]))
    return sections


def _autoattack_section(df: pd.DataFrame, runs: SweepRuns, out: Path) -> Section | None:
    """PGD against AutoAttack on the same images (``autoattack_gap.csv``), and the claims resting on PGD tested
    with each (``claims_autoattack.csv``), where AutoAttack ran."""
    gaps = autoattack_gap(runs.table, runs.eps)
    if gaps.empty:
        return None
    gaps.to_csv(out / "autoattack_gap.csv", index=False)
    flagged = gaps[gaps["flag"] != ""]
    shown = gaps.assign(**{c: gaps[c].map(lambda v: f"{v:.4f}") for c in ("pgd_acc", "autoattack_acc", "gap")})
    under = claims_under_autoattack(df, runs.eps)
    lead = (f"Per run and eps: PGD's accuracy and AutoAttack's (APGD-CE + APGD-T) on the images AutoAttack "
            f"attacked. {len(flagged)} of {len(gaps)} rows show PGD more than {GAP_FLAG * 100:g} points above "
            f"AutoAttack, a sign that PGD was too weak or the gradients are masked there.")
    body, lines = f"<p>{html.escape(lead)}</p>", [lead, ""]
    if not under.empty:
        under.to_csv(out / "claims_autoattack.csv", index=False)
        moved = f"{UNDER_AUTOATTACK} {int((under['changed'] != '').sum())} of {len(under)} verdicts change."
        body += f"<h3>The claims that rest on PGD, with AutoAttack</h3><p>{html.escape(moved)}</p>{to_html(under)}"
        lines += ["### The claims that rest on PGD, with AutoAttack", "", moved, "", to_markdown(under), ""]
    body += f"<h3>Per run</h3>{to_html(shown)}"
    lines += ["### Per run", "", to_markdown(shown), ""]
    return Section("autoattack", "PGD against AutoAttack on the same images", body, lines)


def _correlation_section(df: pd.DataFrame, report: Report) -> Section:
    """Spearman's rho between the top eigenvalue and each attack ratio (``correlation.csv``), and its scatter."""
    datasets = sorted(df["dataset"].dropna().unique()) if not df.empty else []
    ratios = list(dict.fromkeys(m for dataset in datasets for m in measurement_keys(report.runs.eps.get(dataset, []))
                                if "_ratio_" in m))
    corr = correlation_table(df, ratios) if not df.empty else pd.DataFrame()
    report.correlation = corr
    corr.to_csv(report.out / "correlation.csv", index=False)
    scatter = correlation_figure(df, ratios, report.out / "curvature_vs_robustness.png") if not df.empty else None
    if scatter:
        report.figures.append(scatter)
    shown = corr.copy()
    for col in ("spearman rho", "p-value"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: f"{v:.3g}")
    lead = ("Spearman rank correlation between the top Hessian eigenvalue and each attack ratio, over all finished "
            "trials and per dataset (diverged and collapsed trials excluded).")
    caption = "attack ratio against top Hessian eigenvalue"
    return Section("curvature", "Curvature and robustness",
                   f"<p>{lead}</p>{to_html(shown)}" + (_figure_html(scatter, "curvature against robustness", caption)
                                                      if scatter else ""),
                   [lead, "", to_markdown(shown), ""]
                   + ([f"![curvature against robustness]({scatter.name})", ""] if scatter else []))


def _cost_section(runs: SweepRuns, out: Path) -> Section:
    """Seconds per trial in each phase, per variant (``cost.csv``)."""
    cost = cost_table(runs.table)
    cost.to_csv(out / "cost.csv", index=False)
    lead = ("Seconds per trial in each phase, mean per variant, as the trials logged them; the last row is the "
            "sweep's total, in hours. Process start, data loading and MLflow are outside the phases; the whole "
            "trial's column (trial_seconds, over the runs that logged it) holds all but Python's start. Pruned "
            "trials are in no row.")
    return Section("cost", "Cost",
                   f"<p>{lead}</p>" + (to_html(cost) if not cost.empty else "<p>No timings logged.</p>"),
                   [lead, "", to_markdown(cost) if not cost.empty else "No timings logged.", ""])
