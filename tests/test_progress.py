"""The progress line of launch and status: finished/total and the time left from finished trials."""

from robustsweep.progress import progress_line


def test_time_left_is_remaining_trials_times_the_mean_duration_over_the_trials_at_once():
    # 4 of 10 done at 10 and 20 minutes a trial: 6 left x 15 min / 2 at a time = 45 min
    line = progress_line(4, 10, [600.0, 1200.0], 2)
    assert line == "4/10 trials done; about 45 min left (mean 15 min a trial over 2 finished, 2 at a time)"
    assert progress_line(3, 10, [3600.0 * 2], 1) == ("3/10 trials done; about 14 h 00 min left "
                                                     "(mean 2 h 00 min a trial over 1 finished, 1 at a time)")
    assert progress_line(0, 5, [], 2) == "0/5 trials done; time left unknown until a trial finishes"
    # trials have finished, but none has a known duration (resumed runs from before trial_seconds)
    assert progress_line(3, 5, [], 2) == ("3/5 trials done; time left unknown until a trial that ran in one go "
                                          "finishes")
    assert progress_line(5, 5, [60.0], 2) == "5/5 trials done"


def test_trials_at_once_is_their_summed_time_over_the_time_any_ran():
    from robustsweep.progress import observed_at_once

    # two at a time for an hour (0-60 and 0-60 min, then 60-120 twice), a break, then one alone for 30 min:
    # 270 trial-minutes over 150 busy minutes = 1.8 -> 2; the two-hour break between sessions does not count
    hour = 3600.0
    two_then_one = [(0, hour), (0, hour), (hour, 2 * hour), (hour, 2 * hour), (4 * hour, 4.5 * hour)]
    assert observed_at_once(two_then_one) == 2
    assert observed_at_once([(0, 10), (10, 20), (20, 30)]) == 1  # one after another
    assert observed_at_once([(0, 100), (50, 150), (60, 70)]) == 1  # 210 trial-s over 150 s: 1.4 -> 1
    assert observed_at_once([(0, 100), (0, 100), (0, 100), (0, 100)]) == 4
    assert observed_at_once([]) == 1 and observed_at_once([(5, 5)]) == 1


def test_the_drivers_progress_counts_trials_that_ended_before_a_resume_and_not_the_ending_one_as_running(capsys):
    # Ray calls on_trial_complete while the trial is still RUNNING; after `resume` the callback is the one
    # pickled at launch, and the trials that ended before are TERMINATED from the start.
    from types import SimpleNamespace as Trial

    from robustsweep.tune_extensions import Progress

    callback = Progress(9, finished_before=3)  # 3 imported before the launch: not Tune's trials
    ended = [Trial(status="TERMINATED", last_result={}) for _ in range(3)]
    other = Trial(status="RUNNING", last_result={})
    ending = Trial(status="RUNNING", last_result={"trial_seconds": 600.0, "time_total_s": 30.0})
    callback.on_trial_complete(0, [*ended, other, ending, Trial(status="PENDING", last_result={})], ending)
    assert capsys.readouterr().err == ("robustsweep: 7/9 trials done; about 10 min left "
                                       "(mean 10 min a trial over 1 finished, 2 at a time)\n")
