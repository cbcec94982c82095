"""The evaluator: decoding a split, the task's postprocessing and metrics, the
predictions / metrics files; standalone evaluate() and predict on a real (tiny)
T5 run directory."""

import json
from pathlib import Path

import jax
import pytest

import tiny_trainer_fixtures as tiny
from explistops_jax import evaluator, input_pipeline, scoring, train_state, trainer
from explistops_jax.errors import UserError


@pytest.fixture(scope="module", autouse=True)
def task():
    tiny.register_tiny_task()


def _tiny_t5():
    """A tiny T5 1.1 for the explistops30 tasks' domain vocabulary."""
    provider = input_pipeline.get_provider("explistops30_short")
    return trainer.ModelSpec("t5_1_1_tiny").build(provider.output_features["targets"].vocabulary)


def _params(model):
    shapes = {"encoder_input_tokens": (1, 12), "decoder_input_tokens": (1, 12)}
    from flax.core import meta

    return meta.unbox(model.get_initial_variables(jax.random.PRNGKey(0), shapes))["params"]


def test_evaluator_writes_predictions_and_task_metrics(tmp_path):
    model = tiny.TinyModel()
    ev = evaluator.Evaluator(model, tiny.TASK, "validation", task_feature_lengths=tiny.LENGTHS,
                             batch_size=4, model_dir=tmp_path)
    results = ev.evaluate(_params(model), step=7)
    metrics = results[(tiny.TASK, "validation")]
    assert set(metrics) == {"exact_match"} and 0.0 <= metrics["exact_match"] <= 100.0
    out = evaluator.eval_dir(tmp_path, tiny.TASK, "validation")
    assert sorted(p.name for p in out.iterdir()) == ["metrics_7.json", "predictions_7.jsonl"]
    summary = json.loads((out / "metrics_7.json").read_text())
    assert summary["step"] == 7 and summary["num_examples"] == 10  # 10 = 2 batches + 2
    assert summary["metrics"] == metrics
    rows = [json.loads(line) for line in (out / "predictions_7.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(10))
    words = tiny._words("validation", 10)
    assert [r["input"] for r in rows] == words
    assert [r["target"] for r in rows] == [w[::-1] for w in words]
    assert all(isinstance(r["prediction"], str) for r in rows)
    with pytest.raises(UserError, match="has a split"):
        evaluator.Evaluator(model, tiny.TASK, "nope", task_feature_lengths=tiny.LENGTHS)


def test_rows_of_explistops_tasks_have_answers_and_steps():
    example = {"expression": b"[MAX 2 [MIN 4 7 ] ]", "answer": 4, "modulus": 30,
               "inputs_pretokenized": b"[MAX 2 [MIN 4 7 ] ]"}
    target_text = "Min, smallest number of [4, 7] is 4\nMax, largest number of [2, 4] is 4\nFinal answer: 4"
    target = scoring.postprocess(target_text, example=example, is_target=True)
    prediction_text = "Min, smallest number of [4, 7] is 4 Max, largest number of [2, 4] is 4 Final answer: 4"
    prediction = scoring.postprocess(prediction_text, example=example, is_target=False)

    class Task:  # the two things _row reads from a seqio.Task
        output_features = {"targets": type("F", (), {"vocabulary": None})()}

    example["targets_pretokenized"] = target_text.encode()
    row = evaluator._row(0, example, target, prediction_text, prediction, Task)
    assert row["answer"] == 4 and row["target_answer"] == 4 and row["correct"] is True
    assert [s["op"] for s in row["steps"]] == ["MIN", "MAX"]
    assert row["faithful"] is True and row["input"] == "[MAX 2 [MIN 4 7 ] ]"
    json.dumps(row)  # plain JSON


def test_plain_values():
    import numpy as np
    import seqio

    value = {"a": np.float32(0.5), "b": seqio.metrics.Scalar(2.0), "c": float("nan"),
             "d": (np.int64(1), b"x"), "e": np.arange(2)}
    assert evaluator._plain(value) == {"a": 0.5, "b": 2.0, "c": None, "d": [1, "x"], "e": [0, 1]}


def _untrained_t5_run(run: Path, step: int) -> Path:
    """A run directory as trainer.train leaves it, without compiling a train
    step: a freshly initialised tiny T5 saved as checkpoint ``step``."""
    import jax.numpy as jnp

    from explistops_jax import optimizers, partitioning
    from explistops_jax.train_state import RunCheckpoints

    from explistops_jax import train_step
    from explistops_jax.checkpoints.common import config_to_dict

    model = _tiny_t5()
    p = partitioning.Partitioner()
    tx, _ = optimizers.adafactor().build()
    layout = train_step.state_layout(model, tx, p)
    state = train_step.initial_state(model, tx, p, layout, seed=0)
    state = state.replace(step=jnp.asarray(step, jnp.int32))
    checkpoints = RunCheckpoints(run)
    checkpoints.save(state, input_pipeline.Position().to_json(),
                     {"model_config": config_to_dict(model.config),
                      "mixture_or_task_name": "explistops30_short",
                      "task_feature_lengths": {"inputs": 64, "targets": 32}})
    checkpoints.close()
    return run


def test_standalone_evaluate_and_predict_on_a_t5_run(tmp_path, capsys):
    import seqio_tasks  # noqa: F401  (registers the explistops tasks)
    from explistops_jax import cli

    run = _untrained_t5_run(tmp_path / "run", step=2)
    results = evaluator.evaluate(run, split="test", max_examples=3, batch_size=4)
    metrics = results[("explistops30_short", "test")]
    assert {"accuracy", "parse_failure_rate", "step_faithfulness"} <= set(metrics)
    out = evaluator.eval_dir(run, "explistops30_short", "test")
    rows = [json.loads(l) for l in (out / "predictions_2.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    assert {"input", "target", "prediction", "answer", "correct", "steps",
            "true_answer"} <= set(rows[0])
    # one checkpoint_N directory works too, and so does the command line
    assert cli.main(["predict", "[MAX 2 9 [MIN 4 7 ] 0 ]", "--checkpoint",
                     str(run / "checkpoint_2")]) == 0
    printed = capsys.readouterr().out
    assert "answer:" in printed and "true answer 9" in printed


def test_initial_checkpoint_path_reads_our_checkpoints_in_t5x_layout(tmp_path):
    """INITIAL_CHECKPOINT_PATH: checkpoints.load_any reads a checkpoint of this
    trainer (T5X's state/target layout) and training starts from its params."""
    import numpy as np

    import seqio_tasks  # noqa: F401
    from explistops_jax import optimizers, partitioning

    from explistops_jax import checkpoints as interop
    from explistops_jax import train_step

    run = _untrained_t5_run(tmp_path / "pretrained", step=2)
    _, saved, _, _ = train_state.load_model_and_params(run)
    model = _tiny_t5()
    p = partitioning.Partitioner()
    tx, _ = optimizers.adafactor().build()
    layout = train_step.state_layout(model, tx, p)
    _, initial = interop.load_any(str(run), model.config)
    state = train_step.initial_state(model, tx, p, layout, seed=1, initial_params=initial)
    assert int(state.step) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    other = trainer.ModelSpec("t5_1_1_tiny", vocab_size=256).build()
    with pytest.raises(UserError, match="wrong shape"):
        interop.load_any(str(run), other.config)


def test_predict_takes_the_modulus_of_the_tasks_dataset():
    from explistops_jax.predict import dataset_modulus

    assert dataset_modulus("explistops10_cpu_medium") == 10
    assert dataset_modulus("listops10_none_tagged") == 10
    assert dataset_modulus("explistops30_len50_100_long_sp") == 30
    assert dataset_modulus("some_other_task") == 30
    assert dataset_modulus("unregistered_config_medium") == 30


def test_predict_picks_the_task_of_the_asked_style():
    import seqio_tasks  # noqa: F401  (registers the explistops tasks)
    from explistops_jax.predict import task_for

    assert task_for("explistops30_all_styles", "long").name == "explistops30_long_tagged"
    assert task_for("listops10_all_styles", None).name == "listops10_medium_tagged"
    assert task_for("explistops30_medium_n2000", "none").name == "explistops30_none_n2000"
    assert task_for("explistops30_medium", None).name == "explistops30_medium"
    assert task_for(None, "short").name == "explistops30_short"
    with pytest.raises(UserError, match="unknown explanation style 'verbose'"):
        task_for("explistops30_medium", "verbose")


# ----------------------------------------------------------------- decoding options, progress


class _RecordingModel:
    """predict_batch records its keyword arguments (at tracing) and returns
    tokens drawn from its rng (zeros without one); score_batch: zeros."""

    def __init__(self, nucleus: bool = True):
        self.calls: list[dict] = []
        self.nucleus = nucleus

    def predict_batch(self, params, batch, *, rng=None, max_decode_length=None, **kwargs):
        import jax.numpy as jnp

        if "top_p" in kwargs and not self.nucleus:
            raise TypeError("predict_batch() got an unexpected keyword argument 'top_p'")
        self.calls.append({**kwargs, "max_decode_length": max_decode_length,
                           "rng": rng is not None})
        shape = (batch["encoder_input_tokens"].shape[0],
                 max_decode_length or batch["decoder_input_tokens"].shape[1])
        if rng is None:
            return jnp.zeros(shape, jnp.int32)
        return jax.random.randint(rng, shape, 2, 100)

    def score_batch(self, params, batch):
        import jax.numpy as jnp

        return jnp.zeros(batch["encoder_input_tokens"].shape[0])


def _features(n: int = 5, length: int = 4) -> list[dict]:
    import numpy as np

    return [{"encoder_input_tokens": np.full((3,), i + 1, np.int32),
             "decoder_input_tokens": np.ones((length,), np.int32),
             "decoder_target_tokens": np.ones((length,), np.int32)} for i in range(n)]


@pytest.mark.parametrize("decode, want", [
    (None, {"method": "greedy", "max_decode_length": None, "rng": False}),
    ({"num_beams": 3, "alpha": 0.0},
     {"method": "beam", "beam_size": 3, "alpha": 0.0, "max_decode_length": None,
      "rng": False}),
    ({"do_sample": True, "temperature": 0.5, "top_k": 4, "top_p": 0.9, "max_new_tokens": 2},
     {"method": "sample", "temperature": 0.5, "top_k": 4, "top_p": 0.9,
      "max_decode_length": 2, "rng": True}),
    ({"do_sample": True},  # top_p 1.0 is not passed: models without nucleus sampling work
     {"method": "sample", "temperature": 1.0, "top_k": 0, "max_decode_length": None,
      "rng": True}),
    ({"method": "beam"}, {"method": "beam", "beam_size": 4, "alpha": 0.6,
                          "max_decode_length": None, "rng": False}),
])
def test_decoder_passes_generate_options_to_predict_batch(decode, want):
    model = _RecordingModel()
    decoder = evaluator.Decoder(model, batch_size=2, decode=decode, progress=False)
    tokens = decoder.predict_tokens({}, _features())
    assert model.calls == [want]  # one compilation for the three batches
    assert len(tokens) == 5
    assert tokens[0].shape == (want["max_decode_length"] or 4,)


def test_decoder_sampling_is_seeded_per_batch():
    import numpy as np

    def run(seed, batch_size=2):
        decoder = evaluator.Decoder(_RecordingModel(), batch_size=batch_size,
                                    decode={"do_sample": True, "seed": seed}, progress=False)
        return np.stack(decoder.predict_tokens({}, _features(6)))

    np.testing.assert_array_equal(run(0), run(0))
    assert not np.array_equal(run(0), run(1))
    tokens = run(0)
    assert not np.array_equal(tokens[:2], tokens[2:4])  # batches draw apart


def test_decoder_checks_options_and_names_a_model_without_top_p():
    with pytest.raises(UserError, match="top_p=2"):
        evaluator.Decoder(_RecordingModel(), decode={"do_sample": True, "top_p": 2})
    with pytest.raises(UserError, match="unknown decoding option beam_size"):
        evaluator.Decoder(_RecordingModel(), decode={"beam_size": 2})
    decoder = evaluator.Decoder(_RecordingModel(nucleus=False), progress=False,
                                decode={"do_sample": True, "top_p": 0.5})
    with pytest.raises(UserError, match="no nucleus sampling"):
        decoder.predict_tokens({}, _features())


def test_evaluate_checks_decode_options_before_reading_the_checkpoint(tmp_path):
    with pytest.raises(UserError, match="num_beams=0"):
        evaluator.evaluate(tmp_path / "no_such_run", decode={"num_beams": 0})


class _Terminal:
    """A standard error that says it is a terminal (tqdm's disable=None test)."""

    def __init__(self):
        import io

        self.buffer = io.StringIO()

    def isatty(self):
        return True

    def write(self, text):
        return self.buffer.write(text)

    def flush(self):
        pass


def test_progress_bar_only_on_a_terminal_or_when_asked(capsys, monkeypatch):
    model = _RecordingModel()
    evaluator.Decoder(model, batch_size=2).predict_tokens({}, _features(), "decode tiny/x")
    evaluator.Decoder(model, batch_size=2).score({}, _features())
    assert capsys.readouterr().err == ""  # not a terminal: quiet
    evaluator.Decoder(model, batch_size=2, progress=True).predict_tokens(
        {}, _features(), "decode tiny/x")
    err = capsys.readouterr().err
    assert "decode tiny/x" in err and "/5 [" in err and "ex/s]" in err  # count, ETA, rate
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    evaluator.Decoder(model, batch_size=2).predict_tokens({}, _features(), "decode tiny/x")
    assert "decode tiny/x" in terminal.buffer.getvalue()
    terminal.buffer = __import__("io").StringIO()
    evaluator.Decoder(model, batch_size=2, progress=False).predict_tokens({}, _features())
    assert terminal.buffer.getvalue() == ""


def test_decoding_options_reach_the_t5_model():
    """Sampling options and max_new_tokens through a real (tiny, untrained) T5."""
    import numpy as np

    import seqio_tasks  # noqa: F401  (registers the explistops tasks)

    model = _tiny_t5()
    features = [{k: np.asarray(v, np.int32) for k, v in f.items()}
                for f in _features(3, length=12)]
    decode = {"do_sample": True, "temperature": 0.7, "top_k": 5, "max_new_tokens": 6,
              "seed": 1}
    run = lambda d: np.stack(evaluator.Decoder(model, batch_size=4, decode=d, progress=False)
                             .predict_tokens(_params(model), features))
    first = run(decode)
    assert first.shape == (3, 6)
    np.testing.assert_array_equal(first, run(decode))
    assert run({"num_beams": 2, "max_new_tokens": 6}).shape == (3, 6)


@pytest.mark.parametrize("command", [["eval", "/no/such/run"],
                                     ["predict", "[MAX 2 9 ]", "--checkpoint", "/no/such/run"]])
@pytest.mark.parametrize("flags, names", [
    (["--top_p", "1.5", "--do_sample"], ["--top_p=1.5", "(0, 1]"]),
    (["--temperature", "0", "--do_sample"], ["--temperature=0.0", "> 0"]),
    (["--num_beams", "0"], ["--num_beams=0", ">= 1"]),
    (["--top_k", "3"], ["--top_k=3", "--do_sample"]),
    (["--decode", "beam"], ["--decode"]),  # the older flag is gone: --num_beams
])
def test_decoding_flag_mistakes_are_one_line_before_the_checkpoint(command, flags, names,
                                                                    capsys):
    from explistops_jax import cli

    try:
        status = cli.main(command + flags)
    except SystemExit as exit:  # argparse's own errors
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1, err
    assert "/no/such/run" not in err and all(n in err for n in names), err
