"""Benchmark the SeqIO tasks: examples/s through each style's task, tokens per target.

    python scripts/bench_tasks.py [--dataset explistops30] [--examples 400]
        [--spm-examples 2000] [--spm-vocab 8000] [--write-docs]

Throughput: examples per second read from ``{dataset}_{style}`` (raw generation,
rendering, tokenizing with the domain vocabulary, EOS), single pipeline, after a
warm-up; also the raw source alone (generation only), so the cost of rendering
and tokenizing shows. Token counts: per validation target, the whitespace words,
the domain vocabulary's tokens and the tokens of a SentencePiece model trained
here on rendered text (unigram, T5's special ids): a stand-in for T5's public
``cc_all.32000`` model, which is not available offline, so its counts are not
those of the real T5 vocabulary. ``--write-docs`` replaces (or appends) the
"SeqIO tasks" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import seqio  # noqa: E402

import seqio_tasks  # noqa: E402
from explistops_jax import data, explain, listops, vocab  # noqa: E402

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


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"model name\s*:\s*(.*)", f.read())
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{os.cpu_count()} CPU cores ({cpu}), no GPU; load average {load:.1f} at the "
            f"start (the VM is shared with other jobs, so rates are lower bounds)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="explistops30")
    parser.add_argument("--examples", type=int, default=400, help="examples timed per task")
    parser.add_argument("--count-examples", type=int, default=500,
                        help="validation targets whose tokens are counted")
    parser.add_argument("--spm-examples", type=int, default=2000,
                        help="training examples whose texts train the SentencePiece stand-in")
    parser.add_argument("--spm-vocab", type=int, default=8000)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    started = machine()

    # Throughput through the registered tasks (domain vocabulary).
    raw_task = seqio.get_mixture_or_task(f"{args.dataset}_none")
    raw_rate = rate(lambda: raw_task.source.get_dataset("train", shuffle=False), args.examples)
    speed = {}
    for style in explain.STYLES:
        task = seqio.get_mixture_or_task(f"{args.dataset}_{style}")
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
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = vocab.train_sentencepiece_model(corpus, os.path.join(tmp, "spm"), args.spm_vocab)
        spm_seconds = time.perf_counter() - start
        sp = vocab.sentencepiece_vocabulary(path, extra_ids=0)
        spm_size = sp.vocab_size
        sp_task = _sp_rate(path, args)

        rows = []
        for label, texts in [*targets.items(), ("(inputs)", inputs)]:
            words = statistics.mean(len(t.split()) for t in texts)
            dom = [len(domain.encode(t)) for t in texts]
            spt = statistics.mean(len(sp.encode(t)) for t in texts)
            rows.append((label, speed.get(label), words, statistics.mean(dom), max(dom), spt))

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
        f"Domain vocabulary: {domain.vocab_size} ids. SentencePiece: a unigram model "
        f"trained here in {spm_seconds:.0f} s on the inputs and targets of "
        f"{args.spm_examples:,} training examples (asked for {args.spm_vocab:,} pieces, "
        f"got {spm_size:,}); it is a stand-in for T5's `cc_all.32000` model, which is not "
        "available offline, so these counts are not T5's own (not measured here).",
        "",
        "| style | examples/s (task) | words/target | domain tokens/target (max) | domain tokens/word | SentencePiece tokens/target | SP tokens/word |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, ex_s, words, dom, dom_max, spt in rows:
        ex_text = f"{ex_s:,.0f}" if ex_s is not None else "-"
        lines.append(f"| {label} | {ex_text} | {words:.1f} | {dom:.1f} ({dom_max}) | "
                     f"{dom / words:.2f} | {spt:.1f} | {spt / words:.2f} |")
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
    names = seqio_tasks.register_dataset_tasks(
        args.dataset, sentencepiece_path=path, domain=False, styles=["medium"], subset_sizes=()
    )
    task = seqio.get_mixture_or_task(next(n for n in names if n.endswith("_medium_sp")))
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
