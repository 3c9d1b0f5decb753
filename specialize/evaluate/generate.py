"""The old list-of-prompts entry point, kept while callers move to :mod:`specialize.infer`.

The engine itself lives in :mod:`specialize.infer.engine`; this adapter maps the old
arguments onto :class:`~specialize.infer.types.Request` objects so existing callers and tests
exercise the one engine. It goes away when evaluation calls the backend directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from specialize.infer.engine import Engine, Ticket
from specialize.infer.types import Request, Sampling


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    stop_ids: list[int],
    max_new_tokens: int = 48,
    batch_size: int = 16,
    desc: str = "generate",
    progress: bool = True,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    stop_strings: list[str] | None = None,
    on_finish: Callable[[list[int], list[dict[str, Any]]], None] | None = None,
    share_prefix: bool = True,
) -> list[dict[str, Any]]:
    """Answers for token-id prompts: ``[{"text", "new_tokens", "stopped"}]`` in input order."""
    if not prompts:
        return []
    engine = Engine(model, tokenizer, stop_ids, batch_size, share_prefix=share_prefix)
    out: list[dict[str, Any] | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)

    def done(t: Ticket) -> None:
        r = t.final
        if r.error is not None:
            raise RuntimeError(r.error)
        a = {"text": r.text, "new_tokens": r.new_tokens, "stopped": r.stopped}
        out[t.index] = a
        if on_finish is not None:
            on_finish([t.index], [a])
        bar.update(1)

    tickets = []
    for i, p in enumerate(prompts):
        sampling = Sampling(temperature, top_p, seed * 1_000_003 + i) if do_sample else Sampling()
        req = Request(
            prompt_ids=list(p),
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            stop=tuple(stop_strings or ()),
        )
        t = Ticket(req, list(p), i, False)
        t.callback = done
        tickets.append(t)
    try:
        engine.submit_many(sorted(tickets, key=lambda t: len(t.prompt)))
        engine.close()
    finally:
        for t in tickets:
            t.cancel()
        bar.close()
    for t in tickets:
        if t.callback_error is not None:
            raise t.callback_error
    return out  # type: ignore[return-value]
