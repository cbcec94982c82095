"""``explistops reproduce``: run a preset of the study (resumably) and write its report."""

from __future__ import annotations

import argparse
import os

from etils import epath

from explistops_jax import rundir
from explistops_jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=("cpu", "cpu-study", "paper"), default="cpu",
                        help="cpu: a tiny model from scratch on small problems (minutes on "
                             "a laptop CPU); cpu-study: the study's six findings at that "
                             "scale, each with a verdict; paper: the study's grid for "
                             "accelerators")
    parser.add_argument("--finding", default=None,
                        help="cpu-study: comma-separated findings to run (default all): "
                             "headline, ladder, data_efficiency, length, larger_numbers, "
                             "modular_sum")
    parser.add_argument("--out", default=None,
                        help="output directory, one sub-directory per run (default "
                             "runs/PRESET; runs/cpu for cpu-study, which reuses the demo's runs)")
    parser.add_argument("--styles", default=None,
                        help="comma-separated explanation styles, or 'all' (default: "
                             "none,medium for cpu, all for paper)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds, e.g. 0,1,2 for the stability check "
                             "(default 0; 0,1,2 for cpu-study, with seeds 3 and 4 of the "
                             "headline's none and medium)")
    parser.add_argument("--sizes", default=None,
                        help="paper: comma-separated T5 sizes (default small,base,large,3B)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="SIZE=PATH",
                        help="paper: fine-tune this pretrained checkpoint (Hugging Face or "
                             "T5X) for a size, e.g. small=/ckpt/t5-small; repeatable. The "
                             "runs then use T5's SentencePiece vocabulary ($EXPLISTOPS_SPM_PATH)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print one row per run (task, lengths, packing, batch, steps, "
                             "the share of target positions that are padding) and stop")
    parser.add_argument("--device-memory", type=float, default=None, metavar="GIB",
                        help="with --dry-run: each run's per-device peak (explistops plan, "
                             "one device, bfloat16) and the largest batch that fits GIB")
    parser.add_argument("--write-gin", default=None, metavar="DIR",
                        help="paper: write the study's gin files, DIR/experiments/*.gin (own "
                             "trainer) and DIR/t5x/*.gin (T5X), from the one definition of "
                             "the runs (gin_configs/ is this command's output) and stop")
    parser.add_argument("--records", default=None, metavar="DIR",
                        help="finished runs' records (no checkpoints; small enough to "
                             "commit): runs done there are taken instead of trained, and "
                             "each run that finishes is written there, so a study longer "
                             "than a machine is lent for resumes on another "
                             "(docs/cpu_study/runs for the CPU study)")
    parser.add_argument("--no-report", action="store_true", help="skip the report")
    parser.add_argument("--data_backend", choices=("grain", "seqio"), default="grain",
                        help="input pipeline: grain (default; the project's own tasks without "
                             "TensorFlow, others fall back to seqio) or seqio")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in _csv(text) or []]
    except ValueError:
        raise UserError(f"--seeds {text!r} is not a list of integers",
                        expected="e.g. --seeds 0,1,2") from None


def _checkpoints(items: list[str]) -> dict[str, str]:
    """SIZE=PATH pairs; a PATH may be a Hugging Face Hub model id
    (``google-t5/t5-small`` or ``hf://...``), resolved (downloaded or found in the
    cache) before anything else runs."""
    from explistops_jax import checkpoints

    out = {}
    for item in items:
        size, sep, path = item.partition("=")
        if not sep or not size or not path:
            raise UserError(f"--checkpoint {item!r}",
                            expected="SIZE=PATH or SIZE=HUB_ID, e.g. small=google-t5/t5-small")
        local = checkpoints.resolve(path)
        if not local.exists():
            raise UserError(f"--checkpoint {size}: {path} does not exist",
                            expected="a checkpoint directory or a Hub model id")
        out[size] = str(local)
    return out


def _sentencepiece_from(checkpoints_by_size: dict[str, str]) -> str | None:
    """The SentencePiece model that comes with the first checkpoint that has one."""
    from explistops_jax import checkpoints

    for path in checkpoints_by_size.values():
        found = checkpoints.sentencepiece_model(path)
        if found:
            return found
    return None


