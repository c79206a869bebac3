"""Ablation plans as data: validated, serialisable, hashable conditions.

A *spec* (what a user writes: generators + explicit conditions) is resolved against a model's
component map into a *plan* (the concrete list of conditions), which is saved with the results.
"""

from __future__ import annotations

import hashlib
import json
from math import comb
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from workbench.architectures import ROLES, ComponentMap
from workbench.labels import layer_ranges

Mode = Literal["zero", "mean", "resample", "skip_layer"]
MODES = ("zero", "mean", "resample", "skip_layer")
Kind = Literal["baseline", "group", "sweep", "thirds", "progressive", "random_matched", "compression", "custom"]
KINDS = ("baseline", "group", "sweep", "thirds", "progressive", "random_matched", "compression", "custom")
BASELINE_ID = "baseline"
BASELINE_LABEL = "baseline (no ablation)"


class PlanError(ValueError):
    """A plan that does not fit the model or is malformed; the message says what is valid."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Target(_Frozen):
    layer: int = Field(ge=0)
    role: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, v):
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; valid roles: {', '.join(ROLES)}")
        return v


class Condition(_Frozen):
    """One ablation: which components, how, and (for random sets and resample) which seeds.

    ``draw_seed`` picked a random_matched set; ``donor_seed`` picks resample donors. They are
    separate so a random control differs from its group only in which components it removes.
    """

    targets: tuple[Target, ...] = ()
    mode: Mode = "zero"
    draw_seed: int | None = None
    donor_seed: int | None = None
    kind: Kind = "custom"
    group: str = ""  # conditions that belong together (e.g. one random control's trials)
    label: str = ""

    @model_validator(mode="before")
    @classmethod
    def _no_bare_seed(cls, data):
        if isinstance(data, dict) and "seed" in data:
            raise ValueError("'seed' is ambiguous: write donor_seed (resample donors) or "
                             "draw_seed (which random set was drawn)")
        return data

    @model_validator(mode="after")
    def _check(self):
        if self.kind == "baseline":
            if self.targets or self.draw_seed is not None or self.donor_seed is not None:
                raise ValueError("the baseline has no targets and no seeds")
            if self.label not in ("", BASELINE_LABEL):
                raise ValueError(f"the baseline's label is fixed: {BASELINE_LABEL!r}")
        elif not self.targets:
            raise ValueError("a condition needs at least one target (only the baseline has none)")
        elif self.label == BASELINE_LABEL:
            raise ValueError(f"the label {BASELINE_LABEL!r} is reserved for the baseline")
        if self.donor_seed is not None and self.mode != "resample":
            raise ValueError(f"donor_seed applies to mode resample only, not {self.mode!r}")
        roles = {t.role for t in self.targets}
        if self.mode == "skip_layer" and roles - {"layer"}:
            raise ValueError("skip_layer conditions target whole layers: use role 'layer'")
        if self.mode != "skip_layer" and "layer" in roles:
            raise ValueError(f"role 'layer' is only valid with mode skip_layer, not {self.mode!r}")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("a condition lists the same target twice")
        if not self.label:
            object.__setattr__(self, "label", default_label(self))
        return self

    @property
    def key(self) -> dict:
        """What the condition does (not how it is named): the basis of its id."""
        return {"targets": sorted((t.layer, t.role) for t in self.targets), "mode": self.mode,
                "donor_seed": self.donor_seed if self.mode == "resample" else None}

    @property
    def effect_id(self) -> str:
        """Same for conditions that edit the model identically (their results are shared)."""
        if self.kind == "baseline":
            return BASELINE_ID
        return hashlib.sha256(json.dumps(self.key).encode()).hexdigest()[:12]

    @property
    def id(self) -> str:
        """Unique within a plan: the edit, and the family it is reported in (a one-layer third
        is also a sweep entry, each random trial is its own row; computed once)."""
        if self.kind == "baseline":
            return BASELINE_ID
        return hashlib.sha256(json.dumps([self.key, self.kind, self.group, self.draw_seed]).encode()).hexdigest()[:12]

    @property
    def roles(self) -> list[str]:
        return [r for r in ROLES if any(t.role == r for t in self.targets)]

    @property
    def layers(self) -> list[int]:
        return sorted({t.layer for t in self.targets})


def default_label(c: Condition) -> str:
    if c.kind == "baseline":
        return BASELINE_LABEL
    where = f"layers {layer_ranges(c.layers)}" if len(c.layers) > 1 else f"layer {c.layers[0]}"
    if c.mode == "skip_layer":
        text = f"{where} skipped"
    else:
        text = f"{'+'.join(c.roles)} off, {where}"
    if c.donor_seed is not None:
        text += f", donor seed {c.donor_seed}"
    return f"{text}, {c.mode}"


BASELINE = Condition(kind="baseline")


class Plan(_Frozen):
    name: str = "plan"
    conditions: tuple[Condition, ...]

    @model_validator(mode="after")
    def _unique(self):
        seen = {}
        for c in self.conditions:
            if c.id in seen:
                raise ValueError(f"conditions {seen[c.id]!r} and {c.label!r} repeat one another")
            seen[c.id] = c.label
        return self

    @property
    def hash(self) -> str:
        body = json.dumps([[c.key, c.kind, c.group, c.draw_seed] for c in self.conditions])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def table(self) -> list[dict]:
        return [{"id": c.id, "label": c.label, "mode": c.mode, "kind": c.kind, "group": c.group,
                 "roles": "+".join(c.roles), "layers": layer_ranges(c.layers),
                 "draw_seed": c.draw_seed, "donor_seed": c.donor_seed}
                for c in self.conditions]


# --- generators: each returns conditions resolved against a component map -----------------

def _require_role(cmap: ComponentMap, role: str) -> None:
    if role not in cmap.roles() or role == "layer":
        valid = [r for r in cmap.roles() if r != "layer"]
        raise PlanError(f"role {role!r} is absent from this {cmap.model_type} model; "
                        f"roles present: {', '.join(valid)}")


def _targets(cmap: ComponentMap, role: str, layers, mode: str) -> tuple[Target, ...]:
    """Targets for ``role`` at ``layers``; skip_layer turns them into whole layers."""
    if mode == "skip_layer":
        return tuple(Target(layer=i, role="layer") for i in sorted(layers))
    return tuple(Target(layer=i, role=role) for i in sorted(layers))


def family_name(kind: str, what: str, mode: str) -> str:
    """A condition family's ``group``: ``kind:what``, with the mode appended unless it is zero
    (so component-only and whole-layer versions of one family never share a group)."""
    return f"{kind}:{what}" + ("" if mode == "zero" else f":{mode}")


def _named(role: str, mode: str, layers, what: str = "") -> str:
    where = f"layers {layer_ranges(layers)}" if len(layers) > 1 else f"layer {layers[0]}"
    if mode == "skip_layer":
        return f"{role} layers skipped{what}, {where}, skip_layer"
    return f"{role} off{what}, {where}, {mode}"


def group(cmap: ComponentMap, role: str, mode: str = "zero", seed: int | None = None) -> list[Condition]:
    _require_role(cmap, role)
    layers = cmap.layers_of(role)
    return [Condition(targets=_targets(cmap, role, layers, mode), mode=mode, donor_seed=seed, kind="group",
                      group=family_name("group", role, mode), label=_named(role, mode, layers))]


def sweep(cmap: ComponentMap, roles, mode: str = "zero", seed: int | None = None) -> list[Condition]:
    """One condition per component of each role (per layer for skip_layer)."""
    if mode == "skip_layer":
        return [Condition(targets=(Target(layer=i, role="layer"),), mode=mode, kind="sweep",
                          group="sweep:layer") for i in range(cmap.n_layers)]
    out = []
    for role in roles:
        _require_role(cmap, role)
        for i in cmap.layers_of(role):
            out.append(Condition(targets=(Target(layer=i, role=role),), mode=mode, donor_seed=seed,
                                 kind="sweep", group=family_name("sweep", role, mode)))
    return out


def thirds(cmap: ComponentMap, role: str, mode: str = "zero", seed: int | None = None) -> list[Condition]:
    """Contiguous early / middle / late thirds of the role's layers."""
    _require_role(cmap, role)
    layers = cmap.layers_of(role)
    if len(layers) < 3:
        raise PlanError(f"thirds need at least 3 {role} layers; this model has {len(layers)}")
    out = []
    for name, part in zip(("early", "middle", "late"), np.array_split(np.array(layers), 3)):
        part = [int(x) for x in part]
        out.append(Condition(targets=_targets(cmap, role, part, mode), mode=mode, donor_seed=seed,
                             kind="thirds", group=family_name("thirds", role, mode),
                             label=_named(role, mode, part, f" ({name} third)")))
    return out


