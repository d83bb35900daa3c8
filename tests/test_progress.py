"""The progress line of launch and status: finished/total and the time left from finished trials."""

from robustsweep.progress import progress_line


def test_time_left_is_remaining_trials_times_the_mean_duration_over_the_trials_at_once():
    # 4 of 10 done at 10 and 20 minutes a trial: 6 left x 15 min / 2 at a time = 45 min
    line = progress_line(4, 10, [600.0, 1200.0], 2)
    assert line == "4/10 trials done; about 45 min left (mean 15 min a trial over 2 finished, 2 at a time)"
    assert progress_line(3, 10, [3600.0 * 2], 1) == ("3/10 trials done; about 14 h 00 min left "
                                                     "(mean 2 h 00 min a trial over 1 finished, 1 at a time)")
    assert progress_line(0, 5, [], 2) == "0/5 trials done; time left unknown until a trial finishes"
    assert progress_line(5, 5, [60.0], 2) == "5/5 trials done"
