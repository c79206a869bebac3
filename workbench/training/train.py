"""Training loop: AdamW with linear warmup and cosine decay, gradient clipping, resumable.

The data order is a pure function of the step (see `data.WindowOrder`) and the checkpoint holds
the model, the optimizer and the step, so a run interrupted at any checkpoint and resumed
produces the same weights as one that never stopped (with the same thread count).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from workbench.training.data import WindowOrder


@dataclass
class TrainSettings:
    tokens: int  # target tokens to train on (rounded up to whole steps)
    cycles: int = 1  # cosine cycles with warm restarts, of tokens / cycles each
    batch_size: int = 16
    seq_len: int = 512
    lr: float = 2e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_fraction: float = 0.05
    weight_decay: float = 0.1
    embedding_lr_scale: float = 1.0  # the (tied) embedding's lr relative to the rest
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0  # data order and initialisation
    bf16: bool = False  # bf16 autocast; float32 master weights either way
    checkpoint_every: int = 50  # steps
    eval_every: int = 100  # steps; validation loss on a fixed slice
    log_every: int = 10

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def cycle_steps(self) -> int:
        return max(1, math.ceil(self.tokens / self.cycles / self.tokens_per_step))

    @property
    def steps(self) -> int:
        return self.cycles * self.cycle_steps

    @property
    def warmup_steps(self) -> int:
        """Warmup of each cycle."""
        return max(1, round(self.warmup_fraction * self.cycle_steps))

    def lr_at(self, step: int) -> float:
        """Learning rate for update number `step` (0-based): linear warmup then cosine, per cycle.

        With cycles > 1 the schedule restarts (SGDR): training 2N tokens in 2 cycles begins
        exactly like training N tokens in 1, so a finished run can be continued (see `resumable`).
        """
        step = step % self.cycle_steps
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = (step - self.warmup_steps) / max(1, self.cycle_steps - self.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine)

    def schedule_key(self) -> dict:
        """Fields a resumed run must share with the checkpoint (anything else is only logging)."""
        d = asdict(self)
        for k in ("checkpoint_every", "eval_every", "log_every"):
            d.pop(k)
        d["betas"] = list(d["betas"])
        return d

    @classmethod
    def from_key(cls, key: dict) -> "TrainSettings":
        return cls(**{**key, "betas": tuple(key["betas"])})

    def resumable(self, key: dict, step: int) -> list[str]:
        """Why a checkpoint made with settings `key`, at `step`, cannot continue under these
        settings (empty if it can): everything but the length must match, and the learning rates
        of the steps already taken must be the ones these settings would have used."""
        mine = self.schedule_key()
        key = {"cycles": 1, "embedding_lr_scale": 1.0, **key}  # fields added after early checkpoints
        why = [k for k in mine if k not in ("tokens", "cycles") and key.get(k) != mine[k]]
        if not why:
            theirs = TrainSettings.from_key(key)
            if step > self.steps or any(theirs.lr_at(i) != self.lr_at(i) for i in range(step)):
                why.append("learning-rate schedule (tokens, cycles)")
        return why


@dataclass
class TrainResult:
    steps: int
    tokens: int
    wall_time_s: float  # training only, summed over resumed sessions
    final_loss: float  # mean training loss over the last log interval
    val_loss: float | None
    history: list[dict] = field(default_factory=list)


def make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW with three groups: matrices (decayed); vectors (norm weights, biases, SSM A/D/dt; not
    decayed); the embedding (not decayed, lr x embedding_lr_scale)."""
    emb = {id(p) for p in model.get_input_embeddings().parameters()}
    decay, no_decay, embedding, seen = [], [], [], set()
    for p in model.parameters():
        if id(p) in seen or not p.requires_grad:
            continue
        seen.add(id(p))
        if id(p) in emb:
            embedding.append(p)
        else:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
              {"params": embedding, "weight_decay": 0.0, "lr_scale": settings.embedding_lr_scale}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=1e-8)


