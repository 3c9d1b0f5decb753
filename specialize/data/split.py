"""Deterministic train / validation / test splits.

Assignment, strongest first:

1. a record's own split field (``split.field``, e.g. ``"split": "test"``);
2. ``pin_referenced``: a record whose id another record names in a given field (e.g. the fact
   that a test question paraphrases, via ``paraphrase_of``) goes to the pinned split;
3. the first matching rule (``where`` on metadata) with a fixed split or hashed fractions;
4. otherwise hashed fractions (``validation`` and ``test``, the rest train).

Hashes are ``sha256(seed:group)`` where group is the ``group_by`` value (e.g. ``chain_id``) or
the record id, so a record's split never depends on file order or on the other records, and
every record of a multi-hop chain lands in the same split (the strongest member decides).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from specialize.config import SplitConfig, SplitFractions
from specialize.data.read import Record
from specialize.errors import SpecializeError

SPLITS = ("train", "validation", "test")


def split_hash(seed: int, key: str) -> float:
    """Uniform number in [0, 1) from (seed, key): the same on every machine and run."""
    return _unit(seed, key)


def _unit(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _by_fraction(u: float, train: float, validation: float) -> str:
    if u < train:
        return "train"
    if u < train + validation:
        return "validation"
    return "test"


def _matches(rec: Record, where: dict[str, Any]) -> bool:
    for key, want in where.items():
        have = rec.get(key)
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def assign_splits(records: list[Record], cfg: SplitConfig) -> dict[str, list[Record]]:
    """Split ``records``; returns ``{"train": [...], "validation": [...], "test": [...]}``."""
    ids = {r["id"] for r in records}
    pinned: dict[str, str] = {}
    for fld, split in cfg.pin_referenced.items():
        for r in records:
            ref = r.get(fld)
            # One id, or a list of ids (a question may paraphrase several facts).
            refs = ref if isinstance(ref, list) else [] if ref is None else [ref]
            for one in refs:
                if not isinstance(one, str | int) or isinstance(one, bool):
                    raise SpecializeError(
                        f"record '{r['id']}' has a {type(one).__name__} in '{fld}'; expected a "
                        "record id or a list of record ids",
                        field=fld,
                    )
                if str(one) not in ids:
                    raise SpecializeError(
                        f"record '{r['id']}' names '{one}' in '{fld}', but no record has that id",
                        field=fld,
                    )
                pinned[str(one)] = split

    def group_key(r: Record) -> str:
        if cfg.group_by and r.get(cfg.group_by) is not None:
            return f"{cfg.group_by}={r[cfg.group_by]}"
        return f"id={r['id']}"

    decided: list[tuple[int, str]] = []  # (strength, split) per record
    for r in records:
        own = r.get(cfg.field)
        if own is not None:
            if own not in SPLITS:
                raise SpecializeError(
                    f"record '{r['id']}' has {cfg.field}='{own}' (expected one of "
                    f"{', '.join(SPLITS)})",
                    field=cfg.field,
                )
            decided.append((3, own))
            continue
        if r["id"] in pinned:
            decided.append((2, pinned[r["id"]]))
            continue
        u = _unit(cfg.seed, group_key(r))
        for rule in cfg.rules:
            if _matches(r, rule.where):
                if rule.split is not None:
                    decided.append((1, rule.split))
                else:
                    f: SplitFractions = rule.fractions  # type: ignore[assignment]
                    decided.append((1, _by_fraction(u, f.train, f.validation)))
                break
        else:
            train = 1.0 - cfg.validation - cfg.test
            decided.append((0, _by_fraction(u, train, cfg.validation)))

    # A group follows its strongest member so chains are never split.
    best: dict[str, tuple[int, int, str]] = {}
    for i, (r, (strength, split)) in enumerate(zip(records, decided, strict=True)):
        key = group_key(r)
        if key not in best or strength > best[key][0]:
            best[key] = (strength, -i, split)
    out: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        out[best[group_key(r)][2]].append(r)
    return {s: out.get(s, []) for s in SPLITS}
