"""The synthetic-data generator: plans, splits by document, checks, counts, caches, stops.

A deterministic fake teacher (tests/synth_fakes.py) answers in process or over HTTP, so these
tests need no model weights and can count every teacher call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from specialize.config import RunConfig
from specialize.data.synth import generate_dataset
from specialize.data.synth_plan import prefix_cut
from specialize.data.tasks import BUILTIN
from specialize.errors import SpecializeError
from tests.synth_fakes import FakeBackend, FakeServer

TOPICS = [
    ("orbits", "Low Earth orbit lies below two thousand kilometres. Satellites there circle "
     "the Earth in about ninety minutes. Atmospheric drag slowly lowers their altitude."),
    ("engines", "Liquid rocket engines burn a fuel with an oxidiser. Turbopumps feed the "
     "propellants into the combustion chamber at high pressure. Nozzles expand the exhaust."),
    ("power", "Solar arrays convert sunlight into electricity for spacecraft. Batteries store "
     "energy for eclipses. Radioisotope generators power probes far from the Sun."),
    ("thermal", "Multi-layer insulation keeps spacecraft warm. Radiators reject waste heat to "
     "space. Heat pipes carry heat from electronics to the radiators."),
    ("comms", "The Deep Space Network tracks distant probes with large dish antennas. X band "
     "carries most telemetry. Link budgets decide the achievable data rate."),
    ("attitude", "Reaction wheels turn a spacecraft without propellant. Star trackers measure "
     "its orientation. Magnetorquers dump the momentum the wheels accumulate."),
]  # fmt: skip


def write_docs(folder: Path, repeat: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TOPICS:
        body = "\n\n".join(f"{text} Part {k} of the {name} notes." for k in range(repeat))
        (folder / f"{name}.md").write_text(f"# {name}\n\n{body}\n", encoding="utf-8")
    return folder


def synth_cfg(docs: Path, **extra) -> RunConfig:
    tasks = [{"name": n, "probability": 1.0} for n in BUILTIN]
    synth = {
        "documents": str(docs),
        "chunk": {"size": 60, "overlap": 10},
        "tasks": tasks,
        "validation": 0.2,
        "test": 0.2,
        "passages": 3,
        "filters": {"grounding": 0.5, "near_duplicate": 0.95},
    } | extra
    return RunConfig.model_validate({"name": "s", "synth": synth})


def test_all_seven_tasks_valid_split_by_document_and_counted(tmp_path):
    cfg = synth_cfg(write_docs(tmp_path / "docs"))
    teacher = FakeBackend()
    out = generate_dataset(cfg.synth, tmp_path, teacher, tmp_path / "out", progress=False)
    tasks = {r["task"] for r in out.records}
    assert tasks == set(BUILTIN), tasks
    # every structured record parses under its task; every record has provenance
    for r in out.records:
        task = BUILTIN[r["task"]]
        assert r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant"
        if task.structured:
            task.parse(r["messages"][1]["content"])
        assert r["source_doc"] and r["chunk"].startswith(r["source_doc"] + "#")
    # nothing from one document in two splits, passages included
    split_of = {}
    for r in out.records:
        for chunk in r.get("passages", [r["chunk"]]):
            doc = chunk.rsplit("#", 1)[0]
            assert split_of.setdefault(doc, r["split"]) == r["split"], (doc, r["id"])
    # the stats add up, per task
    for name, row in out.stats["tasks"].items():
        removed = sum(row["removed"].values())
        assert row["planned"] == row["valid"] + row["invalid"], name
        assert row["valid"] == row["kept"] + removed, name
        assert row["kept"] == sum(row["splits"].values()), name
    assert out.stats["totals"]["teacher_calls"] == teacher.calls
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"dataset.jsonl", "synth_stats.json", "synth_samples.jsonl", "tasks.json"} <= files
    assert not BUILTIN["continuation"].needs_teacher
    cont = [r for r in out.records if r["task"] == "continuation"]
    assert all(r["teacher"] == "document" for r in cont)


def test_rerun_asks_nothing_and_gives_the_identical_dataset(tmp_path):
    cfg = synth_cfg(write_docs(tmp_path / "docs"))
    first = FakeBackend()
    a = generate_dataset(cfg.synth, tmp_path, first, tmp_path / "out", progress=False)
    again = FakeBackend()
    b = generate_dataset(cfg.synth, tmp_path, again, tmp_path / "out", progress=False)
    assert again.calls == 0
    assert a.records == b.records
    # one cached answer per request; a retried request's answer is its last attempt
    assert b.stats["totals"]["cached"] == first.calls - a.stats["totals"]["retries"]


def test_dead_teacher_stops_with_one_line_and_keeps_answers(tmp_path):
    cfg = synth_cfg(write_docs(tmp_path / "docs"))
    with pytest.raises(SpecializeError, match="stopped answering") as err:
        generate_dataset(cfg.synth, tmp_path, FakeBackend(fail_after=10), tmp_path / "out",
                         progress=False)  # fmt: skip
    assert "\n" not in str(err.value)
    cache = tmp_path / "out" / "cache" / "teacher.jsonl"
    calls = [x for x in cache.read_text().splitlines() if '"task": "attempt"' in x]
    assert 0 < len(calls) <= 10  # every answered call, as it arrived
    assert not (tmp_path / "out" / "dataset.jsonl").exists()
    # the rest is asked on the rerun, nothing twice
    full = FakeBackend()
    generate_dataset(cfg.synth, tmp_path, full, tmp_path / "fresh", progress=False)
    rest = FakeBackend()
    generate_dataset(cfg.synth, tmp_path, rest, tmp_path / "out", progress=False)
    assert rest.calls == full.calls - 10  # the 10 answered calls are not asked again


def test_partial_last_cache_line_is_asked_again(tmp_path):
    cfg = synth_cfg(write_docs(tmp_path / "docs"))
    a = generate_dataset(cfg.synth, tmp_path, FakeBackend(), tmp_path / "out", progress=False)
    cache = tmp_path / "out" / "cache" / "teacher.jsonl"
    lines = cache.read_text().splitlines(keepends=True)
    # each call's answer is written as it arrives ("attempt"), then its record's final answer
    assert json.loads(lines[-2])["task"] == "attempt" != json.loads(lines[-1])["task"]
    cut = "".join(lines[:-1])
    cache.write_text(cut[: len(cut) - 40])  # a kill mid-write of the last call's answer
    again = FakeBackend()
    b = generate_dataset(cfg.synth, tmp_path, again, tmp_path / "out", progress=False)
    assert again.calls == 1  # only the cut answer is asked again
    assert a.records == b.records


def test_probability_sampling_is_seeded(tmp_path):
    docs = write_docs(tmp_path / "docs")
    tasks = [{"name": n, "probability": 0.5} for n in ("bullets", "qa_pairs")]
    cfg = synth_cfg(docs, tasks=tasks)
    a = generate_dataset(cfg.synth, tmp_path, FakeBackend(), tmp_path / "a", progress=False)
    b = generate_dataset(cfg.synth, tmp_path, FakeBackend(), tmp_path / "b", progress=False)
    planned = a.stats["tasks"]["bullets"]["planned"]
    chunks = a.stats["documents"]["chunks"]
    assert 0 < planned < chunks
    assert [r["id"] for r in a.records] == [r["id"] for r in b.records]


def test_prefix_cut_lands_on_a_sentence_boundary():
    text = " ".join(f"Sentence number {i} has a few words in it." for i in range(8))
    cut = prefix_cut(text)
    assert cut is not None and text[cut - 2] == "." and text[cut].isupper()
    assert prefix_cut("too short") is None


def test_user_yaml_task_end_to_end(tmp_path):
    docs = write_docs(tmp_path / "docs")
    tasks_file = tmp_path / "tasks.yaml"
    tasks_file.write_text(
        "- name: keywords\n"
        "  probability: 1.0\n"
        "  instruction: 'List the keywords of this passage as JSON.\n\n    {passage}'\n"
        "  json_schema:\n"
        "    type: object\n"
        "    properties: {keywords: {type: array, items: {type: string, maxLength: 40},"
        " minItems: 1, maxItems: 3}}\n"
        "    required: [keywords]\n"
        "    additionalProperties: false\n",
        encoding="utf-8",
    )
    cfg = synth_cfg(docs, tasks=[{"name": "bullets", "probability": 0.0}],
                    tasks_file=str(tasks_file))  # fmt: skip
    out = generate_dataset(cfg.synth, tmp_path, FakeBackend(), tmp_path / "out", progress=False)
    kw = [r for r in out.records if r["task"] == "keywords"]
    assert kw and all("keywords" in json.loads(r["messages"][1]["content"]) for r in kw)
    saved = json.loads((tmp_path / "out" / "tasks.json").read_text())
    assert [t["name"] for t in saved["tasks"]] == ["bullets", "keywords"]


# ------------------------------------------------------------------ the CLI, over HTTP


def _config(tmp_path: Path, url: str, docs: Path, **synth: str) -> Path:
    tasks = ", ".join(f"{{name: {n}, probability: 1.0}}" for n in BUILTIN)
    lines = [
        "name: cli",
        f"output_dir: {tmp_path / 'runs'}",
        "synth:",
        f"  documents: {docs}",
        "  chunk: {size: 60, overlap: 10}",
        f"  tasks: [{tasks}]",
        f"  teacher: {url}",
        "  teacher_model: fake",
        "  teacher_concurrency: 1",
        "  validation: 0.2",
        "  test: 0.2",
    ] + [f"  {k}: {v}" for k, v in synth.items()]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _generate(config: Path, **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "specialize", "data", "generate", str(config), "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_sigkill_mid_generation_then_rerun_is_identical(tmp_path):
    docs = write_docs(tmp_path / "docs", repeat=6)
    server = FakeServer()
    try:
        ref_cfg = _config(tmp_path / "ref", server.url, docs)
        p = _generate(ref_cfg)
        assert p.wait(timeout=120) == 0, p.stderr.read()
        total = server.calls
        server.calls = 0
        cfg = _config(tmp_path, server.url, docs)
        p = _generate(cfg)
        deadline = time.time() + 60
        while server.calls < total // 2 and time.time() < deadline:
            time.sleep(0.01)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        killed_at = server.calls
        assert 0 < killed_at < total
        p = _generate(cfg)
        assert p.wait(timeout=120) == 0, p.stderr.read()
        # every call is cached as it arrives (retries and second stages too), and the client
        # sends the next request only after the last answer was written: only the one request
        # in flight at the kill (teacher_concurrency: 1) can be asked twice
        assert total <= server.calls <= total + 1
    finally:
        server.stop()
    ref = (tmp_path / "ref" / "runs" / "cli.synth" / "dataset.jsonl").read_text()
    got = (tmp_path / "runs" / "cli.synth" / "dataset.jsonl").read_text()
    assert got == ref


def test_teacher_endpoint_dying_mid_run_exits_2_in_seconds(tmp_path):
    docs = write_docs(tmp_path / "docs", repeat=6)
    server = FakeServer()
    cfg = _config(tmp_path, server.url, docs)
    p = _generate(cfg)
    deadline = time.time() + 60
    while server.calls < 5 and time.time() < deadline:
        time.sleep(0.01)
    server.stop()
    t0 = time.time()
    rc = p.wait(timeout=60)
    stopped_in = time.time() - t0
    err = p.stderr.read().strip().splitlines()
    assert rc == 2
    assert "stopped answering" in err[-1] and "rerun" in err[-1]
    assert stopped_in < 20
    cache = tmp_path / "runs" / "cli.synth" / "cache" / "teacher.jsonl"
    assert len(cache.read_text().splitlines()) >= 5
    assert not (tmp_path / "runs" / "cli.synth" / "dataset.jsonl").exists()


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        ("empty", "empty"),
        ("binary", "binary"),
        ("latin1", "not UTF-8"),
        ("bad_schema", "schema"),
        ("unknown_task", "unknown task"),
        ("probability", "probability"),
        ("overlap", "overlap"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, setup, match):
    docs = write_docs(tmp_path / "docs")
    extra: dict[str, str] = {}
    if setup == "empty":
        (docs / "empty.txt").write_text("")
    elif setup == "binary":
        (docs / "blob.txt").write_bytes(b"\x00\x01\x02binary\x00")
    elif setup == "latin1":
        (docs / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    elif setup == "bad_schema":
        extra["tasks"] = "[{name: odd, instruction: 'x {passage}', json_schema: {type: nope}}]"
    elif setup == "unknown_task":
        extra["tasks"] = "[{name: summarise}]"
    elif setup == "probability":
        extra["tasks"] = "[{name: bullets, probability: 1.5}]"
    elif setup == "overlap":
        extra["chunk"] = "{size: 50, overlap: 50}"
    cfg = _config(tmp_path, "http://127.0.0.1:9/v1", docs)
    text = cfg.read_text()
    for key, value in extra.items():
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(f"  {key}:"))
        text += f"\n  {key}: {value}\n"
    cfg.write_text(text)
    p = _generate(cfg, env=os.environ | {"PYTHONWARNINGS": "ignore"})
    assert p.wait(timeout=60) == 2
    err = p.stderr.read().strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not (tmp_path / "runs").exists()
