"""A naive local teacher: one request at a time through stock ``model.generate``.

This is the baseline of ``bench/synth_throughput.py``: how a seed-style tool generates
structured synthetic data locally (outlines / transformers style). Each request is rendered
with the run's chat format (:func:`specialize.models.chat.render_prompt`, the same prompt
the engine sees), then answered alone by ``model.generate(input_ids, max_new_tokens=...,
do_sample=..., logits_processor=[grammar mask], stopping_criteria=[...])``:

- a constrained request gets a logits processor that masks the next-token logits with the
  request's llguidance grammar. The grammar and the mask are the project's own
  (:class:`specialize.infer.constraints.TokenMasker` / ``RowState``: llguidance's matcher,
  the end-of-turn ids as its EOS tokens, closed JSON objects, compact separators), so the
  baseline spends the same time per mask as the engine; what differs is only that a request
  decodes alone, with one ``generate`` call per request and a fresh KV cache each time;
- generation stops at an end-of-turn id (``eos_token_id``), when the grammar is complete and
  nothing may follow, at a stop string, or after ``max_new_tokens``; the text is decoded
  without special tokens, cut at the first stop string and stripped, and the result passes
  through :func:`specialize.infer.types.checked` like every backend's.

The semantics follow :mod:`specialize.infer.engine` exactly, so greedy answers are
identical to :class:`specialize.infer.hf.HFBackend`'s in float32 (``tests/test_naive_teacher.py``
checks this on a tiny model). Sampled requests (retries of invalid answers) are drawn the way
the engine draws them: ``torch.manual_seed(seed)`` then HF's temperature warper and
``torch.multinomial`` (top-k off), which picks the same tokens from the same probabilities
(with ``top_p < 1``, HF's top-p warper renormalises where the engine does not, so a draw at a
rounding boundary could differ; retries use ``top_p = 1``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from specialize.errors import SpecializeError
from specialize.infer.types import OnResult, Request, Result, checked, cut_at_stop, first_stop

__all__ = ["NaiveHFTeacher"]


class _Guide:
    """One request's decoding state, shared by its logits processor and stopping criterion.

    ``sync`` feeds the grammar every generated token it has not seen yet (up to a stop id,
    which ends the answer and is never fed, as in the engine)."""

    def __init__(self, prompt_len: int, state: Any, stops: set[int], tokenizer: Any, req: Request):
        self.prompt_len, self.state, self.stops = prompt_len, state, stops
        self.tokenizer, self.request = tokenizer, req
        self.seen = 0  # generated tokens fed to the grammar
        self.hit_stop_string = False

    def new_ids(self, input_ids: Any) -> list[int]:
        return input_ids[0, self.prompt_len :].tolist()

    def sync(self, input_ids: Any) -> list[int]:
        new = self.new_ids(input_ids)
        if self.state is not None:
            for t in new[self.seen :]:
                if t in self.stops:
                    break
                self.state.consume(t)
        self.seen = len(new)
        return new


def _processor(guide: _Guide, masker: Any) -> Any:
    from transformers import LogitsProcessor

    class GrammarMask(LogitsProcessor):
        """Sets every token the grammar forbids at this point to ``-inf``."""

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            guide.sync(input_ids)
            masker.apply(scores, [guide.state])
            return scores

    return GrammarMask()


def _criterion(guide: _Guide) -> Any:
    import torch
    from transformers import StoppingCriteria

    class Done(StoppingCriteria):
        """True once the grammar is complete (nothing may follow) or a stop string appeared."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = guide.sync(input_ids)
            done = False
            if new and new[-1] not in guide.stops:
                if guide.state is not None and guide.state.finished:
                    done = True
                stop = guide.request.stop
                if stop:
                    text = guide.tokenizer.decode(new, skip_special_tokens=True)
                    if first_stop(text, stop) >= 0:
                        guide.hit_stop_string = done = True
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    return Done()


