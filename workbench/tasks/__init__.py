"""Multiple-choice tasks as data: a registry of small JSON descriptions plus JSONL item files.

``data/tasks/<name>.json`` describes a task (source, licence, metrics, chance level, the text
put between context and choice); ``data/tasks/<name>.jsonl`` holds one item a line:
``{"id": str, "context": str, "choices": [str, ...], "gold": int}`` (extra keys such as
``meta`` are kept but not used for scoring). Scoring follows lm-evaluation-harness: each
choice is scored as the continuation ``target_delimiter + choice`` of ``context``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import data_dir

METRICS = ("acc", "acc_norm")
SPEC_KEYS = {"name", "description", "source", "licence", "version", "items", "metrics", "num_fewshot",
             "target_delimiter", "chance", "n_items", "generated_by"}
REQUIRED_SPEC_KEYS = {"name", "description", "source", "licence", "items", "metrics", "num_fewshot",
                      "target_delimiter", "chance", "n_items"}


class TaskError(ValueError):
    """A task name, description or item file is wrong; the message names the file and line."""


@dataclass(frozen=True)
class Item:
    id: str
    context: str
    choices: tuple[str, ...]
    gold: int
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    source: str
    licence: str
    items_path: Path
    metrics: tuple[str, ...] = METRICS
    num_fewshot: int = 0
    target_delimiter: str = " "
    chance: float = math.nan  # mean over items of 1 / number of choices
    n_items: int = 0
    version: str = ""
    generated_by: str = ""

    def items(self) -> list[Item]:
        items = read_items(self.items_path)
        if len(items) != self.n_items:
            raise TaskError(f"{self.items_path}: {len(items)} items, but the task description says n_items={self.n_items}")
        got = chance_level(items)
        if not math.isclose(got, self.chance, rel_tol=0, abs_tol=1e-6):
            raise TaskError(f"{self.items_path}: chance level of the items is {got:.6f}, "
                            f"but the task description says chance={self.chance}")
        return items


def chance_level(items: list[Item]) -> float:
    """Expected accuracy of a uniform random guess: mean over items of 1 / number of choices."""
    if not items:
        raise TaskError("no items: the chance level of an empty task is undefined")
    return sum(1.0 / len(it.choices) for it in items) / len(items)


def parse_item(obj, where: str) -> Item:
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: an item must be a JSON object, got {type(obj).__name__}")
    missing = {"id", "context", "choices", "gold"} - set(obj)
    if missing:
        raise TaskError(f"{where}: item lacks {sorted(missing)} (needs id, context, choices, gold)")
    choices, gold = obj["choices"], obj["gold"]
    if not isinstance(obj["context"], str) or not isinstance(obj["id"], str):
        raise TaskError(f"{where}: 'id' and 'context' must be strings")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise TaskError(f"{where}: 'choices' must be a list of at least 2 non-empty strings, got {choices!r}")
    if len(set(choices)) != len(choices):
        raise TaskError(f"{where}: 'choices' has duplicates: {choices!r}")
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise TaskError(f"{where}: 'gold' must be an index into choices (0..{len(choices) - 1}), got {gold!r}")
    return Item(obj["id"], obj["context"], tuple(choices), gold, obj.get("meta", {}))


def read_items(path: Path) -> list[Item]:
    """Items of a JSONL file; a malformed line raises TaskError naming file and line."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"item file {path} does not exist")
    items, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            item = parse_item(obj, where)
            if item.id in seen:
                raise TaskError(f"{where}: duplicate item id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    return items


def parse_task(spec: dict, path: Path) -> Task:
    if not isinstance(spec, dict):
        raise TaskError(f"{path}: a task description must be a JSON object")
    missing = REQUIRED_SPEC_KEYS - set(spec)
    unknown = set(spec) - SPEC_KEYS
    if missing:
        raise TaskError(f"{path}: missing keys {sorted(missing)}")
    if unknown:
        raise TaskError(f"{path}: unknown keys {sorted(unknown)} (valid: {sorted(SPEC_KEYS)})")
    if spec["name"] != path.stem:
        raise TaskError(f"{path}: name {spec['name']!r} must match the file name {path.stem!r}")
    bad = [m for m in spec["metrics"] if m not in METRICS]
    if bad or not spec["metrics"]:
        raise TaskError(f"{path}: unknown metrics {bad} (valid: {list(METRICS)})")
    if spec["num_fewshot"] != 0:
        raise TaskError(f"{path}: num_fewshot={spec['num_fewshot']}; only 0-shot tasks are supported")
    return Task(
        name=spec["name"], description=spec["description"], source=spec["source"], licence=spec["licence"],
        items_path=path.parent / spec["items"], metrics=tuple(spec["metrics"]), num_fewshot=0,
        target_delimiter=spec["target_delimiter"], chance=float(spec["chance"]), n_items=int(spec["n_items"]),
        version=spec.get("version", ""), generated_by=spec.get("generated_by", ""),
    )


def tasks_dir() -> Path:
    return data_dir() / "tasks"


def load_registry(root: Path | None = None) -> dict[str, Task]:
    """Every task described in ``root`` (default ``data/tasks``), by name, sorted."""
    root = Path(root) if root is not None else tasks_dir()
    if not root.is_dir():
        raise TaskError(f"task directory {root} does not exist (build it with `workbench data tasks`)")
    out = {}
    for path in sorted(root.glob("*.json")):
        try:
            spec = json.loads(path.read_text("utf-8"))
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        task = parse_task(spec, path)
        out[task.name] = task
    return out


def get_tasks(names: list[str] | None = None, root: Path | None = None) -> list[Task]:
    """Tasks by name (all when ``names`` is None); an unknown name lists the valid ones."""
    registry = load_registry(root)
    if names is None:
        return list(registry.values())
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise TaskError(f"unknown task(s) {unknown}; valid tasks: {sorted(registry)}")
    return [registry[n] for n in names]
