"""Config errors that help: names from other tools, sections of the wrong shape, broken files.

Each case is a real YAML file in tmp_path, loaded by load_config; the error must name the YAML
line and field and say what to write instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from specialize.config import load_config
from specialize.errors import SpecializeError

DATA = "data: {path: x.jsonl}\n"


def error_of(tmp_path: Path, text: str | bytes, overrides: dict | None = None) -> str:
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(SpecializeError) as e:
        load_config(p, overrides)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(p)), msg
    return msg.removeprefix(str(p))


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        # Axolotl / TRL / LLaMA-Factory / TrainingArguments names, in the right section
        (
            "train: {learning_rate: 1.0e-4}",
            ":2 field 'train.learning_rate': unknown key; did you mean 'lr'?",
        ),
        ("train: {lerning_rate: 1.0e-4}", "did you mean 'lr'?"),
        ("train: {num_train_epochs: 3}", "did you mean 'epochs'?"),
        ("train: {per_device_train_batch_size: 4}", "did you mean 'batch_size'?"),
        ("train: {gradient_accumulation_steps: 4}", "did you mean 'grad_accum'?"),
        ("train: {lr_scheduler_type: linear}", "did you mean 'scheduler'?"),
        ("train: {bf16: true}", "did you mean 'mixed_precision: bf16'?"),
        ("lora: {lora_r: 8}", "did you mean 'r'?"),
        ("lora: {lora_alpha: 16}", "did you mean 'alpha'?"),
        ("lora: {lora_dropout: 0.1}", "did you mean 'dropout'?"),
        ("lora: {target_modules: [q_proj]}", "did you mean 'targets'?"),
        ("lora: {load_in_4bit: true}", "did you mean 'quantize: nf4'?"),
        ("eval: {per_device_eval_batch_size: 8}", "did you mean 'batch_size'?"),
        # ... at the top level, as Axolotl writes them: the section is part of the answer
        (
            "learning_rate: 0.0002",
            ":2 field 'learning_rate': unknown key; did you mean 'train.lr'?",
        ),
        ("lerning_rate: 0.0002", "did you mean 'train.lr'?"),
        ("num_epochs: 3", "did you mean 'train.epochs'?"),
        ("micro_batch_size: 2", "did you mean 'train.batch_size'?"),
        ("gradient_accumulation_steps: 4", "did you mean 'train.grad_accum'?"),
        ("lora_r: 8", "did you mean 'lora.r'?"),
        ("r: 8", "did you mean 'lora.r'?"),
        ("lora_alpha: 16", "did you mean 'lora.alpha'?"),
        ("lora_dropout: 0.05", "did you mean 'lora.dropout'?"),
        ("target_modules: [q_proj, v_proj]", "did you mean 'lora.targets'?"),
        ("lora_target_linear: true", "did you mean 'lora.targets: all-linear'?"),
        ("max_seq_length: 2048", "did you mean 'chat.max_seq_len'?"),
        ("sequence_len: 2048", "did you mean 'chat.max_seq_len'?"),
        ("cutoff_len: 1024", "did you mean 'chat.max_seq_len'?"),
        ("warmup_ratio: 0.1", "did you mean 'train.warmup_ratio'?"),
        ("lr_scheduler_type: cosine", "did you mean 'train.scheduler'?"),
        ("base_model: HuggingFaceTB/SmolLM2-135M", "did you mean 'model.base'?"),
        ("model_name_or_path: x", "did you mean 'model.base'?"),
        ("dataset: x.jsonl", "did you mean 'data.path'?"),
        ("datasets: [{path: x.jsonl}]", "did you mean 'data.path'?"),
        ("bf16: true", "did you mean 'train.mixed_precision: bf16'?"),
        ("load_in_4bit: true", "did you mean 'lora.quantize: nf4'?"),
        ("adapter: qlora", "did you mean 'lora.quantize: nf4'?"),
        ("stage: pt", "did you mean 'mode: cpt'?"),
        ("optimizer: adamw_torch", "specialize always trains with AdamW"),
        # our own names in the wrong section
        ("train: {lora_r: 8}", ":2 field 'train.lora_r': unknown key; did you mean 'lora.r'?"),
        ("train: {r: 8}", "did you mean 'lora.r'?"),
        ("lora: {lr: 0.001}", "did you mean 'train.lr'?"),
        ("seed: 3", "did you mean 'train.seed'?"),
        ("train: {output_dir: runs}", "did you mean 'output_dir' (at the top level)?"),
        # plain misspellings still work, and prefer a shared word
        ("lora: {alpah: 16}", "did you mean 'alpha'?"),
        ("train: {max_step: 10}", "did you mean 'max_steps'?"),
        ("train: {grad_acum: 2}", "did you mean 'grad_accum'?"),
        ("eval: {max_tokens: 32}", "did you mean 'max_new_tokens'?"),
        ("trian: {lr: 0.1}", "did you mean 'train'?"),
        ("training: {lr: 0.1}", "did you mean 'train'?"),
        ("xyzzy: 1", "unknown key; valid keys: name, mode, output_dir, model,"),
    ],
)
def test_names_from_other_tools_get_ours(tmp_path, yaml_text, expected):
    assert expected in error_of(tmp_path, DATA + yaml_text + "\n")


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "model: bundled:smollm2-135m-instruct",
            ":2 field 'model': expected a mapping like 'model: {base: ...}' (fields: base, "
            "dtype), got 'bundled:smollm2-135m-instruct'; did you mean "
            "'model: {base: bundled:smollm2-135m-instruct}'?",
        ),
        ("model:\n  - bundled:x", ":2 field 'model': expected a mapping like 'model: {base: "),
        ("model: [a, b]", "(fields: base, dtype), got a list"),
        ("chat: chatml", "got 'chatml'; did you mean 'chat: {format: chatml}'?"),
        ("eval: false", "got false; did you mean 'eval: {enabled: false}'?"),
        ("train: 3", "expected a mapping like 'train: {epochs: ...}' (fields: epochs, max_steps,"),
        ("lora:", ":2 field 'lora': expected a mapping like 'lora: {r: ...}'"),
        ("lora:\n  r: {value: 8}", ":3 field 'lora.r': expected an integer, got a mapping"),
        ("train:\n  lr: [0.1]", ":3 field 'train.lr': expected a number, got a list"),
        ("train:\n  lr: fast", ":3 field 'train.lr': expected a number, got 'fast'"),
        ("train:\n  lr: .nan", ":3 field 'train.lr': expected a finite number, got nan"),
        ("train:\n  lr: -1", ":3 field 'train.lr': must be greater than 0, got -1"),
        ("name: [a]", ":2 field 'name': expected a string, got a list"),
        (
            "lora: {targets: {q: 1}}",
            "field 'lora.targets': expected a string or a list, got a mapping",
        ),
        ("lora: {targets: [q_proj, 3]}", "field 'lora.targets[1]': expected a string, got 3"),
        (
            "export: {gguf: maybe}",
            "field 'export.gguf': expected true or false or 'auto', got 'maybe'",
        ),
        ("model: {dtype: fp32}", "expected one of 'float32', 'bfloat16' or 'float16', got 'fp32'"),
    ],
)
def test_wrong_shapes_say_what_is_expected(tmp_path, yaml_text, expected):
    assert expected in error_of(tmp_path, DATA + yaml_text + "\n")


def test_data_section_shapes(tmp_path):
    msg = error_of(tmp_path, "name: x\ndata: train.jsonl\n")
    assert msg.startswith(":2 field 'data': expected a mapping like 'data: {path: ...}'")
    assert msg.endswith("did you mean 'data: {path: train.jsonl}'?")
    rules = "data:\n  path: x.jsonl\n  split:\n    rules:\n      - test\n"
    msg = error_of(tmp_path, rules)
    assert msg.startswith(
        ":5 field 'data.split.rules[0]': expected a mapping like '- {where: ...}'"
    )


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01\x02binary", ":1: NUL byte at byte 1 of the line"),
        (DATA.encode() + b"name: caf\xe9\n", ":2: not valid UTF-8 at byte 10 of the line (0xe9)"),
        ("data: {path: x}\n".encode("utf-16"), ":1: the file is UTF-16"),
        (DATA.encode() + b"name: \x07\n", ":2: malformed YAML: unacceptable character #x0007"),
        (b"data: " + b"[" * 1200 + b"]" * 1200 + b"\n", ": malformed YAML: nested too deeply"),
        (
            DATA.encode() + b"train: {max_steps: " + b"9" * 5000 + b"}\n",
            ":2: malformed YAML: cannot",
        ),
        (
            DATA.encode() + b"name: 2024-13-45\n",
            ":2: malformed YAML: cannot read the value '2024-13-45'",
        ),
        (
            DATA.encode() + b"1: x\n",
            ":2 field '1': a key must be a name, but YAML reads '1' as an integer",
        ),
        (DATA.encode() + b"train: {yes: 1}\n", ":2 field 'train.yes': a key must be a name"),
        (
            DATA.encode() + b"train: {lr: 0.1}\n---\nname: x\n",
            "malformed YAML: expected a single document",
        ),
        (b"- data\n", ":1: a config must be a YAML mapping of sections"),
    ],
)
def test_broken_files_give_one_line(tmp_path, content, expected):
    assert expected in error_of(tmp_path, content)


def test_bom_and_crlf_are_accepted(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xef\xbb\xbfname: bom\r\ndata:\r\n  path: x.jsonl\r\ntrain: {lr: 0.001}\r\n")
    cfg = load_config(p)
    assert cfg.name == "bom" and cfg.data.path == "x.jsonl" and cfg.train.lr == 0.001


def test_aliases_cannot_make_the_loader_loop_or_explode(tmp_path):
    # An alias cycle, and a "billion laughs" of nested aliases: both end at once, in one line.
    msg = error_of(tmp_path, DATA + "eval: {breakdown_by: &b [*b]}\n")
    assert "field 'eval.breakdown_by[0]': expected a string, got a list" in msg
    lines = [DATA.strip(), "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    assert "field 'a0': unknown key" in error_of(tmp_path, "\n".join(lines) + "\n")


def test_override_into_a_scalar_is_an_error_not_a_crash(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(DATA + "model: {base: x}\n")
    with pytest.raises(SpecializeError) as e:
        load_config(p, {"model.base.x": 1})
    assert str(e.value) == "field '--set': cannot set 'model.base.x': 'model.base' is not a section"
