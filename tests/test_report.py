"""The report's verdicts on small synthetic stores (no model): every branch (holds, does not hold,
undecided, underpowered), the random and Transformer controls, same edits reported once, ratios
beyond uniform guessing, and an unfinished study."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import xarray as xr

from workbench import report as rp
from workbench.store import FORMAT

PROTOCOL = json.dumps({"context": 512, "stride": 256, "prefix_token": "none", "reference": "x", "batch_size": 8})
N_LAYERS = 12
ATT = [3, 7, 11]
LIN = [k for k in range(N_LAYERS) if k not in ATT]


def _layers(ls) -> str:
    from workbench.labels import layer_ranges

    return layer_ranges(ls)


class Builder:
    """A store of one model: conditions with a chosen extra loss per token (nats) and noise."""

    def __init__(self, model, n_windows=80, noise=0.02, seed=0, vocab=1000):
        self.model, self.n, self.noise, self.vocab = model, n_windows, noise, vocab
        self.rng = np.random.default_rng(seed)
        self.rows: list[dict] = []
        self.add("baseline", "baseline", "", "none", "", [], 0.0)

    def add(self, cid, kind, group, mode, roles, layers, effect, seed=-1, noise=None, complete=True):
        self.rows.append(dict(cid=cid, kind=kind, group=group, mode=mode, roles=roles, layers=list(layers),
                              effect=effect, seed=seed, noise=self.noise if noise is None else noise,
                              complete=complete))
        return self

    def randoms(self, mode, size, effects):
        for k, e in enumerate(effects):
            self.add(f"r-{mode}-{size}-{k}", "random_matched", f"random:{size}:{mode}", mode,
                     "layer" if mode == "skip_layer" else "attention+mlp", range(size), e, seed=k)
        return self

    def build(self) -> xr.Dataset:
        tokens = np.full(self.n, 256)
        base = self.rng.gamma(50.0, 0.1, self.n) * 256  # about 5 nats per token
        nll = []
        for r in self.rows:
            eps = self.rng.normal(size=self.n) * r["noise"]
            nll.append(base + tokens * (r["effect"] + eps) if r["kind"] != "baseline" else base)
        nll = np.array(nll)
        done = np.array([r["complete"] for r in self.rows])
        nll[~done] = np.nan
        coords = {
            "condition": [r["cid"] for r in self.rows], "label": ("condition", [r["cid"] for r in self.rows]),
            "kind": ("condition", [r["kind"] for r in self.rows]), "group": ("condition", [r["group"] for r in self.rows]),
            "mode": ("condition", [r["mode"] for r in self.rows]), "roles": ("condition", [r["roles"] for r in self.rows]),
            "layers": ("condition", [_layers(r["layers"]) if r["layers"] else "" for r in self.rows]),
            "n_targets": ("condition", np.array([len(r["layers"]) for r in self.rows], dtype=np.int32)),
            "draw_seed": ("condition", np.array([r["seed"] for r in self.rows])),
            "same_as_group": ("condition", np.zeros(len(self.rows), dtype=bool)),
            "corpus": ["wiki"]}
        return xr.Dataset({"window_nll": (("condition", "corpus", "window"), nll[:, None, :]),
                           "window_tokens": (("corpus", "window"), tokens[None]),
                           "complete": ("condition", done)}, coords=coords,
                          attrs={"model": self.model, "n_layers": N_LAYERS, "vocab_size": self.vocab,
                                 "protocol": PROTOCOL})


def hybrid(lin=1.0, att=0.2, lin_skip=2.0, att_skip=0.5, n_windows=80, noise=0.02, rand_skip9=None,
           thirds=(0.5, 0.2, 0.1), tasks=None, seed=0) -> xr.Dataset:
    b = Builder("hybrid", n_windows, noise, seed)
    b.add("g-att", "group", "group:attention", "zero", "attention", ATT, att)
    b.add("g-lin", "group", "group:linear_attention", "zero", "linear_attention", LIN, lin)
    b.add("g-mlp", "group", "group:mlp", "zero", "mlp", range(N_LAYERS), 3.0)
    b.add("s-att", "group", "group:attention:skip_layer", "skip_layer", "layer", ATT, att_skip)
    b.add("s-lin", "group", "group:linear_attention:skip_layer", "skip_layer", "layer", LIN, lin_skip)
    b.add("s-mlp", "group", "group:mlp:skip_layer", "skip_layer", "layer", range(N_LAYERS), 12.0)
    for role, layers in (("attention", ATT), ("linear_attention", LIN), ("mlp", range(N_LAYERS))):
        b.add(f"sw-{role}", "sweep", f"sweep:{role}", "zero", role, [layers[0]], 0.05)
        for k, e in enumerate(thirds):
            b.add(f"t-{role}-{k}", "thirds", f"thirds:{role}", "zero", role, [layers[k]], e)
    b.randoms("zero", 3, np.linspace(0.05, 0.3, 10)).randoms("zero", 9, np.linspace(0.3, 0.8, 10))
    b.randoms("skip_layer", 3, np.linspace(0.2, 1.0, 10))
    b.randoms("skip_layer", 9, rand_skip9 if rand_skip9 is not None else np.linspace(0.5, 1.5, 10))
    ds = b.build()
    return with_tasks(ds, tasks) if tasks else ds


def transformer(thirds=(0.5, 0.2, 0.1), rand_skip=None, n_windows=80, seed=1, vocab=1000) -> xr.Dataset:
    b = Builder("transformer", n_windows, 0.02, seed, vocab)
    b.add("g-att", "group", "group:attention", "zero", "attention", range(N_LAYERS), 2.0)
    b.add("g-mlp", "group", "group:mlp", "zero", "mlp", range(N_LAYERS), 3.0)
    b.add("s-att", "group", "group:attention:skip_layer", "skip_layer", "layer", range(N_LAYERS), 12.0)
    b.add("s-mlp", "group", "group:mlp:skip_layer", "skip_layer", "layer", range(N_LAYERS), 12.0)
    for role in ("attention", "mlp"):
        b.add(f"sw-{role}", "sweep", f"sweep:{role}", "zero", role, [0], 0.05)
        for k, e in enumerate(thirds):
            b.add(f"t-{role}-{k}", "thirds", f"thirds:{role}", "zero", role, [4 * k], e)
    for size, effects in (rand_skip or {3: np.linspace(0.2, 1.0, 10), 9: np.linspace(0.5, 1.5, 10)}).items():
        b.randoms("skip_layer", size, effects)
    return b.build()


def with_tasks(ds: xr.Dataset, tasks: dict) -> xr.Dataset:
    """tasks: name -> (n_items, chance, baseline accuracy, {condition: accuracy})."""
    names = list(tasks)
    n_max = max(t[0] for t in tasks.values())
    correct = np.full((ds.sizes["condition"], len(names), n_max, 1), np.nan)
    for j, name in enumerate(names):
        n, _, base, accs = tasks[name]
        for i, cid in enumerate(ds.condition.values):
            acc = accs.get(str(cid), base)
            correct[i, j, :n, 0] = (np.arange(n) < round(acc * n)).astype(float)
    return ds.assign(correct=(("condition", "task", "item", "metric"), correct),
                     chance=("task", [tasks[t][1] for t in names])).assign_coords(task=names, metric=["acc"])


def found(results: dict, rows=()) -> dict[str, rp.Finding]:
    return {f"{f.model}|{f.claim}": f for f in rp.findings(results, list(rows))}


def verdict(fs: dict, model: str, claim_start: str) -> rp.Finding:
    hits = [f for k, f in fs.items() if k.startswith(f"{model}|{claim_start}")]
    assert len(hits) == 1, (claim_start, list(fs))
    return hits[0]


BACKBONE = "linear attention (GDN) is the backbone: removing it costs more than removing attention (component"


@pytest.mark.parametrize("lin, att, noise, n_windows, expected", [
    (1.0, 0.2, 0.02, 80, rp.HOLDS),
    (0.2, 1.0, 0.02, 80, rp.NOT),  # reversed
    (0.30, 0.30, 0.001, 80, rp.NOT),  # no difference beyond 2%
    (0.31, 0.30, 0.2, 40, rp.UNDECIDED),  # the interval spans no difference and is wide
    (1.0, 0.2, 0.02, 6, rp.UNDERPOWERED),  # too few windows for a block bootstrap
])
def test_backbone_verdict_branches(lin, att, noise, n_windows, expected):
    r = rp.analyse(hybrid(lin=lin, att=att, noise=noise, n_windows=n_windows), None)
    f = verdict(found({"hybrid": r}), "hybrid", BACKBONE)
    assert f.verdict == expected, f.evidence
    if expected == rp.UNDERPOWERED:
        assert "6 windows pooled" in f.evidence and "no interval" in f.evidence and "[" not in f.evidence


def test_underpowered_store_prints_no_intervals_and_no_verdicts():
    r = rp.analyse(hybrid(n_windows=6), None)
    assert r["power"] and all(math.isnan(g["zero"][1]) for g in r["groups"])
    fs = rp.findings({"hybrid": r}, [])
    assert fs and {f.verdict for f in fs} <= {rp.UNDERPOWERED, rp.CANNOT}
    assert rp._ci(r["groups"][0]["zero"]).endswith("(no interval)")
    strong = rp.analyse(hybrid(n_windows=80), None)
    assert rp.HOLDS in {f.verdict for f in rp.findings({"hybrid": strong}, [])}


def test_used_and_essential_branches():
    fs = found({"hybrid": rp.analyse(hybrid(att=0.0005, noise=0.0005), None)})
    assert verdict(fs, "hybrid", "attention is used").verdict == rp.NOT  # no effect beyond 1%
    assert verdict(fs, "hybrid", "both component types").verdict == rp.NOT
    fs = found({"hybrid": rp.analyse(hybrid(att=0.2), None)})
    assert verdict(fs, "hybrid", "attention is used").verdict == rp.HOLDS
    assert verdict(fs, "hybrid", "both component types").verdict == rp.HOLDS
    fs = found({"hybrid": rp.analyse(hybrid(att=0.095, noise=0.2, n_windows=30), None)})
    assert verdict(fs, "hybrid", "both component types").verdict == rp.UNDECIDED


def test_groups_against_random_controls_of_the_same_count():
    """Whole-layer removal of the 9 linear-attention layers is no worse than 9 random layers: the
    backbone it names is a count effect, so the claim does not hold for that protocol."""
    r = rp.analyse(hybrid(lin_skip=1.0, att_skip=0.3), None)
    lin = next(g for g in r["groups"] if g["role"] == "linear_attention")
    assert lin["skip_layer_place"] == "inside" and lin["zero_place"] == "above"
    f = verdict(found({"hybrid": r}), "hybrid", BACKBONE.replace("component", "whole layers"))
    assert f.verdict == rp.NOT and "count effect" in f.evidence
    r = rp.analyse(hybrid(lin_skip=1.7, att_skip=0.3), None)  # above all 10 random sets of 9 layers
    f = verdict(found({"hybrid": r}), "hybrid", BACKBONE.replace("component", "whole layers"))
    assert f.verdict == rp.HOLDS and "above all random sets" in f.evidence


def test_same_edit_reported_once_and_beyond_uniform_guessing_names_no_backbone():
    t = rp.analyse(transformer(), None)
    att, mlp = t["groups"]
    assert mlp["skip_layer_same_as"] == "attention" and att["skip_layer_same_as"] is None
    assert att["skip_layer_every_layer"] and att["skip_layer_beyond"]  # exp(12) x baseline > 1000
    table = "\n".join(rp._summary_table({"transformer": t}))
    assert table.count("x163,") == 1 and "mlp = attention" in table and "(beyond uniform)" in table
    # a hybrid whose whole-layer group goes past uniform guessing: no backbone named from it
    r = rp.analyse(hybrid(lin_skip=8.0), None)
    f = verdict(found({"hybrid": r}), "hybrid", BACKBONE.replace("component", "whole layers"))
    assert f.verdict == rp.CANNOT and "beyond uniform guessing" in f.evidence


def test_early_late_branches_and_the_transformer_control():
    t = rp.analyse(transformer(thirds=(0.5, 0.2, 0.1)), None)
    weak_t = rp.analyse(transformer(thirds=(0.12, 0.1, 0.1)), None)
    early = "early layers matter more than late ones (attention"
    for thirds, expected in (((0.5, 0.2, 0.1), rp.HOLDS), ((0.1, 0.2, 0.5), rp.NOT),
                             ((0.2, 0.2, 0.2), rp.NOT)):
        h = rp.analyse(hybrid(thirds=thirds), None)
        assert verdict(found({"hybrid": h, "transformer": t}), "hybrid", early).verdict == expected
    h = rp.analyse(hybrid(thirds=(0.5, 0.2, 0.1)), None)
    f = verdict(found({"hybrid": h, "transformer": t}), "hybrid", early)
    assert "as strong, so this is a property of depth, not of the hybrid" in f.evidence
    f = verdict(found({"hybrid": h, "transformer": weak_t}), "hybrid", early)
    assert "weaker than here" in f.evidence
    # no intervals (underpowered): the points decide "as strong" (the hybrid's gradient is the weaker one)
    h6, t6 = rp.analyse(hybrid(thirds=(0.1, 0.1, 0.1), n_windows=6), None), rp.analyse(transformer(n_windows=6), None)
    assert "as strong" in verdict(found({"hybrid": h6, "transformer": t6}), "hybrid", early).evidence
    h = rp.analyse(hybrid(thirds=(0.21, 0.2, 0.2), noise=0.3, n_windows=30), None)
    assert verdict(found({"hybrid": h}), "hybrid", early).verdict == rp.UNDECIDED


def test_resilience_verdicts_and_summary_json(tmp_path):
    h, t = hybrid(rand_skip9=np.linspace(0.5, 1.5, 10)), transformer()
    stores = {"hybrid": h, "transformer": t}
    results = {m: rp.analyse(ds, None) for m, ds in stores.items()}
    rows = rp.resilience_table(stores, results)
    assert [r["size"] for r in rows] == [3, 9]
    f = rp._resilience_finding(rows[1])  # the same trials on both sides: x1, far from 20-119x
    assert f.verdict == rp.NOT and "published size lies above" in f.evidence
    resilient = transformer(rand_skip={9: np.linspace(4.5, 5.5, 10)}, vocab=10 ** 6)
    stores["transformer"] = resilient
    results["transformer"] = rp.analyse(resilient, None)
    row = rp.resilience_table(stores, results)[0]
    assert rp._resilience_finding(row).verdict == rp.HOLDS and row["medians_low"] > 20
    broken = transformer(rand_skip={9: np.linspace(7.5, 8.5, 10)})  # median trial far past 1,000 (the vocabulary)
    stores["transformer"], results["transformer"] = broken, rp.analyse(broken, None)
    f = rp._resilience_finding(rp.resilience_table(stores, results)[0])
    assert f.verdict == rp.CANNOT and "beyond uniform guessing" in f.evidence
    few = transformer(rand_skip={9: [1.0, 1.2, 1.4]})
    stores["transformer"], results["transformer"] = few, rp.analyse(few, None)
    row = rp.resilience_table(stores, results)[0]
    assert rp._resilience_finding(row).verdict == rp.UNDERPOWERED and "3 trials" in row["power"]
    summary = rp._summary_json(results, rp.findings(results, [row]), [row], [])
    assert summary["resilience"][0]["n_transformer"] == 3
    assert any(f["verdict"] == rp.UNDERPOWERED and "resilient" in f["claim"] for f in summary["findings"])
    json.dumps(summary, default=rp._json_default)


def test_tasks_underpowered_at_chance_and_downstream_verdicts():
    few = {"mmlu": (6, 0.25, 0.67, {"g-att": 0.0})}
    r = rp.analyse(hybrid(tasks=few), None)
    assert "6 items" in r["tasks"]["mmlu"]["power"]
    f = verdict(found({"hybrid": r}), "hybrid", "removing either component group pushes the tasks to about chance (component")
    assert f.verdict == rp.UNDERPOWERED
    table = "\n".join(rp._tasks_table(r))
    assert "underpowered: 6 items" in table and "[" not in table.split("\n")[-2]
    at_chance = {"arc": (100, 0.25, 0.27, {})}
    assert "not above chance" in rp.analyse(hybrid(tasks=at_chance), None)["tasks"]["arc"]["power"]
    claim = "removing either component group pushes the tasks to about chance (component"
    ok = {"arc": (100, 0.25, 0.70, {"g-att": 0.25, "g-lin": 0.22})}
    assert verdict(found({"hybrid": rp.analyse(hybrid(tasks=ok), None)}), "hybrid", claim).verdict == rp.HOLDS
    bad = {"arc": (100, 0.25, 0.70, {"g-att": 0.60, "g-lin": 0.22})}
    f = verdict(found({"hybrid": rp.analyse(hybrid(tasks=bad), None)}), "hybrid", claim)
    assert f.verdict == rp.NOT and "arc without attention 0.60" in f.evidence


def _write_study(folder, stores: dict, comps: dict | None = None):
    folder.mkdir()
    (folder / "study.json").write_text(json.dumps({"models": list(stores) + ["missing-model"], "corpora": ["wiki"],
                                                   "context": 512, "stride": 256}))
    for name, ds in stores.items():
        ds.assign_attrs(format=FORMAT).to_zarr(folder / f"{name}.zarr", zarr_format=2)
    for name, ds in (comps or {}).items():
        ds.assign_attrs(format=FORMAT).to_zarr(folder / f"{name}.compression.zarr", zarr_format=2)


def _compression(done: int, planned: int = 8, n_windows: int = 80) -> xr.Dataset:
    b = Builder("hybrid", n_windows, 0.01, 3)
    for k in range(planned):
        b.add(f"c{k}", "compression", "compression:mixers:importance", "zero", "attention", range(k + 1),
              0.01 * (k + 1), complete=k < done)
    return b.build()


def test_unfinished_study_is_reported_with_a_warning_and_marked_sections(tmp_path, capsys):
    h = hybrid()
    done = h["complete"].values.copy()
    pending = np.isin(h.condition.values, ["t-attention-2", "s-lin"] + [f"r-skip_layer-3-{k}" for k in range(5)])
    h = h.assign(complete=("condition", done & ~pending))
    folder = tmp_path / "study"
    _write_study(folder, {"hybrid": h}, {"hybrid": _compression(6)})
    warnings = []
    text = rp.write_report(folder, log=warnings.append).read_text()
    assert text.startswith("> **WARNING: PARTIAL STUDY.**")
    assert "missing-model: no store yet" in text and "hybrid: 52 of 59 conditions complete" in text
    assert "compression curve 6 of 8 steps measured" in text
    assert "| 6 | 8 |" in text  # measured 6, of 8
    assert "the thirds of attention" in text and "No role has three or more layers" not in text
    assert "| whole layers | 3 | 5 of 10 (partial) |" in text
    att_row = next(line for line in text.splitlines() if line.startswith("| attention (3) |"))
    assert att_row.endswith("(partial) |")  # its whole-layer control is half measured
    assert warnings[0].startswith("WARNING: PARTIAL STUDY") and any("missing-model" in w for w in warnings)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["partial"] and summary["models"]["hybrid"]["thirds"]["attention"] == "pending"
    fs = {f["claim"]: f["verdict"] for f in summary["findings"]}
    assert fs["early layers matter more than late ones (attention, component only)"] == rp.PENDING
    # the command: exit status 0, the warning first on stderr
    from test_store_cli import invoke

    code, _, err = invoke(["report", str(folder)], capsys)
    assert code == 0 and err.lstrip().startswith("WARNING: PARTIAL STUDY")


def test_complete_study_has_no_warning_and_states_every_finding(tmp_path):
    folder = tmp_path / "study"
    _write_study(folder, {"hybrid": hybrid(), "transformer": transformer()},
                 {"hybrid": _compression(8), "transformer": _compression(8)})
    json_path = folder / "study.json"
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "models": ["hybrid", "transformer"]}))
    text = rp.write_report(folder).read_text()
    assert "PARTIAL" not in text and "UNDERPOWERED" not in text
    for claim in ("is used", "is the backbone", "early layers matter more", "both component types are essential",
                  "more resilient to random whole-layer removal"):
        assert claim in text, claim
    assert "No diagnostics stored" in text and "### Progressive removal" not in text
    assert "### Random controls" in text and "| whole layers | 9 | 10 |" in text
    assert "Transformer control (transformer), random whole layers of the same counts: 3 layers (like attention)" in text


def test_why_section_reads_stored_diagnostics(tmp_path):
    folder = tmp_path / "study"
    h = hybrid()
    _write_study(folder, {"hybrid": h})
    ids = ["g-att", "g-lin", "s-att", "s-lin"]
    cka = np.array([[0.9] * 3, [0.2] * 3, [0.8] * 3, [0.1] * 3])
    diag = xr.Dataset({"cka_linear": (("condition", "layer"), cka),
                       "cos_to_clean": (("condition", "layer"), cka)},
                      coords={"condition": ids, "layer": [-1, 5, 11]})
    diag.to_zarr(folder / "hybrid.zarr", group="diagnostics", zarr_format=2, consolidated=False)
    text = rp.write_report(folder).read_text()
    why = text.split("### Why")[1].split("###")[0]
    assert "At the last layer (11)" in why and "| linear attention (GDN) zero | x" in why and "0.200" in why
    assert "also changes the last layer's representation most" in why
    assert "| 0.900 | 0.900 | never |" in why and "| 0.200 | 0.200 | layer -1 |" in why


@pytest.mark.parametrize("settings, store, expected", [
    ("not json", None, "is not a study settings file"),
    (json.dumps({"corpora": ["wiki"]}), None, "is not a study settings file"),
    (json.dumps({"models": ["m"], "corpora": ["wiki"]}), "junk", "not a workbench run store"),
    (json.dumps({"models": ["m"], "corpora": ["wiki"]}), None, "no study stores"),
])
def test_bad_study_folder_is_one_line_and_exit_2(tmp_path, capsys, settings, store, expected):
    from test_store_cli import invoke

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "study.json").write_text(settings)
    if store:
        xr.Dataset({"x": ("a", [1.0])}).to_zarr(folder / "m.zarr", zarr_format=2)
    code, _, err = invoke(["report", str(folder)], capsys)
    assert code == 2 and expected in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) <= 2  # one message (rich may wrap it)


def test_demo_sized_study_prints_no_interval_and_no_verdict(tmp_path):
    """`make demo`'s size (6 windows pooled, 6 items per task): nothing in the report reads as evidence."""
    import re

    tasks = {"arc": (6, 0.25, 0.67, {"g-att": 0.17})}
    folder = tmp_path / "study"
    _write_study(folder, {"hybrid": hybrid(n_windows=6, tasks=tasks), "transformer": transformer(n_windows=6)},
                 {"hybrid": _compression(8, n_windows=6), "transformer": _compression(8, n_windows=6)})
    json_path = folder / "study.json"
    json_path.write_text(json.dumps({**json.loads(json_path.read_text()), "models": ["hybrid", "transformer"]}))
    text = rp.write_report(folder).read_text()
    assert text.startswith("> **UNDERPOWERED: these numbers are not evidence.**")
    assert not re.findall(r"\[-?\d[\d.,e+]*, -?\d", text), re.findall(r".{60}\[-?\d[\d.,e+]*, -?\d.{20}", text)
    verdicts = {f["verdict"] for f in json.loads((folder / "summary.json").read_text())["findings"]}
    assert verdicts <= {rp.UNDERPOWERED, rp.CANNOT}


