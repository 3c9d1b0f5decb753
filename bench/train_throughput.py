"""Training throughput: specialize vs TRL ``SFTTrainer`` vs the plain transformers ``Trainer``.

    .venv/bin/python bench/train_throughput.py --json bench/train_throughput.json   # full run
    .venv/bin/python bench/train_throughput.py --smoke                              # a check

The bundled model (SmolLM2-135M-Instruct), LoRA r=16 / alpha=32 / dropout 0 on every linear
layer, SFT with the loss on assistant tokens only, on one fixed, deterministic set of chat
records built from ``examples/space``: short QA records alternating with passage-continuation
records of a few hundred tokens (the script prints the length distribution). Every system
trains on the same records for the same epochs with the same learning rate, schedule and
optimizer-step size (in conversations), each in its own subprocess, so peak RSS is per system.
The parent prints real (non-pad) tokens/s, peak RSS and the final loss of each system, the
ratios, and the model FLOPs utilisation against the measured bf16 matmul peak of the machine.

Model FLOPs per real token are 4 x N (N = base parameters without the embedding matrix):
forward 2N plus the activation gradients 2N. The frozen base weights get no weight gradients
(the usual third 2N). The LoRA matrices' own FLOPs (6 x their parameters, small next to 4N)
and attention-score FLOPs are not counted, so the MFU is slightly conservative.

``final_loss`` is measured the same way for every system after training: the token-weighted
mean loss (assistant tokens, float32, eval mode) of its trained adapter on the first
``--eval-records`` training records, with ``specialize.train.loss.MaskedCausalLMLoss``. Each
system's own loss on its last optimizer step is reported as ``last_step_loss``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "examples" / "space"
MODEL = "bundled:smollm2-135m-instruct"
SYSTEMS = ("specialize", "trl", "hf_trainer_padded")
RESULT_TAG = "BENCH_RESULT "
QA_SYSTEM = "You are a space systems expert. Answer briefly and precisely."
LONG_SYSTEM = "You are a space systems expert and technical writer."
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(OFFLINE)
sys.path.insert(0, str(ROOT))


# --------------------------------------------------------------------------------------- data


def _paragraphs(text: str) -> tuple[str, list[str]]:
    """(title, body paragraphs) of one markdown document."""
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    title = next((b.lstrip("# ").strip() for b in blocks if b.startswith("#")), "")
    return title, [b for b in blocks if not b.startswith("#")]


def long_records(seed: int) -> list[dict[str, Any]]:
    """Passage-continuation records: 1-6 consecutive paragraphs in, the next paragraph out."""
    rng = random.Random(seed)
    out = []
    seen: set[tuple[str, int, int]] = set()
    for doc in sorted((SPACE / "docs").glob("*.md")):
        title, paras = _paragraphs(doc.read_text(encoding="utf-8"))
        for first in range(len(paras) - 1):
            k = min(rng.choice((1, 2, 3, 4, 5, 6)), len(paras) - 1)
            start = min(first, len(paras) - 1 - k)  # near the end: an earlier, longer window
            if (doc.stem, start, k) in seen:
                continue
            seen.add((doc.stem, start, k))
            passage = "\n\n".join(paras[start : start + k])
            user = (
                f"Here is a passage from a document titled '{title}':\n\n{passage}\n\n"
                "Write the paragraph that follows it."
            )
            out.append(
                {
                    "id": f"{doc.stem}#{start}+{k}",
                    "messages": [
                        {"role": "system", "content": LONG_SYSTEM},
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": paras[start + k]},
                    ],
                }
            )
    return out


def build_records(n: int, seed: int, tokenizer: Any, max_len: int) -> tuple[list, dict[str, int]]:
    """The fixed record set: long and QA records alternating, each list shuffled by ``seed``.

    Records whose rendered length exceeds ``max_len`` are left out of the pool (and counted)
    before the set is cut, so every system gets the same ``n`` records.
    """
    from specialize.data.read import read_records
    from specialize.models.chat import render_conversation

    qa, _ = read_records(SPACE / "qa")
    qa = [{"id": r["id"], "messages": r["messages"]} for r in qa]
    longs = long_records(seed)
    rng = random.Random(seed)
    rng.shuffle(qa)
    rng.shuffle(longs)
    skipped = {"too_long": 0}

    def fits(rec: dict[str, Any]) -> bool:
        ok = len(render_conversation(rec["messages"], tokenizer, "chatml").input_ids) <= max_len
        skipped["too_long"] += not ok
        return ok

    longs = [r for r in longs if fits(r)]
    qa = [r for r in qa if fits(r)]
    mixed: list[dict[str, Any]] = []
    for i in range(max(len(longs), len(qa))):
        mixed += [lst[i] for lst in (longs, qa) if i < len(lst)]
    if n > len(mixed):
        raise SystemExit(f"--records {n}: only {len(mixed)} records fit in --max-len {max_len}")
    return mixed[:n], skipped


def render_examples(records: list, tokenizer: Any, max_len: int) -> list:
    from specialize.data.batches import to_examples

    examples, _ = to_examples(records, tokenizer, "chatml", max_len)
    return examples


# ------------------------------------------------------------------------------ measurements


def matmul_peak_gflops(
    device: str, precision: str, size: int = 2048, seconds: float = 2.0
) -> float:
    """Best matmul rate (GFLOP/s) in the precision the systems train in (``bf16`` or
    ``fp32``) over ~``seconds`` of ``size`` x ``size`` products: the MFU's denominator."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        torch.matmul(a, b)
    sync()
    t0 = time.perf_counter()
    torch.matmul(a, b)
    sync()
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, int(seconds / 8 / one))  # ~8 timed chunks, best one taken
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or best == 0.0:
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b)
        sync()
        dt = time.perf_counter() - t0
        best = max(best, 2 * size**3 * reps / dt / 1e9)
    return best


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def common_final_loss(peft_model: Any, examples: list, pad_id: int) -> float:
    """Token-weighted mean loss on ``examples`` (float32, eval mode), the same for every system."""
    import torch

    from specialize.data.batches import collate, length_grouped_batches
    from specialize.train.loss import MaskedCausalLMLoss, evaluate_loss

    device = next(peft_model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in collate(b, pad_id).items()}
        for b in length_grouped_batches(examples, 8, 0, shuffle=False)
    ]
    with torch.autocast(device.type, enabled=False):
        sums, counts = evaluate_loss(MaskedCausalLMLoss(peft_model), batches)
    return sum(sums) / sum(counts)


