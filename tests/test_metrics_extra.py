"""Answer parsers and label metrics, on hand-checked cases.

The parsers' main promise is to return None rather than guess, so the ambiguous cases matter
as much as the easy ones.
"""

from __future__ import annotations

import math

import pytest

from specialize.evaluate.metrics import (
    classification_report,
    extract_bool,
    extract_choice,
    extract_final_number,
    multiple_choice_loglik,
    numbers_equal,
)

# --- extract_choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the forms a model answers in
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("[c]", "C"),
        ("B.", "B"),
        ("B)", "B"),
        ("B) Paris", "B"),
        ("B. Paris is the capital", "B"),
        ("D: none of the above", "D"),
        ("  C  \n", "C"),
        ("Answer: B", "B"),
        ("answer: A", "A"),
        ("Answer: (B) Paris", "B"),
        ("The answer is (c)", "C"),
        ("The answer is c.", "C"),
        ("The correct option is D because it is the only one in orbit", "D"),
        ("Final answer = D", "D"),
        ("I believe the answer is B", "B"),
        ("**C**", "C"),
        ("Answer: **B**", "B"),
        ("`A`", "A"),
        ("A is correct", "A"),
        ("Option B", "B"),
        ("C is the answer", "C"),
        ("I think (B) is right", "B"),
        ("I'd go with B", "B"),
        ("I think A", "A"),  # "I" is a word here, "A" is not
        # a cue beats letters mentioned while reasoning
        ("Option A is wrong since it is too low. The answer is C", "C"),
        ("The answer is B. Not C.", "B"),
        # nothing, or nothing clear: None, never a guess
        ("", None),
        ("   ", None),
        ("I don't know", None),
        ("The answer is a planet", None),  # the article, not option A
        ("A rocket engine", None),  # ditto
        ("B.C. was a long time ago", None),  # "B." followed by "C", not a space
        ("Between (A) and (C), hard to say", None),
        ("A and C", None),
        ("Either A or B", None),
        ("The answer is A. No wait, the answer is B", None),  # two cues disagree
        ("Answer: E", None),  # not one of the letters
        ("E", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


def test_extract_choice_other_letters() -> None:
    assert extract_choice("E", letters="ABCDE") == "E"
    assert extract_choice("(e) Jupiter", letters=["a", "b", "c", "d", "e"]) == "E"
    assert extract_choice("D", letters="ABC") is None
    with pytest.raises(ValueError, match="single alphabetic"):
        extract_choice("A", letters=["AB", "C"])


OPTIONS = ["London", "Paris", "Rome", "Berlin"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris", "B"),
        ("paris.", "B"),
        ("The answer is Paris.", "B"),
        ("Answer: Rome", "C"),
        ("B) Paris", "B"),  # the letter form still works with options
        ("C", "C"),
        ("Not Paris but London", None),  # containment is not enough: names two
        ("Madrid", None),
        ("It is in France", None),
    ],
)
def test_extract_choice_by_option_text(text: str, expected: str | None) -> None:
    assert extract_choice(text, options=OPTIONS) == expected


def test_extract_choice_option_text_starting_with_article() -> None:
    # "A rocket engine" is not letter A, but it is the text of option A here
    options = ["A rocket engine", "Reaction wheels"]
    assert extract_choice("A rocket engine", letters="AB", options=options) == "A"
    assert extract_choice("reaction wheels", letters="AB", options=options) == "B"
    # two options that normalise alike (articles dropped): ambiguous
    assert extract_choice("moon", letters="AB", options=["the Moon", "Moon"]) is None
    with pytest.raises(ValueError, match="options"):
        extract_choice("x", letters="AB", options=["a", "b", "c"])


