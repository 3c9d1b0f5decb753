"""Ablation conditions (full / drop / noise / conflict) on a small synthetic triage set."""

from __future__ import annotations

import copy
import random

import pytest
from pydantic import ValidationError

from specialize.errors import SpecializeError
from specialize.evaluate.ablations import (
    AblationCondition,
    AblationConfig,
    apply_condition,
    build_conditions,
    check_template,
    conflict_following,
    load_ablation_config,
    render_user,
    template_fields,
)
from specialize.report.eval_report import condition_table

TEMPLATE = "Sensor: {sensor}\nRegion: {region}\nObservation: {observation}\nClassify the image."
CLASSES = ["cloud", "fire", "flood"]
OBSERVATIONS = {
    "cloud": ["dense white cover over the scene", "bright diffuse patches", "thick overcast"],
    "fire": ["hot spots with smoke plumes", "thermal anomaly near ridge", "burn scar and glow"],
    "flood": ["river overflowing its banks", "standing water on fields", "dark wet lowlands"],
}
SENSORS = ["MSI", "OLI", "VIIRS", "SAR"]
REGIONS = ["Alps", "Sahel", "Amazon delta", "Ganges plain"]


def make_records() -> list[dict]:
    """12 records, 4 per class, each with sensor/region/observation fields and a system turn."""
    recs = []
    for i in range(12):
        label = CLASSES[i % 3]
        fields = {
            "sensor": SENSORS[i % 4],
            "region": REGIONS[(i // 3) % 4],
            "observation": OBSERVATIONS[label][i % 3] + f" tile {i}",
        }
        recs.append(
            {
                "id": f"r{i:02d}",
                "task": "classify",
                "choices": CLASSES,
                "label": label,
                "fields": fields,
                "messages": [
                    {"role": "system", "content": "You triage orbital images."},
                    {"role": "user", "content": "original prompt"},
                    {"role": "assistant", "content": label},
                ],
            }
        )
    return recs


def user_of(rec: dict) -> str:
    return next(m["content"] for m in rec["messages"] if m["role"] == "user")


# ------------------------------------------------------------------------ templates


def test_render_full_and_drop_removes_only_that_line():
    fields = {"sensor": "MSI", "region": "Alps", "observation": "thick overcast"}
    full = render_user(TEMPLATE, fields)
    assert full == ("Sensor: MSI\nRegion: Alps\nObservation: thick overcast\nClassify the image.")
    dropped = render_user(TEMPLATE, fields, drop=["region"])
    assert dropped == "Sensor: MSI\nObservation: thick overcast\nClassify the image."
    assert dropped.split("\n") == [ln for ln in full.split("\n") if not ln.startswith("Region")]


def test_inline_field_takes_whole_line_and_braces_in_values_are_safe():
    t = "Sensor: {sensor}, region {region}\nNote: {observation}"
    fields = {"sensor": "MSI", "region": "{x}", "observation": "a {b} c"}
    assert render_user(t, fields) == "Sensor: MSI, region {x}\nNote: a {b} c"
    assert render_user(t, fields, drop={"region"}) == "Note: a {b} c"
    assert render_user("Lit {{sensor}}: {sensor}", fields) == "Lit {sensor}: MSI"


def test_template_errors_name_the_placeholder():
    with pytest.raises(SpecializeError, match=r"\{sensr\}") as e:
        check_template("Sensor: {sensr}\nRegion: {region}", make_records())
    assert e.value.field == "eval.ablations.template"
    with pytest.raises(SpecializeError, match=r"\{region\}"):
        render_user(TEMPLATE, {"sensor": "MSI", "observation": "x"})
    for bad in ("{0}", "{}", "{a.b}", "{a!r}", "{a:>5}", "open {brace"):
        with pytest.raises(SpecializeError) as e:
            template_fields(bad)
        assert e.value.field == "eval.ablations.template"
    assert template_fields(TEMPLATE) == ["sensor", "region", "observation"]


def test_unknown_placeholder_stops_apply_condition():
    cond = AblationCondition(name="full")
    with pytest.raises(SpecializeError, match=r"unknown template placeholder '\{band\}'"):
        apply_condition(make_records(), cond, TEMPLATE + "\nBand: {band}")


# ------------------------------------------------------------------------ conditions


def test_full_rerenders_keeps_ids_and_never_mutates_input():
    recs = make_records()
    before = copy.deepcopy(recs)
    out, report = apply_condition(recs, AblationCondition(name="full"), TEMPLATE)
    assert recs == before
    assert [r["id"] for r in out] == [r["id"] for r in recs]
    assert report == {
        "condition": "full",
        "kind": "full",
        "field": None,
        "n": 12,
        "skipped": {"missing_field": 0, "missing_class": 0, "no_other_class": 0},
        "skipped_ids": [],
    }
    r0 = out[0]
    assert r0["condition"] == "full"
    assert user_of(r0) == render_user(TEMPLATE, recs[0]["fields"])
    assert r0["messages"][0]["role"] == "system" and r0["messages"][-1] == recs[0]["messages"][-1]
    out[0]["fields"]["sensor"] = "changed"  # deep copies: the input is untouched
    assert recs[0]["fields"]["sensor"] == SENSORS[0]


def test_keep_system_false_removes_system_turn():
    out, _ = apply_condition(
        make_records(), AblationCondition(name="full"), TEMPLATE, keep_system=False
    )
    assert [m["role"] for m in out[0]["messages"]] == ["user", "assistant"]


def test_drop_removes_the_line_and_nothing_else():
    recs = make_records()
    full, _ = apply_condition(recs, AblationCondition(name="full"), TEMPLATE)
    out, report = apply_condition(
        recs, AblationCondition(name="no_obs", drop="observation"), TEMPLATE
    )
    assert report["kind"] == "drop" and report["field"] == "observation" and report["n"] == 12
    for f, d in zip(full, out, strict=True):
        lines = user_of(f).split("\n")
        assert user_of(d).split("\n") == [ln for ln in lines if not ln.startswith("Observation:")]
        assert "observation" not in d["fields"]
        assert d["messages"][0] == f["messages"][0] and d["messages"][-1] == f["messages"][-1]
        assert d["label"] == f["label"] and d["condition"] == "no_obs"


def test_noise_reproducible_order_independent_same_length_and_different():
    recs = make_records()
    cond = AblationCondition(name="noisy_obs", noise="observation", seed=3)
    a, report = apply_condition(recs, cond, TEMPLATE)
    b, _ = apply_condition(make_records(), cond, TEMPLATE)
    shuffled = make_records()
    random.Random(1).shuffle(shuffled)
    c, _ = apply_condition(shuffled, cond, TEMPLATE)
    assert report["n"] == 12 and report["kind"] == "noise"
    assert a == b
    by_id = {r["id"]: r for r in c}
    vocab = {w for r in recs for w in r["fields"]["observation"].split()}
    for orig, noisy in zip(recs, a, strict=True):
        assert by_id[orig["id"]] == noisy
        new_value = noisy["fields"]["observation"]
        assert len(new_value.split()) == len(orig["fields"]["observation"].split())
        assert new_value != orig["fields"]["observation"]
        assert set(new_value.split()) <= vocab
        assert f"Observation: {new_value}" in user_of(noisy)
        # other fields untouched
        assert noisy["fields"]["sensor"] == orig["fields"]["sensor"]
    other_seed, _ = apply_condition(recs, cond.model_copy(update={"seed": 4}), TEMPLATE)
    assert [r["fields"] for r in other_seed] != [r["fields"] for r in a]


def test_conflict_takes_value_from_another_class():
    recs = make_records()
    cond = AblationCondition(name="conflict_obs", conflict="observation", seed=7)
    out, report = apply_condition(recs, cond, TEMPLATE)
    assert report["n"] == 12 and report["kind"] == "conflict"
    by_id = {r["id"]: r for r in recs}
    for rec in out:
        donor = by_id[rec["conflict_from"]]
        assert rec["conflict_label"] == donor["label"] != rec["label"]
        assert rec["fields"]["observation"] == donor["fields"]["observation"]
        assert f"Observation: {donor['fields']['observation']}" in user_of(rec)
        assert rec["fields"]["sensor"] == by_id[rec["id"]]["fields"]["sensor"]
    shuffled = list(reversed(make_records()))
    again, _ = apply_condition(shuffled, cond, TEMPLATE)
    assert sorted(again, key=lambda r: r["id"]) == out


def test_missing_field_is_counted_not_crashed_on():
    recs = make_records()
    del recs[2]["fields"]["region"]
    del recs[5]["fields"]
    for cond in (
        AblationCondition(name="full"),
        AblationCondition(name="d", drop="region"),
        AblationCondition(name="n", noise="region"),
        AblationCondition(name="c", conflict="region"),
    ):
        out, report = apply_condition(recs, cond, TEMPLATE)
        assert report["n"] == 10, cond.name
        assert report["skipped"]["missing_field"] == 2
        assert report["skipped_ids"] == ["r02", "r05"]
        assert {"r02", "r05"}.isdisjoint(r["id"] for r in out)


def test_conflict_without_other_class_or_class_is_skipped():
    recs = make_records()
    for r in recs[1:]:
        r["label"] = "cloud"
    recs[0]["label"] = "fire"
    del recs[3]["label"]
    # r00 is the only "fire" record, r03 has no class (so it cannot donate either), and every
    # classed record says the same thing: swapping would change nothing, so no conflict exists
    for r in recs:
        if r["id"] != "r03":
            r["fields"]["observation"] = "same"
    out, report = apply_condition(
        recs, AblationCondition(name="c", conflict="observation"), TEMPLATE
    )
    assert report["skipped"] == {"missing_field": 0, "missing_class": 1, "no_other_class": 11}
    assert out == []


def test_conflict_no_other_class_when_single_class():
    recs = make_records()
    for r in recs:
        r["label"] = "cloud"
    out, report = apply_condition(recs, AblationCondition(name="c", conflict="sensor"), TEMPLATE)
    assert out == [] and report["skipped"]["no_other_class"] == 12
    assert len(report["skipped_ids"]) == 12


# ------------------------------------------------------------------------ config


def test_config_validation_errors():
    with pytest.raises(ValidationError, match="sets drop and noise"):
        AblationCondition(name="x", drop="sensor", noise="sensor")
    with pytest.raises(ValidationError):
        AblationCondition(name="bad name")
    with pytest.raises(ValidationError):
        AblationCondition(name="x", dorp="sensor")
    conds = [{"name": "full"}, {"name": "a", "drop": "sensor"}, {"name": "a", "noise": "region"}]
    with pytest.raises(ValidationError, match="unique; repeated: a"):
        AblationConfig(template=TEMPLATE, conditions=conds)
    with pytest.raises(SpecializeError, match="repeated: a") as e:
        load_ablation_config({"template": TEMPLATE, "conditions": conds})
    assert e.value.field == "eval.ablations"
    with pytest.raises(SpecializeError, match="at most one") as e:
        load_ablation_config(
            {
                "template": TEMPLATE,
                "conditions": [{"name": "f"}, {"name": "x", "drop": "a", "conflict": "b"}],
            }
        )
    assert e.value.field == "eval.ablations.conditions.1"
    with pytest.raises(SpecializeError, match="not a plain field name"):
        load_ablation_config({"template": "Sensor: {0}", "conditions": [{"name": "full"}]})
    with pytest.raises(SpecializeError, match="does not use"):
        load_ablation_config(
            {"template": TEMPLATE, "conditions": [{"name": "f"}, {"name": "x", "drop": "band"}]}
        )
    with pytest.raises(SpecializeError, match="must be the full one"):
        load_ablation_config(
            {"template": TEMPLATE, "conditions": [{"name": "x", "drop": "sensor"}]}
        )


def test_build_conditions_from_config():
    cfg = load_ablation_config(
        {
            "template": TEMPLATE,
            "keep_system": False,
            "conditions": [
                {"name": "full"},
                {"name": "no_sensor", "drop": "sensor"},
                {"name": "noise_obs", "noise": "observation"},
                {"name": "conflict_obs", "conflict": "observation"},
            ],
        }
    )
    assert [c.kind for c in cfg.conditions] == ["full", "drop", "noise", "conflict"]
    built = build_conditions(make_records(), cfg)
    assert list(built) == ["full", "no_sensor", "noise_obs", "conflict_obs"]
    for name, (recs, report) in built.items():
        assert report["n"] == 12 and report["condition"] == name
        assert all(r["messages"][0]["role"] == "user" for r in recs)


# ------------------------------------------------------------------------ analysis


def test_conflict_following_hand_checked():
    records = [
        {"id": "a", "label": "fire", "conflict_label": "flood"},
        {"id": "b", "label": "fire", "conflict_label": "cloud"},
        {"id": "c", "label": "flood", "conflict_label": "fire"},
        {"id": "d", "label": "cloud", "conflict_label": "fire"},
        {"id": "e", "label": "cloud", "conflict_label": "flood"},
        {"id": "f", "label": "flood", "conflict_label": "cloud"},
        {"id": "g", "label": "flood", "conflict_label": "cloud"},
    ]
    preds = [
        {"id": "a", "parsed": "fire"},  # evidence
        {"id": "b", "parsed": "cloud"},  # conflict
        {"id": "c", "parsed": "fire"},  # conflict
        {"id": "d", "parsed": "flood"},  # other
        {"id": "e", "parsed": None},  # unparsed
        {"id": "f", "parsed": "flood"},  # evidence
    ]  # g: no prediction
    got = conflict_following(records, preds)
    assert got["n"] == 6 and got["parsed"] == 5 and got["unparsed"] == 1 and got["missing"] == 1
    assert got["followed_evidence"] == pytest.approx(2 / 5)
    assert got["followed_conflict"] == pytest.approx(2 / 5)
    assert got["other"] == pytest.approx(1 / 5)
    empty = conflict_following(records[:1], [{"id": "a", "parsed": None}])
    assert empty["followed_evidence"] is None and empty["unparsed"] == 1
    with pytest.raises(ValueError, match="conflict_label"):
        conflict_following([{"id": "x", "label": "fire"}], [])


def test_condition_table_renders_with_deltas():
    table = condition_table(
        {
            "full": {"n": 12, "accuracy": 0.75, "classification": {"macro_f1": 0.7}},
            "no_obs": {"n": 12, "accuracy": 0.5, "classification": {"macro_f1": 0.45}},
            "conflict_obs": {
                "n": 10,
                "accuracy": 0.4,
                "classification": {"macro_f1": 0.35},
                "conflict_following": {"followed_evidence": 0.4, "followed_conflict": 0.5},
            },
        }
    )
    lines = table.strip().split("\n")
    assert lines[0] == (
        "| condition | n | accuracy (%) | Δ accuracy (pp) | macro_f1 (%) | Δ macro_f1 (pp) "
        "| followed_evidence (%) | followed_conflict (%) |"
    )
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| full | 12 | 75.0 | ref | 70.0 | ref | — | — |"
    assert lines[3] == "| no_obs | 12 | 50.0 | -25.0 | 45.0 | -25.0 | — | — |"
    assert lines[4] == "| conflict_obs | 10 | 40.0 | -35.0 | 35.0 | -35.0 | 40.0 | 50.0 |"
    only_acc = condition_table({"full": {"accuracy": 0.5}, "d": {"accuracy": 0.55}})
    assert only_acc.split("\n")[0] == "| condition | accuracy (%) | Δ accuracy (pp) |"
    assert "| d | 55.0 | +5.0 |" in only_acc
    with pytest.raises(ValueError):
        condition_table({})
