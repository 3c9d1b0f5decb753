"""Embedding quality of a causal LM: similarity spread and title-to-abstract retrieval.

Continued pre-training on a domain (e.g. arXiv astronomy abstracts) should lower perplexity,
but a lower loss alone does not show that the model *represents* domain texts better. A second,
independent view is the geometry of its text embeddings:

- **Similarity spread** (:func:`similarity_stats`): if the cosine similarity between unrelated
  abstracts is close to 1 for every pair (high *anisotropy*), the embeddings sit in a narrow
  cone and cannot tell texts apart, however low the loss.
- **Retrieval** (:func:`retrieval_recall`): a paper's title should be closer to its own
  abstract than to any other. Recall@k and mean reciprocal rank measure that directly, and the
  per-item ranks allow a paired base-vs-tuned comparison (:func:`compare_embeddings`).

A text's embedding is the mean of the model's last hidden layer over the text's tokens,
L2-normalised (:func:`mean_pooled_embeddings`). Decoder-only LMs are not trained as sentence
encoders, so absolute numbers are modest; what matters is the change between base and tuned
model on the same items.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from specialize.errors import SpecializeError
from specialize.evaluate.compare import paired_bootstrap

HIST_BINS = 20
_QUERY_CHUNK = 1024  # query rows scored at once, so retrieval memory stays O(chunk x docs)


def _check_texts(texts: Sequence[str], what: str = "text") -> None:
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise SpecializeError(
                f"{what} {i} is empty: an empty text has no tokens to average into an embedding"
            )


def _accepts(model: Any, name: str) -> bool:
    """Whether the (possibly PEFT-wrapped) model's own forward takes keyword ``name``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


# long: half of it is the docstring (what is pooled and why); the code is one batch loop.
def mean_pooled_embeddings(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    batch_size: int = 16,
    max_len: int = 512,
    progress: bool = True,
    desc: str = "embed",
) -> torch.Tensor:
    """``[len(texts), hidden]`` float32 CPU tensor of unit-length mean-pooled embeddings.

    Each text is tokenized with the tokenizer's usual special tokens (a model trained with a
    BOS token behaves oddly without one) and **truncated to its first ``max_len`` tokens**
    (special tokens included), so only the beginning of a long document counts. The model's
    last hidden layer (``hidden_states[-1]``, computed with ``output_hidden_states=True``) is
    averaged over the text's real tokens: padding is excluded, and so are the special tokens
    the tokenizer itself added (BOS/EOS). Those are the same token at the same position in
    every text, so their states are nearly identical across texts; averaging them in would
    pull every embedding towards one shared vector and inflate the similarity of unrelated
    texts. (Should a text consist of added special tokens only, they are used after all.)

    Batching does not change the result beyond float rounding: texts are padded on the right
    with an attention mask, so under causal attention a real token never sees a pad token.
    Texts are sorted by length before batching (less padding, so less wasted compute; longest
    first, so an out-of-memory error shows up at once) and returned in input order.

    Works for plain Hugging Face causal LMs and PEFT-wrapped ones (LoRA layers are part of the
    forward pass). The model is put in eval mode (no dropout) for the call and its previous
    mode restored afterwards. Raises :class:`SpecializeError` naming the index of an empty
    (or whitespace-only) text.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    _check_texts(texts)
    from tqdm.auto import tqdm

    n = len(texts)
    hidden_size = int(model.get_input_embeddings().weight.shape[1])
    if n == 0:
        return torch.zeros(0, hidden_size)
    enc = tokenizer(
        list(texts), truncation=True, max_length=max_len, return_special_tokens_mask=True
    )
    ids: list[list[int]] = enc["input_ids"]
    special: list[list[int]] = enc["special_tokens_mask"]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    device = model.get_input_embeddings().weight.device
    extra: dict[str, Any] = {"output_hidden_states": True, "return_dict": True}
    if _accepts(model, "logits_to_keep"):
        extra["logits_to_keep"] = 1  # we only need hidden states; skip [batch, len, vocab]
    if _accepts(model, "use_cache"):
        extra["use_cache"] = False

    order = sorted(range(n), key=lambda i: -len(ids[i]))
    out = torch.empty(n, hidden_size, dtype=torch.float32)
    was_training = model.training
    model.eval()
    bar = tqdm(total=n, desc=desc, unit="text", disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = order[start : start + batch_size]
                input_ids, attention, pool = _batch(
                    [ids[i] for i in chunk], [special[i] for i in chunk], pad_id
                )
                result = model(
                    input_ids=input_ids.to(device), attention_mask=attention.to(device), **extra
                )
                states = result.hidden_states[-1].float().cpu()
                summed = (states * pool.unsqueeze(-1)).sum(dim=1)
                mean = summed / pool.sum(dim=1, keepdim=True)
                out[chunk] = torch.nn.functional.normalize(mean, dim=-1)
                bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return out


def _batch(
    ids: list[list[int]], special: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, their attention mask, and the pooling mask: real tokens that the
    tokenizer did not add (all real tokens when it added every one)."""
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros(len(ids), width, dtype=torch.long)
    pool = torch.zeros(len(ids), width, dtype=torch.float32)
    for row, (x, sp) in enumerate(zip(ids, special, strict=True)):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        attention[row, : len(x)] = 1
        keep = torch.tensor(sp, dtype=torch.bool).logical_not()
        if not keep.any():
            keep = torch.ones(len(x), dtype=torch.bool)
        pool[row, : len(x)] = keep.float()
    return input_ids, attention, pool


