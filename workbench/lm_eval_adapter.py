"""lm-evaluation-harness adapter: any workbench model under any ablation condition.

``WorkbenchLM`` is an ``lm_eval`` model (a ``TemplateLM``): ``loglikelihood``,
``loglikelihood_rolling`` and greedy ``generate_until``, every forward run under the condition's
edits (``workbench.interventions.Intervener.run``). From Python::

    WorkbenchLM(model="mini-qwen3.5", condition="zero:attention@3+attention@7")
    WorkbenchLM(model=loaded, condition=Condition(...))        # an already loaded model

From the command line (lm-eval 0.4.13 discovers no plugins: this module registers the name
``workbench`` and then runs lm-eval's own CLI)::

    python -m workbench.lm_eval_adapter --model workbench \\
        --model_args model=mini-qwen3.5,condition=skip_layer:layer@2 --tasks arc_easy

Condition strings (``condition=`` in model_args; no commas, which separate model_args):
  * ``baseline`` (or empty): nothing edited;
  * ``MODE:TARGET+TARGET+...`` with MODE one of zero, mean, resample, skip_layer and
    TARGET ``ROLE@LAYERS``; LAYERS is one layer (``3``), a range (``0-11``: the role's layers
    inside it) or ``*`` (all of the role's layers). Examples: ``zero:attention@3+attention@7``,
    ``zero:ssm@0-11``, ``skip_layer:layer@2``, ``skip_layer:attention@*`` (the whole layers that
    hold attention), ``mean:linear_attention@*``.
Or ``plan=FILE,condition_id=ID`` picks a condition of a plan file (by id, effect id or label)
resolved against the model's component map.

Mean and resample need a reference text: ``reference=CORPUS`` (a corpus spec, as for the
runner). Means are those of a study run with the default protocol (``workbench.runner.
ConditionForwards`` over windows of ``reference_context`` tokens). Resample draws, for each
sequence, one donor window of ``max_length`` tokens from the reference (seeded by
``donor_seed`` and the sequence's own tokens, so results do not depend on batching) and uses its
first tokens, as many as the sequence has; a leading prefix token stays in place, as in the
runner.

Tokenisation follows lm-eval (``TemplateLM._encode_pair``; an empty context becomes the prefix
token). With ``prefix=eot`` (default) the end-of-text token (BOS if there is none) also starts
every non-empty context, as the workbench's own multiple-choice scorer does
(``workbench.evaluate.multiple_choice.score_tasks``), so both give the same log-likelihoods;
``prefix=none`` gives lm-eval's plain convention. ``loglikelihood_rolling`` uses lm-eval's windows
(``get_rolling_token_windows`` with ``context_len=1``, ``make_disjoint_window``): the first window
is ``[prefix] + text``, later ones carry one token of context (the last a full window). They equal
``workbench.evaluate.perplexity.perplexity`` over the stream ``[prefix] + text`` with
``context=max_length + 1``, ``stride=max_length`` and no ``prefix`` argument (not the study
protocol, which puts the prefix before every window).
"""

from __future__ import annotations

import logging
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from tqdm import tqdm

import lm_eval.models  # noqa: F401  (the built-in names first: lm-eval loads them only into an empty registry)
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from workbench.interventions import Intervener, InterventionError, donor_windows
from workbench.plans import (BASELINE, MODES, Condition, PlanError, Target, default_label, load_spec, resolve,
                             validate_condition)

_TARGET = re.compile(r"^(?P<role>[a-z_]+)@(?P<layers>\*|\d+|\d+-\d+)$")
# model_args lm-eval itself passes or that have no meaning here
_IGNORED = {"max_batch_size", "trust_remote_code"}