def progressive(cmap: ComponentMap, role: str, sizes, orders=("first", "last", "random"), mode: str = "zero",
                seed: int | None = None, draw_seed: int = 0) -> list[Condition]:
    """The first N, last N, or N random layers of ``role`` for each N in ``sizes`` (the study's
    progressive removal); sizes not below the role's count are left out (that is the group)."""
    _require_role(cmap, role)
    layers = cmap.layers_of(role)
    out = []
    for order in orders:
        if order not in ("first", "last", "random"):
            raise PlanError(f"unknown progressive order {order!r}; valid: first, last, random")
        for n in sorted({int(n) for n in sizes}):
            if not 1 <= n < len(layers):
                continue
            if order == "random":
                pick = sorted(np.random.default_rng([draw_seed, n]).choice(layers, size=n, replace=False).tolist())
            else:
                pick = layers[:n] if order == "first" else layers[-n:]
            what = f" ({order} {n}" + (f", draw seed {draw_seed})" if order == "random" else ")")
            out.append(Condition(targets=_targets(cmap, role, pick, mode), mode=mode, donor_seed=seed,
                                 draw_seed=draw_seed if order == "random" else None, kind="progressive",
                                 group=family_name("progressive", f"{role}:{order}", mode), label=_named(role, mode, pick, what)))
    return out


