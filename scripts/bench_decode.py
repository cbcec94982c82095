"""Decoding throughput for explanation-length outputs (100-200 target tokens).

Compares, on one model with random weights and fake inputs:
  1. explistops greedy (jit, cached decode) that stops once every row has EOS;
  2. the same decoder forced to run all `--max-length` steps;
  3. transformers' PyTorch T5ForConditionalGeneration.generate (greedy, cached),
     on the same weights (exported with checkpoints.export_hf).

Random weights never choose EOS by themselves, so each row's output length is
drawn from [--min-target, --max-target] and EOS is forced at that position in
all three decoders (the decoder-prompt mechanism in JAX, a LogitsProcessor in
transformers); every other token is really decoded. Compile time is excluded
(one warm-up run each); the best of --repeats runs is reported, as wall time
and as CPU time of the process (the fair measure on a shared machine). Both frameworks
use --threads CPU threads (default 1: on a shared machine multi-threaded
PyTorch collapses under contention, which would flatter JAX).

    python scripts/bench_decode.py --model t5_1_1_small --batch 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _limit_threads(argv: list[str]) -> None:
    """XLA reads its flags when jax is imported, so --threads 1 is applied here."""
    if "--threads" in argv and argv[argv.index("--threads") + 1] != "1":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    flags += " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = flags.strip()


_limit_threads(sys.argv)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

from explistops_jax import decoding, network  # noqa: E402
from explistops_jax.model import EncoderDecoderModel  # noqa: E402
from machine_info import cpu_model, load_average  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="t5_1_1_small", help="network preset")
    p.add_argument("--vocab-size", type=int, default=None, help="override the vocabulary size")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-length", type=int, default=64, help="encoder tokens per row")
    p.add_argument("--max-length", type=int, default=256, help="decode length limit")
    p.add_argument("--min-target", type=int, default=100)
    p.add_argument("--max-target", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch; XLA uses 1 thread if this is 1, else all")
    p.add_argument("--skip-hf", action="store_true", help="do not run transformers")
    return p.parse_args()


def make_inputs(args, vocab: int):
    """Encoder tokens [batch, input_length] and per-row output lengths [batch]."""
    rng = np.random.RandomState(args.seed)
    enc = rng.randint(2, vocab, size=(args.batch, args.input_length)).astype(np.int32)
    enc[:, -1] = 1  # EOS-terminated inputs, as seqio makes them
    lengths = rng.randint(args.min_target, args.max_target + 1, size=args.batch)
    return enc, lengths


def jax_decoder(config, length: int, early_stop: bool):
    """jit(params, encoder_tokens, prompt) -> (sequences, num_steps)."""
    module = network.Transformer(config)

    @jax.jit
    def run(params, enc, prompt):
        encoded = module.apply({"params": params}, enc, method=module.encode)
        kwargs = dict(decode=True, max_decode_length=length, method=module.decode,
                      mutable=["cache"])
        _, state = module.apply({"params": params}, encoded, enc, prompt, **kwargs)

        def tokens_to_logits(ids, cache):
            logits, new = module.apply({"params": params, "cache": cache}, encoded, enc,
                                       ids, **kwargs)
            return logits, new["cache"]

        out = decoding.greedy(prompt, state["cache"], tokens_to_logits, eos_id=1,
                              early_stop=early_stop)
        return out.sequences, out.num_steps

    return run


def forced_eos_prompt(lengths, batch: int, length: int) -> np.ndarray:
    """Decoder prompt that forces EOS at output position lengths[row]."""
    prompt = np.zeros((batch, length), np.int32)
    prompt[np.arange(batch), lengths + 1] = 1
    return prompt


def best_time(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process, last output)."""
    out = fn()  # warm-up (compiles)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), out


def bench_jax(args, config, params, enc, lengths):
    prompt = jnp.asarray(forced_eos_prompt(lengths, args.batch, args.max_length))
    enc = jnp.asarray(enc)
    results = {}
    for name, early in (("jax greedy, early stop", True), ("jax greedy, full length", False)):
        run = jax_decoder(config, args.max_length, early)
        call = lambda: jax.block_until_ready(run(params, enc, prompt))
        wall, cpu, (seqs, steps) = best_time(call, args.repeats)
        results[name] = (wall, cpu, np.asarray(seqs), int(steps))
    return results


class _ForceEos:
    """transformers LogitsProcessor: EOS at generated position lengths[row]."""

    def __init__(self, lengths, eos_id: int = 1):
        import torch

        self.lengths = torch.as_tensor(lengths)
        self.eos_id = eos_id

    def __call__(self, input_ids, scores):
        generated = input_ids.shape[1] - 1  # input_ids starts with the start token
        rows = self.lengths == generated
        if rows.any():
            scores[rows] = float("-inf")
            scores[rows, self.eos_id] = 0.0
        return scores


def bench_hf(args, config, params, enc, lengths):
    import torch
    from transformers import LogitsProcessorList, T5ForConditionalGeneration

    from explistops_jax import checkpoints

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints.export_hf(config, jax.device_get(params), tmp)
        model = T5ForConditionalGeneration.from_pretrained(tmp).eval()
    ids = torch.as_tensor(enc, dtype=torch.long)

    def call():
        with torch.no_grad():
            return model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                num_beams=1, max_new_tokens=args.max_length, decoder_start_token_id=0,
                eos_token_id=1, pad_token_id=0,
                logits_processor=LogitsProcessorList([_ForceEos(lengths)]))

    wall, cpu, out = best_time(call, args.repeats)
    seqs = out.numpy()[:, 1:]
    seqs = np.pad(seqs, ((0, 0), (0, args.max_length - seqs.shape[1])))
    return wall, cpu, seqs, out.shape[1] - 1


def main() -> None:
    args = parse_args()
    overrides = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    config = network.get_config(args.model, **overrides)
    model = EncoderDecoderModel(config)
    shapes = {"encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}
    init = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))
    params = nn.unbox(init(jax.random.key(args.seed))["params"])
    enc, lengths = make_inputs(args, config.vocab_size)
    tokens = int(np.sum(lengths + 1))  # generated tokens including EOS

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, "
          f"jax {jax.__version__} ({jax.default_backend()}), {args.threads} thread(s), "
          f"load average {load_average():.1f}")
    print(f"model {args.model} (vocab {config.vocab_size}), batch {args.batch}, "
          f"input {args.input_length} tokens, outputs {lengths.min()}-{lengths.max()} tokens "
          f"(mean {lengths.mean():.0f}), max length {args.max_length}")
    results = bench_jax(args, config, params, enc, lengths)
    if not args.skip_hf:
        results["transformers generate (torch)"] = bench_hf(args, config, params, enc, lengths)

    reference = results["jax greedy, early stop"][2]
    print(f"\n{'decoder':30} {'wall s':>7} {'CPU s':>7} {'steps':>5} {'examples/s':>10} "
          f"{'tokens/s':>9}  same tokens")
    for name, (wall, cpu, seqs, steps) in results.items():
        same = np.mean(np.all(seqs == reference, axis=1))
        print(f"{name:30} {wall:7.3f} {cpu:7.3f} {steps:5d} {args.batch / cpu:10.2f} "
              f"{tokens / cpu:9.1f}  {same:.0%} of rows")
    print("(examples/s and tokens/s per CPU second of the process: on a shared machine "
          "wall time mostly measures the neighbours)")
    base = results["jax greedy, early stop"][1]
    for name, (wall, cpu, _, _) in results.items():
        if name != "jax greedy, early stop":
            print(f"early-stopping jax greedy vs {name}: {cpu / base:.2f}x less CPU time")


if __name__ == "__main__":
    main()
