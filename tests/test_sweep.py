"""Sweep files: validation errors, expansion, the study's grid, the cluster file."""

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from robustsweep.cli import main
from robustsweep.errors import ConfigError
from robustsweep.sweep import SweepOverrides, load_sweep

from .conftest import trial_runs_only

REPO = Path(__file__).resolve().parents[1]
#: Settings of a trial that takes a second on a CPU (with data_root and epochs).
TINY_DEBUG = ("dataset: mnist, device: cpu, subset: 200, test_subset: 100, attack_subset: 20, pgd_steps: 1, "
              "hessian_samples: 16, hessian_iters: 2, eval_batch_size: 100")

VALID = """
name: t
seeds: [0, 1]
base: {dataset: mnist, epochs: 1}
groups:
  - name: g1
    set: {variant: sgd}
    grid: {lr: [0.01, 0.1], batch_size: [32, 64]}
  - name: g2
    set: {variant: adam, lr: 0.001}
    points: [{weight_decay: 0.0}, {weight_decay: 0.01}]
"""


def _write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _tiny_sweep(tmp_path, mnist_root, name: str, epochs: int, groups: str):
    """A sweep of tiny real M1 trials logging to a SQLite store of its own: (store uri, sweep file)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    return uri, _write(tmp_path, f"""
