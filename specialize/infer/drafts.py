"""Draft tokens for speculative decoding, with no draft model: the prompt and the grammar.

Why: a small model on a CPU is bound by reading its weights, so a decoding step that feeds a
row five tokens costs little more than one that feeds it one. If we can guess the next few
tokens of a row, one forward pass checks all the guesses at once, and every guess the model
would have chosen anyway is a decoding step saved. Greedy verification keeps exactly the
tokens the model would pick one at a time (the first disagreement is replaced by the model's
own choice), so the answers do not change, only the number of steps.

Two sources of guesses cost nothing to run:

- **the prompt** (prompt-lookup decoding): synthetic-data tasks, extraction and question
  answering copy spans of their passage (a bullet restating a sentence, a triplet's subject,
  an answer quoted from the text). When the last few tokens of a row occurred before, in its
  prompt or its own answer, the tokens that followed them there are the guess;
- **the grammar**: under a JSON schema, after ``"question"`` only ``": "`` can follow; the
  constraint library names such forced tokens (``compute_ff_tokens``).
"""

from __future__ import annotations

NGRAMS = (3, 2)  # match lengths tried, longest first: a 1-token match guesses too often wrong


class PromptLookup:
    """An n-gram index over one row's tokens (its prompt, then its answer as it grows).

    Each n-gram maps to the position just after its latest occurrence that has a token after
    it, so the row's current suffix never matches itself."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        seq, index = self.tokens, self._index
        for t in tokens:
            end = len(seq)
            for n in NGRAMS:
                if end >= n:
                    index[tuple(seq[end - n : end])] = end
            seq.append(t)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest recent match of the row's suffix."""
        seq = self.tokens
        for n in NGRAMS:
            if len(seq) < n:
                continue
            at = self._index.get(tuple(seq[-n:]))
            if at is not None:
                return seq[at : at + k]
        return []
