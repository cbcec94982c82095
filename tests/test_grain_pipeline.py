"""The grain input backend: the same batches as SeqIO's, sharding, shuffling,
resuming, the fallback to SeqIO, and a whole run without TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from explistops_jax import backends, data, input_pipeline, own_tasks
from explistops_jax.errors import ConfigError
from explistops_jax.listops import SamplerConfig

ROOT = Path(__file__).resolve().parents[1]

_SAMPLER = SamplerConfig(min_length=4, max_length=12, max_depth=3, max_args=4, max_value=9)
TINY = data.DatasetConfig(
    name="explistops_test_grain", modulus=10,
    splits={"train": data.SplitConfig(_SAMPLER, 37, 1101),
            "test": data.SplitConfig(_SAMPLER, 9, 1102)})


@pytest.fixture(scope="module", autouse=True)
def tiny_config():
    data.register_config(TINY)


@pytest.fixture(scope="module")
def seqio_tasks():
    """The SeqIO registrations, for comparing the two backends."""
    tasks = pytest.importorskip("seqio_tasks")
    tasks.register_dataset_tasks(TINY.name, styles=["none", "medium", "long"],
                                 subset_sizes=(20,))
    return tasks


def _stream(name, backend, *, pack=False, lengths=None, split="train", shuffle=False,
            shard=(0, 1), batch_size=6, seed=0, num_epochs=1):
    config = input_pipeline.DataConfig(
        name, lengths or {"inputs": 32, "targets": 64}, split=split, batch_size=batch_size,
        shuffle=shuffle, pack=pack, num_epochs=num_epochs, seed=seed, data_backend=backend)
    return input_pipeline.BatchStream(config, shard_index=shard[0], num_shards=shard[1])


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (pa, x), (pb, y) in zip(a, b):
        assert pa == pb and sorted(x) == sorted(y)
        for key in x:
            assert x[key].dtype == y[key].dtype == np.int32, key
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


CASES = [
    # name, pack, lengths (short ones trim), shard
    (f"{TINY.name}_medium", False, {"inputs": 32, "targets": 64}, (0, 1)),
    (f"{TINY.name}_long_tagged", True, {"inputs": 24, "targets": 40}, (1, 2)),
    (f"{TINY.name}_none_n20", True, {"inputs": 8, "targets": 4}, (0, 1)),
    (f"{TINY.name}_medium_tagged", False, {"inputs": 12, "targets": 16}, (2, 3)),
    # inputs in LRA's parenthesized notation; short inputs trim the parentheses
    (f"{TINY.name}_long_paren", True, {"inputs": 48, "targets": 40}, (0, 1)),
    (f"{TINY.name}_none_paren", False, {"inputs": 10, "targets": 4}, (1, 2)),
]


@pytest.mark.parametrize("name,pack,lengths,shard", CASES)
def test_grain_batches_equal_seqio_batches(seqio_tasks, name, pack, lengths, shard):
    grain = _stream(name, "grain", pack=pack, lengths=lengths, shard=shard)
    seqio = _stream(name, "seqio", pack=pack, lengths=lengths, shard=shard)
    assert (grain.backend, seqio.backend) == ("grain", "seqio")
    assert grain.steps_per_epoch == seqio.steps_per_epoch
    _assert_same_batches(list(grain.iterate()), list(seqio.iterate()))


def test_built_in_task_batches_equal_seqio_batches(seqio_tasks):
    """explistops30_medium, packed, the first batches of its validation split."""
    lengths = {"inputs": 64, "targets": 128}
    grain = _stream("explistops30_medium", "grain", pack=True, lengths=lengths,
                    split="validation", num_epochs=None, batch_size=4)
    seqio = _stream("explistops30_medium", "seqio", pack=True, lengths=lengths,
                    split="validation", num_epochs=None, batch_size=4)
    take = lambda stream: [item for _, item in zip(range(5), stream.iterate())]  # noqa: E731
    _assert_same_batches(take(grain), take(seqio))


def test_evaluation_examples_equal_seqio_examples(seqio_tasks):
    """What the evaluator reads: the raw fields, texts and ids, with SeqIO's types."""
    import seqio

    from explistops_jax import seqio_backend

    lengths = {"inputs": 16, "targets": 24}
    name = f"{TINY.name}_long_tagged"
    ours = own_tasks.get_tasks(name)[0].read_split("test", lengths, 5)
    theirs = seqio_backend.read_split(seqio.get_mixture_or_task(name), "test", lengths, 5)
    for a, b in zip(ours, theirs):
        assert len(a) == len(b) == 5
        for x, y in zip(a, b):
            assert sorted(x) == sorted(y)
            for key in x:
                assert type(x[key]) is type(y[key]), key
                np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_paren_inputs_are_lra_notation_with_the_same_targets(seqio_tasks):
    """``_paren``: the same example in LRA's notation, ( and ) known to the vocabulary;
    the same target ids; equal through both backends (the batches above)."""
    from explistops_jax import listops

    bracket = own_tasks.get_tasks(f"{TINY.name}_medium")[0]
    paren = own_tasks.get_tasks(f"{TINY.name}_medium_paren")[0]
    table = own_tasks.domain_table()
    for index in range(5):
        a, b = bracket.example("test", index, None), paren.example("test", index, None)
        tree = listops.parse(a["expression"].decode())
        assert b["inputs_pretokenized"].decode() == listops.format(tree, "paren")
        assert listops.parse(b["inputs_pretokenized"].decode()) == tree
        assert table.unk_id not in b["inputs"].tolist()
        assert table.decode(b["inputs"].tolist()) == b["inputs_pretokenized"].decode()
        np.testing.assert_array_equal(a["targets"], b["targets"])
        assert a["expression"] == b["expression"] and a["answer"] == b["answer"]


