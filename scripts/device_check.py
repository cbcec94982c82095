"""The accelerator check: what the study's real scale costs on one device.

    python scripts/device_check.py --out DIR [--tiny] [--sections a,b,...]

Sections (each runs in its own process, so that its peak memory is its own and
JAX and PyTorch do not share an allocator):

  peak        bf16 matrix product throughput (the MFU denominator, measured here)
  throughput  train steps/s, tokens/s and MFU for t5_1_0_small and t5_1_0_base,
              bf16 activations, batch 128, lengths 64/192 (explistops30 medium)
  big         t5_1_0_3B: a few Adafactor steps at bf16, batch 8, lengths 256/512:
              step time and peak device memory, beside ``plan``'s prediction for
              the same shape (compiled for this backend before anything is allocated)
  decode      greedy decoding tokens/s of t5_1_0_small against transformers'
              ``generate`` on the same device and weights (bf16, equal lengths)

``--tiny`` runs every section with tiny shapes on whatever device there is (CI
runs it on the CPU so the script cannot rot). Writes ``device_check.json`` and
``device_check.md`` to ``--out``. MFU is model FLOPs utilisation as PaLM defines
it: the step's matrix-product FLOPs counted from the model's shapes
(``plan.train_flops``) over step time, divided by the measured bf16 matmul peak.
XLA's own count (``compiled.cost_analysis()``) is recorded beside it: on the CPU
it agrees within 1% (tests/test_plan.py); on the H200 it reported 28-46% of the
products (docs/benchmarks.md), so it is not the MFU numerator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("peak", "throughput", "decode", "big")
SECTION_TIMEOUT_S = 300

FULL = {
    "peak": {"n": 8192, "repeats": 10},
    "throughput": {"models": ["t5_1_0_small", "t5_1_0_base"], "batch": 128,
                   "lengths": [64, 192], "steps": 20},
    "big": {"model": "t5_1_0_3B", "batch": 8, "lengths": [256, 512], "steps": 5},
    "decode": {"model": "t5_1_0_small", "batch": 64, "input_length": 64,
               "decode_length": 192, "repeats": 3},
}
# Tiny: the same code paths, a 512-token vocabulary instead of T5's 32,128.
TINY = {
    "peak": {"n": 256, "repeats": 3},
    "throughput": {"models": ["t5_1_0_tiny"], "batch": 8, "lengths": [16, 32], "steps": 3,
                   "vocab_size": 512},
    "big": {"model": "t5_1_0_tiny", "batch": 4, "lengths": [16, 32], "steps": 2,
            "vocab_size": 512},
    "decode": {"model": "t5_1_0_tiny", "batch": 4, "input_length": 16,
               "decode_length": 8, "repeats": 1, "vocab_size": 512},
}


# ----------------------------------------------------------------- helpers


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
           random_init: bool = True, vocab_size: int | None = None) -> dict:
    """Compiles and times ``steps`` train steps of a fresh model (Adafactor).

    ``random_init=False`` fills the parameters with a constant instead of
    compiling the model's initialiser (a third compilation of a 3B graph): step
    time and memory do not depend on the values."""
    import jax
    import numpy as np

    from explistops_jax import network, optimizers, partitioning, train_step
    from explistops_jax.model import EncoderDecoderModel
    from explistops_jax.plan import random_batch, train_flops

    config = network.get_config(model_name, dtype=dtype,
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
    start = time.perf_counter()
    compiled = step.lower(layout.abstract, batches[0]).compile()
    compile_s = time.perf_counter() - start
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
    model_flops = train_flops(config, batch, lengths)
    return {"model": model_name, "batch": batch, "lengths": list(lengths), "dtype": dtype,
            "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
            "compile_s": compile_s, "step_s": step_s, "steps_per_s": 1.0 / step_s,
            "target_tokens_per_s": batch * lengths[1] / step_s,
            "model_flops_per_step": model_flops,
            "tflops_per_s": model_flops / step_s / 1e12,
            "xla_flops_per_step": flops, "xla_tflops_per_s": flops / step_s / 1e12,
            "first_loss": losses[0], "last_loss": losses[-1],
            "losses_finite": bool(np.all(np.isfinite(losses)))}


# ----------------------------------------------------------------- sections


def section_peak(cfg: dict) -> dict:
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


def section_throughput(cfg: dict) -> dict:
    return {"runs": [_train(m, cfg["batch"], cfg["lengths"], cfg["steps"],
                            vocab_size=cfg.get("vocab_size")) for m in cfg["models"]]}


def section_big(cfg: dict) -> dict:
    import jax

    from explistops_jax import plan as plan_lib

    # The plan compiles the very program the run compiles: cache it once.
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


def section_decode(cfg: dict) -> dict:
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
    result.update(transformers=transformers.__version__, torch=torch.__version__,
                  hf_device=device, hf_s=hf_s, hf_new_tokens=int(out.shape[1] - 1),
                  hf_tokens_per_s=batch * length / hf_s, speedup=hf_s / ours_s)
    return result


# ----------------------------------------------------------------- driver


def _run_section(name: str, tiny: bool, out: Path) -> dict:
    """Runs one section in a child process; its JSON, or the error it ended with."""
    target = out / f"section_{name}.json"
    cmd = [sys.executable, __file__, "--section", name, "--section-out", str(target)]
    if tiny:
        cmd.append("--tiny")
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                              timeout=SECTION_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        print(f"[{name}] timed out after {SECTION_TIMEOUT_S} s", flush=True)
        return {"error": f"timed out after {SECTION_TIMEOUT_S} s: "
                         f"{(e.stderr or b'')[-2000:]!r}", "exit": None,
                "seconds": SECTION_TIMEOUT_S}
    seconds = time.perf_counter() - start
    if proc.returncode != 0 or not target.exists():
        tail = (proc.stderr or proc.stdout)[-3000:]
        print(f"[{name}] failed (exit {proc.returncode}) after {seconds:.0f} s:\n{tail}",
              flush=True)
        return {"error": tail, "exit": proc.returncode, "seconds": seconds}
    result = json.loads(target.read_text())
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
        lines.append(f"| bf16 matmul peak ({peak['n']}^3) | {peak['bf16_tflops']:.1f} TFLOP/s |")
    for run in report["sections"].get("throughput", {}).get("runs", []):
        mfu = run.get("mfu")
        lines.append(
            f"| {run['model']} train step, bf16, batch {run['batch']}, lengths "
            f"{run['lengths'][0]}/{run['lengths'][1]} | {run['steps_per_s']:.2f} steps/s, "
            f"{run['target_tokens_per_s']:.0f} target tokens/s, "
            f"{run['tflops_per_s']:.1f} model TFLOP/s"
            + (f", MFU {100 * mfu:.1f}%" if mfu is not None else "")
            + f" (XLA's count: {run['xla_tflops_per_s']:.1f} TFLOP/s) |")
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
    for name, section in report["sections"].items():
        if "error" in section:
            lines.append(f"| {name} | failed (exit {section.get('exit')}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CI, CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--section", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--section-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = TINY if args.tiny else FULL

    if args.section:
        result = globals()[f"section_{args.section}"](shapes[args.section])
        result["device"] = _device_facts()
        Path(args.section_out).write_text(json.dumps(result, indent=2))
        return 0

    names = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        print(f"device_check: unknown section(s) {', '.join(unknown)}; known: "
              f"{', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = {name: _run_section(name, args.tiny, out) for name in names}
    device = next((s.pop("device") for s in sections.values() if "device" in s), {})
    for s in sections.values():
        s.pop("device", None)
    peak = sections.get("peak", {}).get("bf16_tflops")
    for run in sections.get("throughput", {}).get("runs", []):
        run["mfu"] = run["tflops_per_s"] / peak if peak else None
    report = {"tiny": args.tiny, "device": device, "host": platform.node(),
              "python": platform.python_version(), "sections": sections}
    (out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "device_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if any("error" in s for s in sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
