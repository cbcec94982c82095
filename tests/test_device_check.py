"""scripts/device_check.sh --tiny: the accelerator check runs end to end on the
CPU with tiny shapes (so it cannot rot between the runs on a GPU) and
writes its JSON and markdown table."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_device_check_tiny_writes_its_report(tmp_path):
    # the script runs `python3`: this interpreter's, whether or not its venv is active
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu", PATH=path)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--tiny"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["tiny"] is True and report["device"]["platform"] == "cpu"
    sections = report["sections"]
    assert list(sections) == ["peak", "throughput", "trainer", "tests", "decode", "big",
                              "variants"]
    assert not [name for name, s in sections.items() if "error" in s or "skipped" in s]
    assert sections["peak"]["bf16_tflops"] > 0
    run = sections["throughput"]["runs"][0]
    assert run["losses_finite"] and run["xla_flops_per_step"] > 0 and 0 < run["mfu"]
    # MFU's numerator is the model's count; on the CPU XLA's agrees with it
    assert run["xla_flops_per_step"] >= run["model_flops_per_step"] > 0
    # the traced steps: XLA's CPU threads were busy, and dots count as products
    lines = run["profile"]["lines"]
    assert lines and max(e["busy_ms_per_step"] for e in lines.values()) > 0
    assert max(e["matmul_share_of_busy"] for e in lines.values()) > 0
    assert not [k for e in lines.values() for k in e["top_ms_per_step"] if k.startswith("end: ")]
    # the project ran as device_check.sh installed it (--no-deps, a folder of its own)
    assert report["install"]["project"].startswith("installed with --no-deps"), report["install"]
    assert "device_check_site." in report["install"]["explistops_jax"]
    assert report["install"]["carried"]["grain"]  # here from the venv; there from .whl/
    assert report["install"]["imports"] == {"grain": "ok", "gin": "ok", "tensorboardX": "ok"}
    # the study's gin file through the trainer's entry point: grain, no TensorFlow
    trained = sections["trainer"]
    assert trained["exit"] == 0 and trained["imported"] == [], trained
    assert trained["logged_steps"] == 3 and trained["checkpoints"] == ["checkpoint_3"]
    assert trained["steps_per_s"] > 0 and trained["last_loss"] > 0
    assert [(e["task"], e["split"], e["step"]) for e in trained["eval"]] == [
        ("explistops30_medium", "validation", 3)]
    # the gpu tests ran (and skipped themselves: no GPU here)
    tests = sections["tests"]
    assert tests["exit"] == 0 and tests["counts"]["skipped"] >= 3, tests
    assert (tmp_path / "gpu_tests.log").exists()
    variants = sections["variants"]["runs"]
    assert sections["variants"]["failed"] == []
    assert [v["variant"] for v in variants] == ["XLA fused attention",
                                                "bfloat16 attention logits", "batch 16",
                                                "dropout 0.1"]
    assert variants[0]["overrides"] == {"attention_kernel": "xla"}
    assert variants[1]["overrides"] == {"float32_attention_logits": False}
    assert variants[3]["overrides"] == {"dropout_rate": 0.1}
    assert variants[2]["batch"] == 16 and all(v["losses_finite"] and v["mfu"] > 0
                                              for v in variants)
    big = sections["big"]
    assert big["plan_peak_bytes"] > big["plan"]["params_bytes"] > 0
    # the plan compiled the very program the run needs: the run loaded it
    assert big["compile_cached"] is True
    assert all(isinstance(r["compile_cached"], bool) for r in [run, *variants])
    decode = sections["decode"]
    assert decode["ours_tokens_per_s"] > 0
    # transformers' generate runs beside ours when torch is installed (the test extra)
    try:
        import torch  # noqa: F401
        assert decode["hf_new_tokens"] == decode["decode_length"]
    except ImportError:
        assert decode["transformers"].startswith("skipped")
    table = (tmp_path / "device_check.md").read_text()
    assert "| measurement | value |" in table and "t5_1_0_tiny" in table
    assert "| explistops train, explistops30_medium_t5_1_0_small.gin, 3 steps |" in table
    assert not list(ROOT.glob("device_check_site*"))


def test_device_check_keeps_to_its_budget(tmp_path):
    """A section that cannot start with MIN_SECTION_S left is recorded as
    skipped, and the report is still written."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"),
                           "--out", str(tmp_path), "--tiny", "--budget-s", "1",
                           "--sections", "peak,big"],
                          env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["budget_s"] == 1
    assert all(s["skipped"].startswith("budget: ") for s in report["sections"].values())
    assert list(report["sections"]) == ["peak", "big"]
    assert "| big | skipped (budget: " in (tmp_path / "device_check.md").read_text()