def _mediation(n_windows: int = 30, lin=("mlp@11", 0.6, "attention@11", 0.2), att=("linear_attention@8", 0.5, "mlp@9", 0.2),
               complete=(True, True)) -> xr.Dataset:
    """A synthetic mediation group for ``hybrid()``: recovery of each later component of g-att and g-lin;
    ``lin``/``att``: (best component, value, runner-up, value), every other later component 0.05."""
    comps = []
    for layer in range(N_LAYERS):
        comps += [(f"{'attention' if layer in ATT else 'linear_attention'}@{layer}", layer),
                  (f"mlp@{layer}", layer), (f"resid@{layer}", layer)]
    names = [c for c, _ in comps]
    roles = [c.split("@")[0] for c in names]
    rec = np.full((2, len(names)), np.nan)
    for i, (cid, first, spec) in enumerate((("g-att", ATT[0], att), ("g-lin", LIN[0], lin))):
        rec[i, [j for j, (_, layer) in enumerate(comps) if layer > first]] = 0.05
        for name, value in zip(spec[::2], spec[1::2]):
            rec[i, names.index(name)] = value
    rec[:, [j for j, r in enumerate(roles) if r == "resid"]] = 1.0
    ci = lambda d: rec + d if n_windows >= 4 else rec * np.nan  # noqa: E731
    return xr.Dataset(
        {"recovery": (("condition", "component"), rec), "recovery_low": (("condition", "component"), ci(-0.05)),
         "recovery_high": (("condition", "component"), ci(0.05)), "transfer": (("condition", "component"), rec),
         "transfer_low": (("condition", "component"), ci(-0.05)), "transfer_high": (("condition", "component"), ci(0.05)),
         "complete": ("condition", np.array(complete)), "window_tokens": ("window", np.full(n_windows, 256))},
        coords={"condition": ["g-att", "g-lin"], "label": ("condition", ["attention off", "linear off"]),
                "component": names, "component_layer": ("component", [layer for _, layer in comps]),
                "component_role": ("component", roles), "component_head": ("component", np.full(len(names), -1))})


