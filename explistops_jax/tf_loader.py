"""Loading TensorFlow, when the data needs it: quietly, and off the GPUs.

Only the SeqIO side loads TensorFlow (``seqio_backend``, ``vocab``,
``seqio_tasks``); each calls :func:`confine` before its first ``import
tensorflow``, so TensorFlow never claims the GPUs that JAX uses and the lines
its libraries print while loading (before any logging level applies) are
dropped. Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from typing import Iterator

__all__ = ["confine"]

# Lines TensorFlow's and XLA's shared libraries print while loading, before any
# logging level applies (TensorFlow >= 2.20 logs them through absl's C++ logging,
# which ignores TF_CPP_MIN_LOG_LEVEL until it is initialised).
_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations|"
    r"cuda drivers|cudart_stub|cpu_feature_guard|To enable the following instructions|"
    r"rebuild TensorFlow with the appropriate compiler flags|"
    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
    r"TF-TRT Warning|This TensorFlow binary is optimized")

_confined = False


def confine() -> None:
    """Imports TensorFlow with its loading chatter dropped, and hides the GPUs
    from it (this must happen before TensorFlow first touches a device). Once
    per process; whatever imports TensorFlow for data calls it first."""
    global _confined
    if _confined:
        return
    _confined = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _filtered_stderr():
        import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow initialised its devices already
        logging.warning("TensorFlow initialised its devices before "
                        "explistops_jax.tf_loader.confine(); it may hold GPU memory")


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Captures file descriptor 2 (C++ libraries write there directly) and
    passes on every line except known start-up noise."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to filter
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines()
                    if line.strip() and not _NOISE.search(line)]
            for line in kept:
                print(line, file=sys.stderr)
