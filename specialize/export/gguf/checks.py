"""Round-trip checks: the GGUF that llama.cpp opens is the model Hugging Face runs.

Each check opens the file with llama.cpp itself (a :class:`LlamaProcess` child): the chat
template renders to the same token ids and the end-of-turn token stops generation
(:func:`check_template`, with a forced-stop probe), the next-token distributions match
(:func:`check_logits`) and greedy answers match (:func:`check_answers`, against
:func:`hf_greedy_answers` computed once). A converter that forgot a permutation or a metadata
key fails these checks instead of shipping a model that quietly answers worse.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import SpecializeError
from specialize.infer.llama_process import LlamaProcess

Message = dict[str, Any]


def _hf_prompt_ids(tok: Any, messages: Sequence[Message]) -> tuple[str, list[int]]:
    text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return text, list(tok(text, add_special_tokens=False)["input_ids"])


def _hf_stop_ids(tok: Any) -> list[int]:
    from specialize.models.chat import stop_token_ids

    try:
        return stop_token_ids(tok, "template")
    except SpecializeError:
        return [tok.eos_token_id] if tok.eos_token_id is not None else []


def check_template(
    hf_tokenizer: Any,
    gguf_path: str | Path,
    conversations: Sequence[Sequence[Message]],
    *,
    texts: Sequence[str] = (),
    stop_after: int = 3,
    n_ctx: int = 2048,
) -> dict[str, Any]:
    """The GGUF's chat template and tokenizer reproduce Hugging Face's prompt token for token,
    and llama.cpp ends generation at the end-of-turn token.

    For each conversation, the HF tokenizer's ``apply_chat_template`` (generation prompt on)
    and llama.cpp's rendering of the GGUF's own template metadata, tokenized by llama.cpp with
    special tokens parsed, must give identical ids. Then the end-of-turn ids (the special
    token the HF template closes an assistant turn with, plus EOS) must be end-of-generation in
    llama.cpp, and a greedy generation in which the end-of-turn token is made the top choice
    after ``stop_after`` tokens must finish with ``finish_reason == "stop"`` after exactly
    ``stop_after`` tokens without printing the marker. Forcing the token is what makes the
    stop test meaningful for any model: a random test model would never pick it by itself.
    ``texts`` are plain strings whose tokenization with each side's own BOS/EOS rules must
    match too (digits, spaces and punctuation exercise the pre-tokenizer's split regex).
    """
    with LlamaProcess(gguf_path, n_ctx=n_ctx, purpose="checking the template of") as llm:
        return _check_template(llm, hf_tokenizer, conversations, texts, stop_after)


def _check_template(
    llm: LlamaProcess,
    hf_tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    texts: Sequence[str],
    stop_after: int,
) -> dict[str, Any]:
    rows = []
    for conv in conversations:
        hf_text, hf_ids = _hf_prompt_ids(hf_tokenizer, conv)
        text = llm.render_template(conv)  # the GGUF's own template, as llama-cpp-python does
        ids = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        rows.append(
            {
                "text_identical": text == hf_text,
                "ids_identical": ids == hf_ids,
                "hf_tokens": len(hf_ids),
                "gguf_tokens": len(ids),
                "first_difference": next(
                    (i for i, (a, b) in enumerate(zip(ids, hf_ids, strict=False)) if a != b),
                    None if len(ids) == len(hf_ids) else min(len(ids), len(hf_ids)),
                ),
            }
        )
    plain = []
    for text in texts:
        want = list(hf_tokenizer(text)["input_ids"])
        # HF splits out added special tokens even in plain text, so llama.cpp parses them too.
        got = list(llm.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        plain.append({"text": text, "ids_identical": got == want})
    stops = _hf_stop_ids(hf_tokenizer)
    eog = {int(t): llm.is_eog(int(t)) for t in stops}
    marker = next((t for t in stops if t != hf_tokenizer.eos_token_id), stops[0] if stops else None)
    probe: dict[str, Any] = {"end_of_turn_id": marker}
    if marker is not None and conversations:
        _, prompt = _hf_prompt_ids(hf_tokenizer, conversations[0])
        probe.update(_forced_stop_probe(llm, prompt, marker, stops, stop_after, hf_tokenizer))
    ids_ok = all(r["ids_identical"] for r in rows + plain)
    stop_ok = bool(eog) and all(eog.values()) and bool(probe.get("stopped_correctly"))
    return {
        "conversations": len(rows),
        "ids_identical": sum(r["ids_identical"] for r in rows),
        "text_identical": sum(r["text_identical"] for r in rows),
        "rows": rows,
        "texts": plain,
        "end_of_turn_is_eog": {str(k): v for k, v in eog.items()},
        "stop_probe": probe,
        "passed": ids_ok and stop_ok,
    }


def _forced_stop_probe(
    llm: LlamaProcess, prompt: list[int], marker: int, stops: list[int], k: int, tok: Any
) -> dict[str, Any]:
    """Greedy generation with every end-of-generation token banned for ``k`` tokens (so it
    cannot stop early by chance), then the end-of-turn marker forced."""
    banned = sorted(set(stops) | {marker} | set(llm.eog_tokens()))
    finish, n_out, text = llm.forced_stop(prompt, marker, banned, k)
    marker_text = tok.convert_ids_to_tokens(marker)
    return {
        "finish_reason": finish,
        "completion_tokens": n_out,
        "marker_in_text": marker_text in text,
        "stopped_correctly": finish == "stop" and n_out == k and marker_text not in text,
    }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def check_logits(
    hf_model: Any,
    gguf_path: str | Path,
    texts: Sequence[str] | Sequence[Sequence[int]],
    *,
    n_ctx: int = 1024,
    min_top1: float = 0.99,
    kv_f32: bool = False,
    n_threads: int | None = None,
    reference: dict[tuple[int, ...], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Next-token agreement of the GGUF (llama.cpp) with the Hugging Face model.

    Every position of every text is compared: top-1 agreement (share of positions whose
    argmax is the same), mean and max KL(HF || GGUF) in nats, the largest absolute logit
    difference, and the perplexity of the texts' own next tokens under each model. Both
    models see the same ids: strings are tokenized by llama.cpp (BOS added if the GGUF says
    so); tokenizer agreement is :func:`check_template`'s job. ``passed`` is top-1 agreement
    >= ``min_top1`` (use it for F32/F16; for quantized files read the numbers).
    ``reference`` is a cache of HF logits by ids, shared when several GGUFs are checked.
    """
    with LlamaProcess(
        gguf_path, n_ctx=n_ctx, logits_all=True, n_threads=n_threads, kv_f32=kv_f32,
        purpose="checking the logits of",
    ) as llm:  # fmt: skip
        return _check_logits(llm, hf_model, gguf_path, texts, n_ctx, min_top1, kv_f32, reference)


def _check_logits(
    llm: LlamaProcess,
    hf_model: Any,
    gguf_path: str | Path,
    texts: Sequence[str] | Sequence[Sequence[int]],
    n_ctx: int,
    min_top1: float,
    kv_f32: bool,
    reference: dict[tuple[int, ...], np.ndarray] | None,
) -> dict[str, Any]:
    import torch

    agree = total = 0
    kls: list[np.ndarray] = []
    nll_hf: list[np.ndarray] = []
    nll_gguf: list[np.ndarray] = []
    max_diff = max_logit = 0.0
    hf_model.eval()
    for item in texts:
        if isinstance(item, str):
            ids = list(llm.tokenize(item.encode("utf-8"), add_bos=True, special=False))
        else:
            ids = [int(t) for t in item]
        ids = ids[:n_ctx]
        if not ids:
            continue
        ours = llm.scores(ids).astype(np.float64)
        ref = reference.get(tuple(ids)) if reference is not None else None
        if ref is None:
            with torch.no_grad():
                ref = hf_model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
            if reference is not None:
                reference[tuple(ids)] = ref
        if ref.shape != ours.shape:
            raise SpecializeError(
                f"vocabulary sizes differ: HF {ref.shape[-1]}, GGUF {ours.shape[-1]}",
                path=gguf_path,
            )
        agree += int((ref.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
        lp, lq = _log_softmax(ref), _log_softmax(ours)
        kls.append((np.exp(lp) * (lp - lq)).sum(-1))
        # Held-out negative log-likelihood of each next token under both models.
        nxt = np.array(ids[1:])
        pos = np.arange(len(nxt))
        nll_hf.append(-lp[pos, nxt])
        nll_gguf.append(-lq[pos, nxt])
        max_diff = max(max_diff, float(np.abs(ref - ours).max()))
        max_logit = max(max_logit, float(np.abs(ref).max()))
    kl = np.concatenate(kls) if kls else np.zeros(0)
    top1 = agree / total if total else 0.0
    a = np.concatenate(nll_hf) if nll_hf else np.zeros(0)
    b = np.concatenate(nll_gguf) if nll_gguf else np.zeros(0)
    return {
        "perplexity_hf": float(np.exp(a.mean())) if a.size else float("nan"),
        "perplexity_gguf": float(np.exp(b.mean())) if b.size else float("nan"),
        "texts": len(texts),
        "positions": total,
        "top1_agreement": top1,
        "kl_mean": float(kl.mean()) if kl.size else 0.0,
        "kl_max": float(kl.max()) if kl.size else 0.0,
        "max_abs_logit_diff": max_diff,
        "max_abs_hf_logit": max_logit,
        "kv_cache": "f32" if kv_f32 else "f16",
        "min_top1": min_top1,
        "passed": total > 0 and top1 >= min_top1,
    }


def hf_greedy_answers(
    hf_model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[Message]] | Sequence[Sequence[int]],
    max_new_tokens: int = 32,
) -> list[dict[str, Any]]:
    """Greedy answers of the HF model: prompt ids (the tokenizer's chat template, generation
    prompt on; or given ids, to continue a document), answer ids without the stop token, and
    whether it stopped at end-of-turn.
    Computed once and compared with every GGUF by :func:`check_answers`."""
    import torch

    stops = _hf_stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
    hf_model.eval()
    out = []
    for conv in prompts:
        if conv and isinstance(conv[0], int):  # raw token ids: continue a document
            ids = [int(t) for t in conv]
        else:
            _, ids = _hf_prompt_ids(tokenizer, conv)
        with torch.no_grad():
            gen = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stops or None,
                pad_token_id=pad,
            )[0][len(ids) :].tolist()
        stopped = bool(gen) and gen[-1] in stops
        out.append({"prompt_ids": ids, "ids": gen[:-1] if stopped else gen, "stopped": stopped})
    return out


def check_answers(
    hf_model: Any,
    tokenizer: Any,
    gguf_path: str | Path,
    prompts: Sequence[Sequence[Message]],
    max_new_tokens: int = 32,
    *,
    n_ctx: int = 2048,
    kv_f32: bool = False,
    reference: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Greedy answers of the HF model and of llama.cpp on the same rendered prompts.

    Each conversation is rendered by the tokenizer's chat template (generation prompt on) and
    both engines decode greedily from the same ids, stopping at their end-of-turn tokens.
    ``reference`` (from :func:`hf_greedy_answers`) saves recomputing the HF side when several
    GGUFs are checked. Reports the share of answers whose token ids are identical (stop token
    excluded), and for the others the first position where they part. ``passed`` is True when
    all are identical; for quantized files it is a report, not a requirement.
    """
    if reference is None:
        reference = hf_greedy_answers(hf_model, tokenizer, prompts, max_new_tokens)
    purpose = "checking the answers of"
    with LlamaProcess(gguf_path, n_ctx=n_ctx, kv_f32=kv_f32, purpose=purpose) as llm:
        ours_all = [llm.greedy(ref["prompt_ids"], max_new_tokens) for ref in reference]
    rows = []
    for ref, (ours, stopped) in zip(reference, ours_all, strict=True):
        gen = ref["ids"]
        parts = next(
            (i for i, (a, b) in enumerate(zip(gen, ours, strict=False)) if a != b),
            None if len(gen) == len(ours) else min(len(gen), len(ours)),
        )
        rows.append(
            {
                "identical": gen == ours,
                "first_difference": parts,
                "hf_text": tokenizer.decode(gen),
                "gguf_text": tokenizer.decode(ours),
                "hf_stopped": ref["stopped"],
                "gguf_stopped": stopped,
            }
        )
    same = sum(r["identical"] for r in rows)
    return {
        "prompts": len(rows),
        "identical": same,
        "share_identical": same / len(rows) if rows else 0.0,
        "rows": rows,
        "passed": bool(rows) and same == len(rows),
    }
