"""Run directories on an object store (``gs://``-like), offline.

``memory://`` (tests/object_store_fixtures.py) is an ``etils.epath`` scheme with
an object store's limits (whole-object writes, no append, no rename), so the
run directory's code takes its object-store path here as it would on
``gs://bucket/run``. Orbax cannot write it (TensorStore would take the URL as a
local file path: Orbax picks its gcs driver for gs:// and the file driver for
anything else; RunCheckpoints refuses other schemes), so the training test keeps
the checkpoints in a local directory and every other file of the run on the
store; the checkpoint class is checked separately to hand Orbax the URL as is.
"""

import logging
import os

import pytest

import object_store_fixtures as store
import tiny_trainer_fixtures as tiny
from explistops_jax import rundir, summaries, train_state, trainer
from explistops_jax.errors import UserError
from explistops_jax.rundir import RunDir


@pytest.fixture(autouse=True)
def _clean_uploads():
    store.UPLOADS.clear()


def _objects(root: str) -> list[str]:
    """Every object below ``root`` (recursively), as URLs."""
    out, stack = [], [rundir.run_path(root)]
    while stack:
        for child in stack.pop().iterdir():
            (stack.append(child) if child.is_dir() else out.append(str(child)))
    return sorted(out)


# ----------------------------------------------------------------- rundir


def test_paths_stay_urls():
    assert str(rundir.run_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
    assert str(RunDir("gs://bucket/run").checkpoint(5)) == "gs://bucket/run/checkpoint_5"
    assert str(RunDir("s3://b/r").metrics("t", "test", 3)) == "s3://b/r/eval/t/test/metrics_3.json"
    assert rundir.run_path("rel/run") == rundir.run_path(os.path.abspath("rel/run"))
    assert rundir.is_local("/tmp/x") and not rundir.is_local("gs://b/x")


def test_atomic_writes_are_one_whole_object_and_never_a_temporary():
    run = RunDir(store.new_bucket() + "/run")
    rundir.write_json(run.run_json, {"a": 1})
    rundir.write_jsonl(run.train_log, [{"step": 1}, {"step": 2}])
    with rundir.atomic_open(run.path / "plot.png", "wb") as handle:
        handle.write(b"\x89PNG")
    assert rundir.read_json(run.run_json) == {"a": 1}
    assert rundir.read_jsonl(run.train_log) == [{"step": 1}, {"step": 2}]
    assert (run.path / "plot.png").read_bytes() == b"\x89PNG"
    assert set(store.UPLOADS.values()) == {1}  # each object: one write
    # a block that fails leaves the old object, and writes nothing
    with pytest.raises(RuntimeError):
        with rundir.atomic_open(run.run_json) as handle:
            handle.write('{"half":')
            raise RuntimeError("killed")
    assert rundir.read_json(run.run_json) == {"a": 1}
    assert store.UPLOADS[str(run.run_json)] == 1
    assert not [o for o in _objects(str(run.path)) if o.endswith(".tmp")]
    # appends: the store has none; the log is rewritten whole
    rundir.append_jsonl(run.eval_log, {"step": 1})
    rundir.append_jsonl(run.eval_log, {"step": 2})
    assert [r["step"] for r in rundir.read_jsonl(run.eval_log)] == [1, 2]


def test_jsonl_log_uploads_when_flushed():
    path = RunDir(store.new_bucket()).train_log
    rundir.write_jsonl(path, [{"step": 0}])  # a resumed run's kept lines
    log = rundir.JsonlLog(path, interval_s=3600)
    for step in (1, 2, 3):
        log.append({"step": step})
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0]  # not yet uploaded
    log.flush()
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2, 3]
    assert store.UPLOADS[str(path)] == 2
    log.flush()  # nothing new: no upload
    assert store.UPLOADS[str(path)] == 2
    eager = rundir.JsonlLog(path, interval_s=0)
    eager.append({"step": 4})
    assert rundir.read_jsonl(path)[-1] == {"step": 4}


