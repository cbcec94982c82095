"""Packing's sizes pass: one process against N processes that split it.

    python scripts/bench_packing_sizes.py [--task explistops30_medium]
        [--lengths 64,192] [--processes 2] [--repeats 2]

A packing stream learns every example's packed size in one pass over the split
before it lays out any row (``grain_pipeline.GrainSource``). One process makes
the whole pass; ``--processes`` processes (``jax.distributed`` over gloo on
127.0.0.1, one CPU device each) each make one block of it and allgather the
sizes while their streams are built (``GrainSource.share_sizes``). Reported per
configuration: the seconds from building the stream to having every size
(each process's, the slowest counts), the best of ``--repeats`` runs, alternating;
and the ratio N processes / one. The sizes themselves are checked equal.

On one machine the processes share its cores: with at least as many cores as
processes the ideal ratio is 1/N.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine_info  # noqa: E402

# One process of the job: builds the stream, takes every size, prints its time and a digest.
_PROCESS = textwrap.dedent("""
    import hashlib, sys, time
    import jax
    processes, index, port, task, inputs, targets = sys.argv[1:7]
    processes, index = int(processes), int(index)
    if processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", processes, index)
    from explistops_jax import input_pipeline

    config = input_pipeline.DataConfig(task, {"inputs": int(inputs), "targets": int(targets)},
                                       batch_size=8 * processes, pack=True, shuffle=True)
    began = time.perf_counter()
    stream = input_pipeline.BatchStream(config, shard_index=index, num_shards=processes)
    sizes = stream.source._sizes()  # shared while the stream was built, or the whole pass
    seconds = time.perf_counter() - began
    print(f"SIZES {seconds:.3f} {len(sizes)} {hashlib.sha256(sizes.tobytes()).hexdigest()}")
""")


def run(processes: int, task: str, lengths: tuple[int, int]) -> tuple[float, int, str]:
    """The job's seconds (its slowest process), the number of sizes and their digest."""
    from explistops_jax import launcher

    port = str(launcher.free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen(
        [sys.executable, "-c", _PROCESS, str(processes), str(index), port, task,
         *map(str, lengths)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for index in range(processes)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=1800)
        lines = [line for line in out.splitlines() if line.startswith("SIZES ")]
        if proc.returncode or not lines:
            sys.exit(f"bench_packing_sizes: a process failed:\n{err[-3000:]}")
        seconds, count, digest = lines[-1].split()[1:]
        results.append((float(seconds), int(count), digest))
    if len({r[1:] for r in results}) != 1:
        sys.exit("bench_packing_sizes: the processes disagree about the sizes")
    return max(r[0] for r in results), results[0][1], results[0][2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="explistops30_medium")
    parser.add_argument("--lengths", default="64,192", help="inputs,targets")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    lengths = tuple(int(x) for x in args.lengths.split(","))
    print(f"machine: {machine_info.cpu_model()}, {os.cpu_count()} cores, "
          f"load {machine_info.load_average():.2f}")
    times: dict[int, list[float]] = {1: [], args.processes: []}
    digests = set()
    for _ in range(args.repeats):
        for processes in times:
            seconds, count, digest = run(processes, args.task, lengths)
            times[processes].append(seconds)
            digests.add(digest)
            print(f"{processes} process(es): every size of {count} examples in {seconds:.1f} s")
    if len(digests) != 1:
        sys.exit("bench_packing_sizes: one process and several computed different sizes")
    one, many = min(times[1]), min(times[args.processes])
    print(f"\n| | 1 process | {args.processes} processes | ratio |\n|---|---:|---:|---:|\n"
          f"| {args.task} {args.lengths}: seconds to every packed size (best of "
          f"{args.repeats}) | {one:.1f} | {many:.1f} | {many / one:.2f} |")
    print(f"load after: {machine_info.load_average():.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
