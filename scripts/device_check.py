"""The accelerator check: what the study's real scale costs on one device.

    python scripts/device_check.py --out DIR [--tiny] [--sections a,b,...] [--budget-s S]

Sections, in this order (each runs in its own process, so that its peak memory is
its own and JAX and PyTorch do not share an allocator):

  peak        bf16 matrix product throughput (the MFU denominator, measured here)
  throughput  train steps/s, tokens/s and MFU for t5_1_0_small and t5_1_0_base,
              bf16 activations, batch 128, lengths 64/192 (explistops30 medium);
              then a trace of a few base steps, summarised per device line
              (busy time per step, matrix products against the rest, the
              costliest kernels): where the step's time goes
  trainer     the own trainer end to end, as a user runs it: a study condition's
              gin file (explistops30 medium, t5_1_0_small, batch 8, AdamW)
              through ``python -m explistops_jax.train`` with the grain input,
              a checkpoint and the final evaluation: steps/s, loss, accuracy, and
              that neither TensorFlow nor seqio was imported
  tests       the tests marked ``gpu`` (tests/test_gpu.py; they skip without one)
  decode      greedy decoding tokens/s of t5_1_0_small against transformers'
              ``generate`` on the same device and weights (bf16, equal lengths)
  big         t5_1_0_3B: a few Adafactor steps at bf16, batch 8, lengths 256/512:
              step time and peak device memory, beside ``plan``'s prediction for
              the same shape (compiled for this backend before anything is allocated)
  variants    t5_1_0_base again with one change each (cuDNN fused attention,
              bfloat16 attention logits, batch 256, dropout 0.1 as in the
              study's fine-tuning): what moves MFU, and what the per-element
              dropout masks cost; a variant that fails is recorded with its
              error and the next one runs

The whole run keeps to ``--budget-s`` (default 450 s, inside the issue's 8
minutes with the wheel install): a section gets at most what is left, one that
cannot start with ``MIN_SECTION_S`` left is recorded as skipped, and the report is
rewritten after every section (and a section's runs as they finish), so a run
that is stopped keeps what it measured. The sections share JAX's persistent
compilation cache (``runtime.enable_compilation_cache``: the initialisers are
compiled once, and a rerun on the same machine loads the steps the first run
compiled; each run's ``compile_cached`` says whether its step was loaded, in
which case ``compile_s`` is the load). ``--tiny`` runs every section with tiny
shapes on whatever device there is (CI runs it on the CPU so the script cannot
rot). Writes ``device_check.json`` and ``device_check.md`` to ``--out``. MFU is
model FLOPs utilisation as PaLM defines it: the step's matrix-product FLOPs
counted from the model's shapes (``plan.train_flops``) over step time, divided by
the measured bf16 matmul peak. XLA's own count (``compiled.cost_analysis()``) is
recorded beside it: on the CPU it agrees within 1% (tests/test_plan.py); on the
H200 it reported 28-46% of the products (docs/benchmarks.md), so it is not the
MFU numerator.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("peak", "throughput", "trainer", "tests", "decode", "big", "variants")
# What the GPU machine lacks for the trainer and evaluator: the wheels device_check.sh
# installs there, and the modules they are carried for.
WHEELS_FILE = ROOT / "scripts" / "device_wheels.txt"
CARRIED_MODULES = ("grain", "gin", "tensorboardX")
SECTION_TIMEOUT_S = 300
BUDGET_S = 450
MIN_SECTION_S = 30

FULL = {
    "peak": {"n": 8192, "repeats": 10},
    "throughput": {"models": ["t5_1_0_small", "t5_1_0_base"], "batch": 128,
                   "lengths": [64, 192], "steps": 20, "profile": "t5_1_0_base",
                   "profile_steps": 3},
    "trainer": {"gin_file": "gin_configs/experiments/explistops30_medium_t5_1_0_small.gin",
                "steps": 300, "eval_examples": 128, "bindings": []},
    "tests": {"marker": "gpu", "paths": ["tests/test_gpu.py"]},
    "big": {"model": "t5_1_0_3B", "batch": 8, "lengths": [256, 512], "steps": 5},
    "decode": {"model": "t5_1_0_small", "batch": 64, "input_length": 64,
               "decode_length": 192, "repeats": 3},
    "variants": {"model": "t5_1_0_base", "batch": 128, "lengths": [64, 192], "steps": 20,
                 "variants": [{"name": "cuDNN attention",
                               "overrides": {"attention_kernel": "cudnn"}},
                              {"name": "bfloat16 attention logits",
                               "overrides": {"float32_attention_logits": False}},
                              {"name": "batch 256", "batch": 256},
                              # the study's fine-tuning setting: per-element masks
                              {"name": "dropout 0.1", "overrides": {"dropout_rate": 0.1}}]},
}
# Tiny: the same code paths, a 512-token vocabulary instead of T5's 32,128.
TINY = {
    "peak": {"n": 256, "repeats": 3},
    "throughput": {"models": ["t5_1_0_tiny"], "batch": 8, "lengths": [16, 32], "steps": 3,
                   "vocab_size": 512, "profile": "t5_1_0_tiny", "profile_steps": 2},
    "trainer": {"gin_file": "gin_configs/experiments/explistops30_medium_t5_1_0_small.gin",
                "steps": 3, "eval_examples": 2,
                "bindings": ["trainer.ModelSpec.preset = 't5_1_0_tiny'", "BATCH_SIZE = 2",
                             "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 16}",
                             # lengths this short cut the examples; no packing pass
                             "train.allow_truncation = True",
                             "input_pipeline.DataConfig.pack = False",
                             "trainer.EvalConfig.batch_size = 2"]},
    "tests": {"marker": "gpu", "paths": ["tests/test_gpu.py"]},
    "big": {"model": "t5_1_0_tiny", "batch": 4, "lengths": [16, 32], "steps": 2,
            "vocab_size": 512},
    "decode": {"model": "t5_1_0_tiny", "batch": 4, "input_length": 16,
               "decode_length": 8, "repeats": 1, "vocab_size": 512},
    "variants": {"model": "t5_1_0_tiny", "batch": 8, "lengths": [16, 32], "steps": 2,
                 "vocab_size": 512,
                 # the CPU has no cuDNN: the same fused call, XLA's implementation
                 "variants": [{"name": "XLA fused attention",
                               "overrides": {"attention_kernel": "xla"}},
                              {"name": "bfloat16 attention logits",
                               "overrides": {"float32_attention_logits": False}},
                              {"name": "batch 16", "batch": 16},
                              {"name": "dropout 0.1", "overrides": {"dropout_rate": 0.1}}]},
}


# ----------------------------------------------------------------- helpers

_CACHE_HITS: list[str] = []


def _count_cache_hit(event: str, **kwargs) -> None:
    """A ``jax.monitoring`` listener: counts programs loaded from the
    persistent compilation cache instead of compiled."""
    if event == "/jax/compilation_cache/cache_hits":
        _CACHE_HITS.append(event)


def _block(tree):
    import jax

    return jax.block_until_ready(tree)


def _device_facts() -> dict:
    import jax

    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "num_devices": jax.device_count(), "jax": jax.__version__}


def _peak_bytes() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _train(model_name: str, batch: int, lengths, steps: int, dtype: str = "bfloat16",
           random_init: bool = True, vocab_size: int | None = None,
           overrides: dict | None = None, profile_steps: int = 0) -> dict:
    """Compiles and times ``steps`` train steps of a fresh model (Adafactor).

    ``random_init=False`` fills the parameters with a constant instead of
    compiling the model's initialiser (a third compilation of a 3B graph): step
    time and memory do not depend on the values. ``overrides`` changes
    ``T5Config`` fields; ``profile_steps`` > 0 traces that many more steps after
    the timed ones and adds the trace's summary (``_trace_summary``)."""
    import jax
    import numpy as np

    from explistops_jax import network, optimizers, partitioning, train_step
    from explistops_jax.model import EncoderDecoderModel
    from explistops_jax.plan import random_batch, train_flops

    config = network.get_config(model_name, dtype=dtype, **(overrides or {}),
                                **({"vocab_size": vocab_size} if vocab_size else {}))
    model = EncoderDecoderModel(config)
    p = partitioning.Partitioner()
    tx, schedule = optimizers.adafactor().build()
    layout = train_step.state_layout(model, tx, p)
    step = p.jit(train_step.make_train_step(model, tx, schedule),
                 in_shardings=(layout.shardings, p.batch_sharding()),
                 out_shardings=(layout.shardings, p.sharding()), donate_argnums=0)
    rng = np.random.default_rng(0)
    batches = [p.shard_batch(random_batch(rng, batch, lengths, config.vocab_size))
               for _ in range(2)]
    hits = len(_CACHE_HITS)
    start = time.perf_counter()
    compiled = step.lower(layout.abstract, batches[0]).compile()
    compile_s = time.perf_counter() - start
    compile_cached = len(_CACHE_HITS) > hits
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    if random_init:
        state = train_step.initial_state(model, tx, p, layout, seed=0)
    else:
        import jax.numpy as jnp

        params = jax.jit(lambda: jax.tree.map(lambda s: jnp.full(s.shape, 0.02, s.dtype),
                                              layout.abstract.params),
                         out_shardings=layout.shardings.params)()
        state = train_step.initial_state(model, tx, p, layout, seed=0,
                                         initial_params=jax.device_get(params))
        del params
    losses = []
    for i in range(2):  # warm-up
        state, metrics = compiled(state, batches[i % 2])
    _block(state)
    start = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, batches[i % 2])
        losses.append(metrics["loss"])
    _block(state)
    elapsed = time.perf_counter() - start
    losses = [float(x) for x in jax.device_get(losses)]
    step_s = elapsed / steps
    profile = None
    if profile_steps:
        with tempfile.TemporaryDirectory() as trace_dir:
            jax.profiler.start_trace(trace_dir)
            for i in range(profile_steps):
                state, metrics = compiled(state, batches[i % 2])
            _block(state)
            jax.profiler.stop_trace()
            profile = _trace_summary(trace_dir, profile_steps, step_s)
    model_flops = train_flops(config, batch, lengths)
    return {"model": model_name, "batch": batch, "lengths": list(lengths), "dtype": dtype,
            **({"overrides": overrides} if overrides else {}),
            **({"profile": profile} if profile else {}),
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": compile_s, "compile_cached": compile_cached,
            "step_s": step_s, "steps_per_s": 1.0 / step_s,
            "target_tokens_per_s": batch * lengths[1] / step_s,
            "model_flops_per_step": model_flops,
            "tflops_per_s": model_flops / step_s / 1e12,
            "xla_flops_per_step": flops, "xla_tflops_per_s": flops / step_s / 1e12,
            "first_loss": losses[0], "last_loss": losses[-1],
            "losses_finite": bool(np.all(np.isfinite(losses)))}


