"""What a queued job may run: `workbench run`, `study` or `diagnose` with options from an
allow-list, every path resolved and required to lie inside the runs folder.

The Launch page checks a command before it is queued and the queue checks it again before it
runs a job file, so a launch token (or write access to ``RUNS/.jobs/``) buys the workbench's own
commands and nothing more: no file outside the runs folder read or written, no Dask address, no
``hf:`` dataset spec (its keys go straight to ``datasets.load_dataset``: ``cache_dir``,
``data_files``). Those stay for the shell.

``check(argv, runs)`` returns the argv rewritten to one spelling (``--long value``, absolute
resolved paths) and the store or folder it writes. Kept free of torch: the app imports it.
"""

from __future__ import annotations

import re
from pathlib import Path

from workbench.paths import data_dir

COMMANDS = ("run", "study", "diagnose")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a built-in model, task or corpus name
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # org/name, in the HF cache
OWNER = re.compile(r"[\w .@'-]{0,40}")  # names shown to every visitor: letters, digits, space . @ ' - _


class ArgvError(ValueError):
    """A command the queue will not run; the message says what was wrong and what is valid."""


def inside(folder: Path, path: Path) -> bool:
    return path == folder or folder in path.parents


def _resolved(value: str, runs: Path) -> Path:
    """``value`` as a path, relative to the runs folder (a job's working folder), symlinks resolved."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else runs / path).resolve()


def _in_runs(value: str, runs: Path, what: str) -> str:
    path = _resolved(value, runs)
    if not inside(runs, path):
        raise ArgvError(f"{what} {value!r} is outside the runs folder {runs}; give a path inside it")
    return str(path)


def _int(lo: int, hi: int):
    def check(value: str, runs: Path) -> str:
        if not re.fullmatch(r"\d+", value) or not lo <= int(value) <= hi:
            raise ArgvError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return str(int(value))
    return check


def _choice(*allowed: str):
    def check(value: str, runs: Path) -> str:
        if value not in allowed:
            raise ArgvError(f"{value!r} is not one of: {', '.join(allowed)}")
        return value
    return check


def _list_of(allowed: tuple[str, ...], extra: tuple[str, ...] = ()):
    """Comma-separated names from ``allowed`` (or one of ``extra`` alone; "" where allowed)."""
    def check(value: str, runs: Path) -> str:
        if value in extra:
            return value
        bad = [v for v in value.split(",") if v.strip() not in allowed]
        if bad:
            raise ArgvError(f"{', '.join(map(repr, bad))} not among: {', '.join(allowed + extra)}")
        return value
    return check


def _corpus_name(value: str, runs: Path) -> str:
    """One of the store's corpora, by the name it was recorded under (``wikitext-2-raw-v1:test``)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+:-]*", value):
        raise ArgvError(f"expected the name of one of the store's corpora, got {value!r}")
    return value


def _names(value: str, runs: Path) -> str:
    if not all(NAME.fullmatch(v.strip()) for v in value.split(",")):
        raise ArgvError(f"expected comma-separated names (letters, digits, _ . + -), got {value!r}")
    return value


def _ints(value: str, runs: Path) -> str:
    if not re.fullmatch(r"\d+(,\d+)*", value):
        raise ArgvError(f"expected comma-separated whole numbers, e.g. 1,2,4,8, got {value!r}")
    return value


def _device(value: str, runs: Path) -> str:
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", value):
        raise ArgvError(f"unknown device {value!r}; valid: cpu, cuda, cuda:N, mps")
    return value


def builtin_corpora() -> list[str]:
    return sorted(p.stem for p in (data_dir() / "corpora").glob("*.txt"))


