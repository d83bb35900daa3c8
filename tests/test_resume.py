"""Resuming a trial from a checkpoint, outside Ray: the same run as one that was never interrupted."""

import io

import pytest
import torch

from robustsweep import metrics as keys
from robustsweep.config import make_trial_config
from robustsweep.trial import run_trial
from robustsweep.variants import VARIANTS

from .conftest import trial_runs_only


def _through_a_checkpoint(state: dict) -> dict:
    """What a trial reads back from a checkpoint file: a copy made by torch.save and torch.load, with
    weights_only=True as the Ray trainable loads it (tensors and plain containers only)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_resume_from_epochs_1_and_2_equals_three_epochs_straight(variant, mnist_root, mlflow_uri):
    # Momentum 0.9 (optimizer state), SVRG snapshots in epochs 1 and 3 only (so epoch 2 runs on the
    # checkpointed mu), multiplicative noise drawn every step, Selective Backprop selecting from
    # epoch 2 on: every piece of state a checkpoint must carry is in use after one of the two resumes.
    config = make_trial_config({
        "variant": variant, "lr": 0.001 if variant.startswith("adam") else 0.02, "momentum": 0.9,
        "data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 400,
        "batch_size": 32, "epochs": 3, "test_subset": 100, "attack_subset": 20, "hessian_samples": 20,
        "pgd_steps": 2, "hessian_iters": 3, "eps": [0.1], "svrg_snapshot_every": 2})
    states: dict[str, dict[int, dict]] = {}

    def keep(which):
        states[which] = {}

        def on_epoch_end(epoch, metrics, state):
            states[which][epoch] = _through_a_checkpoint(state())
        return on_epoch_end

    def untimed(metrics):
        return {k: v for k, v in metrics.items() if not keys.is_timing(k)}

    def without_timing(history):
        return [untimed(h) for h in history]

    straight = run_trial(config, on_epoch_end=keep("straight"))
    for start in (1, 2):
        checkpoint = {**states["straight"][start], "run_id": None}  # a fresh MLflow run for the copy
        resumed = run_trial(config, resume_state=checkpoint, on_epoch_end=keep(start))
        assert sorted(states[start]) == list(range(start + 1, 4))
        assert without_timing(resumed.history) == without_timing(straight.history), start
        assert untimed(resumed.metrics) == untimed(straight.metrics), start
        for name, tensor in states["straight"][3]["model"].items():
            assert torch.equal(tensor, states[start][3]["model"][name]), (start, name)


def _tiny(mnist_root, mlflow_uri, **settings):
    return make_trial_config({
        "data_root": str(mnist_root), "mlflow_tracking_uri": mlflow_uri, "device": "cpu", "subset": 200,
        "batch_size": 50, "epochs": 3, "test_subset": 100, "attack_subset": 20, "hessian_samples": 20,
        "pgd_steps": 1, "hessian_iters": 2, "eps": [0.1], **settings})


def _dies_in_epoch_3(mnist_root, mlflow_uri):
    """A 3-epoch trial's first attempt, which dies in epoch 3: its config and its checkpoints of epochs 1 and 2."""
    from robustsweep.trial import InjectedFailure

    config = _tiny(mnist_root, mlflow_uri, fail_at_epoch=3)
    states = {}
    with pytest.raises(InjectedFailure):
        run_trial(config, on_epoch_end=lambda e, m, state: states.setdefault(e, _through_a_checkpoint(state())))
    return config, states


def test_resume_from_an_older_checkpoint_logs_each_epoch_once(mnist_root, mlflow_uri):
    # The first attempt logs epochs 1 and 2, then dies in epoch 3; its newest checkpoint that
    # survived is epoch 1's (as when a process dies between logging an epoch and checkpointing it).
    from mlflow.tracking import MlflowClient

    config, states = _dies_in_epoch_3(mnist_root, mlflow_uri)
    outcome = run_trial(config, resume_state=states[1])
    client = MlflowClient(mlflow_uri)
    (run,) = trial_runs_only(client.search_runs([client.get_experiment_by_name("robustsweep").experiment_id]))
    assert run.info.run_id == outcome.run_id and run.info.status == "FINISHED"
    for key in ("train_loss", "test_acc", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3], key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "clean_acc")] == [3]


def test_a_resumed_trials_cost_carries_its_first_attempt_and_leaves_out_the_break(mnist_root, mlflow_uri):
    # The first attempt dies in epoch 3; the trial resumes from epoch 2's checkpoint after a break (the
    # next session's `resume`). Its trial_seconds is what both attempts spent, not its run's span.
    import time

    from mlflow.tracking import MlflowClient

    config, states = _dies_in_epoch_3(mnist_root, mlflow_uri)
    first = states[2][keys.TRIAL_SECONDS]
    assert 0 < states[1][keys.TRIAL_SECONDS] < first
    time.sleep(3.0)
    began = time.perf_counter()
    outcome = run_trial(config, resume_state=states[2])
    second = time.perf_counter() - began
    run = MlflowClient(mlflow_uri).get_run(outcome.run_id)
    cost = run.data.metrics[keys.TRIAL_SECONDS]
    assert outcome.metrics[keys.TRIAL_SECONDS] == pytest.approx(cost)
    assert first + 0.5 * second < cost <= first + second, (first, second, cost)
    span = (run.info.end_time - run.info.start_time) / 1000
    # The run's span holds the 3 s break and not the first attempt's start-up (loading data before its run
    # began, about 1.5 s here): the cost holds the start-up and not the break.
    assert cost < span - 1.0, (cost, span)


def test_a_trial_resumed_from_a_checkpoint_without_its_cost_logs_none_rather_than_too_little(mnist_root,
                                                                                               mlflow_uri):
    # A checkpoint written by a robustsweep from before trial_seconds (a sweep moved to a newer commit mid-run):
    # the first attempt's seconds are unknown, so the trial's are, and so are those of any later resume.
    from mlflow.tracking import MlflowClient

    config, states = _dies_in_epoch_3(mnist_root, mlflow_uri)
    old = {k: v for k, v in states[2].items() if k != keys.TRIAL_SECONDS}
    later = {}
    outcome = run_trial(config, resume_state=old,
                        on_epoch_end=lambda e, m, state: later.setdefault(e, _through_a_checkpoint(state())))
    run = MlflowClient(mlflow_uri).get_run(outcome.run_id)
    assert run.info.status == "FINISHED" and "clean_acc" in run.data.metrics
    assert keys.TRIAL_SECONDS not in run.data.metrics and keys.TRIAL_SECONDS not in outcome.metrics
    assert later[3].get(keys.TRIAL_SECONDS) is None


def test_a_trial_run_in_one_go_costs_more_than_its_epochs_and_at_most_its_runs_span_and_data_loading(
        mnist_root, mlflow_uri):
    from mlflow.tracking import MlflowClient

    outcome = run_trial(_tiny(mnist_root, mlflow_uri, epochs=2))
    run = MlflowClient(mlflow_uri).get_run(outcome.run_id)
    span = (run.info.end_time - run.info.start_time) / 1000
    work = sum(h["epoch_seconds"] + h["test_seconds"] for h in outcome.history)
    assert work < run.data.metrics[keys.TRIAL_SECONDS] <= span + 2.0  # data loading precedes the run