def _last_logged_loss(log_history: list[dict[str, Any]]) -> float | None:
    losses = [h["loss"] for h in log_history if "loss" in h]
    return float(losses[-1]) if losses else None


# ------------------------------------------------------------------------------------ systems


def _load(settings: dict[str, Any]) -> tuple[Any, Any, list, list, list, int]:
    """Tokenizer, float32 model, records, their examples, eval examples, non-embedding params."""
    from specialize.models.load import load_model, load_tokenizer, resolve

    source = resolve(MODEL)
    tokenizer = load_tokenizer(source)
    model = load_model(source, "float32")
    records, _ = build_records(
        settings["records"], settings["seed"], tokenizer, settings["max_len"]
    )
    examples = render_examples(records, tokenizer, settings["max_len"])
    # parameters() yields a tied tensor once, so this also leaves out the (tied) output head.
    total = sum(p.numel() for p in model.parameters())
    n_nonembedding = total - model.get_input_embeddings().weight.numel()
    return tokenizer, model, records, examples, examples[: settings["eval_records"]], n_nonembedding


def _lora_settings(settings: dict[str, Any]) -> dict[str, Any]:
    return {"r": settings["lora_r"], "alpha": 2 * settings["lora_r"], "dropout": 0.0}


def run_specialize(settings: dict[str, Any]) -> dict[str, Any]:
    from specialize.config import LoraConfig, TrainConfig
    from specialize.data.batches import pack
    from specialize.train import loop
    from specialize.train.lora import apply_lora

    tokenizer, model, _, examples, eval_examples, n_ne = _load(settings)
    lora = _lora_settings(settings)
    peft_model, _ = apply_lora(
        model,
        LoraConfig(r=lora["r"], alpha=lora["alpha"], dropout=0.0, targets="all-linear"),
        settings["seed"],
    )
    row_len = settings["specialize_pack"]
    if row_len:
        # Same number of optimizer steps per epoch as the systems that batch conversations
        # (ceil(records / batch)), with about the same tokens per step: two rows per step,
        # and the longest row length <= ROW_LEN whose packing yields enough rows.
        steps = -(-len(examples) // settings["batch"])
        batch = 2
        longest = max(len(e) for e in examples)
        for length in range(row_len, longest - 1, -8):
            train = pack(examples, length, settings["seed"])
            if -(-len(train) // batch) >= steps:
                row_len = length
                break
        micro = max(1, min(settings["specialize_micro_rows"], batch))
        layout = (
            f"packed rows of <= {row_len} tokens, {batch} rows per step "
            f"({micro} per micro-batch x {batch // micro} accumulation)"
        )
    else:
        train, batch = examples, settings["batch"]
        micro = batch
        layout = f"length-grouped batches of {batch} conversations (dynamic padding)"
    cfg = TrainConfig(
        epochs=settings["epochs"],
        batch_size=micro,
        grad_accum=batch // micro,
        lr=settings["lr"],
        scheduler="cosine",
        warmup_ratio=settings["warmup_ratio"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=settings["seed"],
        mixed_precision="bf16" if settings["precision"] == "bf16" else "no",
        eval_every=10**9,
        log_every=10**9,
    )
    state = loop.setup(peft_model, train, [], cfg, pad_id=tokenizer.pad_token_id)
    t0 = time.perf_counter()
    history = loop.fit(state, progress=True)
    wall = time.perf_counter() - t0
    return {
        "real_tokens": int(history["tokens"]),
        "trained_tokens_per_epoch": sum(e.n_target for e in examples),
        "wall_s": wall,
        "steps": int(history["steps"]),
        "last_step_loss": float(history["train"][-1]["loss"]),
        "final_loss": common_final_loss(peft_model, eval_examples, tokenizer.pad_token_id),
        "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "n_nonembedding": n_ne,
        "layout": layout
        + ("; bf16 autocast" if settings["precision"] == "bf16" else "; float32")
        + "; no gradient checkpointing",
    }


def _hf_common(settings: dict[str, Any], micro: int, accum: int, out_dir: str) -> dict[str, Any]:
    import torch

    return {
        "output_dir": out_dir,
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "num_train_epochs": settings["epochs"],
        "learning_rate": settings["lr"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": settings["warmup_ratio"],  # a float < 1 is a ratio of the total steps
        "weight_decay": 0.0,
        "max_grad_norm": 1.0,
        "optim": "adamw_torch",
        "bf16": settings["precision"] == "bf16",
        # TRL's SFTConfig turns checkpointing on by default; it only costs time here.
        "activation_checkpointing": False,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": settings["seed"],
        "dataloader_num_workers": 0,
        "use_cpu": not torch.cuda.is_available(),
        "disable_tqdm": False,
    }


def _peft_config(settings: dict[str, Any]) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    lora = _lora_settings(settings)
    return PeftLoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def run_trl(settings: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from specialize.data.batches import IGNORE
    from specialize.models.chat import segments

    tokenizer, model, records, examples, eval_examples, n_ne = _load(settings)
    rows = []
    for rec in records:
        *context, answer = rec["messages"]
        prompt = "".join(s for s, _ in segments(context, tokenizer, "chatml", True))
        rows.append({"prompt": prompt, "completion": answer["content"] + "<|im_end|>"})
    mode = settings["trl_mode"]
    if mode == "packing":
        row_len = settings["specialize_pack"] or settings["max_len"]
        mean_len = sum(len(e) for e in examples) / len(examples)
        micro, accum = 1, max(1, round(settings["batch"] * mean_len / row_len))
        extra = {"packing": True, "packing_strategy": "bfd", "max_length": row_len}
        layout = f"packing (bfd) rows of {row_len} tokens, {accum} rows per step"
    else:
        micro = min(settings["trl_micro_batch"], settings["batch"])
        accum = max(1, settings["batch"] // micro)
        extra = {"padding_free": True, "max_length": None}
        layout = f"padding_free, {micro} conversations x {accum} accumulation"
    with tempfile.TemporaryDirectory() as out_dir:
        args = SFTConfig(
            **_hf_common(settings, micro, accum, out_dir),
            completion_only_loss=True,
            eos_token="<|im_end|>",
            **extra,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=_peft_config(settings),
        )
        prepared = trainer.train_dataset
        per_epoch = sum(len(ids) for ids in prepared["input_ids"])
        trained = sum(sum(t != IGNORE for t in lab[1:]) for lab in prepared["labels"])
        checkpointing = bool(trainer.args.activation_checkpointing)
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    logged = [h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h]
    peft_model = trainer.model
    return {
        "real_tokens": int(logged[-1]) if logged else round(per_epoch * settings["epochs"]),
        "trained_tokens_per_epoch": int(trained),
        "wall_s": wall,
        "steps": int(trainer.state.global_step),
        "last_step_loss": _last_logged_loss(trainer.state.log_history),
        "final_loss": common_final_loss(peft_model, eval_examples, tokenizer.pad_token_id),
        "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "n_nonembedding": n_ne,
        "layout": f"{layout}; {settings['precision']}; "
        f"gradient checkpointing {'on' if checkpointing else 'off'}; "
        "completion-only loss",
    }


def run_hf_trainer_padded(settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator

    from specialize.data.batches import IGNORE

    tokenizer, model, _, examples, eval_examples, n_ne = _load(settings)
    width, pad = settings["max_len"], tokenizer.pad_token_id
    rows = []
    for e in examples:
        n = len(e)
        rows.append(
            {
                "input_ids": torch.tensor(e.input_ids + [pad] * (width - n)),
                "attention_mask": torch.tensor([1] * n + [0] * (width - n)),
                "labels": torch.tensor(e.labels + [IGNORE] * (width - n)),
            }
        )
    micro = min(settings["hf_micro_batch"], settings["batch"])
    accum = max(1, settings["batch"] // micro)
    peft_model = get_peft_model(model, _peft_config(settings))
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(
            model=peft_model,
            args=TrainingArguments(**_hf_common(settings, micro, accum, out_dir)),
            train_dataset=rows,
            data_collator=default_data_collator,
        )
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
    real = sum(len(e) for e in examples) * settings["epochs"]
    return {
        "real_tokens": round(real),
        "trained_tokens_per_epoch": sum(e.n_target for e in examples),
        "wall_s": wall,
        "steps": int(trainer.state.global_step),
        "last_step_loss": _last_logged_loss(trainer.state.log_history),
        "final_loss": common_final_loss(peft_model, eval_examples, pad),
        "trainable_params": sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        "n_nonembedding": n_ne,
        "layout": f"every row padded to {width} tokens, {micro} rows x {accum} accumulation; "
        f"{settings['precision']}; no gradient checkpointing; full-vocabulary logits",
    }


RUNNERS = {
    "specialize": run_specialize,
    "trl": run_trl,
    "hf_trainer_padded": run_hf_trainer_padded,
}


def child_main(name: str, settings: dict[str, Any]) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    result = RUNNERS[name](settings)
    result["tokens_per_s"] = result["real_tokens"] / result["wall_s"]
    result["peak_rss_mib"] = peak_rss_mib()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------- parent


def run_child(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name]
    cmd += ["--settings", json.dumps(settings)]
    proc = subprocess.run(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, **OFFLINE}, cwd=ROOT
    )
    lines = proc.stdout.splitlines()
    found = [ln for ln in lines if ln.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not found:
        tail = "\n".join(lines[-20:])
        raise RuntimeError(f"{name} failed (exit code {proc.returncode})\n{tail}")
    return json.loads(found[-1][len(RESULT_TAG) :])


def data_summary(settings: dict[str, Any]) -> dict[str, Any]:
    from specialize.models.load import load_tokenizer, resolve

    tokenizer = load_tokenizer(resolve(MODEL))
    records, skipped = build_records(
        settings["records"], settings["seed"], tokenizer, settings["max_len"]
    )
    lengths = sorted(len(e) for e in render_examples(records, tokenizer, settings["max_len"]))
    q = statistics.quantiles(lengths, n=10, method="inclusive") if len(lengths) > 1 else lengths * 9
    return {
        "records": len(lengths),
        "long_records": sum(r["messages"][0]["content"] == LONG_SYSTEM for r in records),
        "left_out_too_long": skipped["too_long"],
        "tokens_per_epoch": sum(lengths),
        "min": lengths[0],
        "p10": round(q[0]),
        "median": round(statistics.median(lengths)),
        "mean": round(statistics.mean(lengths), 1),
        "p90": round(q[-1]),
        "max": lengths[-1],
    }


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def print_table(results: dict[str, dict[str, Any]]) -> None:
    head = (
        f"{'system':<18} {'real tokens':>11} {'trained/ep':>10} {'steps':>5} {'train s':>8} "
        f"{'tokens/s':>9} "
        f"{'final loss':>10} {'last step':>9} {'peak RSS MiB':>12} {'MFU':>7}"
    )
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(
            f"{name:<18} {r['real_tokens']:>11d} {r['trained_tokens_per_epoch']:>10d} "
            f"{r['steps']:>5d} {r['wall_s']:>8.1f} "
            f"{r['tokens_per_s']:>9.1f} {r['final_loss']:>10.4f} "
            f"{_fmt(r['last_step_loss'], '.4f'):>9} {r['peak_rss_mib']:>12.0f} "
            f"{r['mfu']:>7.2%}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=128, help="chat records in the fixed set")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the records")
    p.add_argument("--batch", type=int, default=8, help="conversations per optimizer step")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (cosine decay)")
    p.add_argument("--warmup-ratio", type=float, default=0.05, help="linear warmup share")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (alpha = 2 r)")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument(
        "--max-len", type=int, default=1024, help="sequence limit; hf_trainer_padded pads to it"
    )
    p.add_argument(
        "--eval-records", type=int, default=32, help="training records scored for final_loss"
    )
    p.add_argument(
        "--specialize-pack",
        type=int,
        default=1024,
        metavar="ROW_LEN",
        help="specialize: pack into rows of ROW_LEN tokens (0: length-grouped batches)",
    )
    p.add_argument(
        "--specialize-micro-rows",
        type=int,
        default=1,
        help="specialize: packed rows per micro-batch (the step's rows are accumulated; "
        "fewer rows per forward pass hold fewer saved activations)",
    )
    p.add_argument("--trl-mode", choices=("padding_free", "packing"), default="padding_free")
    p.add_argument(
        "--trl-micro-batch", type=int, default=4, help="TRL padding_free: conversations flattened"
    )
    p.add_argument("--hf-micro-batch", type=int, default=2, help="padded rows per micro-batch")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset, in order")
    p.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="what every system trains in; auto: bf16 where this CPU runs it faster than "
        "float32 (specialize's own train.mixed_precision: auto test), else fp32",
    )
    p.add_argument("--json", type=Path, help="write the results to this file")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run to check the script: 8 records, batch 4, max-len 384 (2 steps each)",
    )
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.records, args.epochs, args.batch, args.max_len = 8, 1.0, 4, 384
        args.eval_records, args.trl_micro_batch, args.hf_micro_batch = 8, 2, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args.child, json.loads(args.settings))
        return 0
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown or not systems:
        raise SystemExit(f"--systems: unknown {unknown} (choose from {', '.join(SYSTEMS)})")
    settings = {
        "records": args.records,
        "epochs": args.epochs,
        "batch": args.batch,
        "lr": args.lr,
        "warmup_ratio": args.warmup_ratio,
        "lora_r": args.lora_r,
        "seed": args.seed,
        "max_len": args.max_len,
        "eval_records": min(args.eval_records, args.records),
        "specialize_pack": args.specialize_pack,
        "specialize_micro_rows": args.specialize_micro_rows,
        "trl_mode": args.trl_mode,
        "trl_micro_batch": args.trl_micro_batch,
        "hf_micro_batch": args.hf_micro_batch,
        "precision": args.precision,
    }
    import torch

    from specialize.train.precision import resolve

    if args.precision == "auto":
        chosen = resolve("auto")
        settings["precision"] = "bf16" if chosen.used == "bf16" else "fp32"
        print(f"precision: {settings['precision']} ({chosen.why})", flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    data = data_summary(settings)
    print(
        f"data: {data['records']} records ({data['long_records']} long), "
        f"{data['tokens_per_epoch']} real tokens per epoch, length min {data['min']} / "
        f"p10 {data['p10']} / median {data['median']} / mean {data['mean']} / "
        f"p90 {data['p90']} / max {data['max']}; {data['left_out_too_long']} candidates over "
        f"--max-len {args.max_len} left out of the pool",
        flush=True,
    )
    print(
        f"training: {args.epochs:g} epoch(s), {args.batch} conversations per optimizer step, "
        f"lr {args.lr:g} cosine, warmup {args.warmup_ratio:g}, LoRA r={args.lora_r} "
        f"all-linear, {settings['precision']}, {torch.get_num_threads()} torch threads on {device}",
        flush=True,
    )
    peak = matmul_peak_gflops(device, settings["precision"])
    print(
        f"{settings['precision']} matmul peak (2048x2048, best of ~2 s): {peak:.1f} GFLOP/s",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for i, name in enumerate(systems, 1):
        print(f"[{i}/{len(systems)}] {name} ...", flush=True)
        try:
            r = run_child(name, settings)
        except RuntimeError as exc:
            failed[name] = str(exc)
            print(f"[{i}/{len(systems)}] {exc}", flush=True)
            continue
        flops_per_token = 4 * r["n_nonembedding"]
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (peak * 1e9)
        results[name] = r
        print(
            f"[{i}/{len(systems)}] {name}: {r['tokens_per_s']:.1f} real tokens/s "
            f"({r['real_tokens']} tokens, {r['steps']} steps, {r['wall_s']:.1f} s), "
            f"final loss {r['final_loss']:.4f}, peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"[{r['layout']}]",
            flush=True,
        )
    if not results:
        print("no system finished", file=sys.stderr)
        return 1
    print()
    print_table(results)
    n_ne = next(iter(results.values()))["n_nonembedding"]
    print(
        f"MFU = real tokens/s x 4 x {n_ne} non-embedding parameters / {peak:.1f} GFLOP/s "
        "(LoRA on a frozen base: forward 2N + activation gradients 2N; no weight gradients "
        "for the frozen weights, LoRA and attention-score FLOPs not counted)"
    )
    ratios: dict[str, float] = {}
    if "specialize" in results:
        base = results["specialize"]
        for other in ("trl", "hf_trainer_padded"):
            if other in results:
                o = results[other]
                ratios[f"specialize/{other}"] = base["tokens_per_s"] / o["tokens_per_s"]
                ratios[f"specialize/{other} peak_rss"] = base["peak_rss_mib"] / o["peak_rss_mib"]
                print(
                    f"specialize/{other}: {ratios[f'specialize/{other}']:.2f}x real tokens/s, "
                    f"{ratios[f'specialize/{other} peak_rss']:.2f}x peak RSS, final loss "
                    f"{base['final_loss']:.4f} vs {o['final_loss']:.4f}"
                )
    if args.json:
        keep = ("tokens_per_s", "final_loss", "peak_rss_mib")
        out = {
            "systems": {
                name: {**{k: r[k] for k in keep}, **{k: v for k, v in r.items() if k not in keep}}
                for name, r in results.items()
            },
            "mfu": results["specialize"]["mfu"] if "specialize" in results else None,
            "precision": settings["precision"],
            "matmul_peak_gflops": peak,
            "model_flops_per_token": 4 * n_ne,
            "ratios": ratios,
            "data": data,
            "settings": settings,
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "failed": failed,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