def test_device_check_rejects_a_bad_budget(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"),
                           "--out", str(tmp_path), "--budget-s", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--budget-s must be positive" in proc.stderr
    assert not (tmp_path / "device_check.json").exists()


def test_a_failing_variant_is_recorded_and_the_next_one_runs():
    """On the CPU the cuDNN kernel does not exist: that variant's error is kept,
    the variant after it still runs, and the table says which one failed."""
    device_check = _load_device_check()
    cfg = dict(device_check.TINY["variants"], steps=1, variants=[
        {"name": "cuDNN attention",
         "overrides": {"attention_kernel": "cudnn", "dropout_rate": 0.0}},
        {"name": "batch 4", "batch": 4}])
    emitted = []
    result = device_check.section_variants(cfg, emitted.append)
    assert [f["variant"] for f in result["failed"]] == ["cuDNN attention"]
    assert result["failed"][0]["error"]
    assert [r["variant"] for r in result["runs"]] == ["batch 4"]
    assert result["runs"][0]["losses_finite"] and len(emitted) == 2
    table = device_check.markdown({"tiny": True, "device": {}, "sections": {"variants": result}})
    assert "| variant cuDNN attention | failed: " in table


def test_compile_cached_tells_a_loaded_program_from_a_compiled_one(tmp_path):
    """The check's listener sees JAX's persistent-cache hits (the event's name
    is JAX's own, so a JAX that renamed it would fail here, not report every
    step as compiled): nothing the first time, one hit once the in-memory caches
    are cleared and the same program is compiled again."""
    code = f"""
import importlib.util, sys
import jax, jax.numpy as jnp
spec = importlib.util.spec_from_file_location("device_check", {str(ROOT / "scripts" / "device_check.py")!r})
dc = importlib.util.module_from_spec(spec); spec.loader.exec_module(dc)
jax.config.update("jax_compilation_cache_dir", {str(tmp_path)!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.monitoring.register_event_listener(dc._count_cache_hit)
f = lambda x: jnp.sin(x) @ x.T
hits = []
for _ in range(2):
    jax.clear_caches()
    lowered = jax.jit(f).lower(jax.ShapeDtypeStruct((8, 8), jnp.float32))
    before = len(dc._CACHE_HITS)
    lowered.compile()
    hits.append(len(dc._CACHE_HITS) - before)
print(*hits)
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["0", "1"]


def _load_device_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_check",
                                                  ROOT / "scripts" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie waits only for its parent to reap it


def test_a_section_past_its_time_is_ended_with_what_it_started(tmp_path, monkeypatch):
    """A section that overruns is killed with its own children (the tests
    section starts pytest): nothing it started keeps running on the device."""
    import subprocess as real

    device_check = _load_device_check()
    pidfile = tmp_path / "grandchild.pid"
    popen = real.Popen

    def fake_popen(cmd, **kwargs):  # the section's child starts a child of its own
        return popen(["bash", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], **kwargs)

    monkeypatch.setattr(device_check.subprocess, "Popen", fake_popen)
    result = device_check._run_section("tests", True, tmp_path, timeout_s=2)
    assert result["error"].startswith("timed out after 2 s") and result["exit"] is None
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
