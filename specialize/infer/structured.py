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

from collections.abc import Callable, Sequence
from dataclasses import replace

from specialize.errors import SpecializeError
from specialize.infer.types import Backend, Counts, OnResult, Request, Result, Sampling, Step

# ``then(i, result)``: the next stage of chain ``i`` (a request), its known answer (a result,
# e.g. cached) or None (the chain ends with ``result``)
Then = Callable[[int, Result], "Request | Result | None"]

RETRY_TEMPERATURE = 0.7  # a retry samples: greedy decoding would repeat the invalid answer


def retry_request(req: Request, attempt: int) -> Request:
    """Retry ``attempt`` (1, 2 ...) of ``req``: sampled, with a seed of its own, so the same
    request retried anywhere (here, or by the server's task API) asks the same thing."""
    s = req.sampling
    seed = (s.seed if s.seed is not None else 0) + 7919 * attempt
    return replace(req, sampling=Sampling(max(s.temperature, RETRY_TEMPERATURE), s.top_p, seed))


def reason_key(reason: str) -> str:
    """A short bucket for counting invalid answers (``not JSON``, ``items.0.kind`` ...)."""
    head = reason.split(":", 1)[0].strip()
    if head.startswith("not JSON"):
        return "not JSON" + (" (cut by max_new_tokens)" if "max_new_tokens" in reason else "")
    return head[:60] or "invalid"


def generate_chains(
    backend: Backend,
    requests: Sequence[Request],
    step: Step,
    *,
    progress: bool = True,
    desc: str = "generate",
) -> None:
    """Answer each request, then whatever ``step(i, result)`` asks next for chain ``i``
    (a retry, a second question built from the answer), until ``step`` returns None.

    A backend with its own ``generate_chains`` (the local engine) queues each follow-up into
    the running batch as soon as its answer is in. Any other backend answers in rounds: all
    first requests, then all follow-ups, and so on (an HTTP endpoint or llama.cpp server
    answers each round concurrently). ``step`` is called once per answer, one at a time.
    """
    native = getattr(backend, "generate_chains", None)
    if native is not None:
        native(requests, step, progress=progress, desc=desc)
        return
    current = list(requests)
    todo = list(range(len(requests)))
    rounds = 0
    while todo:
        follow: list[int] = []

        def finished(
            k: int, res: Result, todo: list[int] = todo, follow: list[int] = follow
        ) -> None:
            i = todo[k]
            nxt = step(i, res)
            if nxt is not None:
                current[i] = nxt
                follow.append(i)

        label = desc if rounds == 0 else f"{desc} (round {rounds + 1})"
        backend.generate(
            [current[i] for i in todo], progress=progress, desc=label, on_result=finished
        )
        todo = sorted(follow)
        rounds += 1


def generate_checked(
    backend: Backend,
    requests: Sequence[Request],
    *,
    retries: int = 2,
    counts: Counts | None = None,
    progress: bool = True,
    desc: str = "generate",
    on_result: OnResult | None = None,
    then: Then | None = None,
) -> list[Result]:
    """``backend.generate`` with invalid constrained answers retried, then counted.

    ``on_result(i, result)`` is called once per request with its final result. ``counts`` (if
    given) is updated in place: valid/invalid/errors, retries made, reasons of the invalid,
    and the backend's schema fallbacks (an endpoint that refused ``json_schema``).

    ``then(i, result)``, called with each stage's final answer (valid, invalid after its
    retries, or an error), may continue request ``i``'s chain: with a new request (a stage of
    its own, with its own retries), or with a :class:`Result` known without a call (a cached
    answer), which ends the chain. Retries and later stages go through
    :func:`generate_chains`, so on the local engine they run in the same batch as the first
    answers.
    """
    counts = counts if counts is not None else Counts()
    fallbacks_before = getattr(backend, "fallbacks", 0)
    out: list[Result | None] = [None] * len(requests)
    stage = list(requests)  # the request each chain's current stage started from
    attempt = [1] * len(requests)

    def end_stage(req: Request, res: Result) -> None:
        counts.requests += 1
        if res.error is not None:
            counts.errors += 1
        elif res.invalid is not None:
            counts.invalid += 1
            key = reason_key(res.invalid)
            counts.invalid_reasons[key] = counts.invalid_reasons.get(key, 0) + 1
        elif req.constraint is not None:
            counts.valid += 1

    def step(i: int, res: Result) -> Request | None:
        res.attempts = attempt[i]
        if res.error is None and res.invalid is not None and attempt[i] <= retries:
            counts.retries += 1
            attempt[i] += 1
            return retry_request(stage[i], attempt[i] - 1)
        end_stage(stage[i], res)
        nxt = then(i, res) if then is not None else None
        if isinstance(nxt, Request):
            stage[i], attempt[i] = nxt, 1
            return nxt
        out[i] = nxt if nxt is not None else res
        if on_result is not None:
            on_result(i, out[i])
        return None

    generate_chains(backend, requests, step, progress=progress, desc=desc)
    counts.fallbacks += getattr(backend, "fallbacks", 0) - fallbacks_before
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:  # a backend that dropped a request: an error result, never a silent gap
        raise SpecializeError(f"{len(missing)} requests got no answer from {backend.name}")
    return [r for r in out if r is not None]