def test_reading_errors_name_the_url():
    run = RunDir(store.new_bucket() + "/run")
    with pytest.raises(UserError, match="cannot read memory://.*run.json"):
        rundir.read_json(run.run_json)
    rundir.write_text(run.run_json, '{"a": \n')
    with pytest.raises(UserError) as err:
        rundir.read_json(run.run_json)
    assert f"{run.run_json}:2:1" in str(err.value) and "\n" not in str(err.value)
    assert rundir.read_json_lenient(run.done_json) == (None, "no done.json")
    assert rundir.read_jsonl(run.train_log, lenient=True) == []
    assert run.checkpoint_steps() == [] and run.eval_splits() == []


# ----------------------------------------------------------------- checkpoints


def test_orbax_is_given_the_url_unchanged(monkeypatch):
    seen = {}

    class Manager:  # stands in for ocp.CheckpointManager: no network here
        def __init__(self, directory, options=None, item_names=None):
            seen["directory"] = directory

    monkeypatch.setattr(train_state.ocp, "CheckpointManager", Manager)
    checkpoints = train_state.RunCheckpoints("gs://bucket/runs/a")
    assert str(checkpoints.directory) == "gs://bucket/runs/a"
    assert str(seen["directory"]) == "gs://bucket/runs/a"
    assert not isinstance(seen["directory"], str)  # an epath.Path, as Orbax takes
    # Orbax writes arrays to gs:// or local paths only: other schemes are refused
    for url in ("s3://bucket/run", store.new_bucket() + "/run"):
        with pytest.raises(UserError, match="local directory or a gs:// URL"):
            train_state.RunCheckpoints(url)
    assert "directory" in seen and len(seen) == 1


# ----------------------------------------------------------------- a whole run


def _events(url: str, tmp_path) -> dict[str, list[int]]:
    """Scalar tags and their steps of the event files under ``url``."""
    import tensorflow as tf

    tags: dict[str, list[int]] = {}
    for i, obj in enumerate(o for o in _objects(url) if "tfevents" in o):
        local = tmp_path / f"events{i}"
        local.write_bytes(rundir.run_path(obj).read_bytes())
        for event in tf.compat.v1.train.summary_iterator(str(local)):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
        local.unlink()
    return tags


