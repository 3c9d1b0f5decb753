"""The local Hugging Face backend: a model in memory behind the continuous-batching engine.

:class:`HFBackend` is what evaluation, the judge, synthetic data and the server use for a
model this process holds (the one just trained, a base model with several LoRA adapters).
One worker thread drives the model (:class:`specialize.infer.engine.Engine`); ``generate``
queues a whole list of requests at once (shortest prompt first, so rows admitted together
pad little) and waits, while ``submit`` queues one request from any thread and returns a
ticket that streams its text; both share the same running batch. ``generate_chains`` queues
each request's follow-up (a retry of an invalid answer, a second question built from the
first answer) the moment its answer is in, so follow-ups fill slots of the running batch
instead of waiting for the slowest first answer and then running as a near-empty batch.

Prompts are rendered with the run's chat format (:func:`render_prompt`), so the model sees
exactly what it was trained on; requests may instead carry ``prompt_ids`` the caller rendered
(evaluation renders each record once and reuses the ids for the teacher-forced loss).

Adapters by name: ``HFBackend(model, ..., adapters={"space": path, "math": path})`` loads each
PEFT adapter onto the one base model; ``Request(adapter="math")`` selects it per row (PEFT's
mixed-adapter batches), ``adapter="base"`` runs without any.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from specialize.errors import SpecializeError
from specialize.infer.engine import Engine, Ticket
from specialize.infer.types import OnResult, Request, Result, Step, checked


def attach_adapters(model: Any, adapters: Mapping[str, str | Path]) -> Any:
    """``model`` with every named PEFT adapter loaded (a PeftModel); the first is active."""
    if not adapters:
        return model
    from peft import PeftModel

    items = list(adapters.items())
    for name, path in items:
        if not (Path(path) / "adapter_config.json").is_file():
            raise SpecializeError(f"adapter '{name}': no adapter_config.json", path=Path(path))
    start = 0
    if not isinstance(model, PeftModel):
        name, path = items[0]
        model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        start = 1
    for name, path in items[start:]:
        model.load_adapter(str(path), adapter_name=name)
    model.set_adapter(items[0][0])
    return model


class HFBackend:
    """A Hugging Face model answering :class:`~specialize.infer.types.Request` objects.

    ``batch_size`` rows decode together. The engine's worker thread runs only while there is
    work (the model is in eval mode meanwhile and back in its own mode after), so the same
    model can be evaluated, trained and evaluated again; :meth:`close` refuses new work.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        fmt: str,
        batch_size: int = 16,
        *,
        adapters: Mapping[str, str | Path] | None = None,
        share_prefix: bool = True,
    ) -> None:
        from specialize.models.chat import stop_token_ids

        self.model = attach_adapters(model, adapters or {})
        self.tokenizer, self.fmt, self.batch_size = tokenizer, fmt, batch_size
        peft_config = getattr(self.model, "peft_config", None)
        names = tuple(peft_config) if isinstance(peft_config, dict) else ()
        self.adapters = names
        self.engine = Engine(
            self.model,
            tokenizer,
            stop_token_ids(tokenizer, fmt),
            batch_size,
            share_prefix=share_prefix,
            adapter_names=names if len(names) > 1 or adapters else (),
        )
        cfg = getattr(model, "config", None)
        self.name = f"hf:{getattr(cfg, '_name_or_path', '') or 'model'}"

    # ----------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Finish what is queued and refuse new requests (the worker thread ends)."""
        self.engine.close()

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------- tickets
    def _ticket(self, request: Request, index: int, stream: bool) -> Ticket:
        from specialize.models.chat import render_prompt

        if request.adapter not in (None, "base") and request.adapter not in self.adapters:
            have = ", ".join(self.adapters) or "none"
            raise SpecializeError(f"unknown adapter '{request.adapter}' (loaded: {have})")
        if request.constraint is not None:
            from specialize.infer.constraints import check_constraint

            check_constraint(request.constraint)
        if request.prompt_ids is not None:
            prompt = list(request.prompt_ids)
        else:
            prompt = render_prompt(request.messages or [], self.tokenizer, self.fmt)
        return Ticket(request, prompt, index, stream)

    def submit(self, request: Request, stream: bool = True) -> Ticket:
        """Queue one request (from any thread); it joins the running batch when a slot frees."""
        ticket = self._ticket(request, 0, stream)
        self.engine.submit_many([ticket])
        return ticket

    # ------------------------------------------------------------------------ generate
    def generate(
        self,
        requests: Sequence[Request],
        *,
        progress: bool = True,
        desc: str = "generate",
        on_result: OnResult | None = None,
    ) -> list[Result]:
        """Answers in the caller's order; ``on_result(i, result)`` runs as each finishes
        (in the engine thread, one at a time)."""
        if not requests:
            return []
        tickets = [self._ticket(r, i, False) for i, r in enumerate(requests)]
        out: list[Result | None] = [None] * len(tickets)
        bar = tqdm(
            total=len(tickets), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        )

        def finished(t: Ticket) -> None:
            res = checked(t.final, t.request)
            out[t.index] = res
            bar.update(1)
            if on_result is not None:
                on_result(t.index, res)  # an error here is re-raised below, in the caller

        for t in tickets:
            t.callback = finished
        try:
            self.engine.submit_many(sorted(tickets, key=lambda t: len(t.prompt)))
            for t in tickets:
                t.result()
        except BaseException:
            for t in tickets:
                t.cancel()
            raise
        finally:
            bar.close()
        for t in tickets:
            if t.callback_error is not None:
                raise t.callback_error
        return out  # type: ignore[return-value]

    def generate_chains(
        self,
        requests: Sequence[Request],
        step: Step,
        *,
        progress: bool = True,
        desc: str = "generate",
    ) -> None:
        """Answer each request, then whatever ``step(i, result)`` asks next for chain ``i``,
        until it returns None; follow-ups join the running batch at once.

        ``step`` runs in the engine thread, one call at a time. An exception in ``step``
        cancels every chain's further requests and is re-raised here, in the caller.
        """
        if not requests:
            return
        bar = tqdm(
            total=len(requests), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        )
        open_chains = [len(requests)]
        done = threading.Event()
        errors: list[BaseException] = []
        live: dict[int, Ticket] = {}

        def finished(t: Ticket) -> None:
            follow: Request | None = None
            try:
                res = checked(t.final, t.request)
                bar.update(1)
                if not errors:
                    follow = step(t.index, res)
                if follow is not None:
                    nxt = self._ticket(follow, t.index, False)
                    nxt.callback = finished
                    live[t.index] = nxt
                    bar.total += 1
                    self.engine.submit_many([nxt])
                    return
            except BaseException as err:  # noqa: BLE001 - re-raised in the caller below
                errors.append(err)
                for other in live.values():
                    other.cancel()
            open_chains[0] -= 1
            if open_chains[0] == 0:
                done.set()

        tickets = [self._ticket(r, i, False) for i, r in enumerate(requests)]
        for t in tickets:
            t.callback = finished
            live[t.index] = t
        try:
            self.engine.submit_many(sorted(tickets, key=lambda t: len(t.prompt)))
            while not done.wait(0.5):
                pass
        except BaseException:
            for t in list(live.values()):
                t.cancel()
            raise
        finally:
            bar.close()
        if errors:
            raise errors[0]
