"""The synthetic-data task catalog: built-ins, user tasks from YAML and Python, tasks.json."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from specialize.config import SynthConfig, SynthFilterConfig
from specialize.data.chunk import Chunk
from specialize.data.tasks import (
    BUILTIN,
    QUESTION,
    Bullets,
    Catalog,
    QAPairs,
    RetrievalResult,
    Task,
    TaskInput,
    Triplets,
    load_catalog,
)
from specialize.errors import SpecializeError
from specialize.infer.constraints import check_constraint
from specialize.infer.types import InvalidOutput

RHINE = (
    "The Rhine rises in the Swiss Alps and flows north through Basel, Strasbourg and "
    "Cologne before reaching the North Sea near Rotterdam. It is 1,230 kilometres long "
    "and carries more barge traffic than any other river in Europe."
)
DANUBE = (
    "The Danube starts in the Black Forest and flows east through Vienna, Bratislava and "
    "Budapest to the Black Sea. It crosses ten countries."
)
LOIRE = "The Loire is the longest river in France and flows into the Bay of Biscay."
FILTERS = SynthFilterConfig()


def chunk(text: str, doc: str = "rhine", index: int = 0) -> Chunk:
    return Chunk(doc, index, 0, len(text), text)


ONE = TaskInput((chunk(RHINE),))
PAIR = TaskInput((chunk(RHINE), chunk(DANUBE, "danube")))
RETRIEVAL = TaskInput(
    (chunk(DANUBE, "danube"), chunk(RHINE), chunk(LOIRE, "loire")),
    question="How long is the Rhine?",
    target=1,
)
PREFIX = TaskInput(
    (chunk(RHINE),),
    prefix="The Rhine rises in the Swiss Alps and flows north.",
    continuation="It reaches the North Sea near Rotterdam after 1,230 kilometres.",
)

# A valid teacher answer per task: (input, answer text, items).
VALID = {
    "bullets": (
        ONE,
        '{"bullets":["The Rhine rises in the Swiss Alps.","The Rhine is 1,230 kilometres long."]}',
        ["The Rhine rises in the Swiss Alps.", "The Rhine is 1,230 kilometres long."],
    ),
    "qa_pairs": (
        ONE,
        '{"pairs":[{"question":"Where does the Rhine rise?","answer":"In the Swiss Alps"}]}',
        ["Where does the Rhine rise? In the Swiss Alps"],
    ),
    "rephrase": (
        ONE,
        "Starting in the Alps of Switzerland, the Rhine runs north past Basel, Strasbourg and "
        "Cologne and ends in the North Sea by Rotterdam; at 1,230 kilometres it carries more "
        "barge traffic than any other European river.",
        None,
    ),
    "continuation": (PREFIX, PREFIX.continuation, [PREFIX.continuation]),
    "triplets": (
        ONE,
        '{"triplets":[{"subject":"Rhine","relation":"flows through","object":"Basel"},'
        '{"subject":"Rhine","relation":"reaches","object":"North Sea"}]}',
        ["Rhine flows through Basel", "Rhine reaches North Sea"],
    ),
    "retrieval": (RETRIEVAL, '{"index":1,"reasoning":"Passage 1 gives the length."}', ["1"]),
    "comparison": (
        PAIR,
        "Both are long European rivers: the Rhine flows north through Basel to the North Sea, "
        "while the Danube flows east through Vienna and Budapest to the Black Sea.",
        None,
    ),
}


def test_there_are_seven_builtins_with_their_unwrap_fields():
    assert list(BUILTIN) == [
        "bullets",
        "qa_pairs",
        "rephrase",
        "continuation",
        "triplets",
        "retrieval",
        "comparison",
    ]
    assert BUILTIN["bullets"].output is Bullets and BUILTIN["bullets"].unwrap == "bullets"
    assert BUILTIN["qa_pairs"].output is QAPairs and BUILTIN["qa_pairs"].unwrap == "pairs"
    assert BUILTIN["triplets"].output is Triplets and BUILTIN["triplets"].unwrap == "triplets"
    assert BUILTIN["retrieval"].output is RetrievalResult
    assert [n for n, t in BUILTIN.items() if not t.structured] == [
        "rephrase",
        "continuation",
        "comparison",
    ]
    assert [n for n, t in BUILTIN.items() if not t.needs_teacher] == ["continuation"]


@pytest.mark.parametrize("task", [*BUILTIN.values(), QUESTION], ids=lambda t: t.name)
def test_builtin_schemas_compile_and_are_bounded(task):
    if not task.structured:
        assert task.constraint() is None
        return
    constraint = task.constraint()
    assert constraint is task.constraint()  # one object per task: compiled once
    check_constraint(constraint)
    text = json.dumps(task.schema)
    assert "maxLength" in text and ("maxItems" in text or task.name in ("retrieval", "question"))


def test_user_messages_fill_placeholders_exactly():
    assert BUILTIN["bullets"].user_message(ONE) == (
        "Extract the key points of the following passage as a list of bullet points. "
        'Answer in JSON, with the list of points under "bullets".\n\n' + RHINE
    )
    assert BUILTIN["continuation"].user_message(PREFIX) == (
        "Continue the following text.\n\nThe Rhine rises in the Swiss Alps and flows north."
    )
    assert (
        BUILTIN["comparison"]
        .user_message(PAIR)
        .endswith(f"Passage A:\n{RHINE}\n\nPassage B:\n{DANUBE}")
    )
    msg = BUILTIN["retrieval"].user_message(RETRIEVAL)
    assert "Question: How long is the Rhine?" in msg
    assert msg.endswith(f"[0] {DANUBE}\n\n[1] {RHINE}\n\n[2] {LOIRE}")
    with pytest.raises(ValueError):
        BUILTIN["comparison"].user_message(ONE)  # a pair task needs two chunks


def test_teacher_messages_add_guidance_and_the_json_shape():
    msgs = BUILTIN["qa_pairs"].teacher_messages(ONE)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"] == BUILTIN["qa_pairs"].user_message(ONE)
    assert BUILTIN["qa_pairs"].teacher_system in msgs[0]["content"]
    assert (
        '{"pairs": [{"question": string, "answer": string}, ... 1-4 items]}' in (msgs[0]["content"])
    )
    assert "\n" not in msgs[0]["content"].splitlines()[-1]
    plain = Task("note", "Summarise.\n\n{passage}")
    assert [m["role"] for m in plain.teacher_messages(ONE)] == ["user"]


@pytest.mark.parametrize("name", list(VALID))
def test_valid_answers_parse_render_and_round_trip(name):
    task = BUILTIN[name]
    inp, text, items = VALID[name]
    if task.structured:
        value = task.constraint().validate(text)
        assert isinstance(value, task.output)
        assert task.parse(text) == value
        assert task.render(value) == text  # compact, the teacher's own form
    else:
        value = task.parse("  " + text + "\n")
        assert value == text and task.render(value) == text
    assert task.parse(task.render(value)) == value
    assert task.items(value) == (items if items is not None else [text])
    assert task.check(value, inp, FILTERS) is None


def test_unwrapped_is_what_the_typed_api_returns():
    value = BUILTIN["bullets"].parse(VALID["bullets"][1])
    assert BUILTIN["bullets"].unwrapped(value) == VALID["bullets"][2]
    r = BUILTIN["retrieval"].parse(VALID["retrieval"][1])
    assert BUILTIN["retrieval"].unwrapped(r) is r


def test_parse_rejects_invalid_answers():
    bullets = BUILTIN["bullets"]
    fenced = '```json\n{"bullets":["The Rhine is long."]}\n```'
    assert bullets.parse(fenced) == Bullets(bullets=["The Rhine is long."])
    for bad in [
        '{"bullets":[]}',
        '{"bullets":["The Rhine is long."],"x":1}',
        "not json",
        '{"items":["The Rhine is long."]}',
    ]:
        with pytest.raises(InvalidOutput):
            bullets.parse(bad)
    with pytest.raises(InvalidOutput):
        BUILTIN["retrieval"].parse('{"index":-1,"reasoning":""}')
    with pytest.raises(InvalidOutput):
        BUILTIN["rephrase"].parse("  \n")


def test_check_removes_ungrounded_answers_with_the_right_reason():
    qa = BUILTIN["qa_pairs"]
    bad_qa = qa.parse(
        '{"pairs":[{"question":"Who crowned himself?","answer":"Napoleon Bonaparte in Paris"}]}'
    )
    assert qa.check(bad_qa, ONE, FILTERS) == "grounding"
    assert qa.check(bad_qa, ONE, SynthFilterConfig(grounding=0)) is None  # turned off
    tri = BUILTIN["triplets"]
    bad_tri = tri.parse('{"triplets":[{"subject":"Rhine","relation":"in","object":"Mars"}]}')
    assert tri.check(bad_tri, ONE, FILTERS) == "grounding"
    bul = BUILTIN["bullets"]
    one_invented = bul.parse('{"bullets":["The Rhine flows through Basel.","Pizza is tasty."]}')
    assert bul.check(one_invented, ONE, FILTERS) == "grounding"
    comp = BUILTIN["comparison"]
    only_a = "The Rhine flows through Basel and Cologne to the sea near Rotterdam."
    assert comp.check(only_a, PAIR, FILTERS) == "grounding"
    q = QUESTION.parse('{"question":"How long is the Rhine?"}')
    assert QUESTION.check(q, ONE, FILTERS) is None
    assert (
        QUESTION.check(QUESTION.parse('{"question":"Who won the 1998 World Cup?"}'), ONE, FILTERS)
        == "grounding"
    )


def test_check_retrieval_index_refusal_copy_length_empty():
    ret = BUILTIN["retrieval"]
    wrong = ret.parse('{"index":0,"reasoning":"It is about rivers."}')
    assert ret.check(wrong, RETRIEVAL, FILTERS) == "retrieval_index"
    reph = BUILTIN["rephrase"]
    refusal = "I'm sorry, but as an AI I cannot rephrase the Rhine passage."
    assert reph.check(refusal, ONE, FILTERS) == "refusal"
    assert reph.check(refusal, ONE, SynthFilterConfig(refusals=False)) != "refusal"
    assert reph.check(RHINE, ONE, FILTERS) == "copy"
    assert reph.check("Rhine long.", ONE, FILTERS) == "length"
    assert reph.check(RHINE + " extra words", ONE, SynthFilterConfig(max_words=10)) == "length"
    bul = BUILTIN["bullets"]
    assert (
        bul.check(bul.parse('{"bullets":["Rhine is long.","            "]}'), ONE, FILTERS)
        == "empty"
    )
    sure = bul.parse('{"bullets":["Sure, here are the points about the Rhine."]}')
    assert bul.check(sure, ONE, FILTERS) == "refusal"
    # continuation is the document's own text: never a refusal, never grounded
    cont = BUILTIN["continuation"]
    assert cont.check("I'm sorry, said the captain of the barge.", PREFIX, FILTERS) is None


def test_fingerprint_changes_with_what_the_models_see():
    t = BUILTIN["bullets"]
    fp = t.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert Task("bullets", t.instruction, output=Bullets, unwrap="bullets",
                teacher_system=t.teacher_system).fingerprint() == fp  # fmt: skip
    import dataclasses

    assert dataclasses.replace(t, probability=0.9).fingerprint() == fp  # sampling only
    for change in ({"instruction": t.instruction + " "}, {"teacher_system": "x"}, {"version": "2"}):
        assert dataclasses.replace(t, **change).fingerprint() != fp
    assert len({x.fingerprint() for x in BUILTIN.values()}) == 7
    assert len({hash(x) for x in BUILTIN.values()}) == 7


def _synth(tmp_path, **kw) -> SynthConfig:
    return SynthConfig.model_validate({"documents": "docs", **kw})


def test_default_catalog_is_the_builtins_and_overrides_change_the_fingerprint(tmp_path):
    cat = load_catalog(_synth(tmp_path), tmp_path)
    assert cat.names == list(BUILTIN) and len(cat) == 7
    assert [t.name for t in cat] == cat.names and "bullets" in cat and "nope" not in cat
    assert cat["bullets"] == BUILTIN["bullets"]
    over = load_catalog(
        _synth(
            tmp_path,
            tasks=[
                {
                    "name": "bullets",
                    "probability": 0.5,
                    "instruction": "List the main points as JSON.\n\n{passage}",
                    "teacher_system": "At most three bullets.",
                }
            ],
        ),
        tmp_path,
    )
    t = over["bullets"]
    assert t.output is Bullets and t.probability == 0.5
    assert t.user_message(ONE) == "List the main points as JSON.\n\n" + RHINE
    assert t.teacher_system.endswith("At most three bullets.")
    assert t.fingerprint() != BUILTIN["bullets"].fingerprint()


SCHEMA = {
    "type": "object",
    "properties": {
        "river": {"type": "string", "maxLength": 60},
        "mood": {"enum": ["calm", "wild"]},
        "length_km": {"type": "integer"},
    },
    "required": ["river", "mood", "length_km"],
}


def test_user_yaml_tasks_inline_and_from_files(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "facts.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "more.yaml").write_text(
        textwrap.dedent(
            """\
            - name: river_facts
              probability: 0.3
              instruction: "Give the river's facts as JSON.\\n\\n{passage}"
              json_schema: schemas/facts.json
            - name: contrast
              input: pair
              instruction: "How do these differ?\\n\\n{passage_a}\\n\\n{passage_b}"
            """
        )
    )
    synth = _synth(
        tmp_path,
        tasks=[
            {"name": "rephrase"},
            {
                "name": "inline_facts",
                "instruction": "Facts as JSON please:\n\n{passage}",
                "json_schema": SCHEMA,
                "teacher_system": "Copy the river's name.",
            },
        ],
        tasks_file="more.yaml",
    )
    cat = load_catalog(synth, tmp_path)
    assert cat.names == ["rephrase", "inline_facts", "river_facts", "contrast"]
    facts = cat["river_facts"]
    assert facts.schema == SCHEMA and facts.probability == 0.3 and facts.output is None
    assert facts.user_message(ONE) == "Give the river's facts as JSON.\n\n" + RHINE
    check_constraint(facts.constraint())
    answer = '{"river":"Rhine","mood":"calm","length_km":1230}'
    value = facts.constraint().validate(answer)
    assert facts.parse(answer) == value == {"river": "Rhine", "mood": "calm", "length_km": 1230}
    assert facts.render(value) == answer
    assert facts.items(value) == ["river: Rhine", "mood: calm", "length_km: 1230"]
    assert facts.check(value, ONE, FILTERS) is None  # the enum label need not be in the text
    invented = facts.parse('{"river":"Amazon","mood":"calm","length_km":1}')
    assert facts.check(invented, ONE, FILTERS) == "grounding"
    with pytest.raises(InvalidOutput):
        facts.parse('{"river":"Rhine","mood":"sad","length_km":1}')
    inline = cat["inline_facts"]
    assert (
        inline.schema == SCHEMA
        and "Copy the river's name." in (inline.teacher_messages(ONE)[0]["content"])
    )
    contrast = cat["contrast"]
    assert contrast.input_kind == "pair" and not contrast.structured
    assert contrast.user_message(PAIR) == f"How do these differ?\n\n{RHINE}\n\n{DANUBE}"
    assert contrast.render(contrast.parse(" a b c ")) == "a b c"


def test_python_task_by_module_attr(tmp_path, monkeypatch):
    (tmp_path / "my_tasks.py").write_text(
        textwrap.dedent(
            """\
            from pydantic import BaseModel, ConfigDict, Field
            from specialize.data.tasks import Task

            class Title(BaseModel):
                model_config = ConfigDict(extra="forbid")
                title: str = Field(max_length=80)

            TITLE = Task(
                "title",
                "Give the passage a title. JSON: {{\\"title\\": ...}}\\n\\n{passage}",
                output=Title,
                unwrap="title",
                probability=0.1,
            )
            NOT_A_TASK = "hello"
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_tasks", raising=False)
    cat = load_catalog(
        _synth(tmp_path, tasks=[{"name": "headline", "python": "my_tasks:TITLE"}]), tmp_path
    )
    t = cat["headline"]
    assert t.name == "headline" and t.probability == 0.1 and t.unwrap == "title"
    value = t.parse('{"title":"The Rhine"}')
    assert type(value).__name__ == "Title" and t.unwrapped(value) == "The Rhine"
    assert t.render(value) == '{"title":"The Rhine"}'
    assert t.items(value) == ["title: The Rhine"]
    assert t.check(value, ONE, FILTERS) is None
    with pytest.raises(SpecializeError) as err:
        load_catalog(
            _synth(tmp_path, tasks=[{"name": "x", "python": "my_tasks:NOT_A_TASK"}]), tmp_path
        )
    assert "is a str, not a specialize.data.tasks.Task" in str(err.value)
    assert "synth.tasks[0].python" in str(err.value)
    for spec, words in [
        ("my_tasks:MISSING", "has no attribute"),
        ("no_such_mod:X", "cannot import"),
    ]:
        with pytest.raises(SpecializeError, match=words):
            load_catalog(_synth(tmp_path, tasks=[{"name": "x", "python": spec}]), tmp_path)


