"""Answer metrics, as plain functions on strings and numbers.

Exact match and token F1 follow the official SQuAD v1.1 evaluation script: lower-case, strip
punctuation, drop the articles a/an/the, collapse whitespace; F1 over the bag of remaining
tokens; the score against several references is the maximum over them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from specialize.data.text import normalize_answer

# Per-record numeric metrics that are averaged per variant and compared between variants, in
# the order reports show them.
METRICS = (
    "exact_match",
    "f1",
    "bertscore_f1",
    "accuracy",
    "loglik_accuracy",
    # tasks of the synthetic-data catalog (task_scores.py)
    "schema_valid",
    "field_f1",
    "index_accuracy",
    "judge_correctness",
    "judge_faithfulness",
    "judge_relevance",
    "judge_completeness",
)


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred)
    recall = same / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over(metric, prediction: str, references: Sequence[str]) -> float:
    """SQuAD's metric_max_over_ground_truths."""
    return max(metric(prediction, ref) for ref in references)


def perplexity(loss_sum: float, n_tokens: int) -> float:
    """exp of the token-weighted mean loss; inf when there are no tokens."""
    return math.exp(loss_sum / n_tokens) if n_tokens else math.inf


# --------------------------------------------------------------------------------------------
# Parsing a model's free-text answer into a label. Every parser returns None rather than guess:
# a wrong guess silently inflates or deflates accuracy, a None is counted and reported.
# --------------------------------------------------------------------------------------------

_MARKUP = re.compile(r"[*`]+")  # markdown bold/italic/code around an answer: **C**, `B`
# "answer is", "answer:", "final answer =", "correct option is", "correct choice:" ...
_CUE_RE = re.compile(
    r"\b(?:(?:final|correct|right|best)\s+)?answer\s*(?:is|:|=|-)\s*"
    r"|\b(?:correct|right|best)\s+(?:option|choice)\s*(?:is|:|=|-)\s*",
    re.IGNORECASE,
)
# Case matters here: a lower-case letter needs brackets or punctuation after it.
_LETTER_AFTER_CUE = re.compile(
    r"(?i:option\s+|choice\s+|letter\s+)?"
    r"(?:[(\[]\s*(?P<br>[A-Za-z])\s*[)\]]"  # (c) [C]
    r"|(?P<up>[A-Z])(?![\w'])"  # C  C.  C because
    r"|(?P<low>[a-z])(?=\s*(?:$|[.,;:!?)\]])))"  # c  c.  (not "a planet")
)
_LEADING = re.compile(
    r"^\s*(?:[(\[]\s*(?P<br>[A-Za-z])\s*[)\]]"  # (B) text, [b]
    r"|(?P<delim>[A-Za-z])\s*[.):](?=\s|$)"  # B. text, B) text, b: text
    r"|(?P<alone>[A-Za-z])\s*$)"  # the whole answer is one letter
)
_LETTER_IS_CORRECT = re.compile(
    r"^\s*(?:option\s+|choice\s+)?(?P<l>[A-Za-z])\s+is\s+(?:the\s+)?(?:correct|right|answer)\b",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"[(\[]\s*([A-Za-z])\s*[)\]]")
_STANDALONE = re.compile(r"(?<![\w'])([A-Z])(?![\w'])")
# One-letter English words that open a sentence ("A rocket...", "I think..."): not a letter pick,
# unless the next word links letters ("A and C", "A or B", "A seems right").
_WORD_LETTERS = {"A", "I"}
_LINK_WORDS = {"and", "or", "nor", "is", "was", "vs", "versus", "then", "seems", "looks"}


def _letter_set(letters: Sequence[str]) -> list[str]:
    out = [str(x).upper() for x in letters]
    if not out or any(len(x) != 1 or not x.isalpha() for x in out):
        raise ValueError(f"letters must be single alphabetic characters, got {list(letters)!r}")
    return out


def _one(found: list[str]) -> str | None:
    """The letter when every assertion agrees, None when there are none or they disagree."""
    distinct = set(found)
    return found[0] if len(distinct) == 1 else None