def _write_gin(args: argparse.Namespace) -> int:
    from explistops_jax import gin_writer, runtime, study

    if args.preset != "paper":
        raise UserError(f"--write-gin writes the paper grid's files, not {args.preset!r}'s",
                        expected="--preset paper --write-gin DIR")
    for flag in ("styles", "seeds", "sizes", "finding"):
        if getattr(args, flag):
            raise UserError(f"--write-gin writes the whole grid; --{flag} does not apply",
                            expected="--preset paper --write-gin DIR")
    if args.checkpoint:
        raise UserError("--write-gin: the T5X files name the public checkpoints; "
                        "--checkpoint does not apply", expected="--preset paper --write-gin DIR")
    runtime.check_writable(args.write_gin, "--write-gin directory")
    paths = gin_writer.write(study.gin_runs(), args.write_gin)
    print(f"wrote {len(paths)} gin files under {args.write_gin}")
    return 0


def _dry_run(runs, device_memory: float | None) -> int:
    import sys

    from explistops_jax import dry_run

    if device_memory is not None:
        from explistops_jax.commands.plan import _force_host_devices

        _force_host_devices(1)
    quiet = not sys.stderr.isatty()
    rows = dry_run.rows_for(runs, device_memory=device_memory,
                            log=None if quiet else lambda m: print(m, file=sys.stderr))
    print(dry_run.format_rows(rows), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    from explistops_jax import explain, gin_writer, runtime, study

    if args.write_gin:
        return _write_gin(args)
    if args.device_memory is not None and not (args.dry_run and 0 < args.device_memory < 1e6):
        raise UserError(f"--device-memory {args.device_memory:g}",
                        expected="a positive number of GiB, with --dry-run")
    styles = _csv(args.styles)
    if styles == ["all"]:
        styles = list(explain.STYLES)
    checkpoints = _checkpoints(args.checkpoint)
    spm = None  # the _sp tasks' vocabulary: $EXPLISTOPS_SPM_PATH, else the checkpoints'
    if checkpoints and not os.environ.get("EXPLISTOPS_SPM_PATH"):
        spm = _sentencepiece_from(checkpoints)
        if spm is None:
            raise UserError("pretrained checkpoints need T5's SentencePiece vocabulary, and "
                            "none of them comes with one (spiece.model)",
                            expected="EXPLISTOPS_SPM_PATH=/path/to/sentencepiece.model")
    default_out = "runs/cpu" if args.preset == "cpu-study" else f"runs/{args.preset}"
    out = epath.Path(args.out or default_out)  # local, or a URL (gs://...)
    default_seeds = (",".join(map(str, study.CPU_STUDY_SEEDS))
                     if args.preset == "cpu-study" else "0")
    # flags are checked before TensorFlow and JAX load
    seeds = _seeds(args.seeds or default_seeds)
    runtime.check_writable(out, "--out directory")
    started = runtime.start(args, sentencepiece_model=spm)
    runs = study.runs_for(args.preset, styles=styles, seeds=seeds,
                          checkpoints=checkpoints, sizes=_csv(args.sizes),
                          findings=_csv(args.finding))
    if args.dry_run:
        return _dry_run(runs, args.device_memory)
    # SeqIO's registry (and TensorFlow) only for runs that read through it
    started.register(training_tasks=[r.task for r in runs], data_backend=args.data_backend)
    if args.preset == "paper":
        commands = gin_writer.t5x_commands(runs, out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / rundir.T5X_COMMANDS_FILE
        rundir.write_text(path, "#!/usr/bin/env bash\n"
                                "# The same runs under T5X (see docs/t5x.md).\n"
                                + "".join(c + "\n" for c in commands))
        print(f"T5X command lines: {path} ({len(commands)} runs)")
    from explistops_jax import reproduce

    with started.output(out, "--out directory"):
        dirs = reproduce.run_all(runs, out, preset=args.preset, data_backend=args.data_backend,
                                 records=args.records)
    if not args.no_report:
        from explistops_jax import report

        path = report.write_report(dirs, out)
        print(f"report: {path}")
    return 0