def _error(tmp_path, tasks=None, **kw) -> str:
    with pytest.raises(SpecializeError) as err:
        load_catalog(_synth(tmp_path, tasks=tasks or [{"name": "rephrase"}], **kw), tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_load_errors_are_one_line_and_say_where(tmp_path):
    msg = _error(tmp_path, [{"name": "bulets"}])
    assert msg == (
        "field 'synth.tasks[0].name': unknown task 'bulets' (built-in: bullets, qa_pairs, "
        "rephrase, continuation, triplets, retrieval, comparison); give it an instruction "
        "(and a json_schema) to define it"
    )
    msg = _error(
        tmp_path, [{"name": "x", "instruction": "{passage}", "json_schema": {"type": "nope"}}]
    )
    assert (
        "synth.tasks[0].json_schema" in msg and "task 'x'" in msg and "invalid JSON schema" in msg
    )
    # valid JSON Schema, but a regex llguidance cannot run (look-ahead)
    lookahead = {"type": "string", "pattern": "(?=a)b"}
    msg = _error(tmp_path, [{"name": "x", "instruction": "{passage}", "json_schema": lookahead}])
    assert "constrained decoding" in msg and "task 'x'" in msg
    msg = _error(tmp_path, [{"name": "x", "instruction": "Compare {passage_a}"}])
    assert "synth.tasks[0].instruction" in msg and "{passage_a}" in msg and "{passage}" in msg
    msg = _error(tmp_path, [{"name": "x", "instruction": 'JSON: {"a": 1} {passage}'}])
    assert "synth.tasks[0].instruction" in msg and "{{" in msg
    msg = _error(tmp_path, [{"name": "x", "input": "pair", "instruction": "{passage}"}])
    assert "{passage_a}" in msg
    msg = _error(tmp_path, [{"name": "bullets", "json_schema": SCHEMA}])
    assert "built-in" in msg and "synth.tasks[0].json_schema" in msg
    msg = _error(tmp_path, [{"name": "x", "instruction": "{passage}", "json_schema": "none.json"}])
    assert "none.json" in msg and "cannot read" in msg
    (tmp_path / "bad.json").write_text("{oops")
    msg = _error(tmp_path, [{"name": "x", "instruction": "{passage}", "json_schema": "bad.json"}])
    assert "bad.json:1" in msg and "not valid JSON" in msg
    msg = _error(tmp_path, [{"name": "x", "input": "prefix", "instruction": "{prefix}",
                             "json_schema": SCHEMA}])  # fmt: skip
    assert "cannot have a JSON schema" in msg


def test_tasks_file_errors_name_the_file(tmp_path):
    (tmp_path / "t.yaml").write_text("- name: x\n  instruction: [oops\n")
    msg = _error(tmp_path, tasks_file="t.yaml")
    assert msg.startswith(str(tmp_path / "t.yaml") + ":") and "not valid YAML" in msg
    (tmp_path / "t.yaml").write_text("- name: x\n  instruction: '{passage}'\n  colour: red\n")
    msg = _error(tmp_path, tasks_file="t.yaml")
    assert "t.yaml" in msg and "[0].colour" in msg and "unknown key" in msg
    (tmp_path / "t.yaml").write_text("- name: rephrase\n")
    msg = _error(tmp_path, tasks_file="t.yaml")
    assert "defined twice" in msg and "[0].name" in msg
    (tmp_path / "t.yaml").write_text("- name: bulets\n")
    msg = _error(tmp_path, tasks_file="t.yaml")
    assert "t.yaml" in msg and "field '[0].name'" in msg and "unknown task 'bulets'" in msg
    (tmp_path / "t.yaml").write_text("name: x\n")
    assert "YAML list" in _error(tmp_path, tasks_file="t.yaml")


def test_catalog_json_round_trip(tmp_path):
    (tmp_path / "facts.json").write_text(json.dumps(SCHEMA))
    synth = _synth(
        tmp_path,
        tasks=[
            {"name": "bullets", "probability": 0.4},
            {"name": "qa_pairs", "instruction": "Questions and answers as JSON:\n\n{passage}"},
            {"name": "retrieval"},
            {"name": "facts", "instruction": "Facts:\n\n{passage}", "json_schema": "facts.json"},
            {"name": "note", "instruction": "Note {passage_a} vs {passage_b}", "input": "pair"},
        ],
    )
    cat = load_catalog(synth, tmp_path)
    data = json.loads(json.dumps(cat.to_json()))  # as written to tasks.json
    assert [e["builtin"] for e in data["tasks"]] == [True, True, True, False, False]
    assert set(data["tasks"][0]) >= {
        "name", "instruction", "input_kind", "schema", "unwrap", "probability", "version",
        "fingerprint", "builtin", "teacher_system",
    }  # fmt: skip
    back = Catalog.from_json(data)
    assert back.names == cat.names
    for t in cat:
        b = back[t.name]
        assert (b.instruction, b.schema, b.fingerprint(), b.input_kind, b.probability) == (
            t.instruction,
            t.schema,
            t.fingerprint(),
            t.input_kind,
            t.probability,
        )
    assert back["bullets"] == cat["bullets"] and back["bullets"].output is Bullets
    assert back["qa_pairs"].output is QAPairs  # an overridden built-in keeps its type
    assert back["retrieval"].output is RetrievalResult
    assert back["facts"].output is None and back["facts"].parse(
        '{"river":"Rhine","mood":"calm","length_km":1}'
    )
    data["tasks"][3]["instruction"] += "!"
    with pytest.raises(SpecializeError, match="fingerprint"):
        Catalog.from_json(data)


def test_catalog_rejects_duplicate_names():
    with pytest.raises(SpecializeError, match="defined twice"):
        Catalog([BUILTIN["bullets"], BUILTIN["bullets"]])
    with pytest.raises(KeyError):
        Catalog([BUILTIN["bullets"]])["rephrase"]


def test_repeated_items_and_self_triplets_are_removed():
    bul = BUILTIN["bullets"]
    loop = bul.parse('{"bullets":["The Rhine is long.","the rhine is long"]}')
    assert bul.check(loop, ONE, FILTERS) == "repetition"
    tri = BUILTIN["triplets"]
    self_rel = tri.parse('{"triplets":[{"subject":"Rhine","relation":"is","object":"rhine"}]}')
    assert tri.check(self_rel, ONE, FILTERS) == "repetition"
    assert tri.repair(self_rel) == (self_rel, 0)  # nothing would be left: removed, not repaired


def test_repair_drops_repeated_items_and_keeps_the_first_of_each():
    bul = BUILTIN["bullets"]
    loop = bul.parse('{"bullets":["The Rhine is long.","It flows north.","the rhine is long"]}')
    fixed, dropped = bul.repair(loop)
    assert dropped == 1 and fixed.bullets == ["The Rhine is long.", "It flows north."]
    assert bul.check(fixed, ONE, FILTERS) is None and loop.bullets[2] == "the rhine is long"
    tri = BUILTIN["triplets"]
    t = tri.parse(
        '{"triplets":[{"subject":"Rhine","relation":"flows to","object":"North Sea"},'
        '{"subject":"Rhine","relation":"is","object":"rhine"},'
        '{"subject":"rhine","relation":"flows to","object":"north sea"}]}'
    )
    fixed, dropped = tri.repair(t)
    assert dropped == 2 and [x.object for x in fixed.triplets] == ["North Sea"]
    qa = BUILTIN["qa_pairs"]
    pairs = qa.parse(
        '{"pairs":[{"question":"How long is the Rhine?","answer":"Long."},'
        '{"question":"How long is the Rhine?","answer":"Very long."}]}'
    )
    fixed, dropped = qa.repair(pairs)
    assert dropped == 1 and [p.answer for p in fixed.pairs] == ["Long."]
    ok = bul.parse('{"bullets":["The Rhine is long."]}')
    assert bul.repair(ok) == (ok, 0)
    assert BUILTIN["rephrase"].repair("The Rhine is long.") == ("The Rhine is long.", 0)


def test_eval_budget_is_at_least_the_teachers(tmp_path):
    """Every structured training answer fit in synth.max_new_tokens; a smaller evaluation
    budget would cut the tuned model's same answer and count it invalid."""
    from pydantic import ValidationError

    from specialize.config import RunConfig

    base = {
        "name": "b",
        "model": {"base": "bundled:smollm2-135m-instruct"},
        "synth": {"documents": str(tmp_path), "max_new_tokens": 120},
    }
    assert RunConfig.model_validate(base).eval.max_new_tokens == 120
    assert (
        RunConfig.model_validate(base | {"eval": {"max_new_tokens": 200}}).eval.max_new_tokens
        == 200
    )
    with pytest.raises(ValidationError, match="eval.max_new_tokens 64 is below synth"):
        RunConfig.model_validate(base | {"eval": {"max_new_tokens": 64}})
    plain = {"name": "p", "model": base["model"], "data": {"path": "x.jsonl"}}
    assert RunConfig.model_validate(plain).eval.max_new_tokens == 48
