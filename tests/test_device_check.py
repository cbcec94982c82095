"""scripts/device_check.sh --tiny: the accelerator check runs end to end on the
CPU with tiny shapes (so it cannot rot between the sessions that have a GPU) and
writes its JSON and markdown table."""

import json
import os
import subprocess
import sys
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
    assert set(sections) == {"peak", "throughput", "decode", "big"}
    assert not [name for name, s in sections.items() if "error" in s]
    assert sections["peak"]["bf16_tflops"] > 0
    run = sections["throughput"]["runs"][0]
    assert run["losses_finite"] and run["xla_flops_per_step"] > 0 and 0 < run["mfu"]
    # MFU's numerator is the model's count; on the CPU XLA's agrees with it
    assert run["xla_flops_per_step"] >= run["model_flops_per_step"] > 0
    big = sections["big"]
    assert big["plan_peak_bytes"] > big["plan"]["params_bytes"] > 0
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