name: {name}
mlflow: {{tracking_uri: "{uri}"}}
base: {{data_root: "{mnist_root}", epochs: {epochs}, {TINY_DEBUG}}}
groups:
{groups}""")


def test_expansion_counts_ids_and_absolute_paths(tmp_path):
    spec = load_sweep(_write(tmp_path, VALID), base_dir=tmp_path)
    assert len(spec.trials) == 2 * 2 * 2 + 2 * 2
    assert [r[:2] for r in spec.summary()] == [("g1", 8), ("g2", 4)]
    assert len({t.trial_id for t in spec.trials}) == 12
    t = spec.trials[0]
    assert t.config.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert t.config.mlflow_experiment == "t" and Path(t.config.data_root).is_absolute()
    assert spec.storage_path == str(tmp_path / "ray_results")
    # ids depend on what is trained, not where things are
    again = load_sweep(_write(tmp_path, VALID.replace("epochs: 1}", "epochs: 1, data_root: /elsewhere}"), "b.yaml"))
    assert [x.trial_id for x in again.trials] == [x.trial_id for x in spec.trials]


INVALID = [
    ("name: t\nbase: {}\ngroups: [{name: g}]\nbogus: 1\n", "at bogus: unknown key 'bogus'"),
    ("name: t\ngroups: [{name: g, grid: {lr: []}}]\n", "at groups[0].grid.lr: the axis is empty"),
    ("name: t\ngroups: [{name: g, grid: {lr: [0.1, fast]}}]\n", "at groups[0].grid.lr[1]: Invalid trial setting lr='fast'"),
    ("name: t\ngroups: [{name: g, grid: {lr: [0.1, -1]}}]\n", "lr=-1.0: must be a finite number > 0"),
    ("name: t\ngroups: [{name: g, set: {learning_rate: 0.1}}]\n", "at groups[0].set.learning_rate: unknown key"),
    ("name: t\ngroups: [{name: g, set: {batch_size: 0}}]\n", "batch_size=0: must be a finite number > 0"),
    ("name: t\ngroups: [{name: g, set: {variant: lion}}]\n", "variant='lion': allowed variants are"),
    ("name: t\ngroups: [{name: g, grid: {lr: 0.1}}]\n", "at groups[0].grid.lr: expected a list"),
    ("name: t\ngroups: []\n", "at groups: expected a non-empty list"),
    ("name: t\nseeds: []\ngroups: [{name: g}]\n", "at seeds: expected a non-empty list"),
    ("name: t\nresources: {gpu: -1}\ngroups: [{name: g}]\n", "at resources.gpu: expected a number >= 0"),
    ("name: t\nmax_concurrent: two\ngroups: [{name: g}]\n", "at max_concurrent: expected an integer >= 0"),
    ("name: t\ngroups: [{name: g, grid: {lr: [0.1, 0.1]}}]\n", "the axis repeats a value"),
    ("name: t\ngroups: [{name: a, set: {lr: 0.01}}, {name: b}]\n", "duplicates a trial of group 'a'"),
    ("name: t\ngroups: [{name: g, set: {seed: 3}}]\n", "seed is set by the sweep"),
    ("name: has space\ngroups: [{name: g}]\n", "at name: expected a sweep name"),
    ("name: t\ngroups: [{name: g, set: {lr: 0.1, lr_batch_ratio: 0.001}}]\n", "both set"),
    ("- just\n- a list\n", "must contain a mapping"),
    ("name: t\ngroups: [{name: g\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text, fragment", INVALID)
def test_invalid_sweep_files_exit_2_with_the_key_path(text, fragment, tmp_path, capsys):
    path = _write(tmp_path, text)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err, err
    assert str(path) in err and "Traceback" not in err
    assert err.count("\n") == 1  # one paragraph


def test_missing_sweep_file(capsys):
    assert main(["validate", "nope.yaml"]) == 2
    assert "Sweep file nope.yaml does not exist" in capsys.readouterr().err


def test_table1_expands_to_the_studys_full_grid(capsys):
    # Derived in the comment at the top of sweeps/table1.yaml: MNIST 48+6+24+6+24+24+12 = 144,
    # CIFAR-10 4+4+1+3+4 = 16, total 160 with one seed.
    spec = load_sweep(REPO / "sweeps" / "table1.yaml")
    counts = {name: n for name, n, _ in spec.summary()}
    assert counts == {"mnist-constant-lr": 48, "mnist-constant-lr-adam": 6, "mnist-ratio": 24,
                      "mnist-ratio-adam": 6, "mnist-weight-decay": 24, "mnist-momentum": 24, "mnist-step": 12,
                      "cifar-step-lr0.1": 4, "cifar-constant-lr0.01": 4, "cifar-adam": 1,
                      "cifar-sgd-regularized": 3, "cifar-ratio": 4}
    assert len(spec.trials) == 160
    mnist = [t.config for t in spec.trials if t.config.dataset == "mnist"]
    assert len(mnist) == 144
    assert {c.batch_size for c in mnist} == {32, 64, 128, 256, 512, 1024}
    assert all(c.eps == (0.03, 0.15) and c.model == "m1" for c in mnist)
    cifar = [t.config for t in spec.trials if t.config.dataset == "cifar10"]
    assert all(c.eps == (0.02,) and c.model == "vgg11" for c in cifar)
    ratio = [c for c in mnist if c.lr_batch_ratio and c.variant == "sgd"]
    assert sorted(c.effective_lr for c in ratio) == pytest.approx([0.005 * 2 ** k for k in range(6)])
    # the study's text: momentum and weight decay at the higher rate too; the step schedule from both rates
    for group, key in (("mnist-momentum", "momentum"), ("mnist-weight-decay", "weight_decay")):
        rows = {(getattr(t.config, key), t.config.lr) for t in spec.trials if t.group == group}
        assert {lr for _, lr in rows} == {0.01, 0.1} and len(rows) == 4
    assert {t.config.lr for t in spec.trials if t.group == "mnist-step"} == {0.01, 0.1}
    assert {t.config.lr for t in spec.trials if t.group == "mnist-constant-lr-adam"} == {0.0005}
    step = [t.config for t in spec.trials if t.group == "cifar-step-lr0.1"]
    assert all(c.lr_milestones == (60,) and c.lr_gamma == 0.1 for c in step)
    assert main(["validate", str(REPO / "sweeps" / "table1.yaml")]) == 0
    assert "160 trials" in capsys.readouterr().out


def test_group_seeds_override_the_sweeps_and_default_settings_leave_trial_ids_alone(tmp_path):
    spec = load_sweep(_write(tmp_path, VALID.replace("    grid: {lr: [0.01, 0.1], batch_size: [32, 64]}",
                                                     "    grid: {lr: [0.01, 0.1], batch_size: [32, 64]}\n"
                                                     "    seeds: [3, 4, 5]")), base_dir=tmp_path)
    assert [r[:2] for r in spec.summary()] == [("g1", 12), ("g2", 4)]
    assert {t.config.seed for t in spec.trials if t.group == "g1"} == {3, 4, 5}
    assert {t.config.seed for t in spec.trials if t.group == "g2"} == {0, 1}
    assert "seed[3]" in spec.summary()[0][2]
    # Naming a setting at its default does not change what is trained, so not the trial's id either:
    # ids stay stable when a later version adds a setting whose default keeps the old behaviour.
    plain = load_sweep(_write(tmp_path, VALID), base_dir=tmp_path)
    explicit = load_sweep(_write(tmp_path, VALID.replace("epochs: 1}", "epochs: 1, channels_last: null, "
                                                         "hessian_method: lanczos}"), "e.yaml"), base_dir=tmp_path)
    assert [t.trial_id for t in explicit.trials] == [t.trial_id for t in plain.trials]
    # A setting added later, at a default that keeps the old behaviour, leaves every id as it was.
    from robustsweep import sweep as sweep_module
    from robustsweep.config import TrialConfig

    original = TrialConfig.to_dict
    try:
        TrialConfig.to_dict = lambda self: {**original(self), "setting_of_a_later_version": "off"}
        sweep_module._default_settings.cache_clear()
        later = load_sweep(_write(tmp_path, VALID), base_dir=tmp_path)
    finally:
        TrialConfig.to_dict = original
        sweep_module._default_settings.cache_clear()
    assert [t.trial_id for t in later.trials] == [t.trial_id for t in plain.trials]
    other = load_sweep(_write(tmp_path, VALID.replace("epochs: 1}", "epochs: 1, channels_last: false}"), "o.yaml"),
                       base_dir=tmp_path)
    assert not {t.trial_id for t in other.trials} & {t.trial_id for t in plain.trials}
    with pytest.raises(ConfigError, match=r"groups\[0\]\.seeds: seeds repeat"):
        load_sweep(_write(tmp_path, VALID.replace("    set: {variant: sgd}", "    set: {variant: sgd}\n    seeds: [1, 1]"),
                          "r.yaml"))


def test_the_cpu_study_file_is_table1s_mnist_grid_at_a_stated_scale_with_seeds_for_conclusion_1(capsys):
    # Derived in the comment at the top of sweeps/table1-mnist-cpu.yaml: 144 trials at seed 0,
    # 36 more at seeds 1 and 2 for plain SGD at constant lr and at constant lr/bs.

    study = load_sweep(REPO / "sweeps" / "table1-mnist-cpu.yaml")
    table1 = load_sweep(REPO / "sweeps" / "table1.yaml")
    assert len(study.trials) == 180

    def science(config):
        return repr((config.variant, config.batch_size, config.effective_lr, config.lr_batch_ratio, config.momentum,
                     config.weight_decay, config.schedule, config.betas))
    seed0 = [t.config for t in study.trials if t.config.seed == 0]
    table1_mnist = [t.config for t in table1.trials if t.config.dataset == "mnist"]
    assert sorted(map(science, seed0)) == sorted(map(science, table1_mnist))
    extra = [t for t in study.trials if t.config.seed != 0]
    assert len(extra) == 36 and {t.group for t in extra} == {"mnist-constant-lr-sgd", "mnist-ratio-sgd"}
    assert all(t.config.variant == "sgd" for t in extra)
    assert all((c.epochs, c.subset, c.attack_subset, c.pgd_steps, c.hessian_samples) == (6, 30000, 2000, 20, 1000)
               for c in (t.config for t in study.trials))
    # the step schedule scaled with the epochs: still halved twice, at 1/3 and 2/3 of training
    step = next(t.config for t in study.trials if t.config.schedule == "step")
    assert [step.lr_at_epoch(e) / step.effective_lr for e in range(6)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    assert main(["validate", str(REPO / "sweeps" / "table1-mnist-cpu.yaml")]) == 0
    assert "180 trials (seeds 0, 1, 2)" in capsys.readouterr().out


#: The flags sweeps/table1-mnist-extra.yaml's header (and results/table1-mnist/RUN.md) launch table1 with.
STUDY_SCALE_FLAGS = SweepOverrides(local=True, gpu=0, only=("mnist-*",), name="table1-mnist", settings=(
    "attack_subset=2000", "attacks=[fgsm,pgd,autoattack]", "autoattack_subset=500", "curvature=[top_eig,trace]",
    "hessian_trace_probes=50"))


def test_the_study_scale_run_is_table1s_mnist_grid_and_its_extra_file_repeats_its_settings_for_seeds_1_2():
    main_run = load_sweep(REPO / "sweeps" / "table1.yaml", overrides=STUDY_SCALE_FLAGS)
    assert main_run.name == main_run.experiment == "table1-mnist" and len(main_run.trials) == 144
    assert all(t.resources.gpu == 0 and t.resources.cpu == 1 for t in main_run.trials)
    for c in (t.config for t in main_run.trials):
        assert (c.dataset, c.epochs, c.subset, c.test_subset, c.attack_subset, c.pgd_steps, c.hessian_samples) == \
            ("mnist", 30, 0, 0, 2000, 20, 1000)
        assert (c.attacks, c.autoattack_subset, c.autoattack_steps, c.autoattack_targets) == \
            (("fgsm", "pgd", "autoattack"), 500, 100, 9)
        assert c.curvature == ("top_eig", "trace") and c.seed == 0
    extra = load_sweep(REPO / "sweeps" / "table1-mnist-extra.yaml")
    assert extra.experiment == "table1-mnist" and len(extra.trials) == 42
    seeds = [t for t in extra.trials if t.group != "mnist-fit-control"]
    assert len(seeds) == 36 and {t.config.seed for t in seeds} == {1, 2}
    # a seed-1/2 trial is a seed-0 trial of the main run with only the seed changed, in a group of the
    # same name, so the report lines the seeds up by their settings
    by_config = {dataclasses.replace(t.config, seed=0, data_root="", download=False): t for t in main_run.trials}
    for t in seeds:
        twin = by_config[dataclasses.replace(t.config, seed=0, data_root="", download=False)]
        assert twin.group == t.group and twin.config.variant == "sgd"
    control = [t.config for t in extra.trials if t.group == "mnist-fit-control"]
    assert sorted(c.batch_size for c in control) == [32, 64, 128, 256, 512, 1024]
    assert all((c.lr, c.stop_train_acc, c.epochs, c.schedule, c.seed) == (0.1, 0.99, 150, "constant", 0)
               for c in control)


def test_beyond_is_the_studys_mnist_constant_lr_grid_for_sgd_and_sam_with_autoattack_and_the_trace(capsys):
    # Derived in the header of sweeps/beyond.yaml: 2 variants x 2 rates x 6 batch sizes x 3 seeds = 72.
    spec = load_sweep(REPO / "sweeps" / "beyond.yaml")
    assert len(spec.trials) == 72
    table1 = load_sweep(REPO / "sweeps" / "table1.yaml")
    grid = {(t.config.lr, t.config.batch_size) for t in table1.trials if t.group == "mnist-constant-lr"}
    assert len(grid) == 12
    for variant in ("sgd", "sam"):
        rows = [t.config for t in spec.trials if t.config.variant == variant]
        assert len(rows) == 36 and {(c.lr, c.batch_size) for c in rows} == grid
        assert {c.seed for c in rows} == {0, 1, 2}
        assert {c.sam_rho for c in rows} == ({0.05} if variant == "sam" else {None})  # Foret et al.'s rho
    for c in (t.config for t in spec.trials):
        assert (c.dataset, c.schedule, c.momentum, c.weight_decay, c.eps) == ("mnist", "constant", 0.0, 0.0,
                                                                             (0.03, 0.15))
        # the scale of table1-mnist-cpu.yaml, the measurements of table1-mnist-extra.yaml
        assert (c.epochs, c.subset, c.test_subset, c.attack_subset, c.pgd_steps, c.hessian_samples) == \
            (6, 30000, 0, 2000, 20, 1000)
        assert (c.attacks, c.autoattack_subset, c.autoattack_steps, c.autoattack_targets) == \
            (("fgsm", "pgd", "autoattack"), 500, 100, 9)
        assert (c.curvature, c.hessian_trace_probes) == (("top_eig", "trace"), 50)
    assert all(t.resources.cpu == 1 and t.resources.gpu == 0 for t in spec.trials)
    assert main(["validate", str(REPO / "sweeps" / "beyond.yaml")]) == 0
    assert "72 trials (seeds 0, 1, 2)" in capsys.readouterr().out


def test_smoke_sweep_validates():
    spec = load_sweep(REPO / "sweeps" / "smoke.yaml")
    assert 2 <= len(spec.trials) <= 6 and all(t.config.subset for t in spec.trials)


def test_cluster_file_passes_rays_own_schema():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster" / "gpu.yaml").read_text())
    validate_config(prepare_config(config))
    # only SSH is open to the world
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]
    assert "mlflow server" in " ".join(config["head_start_ray_commands"])
    # and the schema really is checked: an unknown key is refused
    config["available_node_types"]["head"]["bogus"] = 1
    with pytest.raises(Exception, match="bogus"):
        validate_config(prepare_config(config))


def test_debug_mode_keeps_going_past_a_failed_trial_and_never_duplicates_runs(tmp_path, mnist_root, capsys):
    from mlflow.tracking import MlflowClient

    uri, path = _tiny_sweep(tmp_path, mnist_root, "dbg", 1, """
  - name: broken
    set: {fail_at_epoch: 1}
  - name: fine
    set: {lr: 0.05}