def random_matched(cmap: ComponentMap, size: int | str, pool, seeds, mode: str = "zero",
                   donor_seed: int | None = None) -> list[Condition]:
    """Random sets of ``size`` components (or layers, for skip_layer) drawn from ``pool``.

    ``size`` may name a role: the size of that role's group. ``seeds`` is a count (seeds
    0..n-1) or an explicit list; each seed gives one reproducible draw.
    """
    pool = [pool] if isinstance(pool, str) else list(pool)
    if isinstance(size, str):
        _require_role(cmap, size)
        size = len(cmap.layers_of(size))
    for role in pool:
        if role != "layer":
            _require_role(cmap, role)
    if mode == "skip_layer":
        candidates = sorted({c.layer for c in cmap.components if c.role in pool or "layer" in pool})
        candidates = [Target(layer=i, role="layer") for i in candidates]
    else:
        if "layer" in pool:
            raise PlanError("pool role 'layer' needs mode skip_layer")
        candidates = [Target(layer=c.layer, role=c.role) for c in cmap.components if c.role in pool]
    if not 1 <= size <= len(candidates):
        raise PlanError(f"random_matched size {size} must be between 1 and the pool size {len(candidates)}")
    seeds = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    tag = "+".join(pool)
    if len(set(seeds)) < len(seeds):
        raise PlanError(f"random_matched seeds {seeds} repeat a seed; each seed is one draw")
    n_sets = comb(len(candidates), size)
    if len(seeds) > n_sets:
        raise PlanError(f"random_matched: {len(seeds)} seeds but only {n_sets} distinct set(s) of {size} "
                        f"among the {len(candidates)} {tag} candidates; use at most {n_sets} seeds")
    out, drawn = [], set()
    for s in seeds:
        # Distinct sets: a draw an earlier seed already made is redrawn from the same stream,
        # so every trial is a different control and the result depends only on the seed list.
        rng = np.random.default_rng(s)
        pick = tuple(sorted(rng.choice(len(candidates), size=size, replace=False)))
        while pick in drawn:
            pick = tuple(sorted(rng.choice(len(candidates), size=size, replace=False)))
        drawn.add(pick)
        targets = tuple(sorted((candidates[i] for i in pick), key=lambda t: (t.layer, t.role)))
        out.append(Condition(targets=targets, mode=mode, draw_seed=s, donor_seed=donor_seed, kind="random_matched",
                             group=family_name("random", f"{size}of{tag}", mode),
                             label=f"random {size} of {tag}, draw seed {s}"
                                   + (f", donor seed {donor_seed}" if donor_seed is not None else "")
                                   + f", {mode}"))
    return out


# --- specs: what users write ------------------------------------------------------------

class GroupSpec(_Frozen):
    kind: Literal["group"]
    role: str
    mode: Mode | None = None


class SweepSpec(_Frozen):
    kind: Literal["sweep"]
    roles: list[str] = []
    mode: Mode | None = None


class ThirdsSpec(_Frozen):
    kind: Literal["thirds"]
    role: str
    mode: Mode | None = None


class ProgressiveSpec(_Frozen):
    kind: Literal["progressive"]
    role: str
    sizes: list[int]
    orders: list[Literal["first", "last", "random"]] = ["first", "last", "random"]
    draw_seed: int = 0
    mode: Mode | None = None


class RandomSpec(_Frozen):
    kind: Literal["random_matched"]
    size: int | str
    pool: list[str]
    seeds: int | list[int] = 10
    mode: Mode | None = None


GeneratorSpec = Annotated[Union[GroupSpec, SweepSpec, ThirdsSpec, ProgressiveSpec, RandomSpec],
                          Field(discriminator="kind")]


class PlanSpec(_Frozen):
    """What a user writes: generators and explicit conditions, resolved per model."""

    name: str = "plan"
    mode: Mode = "zero"
    modes: list[Mode] | None = None  # run every generator under each of these modes
    donor_seed: int = 0  # resample donors of generated conditions (one seed for all: paired)
    baseline: bool = True
    generators: list[GeneratorSpec] = []
    conditions: list[Condition] = []
    roles: list[str] | None = None  # restrict generators to roles present ("auto" roles)

    @model_validator(mode="before")
    @classmethod
    def _no_bare_seed(cls, data):
        if isinstance(data, dict) and "seed" in data:
            raise ValueError("'seed' is ambiguous: the plan-level seed is 'donor_seed' (resample donors "
                             "of generated conditions); random sets take 'seeds' in their generator")
        return data


