"""A tiny run directory (tiny LLaMA + a random LoRA adapter + the built-in task catalog) and a
real ``specialize serve`` app on 127.0.0.1 in a background thread, for the serve tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml


def tight_catalog():
    """One task per input kind with short, bounded answers: a random tiny model decodes a
    valid answer under these schemas within a few dozen tokens (under the built-in schemas
    it writes 200-character strings of one repeated token)."""
    from specialize.data.tasks import BUILTIN, Catalog, Task

    word = {"type": "string", "minLength": 1, "maxLength": 6}
    one = {"type": "object", "properties": {"word": word}, "required": ["word"],
           "additionalProperties": False}  # fmt: skip
    pick = {"type": "object", "properties": {"index": {"type": "integer", "minimum": 0,
            "maximum": 3}}, "required": ["index"], "additionalProperties": False}  # fmt: skip
    return Catalog([
        Task("keyword", "One keyword of: {passage}", schema=one, unwrap="word"),
        Task("pick", "{question}\n\n{passages}", "question_passages", schema=pick),
        Task("same", "Compare: {passage_a} | {passage_b}", "pair", schema=one),
        BUILTIN["continuation"],
    ])  # fmt: skip


def make_run(
    folder: Path, base: Path | str, seed: int = 0, catalog=None, zero_adapter: bool = False
) -> Path:
    """``folder`` as a run directory over ``base`` (a folder or a model spec): config, adapter
    (random and non-zero, so the tuned model differs from the base, unless ``zero_adapter``),
    adapter metadata and tasks.json (the built-in catalog unless ``catalog`` is given)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from specialize.data.tasks import BUILTIN, Catalog
    from specialize.models.load import load_model, resolve

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"name": folder.name, "model": {"base": str(base)}, "chat": {"format": "chatml"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    torch.manual_seed(seed)
    model = load_model(resolve(str(base)), "float32")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=zero_adapter)  # fmt: skip
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(str(folder / "adapter"))
    meta = {"base_model": str(base), "chat_format": "chatml", "targets": ["q_proj", "v_proj"]}
    (folder / "adapter" / "specialize.json").write_text(json.dumps(meta), encoding="utf-8")
    catalog = catalog if catalog is not None else Catalog(list(BUILTIN.values()))
    (folder / "tasks.json").write_text(json.dumps(catalog.to_json()), encoding="utf-8")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(runs: list[Path], **settings):
    """A started server (uvicorn in a thread) over ``runs``; yields (base_url, app state)."""
    import uvicorn

    from specialize.serve.app import build_app
    from specialize.serve.registry import open_runs
    from specialize.serve.settings import ServeSettings

    port = free_port()
    s = ServeSettings(port=port, **settings)
    reg = open_runs(runs, batch_size=s.batch_size, max_context=s.max_context)
    app = build_app(reg, s)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}/v1", app.state.serve
    finally:
        server.should_exit = True
        thread.join(timeout=30)