def _letter_of(match: re.Match[str]) -> str:
    return next(g for g in match.groups() if g is not None).upper()


def extract_choice(
    text: str,
    letters: Sequence[str] = "ABCD",
    *,
    options: Sequence[str] | None = None,
) -> str | None:
    """The option letter a model's answer picks, or None when it does not clearly pick one.

    Multiple-choice accuracy is only as good as this parser: a parser that guesses turns
    "the model rambled" into a random right or wrong answer. So rules are tried in order of how
    explicit the answer is, and a rule that finds two *different* letters returns None at once
    instead of falling through to a weaker rule. Letters outside ``letters`` are ignored.

    1. Markdown ``*`` and backticks are removed, so ``**C**`` reads as ``C``.
    2. Answer cues: "Answer: B", "The answer is (c)", "Final answer = C", "The correct option is
       B", "B is correct". After a cue an upper-case letter counts when it stands alone; a
       lower-case one only in brackets or before punctuation/end, so "the answer is a planet"
       is not read as A. All cue letters must agree.
    3. The answer starts with a letter: "B", "(B)", "[b]", "B.", "B)", "B:", "B) text",
       "B. text". A letter followed by a plain space ("A rocket...") does not count.
    4. With ``options`` (the option texts in letter order): the answer, with any answer cue
       and SQuAD normalisation (case, punctuation, articles) stripped, equals exactly one
       option text. Containment is not enough ("not Paris but London" names two).
    5. Bracketed letters anywhere ("I pick (B) here"): all must agree.
    6. Stand-alone upper-case letters anywhere ("I'd go with B"): all must agree; "A" and
       "I" are skipped where they start a sentence before a lower-case word, as English words
       ("A rocket...", "I think..."), unless that word links letters ("A or B" is ambiguous).

    Returns the upper-case letter, or None.
    """
    allowed = _letter_set(letters)
    clean = _MARKUP.sub("", text or "").strip()
    if not clean:
        return None

    # 2. explicit cues
    cued = _cued_letters(clean, allowed)
    if cued:
        return _one(cued)

    # 3. leading letter
    m = _LEADING.match(clean)
    if m and _letter_of(m) in allowed:
        return _letter_of(m)

    # 4. the answer repeats one option's text
    if options:
        if len(options) > len(allowed):
            raise ValueError(f"{len(options)} options but only {len(allowed)} letters")
        body = normalize_answer(_CUE_RE.sub(" ", clean))
        hits = [allowed[i] for i, opt in enumerate(options) if normalize_answer(opt) == body]
        if body and hits:
            return _one(hits)

    # 5. bracketed letters anywhere
    bracketed = [x.upper() for x in _BRACKETED.findall(clean) if x.upper() in allowed]
    if bracketed:
        return _one(bracketed)

    # 6. stand-alone capitals anywhere
    loose = _standalone_letters(clean, allowed)
    return _one(loose) if loose else None


def _cued_letters(clean: str, allowed: list[str]) -> list[str]:
    """Letters right after an answer cue ("Answer: B"), or before "is correct"."""
    cued: list[str] = []
    for cue in _CUE_RE.finditer(clean):
        m = _LETTER_AFTER_CUE.match(clean, cue.end())
        if m:
            letter = _letter_of(m)
            if letter in allowed:
                cued.append(letter)
    m = _LETTER_IS_CORRECT.match(clean)
    if m and m.group("l").upper() in allowed:
        cued.append(m.group("l").upper())
    return cued


def _standalone_letters(clean: str, allowed: list[str]) -> list[str]:
    """Stand-alone capitals, minus "A"/"I" used as English words at a sentence start."""
    loose: list[str] = []
    for m in _STANDALONE.finditer(clean):
        letter = m.group(1)
        if letter not in allowed:
            continue
        starts_sentence = re.fullmatch(r"(?:.*[.!?:]\s*)?", clean[: m.start()], re.DOTALL)
        next_word = re.match(r"\s+([a-z]+)", clean[m.end() :])
        as_word = next_word is not None and next_word.group(1) not in _LINK_WORDS
        if letter in _WORD_LETTERS and starts_sentence and as_word:
            continue
        loose.append(letter)
    return loose