# --- extract_bool --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("True", True),
        ("true.", True),
        ("false.", False),
        ("FALSE", False),
        ("Yes", True),
        ("yes, because the orbit is polar", True),
        ("No", False),
        ("No, it is geostationary", False),
        ("**True**", True),
        ("The statement is false.", False),
        ("Answer: yes", True),
        ("I think the answer is False", False),
        ("The claim is true, so the answer is true", True),
        # unclear or contradictory: None
        ("", None),
        ("maybe", None),
        ("It is not true", None),  # only explicit forms; "not true" is not read as True
        ("No idea", None),
        ("There is no way to know", None),
        ("Yes, it is false", None),
        ("Noted, thanks", None),  # "no" must be a whole word
        ("Answer: yes. Answer: no", None),
    ],
)
def test_extract_bool(text: str, expected: bool | None) -> None:
    assert extract_bool(text) is expected


# --- extract_final_number / numbers_equal --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#### 72", "72"),
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("5 + 3 = 8 #### 1,234", "1234"),  # after ####, not the last number overall
        ("#### 72 #### 73", "73"),  # the last ####
        ("#### 18 dollars, from 9 * 2", "18"),  # first number after ####
        ("So the total is 12 apples.", "12"),
        ("He pays $1,234.50.", "1234.5"),
        ("3.0", "3"),
        ("The answer is 3.50.", "3.5"),
        ("0.250", "0.25"),
        (".5", "0.5"),
        ("The temperature fell to -5 degrees", "-5"),
        ("#### -$3", "-3"),
        ("-0", "0"),
        ("pages 3-5", "5"),  # a hyphen between numbers is not a minus
        ("50% of them", "50"),
        ("It costs $ 5.00.", "5"),
        ("about 3/4 of it", "3/4"),
        ("on 1/2/2020 we had 7", "7"),  # a date is not a fraction
        ("1,2,3", "3"),  # a list, not 123
        ("100", "100"),  # no exponent form such as 1E+2
        ("1200", "1200"),
        ("", None),
        ("no number here", None),
        ("#### none", None),  # after ####: none, and earlier numbers are not used
    ],
)
def test_extract_final_number(text: str, expected: str | None) -> None:
    assert extract_final_number(text) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("3", "3.0", True),
        ("3", "3.00", True),
        ("3.5", "3.50", True),
        ("1,000", "1000", True),
        ("$5", "5", True),
        ("0.75", "3/4", True),
        ("6/2", "3", True),
        ("-2", "-2.0", True),
        ("1/3", "0.3333333333", False),  # exact, not float-close
        ("0.1", "0.10000001", False),
        ("3", "4", False),
        ("3", "-3", False),
        (None, None, False),  # nothing parsed is never right
        (None, "3", False),
        ("3", None, False),
        ("abc", "abc", False),  # not a number
        ("1/0", "1/0", False),
        ("nan", "nan", False),
    ],
)
def test_numbers_equal(a: str | None, b: str | None, equal: bool) -> None:
    assert numbers_equal(a, b) is equal
    assert numbers_equal(b, a) is equal


def test_extract_then_compare_like_gsm8k() -> None:
    reference = "Natalia sold 48/2 = 24 clips in May.\n#### 72"
    assert numbers_equal(
        extract_final_number("So she sold 72.0 clips."), extract_final_number(reference)
    )
    assert not numbers_equal(extract_final_number("I can't tell."), extract_final_number(reference))


# --- classification_report -----------------------------------------------------------------------