def _corpus(value: str, runs: Path) -> str:
    """A built-in corpus name, or a text file inside the runs folder."""
    if value.startswith("hf:"):
        raise ArgvError(f"hf: corpora ({value!r}) are not launched from the app; run them from a shell, or "
                        f"put the text in a file inside {runs}")
    if value in builtin_corpora():
        return value
    path = _resolved(value, runs)
    if inside(runs, path) and path.is_file():
        return str(path)
    raise ArgvError(f"corpus {value!r} is neither a built-in corpus ({', '.join(builtin_corpora()) or 'none'}) "
                    f"nor a text file inside the runs folder {runs}")


def recorded_corpora(store: Path) -> list[str]:
    """The corpus specs ``workbench diagnose`` re-reads from a store: each scored corpus and the
    reference (``builtin:`` and `` (last N tokens)`` taken off); [] when the store is not readable."""
    import json

    import zarr

    try:
        sources = [str(s) for s in zarr.open_array(str(store / "corpus_source"), mode="r", zarr_format=2)[:]]
        protocol = json.loads(json.loads((store / ".zattrs").read_text()).get("protocol") or "{}")
    except Exception:  # not a store (yet), or damaged: the command itself says so
        return []
    sources.append(re.sub(r" \(last \d+ tokens\)$", "", str(protocol.get("reference") or "")))
    return [s.removeprefix("builtin:") for s in sources if s]


def _diagnosed(value: str, runs: Path) -> str:
    """A store inside the runs folder whose recorded corpora are built-in or files inside it: a store
    someone put there must not make diagnose read (and the app show) any other server file."""
    store = _out(value, runs)
    for spec in recorded_corpora(Path(store)):
        try:
            _corpus(spec, runs)
        except ArgvError:
            raise ArgvError(f"store {value!r} was run on {spec!r}, neither a built-in corpus nor a file inside "
                            f"{runs}; diagnose it from a shell") from None
    return store


def _model(value: str, runs: Path) -> str:
    """random:<type>, a built-in name, an HF id from the cache, or a model folder / .gguf in the runs
    folder (what exists relative to the runs folder must lie inside it: the CLI would load it)."""
    if re.fullmatch(r"random:[a-z0-9_]+", value):
        return value
    named = bool(NAME.fullmatch(value) or HUB_ID.fullmatch(value))
    if named and not _resolved(value, runs).exists():
        return value
    if not named and not (Path(value).is_absolute() or value.startswith(("~", "."))):
        raise ArgvError(f"model {value!r}: give a built-in name, random:<model_type>, an org/name id in the "
                        f"Hugging Face cache, or a model folder inside {runs}")
    resolved = _in_runs(value, runs, "model")
    return value if named else resolved


def _models(value: str, runs: Path) -> str:
    return ",".join(_model(v.strip(), runs) for v in value.split(",") if v.strip())


def _plan(value: str, runs: Path) -> str:
    return _in_runs(value, runs, "plan file")


def _out(value: str, runs: Path) -> str:
    path = _in_runs(value, runs, "output")
    if Path(path) == runs:
        raise ArgvError(f"the output must be a store or folder inside {runs}, not the runs folder itself")
    if any(part.startswith(".") for part in Path(path).relative_to(runs).parts):
        raise ArgvError(f"output {value!r} is a hidden path (the queue lives in {runs}/.jobs); give a visible name")
    return path


FLAG = None
COMMON = {"--context": _int(2, 1 << 20), "--stride": _int(1, 1 << 20), "--batch-size": _int(1, 4096),
          "--prefix-token": _choice("auto", "none", "bos"), "--device": _device,
          "--dtype": _choice("float32", "bfloat16", "float16"), "--dry-run": FLAG, "--fast": FLAG,
          "--no-fast": FLAG, "--max-rows": _int(1, 1 << 30), "--protocol": _choice("rolling", "carry"),
          "--streams": _int(1, 1024), "--threads": _int(1, 1024), "--max-tokens": _int(0, 1 << 40),
          "--corpus": _corpus, "--out": _out, "--seeds": _int(0, 10_000)}
