"""LoRA training with peft on the base model: loss on the answer tokens only, resumable checkpoints.

CPU-sensible defaults (small rank, attention projections, short sequences); the same code runs on
a GPU when torch sees one.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from enclave.adapters.registry import DOMAIN_FILE, check_name, write_meta
from enclave.adapters.tuning.dataset import QAPair, load_pairs
from enclave.chat.taught import TAUGHT_FILE, taught_rows
from enclave.core.errors import InvalidRequest
from enclave.core.files import atomic_path
from enclave.core.settings import Settings

# At most this many training questions are kept as the adapter's domain (the router's nearest-neighbour set).
DOMAIN_MAX = 2000
SYSTEM = "You are Enclave, a helpful assistant running inside the company's own network. Answer concisely."


@dataclass
class TrainConfig:
    rank: int
    alpha: int
    learning_rate: float
    batch_size: int
    max_seq_tokens: int
    target_modules: list[str]
    max_steps: int | None
    epochs: float
    seed: int = 0
    checkpoint_every: int = 20


@dataclass
class TrainResult:
    path: Path
    steps: int
    final_loss: float
    losses: list[float]
    seconds: float


def encode_pair(tokenizer: Any, pair: QAPair, max_len: int) -> tuple[list[int], list[int]]:
    """Input ids and labels; the prompt's labels are -100 so only the answer is learned."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": pair.question}],
        add_generation_prompt=True,
        tokenize=True,
    )
    answer = tokenizer.encode(pair.answer + "<|im_end|>", add_special_tokens=False)
    prompt = prompt[-(max_len // 2) :]  # a long question must leave room for its answer
    ids = (prompt + answer)[:max_len]
    labels = ([-100] * len(prompt) + answer)[:max_len]
    return ids, labels


def _batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def dataset_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def domain_of(questions: list[str], settings: Settings, folder: Path) -> dict[str, Any]:
    """Embed the training questions into `folder/domain.npy`: the router scores a query by its nearest one."""
    import numpy as np

    from enclave.knowledge.embedder import Embedder

    picked = random.Random(0).sample(questions, DOMAIN_MAX) if len(questions) > DOMAIN_MAX else list(questions)
    vecs = np.asarray(Embedder.from_settings(settings).embed(picked), dtype=np.float32)
    np.save(folder / DOMAIN_FILE, vecs)
    return {"file": DOMAIN_FILE, "questions": len(picked), "measure": "max cosine to a training question"}


def config_from_settings(settings: Settings, max_steps: int | None, epochs: float) -> TrainConfig:
    a = settings.adapters
    return TrainConfig(
        rank=a.rank,
        alpha=a.alpha,
        learning_rate=a.learning_rate,
        batch_size=a.batch_size,
        max_seq_tokens=a.max_seq_tokens,
        target_modules=list(a.target_modules),
        max_steps=max_steps,
        epochs=epochs,
    )


def train(
    settings: Settings,
    name: str,
    dataset: Path,
    config: TrainConfig,
    progress: Callable[[int, int, float], None] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train adapter `name` on the dataset's train split and save it with its metadata."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    from enclave.engine.modelfiles import base_model_sha256, load_model

    check_name(name)
    pairs = [p for p in load_pairs(dataset) if p.split == "train"]
    if not pairs:
        raise InvalidRequest(f"{dataset} has no training pairs")
    torch.manual_seed(config.seed)
    tokenizer, model, model_dir = load_model(settings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [encode_pair(tokenizer, p, config.max_seq_tokens) for p in pairs]
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=0.05,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 10)) * max(0.05, 1 - s / total)
    )

    out = settings.adapters_path / name
    ckpt = settings.adapters_path / f".{name}.checkpoint"
    step, losses = 0, []
    if resume and (ckpt / "state.pt").is_file():
        state = torch.load(ckpt / "state.pt", weights_only=False)
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, losses = state["step"], state["losses"]
        random.setstate(state["random"])
    else:
        random.seed(config.seed)

    started = time.time()
    model.train()
    order: list[int] = []
    while step < total:
        if not order:
            order = list(range(len(rows)))
            random.shuffle(order)
        take, order = order[: config.batch_size], order[config.batch_size :]
        batch = _batch([rows[i] for i in take], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        step += 1
        losses.append(loss.item())
        if progress:
            progress(step, total, losses[-1])
        if step % config.checkpoint_every == 0 and step < total:
            _checkpoint(model, opt, sched, step, losses, ckpt)

    model.eval()
    assert isinstance(model, PeftModel)
    final = sum(losses[-5:]) / len(losses[-5:])
    # Swapped in whole: a server scanning the folder never sees half an adapter.
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(str(tmp))
        write_meta(
            tmp,
            {
                "name": name,
                "base_model": settings.models.name,
                "base_model_sha256": base_model_sha256(model_dir),
                "dataset": str(dataset),
                "dataset_sha256": dataset_sha256(dataset),
                "train_pairs": len(rows),
                "hyperparameters": asdict(config),
                "steps": step,
                "final_loss": round(final, 4),
                "losses": [round(x, 4) for x in losses],
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "domain": domain_of([p.question for p in pairs], settings, tmp),
                "taught": TAUGHT_FILE,
            },
        )
        # What it was taught, for the pipeline's check that an answer of it rests on a pair (chat/taught.py).
        (tmp / TAUGHT_FILE).write_text(taught_rows(pairs), encoding="utf-8")
    shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(out, step, final, losses, time.time() - started)


def _checkpoint(model: Any, opt: Any, sched: Any, step: int, losses: list[float], ckpt: Path) -> None:
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    with atomic_path(ckpt, directory=True) as tmp:
        save_file(get_peft_model_state_dict(model), str(tmp / "adapter_model.safetensors"))
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "losses": losses,
                "random": random.getstate(),
            },
            tmp / "state.pt",
        )
        (tmp / "step.json").write_text(json.dumps({"step": step}))
