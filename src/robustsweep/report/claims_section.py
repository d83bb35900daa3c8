"""The report's Claims section (first on the page) and its Table 2 section, in HTML and Markdown."""

from __future__ import annotations

import html
from collections import Counter

import pandas as pd

from .claims import ALPHA, SECTION_ORDER, VERDICTS, ClaimResult, section_of
from .tables import to_markdown

SECTION_TITLES = {
    "4 (take-away 1)": "Take-away 1 (section 4): large batches, and the constant lr/batch-size ratio",
    "4 (take-away 2)": "Take-away 2 (section 4): curvature and robustness",
    "4 (take-away 3)": "Take-away 3 (section 4): minibatch SGD as the baseline",
    "4 (take-away 4)": "Take-away 4 (section 4): learning rate and momentum",
    "3.4.1": "Section 3.4.1: varying the learning rate, and the SGD variants",
    "3.4.2": "Section 3.4.2: weight regularization",
    "3.4.3": "Section 3.4.3: momentum",
}

RULES = (f"Each claim of the study (Choudhary, 2020: sections 3.4.1-3.4.3 and the four take-aways of section 4), "
         "in our words, tested on this sweep's runs chosen by their settings; one verdict per eps for claims about "
         "attacks. A claim's sub-tests (one per measurement, learning rate, variant ...) get Holm's correction at "
         f"alpha {ALPHA:g}. Trends against batch size: the mean within-seed Spearman rho, its p-value from "
         "permutations within seeds. Comparisons: pairs of runs that share seed, batch size and the other settings; "
         "the mean difference and Wilcoxon's signed-rank test. No-change and constant claims: an equivalence test "
         "(two one-sided t-tests) within a margin, the seed-to-seed standard deviation of the measurement: a "
         "change a re-run with another seed makes anyway, and the least a one-seed study could see. Verdicts: "
         "supported (every sub-test goes the claimed way), contradicted (a sub-test goes significantly against), "
         "inconclusive (neither), not run (the sweep lacks runs the claim needs; what is missing is named).")


def verdict_counts(results: list[ClaimResult]) -> str:
    counts = Counter(r.verdict for r in results)
    claims = len({r.claim.id for r in results})
    return (", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS)
            + f" ({len(results)} verdicts: {claims} claims, attack claims once per eps)")


def _grouped(results: list[ClaimResult]):
    for section in SECTION_ORDER:
        part = [r for r in results if section_of(r.claim) == section]
        if part:
            yield section, part


def claims_html(results: list[ClaimResult]) -> str:
    """The Claims section's body: the rules, the verdict counts, then one table per section."""
    body = [f"<p>{html.escape(RULES)}</p>",
            f'<p class="counts"><strong>Verdicts:</strong> {html.escape(verdict_counts(results))}.</p>']
    for section, part in _grouped(results):
        rows = []
        for r in part:
            c = r.claim
            notes = []
            if c.exception:
                notes.append(f"Exception left out: {c.exception.text}.")
            notes += [f"Open choice: {choice}." for choice in c.open_choices()]
            detail = "".join(f'<br><span class="note">{html.escape(n)}</span>' for n in notes)
            statistic = "<br>".join(html.escape(line) for line in r.lines)
            rows.append(f'<tr class="{r.verdict.replace(" ", "-")}"><td><code>{html.escape(c.id)}</code><br>'
                        f'<span class="note">section {html.escape(c.section)}; {html.escape(c.dataset)}'
                        f'{"; eps " + f"{r.eps:g}" if r.eps is not None else ""}</span></td>'
                        f"<td>{html.escape(c.claim)}{detail}</td>"
                        f'<td class="statistic">{statistic}</td><td class="verdict">{html.escape(r.verdict)}</td></tr>')
        body.append(f"<h3>{html.escape(SECTION_TITLES[section])}</h3>"
                    '<div class="scroll"><table class="results claims"><thead><tr><th>claim</th><th>in our words</th>'
                    "<th>statistic (sub-tests, Holm-adjusted)</th><th>verdict</th></tr></thead>"
                    f"<tbody>{''.join(rows)}</tbody></table></div>")
    return "".join(body)


def claims_markdown(results: list[ClaimResult]) -> list[str]:
    lines = [RULES, "", f"Verdicts: {verdict_counts(results)}.", ""]
    for section, part in _grouped(results):
        table = pd.DataFrame([{"id": r.claim.id, "dataset": r.claim.dataset,
                               "eps": "" if r.eps is None else f"{r.eps:g}", "claim": r.claim.claim,
                               "statistic": r.statistic, "verdict": r.verdict} for r in part])
        lines += [f"### {SECTION_TITLES[section]}", "", to_markdown(table), ""]
    return lines


TABLE2_NOTE = ("The study's Table 2 (CIFAR-10, VGG-11, eps 0.02; Choudhary 2020, Table 2) beside this sweep's CIFAR-10 "
               "runs with the same settings: ours as mean ± sample standard deviation over seeds (n runs), the "
               "difference as a percentage of the study's value, 'not run' where the sweep has none. The two "
               "'lr = 0.01 sgd' rows are one configuration, printed in two of the study's sections. Our PGD is "
               "stronger than the study's (see Attack settings): PGD differences are differences of attack as "
               "much as of training.")


def table2_html(table: pd.DataFrame) -> str:
    """One table per section of the study's Table 2; a cell per measurement: the study's value, ours, the difference."""
    from .study_table2 import LABELS

    parts = [f"<p>{html.escape(TABLE2_NOTE)}</p>"]
    measures = list(LABELS.values())
    head = "".join(f"<th>{html.escape(m)}</th>" for m in ["regime", *measures])
    for section, part in table.groupby("Table 2 section", sort=False):
        rows = []
        for _, r in part.iterrows():
            cells = "".join(
                f'<td class="num">{html.escape(r[m + ": study"])} <span class="sd">study</span><br>'
                f'{html.escape(r[m + ": ours"])} <span class="sd">ours</span>'
                f'{"<br>" + html.escape(r[m + ": difference"]) if r[m + ": difference"] else ""}</td>'
                for m in measures)
            rows.append(f"<tr><td>{html.escape(r['regime'])}</td>{cells}</tr>")
        parts.append(f'<h3>{html.escape(section)}</h3><div class="scroll"><table class="results"><thead><tr>{head}'
                     f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    return "".join(parts)
