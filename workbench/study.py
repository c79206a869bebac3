"""The published study's experiments on any set of models, as one resumable command.

Per model, one store (``<folder>/<model>.zarr``) holds:
  * group ablations of every mixer role and the MLPs, component-only (``zero``) and whole-layer
    (``skip_layer`` of the layers holding that role), labelled by what they remove;
  * the layer sweep: every component alone (``zero``) and every layer alone (``skip_layer``);
  * positional thirds of each role (both modes);
  * progressive removal: the first N, last N and N random layers of each role;
  * matched random controls: distinct seeded sets sized like every group of *every* model in the
    study (so a Transformer control gets the hybrids' sizes), drawn from all components
    (``zero``) and from all layers (``skip_layer``); a draw equal to a targeted group is kept and
    marked (``same_as_group``);
and a second store (``<model>.compression.zarr``) the compression curve: components removed
cumulatively, least important first (from the sweep) and, as a control, in a random order, with
perplexity re-measured at every step. Every condition is scored with one protocol on the same
held-out corpora, and (main store) on the multiple-choice tasks.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import suppress
from dataclasses import MISSING, asdict, dataclass, field, fields
from math import comb
from pathlib import Path

import numpy as np

from workbench import plans
from workbench.architectures import MIXER_ROLES, ComponentMap
from workbench.plans import Condition, Plan, PlanSpec, Target
from workbench.store import StoreError, check_out

GRID = (1, 2, 4, 8, 16, 32)
COMPRESSION_FAMILIES = {"mixers": "zero", "mlp": "zero", "layers": "skip_layer"}
THRESHOLDS = (0.05, 0.10, 0.25)


@dataclass
class StudySettings:
    models: list[str]
    corpora: list[str]
    max_tokens: int | None = None
    context: int = 512
    stride: int = 256
    batch_size: int = 8
    tasks: list[str] | None = None  # None: every registered task; []: none
    task_items: int | None = None
    seeds: int = 10
    grid: list[int] = field(default_factory=lambda: list(GRID))
    prefix_token: str = "auto"
    device: str = "cpu"
    dtype: str = "float32"
    scoring: str = "rolling"  # perplexity protocol: rolling | carry (one for every model and condition)
    streams: int = 1
    fast: bool = True  # prefix reuse and stacking (same numbers as the naive loop)
    max_rows: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


class StudyError(StoreError):
    """A study folder that holds another study, or a study whose inputs cannot run."""


SPEED_ONLY = ("fast", "max_rows", "batch_size")  # settings that change no number


def check_folder(out_dir: Path, settings: StudySettings, replace: bool = False) -> None:
    """Refuse a folder whose study.json holds another study (other models, corpora, protocol...),
    unless ``replace``: its stores would be mixed with this study's, or the report would state
    settings its stores were not made with."""
    path = out_dir / "study.json"
    if replace or not path.exists():
        return
    hint = "choose another --out, or pass --replace-settings to make this study the folder's"
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise StudyError(f"{path} is not readable study settings ({exc}); {hint}") from None
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory()
                for f in fields(StudySettings) if f.default is not MISSING or f.default_factory is not MISSING}
    new = asdict(settings)
    differ = [k for k in new if k not in SPEED_ONLY and old.get(k, defaults.get(k)) != new[k]]
    if differ:
        shown = "; ".join(f"{k}: folder {old.get(k, defaults.get(k))}, this study {new[k]}" for k in differ[:3])
        raise StudyError(f"{out_dir} holds another study ({shown}); {hint}")


def _write_settings(out_dir: Path, settings: StudySettings) -> None:
    tmp = out_dir / f".study.json.{os.getpid()}.tmp"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(settings.to_json())
        os.replace(tmp, out_dir / "study.json")  # atomic: the old settings or the new, never half
    except OSError as exc:  # a full disk, a read-only folder
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise StudyError(f"cannot write {out_dir / 'study.json'} ({exc.strerror}); free space or fix "
                         "permissions, then rerun the same command") from None


def study_roles(cmap: ComponentMap) -> list[str]:
    return [r for r in (*MIXER_ROLES, "mlp") if r in cmap.roles()]


def group_sizes(cmap: ComponentMap) -> set[int]:
    """Sizes of the groups a study ablates (components of each role, which are also its layers)."""
    return {len(cmap.layers_of(r)) for r in study_roles(cmap)}


def study_spec(cmap: ComponentMap, sizes: set[int], seeds: int = 10, grid=GRID) -> PlanSpec:
    """Every condition family of the study for one model; ``sizes``: random-control sizes shared by
    every model of the study."""
    roles = study_roles(cmap)
    gens: list = []
    for mode in ("zero", "skip_layer"):
        gens += [plans.GroupSpec(kind="group", role=r, mode=mode) for r in roles]
    gens += [plans.SweepSpec(kind="sweep", roles=roles, mode="zero"),
             plans.SweepSpec(kind="sweep", roles=[], mode="skip_layer")]
    for mode in ("zero", "skip_layer"):
        gens += [plans.ThirdsSpec(kind="thirds", role=r, mode=mode) for r in roles if len(cmap.layers_of(r)) >= 3]
    gens += [plans.ProgressiveSpec(kind="progressive", role=r, sizes=list(grid), mode="zero") for r in roles]
    n_components = sum(len(cmap.layers_of(r)) for r in roles)
    for size in sorted(sizes):
        for pool, mode, n_pool in ((roles, "zero", n_components), (["layer"], "skip_layer", cmap.n_layers)):
            if 1 <= size < n_pool:  # a draw of the whole pool is forced, not random
                gens.append(plans.RandomSpec(kind="random_matched", size=size, pool=pool, mode=mode,
                                             seeds=min(seeds, comb(n_pool, size))))
    return PlanSpec(name="study", generators=gens)


def study_plan(cmap: ComponentMap, sizes: set[int], seeds: int = 10, grid=GRID) -> Plan:
    return plans.resolve(study_spec(cmap, sizes, seeds, grid), cmap)


# --- the compression curve --------------------------------------------------------------------

def _effects(ds, kind_group: str) -> dict[tuple[int, str], float]:
    """Mean (over corpora) loss increase of each single-component sweep condition of a group."""
    sel = (ds["group"] == kind_group) & ds["complete"]
    out = {}
    for cid in ds.condition.values[sel.values]:
        c = ds.sel(condition=cid)
        delta = float((c["loss"] - ds["loss"].sel(condition="baseline")).mean())
        role = str(c["roles"].values)
        out[(int(str(c["layers"].values)), role)] = delta
    return out


def compression_plan(ds, cmap: ComponentMap, seed: int = 0) -> Plan:
    """Cumulative removal orders from a finished study store: least important first (by the
    sweep's mean loss increase) and a seeded random order, for mixers, MLPs and whole layers."""
    conds: list[Condition] = [plans.BASELINE]
    mixers = [r for r in study_roles(cmap) if r != "mlp"]
    families = {"mixers": [f"sweep:{r}" for r in mixers], "mlp": ["sweep:mlp"] if "mlp" in cmap.roles() else [],
                "layers": ["sweep:layer"]}
    rng = np.random.default_rng(seed)
    for family, groups in families.items():
        effects: dict = {}
        for g in groups:
            effects.update(_effects(ds, g))
        if len(effects) < 2:
            continue
        mode = COMPRESSION_FAMILIES[family]
        ranked = sorted(effects, key=lambda k: (effects[k], k))
        shuffled = [ranked[i] for i in rng.permutation(len(ranked))]
        for order, seq in (("importance", ranked), ("random", shuffled)):
            for k in range(1, len(seq) + 1):
                targets = tuple(Target(layer=layer, role=role) for layer, role in sorted(seq[:k]))
                label = f"{family}: {k} removed, {'least important first' if order == 'importance' else f'random order (seed {seed})'}"
                conds.append(Condition(targets=targets, mode=mode, kind="compression",
                                       draw_seed=seed if order == "random" else None,
                                       group=f"compression:{family}:{order}", label=label))
    unique = list({c.id: c for c in reversed(conds)}.values())[::-1]
    return Plan(name="compression", conditions=tuple(unique))


def removable(ratios: np.ndarray, threshold: float) -> int:
    """How many steps of a cumulative curve stay within ``1 + threshold`` of the baseline
    (steps 1..n; the count before the first step that exceeds it)."""
    over = np.flatnonzero(np.asarray(ratios) > 1 + threshold)
    return int(over[0]) if len(over) else len(ratios)


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_") or "model"


# --- running it -------------------------------------------------------------------------------

@dataclass
class ModelPlan:
    model: str
    store: Path
    plan: Plan
    n_forward_tokens: int  # per condition: rolling-window inputs plus task requests


def forward_tokens(corpora, protocol, task_tokens: int = 0) -> int:
    """Tokens one condition pushes through the model (window inputs, overlaps and warm-ups included)."""
    return sum(protocol.forward_tokens(k.n_tokens) for k in corpora) + task_tokens


class ModelCache:
    """Each study model loaded once and kept for the later passes (maps, checks, run) while the
    kept weights stay within a quarter of the free memory of the study's device; a model that
    does not fit is loaded again when needed, as before."""

    def __init__(self, device: str, dtype: str, budget: int | None = None):
        self.device, self.dtype, self.kept, self.loads, self.budget = device, dtype, {}, 0, budget

    def get(self, model: str):
        from workbench.loading import load_model

        if model in self.kept:
            return self.kept[model]
        lm = load_model(model, device=self.device, dtype=self.dtype)
        self.loads += 1
        if self.budget is None:  # measured once the device is known to work
            self.budget = _free_memory(self.device) // 4
        held = sum(_nbytes(m.model) for m in self.kept.values())
        if held + _nbytes(lm.model) <= self.budget:
            self.kept[model] = lm
        return lm

    def drop(self, model: str) -> None:
        self.kept.pop(model, None)  # after its run: the memory goes to the next model


def _nbytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _free_memory(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    import psutil  # a dependency of distributed

    return int(psutil.virtual_memory().available)


def run_study(settings: StudySettings, out_dir: str | Path, *, dry_run: bool = False, log=print,
              progress: bool = True, cluster=None, replace: bool = False) -> list[ModelPlan]:
    """Run (or resume) the study into ``out_dir``; returns what ran per model.

    Every model's inputs, plan and existing store are checked before anything is written;
    ``study.json`` is written only then. A folder holding another study is refused unless
    ``replace`` (``check_folder``). ``cluster``: a ``workbench.cluster_options.Target``; each
    store's conditions then run on that cluster, through one client for the whole study."""
    from workbench.architectures import component_map
    from workbench.cluster_options import plan_runner
    from workbench.corpora import read_text
    from torch import get_num_threads

    from workbench.estimate import duration
    from workbench.runner import prepare_inputs
    from workbench.tasks import get_tasks

    from workbench.runner import run_plan as check_plan

    out_dir = Path(out_dir)
    if not dry_run:
        check_out(out_dir)
        check_folder(out_dir, settings, replace)
    texts = [read_text(c) for c in settings.corpora]
    tasks = get_tasks(settings.tasks) if settings.tasks != [] else []
    models = ModelCache(settings.device, settings.dtype)
    loaded_maps = {}
    for model in settings.models:  # first every model's map: random controls share their sizes
        loaded_maps[model] = component_map(models.get(model).model)
    sizes = set().union(*(group_sizes(c) for c in loaded_maps.values()))

    inputs = {}  # model -> (plan, corpora, reference, protocol): tokenized once for the check and the run

    def prepare(model: str):
        lm = models.get(model)
        if model in inputs:
            return (inputs[model][0], lm, *inputs[model][1:])
        plan = study_plan(loaded_maps[model], sizes, settings.seeds, settings.grid)
        try:
            corpora, ref, protocol = prepare_inputs(
                lm, settings.corpora, texts, max_tokens=settings.max_tokens, prefix_token=settings.prefix_token,
                context=settings.context, stride=settings.stride, batch_size=settings.batch_size,
                scoring=settings.scoring, streams=settings.streams)
        except ValueError as exc:  # e.g. --prefix-token bos on a model without one
            raise StudyError(f"{model}: {exc}") from None
        inputs[model] = (plan, corpora, ref, protocol)
        return plan, lm, corpora, ref, protocol

    if not dry_run:  # every model checked before anything is written (study.json included)
        for model in settings.models:
            plan, lm, corpora, ref, protocol = prepare(model)
            check_plan(lm, plan, corpora, out_dir / f"{slug(model)}.zarr", protocol=protocol, reference=ref,
                       device=settings.device, dtype=settings.dtype, donor_seed=0, tasks=tasks,
                       task_items=settings.task_items, progress=False, check_only=True)
            del lm
        _write_settings(out_dir, settings)
    task_tokens_cache = {}
    done, estimates = [], []
    with plan_runner(None if dry_run else cluster, settings.device) as run_plan:
        for model in settings.models:
            cmap = loaded_maps[model]
            plan, lm, corpora, ref, protocol = prepare(model)
            if model not in task_tokens_cache:
                task_tokens_cache[model] = _task_tokens(lm.tokenizer, tasks, settings.task_items, lm.model)
            per_condition = forward_tokens(corpora, protocol, task_tokens_cache[model])
            store = out_dir / f"{slug(model)}.zarr"
            done.append(ModelPlan(model, store, plan, per_condition))
            n_comp = 2 * (2 * cmap.n_layers + len(cmap.components))
            log(f"{model}: {len(plan.conditions)} conditions x {per_condition:,} forward tokens "
                f"= {len(plan.conditions) * per_condition:,} (+ compression curve: up to "
                f"{n_comp} conditions, perplexity only) -> {store}")
            if dry_run:
                est = _estimate(lm, plan, settings, protocol)
                ppl_tokens = forward_tokens(corpora, protocol)
                main, comp = est.seconds(per_condition), n_comp * ppl_tokens / est.tokens_per_s
                estimates.append(main + comp)
                log(f"  estimate here: {duration(main)} for {est.computed} computed conditions "
                    f"({len(plan.conditions) - est.computed} copies of an identical edit), plus up to "
                    f"{duration(comp)} for the compression curve; plain forward {est.tokens_per_s:,.0f} tok/s "
                    f"on {settings.device} ({get_num_threads()} thread{'s' if get_num_threads() > 1 else ''}), "
                    + (f"prefix reuse runs {est.work / est.computed:.0%} of the naive loop's layers"
                       if settings.fast else "naive loop (--no-fast)"))
                models.drop(model)
                continue
            ds = run_plan(lm, plan, corpora, store, protocol=protocol, reference=ref, device=settings.device,
                          dtype=settings.dtype, donor_seed=0, tasks=tasks, task_items=settings.task_items,
                          progress=progress, log=log, fast=settings.fast, max_rows=settings.max_rows)
            comp = compression_plan(ds, cmap)
            run_plan(lm, comp, corpora, out_dir / f"{slug(model)}.compression.zarr", protocol=protocol, reference=ref,
                     device=settings.device, dtype=settings.dtype, donor_seed=0, progress=progress, log=log,
                     fast=settings.fast, max_rows=settings.max_rows)
            del lm
            models.drop(model)
    if dry_run and len(estimates) > 1:
        log(f"estimate for the whole study here: up to {duration(sum(estimates))} in one process "
            "(see workbench/estimate.py for what it leaves out)")
    return done


def _estimate(lm, plan, settings: StudySettings, protocol):
    from workbench.estimate import estimate
    from workbench.runner import GROUP_SIZE

    on_gpu = settings.device.startswith("cuda")
    rows = protocol.streams if protocol.scoring == "carry" else (
        protocol.batch_size if on_gpu else min(protocol.batch_size, 2))
    return estimate(lm.model, plan, rows=rows, length=protocol.context, fast=settings.fast,
                    group_size=GROUP_SIZE)


def _task_tokens(tokenizer, tasks, n_items, model=None) -> int:
    """Forward tokens of one condition's tasks: each context once where the model's cache carries
    it to the choices (the runner's default), else every choice whole. (A plan's resample
    conditions are scored per choice; the study's plans have none.)"""
    from workbench.evaluate.multiple_choice import build_requests
    from workbench.evaluate.shared_context import forward_tokens as shared_tokens, refusal

    if not tasks:
        return 0
    items = [t.items()[:n_items] if n_items else t.items() for t in tasks]

    def encode(s):
        return tokenizer(s, add_special_tokens=False)["input_ids"]

    requests = build_requests(tasks, items, encode, (0,))
    if model is not None and refusal(model) is None:
        return shared_tokens(requests)
    return sum(len(r.input_ids) for r in requests)