def test_classification_report_hand_checked() -> None:
    y_true = ["A", "A", "B", "B", "C"]
    y_pred = ["A", "B", "B", None, "B"]
    r = classification_report(y_true, y_pred)
    assert r["labels"] == ["A", "B", "C"]
    assert r["n"] == 5
    assert r["unparsed"] == 1
    assert r["accuracy"] == pytest.approx(2 / 5)  # A->A and B->B
    # A: predicted once (correctly): P = 1/1; support 2: R = 1/2; F1 = 2*1*(1/2)/(3/2) = 2/3
    assert r["per_class"]["A"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    # B: predicted 3 times (A->B, B->B, C->B), 1 right: P = 1/3; support 2: R = 1/2;
    # F1 = 2*(1/3)*(1/2)/(1/3+1/2) = (1/3)/(5/6) = 2/5
    assert r["per_class"]["B"] == pytest.approx(
        {"precision": 1 / 3, "recall": 0.5, "f1": 2 / 5, "support": 2}
    )
    # C: never predicted: precision 0 by convention; recall 0/1; F1 0
    assert r["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 5 + 0) / 3)  # = 16/45
    assert r["confusion"] == {
        "A": {"A": 1, "B": 1, "C": 0, "(none)": 0},
        "B": {"A": 0, "B": 1, "C": 0, "(none)": 1},
        "C": {"A": 0, "B": 1, "C": 0, "(none)": 0},
    }


def test_classification_report_fixed_labels_and_outside_prediction() -> None:
    r = classification_report(["yes", "no", "no"], ["maybe", "no", "no"], labels=["yes", "no"])
    assert r["labels"] == ["yes", "no"]
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["unparsed"] == 0
    # "maybe" is wrong and gets its own column; "yes" was never predicted: P = 0, R = 0/1
    assert r["confusion"]["yes"] == {"yes": 0, "no": 0, "maybe": 1, "(none)": 0}
    assert r["per_class"]["yes"]["f1"] == 0.0
    assert r["per_class"]["no"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert r["macro_f1"] == pytest.approx(0.5)


def test_classification_report_label_without_support_counts_in_macro() -> None:
    r = classification_report(["A", "A"], ["A", "A"], labels=["A", "B"])
    assert r["accuracy"] == 1.0
    assert r["per_class"]["B"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert r["macro_f1"] == pytest.approx(0.5)


def test_classification_report_all_unparsed_and_empty() -> None:
    r = classification_report(["A", "B"], [None, None])
    assert r["accuracy"] == 0.0 and r["unparsed"] == 2 and r["macro_f1"] == 0.0
    assert r["confusion"]["A"]["(none)"] == 1
    empty = classification_report([], [])
    assert empty["n"] == 0 and empty["accuracy"] == 0.0 and empty["macro_f1"] == 0.0


def test_classification_report_errors() -> None:
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        classification_report(["A", "B"], ["A"])
    with pytest.raises(ValueError, match="not in labels"):
        classification_report(["A", "C"], ["A", "A"], labels=["A", "B"])
    with pytest.raises(ValueError, match="reserved"):
        classification_report(["A"], ["(none)"])
    with pytest.raises(ValueError, match="duplicates"):
        classification_report(["A"], ["A"], labels=["A", "A"])


# --- multiple_choice_loglik ----------------------------------------------------------------------


def test_multiple_choice_loglik_normalisation_changes_the_pick() -> None:
    logprobs, lengths = [-4.0, -6.0, -9.0], [1, 3, 6]
    # summed: -4 > -6 > -9 -> option 0; per token: -4, -2, -1.5 -> option 2
    assert multiple_choice_loglik(logprobs, lengths, normalize=False) == 0
    assert multiple_choice_loglik(logprobs, lengths) == 2


def test_multiple_choice_loglik_ties_nan_and_errors() -> None:
    assert multiple_choice_loglik([-2.0, -2.0], [1, 1]) == 0  # tie: lowest index
    assert multiple_choice_loglik([-1.0, -4.0], [1, 2], normalize=False) == 0
    assert multiple_choice_loglik([math.nan, -50.0], [1, 1]) == 1  # NaN loses
    with pytest.raises(ValueError, match="3 log-probs but 2 lengths"):
        multiple_choice_loglik([-1.0, -2.0, -3.0], [1, 2])
    with pytest.raises(ValueError, match="no options"):
        multiple_choice_loglik([], [])
    with pytest.raises(ValueError, match="positive"):
        multiple_choice_loglik([-1.0, -2.0], [1, 0])
    assert multiple_choice_loglik([-1.0, -2.0], [1, 0], normalize=False) == 0