def parse_condition(text: str, cmap) -> Condition:
    """A condition from its compact string form (module docstring), checked against ``cmap``."""
    text = (text or "").strip()
    if text in ("", "baseline"):
        return BASELINE
    mode, sep, body = text.partition(":")
    if not sep or not body:
        raise PlanError(f"condition {text!r}: expected 'baseline' or MODE:ROLE@LAYERS[+ROLE@LAYERS...], "
                        "e.g. zero:attention@3+attention@7")
    if mode not in MODES:
        raise PlanError(f"condition {text!r}: unknown mode {mode!r}; valid: {', '.join(MODES)}")
    roles = [r for r in cmap.roles()]
    targets: list[Target] = []
    for part in body.split("+"):
        m = _TARGET.match(part.strip())
        if not m:
            raise PlanError(f"condition {text!r}: target {part!r} is not ROLE@LAYER, ROLE@FIRST-LAST or ROLE@*")
        role, layers = m["role"], m["layers"]
        if role not in roles:
            raise PlanError(f"condition {text!r}: role {role!r} is absent from this {cmap.model_type} model; "
                            f"roles present: {', '.join(roles)}")
        have = list(range(cmap.n_layers)) if role == "layer" else cmap.layers_of(role)
        if layers == "*":
            pick = have
        elif "-" in layers:
            lo, hi = (int(x) for x in layers.split("-"))
            pick = [i for i in have if lo <= i <= hi]
            if not pick:
                raise PlanError(f"condition {text!r}: no {role} layer in {lo}-{hi}; {role} layers: "
                                f"{', '.join(map(str, have))}")
        else:
            pick = [int(layers)]
        # skip_layer removes whole layers: any role names the layers that hold it
        targets += [Target(layer=i, role="layer" if mode == "skip_layer" else role) for i in pick]
    targets = list(dict.fromkeys(targets))
    try:
        cond = Condition(targets=tuple(targets), mode=mode)
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise PlanError(f"condition {text!r}: {msg}") from None
    try:
        validate_condition(cond, cmap)
    except PlanError as exc:
        raise PlanError(f"condition {text!r}: {exc}") from None
    return cond


def _whole(name: str, value, least: int) -> int:
    """A count from model_args (lm-eval passes text or numbers), or one clear error."""
    try:
        number = int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < least:
        raise ValueError(f"{name}={value!r} is invalid: give a whole number of at least {least}")
    return number


def condition_from_plan(path: str | Path, condition_id: str, cmap) -> Condition:
    """The condition of a plan file whose id, effect id or label is ``condition_id``."""
    plan = resolve(load_spec(path), cmap)
    for c in plan.conditions:
        if condition_id in (c.id, c.effect_id, c.label):
            return c
    ids = ", ".join(f"{c.id} ({c.label})" for c in plan.conditions)
    raise PlanError(f"plan {str(path)!r} has no condition {condition_id!r}; conditions: {ids}")