def batch_loss(model: torch.nn.Module, batch: np.ndarray, bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy of a (B, L+1) token batch; logits scored in float32."""
    tokens = torch.from_numpy(batch)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=inputs, use_cache=False).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))


@torch.no_grad()
def validation_loss(model: torch.nn.Module, val_tokens: np.ndarray, seq_len: int, batch_size: int,
                    max_windows: int = 16, bf16: bool = False) -> float | None:
    """Mean loss over the first `max_windows` windows of the validation slice."""
    n = min(max_windows, (len(val_tokens) - 1) // seq_len)
    if n == 0:
        return None
    was_training = model.training
    model.eval()
    windows = np.stack([val_tokens[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)]).astype(np.int64)
    total = 0.0
    for i in range(0, n, batch_size):
        chunk = windows[i:i + batch_size]
        total += batch_loss(model, chunk, bf16).item() * len(chunk)
    model.train(was_training)
    return total / n


def save_checkpoint(path: Path, model, optimizer, step: int, elapsed: float, history: list,
                    settings: TrainSettings) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "elapsed": elapsed, "history": history, "settings": settings.schedule_key(),
                "model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    tmp.replace(path)  # atomic: an interruption while saving keeps the previous checkpoint


def load_checkpoint(path: Path, model, optimizer, settings: TrainSettings) -> tuple[int, float, list]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    why = settings.resumable(state["settings"], state["step"])
    if why:
        raise ValueError(f"checkpoint {path} was made with different settings ({', '.join(why)}); "
                         "pass the same options, or start afresh without --resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], state["elapsed"], state["history"]


def train(model: torch.nn.Module, order: WindowOrder, settings: TrainSettings,
          checkpoint: Path | None = None, resume: bool = False, val_tokens: np.ndarray | None = None,
          stop_after: int | None = None, progress: bool = True, desc: str = "train") -> TrainResult:
    """Train `model` in place for `settings.steps` steps (or until step `stop_after`, for tests)."""
    if order.seq_len != settings.seq_len:
        raise ValueError("window order and settings disagree on seq_len")
    model.train()
    optimizer = make_optimizer(model, settings)
    step, elapsed, history = 0, 0.0, []
    if resume and checkpoint is not None and checkpoint.exists():
        step, elapsed, history = load_checkpoint(checkpoint, model, optimizer, settings)
    end = settings.steps if stop_after is None else min(stop_after, settings.steps)

    bar = tqdm(total=settings.steps, initial=step, desc=desc, unit="step", disable=not progress,
               dynamic_ncols=True)
    recent: list[float] = []
    session_start, session_tokens = time.perf_counter(), 0
    while step < end:
        lr = settings.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        loss = batch_loss(model, order.batch(step, settings.batch_size), settings.bf16)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
        session_tokens += settings.tokens_per_step
        recent.append(loss.item())

        now = time.perf_counter()
        tok_s = session_tokens / max(now - session_start, 1e-9)
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(recent[-settings.log_every:]):.3f}", tok_s=f"{tok_s:,.0f}", lr=f"{lr:.2e}")
        if step % settings.log_every == 0 or step == settings.steps:
            entry = {"step": step, "loss": float(np.mean(recent[-settings.log_every:])), "lr": lr,
                     "grad_norm": float(grad_norm), "tokens_per_s": tok_s}
            if val_tokens is not None and (step % settings.eval_every == 0 or step == settings.steps):
                entry["val_loss"] = validation_loss(model, val_tokens, settings.seq_len, settings.batch_size,
                                                    bf16=settings.bf16)
            history.append(entry)
        if checkpoint is not None and (step % settings.checkpoint_every == 0 or step == end):
            save_checkpoint(checkpoint, model, optimizer, step,
                            elapsed + time.perf_counter() - session_start, history, settings)
    bar.close()
    elapsed += time.perf_counter() - session_start
    vals = [h["val_loss"] for h in history if h.get("val_loss") is not None]
    losses = [h["loss"] for h in history]
    return TrainResult(steps=step, tokens=step * settings.tokens_per_step, wall_time_s=elapsed,
                       final_loss=losses[-1] if losses else float(np.mean(recent)) if recent else math.nan,
                       val_loss=vals[-1] if vals else None, history=history)
