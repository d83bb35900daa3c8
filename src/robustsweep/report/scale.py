"""At what scale a sweep was trained and measured, and its claims' verdicts beside another sweep's.

:func:`scale_statement` opens every report: epochs and training examples per dataset, the attacked and
Hessian examples, the attack settings, the command-line flags, seeds, code versions and devices, from
the runs themselves, so a one-epoch slice never reads like the full study. Where the runs differ in
one of these, it says so with the count of each value.

:func:`compare_verdicts` puts each claim's verdict in this sweep beside its verdict in another sweep of
the same grid (the study-scale run beside the CPU-scale one, say), marking each that changed, changes first;
:func:`split_comparison` divides them as the page shows them.
"""

from __future__ import annotations

import pandas as pd

from .. import datasets


def _values(part: pd.DataFrame, column: str, show=str) -> str:
    """One value, or each value with its count of runs when the runs differ."""
    if column not in part:
        return "not recorded"
    counts = part[column].astype(object).where(part[column].notna(), "").astype(str).value_counts()
    if len(counts) == 1:
        return show(counts.index[0])
    return "differs across runs: " + "; ".join(f"{show(v)} ({n} runs)" for v, n in counts.items())


def _examples(subset: str, whole: int | None, what: str) -> str:
    n = int(float(subset)) if subset not in ("", "None", "nan") else 0
    if n and (whole is None or n < whole):
        return f"the first {n:,} {what}"
    return f"all {whole:,} {what}" if whole else f"all {what}"


def _measured(setting: str):
    """How a run's ``attacks`` or ``curvature`` param reads: the names ("fgsm, pgd"), and for a run logged
    before the setting existed (no param) the set every run measured then, which is still its default."""
    import ast

    from ..config import TrialConfig

    default = ", ".join(TrialConfig.__dataclass_fields__[setting].default)

    def show(value: str) -> str:
        if value in ("", "None", "nan"):
            return f"{default} (the runs predate the {setting} setting: the set measured then)"
        try:
            return ", ".join(ast.literal_eval(value))
        except (ValueError, SyntaxError, TypeError):
            return value

    return show


def scale_statement(table: pd.DataFrame) -> list[str]:
    """Plain-text lines, one per fact (see the module docstring)."""
    if table.empty:
        return ["No finished runs."]
    lines = []
    for dataset in sorted(table["dataset"].dropna().unique()):
        part = table[table["dataset"] == dataset]
        try:
            whole = datasets.get(dataset).train_size
        except KeyError:
            whole = None
        train = _values(part, "subset", lambda v: _examples(v, whole, "training examples"))
        test = _values(part, "test_subset", lambda v: _examples(v, None, "test images"))
        lines.append(f"{dataset} ({len(part)} runs): {_values(part, 'epochs')} epochs on {train}; clean accuracy "
                     f"on {test}.")
        attacked = _values(part, "attack_subset", lambda v: _examples(v, None, "test images"))
        pgd = _values(part, "pgd_steps")
        line = f"Attacks: {_values(part, 'attacks', _measured('attacks'))} on {attacked}; PGD-{pgd} steps"
        if part.get("attacks", pd.Series(dtype=str)).astype(str).str.contains("autoattack").any():
            aa = part[part["attacks"].astype(str).str.contains("autoattack")]
            line += (f"; AutoAttack on {_values(aa, 'autoattack_subset', lambda v: _examples(v, None, 'of those'))}, "
                     f"{_values(aa, 'autoattack_steps')} steps, {_values(aa, 'autoattack_targets')} target classes")
        lines.append(line + ".")
        curvature = (f"Curvature: {_values(part, 'curvature', _measured('curvature'))} on "
                     f"{_values(part, 'hessian_samples')} training examples")
        if part.get("curvature", pd.Series(dtype=str)).astype(str).str.contains("trace").any():
            curvature += f" (trace from {_values(part[part['curvature'].astype(str).str.contains('trace')], 'hessian_trace_probes')} probes)"
        lines.append(curvature + ".")
        if "stop_train_acc" in part and part["stop_train_acc"].notna().any():
            stopped = part[part["stop_train_acc"].notna()]
            lines.append(f"Early stop: {len(stopped)} runs trained until their training accuracy reached "
                         f"{_values(stopped, 'stop_train_acc')}, at most {_values(stopped, 'epochs')} epochs.")
    flags = _values(table, "sweep_flags", lambda v: v or "none")
    lines.append(f"Sweeps: {_values(table, 'sweep')}; command-line flags: {flags}.")
    lines.append(f"Seeds: {', '.join(str(int(s)) for s in sorted(table['seed'].dropna().unique()))}.")
    lines.append(f"Code: {_values(table, 'git_commit', lambda v: v[:12] or 'unknown')}; devices: "
                 f"{_values(table, 'device_name', lambda v: v or 'unknown')}.")
    return lines


def compare_verdicts(here: pd.DataFrame, there: pd.DataFrame, here_name: str, there_name: str) -> pd.DataFrame:
    """Each claim (and eps) with its verdict and statistic in both sweeps; ``changed`` says how."""
    key = ["id", "eps"]
    a = here.assign(eps=here["eps"].astype(str))
    b = there.assign(eps=there["eps"].astype(str))[key + ["verdict", "statistic"]]
    merged = a.merge(b, on=key, how="outer", suffixes=("", "_there"))
    merged["verdict"] = merged["verdict"].fillna("not run")
    merged["verdict_there"] = merged["verdict_there"].fillna("not run")
    merged["changed"] = [f"{t} -> {h}" if h != t else "" for h, t in zip(merged["verdict"], merged["verdict_there"])]
    # the order a reader wants: verdicts that changed between two sweeps that both ran the claim, then changes
    # to or from "not run", then the verdicts that stayed, then the claims neither sweep ran
    ran = (merged["verdict"] != "not run") & (merged["verdict_there"] != "not run")
    neither = (merged["verdict"] == "not run") & (merged["verdict_there"] == "not run")
    merged["_order"] = [0 if c and r else 1 if c else 3 if n else 2
                        for c, r, n in zip(merged["changed"], ran, neither)]
    merged = merged.sort_values(["_order", "dataset", "section", "id", "eps"], kind="stable")
    out = merged[["id", "section", "dataset", "eps", "claim", "verdict_there", "verdict", "changed",
                  "statistic_there", "statistic"]].rename(columns={
                      "verdict_there": f"verdict ({there_name})", "verdict": f"verdict ({here_name})",
                      "statistic_there": f"statistic ({there_name})", "statistic": f"statistic ({here_name})"})
    return out.fillna("").reset_index(drop=True)


def split_comparison(scale: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """:func:`compare_verdicts`' rows as a page shows them: (the verdicts that changed, those that stayed, the
    claims neither sweep ran, by id and eps: listed, not tabled, since both columns would only say so)."""
    verdicts = [c for c in scale.columns if c.startswith("verdict (")]
    neither = (scale[verdicts] == "not run").all(axis=1)
    changed = scale[(scale["changed"] != "") & ~neither]
    same = scale[(scale["changed"] == "") & ~neither]
    names = [f"{i} (eps {e})" if e not in ("", "nan") else i
             for i, e in zip(scale["id"][neither], scale["eps"][neither])]
    return changed, same, names
