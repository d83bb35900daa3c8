"""One parent MLflow run per sweep (robustsweep.sweep_run): trials nested under it and named by what they
are, reused by every later launch, made for sweeps logged before parents existed, carried by export and
import, checked by audit. (The Ray path, with a driver killed and resumed: tests/test_ray.py.)"""

import json
from pathlib import Path

from mlflow.tracking import MlflowClient

from robustsweep.cli import main
from robustsweep.sweep import SweepOverrides, load_sweep
from robustsweep.sweep_run import PARENT_TAG, find_parents

REPO = Path(__file__).resolve().parents[1]
TINY = ("dataset: mnist, device: cpu, subset: 200, test_subset: 100, attack_subset: 20, pgd_steps: 1, "
        "hessian_samples: 16, hessian_iters: 2, eval_batch_size: 100")
#: The study-scale run's flags (results/table1-mnist/RUN.md), for its committed export.
STUDY_FLAGS = ["--local", "--gpu", "0", "--only", "mnist-*", "--name", "table1-mnist", "--set", "attack_subset=2000",
               "--set", "attacks=[fgsm,pgd,autoattack]", "--set", "autoattack_subset=500",
               "--set", "curvature=[top_eig,trace]", "--set", "hessian_trace_probes=50"]


def _sweep(tmp_path, mnist_root) -> Path:
    path = tmp_path / "par.yaml"
    path.write_text(f"""
name: par
description: two tiny trials
mlflow: {{tracking_uri: "sqlite:///{tmp_path / 'm.db'}"}}
base: {{data_root: "{mnist_root}", epochs: 1, {TINY}}}
groups:
  - name: plain
    set: {{lr: 0.05}}
  - name: heavy
    set: {{lr: 0.05, momentum: 0.9}}
""")
    return path


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    every = client.search_runs([experiment_id])
    return client, find_parents(client, experiment_id, experiment), [r for r in every if "trial_id" in r.data.tags]


def test_a_debug_launch_nests_named_trials_under_one_parent_that_the_next_launch_reuses(tmp_path, mnist_root,
                                                                                      capsys):
    path = _sweep(tmp_path, mnist_root)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    spec = load_sweep(path)
    for _ in range(2):  # the second launch trains nothing and reopens the same parent
        assert main(["launch", str(path), "--debug"]) == 0
    client, parents, trials = _runs(uri, "par")
    (parent,) = parents
    assert parent.info.run_name == "sweep par" and parent.info.status == "FINISHED"
    assert "two tiny trials" in parent.data.tags["mlflow.note.content"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {
        "sweep/par.yaml", "sweep/robustsweep-sweep.json"}
    saved = json.loads(Path(client.download_artifacts(parent.info.run_id, "sweep/robustsweep-sweep.json",
                                                      str(tmp_path))).read_text())
    assert {t["trial_id"] for t in saved["trials"]} == {t.trial_id for t in spec.trials}
    # the trials' counts, once per launch
    assert [m.value for m in client.get_metric_history(parent.info.run_id, "trials_finished")] == [2, 2]
    assert parent.data.metrics["trials_total"] == 2 and parent.data.metrics["trials_failed"] == 0
    # the trials: nested under it, named by what they are, their ids kept in their tags
    assert len(trials) == 2 and all(r.data.tags[PARENT_TAG] == parent.info.run_id for r in trials)
    assert {r.info.run_name for r in trials} == {"sgd lr=0.05 bs=128 seed=0", "sgd lr=0.05 bs=128 momentum=0.9 seed=0"}
    capsys.readouterr()
    assert main(["audit", str(path), "--complete"]) == 0
    assert f"parent run: {parent.info.run_id}" in capsys.readouterr().out


def test_runs_logged_before_parents_existed_are_adopted_and_renamed_by_the_next_launch(tmp_path, mnist_root, capsys):
    path = _sweep(tmp_path, mnist_root)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["launch", str(path), "--debug"]) == 0
    client, (parent,), trials = _runs(uri, "par")
    # what a sweep logged by the code before parents looks like: no parent, runs named by their trial ids
    client.delete_run(parent.info.run_id)
    for run in trials:
        client.delete_tag(run.info.run_id, PARENT_TAG)
        client.set_tag(run.info.run_id, "mlflow.runName", run.data.tags["trial_id"])
    capsys.readouterr()
    assert main(["audit", str(path)]) == 0  # a sweep without a parent is sound, and said to be one
    assert "parent run: 0 (logged before parent runs existed" in capsys.readouterr().out
    assert main(["launch", str(path), "--debug"]) == 0
    assert "2 earlier runs of sweep par nested under its parent run" in capsys.readouterr().out
    client, (again,), trials = _runs(uri, "par")
    assert again.info.run_id != parent.info.run_id
    assert all(r.data.tags[PARENT_TAG] == again.info.run_id for r in trials)
    assert all(r.info.run_name.startswith("sgd lr=0.05") for r in trials)


def test_a_legacy_export_imports_under_a_new_parent_and_a_new_export_carries_it(tmp_path, capsys):
    # an export as written before parents: the study run's, without its parent's record, runs named by trial id
    committed = [json.loads(line) for line in (REPO / "results" / "table1-mnist" / "runs.jsonl").read_text().splitlines()]
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(json.dumps({**r, "run_name": r["trial_id"]}) + "\n" for r in committed
                              if r.get("kind") != "sweep"))
    count = len(legacy.read_text().splitlines())
    assert count and all("kind" not in json.loads(line) for line in legacy.read_text().splitlines())
    # the parent counts collapsed trials apart from finished ones (sweep_run.trial_counts)
    finished = sum(json.loads(line)["tags"].get("outcome", "finished") == "finished"
                   for line in legacy.read_text().splitlines())
    for _ in range(2):  # importing twice makes no second parent
        assert main(["import", str(legacy), str(REPO / "sweeps" / "table1.yaml"), *STUDY_FLAGS]) == 0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # --local: ./mlflow.db
    client, (parent,), trials = _runs(uri, "table1-mnist")
    assert len(trials) == count and all(r.data.tags[PARENT_TAG] == parent.info.run_id for r in trials)
    spec = load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(
        local=True, gpu=0, only=("mnist-*",), name="table1-mnist", settings=tuple(STUDY_FLAGS[8::2])))
    names = {t.trial_id: t.run_name for t in spec.trials}
    assert {r.info.run_name for r in trials} == {names[r.data.tags["trial_id"]] for r in trials}
    assert parent.data.metrics["trials_total"] == len(spec.trials) == 144
    assert parent.data.metrics["trials_finished"] == finished
    capsys.readouterr()
    assert main(["audit", str(REPO / "sweeps" / "table1.yaml"), *STUDY_FLAGS]) == 0
    assert f"parent run: {parent.info.run_id}" in capsys.readouterr().out

    # export: the parent first, then the trials; imported elsewhere, the parent is made again from it
    out = tmp_path / "again.jsonl"
    assert main(["export", str(REPO / "sweeps" / "table1.yaml"), *STUDY_FLAGS, "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["kind"] == "sweep" and len(lines) == count + 1
    assert all(PARENT_TAG not in line["tags"] for line in lines)  # an id of this store means nothing elsewhere
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main(["import", str(out), str(REPO / "sweeps" / "table1.yaml"), *STUDY_FLAGS,
                 "--tracking-uri", elsewhere]) == 0
    client, (copy,), trials = _runs(elsewhere, "table1-mnist")
    assert copy.info.run_name == "sweep table1-mnist" and copy.data.metrics["trials_finished"] == finished
    assert all(r.data.tags[PARENT_TAG] == copy.info.run_id for r in trials) and len(trials) == count
