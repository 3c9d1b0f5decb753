"""Answer metrics, as plain functions on strings and numbers.

Exact match and token F1 follow the official SQuAD v1.1 evaluation script: lower-case, strip
punctuation, drop the articles a/an/the, collapse whitespace; F1 over the bag of remaining
tokens; the score against several references is the maximum over them.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over(metric, prediction: str, references: Sequence[str]) -> float:
    """SQuAD's metric_max_over_ground_truths."""
    return max(metric(prediction, ref) for ref in references)


def perplexity(loss_sum: float, n_tokens: int) -> float:
    """exp of the token-weighted mean loss; inf when there are no tokens."""
    return math.exp(loss_sum / n_tokens) if n_tokens else math.inf
