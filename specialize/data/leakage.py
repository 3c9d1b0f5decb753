"""Find question-answer pairs that appear in more than one split.

A test question whose answer the model saw verbatim in training measures memory, not skill.
We compare every record against the records of the *other* splits on two normalised texts: the
question (all user turns) and the answer (all assistant turns). A pair is an *exact* duplicate
when both are equal after SQuAD-style normalisation, and a *near* duplicate when the Jaccard
similarity of their character 4-gram sets is at least the threshold for both. Character
shingles are robust to the small edits that make a copy look new (one word added or changed
in a short question keeps similarity near 0.85), while genuine paraphrases stay low (the
bundled example's paraphrase questions score at most 0.38 against the facts they reword).

Candidates come from an inverted index on answer words, so the check stays far below quadratic
on real datasets where most answers share no words.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from specialize.data.read import Record
from specialize.data.text import normalize_answer

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Leak:
    a_id: str
    a_split: str
    b_id: str
    b_split: str
    kind: str  # "exact" | "near"
    question_similarity: float
    answer_similarity: float


def _texts(rec: Record) -> tuple[str, str]:
    q = " ".join(m["content"] for m in rec["messages"] if m["role"] == "user")
    a = " ".join(m["content"] for m in rec["messages"] if m["role"] == "assistant")
    return normalize_answer(q), normalize_answer(a)


def _shingles(text: str, n: int = 4) -> frozenset[str]:
    padded = f" {text} "
    return frozenset(padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))


def word_shingles(text: str, n: int) -> frozenset[str]:
    """The set of ``n``-word runs of ``text`` (split on whitespace); a text shorter than ``n``
    words is one shingle (itself), so an empty text gives ``{""}``."""
    words = text.split()
    return frozenset(" ".join(words[k : k + n]) for k in range(max(1, len(words) - n + 1)))


def jaccard(a: AbstractSet[str], b: AbstractSet[str]) -> float:
    """``|a & b| / |a | b|``; two empty sets are equal (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def find_leaks(splits: dict[str, list[Record]], threshold: float = 0.8) -> list[Leak]:
    """Every exact or near-duplicate question-answer pair across different splits."""
    items: list[tuple[str, Record, str, str, frozenset[str], frozenset[str]]] = []
    for split, recs in splits.items():
        for r in recs:
            q, a = _texts(r)
            items.append((split, r, q, a, _shingles(q), _shingles(a)))
    index: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        for w in set(it[3].split()) or {""}:
            index[w].append(i)
    leaks: list[Leak] = []
    seen: set[tuple[int, int]] = set()
    for i, (split, rec, q, a, qs, as_) in enumerate(items):
        for w in set(a.split()) or {""}:
            for j in index[w]:
                if j <= i or (i, j) in seen:
                    continue
                seen.add((i, j))
                s2, rec2, q2, a2, qs2, as2 = items[j]
                if s2 == split:
                    continue
                if q == q2 and a == a2:
                    leaks.append(Leak(rec["id"], split, rec2["id"], s2, "exact", 1.0, 1.0))
                    continue
                asim = jaccard(as_, as2)
                if asim < threshold:
                    continue
                qsim = jaccard(qs, qs2)
                if qsim >= threshold:
                    leaks.append(
                        Leak(
                            rec["id"], split, rec2["id"], s2, "near", round(qsim, 3), round(asim, 3)
                        )
                    )
    return leaks


def leak_report(leaks: list[Leak]) -> dict[str, Any]:
    return {
        "exact": sum(1 for x in leaks if x.kind == "exact"),
        "near": sum(1 for x in leaks if x.kind == "near"),
        "pairs": [asdict(x) for x in leaks],
    }


def stable_hash(text: str) -> int:
    """A 61-bit hash that is the same in every process (str.__hash__ is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 3


class MinHash:
    """MinHash signatures: ``num_perm`` seeded hash functions ``(a * h + b) mod p`` over the
    :func:`stable_hash` of each shingle, so a signature is the same in every process.

    The fraction of equal positions in two signatures estimates the Jaccard similarity of the
    two shingle sets; equal bands of positions make the candidates of LSH banding."""

    PRIME = (1 << 61) - 1

    def __init__(self, num_perm: int = 64, seed: int = 0) -> None:
        import numpy as np

        if num_perm <= 0:
            raise ValueError("num_perm must be positive")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self._a = rng.integers(1, self.PRIME, num_perm, dtype=np.uint64)
        self._b = rng.integers(0, self.PRIME, num_perm, dtype=np.uint64)

    def signature(self, shingles: Iterable[str]) -> np.ndarray:
        """The ``num_perm`` minimum hash values (uint64) of a non-empty set of shingles."""
        import numpy as np

        h = np.array([stable_hash(x) for x in shingles], dtype=np.uint64)
        if h.size == 0:
            raise ValueError("a MinHash signature needs at least one shingle")
        return ((h[:, None] * self._a[None, :] + self._b[None, :]) % np.uint64(self.PRIME)).min(0)


def find_document_leaks(
    splits: dict[str, list[Record]], threshold: float = 0.8, seed: int = 0
) -> list[Leak]:
    """Exact and near-duplicate documents (``text``) across splits.

    Exact: equal after normalisation. Near: Jaccard of word 5-gram sets at least
    ``threshold``, with candidates found by MinHash (64 hashes, 16 bands of 4) so the check
    stays near-linear on hundreds of thousands of abstracts.
    """
    items = [(s, r, normalize_answer(r["text"])) for s, rs in splits.items() for r in rs]
    leaks: list[Leak] = []
    by_text: dict[str, int] = {}
    for i, (s, r, t) in enumerate(items):
        j = by_text.setdefault(t, i)
        if j != i and items[j][0] != s:
            leaks.append(Leak(items[j][1]["id"], items[j][0], r["id"], s, "exact", 1.0, 1.0))
    minhash = MinHash(64, seed)
    shingle_sets = []
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for i, (_, _, t) in enumerate(items):
        sh = word_shingles(t, 5)
        shingle_sets.append(sh)
        sig = minhash.signature(sh)
        for band in range(16):
            buckets[(band, sig[band * 4 : band * 4 + 4].tobytes())].append(i)
    seen: set[tuple[int, int]] = set()
    exact = {(x.a_id, x.b_id) for x in leaks}
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if (i, j) in seen or items[i][0] == items[j][0]:
                    continue
                seen.add((i, j))
                if (items[i][1]["id"], items[j][1]["id"]) in exact:
                    continue
                sim = jaccard(shingle_sets[i], shingle_sets[j])
                if sim >= threshold and items[i][2] != items[j][2]:
                    leaks.append(
                        Leak(
                            items[i][1]["id"],
                            items[i][0],
                            items[j][1]["id"],
                            items[j][0],
                            "near",
                            round(sim, 3),
                            round(sim, 3),
                        )
                    )
    return leaks