""")
    for attempt in range(2):
        assert main(["launch", str(path), "--debug"]) == 1  # some trial failed
        out = capsys.readouterr().out
        assert "1 failed" in out and "injected failure" in out
    client = MlflowClient(uri)
    runs = trial_runs_only(client.search_runs([client.get_experiment_by_name("dbg").experiment_id]))
    by_group = {r.data.tags["group"]: r for r in runs}
    assert len(runs) == 2  # the second launch reused the failed trial's run and skipped the finished one
    assert by_group["fine"].info.status == "FINISHED" and "clean_acc" in by_group["fine"].data.metrics
    assert by_group["broken"].info.status == "FAILED"
    assert "already finished" in out


def test_command_line_flags_change_the_sweep_and_never_reuse_its_name(tmp_path, capsys):
    from robustsweep.sweep import SweepOverrides

    table1 = REPO / "sweeps" / "table1.yaml"
    plain = load_sweep(table1)
    o = SweepOverrides(local=True, settings=("epochs=5", "subset=10000"), only=("mnist-*",), seeds=(0, 1), gpu=0.25)
    spec = load_sweep(table1, base_dir=tmp_path, overrides=o)
    assert len(spec.trials) == 2 * 144 and {t.config.seed for t in spec.trials} == {0, 1}
    assert all(t.config.dataset == "mnist" and t.config.epochs == 5 and t.config.subset == 10000
               for t in spec.trials)
    assert all(t.resources.gpu == 0.25 and t.resources.cpu == plain.trials[0].resources.cpu for t in spec.trials)
    # local: storage and MLflow here, the cluster's data path dropped
    assert spec.storage_path == str(tmp_path / "ray_results")
    assert spec.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert all(t.config.data_root != "/home/ray/data" for t in spec.trials)
    # a different sweep gets a different name (and experiment); the same flags, in any order, the same one
    assert spec.name.startswith("table1-") and spec.name != plain.name and spec.experiment == spec.name
    same = load_sweep(table1, base_dir=tmp_path, overrides=SweepOverrides(
        settings=("subset=10000", "epochs=5"), only=("mnist-*",), seeds=(1, 0)))
    assert same.name == spec.name
    other = load_sweep(table1, base_dir=tmp_path, overrides=SweepOverrides(settings=("epochs=6",)))
    assert other.name not in (spec.name, plain.name)
    # places and resources alone do not change what is trained: the name stays
    assert load_sweep(table1, base_dir=tmp_path, overrides=SweepOverrides(local=True, gpu=0.5)).name == "table1"
    assert load_sweep(table1, overrides=SweepOverrides(settings=("epochs=6",), name="mine")).name == "mine"
    assert spec.flags == "--local --set epochs=5 --set subset=10000 --only mnist-* --seeds 0,1 --gpu 0.25"

    assert main(["validate", str(table1), "--local", "--only", "mnist-step", "--set", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "12 trials" in out and "command-line changes: --local --set epochs=3 --only mnist-step" in out


@pytest.mark.parametrize("flags, fragment", [
    (["--set", "lr=0.1"], "--set lr: group 'mnist-constant-lr' varies lr"),
    (["--only", "cifar-sgd-*", "--set", "momentum=0.5"], "group 'cifar-sgd-regularized' varies momentum"),
    (["--only", "x*"], "--only x*: matches no group"),
    (["--set", "bogus=1"], "Unknown trial setting 'bogus' in --set"),
    (["--set", "seed=3"], "--set seed: is set by the sweep: use --seeds"),
    (["--set", "epochs=many"], "--set epochs: Invalid trial setting epochs='many'"),
    (["--gpu", "1.5"], "--gpu 1.5: a trial takes"),
    (["--name", "../x"], "--name: expected a sweep name"),
])
def test_bad_command_line_flags_are_one_clear_paragraph(flags, fragment, capsys):
    assert main(["validate", str(REPO / "sweeps" / "table1.yaml"), *flags]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_flags_are_recorded_on_every_run(tmp_path, mnist_root, capsys):
    from mlflow.tracking import MlflowClient

    uri, path = _tiny_sweep(tmp_path, mnist_root, "flagged", 2, """
  - name: a
    grid: {lr: [0.05]}
  - name: b
    set: {lr: 0.01}