def _present(cmap: ComponentMap, roles) -> list[str]:
    return [r for r in roles if r in cmap.roles()]


def resolve(spec: PlanSpec, cmap: ComponentMap) -> Plan:
    """Turn a spec into concrete conditions for this model, validating every target."""
    conds: list[Condition] = [BASELINE] if spec.baseline else []
    for gen in spec.generators:
        for mode in ([gen.mode] if gen.mode else spec.modes or [spec.mode]):
            seed = spec.donor_seed if mode == "resample" else None
            if isinstance(gen, GroupSpec):
                conds += group(cmap, gen.role, mode, seed)
            elif isinstance(gen, SweepSpec):
                conds += sweep(cmap, gen.roles or _present(cmap, ("attention", "linear_attention", "ssm", "conv")), mode, seed)
            elif isinstance(gen, ThirdsSpec):
                conds += thirds(cmap, gen.role, mode, seed)
            elif isinstance(gen, ProgressiveSpec):
                conds += progressive(cmap, gen.role, gen.sizes, gen.orders, mode, seed, gen.draw_seed)
            else:
                conds += random_matched(cmap, gen.size, gen.pool, gen.seeds, mode, seed)
    for c in spec.conditions:
        if c.kind == "baseline":
            raise PlanError("a plan's conditions cannot be the baseline: it is added by the workbench "
                            "(set 'baseline: false' to leave it out)")
        validate_condition(c, cmap)
        conds.append(c)
    # the same edit from two generators (e.g. a one-layer third) is kept in both families;
    # the runner computes it once. Exact repeats are dropped.
    unique = list({c.id: c for c in reversed(conds)}.values())[::-1]
    if not any(c.kind != "baseline" for c in unique):
        raise PlanError(f"plan {spec.name!r} has no ablation conditions; add generators or conditions")
    return Plan(name=spec.name, conditions=tuple(unique))


def validate_condition(c: Condition, cmap: ComponentMap) -> None:
    for t in c.targets:
        if t.role == "layer":
            if not 0 <= t.layer < cmap.n_layers:
                raise PlanError(f"layer {t.layer} is out of range; this model has layers 0-{cmap.n_layers - 1}")
            continue
        try:
            cmap.get(t.layer, t.role)
        except KeyError as exc:
            raise PlanError(exc.args[0]) from None


def auto_spec(cmap: ComponentMap, name: str, mode: str = "zero", seeds: int = 10) -> PlanSpec:
    """Presets resolved from the roles this model has (mixers only, so they suit any family)."""
    mixers = _present(cmap, ("attention", "linear_attention", "ssm", "conv"))
    if name == "groups":
        gens = [GroupSpec(kind="group", role=r) for r in mixers]
    elif name == "sweep":
        gens = [SweepSpec(kind="sweep", roles=mixers)]
    elif name == "study":
        gens = ([GroupSpec(kind="group", role=r) for r in mixers]
                + [SweepSpec(kind="sweep", roles=mixers)]
                + [ThirdsSpec(kind="thirds", role=r) for r in mixers if len(cmap.layers_of(r)) >= 3]
                + _random_controls(cmap, mixers, seeds))
    elif name == "smoke":
        gens = [GroupSpec(kind="group", role=r) for r in mixers]
        gens.append(RandomSpec(kind="random_matched", size=1, pool=mixers, seeds=2))
    else:
        raise PlanError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return PlanSpec(name=name, mode=mode, generators=gens)


def _random_controls(cmap: ComponentMap, mixers: list[str], seeds: int) -> list[RandomSpec]:
    """One random-matched control per mixer role, sized like its group and drawn from all mixers;
    none where the draw is forced (a Transformer's only pool is its attention group), and no more
    trials than there are distinct sets."""
    n_pool = sum(len(cmap.layers_of(r)) for r in mixers)
    out = []
    for r in mixers:
        n_sets = comb(n_pool, len(cmap.layers_of(r)))
        if n_sets > 1:
            out.append(RandomSpec(kind="random_matched", size=r, pool=mixers, seeds=min(seeds, n_sets)))
    return out


PRESETS = ("smoke", "groups", "sweep", "study")


def load_spec(path: str | Path) -> PlanSpec:
    """Read a YAML or JSON plan spec; a saved Plan (``conditions`` only) is accepted too."""
    path = Path(path)
    if not path.is_file():
        raise PlanError(f"plan file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise PlanError(f"plan file {str(path)!r} is not valid YAML/JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(f"plan file {str(path)!r} must hold a mapping with 'generators' and/or 'conditions'")
    try:
        return PlanSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise PlanError(f"malformed plan {str(path)!r}: {where}: {first['msg']}") from None