class NaiveHFTeacher:
    """The :class:`~specialize.infer.types.Backend` protocol over one-at-a-time ``generate``.

    ``model`` and ``tokenizer`` as for :class:`specialize.infer.hf.HFBackend`; ``fmt`` is the
    chat format the prompts are rendered in. No adapters: a request naming one is refused
    (:class:`SpecializeError`, as HFBackend refuses an unknown one) before anything runs."""

    def __init__(self, model: Any, tokenizer: Any, fmt: str) -> None:
        from specialize.models.chat import stop_token_ids

        self.model, self.tokenizer, self.fmt = model, tokenizer, fmt
        self.stop_ids = stop_token_ids(tokenizer, fmt)
        self.stops = set(self.stop_ids)
        self._masker: Any = None
        cfg = getattr(model, "config", None)
        self.name = f"naive-hf:{getattr(cfg, '_name_or_path', '') or 'model'}"

    def close(self) -> None:
        """Nothing to release (no worker thread)."""

    def __enter__(self) -> NaiveHFTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def masker(self) -> Any:
        """The llguidance view of the tokenizer, built on the first constrained request."""
        if self._masker is None:
            from specialize.infer.constraints import TokenMasker

            vocab = self.model.get_output_embeddings().weight.shape[0]
            self._masker = TokenMasker(self.tokenizer, vocab, self.stop_ids)
        return self._masker

    def generate(
        self,
        requests: Sequence[Request],
        *,
        progress: bool = True,
        desc: str = "generate",
        on_result: OnResult | None = None,
    ) -> list[Result]:
        """Answers in order, one ``model.generate`` call each; ``on_result(i, r)`` after each."""
        from tqdm.auto import tqdm

        for req in requests:  # what HFBackend refuses before it starts, refused here too
            self._check(req)
        out: list[Result] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for i, req in enumerate(
                tqdm(requests, desc=desc, unit="rec", disable=not progress, dynamic_ncols=True)
            ):
                try:
                    res = self.answer(req)
                except Exception as err:  # noqa: BLE001 - one request fails, not the run
                    msg = " ".join(f"{type(err).__name__}: {err}".split())[:300]
                    res = Result("", 0, "error", error=msg, tag=req.tag)
                res = checked(res, req)
                out.append(res)
                if on_result is not None:
                    on_result(i, res)
        finally:
            self.model.train(was_training)
        return out

    def _check(self, req: Request) -> None:
        """Raise :class:`SpecializeError` for a request no answer can be made for: an adapter
        (none is loaded here) or a constraint llguidance cannot compile."""
        if req.adapter not in (None, "base"):
            raise SpecializeError(f"unknown adapter '{req.adapter}' (loaded: none)")
        if req.constraint is not None:
            from specialize.infer.constraints import check_constraint

            check_constraint(req.constraint)

    def answer(self, req: Request) -> Result:
        """One request: render, ``model.generate`` (masked when constrained), decode, cut."""
        import torch

        from specialize.models.chat import render_prompt

        if req.prompt_ids is not None:
            prompt = list(req.prompt_ids)
        else:
            prompt = render_prompt(req.messages or [], self.tokenizer, self.fmt)
        state = None
        if req.constraint is not None:
            state = self.masker().start(req.constraint)
        guide = _Guide(len(prompt), state, self.stops, self.tokenizer, req)
        kwargs: dict[str, Any] = {}
        s = req.sampling
        if s.greedy:
            kwargs["do_sample"] = False
        else:
            # The engine's draw: softmax(logits / T) (top-p if < 1), multinomial on a
            # generator seeded with the request's seed (a random one if None).
            torch.manual_seed(s.seed if s.seed is not None else random.getrandbits(62))
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=0)
        processors = [_processor(guide, self.masker())] if state is not None else []
        ids = torch.tensor([prompt], dtype=torch.long, device=self.model.device)
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=req.max_new_tokens,
                eos_token_id=self.stop_ids,
                pad_token_id=self.stop_ids[0],
                logits_processor=processors,
                stopping_criteria=[_criterion(guide)],
                **kwargs,
            )
        new = guide.sync(gen)
        if new and new[-1] in self.stops:
            new, finish = new[:-1], "stop"
        elif guide.hit_stop_string or (state is not None and state.finished):
            finish = "stop"
        else:
            finish = "length"
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, _ = cut_at_stop(text, req.stop)
        err = state.error if state is not None else None
        invalid = f"constraint: {err}" if err else None
        return Result(text.strip(), len(new), finish, invalid=invalid, tag=req.tag)