def _mediation_section(tmp_path, med: xr.Dataset | None) -> tuple[str, dict]:
    """The section and its summary numbers for ``hybrid()`` with ``med`` stored beside it (no figures)."""
    path = tmp_path / "hybrid.zarr"
    if med is not None:
        med.to_zarr(path, group="mediation", zarr_format=2, consolidated=False)
    m = rp.mediation_result(path, hybrid())
    return "\n".join(rp._mediation_section(m, False)), m


@pytest.mark.slow  # a whole report with figures: ~20 s on a loaded machine
def test_through_what_it_matters_in_the_report_and_summary_json(tmp_path):
    folder = tmp_path / "study"
    _write_study(folder, {"hybrid": hybrid()})
    _mediation().to_zarr(folder / "hybrid.zarr", group="mediation", zarr_format=2, consolidated=False)
    section = rp.write_report(folder).read_text().split("### Through what it matters")[1].split("###")[0]
    summary = json.loads((folder / "summary.json").read_text())["models"]["hybrid"]["mediation"]
    assert "damage is carried by: mainly MLP" in section
    assert summary["computed"] and summary["windows"] == 30 and summary["underpowered"] is None
    assert summary["groups"]["linear_attention"]["top"][0] == {
        "component": "mlp@11", "role": "mlp", "recovery": 0.6, "low": pytest.approx(0.55), "high": pytest.approx(0.65)}


