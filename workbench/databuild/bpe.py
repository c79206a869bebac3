"""Byte-level BPE tokenizer trained on the corpus, saved as a transformers fast tokenizer."""

from pathlib import Path

from .assemble import EOT


def train_bpe(texts, vocab_size: int = 4096, min_frequency: int = 2):
    """A `tokenizers.Tokenizer`; byte-level, so every string round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # No prefix space and no offset trimming: decode(encode(x)) must give back x byte for byte.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def to_transformers(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        unk_token=EOT,
        clean_up_tokenization_spaces=False,
    )


def save(tok, out_dir: Path) -> None:
    """`save_pretrained` into a temp dir, then swap it in, so a crash never leaves half a tokenizer."""
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    to_transformers(tok).save_pretrained(str(tmp))
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def count_tokens(tok, texts: list[str], batch: int = 512) -> list[int]:
    counts = []
    for i in range(0, len(texts), batch):
        counts.extend(len(e.ids) for e in tok.encode_batch(texts[i : i + batch], add_special_tokens=False))
    return counts