class WorkbenchLM(TemplateLM):
    """A workbench model under one ablation condition, for lm-evaluation-harness."""

    def __init__(self, model="mini-qwen3.5", condition: str | Condition | None = "baseline", *, tokenizer=None,
                 plan: str | None = None, condition_id: str | None = None, reference: str | None = None,
                 reference_context: int = 512, donor_seed: int | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = 256, device: str | None = "cpu",
                 dtype: str = "float32", prefix: str = "eot", **kwargs):
        super().__init__()
        unknown = set(kwargs) - _IGNORED
        if unknown:
            raise ValueError(f"unknown WorkbenchLM argument(s) {sorted(unknown)}; valid: model, condition, plan, "
                             "condition_id, reference, reference_context, donor_seed, batch_size, max_length, "
                             "max_gen_toks, device, dtype, prefix, tokenizer")
        if prefix not in ("eot", "none"):
            raise ValueError(f"unknown prefix policy {prefix!r}; valid: eot, none")
        # numbers first: a typo fails before the model loads
        max_length = None if max_length is None else _whole("max_length", max_length, 2)
        max_gen_toks = _whole("max_gen_toks", max_gen_toks, 1)
        reference_context = _whole("reference_context", reference_context, 2)
        donor_seed = None if donor_seed is None else _whole("donor_seed", donor_seed, 0)
        auto = batch_size is None or str(batch_size).startswith("auto")
        batch_size = 8 if auto else _whole("batch_size", batch_size, 1)
        from workbench.loading import LoadedModel, load_model

        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            if device is not None:  # lm-eval's CLI passes cuda:0 unless told otherwise; so does HFLM's fallback
                logging.getLogger(__name__).warning("device %s is not available; using cpu", device)
            device = "cuda" if torch.cuda.is_available() and device is None else "cpu"
        if isinstance(model, str):
            loaded = load_model(model, device=device, dtype=dtype)
            self.model_spec = model
        elif isinstance(model, LoadedModel):
            loaded, self.model_spec = model, model.spec
        elif isinstance(model, torch.nn.Module):
            if tokenizer is None:
                raise ValueError("a model given as a torch module needs its tokenizer= too")
            loaded, self.model_spec = LoadedModel(model, tokenizer, type(model).__name__, "python"), type(model).__name__
        else:
            raise ValueError(f"model must be a model spec, a LoadedModel or a torch module, not {type(model).__name__}")
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = tokenizer or loaded.tokenizer
        self.iv = Intervener(self.model)
        cmap = self.iv.cmap

        if plan is not None or condition_id is not None:
            if plan is None or condition_id is None:
                raise ValueError("plan= and condition_id= go together")
            if condition not in (None, "", "baseline"):
                raise ValueError("give condition= or plan= with condition_id=, not both")
            condition = condition_from_plan(plan, str(condition_id), cmap)
        elif isinstance(condition, Condition):
            validate_condition(condition, cmap)
        else:
            condition = parse_condition(condition, cmap)
        if donor_seed is not None:
            if condition.mode != "resample":
                raise ValueError(f"donor_seed applies to resample conditions, not {condition.mode!r}")
            fields = condition.model_dump()
            if condition.label == default_label(condition):
                fields["label"] = ""  # relabelled with the seed
            condition = Condition(**{**fields, "donor_seed": int(donor_seed)})
        self.condition = condition

        tok = self.tokenizer
        eot = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
        if eot is None:
            raise ValueError("the tokenizer has neither an end-of-text nor a BOS token to condition on")
        self._eot = int(eot)
        self._context_prefix = [self._eot] if prefix == "eot" else []
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        config = self.model.config.get_text_config()
        self._max_length = int(max_length or getattr(config, "max_position_embeddings", None) or 2048)
        self._max_gen_toks = int(max_gen_toks)
        self._batch_size = batch_size
        self._device = self.iv.device

        self._means = None
        self._reference = None
        if condition.mode in ("mean", "resample"):
            if not reference:
                raise ValueError(f"a {condition.mode} condition needs reference=CORPUS (the text its "
                                 f"{'means' if condition.mode == 'mean' else 'donors'} come from)")
            from workbench.corpora import load_corpus

            self._reference = load_corpus(reference, self.tokenizer)
            if condition.mode == "mean":
                self._means = self._reference_means(reference_context)
            elif self._reference.n_tokens < self._max_length:
                raise ValueError(f"resample draws donor windows of max_length={self._max_length} tokens; the "
                                 f"reference has {self._reference.n_tokens}. Give a longer reference or a "
                                 "smaller max_length")
            self._donor_comps = self.iv.components(condition)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "WorkbenchLM":
        """lm-eval's --device and --batch_size, unless --model_args names them too (then those
        win; lm-eval's own merge passes both and fails with a TypeError)."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "WorkbenchLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    # -- lm-eval's model interface -----------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self._eot

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "workbench").replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model": self.model_spec, "condition": self.condition.label, "condition_id": self.condition.id,
                "condition_key": self.condition.key}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer(string, add_special_tokens=False)["input_ids"])

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(list(tokens))

    def _encode_pair(self, context: str, continuation: str):
        ctx, cont = super()._encode_pair(context, continuation)
        return self._context_prefix + ctx, cont

    # -- forwards under the condition ------------------------------------------------------
    def _reference_means(self, context: int) -> dict:
        from workbench.plans import Plan
        from workbench.runner import ConditionForwards, Protocol

        ref = self._reference
        protocol = Protocol(context=context, reference=ref.source, reference_tokens=ref.n_tokens,
                            reference_sha256=ref.sha256, batch_size=self._batch_size)
        if min(context, ref.n_tokens) <= protocol.reference_skip:
            raise ValueError(f"mean ablation needs reference windows longer than the {protocol.reference_skip} "
                             f"positions skipped at the start of each; the reference has {ref.n_tokens} tokens")
        forwards = ConditionForwards(self.iv, ref, protocol, Plan(conditions=(self.condition,)), set())
        return forwards.means()

    def _donor(self, row: list[int], salt_tokens: list[int]) -> list[int]:
        """The resample donor of one sequence: the first ``len(row)`` tokens of a donor window
        seeded by the condition's donor seed and ``salt_tokens`` (prefix token kept in place)."""
        salt = zlib.crc32(np.asarray(salt_tokens, dtype=np.int64).tobytes())
        text = donor_windows(self._reference.ids, self._max_length, 1, self.condition.donor_seed or 0,
                             salt=salt)[0].tolist()
        if row and row[0] == self._eot:
            return [self._eot] + text[:len(row) - 1]
        return text[:len(row)]

    @torch.no_grad()
    def _logits(self, rows: list[list[int]], salts: list[list[int]] | None = None, keep: int = 0) -> torch.Tensor:
        """Logits (B, T or keep, V) of right-padded ``rows`` under the condition (every model here
        is causal, so padding after a sequence leaves its logits unchanged)."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        for k, r in enumerate(rows):
            ids[k, :len(r)] = torch.tensor(r, dtype=torch.long)
        kw = {}
        if self.condition.mode == "mean" and self.condition.kind != "baseline":
            kw["means"] = self._means
        elif self.condition.mode == "resample" and self.condition.kind != "baseline":
            donors = torch.full_like(ids, self._pad)
            for k, (r, s) in enumerate(zip(rows, salts or rows)):
                donors[k, :len(r)] = torch.tensor(self._donor(r, s), dtype=torch.long)
            kw["donor"] = self.iv.outputs(donors, self._donor_comps)
        return self.iv.run(ids, self.condition, keep=keep, **kw).logits

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        rows = []
        for cache_key, ctx, cont in requests:
            if not ctx:  # lm-eval moves a context's trailing whitespace into the continuation
                text = cache_key[0] if isinstance(cache_key, tuple) and cache_key else "?"
                raise ValueError(f"context {text!r} has no tokens once its trailing whitespace goes to the "
                                 "continuation, so nothing predicts the continuation's first token; use "
                                 "prefix=eot (the default: every context starts with the end-of-text token) "
                                 "or give a context with text")
            if len(cont) > self._max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens exceeds max_length={self._max_length}")
            rows.append((ctx + cont)[-(self._max_length + 1):][:-1])
        order = sorted(range(len(requests)), key=lambda i: -len(rows[i]))  # longest first, as lm-eval
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="workbench loglikelihood")
        for k in range(0, len(order), self._batch_size):
            idx = order[k:k + self._batch_size]
            logits = self._logits([rows[i] for i in idx])
            for b, i in enumerate(idx):
                cont, n = requests[i][2], len(rows[i])
                logp = F.log_softmax(logits[b, n - len(cont):n].float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                ll = logp.gather(-1, target[:, None]).cpu().double().sum().item()
                greedy = bool((logp.argmax(-1) == target).all())
                out[i] = (ll, greedy)
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], (ll, greedy))
            bar.update(len(idx))
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (string,) in tqdm([r.args for r in requests], disable=disable_tqdm, desc="workbench rolling"):
            windows = [(None,) + w for w in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                max_seq_len=self._max_length, context_len=1))]
            total = sum(ll for ll, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy decoding without a KV cache (each step is one traced forward under the
        condition); stops at end-of-text, at the first ``until`` string or after ``max_gen_toks``."""
        out = []
        for context, gen_kwargs in tqdm([r.args for r in requests], disable=disable_tqdm, desc="workbench generate"):
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.get("do_sample"):
                raise ValueError("WorkbenchLM decodes greedily only; do_sample=True is not supported")
            until = gen_kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n_new = int(gen_kwargs.get("max_gen_toks", self._max_gen_toks))
            ctx = self._context_prefix + self.tok_encode(context)
            ctx = ctx[-max(self._max_length - n_new, 1):]
            seq, new, text = list(ctx), [], ""
            for _ in range(n_new):
                row = seq[-self._max_length:]
                nxt = int(self._logits([row], [ctx], keep=1)[0, -1].argmax())
                if nxt == self._eot:
                    break
                seq.append(nxt)
                new.append(nxt)
                text = self.tok_decode(new)
                if any(u and u in text for u in until):
                    break
            for u in until:
                if u:
                    text = text.split(u)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


if __name__ != "__main__":  # run as a script, the module registers on import below
    register_model("workbench")(WorkbenchLM)


def main() -> None:
    """lm-eval's command line with the ``workbench`` model registered."""
    import workbench.lm_eval_adapter  # noqa: F401  (registers "workbench")
    from lm_eval.__main__ import cli_evaluate

    try:
        cli_evaluate()
    except (ValueError, InterventionError) as exc:  # bad model_args, conditions, models, tasks
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
