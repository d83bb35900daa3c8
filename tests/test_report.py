"""`robustsweep report` from a real MLflow store filled by a real (debug-mode) sweep."""

import html
import itertools
import json
import math
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from robustsweep.cli import main
from robustsweep.errors import UserError
from robustsweep.report import make_report
from robustsweep.report.claims import CLAIMS
from robustsweep.report.correlation import spearman
from robustsweep.report.tables import aggregate

from .conftest import trial_runs_only

TINY = ("subset: 300, test_subset: 200, batch_size: 50, attack_subset: 40, hessian_samples: 32, pgd_steps: 2, "
        "hessian_iters: 3, eval_batch_size: 200, device: cpu, epochs: 1")


SWEEP = """
name: rep
storage_path: {folder}/ray_results
mlflow: {{tracking_uri: "sqlite:///{folder}/mlflow.db"}}
seeds: [0, 1]
base: {{dataset: mnist, data_root: "{data}", {tiny}}}
groups:
  - name: constant-lr
    set: {{lr: 0.05}}
    grid: {{variant: [sgd, adam], batch_size: [25, 50]}}
  - name: exploding
    set: {{lr: 1.0e+30, variant: sgd}}   # overflows to NaN in the first epoch
"""


@pytest.fixture(scope="module")
def _filled_template(tmp_path_factory, mnist_root):
    """A small real sweep, run once in-process: 2 variants x 2 batch sizes x 2 seeds, plus a diverging trial."""
    folder = tmp_path_factory.mktemp("report-template")
    path = folder / "rep.yaml"
    path.write_text(SWEEP.format(folder=folder, data=mnist_root, tiny=TINY))
    import os

    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["launch", str(path), "--debug"]) == 0
    finally:
        os.chdir(cwd)
    return folder


@pytest.fixture
def filled_store(_filled_template, tmp_path, mnist_root):
    """The template sweep's store and artifacts, copied for this test alone (tests may add runs)."""
    folder = tmp_path / "store"
    shutil.copytree(_filled_template, folder, ignore=shutil.ignore_patterns("ray_results"))
    with sqlite3.connect(folder / "mlflow.db") as db:  # artifacts: the copy's own folder
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)",
                       (str(_filled_template), str(folder)))
    # MLflow caches each run's artifact store by run id in the process that logged to it (the template's
    # parent run): forget those, so this copy's runs write to the copy
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._artifact_repos_cache.clear()
    path = folder / "rep.yaml"
    path.write_text(SWEEP.format(folder=folder, data=mnist_root, tiny=TINY))
    return path, f"sqlite:///{folder / 'mlflow.db'}"


