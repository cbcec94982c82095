"""Output a user reads: progress bars quiet when standard error is not a
terminal and forced on when asked; the study's runs-done / time-left line; no
library warning that asks nothing of the user."""

import io
import sys

from explistops_jax import reproduce, summaries


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_bar_follows_the_terminal(monkeypatch, capsys):
    summaries.Progress(10, enabled=None).update(1, loss=0.5)
    assert capsys.readouterr().err == ""            # a pipe or a log file: no bar
    bar = summaries.Progress(10, enabled=True)      # forced on
    bar.update(2, loss=0.25)
    bar.close()
    assert "2/10" in capsys.readouterr().err
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    auto = summaries.Progress(10, enabled=None)     # a terminal: the bar
    auto.update(3)
    auto.close()
    assert "3/10" in terminal.getvalue()
    off = summaries.Progress(10, enabled=False)     # processes other than 0
    off.update(1)
    assert "1/10" not in terminal.getvalue().split("3/10")[-1]


def test_the_study_says_how_many_runs_are_left_and_about_how_long():
    eta = reproduce._Eta(5)
    assert eta.text(1) == ""                        # nothing trained yet: no guess
    eta.trained(120.0)
    eta.trained(240.0)
    # runs 3, 4 and 5 left at 3 minutes each
    assert eta.text(3) == " (2 trained here in 6 min; about 9 min left at that pace)"


def test_reading_checkpoints_prints_no_read_only_warning(tmp_path, caplog):
    """Orbax warns whenever a manager is read-only; an evaluation asks for that,
    so the warning is dropped at its source (and only there)."""
    import logging

    import orbax.checkpoint as ocp

    from explistops_jax.train_state import RunCheckpoints

    caplog.set_level(logging.WARNING)
    ocp.CheckpointManager(tmp_path, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False))  # the library itself: the warning
    assert "read only" in caplog.text
    caplog.clear()
    RunCheckpoints(tmp_path, read_only=True)
    assert "read only" not in caplog.text
    logging.getLogger("absl").warning("Given directory is read only=%s", "elsewhere")
    assert "elsewhere" in caplog.text  # the filter is gone afterwards
