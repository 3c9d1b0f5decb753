"""The data stage: read, split, leak-check and (with a tokenizer) render and length-check.

Everything here runs before a model loads, so a bad file, an empty split, leaked test
questions or an over-long record stop a run in its first seconds. The result is one
:class:`PreparedData`, which ``specialize run`` writes to ``data/`` and trains and evaluates
from, and which ``specialize check`` summarises.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data.batches import Example, pack, text_examples, to_examples
from specialize.data.leakage import find_document_leaks, find_leaks, leak_report
from specialize.data.read import ReadStats, Record, read_documents, read_records
from specialize.data.split import assign_splits, split_hash
from specialize.errors import SpecializeError
from specialize.models.chat import check_format


@dataclass
class PreparedData:
    """A run's data after the data stage.

    ``splits`` maps train/validation/test to records; ``leakage`` is the leak report written
    to ``data/leakage.json``; ``unused_train_records`` counts training records left out by
    ``data.max_train_records``. With a tokenizer, ``examples`` holds every split rendered
    (token ids and training labels) and ``length_counts`` what the length limit did per split.
    """

    path: Path
    records: list[Record]
    splits: dict[str, list[Record]]
    read_stats: ReadStats
    leakage: dict[str, Any]
    unused_train_records: int = 0
    examples: dict[str, list[Example]] | None = None
    length_counts: dict[str, dict[str, int]] | None = None

    @property
    def eval_split(self) -> str:
        """The split evaluation uses: test, or validation when the test split is empty."""
        return "test" if self.splits["test"] else "validation"

    def eval_records(self, limit: int | None = None) -> list[Record]:
        """The evaluation split's records, the first ``limit`` of them when given."""
        records = self.splits[self.eval_split]
        return records[:limit] if limit else records

    def rendered(self) -> dict[str, list[Example]]:
        """The rendered examples (the data was prepared with a tokenizer)."""
        if self.examples is None:
            raise ValueError("the data was prepared without a tokenizer: no examples")
        return self.examples

    def stats(self, cfg: RunConfig) -> dict[str, Any]:
        """``data/stats.json``: sources, split sizes, leakage, breakdowns and token counts."""
        splits = self.splits
        stats: dict[str, Any] = {
            "source": str(self.path),
            "read": self.read_stats.as_dict(),
            "records": len(self.records),
            "splits": {k: len(v) for k, v in splits.items()},
            "unused_train_records": self.unused_train_records,
            "split_rule": cfg.data.split.model_dump(mode="json"),
            "leakage": {
                "exact": self.leakage["exact"],
                "near": self.leakage["near"],
                "threshold": cfg.data.leakage.threshold,
            },
        }
        for field in ("kind", "difficulty", "topic"):
            if any(field in r for r in self.records):
                stats[f"by_{field}"] = {s: _count(recs, field) for s, recs in splits.items()}
        if self.examples is not None:
            stats["tokens"] = {
                s: {
                    "examples": len(ex),
                    "tokens": sum(len(e) for e in ex),
                    "target_tokens": sum(e.n_target for e in ex),
                    "max_len": max((len(e) for e in ex), default=0),
                }
                for s, ex in self.examples.items()
            }
            stats["overlength"] = self.length_counts
        return stats


def prepare_data(
    cfg: RunConfig, tokenizer: Any | None = None, records_path: Path | None = None
) -> PreparedData:
    """Read, split and leak-check the data; with a tokenizer, also render and length-check.

    ``records_path`` replaces ``data.path``: the dataset the synth stage generated."""
    path = records_path or cfg.resolve(cfg.data.path)
    cols = cfg.data.columns
    if cfg.mode == "cpt":
        records, stats = read_documents(path, cols.text, cols.id)
    else:
        records, stats = read_records(
            path, cfg.data.format, cols.model_dump(), cfg.data.system_prompt
        )
    splits = assign_splits(records, cfg.data.split)
    unused = _cap_train(cfg, splits)
    if not splits["train"]:
        raise SpecializeError("the split rules leave no training records", field="data.split")
    out = PreparedData(path, records, splits, stats, _leak_check(cfg, splits, path), unused)
    if tokenizer is not None:
        out.examples, out.length_counts = _render(cfg, tokenizer, records, splits, path)
    return out


def _cap_train(cfg: RunConfig, splits: dict[str, list[Record]]) -> int:
    """Keep ``data.max_train_records`` training records (a seeded hash order); how many went."""
    cap = cfg.data.max_train_records
    if not cap or len(splits["train"]) <= cap:
        return 0
    ranked = sorted(splits["train"], key=lambda r: split_hash(cfg.data.split.seed, r["id"]))
    keep = {r["id"] for r in ranked[:cap]}
    unused = len(splits["train"]) - len(keep)
    splits["train"] = [r for r in splits["train"] if r["id"] in keep]
    return unused


def _leak_check(cfg: RunConfig, splits: dict[str, list[Record]], path: Path) -> dict[str, Any]:
    """The leak report; leaks are an error unless ``data.leakage.fail`` is false."""
    if cfg.mode == "cpt":
        leaks = find_document_leaks(splits, cfg.data.leakage.threshold)
    else:
        leaks = find_leaks(splits, cfg.data.leakage.threshold)
    report = leak_report(leaks)
    if leaks and cfg.data.leakage.fail:
        first = leaks[0]
        what = "documents" if cfg.mode == "cpt" else "question-answer pairs"
        raise SpecializeError(
            f"{report['exact']} exact and {report['near']} near-duplicate {what} "
            f"across splits, e.g. '{first.a_id}' ({first.a_split}) ~ '{first.b_id}' "
            f"({first.b_split}); fix the data or set data.leakage.fail: false",
            path=path,
            field="data.leakage",
        )
    return report


def _render(
    cfg: RunConfig,
    tokenizer: Any,
    records: list[Record],
    splits: dict[str, list[Record]],
    path: Path,
) -> tuple[dict[str, list[Example]], dict[str, dict[str, int]]]:
    """Every split as examples, and what the length limit did to each."""
    examples, counts = {}, {}
    if cfg.mode == "cpt":
        if tokenizer.eos_token_id is None:
            raise SpecializeError(
                "mode cpt joins documents with EOS, but the tokenizer has none", field="model.base"
            )
        for name, recs in splits.items():
            docs = [
                (r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in recs
            ]
            examples[name] = text_examples(docs, tokenizer.eos_token_id, cfg.chat.max_seq_len)
            counts[name] = {
                "documents": len(docs),
                "split_into_chunks": sum(1 for e in examples[name] if not e.id.endswith("#0")),
            }
        return examples, counts
    fmt = cfg.chat.format
    check_format(tokenizer, fmt, [r["messages"] for r in records], where=str(path))
    for name, recs in splits.items():
        examples[name], counts[name] = to_examples(
            recs, tokenizer, fmt, cfg.chat.max_seq_len, cfg.chat.overlength, str(path)
        )
    return examples, counts


def training_rows(cfg: RunConfig, examples: list[Example]) -> list[Example]:
    """What the optimizer sees: packed rows (cpt, or sft with train.packing) or examples.

    CPT chunks are all one kind of text, so they are packed densest-first. SFT examples mix
    short and long records, so they are placed in a seeded random order: a row then mixes
    them, instead of rows (and steps) of only long or only short examples (see ``pack``).
    """
    if cfg.mode == "cpt":
        return pack(examples, cfg.chat.max_seq_len)
    if cfg.train.packing:
        return pack(examples, cfg.chat.max_seq_len, seed=cfg.train.seed)
    return examples


def _count(records: list[Record], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        key = str(r.get(field, "(none)"))
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
