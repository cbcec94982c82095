"""Benchmark the SeqIO tasks: examples/s through each style's task, tokens per target.

    python scripts/bench_tasks.py [--dataset explistops30] [--examples 400]
        [--spm-examples 2000] [--spm-vocab 8000] [--write-docs]

Throughput: examples per second read from ``{dataset}_{style}`` (raw generation,
rendering, tokenizing with the domain vocabulary, EOS), single pipeline, after a
warm-up; also the raw source alone (generation only), so the cost of rendering
and tokenizing shows. Token counts: per validation target, the whitespace words,
the domain vocabulary's tokens and the tokens of a SentencePiece model of
``--spm-vocab`` pieces trained here (unigram, T5's special ids) on rendered text
plus general English (the package descriptions, docs and code comments installed
with Python, the nearest offline stand-in for T5's C4 text): a stand-in for T5's
public ``cc_all.32000`` model, which is not available offline, so the real T5
vocabulary's counts are not measured. ``--write-docs`` replaces (or appends) the "SeqIO tasks"
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import seqio  # noqa: E402
import sysconfig  # noqa: E402

import seqio_tasks  # noqa: E402
from explistops_jax import data, explain, listops, vocab  # noqa: E402
from explistops_jax.task_spec import TaskSpec  # noqa: E402
from machine_info import cpu_model, load_average  # noqa: E402

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")
SECTION = "## SeqIO tasks"


def rate(make_dataset, n: int, repeats: int = 3) -> float:
    """Examples per second over n examples after a warm-up of 20; the best of
    ``repeats`` fresh pipelines (the machine is shared, so the best is the least
    disturbed run)."""
    best = 0.0
    for _ in range(repeats):
        iterator = make_dataset().as_numpy_iterator()
        for _ in range(20):
            next(iterator)
        start = time.perf_counter()
        for _ in range(n):
            next(iterator)
        best = max(best, n / (time.perf_counter() - start))
    return best


def general_text(max_lines: int) -> list[str]:
    """English prose lines from the documentation installed with Python packages
    (descriptions, docs, then comments and docstrings of the code)."""
    root = sysconfig.get_paths()["purelib"]
    files = sorted(glob.glob(os.path.join(root, "*.dist-info", "METADATA")))
    for pattern in ("*.md", "*.rst", "*.py"):
        files += sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
    lines = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    line = line.strip().lstrip("#").strip().strip('"').strip()
                    words = line.split()
                    if len(words) >= 6 and sum(w.isalpha() for w in words) >= 0.7 * len(words):
                        lines.append(line)
        except (OSError, UnicodeDecodeError):
            continue
        if len(lines) >= max_lines:
            break
    return lines[:max_lines]


def machine() -> str:
    """The machine line of the report: cores, CPU model, load at the start."""
    return (f"{os.cpu_count()} CPU cores ({cpu_model()}), no GPU; load average "
            f"{load_average():.1f} at the start (the VM is shared with other jobs, so rates "
            f"are lower bounds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="explistops30")
    parser.add_argument("--examples", type=int, default=400, help="examples timed per task")
    parser.add_argument("--count-examples", type=int, default=500,
                        help="validation targets whose tokens are counted")
    parser.add_argument("--spm-examples", type=int, default=2000,
                        help="training examples whose texts train the SentencePiece stand-in")
    parser.add_argument("--spm-vocab", type=int, default=8000)
    parser.add_argument("--general-lines", type=int, default=40000,
                        help="lines of general English for the second SentencePiece model")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    started = machine()

    # Throughput through the registered tasks (domain vocabulary).
    raw_task = seqio.get_mixture_or_task(TaskSpec(args.dataset, "none").name)
    raw_rate = rate(lambda: raw_task.source.get_dataset("train", shuffle=False), args.examples)
    speed = {}
    for style in explain.STYLES:
        task = seqio.get_mixture_or_task(TaskSpec(args.dataset, style).name)
        speed[style] = rate(lambda: task.get_dataset(split="train", shuffle=False), args.examples)

    # Token counts on validation targets.
    config = data.get_config(args.dataset)
    trees = [ex["tree"] for ex in data.examples(config, "validation", 0, args.count_examples,
                                                   with_tree=True)]
    targets = {s: [explain.explain(t, s, config.modulus) for t in trees] for s in explain.STYLES}
    inputs = [listops.format(t) for t in trees]
    domain = seqio_tasks.domain_vocabulary()

    corpus = []
    for ex in data.examples(config, "train", 0, args.spm_examples, with_tree=True):
        corpus.append(ex["expression"])
        corpus += [explain.explain(ex["tree"], s, config.modulus) for s in explain.STYLES]
    general = general_text(args.general_lines)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = vocab.train_sentencepiece_model(
            corpus + general, os.path.join(tmp, "general"), args.spm_vocab,
            input_sentence_size=len(corpus) + len(general),
        )
        spm_seconds = time.perf_counter() - start
        sp_general = vocab.sentencepiece_vocabulary(path, extra_ids=0)
        sp_task = _sp_rate(path, args)
        example = sp_general.tokenizer.encode(targets["medium"][0].split("\n")[0], out_type=str)

        rows = []
        for label, texts in [*targets.items(), ("(inputs)", inputs)]:
            words = statistics.mean(len(t.split()) for t in texts)
            dom = [len(domain.encode(t)) for t in texts]
            spg = [len(sp_general.encode(t)) for t in texts]
            rows.append((label, speed.get(label), words, statistics.mean(dom), max(dom),
                         statistics.mean(spg), max(spg)))

    lines = [
        SECTION,
        "",
        f"`python scripts/bench_tasks.py --dataset {args.dataset}` on this machine: {started}.",
        "",
        f"Throughput: examples/s read from `{args.dataset}_<style>` (train split, one "
        "pipeline, generation + rendering + domain-vocabulary tokenization + EOS, "
        f"{args.examples} examples after a warm-up, best of 3). The raw source alone (generation "
        f"only) gives {raw_rate:,.0f} examples/s; the `_sp` task of the medium style "
        f"(SentencePiece stand-in) {sp_task:,.0f} examples/s.",
        "",
        f"Tokens: means over {args.count_examples} validation targets (and their inputs). "
        f"Domain vocabulary: {domain.vocab_size} ids. SentencePiece (SP): a stand-in for "
        "T5's `cc_all.32000` model, which is not available offline, so T5's own counts are "
        f"not measured here: a unigram model of {sp_general.vocab_size:,} pieces with T5's "
        f"special ids, trained here in {spm_seconds:.0f} s on the inputs and targets of "
        f"{args.spm_examples:,} training examples plus {len(general):,} lines of English "
        "(package descriptions, docs and code comments installed with Python, for a "
        "general-purpose vocabulary like T5's). It splits numbers by context, e.g. "
        f"{' '.join(f'`{p}`' for p in example[:12])} ...",
        "",
        "| style | examples/s (task) | words/target | domain tokens/target (max) | domain tokens/word | SP tokens/target (max) | SP tokens/word |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, ex_s, words, dom, dom_max, spg, spg_max in rows:
        ex_text = f"{ex_s:,.0f}" if ex_s is not None else "-"
        lines.append(f"| {label} | {ex_text} | {words:.1f} | {dom:.1f} ({dom_max}) | "
                     f"{dom / words:.2f} | {spg:.1f} ({spg_max}) | {spg / words:.2f} |")
    lines += [
        "",
        "Domain tokens exceed words only where punctuation is attached to a word "
        "(`[3,` is three tokens: `[`, `3`, `,`); against `explain.tokenize` (which splits "
        "the same punctuation) the domain vocabulary is one token per token.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if args.write_docs:
        write_section(table)
    return 0


def _sp_rate(path: str, args) -> float:
    seqio_tasks.register_dataset_tasks(
        args.dataset, sentencepiece_path=path, domain=False, styles=["medium"], subset_sizes=()
    )
    task = seqio.get_mixture_or_task(TaskSpec(args.dataset, "medium", vocabulary="sp").name)
    task.output_features["targets"].vocabulary.load_model()
    return rate(lambda: task.get_dataset(split="train", shuffle=False), args.examples)


def write_section(section: str) -> None:
    """Replace the SeqIO section of docs/benchmarks.md, or append it."""
    text = open(DOCS).read() if os.path.exists(DOCS) else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(DOCS, "w") as f:
        f.write(text)
    print(f"wrote the '{SECTION[3:]}' section of {DOCS}")


if __name__ == "__main__":
    raise SystemExit(main())
