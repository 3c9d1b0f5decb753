"""Constrained answers that are valid or counted, on any backend: retries and counts.

Constrained decoding makes a valid answer the only one a local model *can* produce, but an
answer can still fail validation: cut by ``max_new_tokens`` inside the JSON, a server that
ignored the schema, a pydantic check the schema cannot express. Users of today's tools report
runs that carried on with empty or invalid JSON; here every constrained result is validated
(:func:`specialize.infer.types.checked`), an invalid one is asked again up to ``retries``
times with sampling (a greedy retry would repeat the same answer), and one that never
validates comes back with ``invalid`` set and is counted: never returned as valid, and never
an exception that loses the rest of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from specialize.infer.types import Backend, Counts, OnResult, Request, Result, Sampling

RETRY_TEMPERATURE = 0.7  # a retry samples: greedy decoding would repeat the invalid answer


def _retry_request(req: Request, attempt: int) -> Request:
    s = req.sampling
    seed = (s.seed if s.seed is not None else 0) + 7919 * attempt
    return replace(req, sampling=Sampling(max(s.temperature, RETRY_TEMPERATURE), s.top_p, seed))


def reason_key(reason: str) -> str:
    """A short bucket for counting invalid answers (``not JSON``, ``items.0.kind`` ...)."""
    head = reason.split(":", 1)[0].strip()
    if head.startswith("not JSON"):
        return "not JSON" + (" (cut by max_new_tokens)" if "max_new_tokens" in reason else "")
    return head[:60] or "invalid"


def generate_checked(
    backend: Backend,
    requests: Sequence[Request],
    *,
    retries: int = 2,
    counts: Counts | None = None,
    progress: bool = True,
    desc: str = "generate",
    on_result: OnResult | None = None,
) -> list[Result]:
    """``backend.generate`` with invalid constrained answers retried, then counted.

    ``on_result(i, result)`` is called once per request with its final result. ``counts`` (if
    given) is updated in place: valid/invalid/errors, retries made, reasons of the invalid,
    and the backend's schema fallbacks (an endpoint that refused ``json_schema``).
    """
    counts = counts if counts is not None else Counts()
    fallbacks_before = getattr(backend, "fallbacks", 0)
    out: list[Result | None] = [None] * len(requests)
    todo = list(range(len(requests)))
    current = list(requests)
    for attempt in range(retries + 1):
        last = attempt == retries
        batch = [current[i] for i in todo]

        def finished(
            k: int, res: Result, todo: list[int] = todo, last: bool = last, n: int = attempt + 1
        ) -> None:
            i = todo[k]
            res.attempts = n
            out[i] = res
            if (res.invalid is None or last) and on_result is not None:
                on_result(i, res)

        label = desc if attempt == 0 else f"{desc} (retry {attempt})"
        backend.generate(batch, progress=progress, desc=label, on_result=finished)
        again = [i for i in todo if (r := out[i]) is not None and r.invalid is not None]
        if not again or last:
            break
        counts.retries += len(again)
        for i in again:
            current[i] = _retry_request(requests[i], attempt + 1)
        todo = again
    results: list[Result] = [r for r in out if r is not None]
    counts.requests += len(results)
    for req, r in zip(requests, results, strict=True):
        if r.error is not None:
            counts.errors += 1
        elif r.invalid is not None:
            counts.invalid += 1
            key = reason_key(r.invalid)
            counts.invalid_reasons[key] = counts.invalid_reasons.get(key, 0) + 1
        elif req.constraint is not None:
            counts.valid += 1
    counts.fallbacks += getattr(backend, "fallbacks", 0) - fallbacks_before
    return results