@pytest.fixture
def generated(monkeypatch):
    """The indices of the examples generated (``data.examples``), as they are."""
    calls = []
    real = data.examples

    def counting(config, split, start=0, stop=None, **kwargs):
        calls.extend(range(start, stop))
        return real(config, split, start, stop, **kwargs)

    monkeypatch.setattr(data, "examples", counting)
    return calls


def test_each_process_generates_only_its_own_examples(generated):
    """Three processes, global batch 6: each generates exactly the examples of its
    two rows of every global batch, and together every example once."""
    calls = generated
    size = TINY.split("train").num_examples
    seen = []
    for index in range(3):
        calls.clear()
        stream = _stream(f"{TINY.name}_medium", "grain", shard=(index, 3), batch_size=6,
                         shuffle=True)
        rows = sum(int((b["decoder_loss_weights"].sum(1) > 0).sum())
                   for _, b in stream.iterate())
        share = len([p for p in range(size) if p % 6 // 2 == index])  # 13, 12, 12
        assert len(calls) == len(set(calls)) == rows == share
        assert stream.steps_per_epoch == 7  # ceil(37 / 6): all processes agree
        seen.extend(calls)
    assert sorted(seen) == list(range(size))  # every example once, by one process


def test_packing_processes_generate_only_their_own_rows_examples(generated):
    """Packing, three processes, global batch 6 rows, two epochs: each process
    sizes only its block of the split (``share_sizes``; the allgather here joins
    the blocks a one-process pass computes), then generates only the examples
    packed into its rows, and together every example once an epoch."""
    calls = generated
    size = TINY.split("train").num_examples  # 37: blocks of 13, 13 and 11
    lengths = {"inputs": 48, "targets": 96}
    options = dict(shuffle=True, pack=True, lengths=lengths, num_epochs=2, batch_size=6)
    whole = _stream(f"{TINY.name}_medium", "grain", **options)
    one_process = (whole.steps_per_epoch, list(whole.iterate()))
    sizes = whole.source._sizes()
    blocks = np.concatenate([sizes, np.full((3 * 13 - size, 2), -1)]).reshape(3, 13, 2)

    def allgather(mine):  # what every process would send, checked against the pass of one
        np.testing.assert_array_equal(mine, blocks[index])
        return blocks

    seen, shards = [], []
    for index in range(3):
        calls.clear()
        stream = _stream(f"{TINY.name}_medium", "grain", shard=(index, 3), **options)
        stream.source.share_sizes(index, 3, allgather)
        assert sorted(calls) == list(range(13 * index, min(13 * index + 13, size)))
        calls.clear()
        assert stream.steps_per_epoch == one_process[0]  # laid out from the shared sizes
        assert not calls
        packed = sum(int(b["decoder_segment_ids"].max(axis=1).sum())
                     for _, b in stream.iterate())
        assert len(calls) == packed  # the examples in this process's rows, no more
        seen.extend(calls)
        shards.append(list(stream.iterate()))
    assert sorted(seen) == sorted(list(range(size)) * 2)  # two epochs, each example once
    for step, (position, batch) in enumerate(one_process[1]):  # the batches of one process
        for index, shard in enumerate(shards):
            assert shard[step][0] == position
            for key in batch:
                np.testing.assert_array_equal(shard[step][1][key],
                                              batch[key][2 * index:2 * index + 2], err_msg=key)


@pytest.mark.parametrize("backend,pack", [("grain", False), ("grain", True),
                                          ("seqio", False)])
def test_shards_are_the_rows_of_each_global_batch(seqio_tasks, backend, pack):
    """Shard i of n holds rows i * local ... of every global batch of one
    process's stream (what make_array_from_process_local_data places on
    process i's devices), shuffled and over two epochs: N processes train on the
    same batches as one."""
    name = f"{TINY.name}_medium"  # registered for seqio by the module fixture
    kwargs = dict(pack=pack, shuffle=True, seed=3, num_epochs=2, batch_size=8)
    whole = list(_stream(name, backend, **kwargs).iterate())
    shards = [list(_stream(name, backend, shard=(i, 4), **kwargs).iterate())
              for i in range(4)]
    for i, shard in enumerate(shards):
        assert [p for p, _ in shard] == [p for p, _ in whole]
        for (_, mine), (_, batch) in zip(shard, whole):
            for key in batch:
                np.testing.assert_array_equal(mine[key], batch[key][2 * i:2 * i + 2],
                                              err_msg=key)


def _ids(batches):
    """The first target token sequence of every real row (identifies the example)."""
    return [tuple(row) for _, b in batches for row, w in
            zip(b["decoder_target_tokens"], b["decoder_loss_weights"]) if w.any()]


@pytest.mark.parametrize("pack", [False, True])
def test_epochs_shuffle_with_their_own_seed_and_resume_exactly(pack):
    stream = _stream(f"{TINY.name}_short", "grain", pack=pack, shuffle=True, num_epochs=3,
                     seed=5, batch_size=4)
    items = list(stream.iterate())
    steps = stream.steps_per_epoch
    assert len(items) == 3 * steps
    epochs = [items[e * steps:(e + 1) * steps] for e in range(3)]
    if not pack:
        assert sorted(_ids(epochs[0])) == sorted(_ids(epochs[1]))  # every example, once
    assert _ids(epochs[0]) != _ids(epochs[1])  # in another order
    for k in (1, steps + 2):
        resumed = list(_stream(f"{TINY.name}_short", "grain", pack=pack, shuffle=True,
                               num_epochs=3, seed=5, batch_size=4).iterate(items[k - 1][0]))
        _assert_same_batches(resumed, items[k:])
    other_seed = _stream(f"{TINY.name}_short", "grain", pack=pack, shuffle=True,
                         num_epochs=1, seed=6, batch_size=4)
    assert _ids(list(other_seed.iterate())) != _ids(epochs[0])


def test_other_tasks_fall_back_to_seqio():
    resolve = backends.choose_backend
    assert resolve(f"{TINY.name}_medium") == "grain"
    assert resolve(f"{TINY.name}_medium", "seqio") == "seqio"
    assert resolve("explistops30_long_tagged_n2000") == "grain"
    for name in ("tiny_reverse", "explistops30_medium_sp", "explistops30_medium_tfds",
                 "unknown_dataset_medium"):
        assert resolve(name) == "seqio", name
    assert resolve("explistops30_all_styles") == "seqio"  # training samples a mixture
    assert resolve("explistops30_all_styles", training=False) == "grain"  # its members
    assert resolve(f"{TINY.name}_medium", use_cached=True) == "seqio"
    with pytest.raises(ConfigError, match="data backend"):
        input_pipeline.DataConfig("x_none", {"inputs": 4, "targets": 4}, data_backend="tf")


_NO_TF_RUN = textwrap.dedent("""
    import json, sys
    from explistops_jax import data, evaluator, input_pipeline, optimizers, trainer
    from explistops_jax.listops import SamplerConfig
    from explistops_jax.train_state import CheckpointConfig

    sampler = SamplerConfig(min_length=4, max_length=12, max_depth=3, max_args=4, max_value=9)
    data.register_config(data.DatasetConfig(
        name="explistops_test_grain", modulus=10,
        splits={"train": data.SplitConfig(sampler, 37, 1101),
                "test": data.SplitConfig(sampler, 9, 1102)}))
    task = "explistops_test_grain_medium"
    lengths = {"inputs": 24, "targets": 48}
    model = trainer.ModelSpec("t5_1_1_tiny", overrides=dict(
        emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1,
        num_decoder_layers=1))
    result = trainer.train(
        model, input_pipeline.DataConfig(task, lengths, batch_size=8, pack=True),
        sys.argv[1], optimizer=optimizers.adamw(1e-3), train_steps=3,
        checkpoint=CheckpointConfig(period=3, keep=1, async_save=False),
        evaluation=trainer.EvalConfig(period=None, split="test", max_examples=4,
                                      batch_size=4),
        progress=False)
    metrics = evaluator.evaluate(sys.argv[1], split="test", max_examples=6, batch_size=4)
    print(json.dumps({"step": result.step,
                      "loaded": sorted(m for m in ("tensorflow", "seqio") if m in sys.modules),
                      "metrics": sorted(metrics[(task, "test")])}))
""")


@pytest.fixture(scope="module")
def no_tf_run(tmp_path_factory):
    """A tiny training and evaluation in a fresh process (the default backend)."""
    run = tmp_path_factory.mktemp("grain") / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _NO_TF_RUN, str(run)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return run, json.loads(out.stdout.strip().splitlines()[-1])


def test_training_and_evaluation_never_import_tensorflow_or_seqio(no_tf_run):
    run, report = no_tf_run
    assert report["step"] == 3
    assert report["loaded"] == []
    assert "accuracy" in report["metrics"]
    assert (run / "eval" / "explistops_test_grain_medium" / "test").is_dir()


# The shipped gin files and the command line, the way a user runs them: a study
# condition's experiment file (shrunk to a tiny model and one step), the gin
# evaluation file, and `explistops eval` of a mixture (its members are read with
# grain; only training samples a mixture through SeqIO).
_NO_TF_ENTRY_POINTS = textwrap.dedent("""
    import json, sys
    from explistops_jax import cli, eval as gin_eval, train

    run, out = sys.argv[1], sys.argv[2]
    shrink = ["TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}", "BATCH_SIZE = 2",
              "TRAIN_STEPS = 1", "EPOCHS = None", "train.evaluation = None",
              "train.progress = False", "trainer.ModelSpec.preset = 't5_1_0_tiny'",
              "train.allow_truncation = True", "input_pipeline.DataConfig.pack = False",
              f"MODEL_DIR = '{run}'"]  # short lengths cut the examples: allowed here
    codes = [train.main(["--gin_file=gin_configs/experiments/explistops30_medium_t5_1_0_small.gin",
                         *(f"--gin_bindings={b}" for b in shrink)]),
             gin_eval.main(["--gin_file=gin_configs/runs/eval.gin",
                            f"--gin.CHECKPOINT_PATH='{run}'", "--gin.EVAL_SPLIT='validation'",
                            "--gin.BATCH_SIZE=2", "--gin.evaluate.max_examples=2",
                            "--allow_truncation",
                            f"--gin.EVAL_OUTPUT_DIR='{out}/gin'"]),
             cli.main(["eval", run, "--task", "explistops30_all_styles", "--split", "validation",
                       "--max_examples", "2", "--batch_size", "2", "--output_dir", f"{out}/mix",
                       "--allow_truncation"])]
    print(json.dumps({"codes": codes,
                      "loaded": sorted(m for m in ("tensorflow", "seqio") if m in sys.modules)}))
""")


def test_gin_files_and_commands_never_import_tensorflow_or_seqio(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _NO_TF_ENTRY_POINTS, str(tmp_path / "run"),
                          str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"codes": [0, 0, 0], "loaded": []}, out.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoint_1").is_dir()
    assert list((tmp_path / "out" / "gin" / "eval").glob("explistops30_medium/validation/metrics_1.json"))
    members = sorted(p.name for p in (tmp_path / "out" / "mix" / "eval").iterdir())
    # the mixture of the four styles, each tagged with its style in the inputs
    assert members == [f"explistops30_{s}_tagged" for s in ("long", "medium", "none", "short")]


def test_seqio_registry_only_where_seqio_reads():
    from explistops_jax import runtime

    register = runtime.register_tasks_for
    assert not register([f"{TINY.name}_medium", None, "explistops30_all_styles"])
    assert register(["explistops30_all_styles"], training=True)  # sampled through SeqIO
    assert not register([f"{TINY.name}_medium"], training=True)
    assert register(["explistops30_medium_sp"])  # SentencePiece: SeqIO's task only
    assert register([f"{TINY.name}_medium"], use_cached=True)  # an offline cache is SeqIO's
    assert register([f"{TINY.name}_medium"], "seqio")


def test_evaluation_files_are_the_same_with_either_backend(no_tf_run, seqio_tasks, tmp_path):
    from explistops_jax import evaluator

    run, _ = no_tf_run
    files = {}
    for backend in ("grain", "seqio"):
        out = tmp_path / backend
        results = evaluator.evaluate(run, split="test", max_examples=7, batch_size=4,
                                     output_dir=out, data_backend=backend)
        assert list(results) == [("explistops_test_grain_medium", "test")]
        folder = out / "eval" / "explistops_test_grain_medium" / "test"
        files[backend] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert sorted(files["grain"]) == ["metrics_3.json", "predictions_3.jsonl"]
    assert files["grain"] == files["seqio"]
