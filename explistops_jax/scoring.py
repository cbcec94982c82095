"""Scoring what a model writes: the final answer, the steps, and the metrics.

The study's released code judged an answer by its last character, which is wrong
with 30 classes ("19" vs "9"). Here the answer is parsed properly
(:func:`parse_answer`), and explanations are checked step by step against
arithmetic and against the true evaluation of the input.

Metric functions have SeqIO's signature ``(targets, predictions) -> dict[str, float]``
where a target is the dict :func:`postprocess` returns for ``is_target=True`` and a
prediction the dict it returns otherwise. Rates are fractions in [0, 1]; a rate with
nothing to count (e.g. step validity of answer-only predictions) is NaN. Nothing
here raises on a malformed prediction. Pure Python.

Answer parsing (:func:`parse_answer_with_source` says which rule fired):

1. ``"final"``: the integer after the *last* ``Final answer:`` (case and spacing free).
2. ``"bare"``: else, a text that is a bare integer is the answer (the ``none`` style).
3. ``"step"``: else (fallback), the result of the last step :func:`read_steps` finds.
4. ``None``: else the prediction is unparseable: it counts as wrong and as a parse
   failure.

``fallback_rate`` counts rule 3 only; ``parse_failure_rate`` counts rule 4.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

from explistops_jax.errors import ListOpsError, UserError
from explistops_jax.explain import Step, explain, read_steps, steps
from explistops_jax.listops import Tree, apply, depth, evaluate, length, parse, unreduced

__all__ = [
    "DEFAULT_MODULUS",
    "LENGTH_BUCKET",
    "parse_answer",
    "parse_answer_with_source",
    "step_is_valid",
    "same_step",
    "score_example",
    "score_record",
    "aggregate",
    "score_records",
    "answer_accuracy",
    "step_metrics",
    "breakdowns",
    "all_metrics",
    "METRIC_FNS",
    "postprocess",
    "length_bucket",
    "breakdown_key",
    "breakdown_of",
    "bucket_start",
    "bucket_label",
]

DEFAULT_MODULUS = 30
LENGTH_BUCKET = 10
"""Width of the length buckets of the accuracy breakdown (20-29, 30-39, ...)."""

_FINAL_ANSWER = re.compile(r"final\s+answer\s*:?\s*(-?\d+)", re.IGNORECASE)
_BARE = re.compile(r"\s*(-?\d+)\s*")
_MAX_DIGITS = 30


def _to_int(digits: str) -> int | None:
    return int(digits) if len(digits.lstrip("-")) <= _MAX_DIGITS else None


def parse_answer_with_source(text: Any) -> tuple[int | None, str | None]:
    """The predicted answer and the rule that found it (see the module doc); never raises."""
    text = _to_text(text)
    if not text:
        return None, None
    last = None
    for last in _FINAL_ANSWER.finditer(text):
        pass
    if last is not None:
        value = _to_int(last.group(1))
        return (value, "final") if value is not None else (None, None)
    bare = _BARE.fullmatch(text)
    if bare:
        value = _to_int(bare.group(1))
        return (value, "bare") if value is not None else (None, None)
    found = read_steps(text)
    if found:
        return found[-1].result, "step"
    return None, None


def parse_answer(text: Any) -> int | None:
    """The predicted answer: the last ``Final answer: X``, else a documented fallback
    (module doc); None when unparseable. Never raises."""
    return parse_answer_with_source(text)[0]


# --------------------------------------------------------------------------- steps


def step_is_valid(step: Step, modulus: int = DEFAULT_MODULUS) -> bool | None:
    """Is a stated step arithmetically right given its own operands?

    None when the step shows no operands (the short style), which cannot be checked.
    For the modular operators a stated total must be right as well: the sum for SM
    and FLSUM (``sum is N``), the product for PM (``product is N``).
    """
    if not step.operands:
        return None
    try:
        if apply(step.op, step.operands, modulus) != step.result:
            return False
    except (ValueError, ZeroDivisionError):
        return False
    return step.total is None or step.total == unreduced(step.op, step.operands)


def same_step(predicted: Step, true: Step) -> bool:
    """Does a predicted step state the true step?

    Operator and result must match; operands too when the prediction shows them (as a
    multiset for MED, whose medium form shows them sorted); a total (SM, PM, FLSUM)
    too when stated. A short-style step (no operands) is compared on operator and result.
    """
    if predicted.op != true.op or predicted.result != true.result:
        return False
    if predicted.total is not None and true.total is not None and predicted.total != true.total:
        return False
    if not predicted.operands:
        return True
    if true.op == "MED":
        return sorted(predicted.operands) == sorted(true.operands)
    return predicted.operands == true.operands


def _normalize(text: str) -> str:
    return " ".join(text.split())


# ------------------------------------------------------------------- one example


def score_example(
    prediction: Any,
    expression: str | Tree,
    modulus: int = DEFAULT_MODULUS,
    target: str | None = None,
) -> dict[str, Any]:
    """Score one prediction against the input expression (and its target text).

    Returns a dict: ``answer`` (parsed or None), ``answer_source``, ``true_answer``,
    ``correct``, ``parse_failure``, ``fallback``, ``exact_match`` (None without a
    target), ``predicted_steps``, ``checkable_steps`` (steps with operands),
    ``valid_steps``, ``true_steps``, ``matching_steps`` (position by position),
    ``faithful`` (same number of steps, all matching), ``length``, ``depth``.

    Raises:
      ListOpsError: only when ``expression`` is malformed (the input, not the
        prediction, is wrong).
    """
    tree = parse(expression) if isinstance(expression, str) else expression
    true_steps = steps(tree, modulus)
    return _score(_to_text(prediction), evaluate(tree, modulus), true_steps, modulus,
                  None if target is None else _to_text(target), length(tree), depth(tree))


def _score(prediction: str, true_answer: int | None, true_steps: list[Step] | None,
           modulus: int, target: str | None, tree_length: int | None,
           tree_depth: int | None) -> dict[str, Any]:
    answer, source = parse_answer_with_source(prediction)
    predicted = read_steps(prediction)
    checks = [step_is_valid(step, modulus) for step in predicted]
    result: dict[str, Any] = {
        "answer": answer,
        "answer_source": source,
        "true_answer": true_answer,
        "correct": answer is not None and answer == true_answer,
        "parse_failure": answer is None,
        "fallback": source == "step",
        "exact_match": None if target is None else _normalize(prediction) == _normalize(target),
        "predicted_steps": len(predicted),
        "checkable_steps": sum(check is not None for check in checks),
        "valid_steps": sum(check is True for check in checks),
        "true_steps": None,
        "matching_steps": None,
        "faithful": None,
        "length": tree_length,
        "depth": tree_depth,
    }
    if true_steps is not None and target is not None and true_steps and not read_steps(target):
        true_steps = None  # an answer-only target: step faithfulness does not apply
    if true_steps is not None:
        matching = sum(same_step(p, t) for p, t in zip(predicted, true_steps))
        result["true_steps"] = len(true_steps)
        result["matching_steps"] = matching
        result["faithful"] = matching == len(true_steps) == len(predicted)
    return result


def score_record(record: Mapping[str, Any], *, line: int | None = None,
                 source: str | None = None) -> dict[str, Any]:
    """Score one record of a predictions file (:func:`score_example` on its fields).

    A record has ``expression`` and ``prediction``; optional ``modulus`` (default 30),
    ``target`` (the true target text, for exact match) or else ``style`` (the target
    is then rendered). ``line``/``source`` place errors in the file.

    Raises:
      UserError / ListOpsError: a missing field or a malformed expression.
    """
    if not isinstance(record, Mapping):
        raise ListOpsError(f"record is a {type(record).__name__}", line=line, source=source,
                           expected='a JSON object with "expression" and "prediction"')
    for key in ("expression", "prediction"):
        if key not in record:
            raise ListOpsError(f'missing field "{key}"', line=line, source=source,
                               expected='"expression" and "prediction"')
    modulus = _coerce_int(record.get("modulus"))
    modulus = DEFAULT_MODULUS if modulus is None else modulus
    if modulus < 1:
        raise ListOpsError(f"modulus {modulus}", line=line, source=source,
                           expected="a positive integer")
    try:
        tree = parse(_to_text(record["expression"]) or "", line=line)
    except ListOpsError as err:
        raise ListOpsError(f"expression: {err.what}", line=line, column=err.column,
                           expected=err.expected, source=source) from None
    target = record.get("target")
    if target is None and record.get("style") is not None:
        style = _to_text(record["style"])
        try:
            target = explain(tree, style, modulus)
        except UserError as err:
            raise ListOpsError(err.what, line=line, source=source, expected=err.expected) from None
    return score_example(record["prediction"], tree, modulus, target)


# ------------------------------------------------------------------------ metrics


def length_bucket(value: int, width: int = LENGTH_BUCKET) -> str:
    """The bucket name of a length: ``"20_29"`` for width 10."""
    low = (value // width) * width
    return f"{low}_{low + width - 1}"


# The breakdown metrics' names are built and read here only: ``accuracy_<kind>_<bucket>``,
# with kind ``length`` (buckets ``20_29``) or ``depth`` (buckets ``3``).
def breakdown_key(kind: str, bucket: str) -> str:
    """The metric name of one bucket of a breakdown: ``accuracy_length_20_29``."""
    return f"accuracy_{kind}_{bucket}"


def breakdown_of(metrics: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``{bucket: value}`` of the ``kind`` breakdown in a metrics mapping."""
    prefix = breakdown_key(kind, "")
    return {key[len(prefix):]: value for key, value in metrics.items()
            if key.startswith(prefix)}


