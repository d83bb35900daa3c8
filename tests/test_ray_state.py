"""What goes into and comes out of Ray's saved state: readable checks of it, and a picklable callback."""

import builtins
import io
import pickle

from robustsweep.launch import _ray_state_problem
from robustsweep.tune_extensions import Progress


def test_the_searchers_pickled_state_is_whole_or_reported_cut_short(tmp_path):
    # Tune names it .json but writes a pickle: read as JSON, every resume set a sound state aside
    state = tmp_path / "basic-variant-state-2026-12-01_00-00-00.json"
    state.write_bytes(pickle.dumps({"_iterators": [1, 2, 3]}, protocol=5))
    assert _ray_state_problem(str(tmp_path)) is None
    state.write_bytes(state.read_bytes()[:-5])
    assert "not a whole pickle" in _ray_state_problem(str(tmp_path))
    state.write_bytes(b"")
    assert "(ValueError: empty, 0 bytes)" in _ray_state_problem(str(tmp_path))


def test_the_progress_callback_pickles_when_rays_tqdm_has_replaced_print(monkeypatch):
    from types import SimpleNamespace as Trial

    import ray.cloudpickle

    printed = []
    monkeypatch.setattr(builtins, "print", lambda *a, **k: printed.append(a))  # as ray.experimental.tqdm_ray does
    again = ray.cloudpickle.loads(ray.cloudpickle.dumps(Progress(3)))
    ending = Trial(status="RUNNING", last_result={"trial_seconds": 60.0})
    again.on_trial_complete(0, [ending], ending)  # and prints through the print of the moment
    assert printed[0][0].startswith("robustsweep: 1/3 trials done; about 2 min left"), printed


def test_what_a_tuner_saves_of_robustsweep_is_pickled_by_name_so_a_resume_runs_the_installed_code(tmp_path):
    # Ray pickles a Tuner's callbacks and scheduler into tuner.pkl. A class defined inside a function is pickled
    # by value, its code with it: a sweep resumed after an upgrade kept printing the progress of the day it was
    # launched ("1/88 trials done ... 3 at a time" in the study run's resumes). By name, the installed one runs.
    import ray.cloudpickle

    from robustsweep.ray_backend import _run_config
    from robustsweep.search import make_scheduler
    from robustsweep.sweep import load_sweep
    from robustsweep.tune_extensions import PrunedRuns, SearchProgress

    from .conftest import REPO

    search = load_sweep(REPO / "sweeps" / "search-robust-mnist.yaml").search  # with ASHA
    saved = _run_config("s", str(tmp_path), 1, 0, 4, [PrunedRuns(), SearchProgress("sqlite:///x.db", "s", "s", search)],
                        finished_before=1).callbacks + [make_scheduler(search)]
    ours = [c for c in saved if type(c).__module__.startswith("robustsweep.")]
    assert {type(c).__name__ for c in ours} == {"Progress", "PrunedRuns", "SearchProgress", "FinishingASHA"}
    for obj in ours:
        wanted = []

        class Recording(pickle.Unpickler):
            def find_class(self, module, name):
                wanted.append(f"{module}.{name}")
                return super().find_class(module, name)

        again = Recording(io.BytesIO(ray.cloudpickle.dumps(obj))).load()
        assert type(again) is type(obj), wanted
        assert f"{type(obj).__module__}.{type(obj).__qualname__}" in wanted
        assert not [w for w in wanted if "cloudpickle" in w], f"{type(obj).__name__} pickled by value: {wanted}"