# Kernel and op names of matrix products: cuBLAS/cuBLASLt (gemm, xmma, nvjet,
# cutlass), XLA's own Triton GEMMs, and HLO dots/convolutions (the CPU's names).
_MATMUL = re.compile(r"gemm|xmma|nvjet|cutlass|cublas|matmul|\bdot|convolution", re.I)


# The CPU runtime's bookkeeping events (an op's "end: " mark, thread pool records):
# instants inside an op's span, not work of their own.
_MARKER = re.compile(r"end: |ThreadpoolListener::")


def _kind(name: str) -> str:
    """A kernel or op name without its numbering: ``loop_add_fusion_12`` and
    ``fusion.3`` count with the rest of their kind."""
    return re.sub(r"([._]\d+)+$", "", name.split("(")[0].strip()) or name


def _trace_summary(trace_dir: str, steps: int, step_s: float, top: int = 12) -> dict:
    """Where the traced steps spent their time, from the profiler's trace
    (``*.trace.json.gz``, the trace viewer's format): for every line of the
    device (on the CPU, which has none, XLA's worker threads), the busy time
    per step and its share of the timed step, the share of matrix products,
    and the ``top`` kinds of kernel or op by time."""
    files = sorted(Path(trace_dir).rglob("*.trace.json.gz"))
    if not files:
        return {"error": "no *.trace.json.gz in the trace directory"}
    with gzip.open(files[-1], "rt") as f:
        events = json.load(f).get("traceEvents", [])
    processes = {e["pid"]: e.get("args", {}).get("name", "") for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e.get("args", {}).get("name", "") for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}
    if devices:
        wanted = lambda pid, tid: pid in devices
    else:  # the CPU: ops run on XLA's client and Eigen threads
        wanted = lambda pid, tid: threads.get((pid, tid), "").startswith("tf_XLA")
    by_line: dict[str, list] = collections.defaultdict(list)
    for e in events:
        if (e.get("ph") == "X" and wanted(e.get("pid"), e.get("tid"))
                and not _MARKER.match(e.get("name", ""))):
            line = (f"{processes.get(e['pid'], e['pid'])} / "
                    f"{threads.get((e['pid'], e['tid']), e['tid'])}")
            by_line[line].append((float(e["ts"]), float(e.get("dur", 0.0)), e.get("name", "")))
    lines: dict[str, dict] = {}
    for line, spans in by_line.items():
        # Events on a line nest (an executor's span holds its ops): busy time is
        # the union of the spans, and time is attributed to the innermost ones.
        spans.sort(key=lambda x: (x[0], -x[1]))
        entry = lines[line] = {"events": len(spans), "busy_us": 0.0, "matmul_us": 0.0,
                               "kinds": collections.Counter()}
        covered_to = float("-inf")
        for i, (ts, dur, name) in enumerate(spans):
            end = ts + dur
            entry["busy_us"] += max(0.0, end - max(ts, covered_to))
            covered_to = max(covered_to, end)
            if i + 1 < len(spans) and spans[i + 1][0] < end:
                continue  # holds the next event: not innermost
            entry["kinds"][_kind(name)] += dur
            if _MATMUL.search(name):
                entry["matmul_us"] += dur
    summary = {"steps": steps, "step_ms": 1e3 * step_s, "lines": {}}
    for line, entry in sorted(lines.items(), key=lambda kv: -kv[1]["busy_us"]):
        busy_ms = entry["busy_us"] / 1e3 / steps
        summary["lines"][line] = {
            "events_per_step": entry["events"] / steps,
            "busy_ms_per_step": busy_ms,
            "busy_share_of_step": busy_ms / (1e3 * step_s),
            "matmul_share_of_busy": (entry["matmul_us"] / entry["busy_us"]
                                     if entry["busy_us"] else 0.0),
            "top_ms_per_step": {k: v / 1e3 / steps for k, v in entry["kinds"].most_common(top)}}
    return summary