CLUSTER = {"--workers": _int(1, 256), "--threads-per-worker": _int(1, 1024)}
DIAGNOSTICS = ("cka", "probes", "lens", "norms", "retrieval", "state", "maps")
OPTIONS = {
    "run": {**COMMON, **CLUSTER, "--model": _model, "--plan": _plan, "--preset": _choice("smoke", "groups", "sweep", "study"),
            "--mode": _choice("zero", "mean", "resample", "skip_layer"), "--reference": _corpus,
            "--reference-tokens": _int(1, 1 << 30), "--seed": _int(0, 1 << 31), "--diagnose": FLAG},
    "study": {**COMMON, **CLUSTER, "--models": _models, "--tasks": _names, "--task-items": _int(0, 1 << 30),
              "--grid": _ints},
    "diagnose": {**CLUSTER, "--tokens": _int(1, 1 << 30), "--corpus": _corpus_name, "--batch-size": _int(1, 4096),
                 "--diagnostics": _list_of(DIAGNOSTICS, ("",)), "--seed": _int(0, 1 << 31),
                 "--windows": _int(1, 1 << 30), "--max-diag-tokens": _int(1, 1 << 30), "--map-layer": _int(0, 4096),
                 "--map-methods": _list_of(("pca", "umap")), "--probe-layers": _choice("middle", "all"),
                 "--device": _device, "--overwrite": FLAG},
}
SHORT = {"-m": "--model", "-o": "--out", "-c": "--corpus", "-p": "--plan"}
REPEATABLE = {("run", "--corpus"), ("study", "--corpus")}


def check(argv: list[str], runs: str | Path) -> tuple[list[str], Path]:
    """(argv in one spelling with resolved paths, the output it writes); ArgvError otherwise."""
    runs = Path(runs).expanduser().resolve()
    argv = [str(a) for a in argv]
    if not argv or argv[0] not in COMMANDS:
        raise ArgvError(f"a job runs one of: {', '.join(COMMANDS)}; got {argv[:1] or 'nothing'}")
    command, allowed = argv[0], OPTIONS[argv[0]]
    out, seen, positional = [command], set(), []
    rest = iter(argv[1:])
    for token in rest:
        name, eq, value = token.partition("=") if token.startswith("--") else (SHORT.get(token, token), "", "")
        if not token.startswith("-"):
            positional.append(token)
            continue
        if name not in allowed:
            hint = " (the app's operator sets the scheduler)" if name == "--cluster" else ""
            raise ArgvError(f"`workbench {command}` option {token.split('=')[0]!r} is not allowed here{hint}; "
                            f"allowed: {', '.join(sorted(allowed))}")
        if name in seen and (command, name) not in REPEATABLE:
            raise ArgvError(f"{name} given twice; give it once")
        seen.add(name)
        if allowed[name] is FLAG:
            if eq:
                raise ArgvError(f"{name} is a switch and takes no value")
            out.append(name)
            continue
        if not eq:
            value = next(rest, None)
            if value is None or value.startswith("-"):
                raise ArgvError(f"{name} needs a value")
        try:
            out += [name, allowed[name](value, runs)]
        except ArgvError as exc:
            raise ArgvError(f"{name}: {exc}") from None
    if command == "diagnose":
        if len(positional) != 1:
            raise ArgvError(f"a diagnose job takes one STORE inside {runs} (got {len(positional)}); "
                            "launch one job per store")
        store = _diagnosed(positional[0], runs)
        return out + [store], Path(store)
    if positional:
        raise ArgvError(f"`workbench {command}` takes no argument {positional[0]!r}; options only")
    if "--out" not in seen:
        raise ArgvError(f"{command} needs --out (the store or folder it writes, inside {runs})")
    return out, Path(out[out.index("--out") + 1])


def check_owner(owner: str) -> str:
    """The owner's name as shown in every visitor's queue: plain words, 40 characters at most."""
    owner = owner.strip()
    if not OWNER.fullmatch(owner):
        raise ArgvError(f"the name {owner[:40]!r} may hold letters, digits, spaces and . @ ' - _ (40 at most)")
    return owner