_TRUE_WORDS = {"true": True, "yes": True, "false": False, "no": False}
_BOOL = r"(true|false|yes|no)\b"
_BOOL_LEADING = re.compile(r"^\s*(?!no\s+(?:idea|clue)\b)" + _BOOL, re.IGNORECASE)
_BOOL_CUE = re.compile(r"\banswer\s*(?:is|:|=|-)\s*" + _BOOL, re.IGNORECASE)
# "is true"/"is false" only: "there is no way" is not an answer.
_BOOL_IS = re.compile(r"\b(?:is|are)\s+(true|false)\b", re.IGNORECASE)


def extract_bool(text: str) -> bool | None:
    """True/False from an answer to a true/false or yes/no question; None when unclear.

    Only explicit forms count, because "not true" contains "true": an answer cue
    ("Answer: false", "the answer is yes") decides if present; otherwise the first word
    ("True.", "no, because ...", but not "No idea") and "is true"/"is false" phrases ("The
    statement is false") are used. Conflicting assertions give None; "is not true" is not
    matched at all.
    """
    clean = _MARKUP.sub("", text or "")
    cued = [_TRUE_WORDS[m.group(1).lower()] for m in _BOOL_CUE.finditer(clean)]
    if cued:
        return cued[0] if len(set(cued)) == 1 else None
    found = [_TRUE_WORDS[m.group(1).lower()] for m in _BOOL_LEADING.finditer(clean)]
    found += [_TRUE_WORDS[m.group(1).lower()] for m in _BOOL_IS.finditer(clean)]
    if found and len(set(found)) == 1:
        return found[0]
    return None


# A number: optional minus (not a hyphen inside "3-5"), optional $, comma-grouped or plain
# digits, optional decimals, or a simple fraction "3/4" (not a date such as "1/2/2020").
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.])-)?(?:\$\s?)?"
    r"(?P<num>\d+/\d+(?![/\d])|(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d/])|\.\d+)"
)


def _canonical_number(raw: str) -> str | None:
    """'1,234.50' -> '1234.5', '3.0' -> '3', '.5' -> '0.5', '3/4' stays '3/4'; None if not one."""
    if "/" in raw:
        return raw if _as_fraction(raw) is not None else None
    value = _as_decimal(raw)
    if value is None:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_final_number(text: str) -> str | None:
    """The final numeric answer, GSM8K style, as a canonical string; None if there is none.

    The first number after the last ``####`` when the text has one (the GSM8K reference and
    prompt convention), else the last number in the text (models often end with the result).
    Commas, ``$``, ``%`` and a trailing full stop are stripped and trailing zeros dropped, so
    "$1,234.50." gives "1234.5" and "3.0" gives "3"; compare results with
    :func:`numbers_equal`, which is exact for decimals and fractions.
    """
    if not text:
        return None
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = _NUMBER.search(tail)
        matches = [m] if m else []
    else:
        matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    negative = m.group("sign") is not None
    canon = _canonical_number(m.group("num"))
    if canon is None:
        return None
    if negative and canon != "0":
        canon = "-" + canon
    return canon


def _strip_number(value: str) -> str:
    s = value.strip().replace(",", "").replace("$", "").rstrip("%").rstrip(".").strip()
    return s[1:] if s.startswith("+") else s