def test_report_from_a_real_sweep(filled_store, tmp_path, capsys):
    path, uri = filled_store
    out = tmp_path / "out"
    assert main(["report", str(path), "--out", str(out)]) == 0
    # where the runs are in MLflow's UI, in its model-training view: the runs table and the sweep's own run
    said = capsys.readouterr().out
    (sweep_run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("rep").experiment_id], filter_string="tags.kind = 'sweep'")
    assert "/#/experiments/1/runs?workflowType=machine_learning" in said
    assert f"/#/experiments/1/runs/{sweep_run.info.run_id}?workflowType=machine_learning" in said
    runs = pd.read_csv(out / "runs.csv")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    mlflow_runs = {r.info.run_id: r for r in trial_runs_only(client.search_runs([exp.experiment_id]))
                   if r.data.tags.get("kind") != "sweep"}  # the trials' runs, not the sweep's own
    # every run appears, with MLflow's numbers
    assert set(runs["run_id"]) == set(mlflow_runs) and len(runs) == 10
    assert runs["diverged"].sum() == 2
    for _, row in runs.iterrows():
        metrics = mlflow_runs[row["run_id"]].data.metrics
        for key in ("clean_acc", "pgd_acc_eps0.15", "fgsm_ratio_eps0.03", "hessian_top_eig"):
            if key in metrics:
                assert row[key] == pytest.approx(metrics[key], rel=1e-12)
    # diverged and collapsed trials are listed with their reasons, not silently dropped: Adam at
    # lr 0.05 (fifty times its usual rate) ends every run at chance accuracy, SGD there does not
    problems = pd.read_csv(out / "problems.csv").set_index("run_id")
    adam = set(runs[runs.variant == "adam"]["run_id"])
    exploding = set(runs[runs.group == "exploding"]["run_id"])
    assert len(adam) == 4 and set(problems.index) == adam | exploding
    assert (problems.loc[list(exploding), "kind"] == "diverged").all()
    assert problems.loc[list(exploding), "reason"].str.contains("non-finite").all()
    assert (problems.loc[list(adam), "kind"] == "collapsed").all()
    assert problems.loc[list(adam), "reason"].str.contains("within 0.05 of chance").all()
    assert (runs[runs.variant == "adam"]["clean_acc"] <= 0.15).all() and runs["collapsed"].sum() == 4
    # figures are valid images of nonzero size, and the page references every one
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 10
    for png in pngs:
        with Image.open(png) as image:
            image.verify()
            assert image.size[0] > 100 and image.size[1] > 100
    page = (out / "index.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', page)) == {p.name for p in pngs}
    # tables.md is the same page: the same sections in the same order, every figure linked
    markdown = (out / "tables.md").read_text()
    headings = [html.unescape(t) for t in re.findall(r'<h2 id="[^"]+">(.*?)</h2>', page)]
    assert [line[3:] for line in markdown.splitlines() if line.startswith("## ")] == headings
    assert headings[:2] == ["What was run", "Claims: the study's findings, tested"] and len(headings) >= 8
    assert set(re.findall(r"!\[[^]]*\]\(([^)]+)\)", markdown)) == {p.name for p in pngs}
    # the study's Figure 1 (the sweep has constant-rate SGD and Adam); no momentum, decay or schedule
    # runs beside their baselines, so no Figures 3-5
    assert (out / "figure1.png").exists() and not list(out.glob("figure[345].png"))
    assert "PGD: 2 steps of 2.5 eps / steps (Madry et al.), from a uniform random start" in page
    assert "Attacked: the first 40 test images" in (out / "tables.md").read_text()
    # tables aggregate the two seeds: mean ± std (n=2) against MLflow's numbers
    table = (out / "tables.md").read_text().split("## Curvature")[0]  # up to the per-group tables
    sgd32 = [mlflow_runs[r].data.metrics["clean_acc"] for r in
             runs[(runs.variant == "sgd") & (runs.batch_size == 25) & (runs.group == "constant-lr")]["run_id"]]
    assert f"{np.mean(sgd32):.4f} ± {np.std(sgd32, ddof=1):.2g} (n=2)" in table
    # collapsed runs are counted, but their ratios and eigenvalues are in no table and no correlation
    adam_rows = [line for line in table.splitlines() if line.startswith("| adam |")]
    assert len(adam_rows) == 2 and all(line.rstrip().endswith("| 2/2 |") for line in adam_rows)
    header = next(line for line in table.splitlines() if "fgsm_ratio_eps0.03" in line).split("|")
    for line in adam_rows:
        cells = dict(zip(header, line.split("|")))
        assert cells[" clean_acc "].strip() and not cells[" fgsm_ratio_eps0.03 "].strip()
        assert not cells[" hessian_top_eig "].strip()
    corr = pd.read_csv(out / "correlation.csv")
    assert set(corr["scope"]) == {"all", "mnist"} and (corr["n"] == 4).all()  # diverged, collapsed excluded
    # where the time went, from the seconds each trial logged: per variant, and the sweep's total hours
    cost = pd.read_csv(out / "cost.csv").set_index("variant")
    assert list(cost.index) == ["adam", "sgd", "all (hours, summed)"] and list(cost["trials"]) == [4, 6, 10]
    sgd_runs = runs[runs.variant == "sgd"]
    assert cost.loc["sgd", "PGD"] == pytest.approx(sgd_runs["seconds_pgd"].mean(), abs=0.006)
    assert cost.loc["sgd", "training"] > 0
    assert cost.loc["all (hours, summed)", "PGD"] == pytest.approx(runs["seconds_pgd"].sum() / 3600, abs=6e-4)
    # and what whole trials cost (trial_seconds): more than their phases (process start, data, MLflow)
    assert runs["trial_seconds"].notna().all()
    assert cost.loc["sgd", "whole trial, s/trial"] == pytest.approx(sgd_runs["trial_seconds"].mean(), abs=0.006)
    per_variant = cost.drop("all (hours, summed)")  # (the total is in hours, to 3 decimals: 0.01 both, in CI)
    assert (per_variant["whole trial, s/trial"] > per_variant["sum of phases, s/trial"]).all()
    # the study's claims come first on the page, one row per claim and eps; this sweep (SGD and Adam at
    # lr 0.05, 2 batch sizes, 2 seeds) has no ratio, momentum or CIFAR-10 runs
    assert not (out / "conclusions.csv").exists()
    claims = pd.read_csv(out / "claims.csv", keep_default_na=False).set_index(["id", "eps"])
    assert claims.index.get_level_values("id").nunique() == len(CLAIMS)
    falls = claims.loc[("mnist-large-batch-lowers-clean-accuracy", "")]
    assert falls["verdict"] == "inconclusive"  # 2 batch sizes: too few for a trend, and it says so
    assert "n=4 runs (2 seeds x 2 batch sizes)" in falls["statistic"] and "fewer than 3" in falls["statistic"]
    ratio = claims.loc[("mnist-ratio-keeps-accuracy-and-robustness", "0.15")]
    assert ratio["verdict"] == "not run" and "no runs of mnist, variant sgd, lr/bs ratio" in ratio["statistic"]
    assert set(claims[claims["dataset"] == "cifar10"]["verdict"]) == {"not run"}
    assert "Kamath" not in page and "Kamath" not in (out / "tables.md").read_text()
    assert (page.index('<h2 id="claims">') < page.index('<h2 id="attacks">') < page.index('<h2 id="table2">')
            < page.index('<h2 id="study-figures">') < page.index('<h2 id="problems">'))
    claims_part = page[page.index('<h2 id="claims">'):page.index('<h2 id="attacks">')]
    assert claims_part.index("Take-away 1") < claims_part.index("Take-away 4") < claims_part.index("Section 3.4.1")
    assert re.search(r"<strong>Verdicts:</strong> \d+ supported, \d+ contradicted, \d+ inconclusive, \d+ not run",
                     claims_part)
    # the study's Table 2 beside ours: its 17 published rows, ours not run (no CIFAR-10 here)
    table2 = pd.read_csv(out / "table2.csv", keep_default_na=False)
    assert len(table2) == 17 and set(table2["clean accuracy, %: ours"]) == {"not run"}
    table2_part = page[page.index('<h2 id="table2">'):page.index('<h2 id="study-figures">')]
    assert "86.19 <span" in table2_part and "1863.31" in table2_part and "stronger than the study" in table2_part


def test_log_to_mlflow_attaches_the_report_to_the_sweeps_parent_run(filled_store, tmp_path):
    path, uri = filled_store
    for again in ("o", "o2"):  # twice: the parent made the first time is the one used the second
        assert main(["report", str(path), "--out", str(tmp_path / again), "--log-to-mlflow"]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'sweep'")
    assert parent.info.run_name == "sweep rep" and parent.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert parent.info.artifact_uri.startswith(path.parent.as_uri())  # into this test's copy only
    assert parent.info.run_id in client.get_experiment(exp.experiment_id).tags["mlflow.note.content"]
    assert "report/index.html" in names and "report/runs.csv" in names
    # the parent run is not mistaken for a trial
    assert len(pd.read_csv(make_report(str(path), tmp_path / "again").out / "runs.csv")) == 10


def test_missing_metric_is_reported(filled_store, tmp_path, capsys):
    path, uri = filled_store
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    run = client.create_run(exp.experiment_id, tags={"sweep": "rep", "trial_id": "handmade", "group": "x"})
    client.log_batch(run.info.run_id, params=[])
    client.log_param(run.info.run_id, "dataset", "mnist")
    client.log_metric(run.info.run_id, "clean_acc", 0.5)
    client.set_terminated(run.info.run_id)
    assert main(["report", str(path), "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "missing metrics: handmade: run has no fgsm_acc_eps0.03" in err
    assert "hessian_top_eig" in err


def test_empty_sweep_is_a_clear_error_and_reading_commands_create_no_store(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(f'name: empty\nmlflow: {{tracking_uri: "sqlite:///{tmp_path / "m.db"}"}}\ngroups: [{{name: g}}]\n')
    for command in (["report", str(path)], ["export", str(path), "--out", str(tmp_path / "r.jsonl")],
                    ["audit", str(path)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"There is no MLflow store at {tmp_path / 'm.db'}" in err and "Traceback" not in err
        assert not (tmp_path / "m.db").exists()
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'm.db'}").search_experiments()  # an empty store
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Sweep 'empty' has no runs in MLflow experiment 'empty'" in err and "Traceback" not in err


def test_aggregation_against_hand_computed_means_and_deviations():
    df = pd.DataFrame({
        "variant": ["sgd", "sgd", "sgd", "adam"], "batch_size": [32, 32, 32, 32], "lr": [0.1, 0.1, 0.1, None],
        "clean_acc": [0.90, 0.92, 0.97, 0.8], "hessian_top_eig": [10.0, 20.0, None, 5.0],
        "diverged": [False, False, False, False]})
    agg = aggregate(df, ["variant", "batch_size", "lr"], ["clean_acc", "hessian_top_eig"]).set_index("variant")
    assert agg.loc["sgd", "clean_acc"] == pytest.approx(0.93)
    # sample std of 0.90, 0.92, 0.97: deviations -0.03, -0.01, 0.04 -> sqrt((9+1+16)e-4 / 2)
    assert agg.loc["sgd", "clean_acc_std"] == pytest.approx(math.sqrt(26e-4 / 2))
    assert agg.loc["sgd", "clean_acc_n"] == 3
    assert agg.loc["sgd", "hessian_top_eig"] == 15.0 and agg.loc["sgd", "hessian_top_eig_n"] == 2
    assert agg.loc["adam", "clean_acc"] == 0.8 and math.isnan(agg.loc["adam", "clean_acc_std"])
    assert agg.loc["adam", "lr"] == "-"  # a missing setting stays a row of its own


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_including_ties(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 6, 25).astype(float)  # many ties
    y = x + rng.normal(0, 2, 25)
    rho, p, n = spearman(x, y)
    ref = stats.spearmanr(x, y)
    assert (rho, p, n) == (pytest.approx(ref.statistic, abs=1e-12), pytest.approx(ref.pvalue, rel=1e-9), 25)


def test_ratio_group_draws_one_line_per_variant_across_batch_sizes():
    from robustsweep.report.figures import batch_size_lines

    rows = [{"variant": v, "batch_size": b, "lr": 0.005 / 32 * b, "lr_batch_ratio": 0.005 / 32, "momentum": 0.0,
             "weight_decay": 0.0, "schedule": "constant", "epochs": 1, "clean_acc": 0.9, "diverged": False}
            for v in ("sgd", "svrg") for b in (32, 64, 128, 256) for _ in range(2)]
    lines = batch_size_lines(pd.DataFrame(rows), "clean_acc")
    assert [label for label, _ in lines] == ["sgd", "svrg"]
    assert all(list(line["batch_size"]) == [32, 64, 128, 256] for _, line in lines)
    assert all((line["clean_acc_n"] == 2).all() for _, line in lines)


def test_spearman_p_value_is_exact_at_small_n():
    rho, p, n = spearman([1, 2, 3, 4], [4, 3, 2, 1])
    assert (rho, n) == (pytest.approx(-1.0), 4)
    assert p == pytest.approx(2 / 24)  # the two orders with |rho| = 1 among 4! pairings
    rng = np.random.default_rng(3)
    for size in (5, 6):
        x, y = rng.normal(size=size), rng.normal(size=size)
        observed = stats.spearmanr(x, y).statistic
        # the reference: scipy's rho for every pairing of y with x
        pairings = [stats.spearmanr(x, order).statistic for order in itertools.permutations(y)]
        reference = np.mean(np.abs(pairings) >= abs(observed) - 1e-12)
        rho, p, _ = spearman(x, y)
        assert rho == pytest.approx(observed) and p == pytest.approx(reference)
        assert p > stats.spearmanr(x, y).pvalue  # the t approximation is too small at this n


def test_spearman_drops_missing_pairs():
    rho, p, n = spearman([1, 2, 3, 4, None, 6], [2, 1, 4, 3, 5, float("nan")])
    ref = stats.spearmanr([1, 2, 3, 4], [2, 1, 4, 3])
    assert n == 4 and rho == pytest.approx(ref.statistic)
    assert math.isnan(spearman([1, 2], [3, 4])[0])


def test_report_by_name_needs_a_launched_sweep(tmp_path):
    with pytest.raises(UserError, match="No sweep named 'ghost'"):
        make_report("ghost", tmp_path / "r", storage_path=str(tmp_path))


def _study_runs():
    rows = []

    def add(group, variant="sgd", lr=0.01, ratio=None, momentum=0.0, wd=0.0, schedule="constant"):
        for b in (32, 64):
            rows.append({"group": group, "dataset": "mnist", "variant": variant, "batch_size": b,
                         "lr": ratio * b if ratio else lr, "lr_batch_ratio": ratio, "momentum": momentum,
                         "weight_decay": wd, "schedule": schedule, "epochs": 1, "diverged": False,
                         "clean_acc": 0.9, "hessian_top_eig": 1.0})

    for lr in (0.01, 0.1):
        add("constant-lr", lr=lr)
        add("constant-lr", variant="svrg", lr=lr)
        add("momentum", lr=lr, momentum=0.9)
        add("weight-decay", lr=lr, wd=0.01)
        add("step", lr=lr, schedule="step")
    add("adam", variant="adam", lr=0.0005)
    add("ratio", ratio=0.005 / 32)
    add("ratio", variant="svrg", ratio=0.005 / 32)
    return pd.DataFrame(rows)


def test_study_figures_select_by_setting_and_merge_baselines_across_groups():
    from robustsweep.report.study_figures import STUDY_FIGURES, study_lines, study_runs

    df = _study_runs()
    figures = {f.number: f for f in STUDY_FIGURES}
    groups = {n: set(study_runs(df, f)["group"]) for n, f in figures.items()}
    assert groups[1] == {"constant-lr", "adam"}  # Adam in the panels of the SGD variants
    assert groups[2] == {"ratio"}
    assert groups[3] == {"constant-lr", "momentum"}  # momentum 0 is the constant-lr sgd baseline
    assert groups[4] == {"constant-lr", "weight-decay"}
    assert groups[5] == {"constant-lr", "step"}  # the constant schedule beside the step schedule
    labels = {n: [label for label, _ in study_lines(study_runs(df, f), f, "clean_acc")] for n, f in figures.items()}
    assert labels[1] == ["adam, lr=0.0005", "sgd, lr=0.01", "sgd, lr=0.1", "svrg, lr=0.01", "svrg, lr=0.1"]
    assert labels[2] == ["sgd", "svrg"]  # one line per variant across batch sizes
    assert labels[3] == ["momentum=0, lr=0.01", "momentum=0, lr=0.1", "momentum=0.9, lr=0.01", "momentum=0.9, lr=0.1"]
    assert labels[5] == ["constant, lr=0.01", "constant, lr=0.1", "step, lr=0.01", "step, lr=0.1"]
    assert all(len(line) == 2 for f in figures.values()
               for _, line in study_lines(study_runs(df, f), f, "clean_acc"))
    # the under-training control's runs (constant-rate SGD trained to a training accuracy) are in no figure
    control = df[(df["group"] == "constant-lr") & (df["variant"] == "sgd")].assign(stop_train_acc=0.99,
                                                                                   group="fit-control")
    both = pd.concat([df.assign(stop_train_acc=np.nan), control], ignore_index=True)
    assert {n: set(study_runs(both, f)["group"]) for n, f in figures.items()} == groups


def test_exported_runs_rebuild_the_store_and_launch_skips_them(filled_store, tmp_path, capsys):
    # The study-run workflow on a fresh machine: the committed export is imported into an empty
    # store, the report is the same, and launching the sweep trains nothing that finished.
    path, uri = filled_store
    runs_file = tmp_path / "results" / "runs.jsonl"
    assert main(["export", str(path), "--out", str(runs_file)]) == 0
    assert "exported 10 finished runs of sweep rep (10 trials)" in capsys.readouterr().out
    parent, *records = [json.loads(line) for line in runs_file.read_text().splitlines()]
    assert parent["kind"] == "sweep" and parent["run_name"] == "sweep rep"  # the sweep's own run first
    assert [r["trial_id"] for r in records] == sorted(r["trial_id"] for r in records)
    assert runs_file.stat().st_size < 10 * 1024 * len(records)  # a few kB a run: no weights
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_uri = f"sqlite:///{fresh / 'mlflow.db'}"
    assert main(["import", str(runs_file), str(path), "--tracking-uri", fresh_uri]) == 0
    assert "imported 10 runs of sweep rep" in capsys.readouterr().out
    assert main(["import", str(runs_file), str(path), "--tracking-uri", fresh_uri]) == 0  # idempotent
    again = capsys.readouterr().out
    assert "imported 0 runs" in again and "10 skipped" in again

    before, after = tmp_path / "before", tmp_path / "after"
    assert main(["report", str(path), "--out", str(before)]) == 0
    assert main(["report", str(path), "--out", str(after), "--tracking-uri", fresh_uri]) == 0
    columns = ["trial_id", "outcome", "clean_acc", "pgd_acc_eps0.15", "fgsm_ratio_eps0.03", "hessian_top_eig",
               "diverged", "collapsed"]
    old = pd.read_csv(before / "runs.csv")[columns].sort_values("trial_id").reset_index(drop=True)
    new = pd.read_csv(after / "runs.csv")[columns].sort_values("trial_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(old, new)
    def tables(folder):  # all but the line naming the store, and the run ids (new in the new store)
        return [re.sub(r"\b[0-9a-f]{32}\b", "<run>", line) for line in (folder / "tables.md").read_text().splitlines()
                if not line.startswith("MLflow:")]
    assert tables(before) == tables(after)
    client = MlflowClient(fresh_uri)
    exp = client.get_experiment_by_name("rep")
    imported = trial_runs_only(client.search_runs([exp.experiment_id]))
    assert len(imported) == 10 and all(r.info.status == "FINISHED" for r in imported)
    one = next(r for r in imported if r.data.tags.get("outcome") == "finished")
    original = trial_runs_only(MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("rep").experiment_id],
        filter_string=f"tags.trial_id = '{one.data.tags['trial_id']}'"))[0]
    assert one.data.params == original.data.params
    assert ([m.value for m in client.get_metric_history(one.info.run_id, "test_acc")]
            == [m.value for m in MlflowClient(uri).get_metric_history(original.info.run_id, "test_acc")])
    assert one.info.run_name == original.info.run_name and len(one.inputs.dataset_inputs) == 2
    assert all(r.data.tags["mlflow.runName"] == r.info.run_name for r in imported)  # the name MLflow's UI shows

    # the sweep launched against the rebuilt store trains nothing: every trial is already finished
    text = path.read_text().replace(uri, fresh_uri)
    moved = tmp_path / "moved.yaml"
    moved.write_text(text)
    capsys.readouterr()
    assert main(["launch", str(moved), "--debug"]) == 0
    out = capsys.readouterr().out
    assert out.count("already finished") == 10
    assert len(trial_runs_only(client.search_runs([exp.experiment_id]))) == 10


def test_audit_finds_duplicated_stray_and_missing_runs(filled_store, tmp_path, capsys):
    path, uri = filled_store
    assert main(["audit", str(path), "--complete"]) == 0
    assert "10 with exactly one FINISHED run" in capsys.readouterr().out
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep")
    runs = trial_runs_only(client.search_runs([exp.experiment_id]))
    copy = client.create_run(exp.experiment_id, tags={"sweep": "rep", "trial_id": runs[0].data.tags["trial_id"]})
    client.set_terminated(copy.info.run_id, "FINISHED")
    stray = client.create_run(exp.experiment_id, tags={"sweep": "rep", "trial_id": "renamed-group-0000"})
    client.set_terminated(stray.info.run_id, "FINISHED")
    client.delete_run(runs[1].info.run_id)  # a lost trial
    assert main(["audit", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"duplicated {runs[0].data.tags['trial_id']}: 2 FINISHED runs" in out
    assert "stray run of trial renamed-group-0000" in out and "not yet run: 1" in out
    assert out.rstrip().endswith("audit: FAILED")


def test_a_damaged_export_is_a_clear_error(tmp_path, filled_store, capsys):
    path, _ = filled_store
    bad = tmp_path / "runs.jsonl"
    good = (Path(__file__).resolve().parents[1] / "results" / "table1-mnist-cpu" / "runs.jsonl").read_text().splitlines()[0]
    bad.write_text(good + '\nnot json\n')
    assert main(["import", str(bad), str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "line 2, is not JSON" in err and "Traceback" not in err
    bad.write_text(good + '\n{"format": "robustsweep-runs/1", "run_name": "r", "tags": []}\n')  # JSON, not a run
    assert main(["import", str(bad), str(path), "--tracking-uri", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert "line 2, lacks trial_id, status, start_time, end_time, tags, params, metrics, inputs" in err
    assert "Traceback" not in err and not (tmp_path / "x.db").exists()
    assert main(["import", str(tmp_path / "none.jsonl"), str(path)]) == 2
    assert "No exported runs at" in capsys.readouterr().err


def _study_frame(ratio_slope: float = -0.02, eig_slope: float = 1.0, ratio_group_slope: float | None = None,
                 best_momentum: tuple[float, float] | None = None) -> pd.DataFrame:
    """Hand-made runs, 3 seeds x 6 batch sizes, with the trends given (noise far below them) and a small
    seed offset (the seed-to-seed spread that sets the equivalence margin)."""
    rows = []
    rng = np.random.default_rng(0)
    batches = [32, 64, 128, 256, 512, 1024]
    base = dict(dataset="mnist", variant="sgd", schedule="constant", weight_decay=0.0, diverged=False,
                collapsed=False, lr_batch_ratio=np.nan, momentum=0.0)

    def robustness(value):
        return {"fgsm_ratio_eps0.03": value, "pgd_ratio_eps0.03": value}

    for seed in range(3):
        for i, b in enumerate(batches):
            for lr in (0.01, 0.1):
                rows.append({**base, "lr": lr, "batch_size": b, "seed": seed, "run_id": f"c{seed}{b}{lr}",
                             "clean_acc": 0.95 + 0.005 * seed,
                             **robustness(0.8 + 0.01 * seed + ratio_slope * i + rng.normal(0, 1e-4)),
                             "hessian_top_eig": 10 + eig_slope * i + rng.normal(0, 1e-3)})
            if ratio_group_slope is not None:
                rows.append({**base, "lr": b * 0.00015625, "lr_batch_ratio": 0.00015625, "batch_size": b,
                             "seed": seed, "run_id": f"r{seed}{b}", "clean_acc": 0.95 + 0.005 * seed,
                             **robustness(0.8 + 0.01 * seed + ratio_group_slope * i + rng.normal(0, 1e-3)),
                             "hessian_top_eig": 10.0})
            if best_momentum is not None:
                for lr in (0.01, 0.1):
                    for m in (0.5, 0.9):
                        good = (lr, m) == best_momentum
                        rows.append({**base, "lr": lr, "momentum": m, "batch_size": b, "seed": seed,
                                     "run_id": f"m{seed}{b}{lr}{m}", "clean_acc": 0.99 if good else 0.9,
                                     **robustness(0.95 if good else 0.7), "hessian_top_eig": 5.0})
    return pd.DataFrame(rows)


def test_todays_four_claims_by_their_new_ids():
    """The four claims the report used to test, as entries of the claims registry (blocked by seed, FGSM
    beside PGD, equivalence for "constant", the momentum claim with the study's exception)."""
    from robustsweep.report.claims import by_id, evaluate_claims

    def verdict(df, claim_id, eps="0.03"):
        results = evaluate_claims(df, {"mnist": [0.03]}, claims=(by_id(claim_id),))
        (result,) = [r for r in results if r.eps is None or f"{r.eps:g}" == eps]
        return result

    falls, sharper = "mnist-large-batch-lowers-robustness", "mnist-large-batch-sharpens-minima"
    assert verdict(_study_frame(), falls).verdict == "supported"
    assert verdict(_study_frame(), sharper).verdict == "supported"
    assert verdict(_study_frame(ratio_slope=+0.02, eig_slope=-1.0), falls).verdict == "contradicted"
    assert verdict(_study_frame(ratio_slope=+0.02, eig_slope=-1.0), sharper).verdict == "contradicted"
    flat = _study_frame(ratio_slope=0.0, eig_slope=0.0)  # noise only: no trend either way
    assert verdict(flat, falls).verdict == verdict(flat, sharper).verdict == "inconclusive"
    # constant lr/bs ratio: flat within the seed spread supports it; a trend of 5 spreads contradicts it
    constant = "mnist-ratio-keeps-accuracy-and-robustness"
    assert verdict(_study_frame(ratio_group_slope=0.0), constant).verdict == "supported"
    assert verdict(_study_frame(ratio_group_slope=-0.02), constant).verdict == "contradicted"
    # lr 0.1 + momentum 0.9 best: the study's exception leaves batch sizes above 256, 6 pairs per comparison,
    # too few for 15 sub-tests, whichever cell is best; the statistic says so
    best = "mnist-lr-0.1-momentum-0.9-best"
    for cell in ((0.1, 0.9), (0.01, 0.5)):
        result = verdict(_study_frame(best_momentum=cell), best)
        assert result.verdict == "inconclusive" and "cannot reach alpha" in result.statistic
    assert "higher in 6/6" in verdict(_study_frame(best_momentum=(0.1, 0.9)), best).statistic


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


#: Appended to a copy of the page (which itself has no scripts): records what the browser laid out.
_PROBE = """<script>
window.addEventListener("load", () => {
  const b = document.body;
  b.setAttribute("data-overflow", String(document.documentElement.scrollWidth - document.documentElement.clientWidth));
  b.setAttribute("data-broken", String([...document.images].filter(i => !i.complete || !i.naturalWidth).length));
  b.setAttribute("data-images", String(document.images.length));
  // table of contents: no item's text on another item's text or number (an outside marker, taken as the
  // 1.8em left of its item: wider than "10." and its gap)
  const em = parseFloat(getComputedStyle(document.querySelector("nav li")).fontSize);
  const items = [...document.querySelectorAll("nav li")].map(li => {
    const range = document.createRange();
    range.selectNodeContents(li);
    const r = li.getBoundingClientRect();
    return {text: [...range.getClientRects()], number: {left: r.left - 1.8 * em, right: r.left, top: r.top, bottom: r.top + em}};
  });
  const meet = (p, q) => p.left < q.right - 0.5 && q.left < p.right - 0.5 && p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5;
  let clashes = 0;
  items.forEach((p, i) => items.forEach((q, j) => {
    if (i !== j && p.text.some(t => meet(t, q.number) || (i < j && q.text.some(u => meet(t, u))))) clashes++;
  }));
  b.setAttribute("data-toc", String(clashes));
  b.setAttribute("data-items", String(items.length));
});</script>"""


def _lay_out(page, width: int) -> tuple[dict[str, int], list[str]]:
    """The probe's numbers for ``page`` in a ``width``-px-wide headless chromium, and its console lines."""
    import subprocess

    probe = page.with_name(f"probe{width}.html")
    probe.write_text(page.read_text() + _PROBE)
    result = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={width},900",
                             "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                             probe.as_uri()], capture_output=True, text=True, timeout=120)
    values = {k: int(v) for k, v in re.findall(r'data-(overflow|broken|images|toc|items)="(-?\d+)"', result.stdout)}
    assert set(values) == {"overflow", "broken", "images", "toc", "items"}, result.stderr[-2000:]
    return values, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def _drawn_colour(handle) -> str:
    """The colour of a legend entry's artist (a line, an errorbar's bars, a scatter's points)."""
    from matplotlib.colors import to_hex
    from matplotlib.lines import Line2D

    if isinstance(handle, Line2D):
        return to_hex(handle.get_color())
    colours = handle.get_edgecolor() if len(handle.get_facecolor()) == 0 else handle.get_facecolor()
    return to_hex(colours[0])


def _same_hue(drawn: str, colour: str) -> bool:
    """The variant's colour, or a shade of it (dark to light, as single-variant figures draw settings)."""
    import colorsys

    from matplotlib.colors import to_rgb

    (h, s, _), (h0, s0, _) = colorsys.rgb_to_hsv(*to_rgb(drawn)), colorsys.rgb_to_hsv(*to_rgb(colour))
    return s < 0.02 if s0 < 0.02 else abs(h - h0) < 0.01 and s > 0.02


def assert_figures_readable(figures) -> None:
    """Issue 22.4: each figure has one legend, off its panels, at 9 pt or more, and draws a variant in its
    page-wide colour (hue)."""
    from robustsweep.report.figures import VARIANT_COLOURS, legend_clashes

    assert figures
    for fig in figures:
        title = fig._suptitle.get_text() if fig._suptitle else "?"
        assert legend_clashes(fig) == [], title
        assert len(fig.legends) == 1 and not any(ax.get_legend() for ax in fig.axes), title
        legend = fig.legends[0]
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            variant = text.get_text().split(", ")[0]
            assert _same_hue(_drawn_colour(handle), VARIANT_COLOURS[variant]), (title, text.get_text())


@pytest.mark.skipif(_chromium() is None, reason="no chromium here: install Debian's `chromium` (apt-get install "
                                                "chromium; .ci/run does) to render the report page headless")
def test_report_page_renders_in_a_browser_without_errors_or_horizontal_overflow(filled_store, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    path, _ = filled_store
    out = tmp_path / "out"
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)  # the report's figures, kept to inspect
    try:
        make_report(str(path), out)
        assert len(figures) >= 10
        assert_figures_readable(figures)
    finally:
        for fig in figures:
            close(fig)
    values, console = _lay_out(out / "index.html", 1400)
    assert console == []  # no script errors, no failed loads reported by the page
    assert values["images"] >= 10 and values["broken"] == 0
    assert values["overflow"] <= 0, "the page is wider than a 1400-px window"
    assert values["items"] >= 7 and values["toc"] == 0, "table of contents items overlap"
    # a phone (issue 22.4): the table of contents reflows, nothing overlaps, no sideways scrolling
    phone, console = _lay_out(out / "index.html", 390)
    assert console == []
    assert phone["overflow"] <= 0, "the page is wider than a 390-px phone"
    assert phone["toc"] == 0, "table of contents items overlap on a 390-px phone"
    # readable headers, a table of contents, and captions under the figures
    page = (out / "index.html").read_text()
    assert "<th>PGD / clean, eps 0.15</th>" in page and "pgd_ratio_eps0.15</th>" not in page
    assert '<nav><ol><li><a href="#claims">' in page and 'name="viewport"' in page
    assert page.count("<figcaption>") == page.count("<img ")


EXTRA_SEED = """
name: rep-seed2
storage_path: {folder}/ray_results
mlflow: {{tracking_uri: "sqlite:///{folder}/mlflow.db", experiment: rep}}
seeds: [2]
base: {{dataset: mnist, data_root: "{data}", {tiny}, attacks: [fgsm, pgd, autoattack], autoattack_subset: 20,
        autoattack_steps: 5, autoattack_targets: 2, curvature: [top_eig, trace], hessian_trace_probes: 4}}
groups:
  - name: constant-lr
    set: {{lr: 0.05}}
    grid: {{variant: [sgd, adam], batch_size: [25, 50]}}
  - name: fit-control
    set: {{lr: 0.05, stop_train_acc: 0.3, epochs: 3}}
    grid: {{batch_size: [25, 50]}}
    seeds: [0]
"""


def test_sweeps_of_one_grid_report_as_one_state_their_scale_and_compare_verdicts(filled_store, tmp_path, capsys,
                                                                                mnist_root):
    path, uri = filled_store
    extra = path.parent / "rep-seed2.yaml"
    extra.write_text(EXTRA_SEED.format(folder=path.parent, data=mnist_root, tiny=TINY))
    assert main(["launch", str(extra), "--debug"]) == 0
    out = tmp_path / "both"
    assert main(["report", str(path), str(extra), "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1, 2] and set(runs["sweep"]) == {"rep", "rep-seed2"}
    assert runs["autoattack_acc_eps0.03"].notna().sum() == 6 and runs["hessian_trace"].notna().sum() == 6
    assert (runs["lr_x_top_eig"] - runs["final_lr"] * runs["hessian_top_eig"]).abs().max() < 1e-12
    page = (out / "index.html").read_text()
    # what was run, said at the top, with where the runs differ
    assert "What was run" in page and "1 (14 runs); 3 (2 runs) epochs on the first 300 training examples" in page
    assert "Early stop: 2 runs trained until their training accuracy reached 0.3, at most 3 epochs." in page
    assert "Attacks: differs across runs:" in page and "AutoAttack on the first 20 of those, 5 steps" in page
    assert "Seeds: 0, 1, 2." in page
    # the under-training control: its two runs (trained to 30% training accuracy) beside the seed-0 runs of the
    # same rate trained for 1 epoch, in a section of their own and in no claim (two batch sizes: too few for a
    # trend, on either side)
    control = pd.read_csv(out / "control.csv", keep_default_na=False)
    assert len(control) == 4 and set(control["verdict, fitted"]) == set(control["verdict, fixed epochs"]) == {
        "inconclusive"}
    assert "Under-training control" in page and "until their training accuracy over an epoch reached 0.3" in page
    # its group's table shows the epoch each run stopped at (its epochs setting is only the cap); no other group's
    tables = (out / "tables.md").read_text()
    fit_table = tables.split("### fit-control")[1].split("###")[0]
    header = fit_table.strip().splitlines()[0]
    assert "stopped_epoch" in header and "stopped_epoch" not in tables.split("### fit-control")[0].split("## ")[-1]
    stopped = runs[runs["group"] == "fit-control"].sort_values("batch_size")["stopped_epoch"]
    cells = [row.split("|")[header.split("|").index(" stopped_epoch ")].strip()
             for row in fit_table.strip().splitlines()[2:]]
    assert [float(c) for c in cells] == list(stopped) and stopped.notna().all()
    assert "fitted: " in page and "n=6 runs (3 seeds x 2 batch sizes)" in pd.read_csv(out / "claims.csv").set_index(
        "id").loc["mnist-large-batch-lowers-clean-accuracy", "statistic"]
    gap = pd.read_csv(out / "autoattack_gap.csv")
    assert len(gap) == 6 * 2 and (gap["gap"] == gap["pgd_acc"] - gap["autoattack_acc"]).all()
    assert "PGD against AutoAttack on the same images" in page
    # the claims resting on PGD, again with PGD and with AutoAttack on AutoAttack's images (seed 2 and the
    # control have them; the control's runs are in no claim): one row per such claim and eps
    under = pd.read_csv(out / "claims_autoattack.csv", dtype={"eps": str}).set_index(["id", "eps"])
    assert ("mnist-large-batch-lowers-robustness", "0.15") in under.index
    assert "n=2 runs (1 seed x 2 batch sizes)" in under.loc[("mnist-large-batch-lowers-robustness", "0.15"),
                                                             "statistic, AutoAttack"]
    assert "The claims that rest on PGD, with AutoAttack" in page
    # the Scale section: verdicts here beside the other sweep's, each change named
    assert main(["report", str(extra), "--compare", str(path), "--out", str(tmp_path / "cmp")]) == 0
    scale = pd.read_csv(tmp_path / "cmp" / "scale.csv", keep_default_na=False)  # empty cells as ""
    assert {"verdict (rep)", "verdict (rep-seed2)", "changed"} <= set(scale.columns)
    assert all((c == "") == (a == b) for a, b, c in zip(scale["verdict (rep)"], scale["verdict (rep-seed2)"],
                                                          scale["changed"]))
    page = (tmp_path / "cmp" / "index.html").read_text()
    assert "Scale: these verdicts beside those of rep" in page
    # changes first; claims neither sweep ran (every CIFAR-10 one here) only named, after the tables
    changed = list(scale["changed"] != "")
    assert changed == sorted(changed, reverse=True)
    neither = (scale[["verdict (rep)", "verdict (rep-seed2)"]] == "not run").all(axis=1)
    assert neither.tail(int(neither.sum())).all() and set(scale["dataset"][neither]) >= {"cifar10"}
    assert f"<h3>Changed ({sum(changed) - int((neither & (scale['changed'] != '')).sum())})</h3>" in page
    assert "Not run in either sweep: cifar-" in page and page.index("Not run in either") > page.index("Unchanged (")
    # one sweep twice would count its runs twice
    capsys.readouterr()
    assert main(["report", str(path), str(path), "--out", str(tmp_path / "twice")]) == 2
    assert "would count it twice" in capsys.readouterr().err


def test_study_figure_colours_by_variant_styles_by_setting_and_keeps_its_legend_off_the_panels(tmp_path,
                                                                                              monkeypatch):
    import matplotlib.pyplot as plt

    from robustsweep.report.figures import LINE_STYLES, VARIANT_COLOURS
    from robustsweep.report.study_figures import STUDY_FIGURES, study_figure

    df = _study_runs().assign(**{"fgsm_ratio_eps0.03": 0.8, "pgd_ratio_eps0.03": 0.7})
    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", figures.append)
    try:
        for figure in STUDY_FIGURES:
            study_figure(df, figure, [0.03], tmp_path / f"figure{figure.number}.png")
        assert len(figures) == 5
        assert_figures_readable(figures)
        legend = figures[0].legends[0]  # Figure 1: colour by variant, style by lr, the same lr one style
        assert [t.get_text() for t in legend.get_texts()] == ["sgd, lr=0.01", "sgd, lr=0.1", "svrg, lr=0.01",
                                                               "svrg, lr=0.1", "adam, lr=0.0005"]
        drawn = {line.get_label(): line.lines[0] for line in figures[0].axes[0].containers}  # the first panel
        assert set(drawn) == {t.get_text() for t in legend.get_texts()}
        assert {k: v.get_color() for k, v in drawn.items()} == {
            k: VARIANT_COLOURS[k.split(",")[0]] for k in drawn}
        style = {k: (v.get_linestyle(), v.get_marker()) for k, v in drawn.items()}
        assert style["sgd, lr=0.01"] == style["svrg, lr=0.01"] != style["sgd, lr=0.1"] == style["svrg, lr=0.1"]
        assert len(set(style.values())) == 3 and style["sgd, lr=0.01"][1] == LINE_STYLES[0][1]
        assert all(t.get_fontsize() >= 9 for t in legend.get_texts())
    finally:
        for fig in figures:
            close(fig)


def test_a_study_figure_whose_runs_do_not_match_its_title_is_left_out(tmp_path):
    """The smoke sweep (SGD with momentum, Adam without) put Adam alone under "SGD variants"."""
    from robustsweep.report.study_figures import STUDY_FIGURES

    from robustsweep.report.study_figures import study_figure

    figure1 = STUDY_FIGURES[0]
    df = _study_runs().assign(**{"fgsm_ratio_eps0.03": 0.8, "pgd_ratio_eps0.03": 0.7})

    adam_alone = df[(df["variant"] == "adam") | (df["momentum"] > 0)]
    assert study_figure(adam_alone, figure1, [0.03], tmp_path / "f1.png") is None
    adams = pd.concat([adam_alone, adam_alone[adam_alone["variant"] == "adam"].assign(variant="adamw")])
    assert study_figure(adams, figure1, [0.03], tmp_path / "f1.png") is None  # two variants, neither SGD's
    assert not (tmp_path / "f1.png").exists()
    sgd_alone = df[(df["group"] == "constant-lr") & (df["variant"] == "sgd")]  # one variant: nothing compared
    assert study_figure(sgd_alone, figure1, [0.03], tmp_path / "f1.png") is None
    with_sgd = df[df["variant"].isin(["adam", "sgd"]) & (df["group"].isin(["adam", "constant-lr"]))]
    assert study_figure(with_sgd, figure1, [0.03], tmp_path / "f1.png") == tmp_path / "f1.png"

def test_tables_format_each_metric_column_one_way():
    """Issue 22.4: the eigenvalue column mixed ``151.5`` and ``23.1103``; a column has one number of decimals."""
    from robustsweep.report.tables import display_table

    df = pd.DataFrame({"variant": ["a", "a", "b", "c", "d"], "batch_size": [32] * 5,
                       "clean_acc": [0.9, 0.92, 0.95, 1.0, np.nan], "hessian_top_eig": [151.52, 151.48, 23.1103, 2.2, 3.0],
                       "stopped_epoch": [6.0, 7.0, 12.0, 29.0, np.nan], "diverged": [False] * 5})
    metrics = ["clean_acc", "hessian_top_eig", "stopped_epoch"]
    table = display_table(aggregate(df, ["variant", "batch_size"], metrics),
                          ["variant", "batch_size"], metrics).set_index("variant")
    assert list(table["hessian_top_eig"]) == ["151.5 ± 0.028 (n=2)", "23.1", "2.2", "3.0"]
    # whole numbers above 1 (epochs) without decimals, unless a mean over seeds is not whole
    assert list(table["stopped_epoch"]) == ["6.50 ± 0.71 (n=2)", "12.00", "29.00", ""]
    whole = display_table(aggregate(df[df["variant"] != "a"], ["variant"], metrics), ["variant"], metrics)
    assert list(whole["stopped_epoch"]) == ["12", "29", ""] and list(whole["clean_acc"])[:2] == ["0.9500", "1.0000"]
    assert list(table["clean_acc"]) == ["0.9100 ± 0.014 (n=2)", "0.9500", "1.0000", ""]
    for column in metrics:  # one number of decimals down each column
        decimals = {len(cell.split(" ")[0].split(".")[1]) for cell in table[column] if cell}
        assert len(decimals) == 1, (column, list(table[column]))


def test_cost_table_has_every_phase_the_runs_took_in_their_order_and_sums_what_each_variant_took():
    """The study-scale run's cost table left out AutoAttack and the trace (a fixed list of the study's
    phases), the second-largest cost of its trials."""
    from robustsweep.report.tables import cost_table

    nan = np.nan
    runs = pd.DataFrame({"variant": ["sgd", "sgd", "adam"], "seconds_training": [100.0, 200.0, 300.0],
                         "seconds_test_passes": [10.0, 20.0, 30.0], "seconds_clean_eval": [1.0, 1.0, 1.0],
                         "seconds_fgsm": [nan, nan, nan], "seconds_pgd": [5.0, 7.0, 9.0],
                         "seconds_autoattack": [50.0, nan, nan], "seconds_hessian_trace": [3.0, 5.0, 7.0],
                         "seconds_my_probe": [1.0, 1.0, 1.0]})
    cost = cost_table(runs).set_index("variant")
    assert list(cost.columns) == ["trials", "training", "test passes, all epochs", "clean evaluation", "PGD",
                                  "AutoAttack (APGD-CE + APGD-T)", "Hessian trace", "my_probe",
                                  "sum of phases, s/trial"]
    # a phase's mean is over the runs that took it; the sum, over each run's own sum (AutoAttack: one run)
    assert cost.loc["sgd", "AutoAttack (APGD-CE + APGD-T)"] == 50
    assert cost.loc["sgd", "sum of phases, s/trial"] == ((100 + 10 + 1 + 5 + 50 + 3 + 1) + (200 + 20 + 1 + 7 + 5 + 1)) / 2
    assert math.isnan(cost.loc["adam", "AutoAttack (APGD-CE + APGD-T)"])
    assert cost.loc["adam", "sum of phases, s/trial"] == 300 + 30 + 1 + 9 + 7 + 1
    assert cost.loc["all (hours, summed)", "AutoAttack (APGD-CE + APGD-T)"] == round(50 / 3600, 3)
    assert cost.loc["all (hours, summed)", "sum of phases, s/trial"] == round(
        (600 + 60 + 3 + 21 + 50 + 15 + 3) / 3600, 3)


def test_cost_table_gives_what_whole_trials_cost_over_the_runs_that_logged_it():
    from robustsweep.report.tables import cost_table

    runs = pd.DataFrame({"variant": ["sgd", "sgd", "adam"], "seconds_training": [100.0, 200.0, 300.0],
                         "trial_seconds": [130.0, np.nan, 400.0]})  # the second predates trial_seconds
    cost = cost_table(runs).set_index("variant")
    assert list(cost.columns) == ["trials", "training", "sum of phases, s/trial", "whole trial, s/trial",
                                  "trials with whole-trial time"]
    assert cost.loc["sgd", "whole trial, s/trial"] == 130 and cost.loc["adam", "whole trial, s/trial"] == 400
    assert cost.loc["all (hours, summed)", "whole trial, s/trial"] == round(530 / 3600, 3)
    assert list(cost["trials with whole-trial time"]) == [1, 1, 2] and list(cost["trials"]) == [1, 2, 3]


def test_eigenvalue_panels_draw_the_edge_of_stability_2_over_lr_for_constant_rate_sgd_runs():
    import matplotlib.pyplot as plt

    from robustsweep.report.figures import draw_stability_bounds

    runs = pd.DataFrame({"variant": ["sgd", "sgd", "adam", "sgd", "sgd", "sgd"],
                         "schedule": ["constant"] * 5 + ["step"], "lr": [0.01, 0.1, 0.0005, None, None, 0.5],
                         "lr_batch_ratio": [None, None, None, 0.001, 0.001, None],
                         "batch_size": [32, 32, 32, 64, 128, 32]})
    fig, ax = plt.subplots()
    try:
        draw_stability_bounds(ax, runs)
        flat = sorted(round(line.get_ydata()[0], 6) for line in ax.lines if len(set(line.get_ydata())) == 1)
        assert flat == [20.0, 200.0]  # 2/0.1 and 2/0.01; none for Adam's rate nor the step schedule's
        (falling,) = [line for line in ax.lines if len(set(line.get_ydata())) > 1]
        assert list(falling.get_xdata()) == [64, 128] and list(falling.get_ydata()) == [31.25, 15.625]
        assert all(line.get_label().startswith("_") for line in ax.lines)  # kept out of the legend
    finally:
        plt.close(fig)


def test_what_was_run_names_the_measurements_of_runs_that_predate_the_setting():
    # runs logged before the attacks/curvature settings existed have no such param: they measured the default set
    from robustsweep.report.scale import scale_statement

    row = {"dataset": "mnist", "epochs": 6, "subset": 30000, "test_subset": 0, "attack_subset": 2000, "pgd_steps": 20,
           "hessian_samples": 1000, "seed": 0, "sweep": "s", "sweep_flags": "", "git_commit": "abc", "device_name": "cpu"}
    old = scale_statement(pd.DataFrame([{**row, "attacks": None, "curvature": None}]))
    assert "Attacks: fgsm, pgd (the runs predate the attacks setting" in old[1]
    assert "Curvature: top_eig (the runs predate the curvature setting" in old[2]
    new = scale_statement(pd.DataFrame([{**row, "attacks": "['fgsm', 'pgd', 'autoattack']", "curvature": "['top_eig']",
                                         "autoattack_subset": 500, "autoattack_steps": 100, "autoattack_targets": 9}]))
    assert new[1].startswith("Attacks: fgsm, pgd, autoattack on the first 2,000 test images; PGD-20 steps; AutoAttack")
    assert new[2].startswith("Curvature: top_eig on 1000 training examples")


def test_lines_without_error_bars_join_a_panels_lines_of_one_style_into_one_artist_with_every_point():
    # A learning-curve figure of 10,000 runs drew 10,000 artists; the lines of one panel, variant and setting
    # are now one polyline broken by NaN: the same points, in one artist per style.
    import math

    import matplotlib.pyplot as plt

    from robustsweep.report.figures import Lines

    fig, (ax, other) = plt.subplots(1, 2)
    lines = Lines()
    runs = [([1, 2, 3], [0.5 + i / 10, 0.6 + i / 10, 0.7 + i / 10]) for i in range(5)]
    for x, y in runs:
        lines.add(ax, x, y, variant="sgd", setting="lr=0.1")
    lines.add(ax, [1, 2], [0.2, 0.3], variant="sgd", setting="lr=0.01")
    lines.add(other, [1, 2], [0.9, 0.95], variant="sgd", setting="lr=0.1")
    legend = lines.draw(fig, errorbars=False)
    assert len(ax.lines) == 2 and len(other.lines) == 1
    joined = next(line for line in ax.lines if line.get_label() == "sgd, lr=0.1")
    xs, ys = list(joined.get_xdata()), list(joined.get_ydata())
    breaks = [i for i, v in enumerate(xs) if math.isnan(v)]
    assert breaks == [3, 7, 11, 15] and [i for i, v in enumerate(ys) if math.isnan(v)] == breaks
    assert [(x, y) for x, y in zip(xs, ys) if not math.isnan(x)] == [p for x, y in runs for p in zip(x, y)]
    assert sorted(t.get_text() for t in legend.get_texts()) == ["sgd, lr=0.01", "sgd, lr=0.1"]
    plt.close(fig)
    # with error bars every line stays its own (a batch-size figure's lines are one configuration each)
    fig, ax = plt.subplots()
    lines = Lines()
    for x, y in runs:
        lines.add(ax, x, y, [0.01] * 3, variant="sgd", setting="lr=0.1")
    lines.draw(fig)
    assert len(ax.containers) == 5
    plt.close(fig)


def test_a_runs_curves_are_one_frame_by_epoch_keeping_a_twice_logged_steps_last_value():
    # collect's per-run curves (10,000 of them in a big sweep) are built from plain lists in one step
    from mlflow.entities import Metric

    from robustsweep.report.collect import CURVE_KEYS, _history

    points = {"train_loss": [Metric("train_loss", 0.5, 10, 1), Metric("train_loss", 0.4, 20, 2),
                             Metric("train_loss", 0.41, 30, 2)],  # step 2 logged twice (a resumed epoch)
              "test_acc": [Metric("test_acc", 0.8, 5, 0), Metric("test_acc", 0.9, 25, 2)]}
    curves = _history(points)
    assert list(curves.columns) == list(CURVE_KEYS) and list(curves.index) == [0, 1, 2]
    assert curves["train_loss"].tolist()[1:] == [0.5, 0.41] and math.isnan(curves["train_loss"][0])
    assert curves["test_acc"][0] == 0.8 and math.isnan(curves["test_acc"][1]) and curves["test_acc"][2] == 0.9
    assert curves["epoch_seconds"].isna().all() and curves.dtypes.eq(float).all()
    assert _history({}).empty
