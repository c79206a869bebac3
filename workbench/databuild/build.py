"""The whole build: fetch -> read -> held-out sets -> assemble -> tokenizer -> manifest.

Idempotent: downloads and extractions are cached and verified; a rerun rewrites the same
bytes (every step is deterministic) and skips tokenizer training when the tokenizer on
disk was trained on the identical corpus.
"""

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import assemble as asm
from . import bpe, fetch, heldout, readers
from .fileio import atomic_write_json, atomic_write_text, sha256_file
from .sources import BIGBENCH_MEMBER_PREFIX, DEBIAN_SUITE, PACKAGES


@dataclass
class BuildPaths:
    build_dir: Path
    data_dir: Path

    @property
    def cache(self) -> Path:
        return self.build_dir / "cache"

    @property
    def corpus(self) -> Path:
        return self.build_dir / "corpus"

    @property
    def train(self) -> Path:
        return self.corpus / "train.txt"

    @property
    def manifest(self) -> Path:
        return self.corpus / "manifest.json"

    @property
    def corpora(self) -> Path:
        return self.data_dir / "corpora"

    @property
    def tokenizer(self) -> Path:
        return self.data_dir / "tokenizer"


def build_from_roots(roots: dict[str, Path], paths: BuildPaths, vocab_size: int = 4096, log=print) -> dict:
    """Everything after download/extract; `roots` maps package name -> extracted tree."""
    t0 = time.time()
    log("reading sources")
    docs = readers.read_all(roots, progress=lambda n: log(f"  {n}"))

    log("held-out sets")
    sets = heldout.squad_sets(roots["bigbench"] / BIGBENCH_MEMBER_PREFIX) if "bigbench" in roots else []
    sets.append(heldout.books_set(docs))
    heldout_meta = {hs.name: heldout.write_set(hs, paths.corpora) for hs in sets}

    log("assembling (13-gram overlap filter, caps, shuffle)")
    result = asm.assemble(docs, [hs.text for hs in sets], heldout.HELDOUT_BOOKS)
    asm.write_train(result.docs, paths.train)
    train_sha = sha256_file(paths.train)

    tok_file = paths.tokenizer / "tokenizer.json"
    stamp = paths.tokenizer / "trained_on.json"
    want = {"train_sha256": train_sha, "vocab_size": vocab_size}
    if tok_file.exists() and stamp.exists() and json.loads(stamp.read_text()) == want:
        log("tokenizer up to date (trained on this exact corpus)")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
    else:
        log(f"training byte-level BPE, vocab {vocab_size}")
        tok = bpe.train_bpe((d.text for d in result.docs), vocab_size=vocab_size)
        bpe.save(tok, paths.tokenizer)
        atomic_write_json(stamp, want)

    log("counting tokens")
    counts = bpe.count_tokens(tok, [d.text for d in result.docs])
    per_source = defaultdict(lambda: {"documents": 0, "bytes": 0, "tokens": 0})
    for d, n in zip(result.docs, counts):
        s = per_source[d.source]
        s["documents"] += 1
        s["bytes"] += len(d.text.encode("utf-8"))
        s["tokens"] += n
    total_tokens = sum(counts) + len(result.docs)  # + one EOT per document
    heldout_tokens = {hs.name: len(tok.encode(hs.text, add_special_tokens=False).ids) for hs in sets}
    for name, n in heldout_tokens.items():
        heldout_meta[name]["n_tokens"] = n
        atomic_write_json(paths.corpora / f"{name}.json", heldout_meta[name])

    manifest = {
        "train_file": str(paths.train),
        "train_sha256": train_sha,
        "document_separator": "each document is followed by a line holding only <|endoftext|>",
        "total_tokens": total_tokens,
        "total_tokens_note": "tokenizer in data/tokenizer; includes one <|endoftext|> per document",
        "total_bytes": paths.train.stat().st_size,
        "n_documents": len(result.docs),
        "sources": dict(sorted(per_source.items())),
        "caps": asm.CAPS,
        "dropped_by_cap_documents": dict(result.dropped_docs_by_cap),
        "overlap_filter": {
            "ngram": 13,
            "unit": "paragraph (blank-line separated passage)",
            "dropped_passages": sum(result.dropped_passages.values()),
            "dropped_by_source": {k: v for k, v in sorted(result.dropped_passages.items()) if v},
        },
        "heldout_novels_excluded": result.heldout_excluded,
        "heldout_sets": heldout_meta,
        "vocab_size": vocab_size,
        "packages": {
            p.name: {"registry": p.registry, "version": p.version, "file": p.filename, "sha256": p.sha256,
                     "licence": p.licence}
            for p in PACKAGES.values() if p.name in roots
        },
        "debian_suite": DEBIAN_SUITE,
        "build_seconds": round(time.time() - t0, 1),
    }
    atomic_write_json(paths.manifest, manifest)
    atomic_write_text(paths.corpus / "READY", f"{total_tokens}\n")
    return manifest


def build(paths: BuildPaths, vocab_size: int = 4096, allow_download: bool = True, log=print) -> dict:
    t0 = time.time()
    log(f"fetching {len(PACKAGES)} pinned packages into {paths.cache}")
    roots = fetch.fetch_all(paths.cache, allow_download, progress=lambda p: log(f"  {p.name} {p.version}"))
    manifest = build_from_roots(roots, paths, vocab_size, log)
    manifest["build_seconds_with_fetch"] = round(time.time() - t0, 1)
    atomic_write_json(paths.manifest, manifest)
    return manifest

