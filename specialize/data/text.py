"""Text normalisation shared by the leakage check (data) and the answer metrics (evaluate).

It lives in ``data`` because the leakage check, which runs before any model loads, needs it,
and ``data`` sits below ``evaluate``: one definition, so "equal after normalisation" means the
same thing when splits are checked for duplicates and when answers are scored.
"""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())
