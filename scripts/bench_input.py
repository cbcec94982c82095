"""Benchmark the input backends: grain against SeqIO, side by side in one run.

    python scripts/bench_input.py [--task explistops30_medium] [--examples 2000]
        [--batch 64] [--repeats 2] [--no-first-step]

1. Examples/s of the training stream (``input_pipeline.BatchStream``: generation,
   rendering, domain-vocabulary tokenization, EOS, padded features, batches of
   ``--batch``) of the train split, unshuffled so both backends give the same
   batches (checked, element for element), after a warm-up batch; best of
   ``--repeats`` fresh streams, alternating the backends.
2. Start to first train step of the CPU demo's first run (``explistops
   reproduce --preset cpu`` settings) with each backend: a fresh process runs
   the command and stops once the first step's result is on the host; the time is
   from just before the process starts (interpreter start, imports, TensorFlow
   for SeqIO, the validation examples, compilation) to then. Cold: with the
   persistent compilation cache off; warm: with a cache a previous identical
   process filled (runtime.enable_compilation_cache), as on every run after the
   first on a machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from machine_info import cpu_model, load_average  # noqa: E402

# Runs `explistops reproduce --preset cpu` and leaves once the first step is done.
_FIRST_STEP = textwrap.dedent("""
    import os, sys, time
    import jax
    from explistops_jax import cli, trainer

    compile_step = trainer._Loop._compile

    def compile_then_stop(self, state, batch):
        compile_step(self, state, batch)
        compiled = self._compiled

        def first_step(state, batch):
            out = compiled(state, batch)
            jax.block_until_ready(out)
            print(f"FIRST_STEP {time.time():.6f}", flush=True)
            os._exit(0)
        self._compiled = first_step

    trainer._Loop._compile = compile_then_stop
    sys.exit(cli.main(["reproduce", "--preset", "cpu", "--styles", "none", "--no-report",
                       "--out", sys.argv[1], "--data_backend", sys.argv[2]]))
""")


def stream_rate(task: str, backend: str, examples: int, batch: int) -> tuple[float, list]:
    """Examples/s of one fresh stream (after one warm-up batch), and its batches."""
    from explistops_jax import input_pipeline

    config = input_pipeline.DataConfig(task, {"inputs": 64, "targets": 512}, batch_size=batch,
                                       shuffle=False, num_epochs=1, data_backend=backend)
    stream = input_pipeline.BatchStream(config)
    assert stream.backend == backend
    batches = stream.iterate()
    first = [next(batches)[1]]
    start = time.perf_counter()
    seen = []
    for _ in range(examples // batch):
        seen.append(next(batches)[1])
    return len(seen) * batch / (time.perf_counter() - start), first + seen


def first_step_seconds(backend: str, cache: str = "off") -> float:
    """Seconds from process start to the first step's result; ``cache``: the
    persistent compilation cache directory (``off``: none, every program compiled)."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": ROOT, "EXPLISTOPS_COMPILATION_CACHE": cache}
        start = time.time()
        done = subprocess.run([sys.executable, "-c", _FIRST_STEP, out, backend], env=env,
                              capture_output=True, text=True, cwd=ROOT, timeout=1200)
        lines = [line for line in done.stdout.splitlines() if line.startswith("FIRST_STEP")]
        if not lines:
            raise RuntimeError(f"{backend}: no first step\n{done.stderr[-3000:]}")
        return float(lines[0].split()[1]) - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="explistops30_medium")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-first-step", action="store_true")
    args = parser.parse_args()

    import numpy as np

    import seqio_tasks  # noqa: F401  (the SeqIO side)

    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), load {load_average():.1f}")
    best = {"grain": 0.0, "seqio": 0.0}
    batches = {}
    for _ in range(args.repeats):
        for backend in ("seqio", "grain"):
            rate, batches[backend] = stream_rate(args.task, backend, args.examples, args.batch)
            best[backend] = max(best[backend], rate)
    for a, b in zip(batches["grain"], batches["seqio"]):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    print(f"{args.task}, train split, batch {args.batch}, {args.examples} examples, best of "
          f"{args.repeats} (same batches: checked)")
    print(f"  seqio: {best['seqio']:,.0f} examples/s")
    print(f"  grain: {best['grain']:,.0f} examples/s ({best['grain'] / best['seqio']:.2f}x)")
    if not args.no_first_step:
        print("start to first train step, CPU demo (explistops reproduce --preset cpu):")
        with tempfile.TemporaryDirectory() as cache:
            times = {}
            for backend in ("seqio", "grain"):
                times[backend, "cold"] = first_step_seconds(backend, "off")
                first_step_seconds(backend, cache)  # fills the cache
                times[backend, "warm"] = first_step_seconds(backend, cache)
        for kind, what in (("cold", "every program compiled (no compilation cache)"),
                           ("warm", "programs loaded from the compilation cache")):
            seqio, grain = times["seqio", kind], times["grain", kind]
            print(f"  {kind}, {what}:")
            print(f"    seqio: {seqio:.1f} s")
            print(f"    grain: {grain:.1f} s ({grain / seqio:.2f} of seqio's {kind} time, "
                  f"{grain / times['seqio', 'cold']:.2f} of its cold time)")
    print(f"load at the end: {load_average():.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