""")
    assert main(["launch", str(path), "--debug", "--only", "a", "--set", "epochs=1", "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    name = re.search(r"sweep (flagged-[0-9a-f]{6}): 1 trials", out).group(1)
    client = MlflowClient(uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name(name).experiment_id]))
    assert run.data.tags["sweep_flags"] == "--set epochs=1 --only a --seeds 3" and run.data.tags["sweep"] == name
    assert (run.data.params["epochs"], run.data.params["seed"], run.data.params["lr"]) == ("1", "3", "0.05")


def test_gpu_auto_takes_a_share_where_there_are_gpus_and_none_where_there_are_none(tmp_path):
    # The embedded default runs on the local GPU when there is one (the logic, checked without a GPU).
    from robustsweep.sweep import AUTO_GPU_SHARE, Resources, SweepOverrides, Trial

    smoke = load_sweep(REPO / "sweeps" / "smoke.yaml")
    assert all(t.resources.gpu_auto and t.config.device == "auto" for t in smoke.trials)
    first = smoke.trials[0]
    assert first.resources.for_cluster(True) == Resources(1.0, AUTO_GPU_SHARE)
    assert first.resources.for_cluster(False) == Resources(1.0, 0.0)
    assert Trial.from_json(first.to_json()).resources.gpu_auto  # saved for resume as it was
    assert Resources(2.0, 0.5).for_cluster(False) == Resources(2.0, 0.5)  # an explicit share stays
    forced = load_sweep(REPO / "sweeps" / "smoke.yaml", overrides=SweepOverrides(gpu=0.5))
    assert all(t.resources == Resources(1.0, 0.5) for t in forced.trials)
    kept = load_sweep(REPO / "sweeps" / "smoke.yaml", overrides=SweepOverrides(cpu=2))
    assert all(t.resources.gpu_auto and t.resources.cpu == 2.0 for t in kept.trials)


def test_resume_and_status_remember_the_flags_a_sweep_was_launched_with(tmp_path):
    # What `launch` saves beside Ray's state is what `resume` and `status` read back: the derived
    # name, the forced settings in every trial, the seeds and resources, and the flags themselves.
    from robustsweep.launch import _save_spec, load_saved_sweep
    from robustsweep.sweep import SweepOverrides

    spec = load_sweep(REPO / "sweeps" / "table1.yaml", base_dir=tmp_path, overrides=SweepOverrides(
        local=True, settings=("epochs=3",), only=("mnist-step",), seeds=(4,), gpu=0.5))
    _save_spec(spec)
    saved = load_saved_sweep(spec.name, spec.storage_path)
    assert saved.flags == spec.flags == "--local --set epochs=3 --only mnist-step --seeds 4 --gpu 0.5"
    assert [t.trial_id for t in saved.trials] == [t.trial_id for t in spec.trials] and len(saved.trials) == 12
    assert all(t.config.epochs == 3 and t.config.seed == 4 and t.resources.gpu == 0.5 for t in saved.trials)
    assert saved.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_export_import_and_audit_take_the_flags_a_sweep_file_was_launched_with(tmp_path, mnist_root, capsys,
                                                                                monkeypatch):
    # The study-scale run is table1.yaml plus flags: on a fresh machine its export must import into the
    # same (flagged) sweep before `launch` with those flags runs only what is missing.
    uri, path = _tiny_sweep(tmp_path, mnist_root, "fl", 1, """
  - name: g
    grid: {batch_size: [50, 100]}""")
    flags = ["--set", "lr=0.05", "--name", "fl-flagged"]
    assert main(["launch", str(path), "--debug", *flags]) == 0
    out = capsys.readouterr().out
    assert "robustsweep: 1/2 trials done; about" in out and "robustsweep: 2/2 trials done\n" in out
    exported = tmp_path / "runs.jsonl"
    assert main(["export", str(path), "--out", str(exported), *flags]) == 0
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    capsys.readouterr()
    assert main(["import", str(exported), str(path), "--tracking-uri", fresh, *flags]) == 0
    assert "imported 2 runs of sweep fl-flagged" in capsys.readouterr().out
    assert main(["audit", str(path), "--tracking-uri", fresh, "--complete", *flags]) == 0
    # without the flags the file is another sweep (another name, other trial ids), with no runs there
    assert main(["audit", str(path), "--tracking-uri", fresh, "--complete"]) == 1
    # a launched sweep keeps its own flags: giving flags with its name is refused in one paragraph
    capsys.readouterr()
    assert main(["export", "fl-flagged", "--out", str(exported), "--set", "lr=0.1",
                 "--storage-path", str(tmp_path / "ray_results")]) == 2
    assert "names a launched sweep, which keeps the flags" in capsys.readouterr().err
    # a fresh machine (the sweep file, no store, no Ray folder; here a folder of its own, since this process
    # still holds the first store open): importing into the file's own store saves the sweep as launch does,
    # so that it can be named; a second import leaves the saved sweep as it is
    machine = tmp_path / "fresh-machine"
    machine.mkdir()
    monkeypatch.chdir(machine)  # where the file's relative storage_path (ray_results) is
    moved = machine / path.name
    moved.write_text(path.read_text().replace(uri, f"sqlite:///{machine / 'm.db'}"))
    assert main(["import", str(exported), str(moved), *flags]) == 0
    assert "saved the sweep under" in capsys.readouterr().out
    storage = ["--storage-path", str(machine / "ray_results")]
    assert main(["status", "fl-flagged", *storage]) == 0
    assert "2/2 trials done" in capsys.readouterr().out
    assert main(["audit", "fl-flagged", *storage, "--complete"]) == 0
    capsys.readouterr()
    assert main(["import", str(exported), str(moved), *flags]) == 0
    assert "2 skipped" in (out := capsys.readouterr().out) and "saved the sweep" not in out


def test_committed_study_runs_still_match_their_sweep_files_trial_ids():
    # New settings come with defaults that keep the old behaviour, and trial ids hash only non-default
    # settings: every committed run must still be its sweep's trial, or import and launch would orphan it.
    import json

    def committed(folder, export="runs.jsonl"):
        records = map(json.loads, (REPO / "results" / folder / export).read_text().splitlines())
        return {r["trial_id"] for r in records if r.get("kind") != "sweep"}  # the sweep's parent run is no trial

    assert committed("table1-mnist-cpu") == {t.trial_id for t in load_sweep(REPO / "sweeps" / "table1-mnist-cpu.yaml").trials}
    # the study-scale run: table1's 144 MNIST trials, all exported
    study = {t.trial_id for t in load_sweep(REPO / "sweeps" / "table1.yaml", overrides=STUDY_SCALE_FLAGS).trials}
    assert committed("table1-mnist") == study
    # then its extra sweep (seeds 1-2, the control), all exported
    extra = {t.trial_id for t in load_sweep(REPO / "sweeps" / "table1-mnist-extra.yaml").trials}
    assert committed("table1-mnist", "runs-extra.jsonl") == extra


def test_status_of_a_stopped_sweep_assumes_as_many_trials_at_a_time_as_ran_before(tmp_path, monkeypatch, capsys):
    # The committed study-scale runs ran two at a time over several sessions, with breaks between them. With no
    # driver running (after an import on a fresh machine, or a stop), status estimates the rest at two at a time:
    # here the first 100 trials to end, as a fresh machine would have imported them mid-run.
    import json
    import re

    monkeypatch.chdir(tmp_path)
    flags = ["--local", "--gpu", "0", "--only", "mnist-*", "--name", "table1-mnist"]
    for setting in STUDY_SCALE_FLAGS.settings:
        flags += ["--set", setting]
    records = [(json.loads(line), line) for line in
               (REPO / "results" / "table1-mnist" / "runs.jsonl").read_text().splitlines()]
    parent = [line for record, line in records if record.get("kind") == "sweep"]
    trials = [line for record, line in sorted((r for r in records if r[0].get("kind") != "sweep"),
                                              key=lambda r: r[0]["end_time"])]
    export = tmp_path / "first-100.jsonl"
    export.write_text("".join(f"{line}\n" for line in [*parent, *trials[:100]]))
    assert main(["import", str(export), str(REPO / "sweeps" / "table1.yaml"), *flags]) == 0
    capsys.readouterr()
    assert main(["status", "table1-mnist"]) == 0
    line = re.search(r"progress: (\d+)/144 trials done; about (\d+) h (\d+) min left \(mean (\d+) min a trial over "
                     r"(\d+) finished, 2 at a time\)", capsys.readouterr().out)
    assert line, "status did not estimate two at a time"
    done, hours, minutes, mean = (int(g) for g in line.groups()[:4])
    assert abs(hours * 60 + minutes - (144 - done) * mean / 2) <= 0.5 * (144 - done) + 1  # (mean is rounded)


def test_local_on_a_machine_without_a_gpu_drops_the_files_gpu_share_and_grid_keeps_listed_axis_values(capsys):
    # the real study file asks for 1/16 of a GPU per trial; --local on this CPU-only machine runs it here
    full = load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(local=True, only=("mnist-*",)))
    assert all(t.resources.gpu == 0 for t in full.trials) and full.notes
    args = ["sweeps/table1.yaml", "--local", "--only", "mnist-constant-lr-adam", "--grid", "batch_size=32,64",
            "--set", "epochs=1"]
    assert main(["validate", str(REPO / args[0]), *args[1:]]) == 0
    out = capsys.readouterr().out
    assert "this machine has no GPU, so the sweep file's GPU share per trial is dropped" in out
    assert "2 trials" in out
    two = load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(
        local=True, only=("mnist-constant-lr-adam",), grid=("batch_size=32,64",), settings=("epochs=1",)))
    every = load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(
        local=True, only=("mnist-constant-lr-adam",), settings=("epochs=1",)))
    # the same trials, with the same ids, as in the whole group; a sweep of its own name
    assert [t.config.batch_size for t in two.trials] == [32, 64]
    assert {t.trial_id for t in two.trials} <= {t.trial_id for t in every.trials}
    assert two.name != every.name and "--grid batch_size=32,64" in two.flags
    with pytest.raises(ConfigError, match=r"group 'mnist-constant-lr-adam' has no batch_size value 100"):
        load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(only=("mnist-constant-lr-adam",),
                                                                           grid=("batch_size=32,100",)))
    with pytest.raises(ConfigError, match=r"no selected group varies 'momentum'"):
        load_sweep(REPO / "sweeps" / "table1.yaml", overrides=SweepOverrides(only=("mnist-constant-lr-adam",),
                                                                           grid=("momentum=0.9",)))
