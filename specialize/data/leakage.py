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

from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from specialize.data.read import Record
from specialize.evaluate.metrics import normalize_answer


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


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
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
                asim = _jaccard(as_, as2)
                if asim < threshold:
                    continue
                qsim = _jaccard(qs, qs2)
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
