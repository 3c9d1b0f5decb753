"""Quality checks on synthetic records: grounding, refusals, copies, lengths, near-duplicates.

A small teacher invents facts, refuses, copies its input or says the same thing twice. These
checks are cheap (no model) and explainable (each removal is named and counted in
``synth_stats.json``):

- :func:`support`: the share of a claim's content words (:func:`content_words`, compared after
  a light suffix fold so "rivers" matches "river") that occur in the passage. A claim with no
  content words at all (``"It is."``) has support 1.0: there is nothing to contradict, and an
  answer with nothing in it is the ``empty`` filter's business, not grounding's.
- :func:`is_refusal`: refusals and chat boilerplate ("As an AI...", "I'm sorry", "Here is
  the summary:", "Sure, ...").
- :func:`is_copy`: a rephrase that is mostly the passage again (word 3-shingle Jaccard).
- :class:`Deduper`: exact duplicates (same text after normalisation) and near duplicates
  (MinHash over word 3-shingles with LSH banding, deterministic in every process).

Which check applies to which task is :meth:`specialize.data.tasks.Task.check`'s business.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import TYPE_CHECKING

from specialize.data.leakage import MinHash, jaccard, word_shingles
from specialize.data.text import normalize_answer

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "STOP_WORDS",
    "Deduper",
    "content_words",
    "is_copy",
    "is_refusal",
    "mentions",
    "support",
]

# Function words and the words every question or answer uses; without them "support" measures
# the passage's facts, not its grammar. Apostrophes are dropped before matching ("don't" ->
# "dont"), so contractions are listed without them.
STOP_WORDS = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each either else
    etc even ever every few for from further had has have having he her here hers herself him
    himself his how however i if in into is it its itself just let like may me might more most
    much must my myself neither no nor not now of off on once one only or other our ours
    ourselves out over own per quite rather same shall she should so some such than that the
    their theirs them themselves then there these they this those through thus to too under
    until up upon us very via was we were what when where whether which while who whom whose
    why will with within without would yet you your yours yourself yourselves
    cant couldnt didnt doesnt dont hadnt hasnt havent id ill im isnt ive lets shes shouldnt
    thats theres theyre theyve wasnt were weve werent whats wont wouldnt youre youve
    s t d ll m re ve
    """.split()
)

