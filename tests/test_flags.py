"""T5X's and absl's command lines work unchanged: flag files, logging flags,
multi-process aliases, and --gin. flags on `explistops train`/`eval` too."""

import argparse
from pathlib import Path

import pytest

from explistops_jax import cli, gin_config, runtime
from explistops_jax import eval as eval_main
from explistops_jax import train as train_main
from explistops_jax.errors import UserError


def _parsed(argv, entry=train_main):
    """(args, dot bindings) as the module entry parses ``argv``, without running."""
    seen = {}

    def run(args, dot_bindings):
        seen.update(args=args, bindings=list(dot_bindings))
        return 0

    assert gin_config.main(argv, "prog", "doc", entry.add_arguments, run) == 0
    return seen["args"], seen["bindings"]


@pytest.mark.parametrize("argv, want", [
    # a T5X multi-process GPU launch line
    (["--gin_file=f.gin", "--gin.MODEL_DIR='/tmp/m'", "--alsologtostderr", "--multiprocess_gpu",
      "--coordinator_address=10.0.0.1:1234", "--process_count=4", "--process_index=3"],
     dict(multiprocess=True, coordinator_address="10.0.0.1:1234", num_processes=4,
          process_id=3, logtostderr=True, verbosity=None)),
    # absl boolean forms, verbosity, the project's own names
    (["--gin_file=f.gin", "--multiprocess_gpu=false", "--logtostderr", "-v", "1",
      "--num_processes", "2", "--process_id", "0"],
     dict(multiprocess=False, num_processes=2, process_id=0, logtostderr=True, verbosity=1)),
    (["--gin_file=f.gin", "--verbosity=-2"], dict(multiprocess=False, verbosity=-2,
                                                  num_processes=None)),
])
def test_t5x_command_lines_parse(argv, want):
    args, bindings = _parsed(argv)
    assert args.gin_file == ["f.gin"]
    for key, value in want.items():
        assert getattr(args, key) == value, key
    assert bindings == (["MODEL_DIR = '/tmp/m'"] if "--gin.MODEL_DIR='/tmp/m'" in argv else [])
    options = runtime.distributed_options(args)
    assert (options["num_processes"], options["multiprocess"]) == (want["num_processes"],
                                                                  want["multiprocess"])


def test_log_levels_follow_absl_verbosity():
    level = lambda v: runtime.log_level(argparse.Namespace(verbosity=v))  # noqa: E731
    assert [level(v) for v in (None, -3, -2, -1, 0, 1, 2)] == [
        "warning", "critical", "error", "warning", "info", "debug", "debug"]
    assert runtime.log_level(None) == "warning"


def test_flag_files_nest_and_fail_clearly(tmp_path):
    inner = tmp_path / "inner.flags"
    inner.write_text("--process_count=2\n")
    outer = tmp_path / "outer.flags"
    outer.write_text(f"# a T5X flag file\n--gin.TRAIN_STEPS=3\n\n// absl comment\n"
                     f"--flagfile={inner}\n--alsologtostderr\n")
    assert runtime.expand_flagfiles(["--gin_file=f.gin", f"--flagfile={outer}", "-v", "0"]) == [
        "--gin_file=f.gin", "--gin.TRAIN_STEPS=3", "--process_count=2", "--alsologtostderr",
        "-v", "0"]
    args, bindings = _parsed(["--gin_file=f.gin", "--flagfile", str(outer)], eval_main)
    assert (bindings, args.num_processes, args.logtostderr) == (["TRAIN_STEPS = 3"], 2, True)
    loop = tmp_path / "loop.flags"
    loop.write_text(f"--flagfile={loop}\n")
    with pytest.raises(UserError, match="cycle"):
        runtime.expand_flagfiles([f"--flagfile={loop}"])
    with pytest.raises(UserError, match="unreadable"):
        runtime.expand_flagfiles([f"--flagfile={tmp_path / 'none'}"])


def test_flag_file_mistakes_are_one_line(tmp_path, capsys):
    for argv in (["train", f"--flagfile={tmp_path / 'none'}"],
                 ["--flagfile"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("explistops: error:") and "\n" not in err


def test_helpfull_prints_help(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--helpfull"])
    assert stop.value.code == 0 and "--process_count" in capsys.readouterr().out


def test_explistops_train_and_eval_take_gin_flags(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(train_main, "run", lambda args, extra=(): seen.append(
        ("train", args.gin_file, list(extra))) or 0)
    monkeypatch.setattr(eval_main, "run", lambda args, extra=(): seen.append(
        ("eval", args.gin_file, list(extra))) or 0)
    assert cli.main(["train", "--gin_file=f.gin", "--gin.MODEL_DIR='/tmp/m'",
                     "--train_steps", "5", "--alsologtostderr"]) == 0
    assert cli.main(["eval", "--gin_file=e.gin", "--gin.CHECKPOINT_PATH='/c'",
                     "--process_count=1", "--process_index=0"]) == 0
    assert seen == [("train", ["f.gin"], ["MODEL_DIR = '/tmp/m'", "TRAIN_STEPS = 5"]),
                    ("eval", ["e.gin"], ["CHECKPOINT_PATH = '/c'"])]


def test_explistops_eval_takes_a_checkpoint_or_gin_not_both(capsys):
    assert cli.main(["eval", "/some/run", "--gin.CHECKPOINT_PATH='/c'"]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli.main(["eval"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_gin_eval_through_the_command_reports_a_missing_checkpoint(capsys):
    eval_gin = Path(__file__).resolve().parent.parent / "gin_configs" / "runs" / "eval.gin"
    status = cli.main(["eval", f"--gin_file={eval_gin}",
                       "--gin.CHECKPOINT_PATH='/no/such/ckpt'"])
    err = capsys.readouterr().err
    assert status == 2 and "/no/such/ckpt" in err and err.count("\n") == 1


def test_profile_and_peak_flags_become_train_bindings():
    args, _ = _parsed(["--gin_file=f.gin", "--profile_steps", "3:5", "--peak_flops", "989e12"])
    assert train_main._step_log_bindings(args) == ["train.profile_steps = '3:5'",
                                                   "train.peak_flops = 989000000000000.0"]
    assert train_main._step_log_bindings(_parsed(["--gin_file=f.gin"])[0]) == []


def test_explistops_eval_refuses_flags_its_gin_form_would_ignore(capsys):
    assert cli.main(["eval", "--gin_file=e.gin", "--batch_size", "8", "--top_p", "0.9"]) == 2
    err = capsys.readouterr().err
    assert "--batch_size, --top_p with --gin_file" in err and err.count("\n") == 1