def test_train_resume_evaluate_and_report_on_an_object_store(tmp_path, monkeypatch):
    from explistops_jax import evaluator, report

    root = store.new_bucket() + "/runs"
    url = root + "/tiny"
    local_checkpoints = tmp_path / "checkpoints"

    class LocalCheckpoints(train_state.RunCheckpoints):
        """Orbax on a local directory; everything else of the run on the store."""

        def __init__(self, model_dir, *args, **kwargs):
            assert str(model_dir) == url
            super().__init__(local_checkpoints, *args, **kwargs)

    monkeypatch.setattr(trainer, "RunCheckpoints", LocalCheckpoints)
    evaluation = trainer.EvalConfig(period=4, max_examples=4, batch_size=4)
    first = tiny.train_tiny(url, 8, period=4, keep=2, evaluation=evaluation)
    assert first.model_dir == url and first.step == 8
    assert train_state.checkpoint_steps(local_checkpoints) == [4, 8]
    run = RunDir(url)
    assert [r["step"] for r in rundir.read_jsonl(run.train_log)] == list(range(1, 9))
    # resume: 8 -> 12 from the checkpoint, the logs continue on the store
    second = tiny.train_tiny(url, 12, period=4, keep=2, evaluation=evaluation)
    assert second.step == 12
    log = rundir.read_jsonl(run.train_log)
    assert [r["step"] for r in log] == list(range(1, 13))
    assert store.UPLOADS[str(run.train_log)] < 12  # buffered, not one upload a line
    assert [(r["step"], r["split"]) for r in rundir.read_jsonl(run.eval_log)] == [
        (4, "validation"), (8, "validation"), (12, "validation")]
    info = rundir.read_json(run.run_json)
    assert info["mixture_or_task_name"] == tiny.TASK and info["total_steps"] == 12
    assert run.metrics_steps(tiny.TASK, "validation") == [4, 8, 12]
    rows = rundir.read_jsonl(run.predictions(tiny.TASK, "validation", 12))
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    # TensorBoard events on the store, readable by TensorFlow's reader
    tags = _events(str(run.path / "tensorboard" / "train"), tmp_path)
    assert sorted(set(tags["train/loss"])) == list(range(1, 13))
    assert f"{tiny.TASK}/validation/exact_match" in _events(
        str(run.path / "tensorboard" / "eval"), tmp_path)

    # a standalone evaluation of the last checkpoint, written to the store
    model = tiny.TinyModel()
    checkpoints = train_state.RunCheckpoints(local_checkpoints, read_only=True)
    abstract = trainer.partitioning.Partitioner().abstract_params(model)
    params = checkpoints.restore_params(abstract, 12)
    ev = evaluator.Evaluator(model, tiny.TASK, "train", task_feature_lengths=tiny.LENGTHS,
                             batch_size=4, max_examples=4, model_dir=url)
    results = ev.evaluate(params, 12)
    saved = rundir.read_json(run.metrics(tiny.TASK, "train", 12))
    assert saved["metrics"] == results[(tiny.TASK, "train")] and saved["num_examples"] == 4
    assert run.eval_splits() == [(tiny.TASK, "train"), (tiny.TASK, "validation")]

    # the report reads the runs on the store and writes there
    path = report.write_report(root, root)
    assert str(path) == root + "/" + rundir.REPORT_FILE
    text = rundir.run_path(path).read_text()
    assert "[tiny](tiny)" in text  # the run, linked relative to the report
    assert (rundir.run_path(root) / rundir.LOSS_CURVES_PNG).read_bytes()[:4] == b"\x89PNG"

    # no temporary object anywhere; nothing of the run leaked to local disk
    objects = _objects(root)
    assert not [o for o in objects if o.endswith(".tmp") or "/." in o]
    assert sorted(os.listdir(tmp_path)) == ["checkpoints"]
    assert not os.path.exists("memory:")


def test_tensorboard_failure_warns_once_and_the_logs_go_on(monkeypatch, caplog):
    def refuse(logdir):
        raise NotImplementedError(f"no event files on {logdir}")

    monkeypatch.setattr(summaries, "_summary_writer", refuse)
    url = store.new_bucket() + "/run"
    with caplog.at_level(logging.WARNING):
        writer = summaries.MetricsWriter(url)
        writer.write_train(1, {"loss": 1.0})
        writer.write_eval(1, "t", "validation", {"accuracy": 0.5})
        writer.write_train(2, {"loss": 0.5})
        writer.close()
    warnings = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and url in warnings[0].getMessage()
    assert [r["step"] for r in rundir.read_jsonl(RunDir(url).train_log)] == [1, 2]
    assert rundir.read_jsonl(RunDir(url).eval_log)[0]["accuracy"] == 0.5


# ----------------------------------------------------------------- entry points