def _as_decimal(value: str) -> Decimal | None:
    try:
        d = Decimal(_strip_number(value))
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def _as_fraction(value: str) -> Fraction | None:
    """Exact value of "3", "-2.50", "$1,200", "3/4"; None when it is not a finite number."""
    s = _strip_number(value)
    if "/" in s:
        num, _, den = s.partition("/")
        a, b = _as_decimal(num), _as_decimal(den)
        if a is None or b is None or b == 0:
            return None
        return Fraction(a) / Fraction(b)
    d = _as_decimal(s)
    return None if d is None else Fraction(d)


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact numeric equality of two number strings ("3" == "3.0" == "6/2" == "3.00").

    Compared as :class:`fractions.Fraction` built from :class:`decimal.Decimal`, never as
    floats, so "0.1" + rounding error cannot make two different answers equal. None (no
    answer parsed) and anything that is not a number are never equal to anything.
    """
    if a is None or b is None:
        return False
    fa, fb = _as_fraction(a), _as_fraction(b)
    return fa is not None and fb is not None and fa == fb


NONE_COLUMN = "(none)"


def classification_report(
    y_true: Sequence[str],
    y_pred: Sequence[str | None],
    labels: Sequence[str] | None = None,
) -> dict:
    """Accuracy, per-class precision/recall/F1, macro-F1 and a confusion matrix.

    A prediction of None means the answer could not be parsed (see :func:`extract_choice`); it
    counts as wrong, is counted in ``unparsed`` and lands in the confusion column "(none)", so
    a model that stops answering in the expected format cannot hide behind a smaller
    denominator. Conventions (sklearn's ``zero_division=0``): precision of a class that was
    never predicted is 0, recall of a class with no support is 0, F1 is 0 when both are 0.
    ``labels`` (default: the sorted labels seen in either list) fixes the classes reported and
    averaged over by macro-F1; a predicted value outside them counts as wrong and gets its own
    confusion column. Empty input gives zeros.

    Returns ``{"n", "accuracy", "macro_f1", "unparsed", "labels", "per_class", "confusion"}``
    where ``per_class[label] = {"precision", "recall", "f1", "support"}`` and
    ``confusion[true][pred] = count``.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(
            f"y_true and y_pred differ in length: {len(y_true)} vs {len(y_pred)} "
            "(one prediction per example, None where it could not be parsed)"
        )
    if labels is None:
        labels = sorted(set(y_true) | {p for p in y_pred if p is not None})
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels has duplicates: {labels!r}")
    if NONE_COLUMN in labels:
        raise ValueError(f"{NONE_COLUMN!r} is reserved for unparsed predictions, not a label")
    if NONE_COLUMN in y_pred:
        raise ValueError(f"predict None, not the string {NONE_COLUMN!r}, for an unparsed answer")
    unknown = sorted(set(y_true) - set(labels))
    if unknown:
        raise ValueError(f"y_true has labels not in labels: {unknown!r}")

    extra = sorted({p for p in y_pred if p is not None and p not in labels})
    columns = labels + extra + [NONE_COLUMN]
    confusion = {t: {c: 0 for c in columns} for t in labels}
    for t, p in zip(y_true, y_pred, strict=True):
        confusion[t][NONE_COLUMN if p is None else p] += 1

    n = len(y_true)
    correct = sum(confusion[c][c] for c in labels)
    per_class: dict[str, dict[str, float | int]] = {}
    for c in labels:
        tp = confusion[c][c]
        support = sum(confusion[c].values())
        predicted = sum(confusion[t][c] for t in labels)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    macro = sum(v["f1"] for v in per_class.values()) / len(labels) if labels else 0.0
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "macro_f1": macro,
        "unparsed": sum(1 for p in y_pred if p is None),
        "labels": labels,
        "per_class": per_class,
        "confusion": confusion,
    }


def multiple_choice_loglik(
    option_logprobs: Sequence[float],
    option_lengths: Sequence[int],
    normalize: bool = True,
) -> int:
    """Index of the most likely option, scoring each by the log-probability of its tokens.

    ``option_logprobs[i]`` is the summed log-prob of option i's continuation tokens and
    ``option_lengths[i]`` their number. Summed log-prob favours short options (every token
    costs probability), so by default the score is divided by the token count (lm-eval's
    ``acc_norm`` divides by characters instead; pass per-character lengths for that). Ties go
    to the lowest index; NaN scores lose.
    """
    if len(option_logprobs) != len(option_lengths):
        raise ValueError(f"{len(option_logprobs)} log-probs but {len(option_lengths)} lengths")
    if not option_logprobs:
        raise ValueError("no options to choose from")
    scores = []
    for lp, n in zip(option_logprobs, option_lengths, strict=True):
        if normalize:
            if n <= 0:
                raise ValueError(f"option length must be positive to normalise, got {n}")
            lp = lp / n
        scores.append(-math.inf if math.isnan(lp) else lp)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
