"""Tests of the run directory: its names, checkpoint-name parsing, and atomic
reads and writes (a failure mid-write leaves the old file and no temporary)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from explistops_jax import rundir
from explistops_jax.errors import UserError
from explistops_jax.rundir import RunDir


class Boom(Exception):
    pass


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------- names


def test_layout_names():
    run = RunDir("/runs/a")
    assert run.path == Path("/runs/a")
    assert run.run_json == Path("/runs/a/run.json")
    assert run.train_log == Path("/runs/a/train_log.jsonl")
    assert run.eval_log == Path("/runs/a/eval_log.jsonl")
    assert run.config_gin == Path("/runs/a/config.gin")
    assert run.done_json == Path("/runs/a/done.json")
    assert run.tensorboard("eval") == Path("/runs/a/tensorboard/eval")
    assert run.checkpoint(1200) == Path("/runs/a/checkpoint_1200")
    assert run.eval_dir("t", "test") == Path("/runs/a/eval/t/test")
    assert run.predictions("t", "test", 7) == Path("/runs/a/eval/t/test/predictions_7.jsonl")
    assert run.metrics("t", "test", 7) == Path("/runs/a/eval/t/test/metrics_7.json")
    assert run.checkpoint(np.int64(3)).name == "checkpoint_3"


@pytest.mark.parametrize("name, step", [
    ("checkpoint_0", 0), ("checkpoint_7", 7), ("checkpoint_123456", 123456),
    ("checkpoint_", None), ("checkpoint_-1", None), ("checkpoint_07", None),
    ("checkpoint_1.orbax-checkpoint-tmp-1712", None), ("checkpoint_1x", None),
    ("checkpoint_ 1", None), ("checkpoint_１", None), ("Checkpoint_1", None),
    ("checkpoints_1", None), ("xcheckpoint_1", None), ("checkpoint_1/", None),
    ("checkpoint", None), ("", None), ("run.json", None),
])
def test_parse_checkpoint_name(name, step):
    assert rundir.parse_checkpoint_name(name) == step
    if step is not None:
        assert rundir.checkpoint_name(step) == name


@pytest.mark.parametrize("bad", [-1, 1.0, "3", True, None])
def test_checkpoint_name_rejects_non_steps(bad):
    with pytest.raises((ValueError, TypeError)):
        rundir.checkpoint_name(bad)


def test_checkpoint_steps_counts_only_finished_checkpoints(tmp_path):
    run = RunDir(tmp_path)
    assert run.checkpoint_steps() == []
    for name in ("checkpoint_20", "checkpoint_3", "checkpoint_100"):
        (tmp_path / name / "state").mkdir(parents=True)
    (tmp_path / "checkpoint_5").mkdir()  # no state item: not finished
    (tmp_path / "checkpoint_200.orbax-checkpoint-tmp-9" / "state").mkdir(parents=True)
    (tmp_path / "checkpoint_04" / "state").mkdir(parents=True)
    (tmp_path / "checkpoint_7").write_text("a file")
    assert run.checkpoint_steps() == [3, 20, 100]
    assert RunDir(tmp_path / "missing").checkpoint_steps() == []


def test_find_run_checkpoint(tmp_path):
    assert rundir.find_run_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint_4" / "state").mkdir(parents=True)
    assert rundir.find_run_checkpoint(tmp_path) is None  # a T5X checkpoint: no run item
    assert rundir.find_run_checkpoint(tmp_path / "checkpoint_4") is None
    (tmp_path / "checkpoint_4" / "run").mkdir()
    run, step = rundir.find_run_checkpoint(tmp_path)
    assert run == RunDir(tmp_path) and step is None
    run, step = rundir.find_run_checkpoint(tmp_path / "checkpoint_4")
    assert run == RunDir(tmp_path) and step == 4


def test_is_run_content():
    for name in ("eval", "tensorboard", ".hidden", "checkpoint_3",
                 "checkpoint_3.orbax-checkpoint-tmp-1"):
        assert rundir.is_run_content(name), name
    for name in ("run-a", "checkpoint", "checkpoints", "evals"):
        assert not rundir.is_run_content(name), name


def test_eval_splits_and_metrics_steps(tmp_path):
    run = RunDir(tmp_path)
    assert run.eval_splits() == []
    for task, split, step in (("b", "test", 10), ("a", "test", 2), ("a", "long", 30),
                              ("a", "test", 10)):
        run.eval_dir(task, split).mkdir(parents=True, exist_ok=True)
        rundir.write_json(run.metrics(task, split, step), {"step": step})
    (run.eval_dir("a", "test") / "metrics_x.json").write_text("{}")
    (run.eval_dir("a", "test") / "metrics_5.json.tmp").write_text("{}")
    assert run.eval_splits() == [("a", "long"), ("a", "test"), ("b", "test")]
    assert run.metrics_steps("a", "test") == [2, 10]
    assert run.metrics_steps("c", "test") == []


# ----------------------------------------------------------------- atomic writes


def test_round_trips(tmp_path):
    value = {"b": [1, 2.5, None], "a": "é", "nested": {"x": True}}
    rundir.write_json(tmp_path / "v.json", value)
    assert rundir.read_json(tmp_path / "v.json") == value
    assert (tmp_path / "v.json").read_text(encoding="utf-8") == json.dumps(value, indent=2) + "\n"
    rundir.write_json(tmp_path / "s.json", value, sort_keys=True)
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["a", "b", "nested"]

    records = [{"step": 1, "text": "ünïcode"}, {"step": 2}]
    rundir.write_jsonl(tmp_path / "r.jsonl", records)
    assert rundir.read_jsonl(tmp_path / "r.jsonl") == records
    assert "ünïcode" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")  # not escaped
    rundir.append_jsonl(tmp_path / "r.jsonl", {"step": 3})
    assert [r["step"] for r in rundir.read_jsonl(tmp_path / "r.jsonl")] == [1, 2, 3]
    rundir.append_jsonl(tmp_path / "new.jsonl", {"step": 0})
    assert rundir.read_jsonl(tmp_path / "new.jsonl") == [{"step": 0}]

    rundir.write_text(tmp_path / "t.md", "line\nzwei\n")
    assert (tmp_path / "t.md").read_bytes() == b"line\nzwei\n"
    with rundir.atomic_open(tmp_path / "b.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert _listing(tmp_path) == ["b.bin", "new.jsonl", "r.jsonl", "s.json", "t.md", "v.json"]


def test_write_json_of_values_json_lacks(tmp_path):
    rundir.write_json(tmp_path / "p.json", {"path": Path("/x")})
    assert rundir.read_json(tmp_path / "p.json") == {"path": "/x"}


def test_failure_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics_1.json"
    rundir.write_json(path, {"old": 1})
    with pytest.raises(Boom):
        with rundir.atomic_open(path) as handle:
            handle.write('{"new": ')
            handle.flush()
            assert len(_listing(tmp_path)) == 2  # the temporary, beside the target
            temporary = next(p for p in tmp_path.iterdir() if p != path)
            assert temporary.name.startswith(".metrics_1.json.") and temporary.name.endswith(".tmp")
            assert rundir.read_json(path) == {"old": 1}  # readers see the old file meanwhile
            raise Boom()
    assert _listing(tmp_path) == ["metrics_1.json"]
    assert rundir.read_json(path) == {"old": 1}

    def records():
        yield {"step": 1}
        raise Boom()

    with pytest.raises(Boom):
        rundir.write_jsonl(tmp_path / "log.jsonl", records())
    assert _listing(tmp_path) == ["metrics_1.json"]  # nothing half-written appears

    with pytest.raises(TypeError):  # not JSON at all: fails before any file is touched
        rundir.write_json(path, {(1, 2): 3})
    assert rundir.read_json(path) == {"old": 1} and _listing(tmp_path) == ["metrics_1.json"]


def test_write_fsyncs_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b)))
    rundir.write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync", "replace"]


def test_unwritable_target_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot write .*missing/a.json"):
        rundir.write_json(tmp_path / "missing" / "a.json", {})
    assert _listing(tmp_path) == []


def test_atomic_directory(tmp_path):
    out = tmp_path / "out"
    with rundir.atomic_directory(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.") and not out.exists()
        (tmp / "config.json").write_text("{}")
    assert _listing(out) == ["config.json"] and _listing(tmp_path) == ["out"]

    with pytest.raises(UserError, match="already exists"):
        with rundir.atomic_directory(out):
            pass
    with pytest.raises(Boom):
        with rundir.atomic_directory(tmp_path / "failed") as tmp:
            (tmp / "half").write_text("x")
            raise Boom()
    assert _listing(tmp_path) == ["out"]
    (tmp_path / "empty").mkdir()  # an empty directory is replaced
    with rundir.atomic_directory(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("x")
    assert _listing(tmp_path / "empty") == ["f"]


def test_checkpoints_keep_atomic_directory():
    from explistops_jax import checkpoints

    assert checkpoints.atomic_directory is rundir.atomic_directory


# ----------------------------------------------------------------- reading


def test_read_json_errors_name_the_file_and_position(tmp_path):
    path = tmp_path / "run.json"
    with pytest.raises(UserError, match="cannot read .*run.json"):
        rundir.read_json(path)
    path.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(UserError) as err:
        rundir.read_json(path)
    assert err.value.where == f"{path}:3:3" and "not valid JSON" in err.value.what
    path.write_text("[1, 2]")
    with pytest.raises(UserError, match="expected a JSON object"):
        rundir.read_json(path)


def test_read_json_lenient_names_the_problem(tmp_path):
    path = tmp_path / "run.json"
    assert rundir.read_json_lenient(path) == (None, "no run.json")
    path.write_text("{")
    assert rundir.read_json_lenient(path) == (None, "run.json unreadable (JSONDecodeError)")
    path.write_bytes(b'{"a": "\xff"}')
    assert rundir.read_json_lenient(path) == (None, "run.json unreadable (UnicodeDecodeError)")
    path.write_text("[1]")
    assert rundir.read_json_lenient(path) == ([1], None)


def test_read_jsonl_strict_names_file_and_line(tmp_path):
    path = tmp_path / "log.jsonl"
    with pytest.raises(UserError, match="cannot read"):
        rundir.read_jsonl(path)
    path.write_text('{"step": 1}\n\n{"step": 2, "loss"\n')
    with pytest.raises(UserError) as err:
        rundir.read_jsonl(path)
    assert err.value.where.startswith(f"{path}:3:")
    path.write_text('{"step": 1}\n[2]\n')
    with pytest.raises(UserError) as err:
        rundir.read_jsonl(path)
    assert err.value.where == f"{path}:2" and "expected a JSON object" in err.value.what


def test_read_jsonl_lenient_skips_a_line_cut_short(tmp_path):
    path = tmp_path / "train_log.jsonl"
    assert rundir.read_jsonl(path, lenient=True) == []
    path.write_bytes(b'{"step": 1}\n"text"\n{"step": 2, "s": "\xff"}\n{"step": 3, "lo')
    records = rundir.read_jsonl(path, lenient=True)
    assert [r["step"] for r in records] == [1, 2] and records[1]["s"] == "\ufffd"
