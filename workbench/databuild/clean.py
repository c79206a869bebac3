"""Text cleaning: pure functions from raw strings to plain paragraphs.

Conventions for every cleaned text: Unix newlines, no tabs, no trailing spaces,
paragraphs separated by exactly one blank line, no leading/trailing blank lines.
"""

import re
import unicodedata
from html.parser import HTMLParser

_BLANK_RUN = re.compile(r"\n\s*\n")


def normalize_whitespace(text: str) -> str:
    text = text.replace("\ufeff", "").replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text).replace("\t", "    ").replace("\u00a0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _BLANK_RUN.sub("\n\n", text).strip("\n")


def paragraphs(text: str) -> list[str]:
    return [p for p in _BLANK_RUN.split(text) if p.strip()]


def join_paragraphs(paras) -> str:
    return "\n\n".join(p.strip("\n") for p in paras if p.strip())


def reflow(text: str) -> str:
    """Join hard-wrapped lines inside each paragraph (prose); paragraphs stay apart.

    Spacing inside a line is kept as printed (Gutenberg texts put two spaces after a full stop).
    """
    return join_paragraphs(" ".join(line.strip() for line in p.split("\n") if line.strip())
                           for p in paragraphs(text))


def dedent_lines(text: str) -> str:
    """Drop per-line indentation (verse, plays) but keep the line breaks."""
    return normalize_whitespace("\n".join(line.strip() for line in text.split("\n")))


_GUT_START = re.compile(r"^\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*$", re.I | re.M)
_GUT_END = re.compile(
    r"^(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*|End of (the )?Project Gutenberg.*)$", re.I | re.M
)


def strip_gutenberg(text: str) -> str:
    """Keep only the book between the Project Gutenberg START and END markers (if present)."""
    start = _GUT_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUT_END.search(text)
    if end:
        text = text[: end.start()]
    return text


_ILLUSTRATION = re.compile(r"^\s*\[Illustration[^\]]*\]\s*$", re.M | re.I)
_EMPHASIS = re.compile(r"(?<![\w_])_([^_\n]+?)_(?![\w_])")


def clean_novel(text: str) -> str:
    """A Gutenberg novel: no licence boilerplate, no illustration tags or _emphasis_ marks, reflowed."""
    text = strip_gutenberg(normalize_whitespace(text))
    text = _ILLUSTRATION.sub("", text)
    text = _EMPHASIS.sub(r"\1", text)
    return reflow(normalize_whitespace(text))


def clean_verse(text: str) -> str:
    """Plays and poems: line breaks carry meaning, so keep them."""
    return dedent_lines(strip_gutenberg(normalize_whitespace(text)))


# --- dictionaries (dictd format, GCIDE) --------------------------------------------------

_SOURCE_TAG = re.compile(
    r"\[(?:[^\[\]\n]*?(?:Webster|PJC|WordNet|Dict\.|Suppl\.|Chambers|Century|Note added)[^\[\]\n]*?)\]"
)
_PRON = re.compile(r"\\[^\\\n]*\\")  # \A*ban"don\ pronunciation with syllable marks
_ACCENT = re.compile(r"\[([=^.~\"`'\-]?)([A-Za-z]{1,2})([=^.~\"`'\-]?)\]")
_PAREN_WITH_CODES = re.compile(r"\((?=[^()\n]*[\^=?\"`])[^()\n]*\)")  # (-d[u^]nd): phonetic respelling
_SPACE_BEFORE_PUNCT = re.compile(r" +([.,;:])")
_MULTI_SPACE = re.compile(r"(?<=\S)  +")


def _accent(m: re.Match) -> str:
    return m.group(2) if (m.group(1) or m.group(3)) else m.group(0)


def clean_gcide_entry(entry: str) -> str:
    """One GCIDE entry to prose: no source tags, pronunciations, accent codes or {cross-ref} braces."""
    text = normalize_whitespace(entry)
    text = _SOURCE_TAG.sub("", text)
    text = _PRON.sub("", text)
    text = _PAREN_WITH_CODES.sub("", text)
    text = _ACCENT.sub(_accent, text)
    text = text.replace("{", "").replace("}", "")
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", _MULTI_SPACE.sub(" ", text))
    return reflow(normalize_whitespace(text))


def dictd_b64(s: str) -> int:
    """dictd index numbers: base64 digits, most significant first."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    n = 0
    for ch in s:
        n = n * 64 + alphabet.index(ch)
    return n


def dictd_entries(index_text: str, data: bytes) -> list[str]:
    """Entries of a dictd database in file order, each once, without `00-database` headers."""
    spans = set()
    for line in index_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00database") or parts[0].startswith("00-database"):
            continue
        spans.add((dictd_b64(parts[1]), dictd_b64(parts[2])))
    return [data[o : o + n].decode("utf-8", "replace") for o, n in sorted(spans)]


# --- WordNet ---------------------------------------------------------------------------

def wordnet_gloss(line: str) -> str | None:
    """`data.noun` line -> 'dog, domestic dog: a member of ...'; None for licence header lines."""
    if line.startswith("  ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    n_words = int(fields[3], 16)
    words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n_words : 2]]
    return f"{', '.join(words)}: {gloss.strip()}"


# --- fortunes --------------------------------------------------------------------------

def fortune_items(text: str) -> list[str]:
    """A fortune file: items separated by lines holding only '%'."""
    items = re.split(r"^%\s*$", normalize_whitespace(text), flags=re.M)
    return [normalize_whitespace(i) for i in items if i.strip()]


# --- HTML documentation ----------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "head", "pre", "nav", "table", "svg", "form", "button", "select"}
_SKIP_CLASSES = {
    "navheader", "navfooter", "sphinxsidebar", "sphinxsidebarwrapper", "related", "footer",
    "headerlink", "highlight", "mobile-nav", "nosearch", "menu", "toc", "breadcrumb", "copyright",
}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "li", "dt", "dd", "br", "tr", "blockquote", "ul", "ol",
    "dl", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "title", "body", "figure", "caption",
}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "wbr", "area", "base", "col", "source"}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if self.skip_tag is not None:
            if tag == self.skip_tag and tag not in _VOID_TAGS:
                self.skip_depth += 1
            return
        classes = set((dict(attrs).get("class") or "").split())
        if (tag in _SKIP_TAGS or classes & _SKIP_CLASSES) and tag not in _VOID_TAGS:
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in _BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.skip_tag is None:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Visible prose of an HTML page: no code blocks, tables, navigation or scripts."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    paras = (" ".join(p.split()) for p in _BLANK_RUN.split(text))
    return join_paragraphs(p for p in paras if p)


def looks_like_prose(text: str, min_chars: int = 300, min_mean_para: int = 40) -> bool:
    """Index pages and link lists have many tiny paragraphs; prose pages do not."""
    paras = paragraphs(text)
    return len(text) >= min_chars and bool(paras) and len(text) / len(paras) >= min_mean_para
