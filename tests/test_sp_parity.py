"""The `_sp` tasks tokenize exactly as transformers' T5 tokenizer built from the
same SentencePiece file (the file a Hugging Face T5 checkpoint ships as
``spiece.model``), including the characters T5's vocabulary handles specially.

A SentencePiece model with T5's settings (unigram; pad 0, eos 1, unk 2; NFKC
normalisation, which folds newlines and runs of spaces into one space) is trained
on the fly. docs/architecture.md ("T5's SentencePiece") says what this means for
the explanations: their newlines become spaces, which the step reader accepts.
"""

import shutil

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")
transformers = pytest.importorskip("transformers")

from explistops_jax import explain, listops, vocab  # noqa: E402
from explistops_jax.listops import SamplerConfig  # noqa: E402

LENGTHS = {"inputs": 256, "targets": 512}
ODD = ["a {b} <c>\nd", "x\n\ny  z\t", "[MAX 2 9 ]\r\nFinal answer: 9", "ÿ ½ ﬁ"]


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """(path to spiece.model, transformers T5Tokenizer loaded from its directory)."""
    sampler = SamplerConfig(min_length=20, max_length=50)
    texts = []
    for i in range(60):
        tree = listops.sample(sampler, seed=5, index=i)
        texts.append(listops.format(tree))
        texts += [explain.explain(tree, style) for style in explain.STYLES]
    directory = tmp_path_factory.mktemp("t5_tokenizer")
    path = vocab.train_sentencepiece_model(texts, str(directory / "sp"), vocab_size=400)
    shutil.copy(path, directory / "spiece.model")
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(directory))
    return str(directory / "spiece.model"), tokenizer


def test_sp_task_ids_equal_transformers_t5_tokenizer(spm):
    import seqio_tasks

    path, tokenizer = spm
    seqio_tasks.register_sentencepiece_tasks(path)
    for name in ("explistops30_medium_sp", "explistops30_long_sp", "explistops30_none_sp"):
        task = seqio.get_mixture_or_task(name)
        ds = task.get_dataset(LENGTHS, split="validation", shuffle=False)
        for example in ds.take(20).as_numpy_iterator():
            for feature in ("inputs", "targets"):
                text = example[f"{feature}_pretokenized"].decode()
                want = tokenizer(text).input_ids  # ends with EOS (1), like the task
                np.testing.assert_array_equal(example[feature], want, err_msg=f"{name} {text!r}")


@pytest.mark.parametrize("text", ODD)
def test_special_characters_and_newlines_tokenize_alike(spm, text):
    path, tokenizer = spm
    ours = seqio.SentencePieceVocabulary(path, extra_ids=vocab.T5_EXTRA_IDS)
    assert list(ours.encode(text)) + [1] == tokenizer(text).input_ids


def test_explanations_survive_t5_normalisation(spm):
    """Newlines come back as spaces; the steps read back all the same."""
    path, _ = spm
    ours = seqio.SentencePieceVocabulary(path, extra_ids=vocab.T5_EXTRA_IDS)
    tree = listops.parse("[SM 3 [MAX 4 8 ] [MED 1 2 3 4 ] 5 ]")
    for style in ("short", "medium", "long"):
        text = explain.explain(tree, style)
        decoded = ours.decode(list(ours.encode(text)))
        assert "\n" in text and "\n" not in decoded
        assert decoded == " ".join(text.split())
        assert explain.read_steps(decoded) == explain.read_steps(text)