def _unit(emb: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(emb, dtype=torch.float32)
    if t.ndim != 2:
        raise ValueError(f"embeddings must be a 2-d [n, dim] array, got shape {tuple(t.shape)}")
    return torch.nn.functional.normalize(t, dim=-1)


def similarity_stats(emb: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Distribution of cosine similarity between *different* texts (each pair counted once).

    Returns ``n``, ``pairs``, ``mean``, ``std``, ``p5``, ``p50``, ``p95``, ``anisotropy`` and a
    20-bin histogram (``bins``: 21 edges spanning the observed range, ``counts``: 20 pair
    counts). The self-similarity diagonal (always 1) is left out: it says nothing about the
    model and would bias every statistic upwards.

    ``anisotropy`` is the mean off-diagonal cosine (the expected similarity of two random
    texts). Language-model embeddings tend to collapse into a narrow cone; then every pair
    looks similar (mean near 1), and a retrieval "hit" can rest on differences in the third
    decimal. A tuned model whose anisotropy rises has squeezed its texts together even if its
    perplexity fell. The value is reported under its own name, equal to ``mean``, so reports
    can cite it directly.

    Rows are L2-normalised here, so raw vectors may be passed. Costs O(n²) memory: with tens
    of thousands of texts, pass a random subset.
    """
    unit = _unit(emb)
    n = unit.shape[0]
    if n < 2:
        raise SpecializeError(f"similarity needs at least 2 texts, got {n}")
    sims = unit @ unit.T
    iu = torch.triu_indices(n, n, offset=1)
    vals = sims[iu[0], iu[1]].double().numpy()
    del sims
    p5, p50, p95 = np.percentile(vals, [5, 50, 95])
    counts, edges = np.histogram(vals, bins=HIST_BINS)
    mean = float(vals.mean())
    return {
        "n": int(n),
        "pairs": int(vals.size),
        "mean": mean,
        "std": float(vals.std()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
        "anisotropy": mean,
        "bins": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
    }


def retrieval_recall(
    queries: torch.Tensor | np.ndarray,
    docs: torch.Tensor | np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Recall@k and mean reciprocal rank when query ``i``'s correct document is ``docs[i]``.

    Documents are ranked by cosine similarity (rows are L2-normalised here). ``docs`` may have
    more rows than ``queries``: the extra rows are distractors. The rank of the correct
    document is ``1 + (number of OTHER documents at least as similar)``, so **ties count
    against the model**: a model that maps everything to the same vector ranks every correct
    document last, not first; an optimistic tie-break would reward exactly that collapse.

    Returns ``n``, ``ks``, ``recall@k`` for each k (fraction of queries whose rank <= k), ``mrr``
    (mean of 1/rank) and ``ranks`` (per query, 1-based, for paired comparisons).
    """
    q, d = _unit(queries), _unit(docs)
    n = q.shape[0]
    if d.shape[0] < n:
        raise ValueError(f"{n} queries but only {d.shape[0]} documents (doc i answers query i)")
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != document dim {d.shape[1]}")
    if n == 0:
        raise SpecializeError("retrieval needs at least 1 query, got 0")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be at least 1, got {ks}")
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, _QUERY_CHUNK):
        stop = min(start + _QUERY_CHUNK, n)
        sims = q[start:stop] @ d.T
        rows = torch.arange(stop - start)
        correct = sims[rows, torch.arange(start, stop)].unsqueeze(1)
        ranks[start:stop] = (sims >= correct).sum(dim=1)  # counts the correct doc itself too
    rank_list = [int(r) for r in ranks]
    out: dict[str, Any] = {"n": int(n), "ks": list(ks)}
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([r <= k for r in rank_list]))
    out["mrr"] = float(np.mean([1.0 / r for r in rank_list]))
    out["ranks"] = rank_list
    return out


