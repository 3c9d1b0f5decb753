"""Readers on the real third-party datasets in ../shared/data (skipped when absent)."""

from __future__ import annotations

from conftest import SHARED, needs_shared

from specialize.config import SplitConfig
from specialize.data.read import read_records
from specialize.data.split import assign_splits


@needs_shared
def test_gsm8k_question_answer_mapping_and_seeded_95_5_split():
    recs, stats = read_records(
        SHARED / "gsm8k_test" / "gsm8k_test.jsonl",
        "prompt-response",
        {"prompt": "question", "response": "answer", "system": None},
    )
    assert len(recs) == 1319 and stats.removed_empty == 0
    assert recs[0]["messages"][-1]["content"].endswith("#### 18")
    assert recs[0]["final_answer"] == 18  # other columns stay as metadata
    splits = assign_splits(recs, SplitConfig(validation=0.05, test=0.0))
    assert len(splits["train"]) + len(splits["validation"]) == 1319
    assert 0.035 < len(splits["validation"]) / 1319 < 0.065