def test_reproduce_done_files_config_and_outputs_on_the_store(monkeypatch):
    import gin

    from explistops_jax import gin_config, gin_writer, reproduce, runtime, study
    from explistops_jax.commands import report as report_command

    root = store.new_bucket() + "/out"
    runs = study.runs_for("cpu", styles=("none",))[:1]
    calls = []
    monkeypatch.setattr(reproduce, "train_run", lambda run, run_dir, **_: (
        calls.append(str(run_dir)), trainer.TrainResult(str(run_dir), 3, {}))[1])
    monkeypatch.setattr(reproduce, "evaluate_run",
                        lambda run, run_dir, step, **_: {"test": {"accuracy": 0.5}})
    dirs = reproduce.run_all(runs, root, preset="cpu", log=lambda _: None)
    assert [str(d) for d in dirs] == calls == [f"{root}/{runs[0].name}"]
    done = rundir.read_json(RunDir(dirs[0]).done_json)
    assert done["step"] == 3 and done["metrics"] == {"test": {"accuracy": 0.5}}
    reproduce.run_all(runs, root, preset="cpu", log=lambda _: None)
    assert len(calls) == 1  # done: skipped
    lines = gin_writer.t5x_commands(study.runs_for("paper", sizes=["small"]), root)
    assert lines and all(f'MODEL_DIR="{root}/t5x/' in line for line in lines)

    gin.clear_config()
    path = gin_config.write_config(dirs[0])
    assert str(path) == f"{dirs[0]}/config.gin" and store.UPLOADS[str(path)] == 1

    fresh = root + "/fresh"
    with pytest.raises(UserError):
        with runtime.new_output(fresh):
            rundir.write_text(fresh + "/run.json", "{}")
            raise UserError("a mistake")
    assert not rundir.run_path(fresh).exists()  # removed again
    assert str(report_command._default_out([root + "/a", root + "/b/c"])) == root


# ----------------------------------------------------------------- exports


def _tiny_params():
    import jax
    import numpy as np
    from flax.core import meta

    from explistops_jax import network

    config = network.get_config("t5_1_1_tiny", vocab_size=64, emb_dim=32, num_heads=2,
                                head_dim=16, mlp_dim=48)
    tokens = jax.numpy.ones((1, 4), jax.numpy.int32)
    variables = network.Transformer(config).init(jax.random.PRNGKey(0), tokens, tokens)
    return config, jax.tree.map(np.asarray, meta.unbox(variables["params"]))


def test_hf_export_writes_an_object_store_whole(monkeypatch):
    import json

    import numpy as np
    from safetensors import numpy as st

    from explistops_jax import checkpoints
    from explistops_jax.checkpoints import hf

    config, params = _tiny_params()
    before = store.local_files()
    url = store.new_bucket() + "/hf"
    written = checkpoints.save(config, params, url, "hf")
    assert os.fspath(written) == url
    assert json.loads(rundir.run_path(url + "/config.json").read_text())["model_type"] == "t5"
    tensors = st.load(rundir.run_path(url + "/model.safetensors").read_bytes())
    expected = hf.hf_tensors(config, params)
    assert sorted(tensors) == sorted(expected)
    assert all(np.array_equal(tensors[k], expected[k]) for k in expected)
    assert set(store.UPLOADS.values()) == {1}  # each object one upload
    assert store.local_files() == before       # nothing landed on the local disk
    with pytest.raises(UserError, match="already exists"):
        checkpoints.save(config, params, url, "hf")

    def full(*args, **kwargs):
        raise OSError("quota exceeded")

    monkeypatch.setattr(st, "save", full)
    failed = store.new_bucket() + "/hf"
    with pytest.raises(OSError, match="quota"):
        checkpoints.save(config, params, failed, "hf")
    assert not rundir.run_path(failed).exists()  # what was written is gone again


@pytest.mark.parametrize("fmt", ["t5x", "explistops"])
def test_orbax_exports_hand_the_url_to_orbax(fmt, monkeypatch):
    """Orbax's own atomic save writes the store (its gcs driver for gs://); the
    export gives it the URL, not a local temporary directory to rename."""
    import orbax.checkpoint as ocp

    from explistops_jax import checkpoints

    seen = []

    class Manager:
        def __init__(self, directory, **kwargs):
            seen.append(os.fspath(directory))

        def save(self, *args, **kwargs):
            return True

        def wait_until_finished(self):
            pass

        def close(self):
            pass

    class Checkpointer:
        def save(self, directory, item):
            seen.append(os.fspath(directory))

    monkeypatch.setattr(ocp, "CheckpointManager", Manager)
    monkeypatch.setattr(ocp, "PyTreeCheckpointer", Checkpointer)
    config, params = _tiny_params()
    url = store.new_bucket() + "/out"
    checkpoints.save(config, params, url, fmt)
    assert seen == [url if fmt == "t5x" else url + "/params"]