def test_through_what_it_matters_answers_both_questions(tmp_path):
    section, summary = _mediation_section(tmp_path / "a", _mediation())
    assert "| linear attention (GDN) | mlp@11 0.60 [0.55, 0.65], attention@11 0.20 [0.15, 0.25], " in section
    assert "resid@" not in section.split("| group removed")[1]  # recovers everything by construction: left out
    assert "damage is carried by: mainly MLP" in section
    assert "mediated by the linear mixers? yes, mainly through the linear mixers: restoring the best later " \
           "linear mixer (linear_attention@8) recovers 0.50 [0.45, 0.55]" in section
    g = summary["groups"]
    assert summary["computed"] and summary["windows"] == 30 and summary["underpowered"] is None
    assert g["linear_attention"]["top"][0] == {"component": "mlp@11", "role": "mlp", "recovery": 0.6,
                                               "low": pytest.approx(0.55), "high": pytest.approx(0.65)}
    assert g["linear_attention"]["carried_by"]["verdict"] == "clear" and g["attention"]["via_linear"]["verdict"] == rp.HOLDS
    # reversed: attention's damage travels through an MLP, not the linear mixers
    section, m = _mediation_section(tmp_path / "b", _mediation(att=("mlp@9", 0.7, "linear_attention@8", 0.1)))
    assert m["groups"]["attention"]["via_linear"]["verdict"] == rp.NOT and "no, mainly through other" in section
    # overlapping intervals: no verdict
    section, m = _mediation_section(tmp_path / "c", _mediation(lin=("mlp@11", 0.3, "attention@11", 0.28)))
    assert m["groups"]["linear_attention"]["carried_by"]["verdict"] == rp.UNDECIDED
    assert "no kind stands out at this precision" in section