_WORD = re.compile(r"\w+")
_APOSTROPHES = re.compile(r"['\u2019\u02bc]")


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry content, in order: lowercased, split at anything that
    is not a letter or digit, apostrophes dropped, stop words and single letters removed
    (single digits stay: "3" is a fact)."""
    words = _WORD.findall(_APOSTROPHES.sub("", text.lower()).replace("_", " "))
    return [w for w in words if w not in STOP_WORDS and (len(w) > 1 or w.isdigit())]


def _fold(word: str) -> str:
    """A light suffix fold (plural and -ing/-ed forms), applied to both sides of a
    comparison; not a stemmer, just enough that "rivers" supports "river"."""
    if len(word) <= 4 or word.isdigit():
        return word
    for suffix, repl in (
        ("ies", "y"),
        ("sses", "ss"),
        ("es", ""),
        ("s", ""),
        ("ing", ""),
        ("ed", ""),
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith("ss"):
                return word
            return word[: -len(suffix)] + repl
    return word


def _folded(text: str) -> set[str]:
    return {_fold(w) for w in content_words(text)}


def support(claim: str, passage: str) -> float:
    """Share of ``claim``'s content words (counted once each) found in ``passage``.

    1.0 when the claim has no content words (see the module docstring)."""
    words = _folded(claim)
    if not words:
        return 1.0
    return len(words & _folded(passage)) / len(words)


def mentions(text: str, passage_a: str, passage_b: str) -> bool:
    """Whether ``text`` names something from each of two passages.

    Words the two passages share do not count for either (a comparison that only repeats
    their common topic says nothing about how they differ); when one passage has no words of
    its own, its shared words count instead."""
    said = _folded(text)
    a, b = _folded(passage_a), _folded(passage_b)
    own_a, own_b = (a - b) or a, (b - a) or b
    return bool(said & own_a) and bool(said & own_b)


# Refusals and chat boilerplate. Phrases an AI says about itself are looked for anywhere;
# phrases that a genuine text may contain ("here is", "I'm sorry" in dialogue) only at the
# start of the answer, where they are boilerplate.
_REFUSAL_ANYWHERE = re.compile(
    r"\b(as an ai\b|as an? (?:large )?language model|i am an ai\b|i'm an ai\b|"
    r"an ai (?:language )?model|i apologi[sz]e,? but)"
)
_REFUSAL_START = re.compile(
    r"^\W*(i cannot|i can't|i'm sorry|i am sorry|sorry[,.!]|unfortunately,|i apologi[sz]e|"
    r"i am unable|i'm unable|i am not able|i'm not able|i do not have|i don't have|"
    r"the passage does not (?:provide|contain|mention|say)|"
    r"here is|here are|here's|sure\b|certainly\b|of course\b|absolutely\b|okay[,!]|ok[,!]|"
    r"great question|as requested|below is|the following is)"
)


def is_refusal(text: str) -> bool:
    """Whether ``text`` is a refusal or chat boilerplate rather than an answer."""
    t = " ".join(_APOSTROPHES.sub("'", text).lower().split())
    return bool(_REFUSAL_ANYWHERE.search(t) or _REFUSAL_START.search(t))


def _shingles(text: str, n: int = 3) -> frozenset[str]:
    return word_shingles(normalize_answer(text), n)


def is_copy(text: str, passage: str, threshold: float = 0.9) -> bool:
    """Whether ``text`` is (almost) ``passage`` again: Jaccard similarity of their word
    3-shingle sets (after SQuAD normalisation) at least ``threshold``."""
    return jaccard(_shingles(text), _shingles(passage)) >= threshold


def _bands_for(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with ``bands * rows == num_perm`` whose LSH S-curve midpoint
    ``(1/bands) ** (1/rows)`` is closest below ``threshold`` (so pairs at the threshold are
    candidates with high probability; the signature comparison then decides)."""
    options = [(b, num_perm // b) for b in range(1, num_perm + 1) if num_perm % b == 0]
    below = [(b, r) for b, r in options if (1 / b) ** (1 / r) <= threshold - 0.05]
    pool = below or options
    return min(pool, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - (threshold - 0.05)))


class Deduper:
    """Finds records already seen: ``add(text)`` returns None (new, now remembered),
    ``"exact_duplicate"`` or ``"near_duplicate"``.

    Exact: the same text after SQuAD normalisation (lowercase, no punctuation or articles,
    single spaces), by a hash. Near: the MinHash estimate of the word 3-shingle Jaccard
    similarity with an earlier kept text at least ``threshold``; candidates come from LSH
    banding (``num_perm`` hashes in bands chosen for the threshold), so ``add`` costs about
    the same whatever the number of texts seen. Deterministic: the same texts in the same
    order give the same answers in every process. Removed texts are not remembered (a third
    copy is compared with the kept first one)."""

    def __init__(self, threshold: float = 0.9, num_perm: int = 128, seed: int = 0) -> None:
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        self.threshold = threshold
        self._minhash = MinHash(num_perm, seed)
        self._bands, self._rows = _bands_for(threshold, num_perm)
        self._exact: set[bytes] = set()
        self._signatures: list[np.ndarray] = []
        self._buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)

    def __len__(self) -> int:
        """Texts kept so far."""
        return len(self._exact)

    def add(self, text: str) -> str | None:
        norm = normalize_answer(text)
        key = hashlib.blake2b(norm.encode(), digest_size=16).digest()
        if key in self._exact:
            return "exact_duplicate"
        sig = self._minhash.signature(word_shingles(norm, 3))
        bands = [
            (band, sig[band * self._rows : (band + 1) * self._rows].tobytes())
            for band in range(self._bands)
        ]
        seen: set[int] = set()
        for bucket in bands:
            for j in self._buckets.get(bucket, ()):
                if j in seen:
                    continue
                seen.add(j)
                if float((self._signatures[j] == sig).mean()) >= self.threshold:
                    return "near_duplicate"
        index = len(self._signatures)
        self._signatures.append(sig)
        self._exact.add(key)
        for bucket in bands:
            self._buckets[bucket].append(index)
        return None