# ----------------------------------------------------------------- sections


def section_peak(cfg: dict, emit) -> dict:
    import jax
    import jax.numpy as jnp

    n = cfg["n"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        _block(matmul(a, b))
    start = time.perf_counter()
    for _ in range(cfg["repeats"]):
        out = matmul(a, b)
    _block(out)
    seconds = (time.perf_counter() - start) / cfg["repeats"]
    return {"n": n, "matmul_s": seconds, "bf16_tflops": 2 * n ** 3 / seconds / 1e12}


def section_throughput(cfg: dict, emit) -> dict:
    result = {"runs": []}
    for m in cfg["models"]:
        result["runs"].append(_train(
            m, cfg["batch"], cfg["lengths"], cfg["steps"], vocab_size=cfg.get("vocab_size"),
            profile_steps=cfg["profile_steps"] if m == cfg.get("profile") else 0))
        emit(result)
    return result


def section_variants(cfg: dict, emit) -> dict:
    """The throughput run of ``cfg["model"]`` with one change at a time."""
    result = {"runs": [], "failed": []}
    for variant in cfg["variants"]:
        try:
            run = _train(cfg["model"], variant.get("batch", cfg["batch"]), cfg["lengths"],
                         cfg["steps"], vocab_size=cfg.get("vocab_size"),
                         overrides=variant.get("overrides"))
        except Exception as e:  # e.g. a kernel this GPU or JAX does not have
            result["failed"].append({"variant": variant["name"],
                                     "error": f"{type(e).__name__}: {e}"[:2000]})
        else:
            result["runs"].append(dict(run, variant=variant["name"]))
        emit(result)
    return result


def section_trainer(cfg: dict, emit) -> dict:
    """``python -m explistops_jax.train`` of ``cfg["gin_file"]`` for ``cfg["steps"]``
    steps and an evaluation at the end, in this process (the section's child):
    the exit status, wall time, step rate from the run's train log, first and last
    loss, the evaluation's metrics, and whether TensorFlow or seqio was imported."""
    with tempfile.TemporaryDirectory(prefix="device_check_run_") as run:
        return _train_command(cfg, Path(run))


def _train_command(cfg: dict, run: Path) -> dict:
    import statistics

    from explistops_jax import train

    bindings = [f"MODEL_DIR = '{run}'", f"TRAIN_STEPS = {cfg['steps']}", "EPOCHS = None",
                "EVAL_PERIOD = None", "train.progress = False",
                f"trainer.EvalConfig.max_examples = {cfg['eval_examples']}",
                *cfg["bindings"]]
    argv = [f"--gin_file={ROOT / cfg['gin_file']}", *(f"--gin_bindings={b}" for b in bindings)]
    start = time.perf_counter()
    code = train.main(argv)
    seconds = time.perf_counter() - start
    result = {"command": "python -m explistops_jax.train " + " ".join(argv), "exit": code,
              "gin_file": cfg["gin_file"], "command_s": seconds, "steps": cfg["steps"],
              "imported": sorted(m for m in ("tensorflow", "seqio", "tensorflow_datasets")
                                 if m in sys.modules)}
    log = run / "train_log.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if records:
        # the steps after the first tenth (the first holds compilation)
        later = [r["step_time_s"] for r in records[max(1, len(records) // 10):]] or [
            records[-1]["step_time_s"]]
        step_s = statistics.median(later)
        result.update(logged_steps=len(records), first_step_s=records[0]["step_time_s"],
                      step_s=step_s, steps_per_s=1.0 / step_s,
                      first_loss=records[0]["loss"], last_loss=records[-1]["loss"])
    evals = run / "eval_log.jsonl"
    if evals.exists():
        result["eval"] = [json.loads(line) for line in evals.read_text().splitlines()]
    result["checkpoints"] = sorted(p.name for p in run.glob("checkpoint_*"))
    if code != 0 or result["imported"] or not records:
        result["error"] = (f"exit {code}, {len(records)} steps logged, imported "
                           f"{result['imported'] or 'nothing of TensorFlow'}")
    return result


def section_tests(cfg: dict, emit) -> dict:
    """``pytest -m gpu`` on ``cfg["paths"]``: its counts, exit status and log tail
    (the whole log beside the report as ``gpu_tests.log``)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
           cfg["marker"], *cfg["paths"]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    out = os.environ.get("DEVICE_CHECK_OUT")
    if out:
        Path(out, "gpu_tests.log").write_text(log)
    counts = {k: int(n) for n, k in re.findall(
        r"(\d+) (passed|failed|skipped|errors?|deselected)", log.strip().splitlines()[-1]
        if log.strip() else "")}
    result = {"command": " ".join(cmd[1:]), "exit": proc.returncode, "counts": counts,
              "summary": log.strip().splitlines()[-1] if log.strip() else ""}
    # pytest exits 0 when every test passed or skipped; anything else is a failure
    if proc.returncode != 0:
        result["error"] = log[-3000:]
    return result


def section_big(cfg: dict, emit) -> dict:
    import jax

    from explistops_jax import plan as plan_lib

    # The plan compiles the very program the run compiles: cache it once (in the
    # check's cache, or in a folder of this section's when that is off).
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.join(
            os.environ.get("TMPDIR", "/tmp"), "explistops_jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    predicted = plan_lib.plan(cfg["model"], mesh={"data": 1, "model": 1},
                              batch_size=cfg["batch"], lengths=cfg["lengths"],
                              dtype="bfloat16", optimizer="adafactor",
                              vocab_size=cfg.get("vocab_size"),
                              backend=jax.devices()[0].platform)
    run = _train(cfg["model"], cfg["batch"], cfg["lengths"], cfg["steps"], random_init=False,
                 vocab_size=cfg.get("vocab_size"))
    run["peak_bytes_measured"] = _peak_bytes()
    run["plan"] = predicted.to_json()
    run["plan_peak_bytes"] = predicted.peak_bytes
    if run["peak_bytes_measured"]:
        run["plan_error"] = predicted.peak_bytes / run["peak_bytes_measured"] - 1.0
    return run


def section_decode(cfg: dict, emit) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from explistops_jax import checkpoints, network
    from explistops_jax.model import EncoderDecoderModel

    config = network.get_config(cfg["model"], dtype="bfloat16",
                                **({"vocab_size": cfg["vocab_size"]} if "vocab_size" in cfg else {}))
    model = EncoderDecoderModel(config)
    params = jax.jit(lambda r: model.get_initial_variables(r, {
        "encoder_input_tokens": (1, 1), "decoder_input_tokens": (1, 1)}))(jax.random.key(0))
    from flax import linen as nn

    params = nn.unbox(params)["params"]
    rng = np.random.default_rng(0)
    batch, length = cfg["batch"], cfg["decode_length"]
    inputs = rng.integers(2, config.vocab_size, (batch, cfg["input_length"])).astype(np.int32)
    feed = {"encoder_input_tokens": jnp.asarray(inputs),
            "decoder_input_tokens": jnp.zeros((batch, length), jnp.int32)}
    decode = jax.jit(lambda p, b: model.predict_batch_with_aux(
        p, b, max_decode_length=length, early_stop=False))
    _block(decode(params, feed))
    start = time.perf_counter()
    for _ in range(cfg["repeats"]):
        tokens, aux = decode(params, feed)
    _block(tokens)
    ours_s = (time.perf_counter() - start) / cfg["repeats"]
    result = {"model": cfg["model"], "batch": batch, "input_length": cfg["input_length"],
              "decode_length": length, "ours_s": ours_s,
              "ours_tokens_per_s": batch * length / ours_s}
    try:
        import torch
        import transformers
    except ImportError as e:
        result["transformers"] = f"skipped: {e}"
        return result
    host = jax.device_get(params)
    out_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"device_check_hf_{os.getpid()}"
    checkpoints.export_hf(config, host, out_dir)
    del params, host
    device = "cuda" if torch.cuda.is_available() else "cpu"
    hf = transformers.T5ForConditionalGeneration.from_pretrained(
        str(out_dir), dtype=torch.bfloat16).to(device).eval()
    ids = torch.as_tensor(inputs, device=device)
    kwargs = dict(max_new_tokens=length, min_new_tokens=length, do_sample=False,
                  num_beams=1)
    with torch.no_grad():
        hf.generate(ids, **kwargs)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(cfg["repeats"]):
            out = hf.generate(ids, **kwargs)
        if device == "cuda":
            torch.cuda.synchronize()
    hf_s = (time.perf_counter() - start) / cfg["repeats"]
    shutil.rmtree(out_dir, ignore_errors=True)
    result.update(transformers=transformers.__version__, torch=torch.__version__,
                  hf_device=device, hf_s=hf_s, hf_new_tokens=int(out.shape[1] - 1),
                  hf_tokens_per_s=batch * length / hf_s, speedup=hf_s / ours_s)
    return result


# ----------------------------------------------------------------- driver


def _run_section(name: str, tiny: bool, out: Path, timeout_s: float) -> dict:
    """Runs one section in a child process, for at most ``timeout_s``: its JSON,
    or the error it ended with (with what it had measured by then)."""
    from explistops_jax import rundir

    target = out / f"section_{name}.json"
    target.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--section", name, "--section-out", str(target)]
    if tiny:
        cmd.append("--tiny")
    # the copy device_check.sh installed (on PYTHONPATH) first, this checkout after it
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", DEVICE_CHECK_OUT=str(out),
               PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)])))
    start = time.perf_counter()
    # A session of its own, so that a timeout ends what the section started too
    # (the tests section's pytest) and nothing is left running on the device.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        print(f"[{name}] timed out after {timeout_s:.0f} s", flush=True)
        partial = rundir.read_json(target) if target.exists() else {}
        target.unlink(missing_ok=True)
        return {**partial, "error": f"timed out after {timeout_s:.0f} s: {(stderr or '')[-2000:]}",
                "exit": None, "seconds": timeout_s}
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not target.exists():
        tail = (stderr or stdout)[-3000:]
        print(f"[{name}] failed (exit {proc.returncode}) after {seconds:.0f} s:\n{tail}",
              flush=True)
        target.unlink(missing_ok=True)
        return {"error": tail, "exit": proc.returncode, "seconds": seconds}
    result = rundir.read_json(target)
    target.unlink()
    result["seconds"] = seconds
    print(f"[{name}] done in {seconds:.0f} s: {json.dumps(_brief(result))}", flush=True)
    return result


def _brief(result: dict) -> dict:
    """The numbers of a section without the nested detail, for the log."""
    keep = ("model", "step_s", "tflops_per_s", "compile_s", "peak_bytes_measured",
            "plan_peak_bytes", "plan_error", "bf16_tflops", "ours_tokens_per_s",
            "hf_tokens_per_s", "speedup", "last_loss")
    if "runs" in result:
        return {"runs": [_brief(r) for r in result["runs"]]}
    return {k: v for k, v in result.items() if k in keep}


def markdown(report: dict) -> str:
    """The report as a markdown table (one row per measurement)."""
    facts = report["device"]
    lines = [f"Device check on {facts.get('device_kind')} ({facts.get('platform')}), "
             f"jax {facts.get('jax')}, {'tiny shapes' if report['tiny'] else 'full shapes'}",
             "", "| measurement | value |", "|---|---|"]
    peak = report["sections"].get("peak", {})
    if "bf16_tflops" in peak:
        lines.append(f"| bf16 matmul peak ({peak['n']}^3) | {peak['bf16_tflops']:.3g} TFLOP/s |")
    for run in report["sections"].get("throughput", {}).get("runs", []):
        lines.append(_train_row(run))
        for line, entry in run.get("profile", {}).get("lines", {}).items():
            top = ", ".join(f"{k} {v:.2f}" for k, v in list(entry["top_ms_per_step"].items())[:5])
            lines.append(
                f"| {run['model']} traced, {line} | busy {entry['busy_ms_per_step']:.1f} ms "
                f"per step ({100 * entry['busy_share_of_step']:.0f}% of the step), matrix "
                f"products {100 * entry['matmul_share_of_busy']:.0f}% of busy; top ms/step: "
                f"{top} |")
    trained = report["sections"].get("trainer", {})
    if "steps_per_s" in trained:
        accuracy = ", ".join(f"{e['task']}/{e['split']} accuracy {e['accuracy']:.3f}"
                             for e in trained.get("eval", []) if "accuracy" in e)
        lines.append(
            f"| explistops train, {Path(trained['gin_file']).name}"
            f", {trained['steps']} steps | {trained['steps_per_s']:.1f} steps/s, loss "
            f"{trained['first_loss']:.3f} -> {trained['last_loss']:.3f}"
            + (f", {accuracy}" if accuracy else "")
            + f"; whole command {trained['command_s']:.0f} s; TensorFlow/seqio imported: "
            + (", ".join(trained["imported"]) or "no") + " |")
    tests = report["sections"].get("tests", {})
    if "summary" in tests:
        lines.append(f"| tests marked gpu | {tests['summary']} |")
    big = report["sections"].get("big", {})
    if "step_s" in big:
        measured = big.get("peak_bytes_measured")
        lines.append(
            f"| {big['model']} Adafactor bf16, batch {big['batch']}, lengths "
            f"{big['lengths'][0]}/{big['lengths'][1]} | {big['step_s']:.3f} s/step; peak "
            + (f"{measured / 2**30:.2f} GiB measured, " if measured else "not reported, ")
            + f"{big['plan_peak_bytes'] / 2**30:.2f} GiB planned"
            + (f" ({100 * big['plan_error']:+.1f}%)" if "plan_error" in big else "") + " |")
    dec = report["sections"].get("decode", {})
    if "ours_tokens_per_s" in dec:
        row = (f"| {dec['model']} greedy decode, batch {dec['batch']}, "
               f"{dec['decode_length']} tokens | ours {dec['ours_tokens_per_s']:.0f} tokens/s")
        if "hf_tokens_per_s" in dec:
            row += (f"; transformers generate {dec['hf_tokens_per_s']:.0f} tokens/s "
                    f"({dec['speedup']:.2f}x)")
        lines.append(row + " |")
    for run in report["sections"].get("variants", {}).get("runs", []):
        lines.append(_train_row(run, f" ({run['variant']})"))
    for run in report["sections"].get("variants", {}).get("failed", []):
        first = run["error"].splitlines()[0][:160].replace("|", "/")
        lines.append(f"| variant {run['variant']} | failed: {first} |")
    for name, section in report["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | failed (exit {section.get('exit')}) |")
        elif "skipped" in section:
            lines.append(f"| {name} | skipped ({section['skipped']}) |")
    return "\n".join(lines) + "\n"


def _train_row(run: dict, note: str = "") -> str:
    mfu = run.get("mfu")
    return (f"| {run['model']} train step, bf16, batch {run['batch']}, lengths "
            f"{run['lengths'][0]}/{run['lengths'][1]}{note} | {run['steps_per_s']:.2f} steps/s, "
            f"{run['target_tokens_per_s']:.0f} target tokens/s, "
            f"{run['tflops_per_s']:.1f} model TFLOP/s"
            + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
            + f" (XLA's count: {run['xla_tflops_per_s']:.1f} TFLOP/s) |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CI, CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=BUDGET_S,
                        help=f"seconds for all sections (default {BUDGET_S})")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--section-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else FULL

    if args.section:
        import jax

        from explistops_jax import rundir, runtime

        # JAX's persistent cache (runtime's folder): the sections share the
        # initialisers, and a rerun of the check on the same machine loads what
        # the first run compiled; compile_cached says which step was loaded.
        runtime.enable_compilation_cache()
        jax.monitoring.register_event_listener(_count_cache_hit)

        facts = _device_facts()
        emit = lambda partial: rundir.write_json(args.section_out, dict(partial, device=facts))
        result = globals()[f"section_{args.section}"](shapes[args.section], emit)
        emit(result)
        return 0

    names = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        print(f"device_check: unknown section(s) {', '.join(unknown)}; known: "
              f"{', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.budget_s <= 0:
        print(f"device_check: --budget-s must be positive, got {args.budget_s}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    report = {"tiny": args.tiny, "device": {}, "host": platform.node(),
              "python": platform.python_version(), "budget_s": args.budget_s,
              "install": _install_facts(), "sections": {}}
    for name in names:
        left = deadline - time.monotonic()
        if left < MIN_SECTION_S:
            section = {"skipped": f"budget: {left:.0f} s of {args.budget_s:.0f} s left, "
                                  f"a section needs {MIN_SECTION_S} s"}
            print(f"[{name}] skipped: {section['skipped']}", flush=True)
        else:
            section = _run_section(name, args.tiny, out, min(SECTION_TIMEOUT_S, left))
        report["device"] = report["device"] or section.pop("device", {})
        section.pop("device", None)
        report["sections"][name] = section
        _finish(report)
        _write_report(out, report)
    print(markdown(report))
    return 1 if any("error" in s for s in report["sections"].values()) else 0


def _install_facts() -> dict:
    """Where the sections import the project from, and the versions of what the
    carried wheels provide (device_check.sh installs them)."""
    import importlib.metadata as metadata
    import importlib.util

    spec = importlib.util.find_spec("explistops_jax")
    versions = {}
    for line in WHEELS_FILE.read_text().splitlines():
        name = line.split("#")[0].split("==")[0].strip()
        if name:
            try:
                versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                versions[name] = None
    # in a child: an import that fails or hangs stays out of this process
    probe = ("import importlib, json, sys\nout = {}\nfor m in sys.argv[1:]:\n"
             "    try:\n        importlib.import_module(m); out[m] = 'ok'\n"
             "    except Exception as e:\n        out[m] = f'{type(e).__name__}: {e}'[:300]\n"
             "print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", probe, *CARRIED_MODULES], capture_output=True,
                          text=True)
    try:
        imports = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        imports = {m: (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
                   for m in CARRIED_MODULES}
    return {"project": os.environ.get("DEVICE_CHECK_INSTALL", "not run by device_check.sh"),
            "explistops_jax": str(Path(spec.origin).parent) if spec and spec.origin else None,
            "carried": versions, "imports": imports}


def _finish(report: dict) -> None:
    """MFU of every training run, once the peak is known."""
    peak = report["sections"].get("peak", {}).get("bf16_tflops")
    for name in ("throughput", "variants"):
        for run in report["sections"].get(name, {}).get("runs", []):
            run["mfu"] = run["tflops_per_s"] / peak if peak else None


def _write_report(out: Path, report: dict) -> None:
    from explistops_jax import rundir

    rundir.write_text(out / "device_check.json", json.dumps(report, indent=2) + "\n")
    rundir.write_text(out / "device_check.md", markdown(report))


if __name__ == "__main__":
    sys.exit(main())
