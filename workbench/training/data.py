"""Training tokens: the corpus tokenised once (cached as .npy), cut into windows, in a fixed order.

Every model trains on the same windows in the same order (one seed), so their held-out losses
compare architectures, not data. The last `val_tokens` tokens of the stream are never trained
on; they pick the bigram baseline's smoothing and give a validation loss during training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The corpus builder writes each document followed by a line holding only this token.
EOT = "<|endoftext|>"
DOC_SEPARATOR = f"\n{EOT}\n"


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def tokenize_documents(texts: list[str], tokenizer, eot_id: int | None, batch: int = 256) -> np.ndarray:
    """Token ids of each document, each followed by `eot_id` (when given), as one uint16 stream."""
    backend = tokenizer.backend_tokenizer  # the Rust tokenizer: batched and multi-threaded
    parts = []
    for i in range(0, len(texts), batch):
        for enc in backend.encode_batch(texts[i:i + batch], add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.uint16))
            if eot_id is not None:
                parts.append(np.asarray([eot_id], dtype=np.uint16))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)


def load_tokens(corpus: Path, tokenizer_dir: Path, cache_dir: Path) -> np.ndarray:
    """The corpus as token ids, tokenised on first use and cached by (corpus, tokenizer) content."""
    corpus, tokenizer_dir = Path(corpus), Path(tokenizer_dir)
    key = _digest(corpus, tokenizer_dir / "tokenizer.json")
    cache = Path(cache_dir) / f"{corpus.stem}-{key}.npy"
    if cache.exists():
        return np.load(cache, mmap_mode="r")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tokenizer) > np.iinfo(np.uint16).max:
        raise ValueError(f"vocabulary of {len(tokenizer)} does not fit the uint16 token cache")
    text = corpus.read_text(encoding="utf-8")
    docs = [d for d in text.split(DOC_SEPARATOR) if d.strip()]
    eot_id = tokenizer.convert_tokens_to_ids(EOT) if EOT in tokenizer.get_vocab() else None
    ids = tokenize_documents(docs, tokenizer, eot_id)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npy")
    np.save(tmp, ids)
    tmp.replace(cache)  # atomic: a crash never leaves half a cache
    return np.load(cache, mmap_mode="r")


@dataclass
class WindowOrder:
    """Non-overlapping windows of seq_len + 1 tokens (inputs and shifted targets) in seeded order.

    Window w covers tokens [w*seq_len, w*seq_len + seq_len]; consecutive windows share one
    boundary token, so every token of the training part is a target exactly once per epoch.
    Epoch e uses permutation seed + e, so the order depends only on the step, never on state,
    which is what makes a resumed run continue identically.
    """

    tokens: np.ndarray  # the training part of the stream (validation slice removed)
    seq_len: int
    seed: int = 0

    @property
    def n_windows(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(self.seed + epoch).permutation(self.n_windows)

    def window_ids(self, start: int, count: int) -> np.ndarray:
        """Indices of windows start .. start+count-1 in training order (across epochs)."""
        n = self.n_windows
        if n == 0:
            raise ValueError(f"{len(self.tokens)} training tokens do not fill one window of {self.seq_len + 1}")
        out, pos = [], start
        while len(out) < count:
            epoch, offset = divmod(pos, n)
            take = min(count - len(out), n - offset)
            out.extend(self._permutation(epoch)[offset:offset + take])
            pos += take
        return np.asarray(out, dtype=np.int64)

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """(batch_size, seq_len + 1) int64 tokens of training step `step`."""
        ids = self.window_ids(step * batch_size, batch_size)
        return np.stack([self.tokens[w * self.seq_len:(w + 1) * self.seq_len + 1] for w in ids]).astype(np.int64)


def split_validation(tokens: np.ndarray, val_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(train part, validation slice): the validation slice is the stream's tail."""
    if val_tokens <= 0:
        return tokens, tokens[:0]
    if val_tokens >= len(tokens) // 2:
        raise ValueError(f"validation slice of {val_tokens} tokens leaves too little of {len(tokens)} to train on")
    return tokens[:-val_tokens], tokens[-val_tokens:]