def test_through_what_it_matters_underpowered_and_not_computed(tmp_path):
    section, m = _mediation_section(tmp_path / "a", _mediation(n_windows=3))
    assert "**Underpowered** (3 window(s) patched, under 20)" in section and "[" not in section.split("| group")[1]
    assert m["groups"]["attention"]["via_linear"]["verdict"] == rp.UNDERPOWERED
    assert "damage is carried by: underpowered: best MLP mlp@11 recovers 0.60" in section
    section, m = _mediation_section(tmp_path / "b", None)
    command = f"workbench mediate {tmp_path / 'b' / 'hybrid.zarr'}"
    assert f"Not computed: run `{command}`" in section and m == {"computed": False, "command": command}
    section, m = _mediation_section(tmp_path / "c", _mediation(complete=(False, False)))
    assert "None of the study's groups (component only) is mediated yet" in section and m["groups"] == {}


def test_show_texts_give_intervals_only_where_the_report_would():
    """`workbench show`'s pooled ratios and task drops follow the report's power rules."""
    from workbench.summary import pooled_ratio_texts, task_drop_texts

    assert "[" in pooled_ratio_texts(hybrid())["g-att"]
    few = pooled_ratio_texts(hybrid(n_windows=12))["g-att"]
    assert "no interval: 12 windows, needs 20" in few and "[" not in few
    tasks = {"mmlu": (6, 0.25, 0.67, {"g-att": 0.0}), "arc": (100, 0.25, 0.27, {}),
             "hella": (100, 0.25, 0.70, {"g-att": 0.25})}
    heads, drops = task_drop_texts(hybrid(tasks=tasks))
    assert heads["mmlu"] == "baseline 0.67, chance 0.25, 6 items"
    assert "no interval: 6 items, needs 30" in drops["g-att"]["mmlu"] and "[" not in drops["g-att"]["mmlu"]
    assert "not above chance" in drops["g-att"]["arc"] and "[" not in drops["g-att"]["arc"]
    assert drops["g-att"]["hella"].startswith("0.45 [")


def test_vocab_size_prefers_the_store_attribute_over_the_config():
    ds = xr.Dataset(attrs={"model": "random:qwen2", "vocab_size": 7})
    assert rp.vocab_size(ds) == 7
    assert rp.vocab_size(ds.drop_attrs()) is None
    assert rp.vocab_size(xr.Dataset(attrs={"model": "random:qwen2"})) > 7  # older stores: the config's