def evaluate_embeddings(
    model: Any,
    tokenizer: Any,
    items: list[tuple[str, str, str]],
    batch_size: int = 16,
    progress: bool = True,
    max_len: int = 512,
) -> dict[str, Any]:
    """Embed ``(id, title, abstract)`` items; similarity of abstracts and title→abstract recall.

    Returns ``{"n", "ids", "abstracts": similarity_stats(abstracts), "title_to_abstract":
    retrieval_recall(titles, abstracts) without ranks, "ranks"}``: ``ranks[i]`` is the rank of
    item i's own abstract among all abstracts for its title (1 = best). ``ids`` and ``ranks``
    let :func:`compare_embeddings` pair the same items across two models.
    """
    if len(items) < 2:
        raise SpecializeError(f"embedding evaluation needs at least 2 items, got {len(items)}")
    ids = [str(item[0]) for item in items]
    seen: set[str] = set()
    for item_id, title, abstract in items:
        if item_id in seen:
            raise SpecializeError(f"item id '{item_id}' appears more than once")
        seen.add(item_id)
        for what, text in (("title", title), ("abstract", abstract)):
            if not isinstance(text, str) or not text.strip():
                raise SpecializeError(f"item '{item_id}' has an empty {what}")
    kw = {"batch_size": batch_size, "max_len": max_len, "progress": progress}
    abstracts = mean_pooled_embeddings(
        model, tokenizer, [a for _, _, a in items], desc="embed abstracts", **kw
    )
    titles = mean_pooled_embeddings(
        model, tokenizer, [t for _, t, _ in items], desc="embed titles", **kw
    )
    retrieval = retrieval_recall(titles, abstracts)
    ranks = retrieval.pop("ranks")
    return {
        "n": len(items),
        "ids": ids,
        "abstracts": similarity_stats(abstracts),
        "title_to_abstract": retrieval,
        "ranks": ranks,
    }


def compare_embeddings(
    base: dict[str, Any], tuned: dict[str, Any], samples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Tuned − base for recall@k and MRR with paired-bootstrap 95% CIs, and similarity shifts.

    Both results must come from :func:`evaluate_embeddings` on the same items in the same
    order (checked through ``ids``): the interval resamples *items*, keeping each item's base
    and tuned outcome together (per item: hit@k = rank <= k, reciprocal rank = 1/rank).

    ``deltas[metric]`` holds ``delta, ci_low, ci_high, n`` plus the ``base`` and ``tuned``
    values; ``similarity[stat]`` holds ``base, tuned, delta`` for the abstract similarity mean,
    std and anisotropy (no interval: pairs of texts are not independent samples).
    """
    if base.get("ids") != tuned.get("ids") or len(base["ranks"]) != len(tuned["ranks"]):
        raise SpecializeError(
            "base and tuned embedding results cover different items; "
            "evaluate both models on the same items in the same order"
        )
    ks = [int(k) for k in base["title_to_abstract"].get("ks", (1, 5, 10))]
    rb = np.asarray(base["ranks"], float)
    rt = np.asarray(tuned["ranks"], float)
    per_item: dict[str, tuple[np.ndarray, np.ndarray]] = {
        f"recall@{k}": ((rb <= k).astype(float), (rt <= k).astype(float)) for k in ks
    }
    per_item["mrr"] = (1.0 / rb, 1.0 / rt)
    deltas: dict[str, dict[str, float]] = {}
    for name, (a, b) in per_item.items():
        d = paired_bootstrap(a, b, weights=None, samples=samples, seed=seed)
        deltas[name] = {**d, "base": float(a.mean()), "tuned": float(b.mean())}
    similarity = {
        stat: {
            "base": float(base["abstracts"][stat]),
            "tuned": float(tuned["abstracts"][stat]),
            "delta": float(tuned["abstracts"][stat]) - float(base["abstracts"][stat]),
        }
        for stat in ("mean", "std", "anisotropy")
    }
    return {"n": len(rb), "deltas": deltas, "similarity": similarity}


__all__ = [
    "compare_embeddings",
    "evaluate_embeddings",
    "mean_pooled_embeddings",
    "retrieval_recall",
    "similarity_stats",
]