def bucket_start(bucket: str) -> int | None:
    """The first value a bucket holds (``"20_29"`` -> 20, ``"3"`` -> 3); None if
    the name is not a bucket's."""
    head = bucket.split("_")[0]
    return int(head) if head.lstrip("-").isdigit() else None


def bucket_label(bucket: str) -> str:
    """A bucket as a table shows it: ``"20-29"``."""
    return bucket.replace("_", "-")


def _rate(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def aggregate(scored: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Metrics over per-example scores (:func:`score_example` dicts).

    ``accuracy``, ``parse_failure_rate``, ``fallback_rate``; ``exact_match`` (over
    examples with a target); ``step_validity`` (valid / checkable predicted steps);
    ``step_faithfulness`` (examples whose steps all equal the true steps; examples
    whose target is answer-only, the ``none`` style, are left out);
    ``step_faithfulness_per_step`` (matching positions / the longer of predicted and
    true steps, summed over examples); ``accuracy_length_<lo>_<hi>`` and
    ``accuracy_depth_<d>`` breakdowns; ``num_examples``.
    """
    rows = list(scored)
    n = len(rows)
    with_target = [r for r in rows if r.get("exact_match") is not None]
    with_truth = [r for r in rows if r.get("faithful") is not None]
    metrics = {
        "num_examples": float(n),
        "accuracy": _rate(sum(bool(r["correct"]) for r in rows), n),
        "parse_failure_rate": _rate(sum(bool(r["parse_failure"]) for r in rows), n),
        "fallback_rate": _rate(sum(bool(r["fallback"]) for r in rows), n),
        "exact_match": _rate(sum(bool(r["exact_match"]) for r in with_target), len(with_target)),
        "step_validity": _rate(sum(r["valid_steps"] for r in rows),
                               sum(r["checkable_steps"] for r in rows)),
        "step_faithfulness": _rate(sum(bool(r["faithful"]) for r in with_truth), len(with_truth)),
        "step_faithfulness_per_step": _rate(
            sum(r["matching_steps"] for r in with_truth),
            sum(max(r["predicted_steps"], r["true_steps"]) for r in with_truth)),
    }
    metrics.update(_breakdown(rows))
    return metrics


def _breakdown(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    groups: dict[tuple[str, int], list[bool]] = {}
    for row in rows:
        if row.get("length") is not None:
            low = (row["length"] // LENGTH_BUCKET) * LENGTH_BUCKET
            groups.setdefault(("length", low), []).append(bool(row["correct"]))
        if row.get("depth") is not None:
            groups.setdefault(("depth", row["depth"]), []).append(bool(row["correct"]))
    out: dict[str, float] = {}
    for (kind, key), hits in sorted(groups.items()):
        name = length_bucket(key) if kind == "length" else str(key)
        out[breakdown_key(kind, name)] = sum(hits) / len(hits)
    return out


def score_records(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Metrics of a predictions file's records (see :func:`score_record`, :func:`aggregate`).

    Raises:
      UserError: a record lacks a field or has a malformed expression ("record N").
    """
    return aggregate(score_record(record, line=number) for number, record in
                     enumerate(records, start=1))


# --------------------------------------------------------------- SeqIO interface


def postprocess(output: Any, example: Mapping[str, Any] | None = None,
                is_target: bool = False) -> dict[str, Any]:
    """SeqIO ``postprocess_fn``: decoded text -> the dict the metric functions read.

    Predictions: ``{"text", "answer"}``. Targets: ``{"text", "expression", "answer",
    "length", "depth", "modulus"}`` taken from the example (bytes, numpy scalars and
    1-element arrays are decoded; missing fields are computed from the expression
    when possible, else None; modulus defaults to 30). Never raises.
    """
    text = _to_text(output) or ""
    if not is_target:
        return {"text": text, "answer": parse_answer(text)}
    example = example or {}
    expression = _to_text(example.get("expression"))
    modulus = _coerce_int(example.get("modulus"))
    modulus = DEFAULT_MODULUS if modulus is None or modulus < 1 else modulus
    target = {
        "text": text,
        "expression": expression,
        "answer": _coerce_int(example.get("answer")),
        "length": _coerce_int(example.get("length")),
        "depth": _coerce_int(example.get("depth")),
        "modulus": modulus,
    }
    tree = _safe_parse(expression)
    if tree is not None:
        for key, compute in (("answer", lambda t: evaluate(t, modulus)),
                             ("length", length), ("depth", depth)):
            if target[key] is None:
                target[key] = compute(tree)
    if target["answer"] is None:
        target["answer"] = parse_answer(text)
    return target


def _score_pair(target: Any, prediction: Any) -> dict[str, Any]:
    """Score one (target, prediction) pair as the metric functions receive them."""
    if not isinstance(target, Mapping):
        target = postprocess(target, None, is_target=True)
    if isinstance(prediction, Mapping):
        text = _to_text(prediction.get("text")) or ""
    else:
        text = _to_text(prediction) or ""
    modulus = _coerce_int(target.get("modulus")) or DEFAULT_MODULUS
    target_text = _to_text(target.get("text"))
    tree = _safe_parse(_to_text(target.get("expression")))
    if tree is not None:
        true_steps: list[Step] | None = steps(tree, modulus)
        true_answer: int | None = evaluate(tree, modulus)
        tree_length, tree_depth = length(tree), depth(tree)
    else:  # no usable expression: the target text is the only truth
        true_steps = read_steps(target_text) if target_text else None
        true_answer = _coerce_int(target.get("answer"))
        if true_answer is None:
            true_answer = parse_answer(target_text)
        tree_length = _coerce_int(target.get("length"))
        tree_depth = _coerce_int(target.get("depth"))
    return _score(text, true_answer, true_steps, modulus, target_text, tree_length, tree_depth)


def _scores(targets: Sequence[Any], predictions: Sequence[Any]) -> list[dict[str, Any]]:
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    return [_score_pair(t, p) for t, p in zip(targets, predictions)]


_ANSWER_KEYS = ("accuracy", "parse_failure_rate", "fallback_rate")
_STEP_KEYS = ("exact_match", "step_validity", "step_faithfulness", "step_faithfulness_per_step")


def answer_accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SeqIO metric: ``accuracy``, ``parse_failure_rate``, ``fallback_rate``."""
    metrics = aggregate(_scores(targets, predictions))
    return {key: metrics[key] for key in _ANSWER_KEYS}


def step_metrics(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SeqIO metric: ``exact_match``, ``step_validity``, ``step_faithfulness``,
    ``step_faithfulness_per_step``."""
    metrics = aggregate(_scores(targets, predictions))
    return {key: metrics[key] for key in _STEP_KEYS}


def breakdowns(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SeqIO metric: ``accuracy_length_<lo>_<hi>`` and ``accuracy_depth_<d>``."""
    metrics = aggregate(_scores(targets, predictions))
    return {key: value for key, value in metrics.items() if key.startswith("accuracy_")}


def all_metrics(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
    """SeqIO metric: everything :func:`aggregate` reports, in one pass."""
    return aggregate(_scores(targets, predictions))


# ---------------------------------------------------------------------- decoding


# The metric functions of every explistops task (seqio's ``metric_fns`` and the
# grain tasks'): in this order, their dicts make up a task's metrics.
METRIC_FNS = (answer_accuracy, step_metrics, breakdowns)


def _unwrap(value: Any) -> Any:
    """numpy scalars / 0-d or 1-element arrays and 1-element lists -> the plain value."""
    for _ in range(4):
        if isinstance(value, (list, tuple)) and len(value) == 1:
            value = value[0]
        elif hasattr(value, "item") and getattr(value, "size", 1) == 1 and not isinstance(
                value, (str, bytes)):
            try:
                value = value.item()
            except (TypeError, ValueError):
                return value
        else:
            break
    return value


def _to_text(value: Any) -> str | None:
    """Text from str / bytes / numpy values; None stays None. Never raises."""
    value = _unwrap(value)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception:  # noqa: BLE001 (a hostile __str__ must not break scoring)
        return None


def _coerce_int(value: Any) -> int | None:
    """An int from int / float / numeric text / numpy values, else None. Never raises."""
    value = _unwrap(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else None
    text = _to_text(value)
    if text is None:
        return None
    match = _BARE.fullmatch(text)
    return _to_int(match.group(1)) if match else None


def _safe_parse(expression: str | None) -> Tree | None:
    if not expression:
        return None
    try:
        return parse(expression)
    except ListOpsError:
        return None

