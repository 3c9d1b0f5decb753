r"""Chat formats: one function turns a conversation into token ids and the mask to train on.

:func:`render_conversation` is the single sample contract of specialize. The mask is True on
the tokens the loss sees: every assistant message's content *and* the token that ends the turn
(so the model learns to stop), never the system or user turns or the role headers in front of
an assistant message.

Worked example (ChatML, the bundled SmolLM2-135M-Instruct tokenizer)::

    messages = [{"role": "system", "content": "You are a space systems expert. ..."},
                {"role": "user", "content": "What is a geostationary orbit?"},
                {"role": "assistant", "content": "An orbit at 35,786 km."}]

    text: <|im_start|>system\n...<|im_end|>\n<|im_start|>user\nWhat is a geostationary
          orbit?<|im_end|>\n<|im_start|>assistant\nAn orbit at 35,786 km.<|im_end|>\n

    ids (tail):  1            520   9531    198  2089  8591    418  216  35 37 28 39 40 38
    token:       <|im_start|> ass   istant  \n   An    " orbit" " at" " " 3  5  ,  7  8  6
    mask:        0            0     0       0    1     1       1     1   1  1  1  1  1  1

    ids (cont.): 6381   30   2           198
    token:       " km"  .    <|im_end|>  \n
    mask:        1      1    1           0

Formats:

* ``chatml``: ``<|im_start|>{role}\n{content}<|im_end|>\n``; stop token ``<|im_end|>``.
* ``harmony`` (gpt-oss): ``<|start|>{role}<|message|>{content}<|end|>``; the caller's system
  message becomes the developer message (``# Instructions``), a harmony system header is
  prepended, and an assistant turn is ``<|start|>assistant<|channel|>final<|message|>...``
  ending in ``<|return|>`` when it is the last turn (``<|end|>`` before that). The channel
  header is trained together with the content, since at inference the model writes it after
  the ``<|start|>assistant`` prompt.
* ``template``: the tokenizer's own Jinja chat template; assistant spans are found by rendering
  each prefix of the conversation, so the template must render earlier turns the same way
  whatever follows them (most do; templates that rewrite history are rejected).

Before training, :func:`check_format` verifies that a format fits the tokenizer: the format's
control markers must be single special tokens, the ids must decode back to the rendered text,
and every example must have at least one trained token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from specialize.errors import SpecializeError

Message = dict[str, Any]

CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")
HARMONY_MARKERS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>")
HARMONY_SYSTEM = (
    "You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\n\nReasoning: {effort}\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message."
)


@dataclass(frozen=True)
class Rendered:
    """A conversation as text, token ids and the train mask (one bool per id)."""

    text: str
    input_ids: list[int]
    mask: list[bool]

    @property
    def n_trained(self) -> int:
        return sum(self.mask)


# ------------------------------------------------------------------------------ text segments
# Each format renders to (text, trainable?) segments; tokenisation happens once on the joined
# text, and a token is trained when its first character lies in a trainable segment. Joint
# tokenisation keeps ids identical to what the tokenizer gives at inference time.

Segment = tuple[str, bool]


def _chatml_segments(messages: Sequence[Message], add_generation_prompt: bool) -> list[Segment]:
    out: list[Segment] = []
    for m in messages:
        is_asst = m["role"] == "assistant"
        out.append((f"<|im_start|>{m['role']}\n", False))
        out.append((m["content"], is_asst))
        out.append(("<|im_end|>", is_asst))
        out.append(("\n", False))
    if add_generation_prompt:
        out.append(("<|im_start|>assistant\n", False))
    return out


def _harmony_segments(
    messages: Sequence[Message], add_generation_prompt: bool, effort: str = "low"
) -> list[Segment]:
    out: list[Segment] = [
        (f"<|start|>system<|message|>{HARMONY_SYSTEM.format(effort=effort)}<|end|>", False)
    ]
    last_asst = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "system":
            out.append((f"<|start|>developer<|message|># Instructions\n\n{content}<|end|>", False))
        elif role == "user":
            out.append((f"<|start|>user<|message|>{content}<|end|>", False))
        elif role == "assistant":
            end = "<|return|>" if i == last_asst and not add_generation_prompt else "<|end|>"
            out.append(("<|start|>assistant", False))
            out.append(("<|channel|>final<|message|>", True))
            out.append((content, True))
            out.append((end, True))
        else:
            raise SpecializeError(f"harmony has no role '{role}'", field="messages.role")
    if add_generation_prompt:
        out.append(("<|start|>assistant", False))
    return out


def _template_segments(
    messages: Sequence[Message], tokenizer: Any, add_generation_prompt: bool
) -> list[Segment]:
    if not getattr(tokenizer, "chat_template", None):
        raise SpecializeError(
            "chat.format 'template' but the tokenizer has no chat template; use chatml or harmony",
            field="chat.format",
        )

    def apply(msgs: Sequence[Message], gen: bool) -> str:
        return tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=gen)

    full = apply(messages, add_generation_prompt)
    segments: list[Segment] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        head = apply(messages[:i], True)
        upto = apply(messages[: i + 1], False)
        if not (upto.startswith(head) and full.startswith(upto) and head.startswith(full[:pos])):
            raise SpecializeError(
                "the tokenizer's chat template renders earlier turns differently depending on "
                "what follows, so assistant tokens cannot be located; use chatml or harmony",
                field="chat.format",
            )
        turn = upto[len(head) :]
        start = turn.find(m["content"])
        if start < 0:
            raise SpecializeError(
                "the chat template does not reproduce the assistant message verbatim",
                field="chat.format",
            )
        end = start + len(m["content"])
        marker = _first_special(turn[end:], tokenizer)
        if marker is None:
            raise SpecializeError(
                "the chat template closes the assistant turn with no special token, so the "
                "model could never learn to stop; use chatml or harmony",
                field="chat.format",
            )
        stop_at = end + turn[end:].find(marker) + len(marker)
        segments.append((full[pos : len(head)], False))
        segments.append((turn[:start], False))  # generation headers the template adds
        segments.append((turn[start:stop_at], True))
        pos = len(head) + stop_at
    segments.append((full[pos:], False))
    return [s for s in segments if s[0]]


def _first_special(text: str, tokenizer: Any) -> str | None:
    best: tuple[int, str] | None = None
    for tok in tokenizer.all_special_tokens:
        idx = text.find(tok)
        if idx >= 0 and (best is None or idx < best[0]):
            best = (idx, tok)
    return best[1] if best else None


def segments(
    messages: Sequence[Message], tokenizer: Any, fmt: str, add_generation_prompt: bool = False
) -> list[Segment]:
    if fmt == "chatml":
        return _chatml_segments(messages, add_generation_prompt)
    if fmt == "harmony":
        return _harmony_segments(messages, add_generation_prompt)
    if fmt == "template":
        return _template_segments(messages, tokenizer, add_generation_prompt)
    raise SpecializeError(f"unknown chat format '{fmt}'", field="chat.format")


# ---------------------------------------------------------------------------------- public API


def render_conversation(messages: Sequence[Message], tokenizer: Any, fmt: str) -> Rendered:
    """Render a whole conversation to ``Rendered(text, input_ids, mask)`` for training."""
    return _tokenize(segments(messages, tokenizer, fmt), tokenizer)


def render_prompt(messages: Sequence[Message], tokenizer: Any, fmt: str) -> list[int]:
    """Ids of the conversation so far plus the assistant header: the generation prompt."""
    return _tokenize(
        segments(messages, tokenizer, fmt, add_generation_prompt=True), tokenizer
    ).input_ids


def _tokenize(segs: list[Segment], tokenizer: Any) -> Rendered:
    text = "".join(s for s, _ in segs)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    trainable = bytearray(len(text))
    pos = 0
    for s, train in segs:
        if train:
            trainable[pos : pos + len(s)] = b"\x01" * len(s)
        pos += len(s)
    mask = [bool(trainable[a]) if a < len(text) else False for a, _ in enc["offset_mapping"]]
    return Rendered(text=text, input_ids=list(enc["input_ids"]), mask=mask)


def stop_token_ids(tokenizer: Any, fmt: str) -> list[int]:
    """Token ids that end an assistant turn in this format (generation stops at any)."""
    if fmt == "chatml":
        names = ["<|im_end|>"]
    elif fmt == "harmony":
        names = ["<|return|>", "<|end|>", "<|call|>"]
    else:
        names = []
        probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        for text, train in _template_segments(probe, tokenizer, False):
            if train:
                marker = _first_special(text, tokenizer)
                if marker:
                    names.append(marker)
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for name in names:
        tid = tokenizer.convert_tokens_to_ids(name)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(ids)


def markers(fmt: str) -> tuple[str, ...]:
    return {"chatml": CHATML_MARKERS, "harmony": HARMONY_MARKERS}.get(fmt, ())


def check_format(
    tokenizer: Any, fmt: str, conversations: Sequence[Sequence[Message]], where: str = "data"
) -> None:
    """Stop with a clear error if ``fmt`` cannot be expressed by ``tokenizer``.

    Checks, in order: each control marker of the format is one special token of the
    tokenizer; each conversation's ids decode back to its rendered text; each conversation
    has at least one trained token. One seed trained ChatML strings on a tokenizer that did
    not know them: the markers became ordinary word pieces and the model never learned to
    stop. This catches that before a single step is taken.
    """
    special = set(tokenizer.all_special_tokens) | {
        t.content if hasattr(t, "content") else str(t)
        for t in getattr(tokenizer, "added_tokens_decoder", {}).values()
    }
    for marker in markers(fmt):
        ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(ids) != 1 or marker not in special:
            raise SpecializeError(
                f"chat format '{fmt}' needs '{marker}' as one special token, but this tokenizer "
                f"splits it into {len(ids)} tokens; pick the format the model was trained with "
                f"(chat.format: template uses the tokenizer's own)",
                field="chat.format",
            )
    for n, conv in enumerate(conversations):
        r = render_conversation(conv, tokenizer, fmt)
        back = tokenizer.decode(
            r.input_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if back != r.text:
            raise SpecializeError(
                f"conversation {n}: token ids do not decode back to the rendered text under "
                f"chat format '{fmt}' (got {back[:60]!r}...)",
                path=where,
                field="chat.format",
            )
        if r.n_trained == 0:
            raise SpecializeError(
                f"conversation {n} has no trained token under chat format '{fmt}'",
                path=where,
                field="chat.format",
            )
