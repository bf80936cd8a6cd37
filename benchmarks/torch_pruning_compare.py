"""ticketlab's channel pruning against Torch-Pruning 1.6.1 (issue 19, "Against the peer").

Same model, same importance (magnitude), same per-layer ratio, both sides:

* **ResNet-20** (CIFAR shape 3x32x32, 10 classes, ``create_model(..., seed=0)``), at its init
  weights and after a few seeded SGD steps on random data (so that magnitudes, and BatchNorm's
  gamma, are not just the init), at channel ratios 0.3 and 0.5 per layer (uniform; the output layer
  ``fc`` kept). Per coupled family (named by its first producer, as ticketlab names it): channels
  kept by each side, the Jaccard overlap of the kept channel sets, Torch-Pruning's group importance
  against ticketlab's group score; the compacted shapes; each compacted model against its own
  masked reference; pruning wall time (median of alternated repeats); CPU latency of both compacted
  models and the dense one at batch 64 (``torch.inference_mode``, fixed threads, median of
  alternated repeats).
* **A LLaMA-shaped tiny model** (``LlamaForCausalLM``: hidden 64, 2 layers, 4 heads, 2 key/value
  heads = GQA, intermediate 172, vocab 320, seeded random weights). Torch-Pruning runs with its LLM
  example's settings (heads + hidden size + MLP) in a child process with a timeout and a guard on
  the size of a dependency group — on the GQA model it never finishes building its dependency
  groups — plus an MHA control (4 key/value heads) on which the same settings do run, to show what
  happens to shapes, the config and ``save_pretrained`` / ``from_pretrained``. MLP channels alone
  (attention and hidden size excluded) do run on the GQA model, and are compared channel by channel
  with ticketlab's ``transformer_layout`` + ``compact_transformer`` when those are importable.

Configuring Torch-Pruning to rank like ticketlab (read from its source, 1.6.1):

* ``MagnitudeImportance(p=2, group_reduction="sum", normalizer=None, target_types=[Conv2d, Linear])``
  scores channel ``j`` of a group as the sum, over every conv / linear layer of the group, of the
  squared weights it owns (rows of producers, columns of consumers): the square of ticketlab's
  ``aggregate="l2"`` group score, so the ranking is the same. Its defaults differ in three ways:
  ``group_reduction="mean"`` and ``normalizer="mean"`` only rescale one group's scores by a
  constant (no effect on a per-layer ranking; they matter for global pruning), but the default
  ``target_types`` include BatchNorm, whose ``|gamma|^2`` is then *added* to each channel's score.
  ticketlab never scores BatchNorm or biases. At init every gamma is 1 (a constant shift, same
  ranking); after training it changes the ranking — measured here as the ``tp-default`` column.
* Local pruning (``global_pruning=False``), ``round_to=None``, ``isomorphic=False``,
  ``ignored_layers=[model.fc]``. Torch-Pruning keeps ``int(C * (1 - ratio))`` channels of a
  C-channel group (floor); ticketlab's uniform counts (`GroupLayout.uniform_counts`) round half up.
  The comparison gives ticketlab the same ``int(C * (1 - ratio))`` counts so that the kept *sets*
  are comparable; the notes list the families where ticketlab's own rounding would keep one more.
* Both sides couple a residual stage's stem / last convs / shortcut into one channel set, so a
  family is one Torch-Pruning group (matched by its set of producers).

Run (writes nothing unless ``--json``; the LLaMA part needs ``transformers``):

    pip install --no-deps torch-pruning==1.6.1      # benchmark-only; not a ticketlab dependency
    python benchmarks/torch_pruning_compare.py [--ratios 0.3 0.5] [--train-steps 0 20] [--repeats 5]
        [--latency-repeats 20] [--batch 64] [--threads 1] [--json PATH] [--skip-llama] [--skip-resnet]
        [--llama-timeout 120] [--group-limit 20000]

About 2.5 minutes on 2 CPU cores (half of it the two GQA runs of Torch-Pruning that never finish
and are stopped by the group guard).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.deploy.compact import compact_model
from ticketlab.masks import Mask
from ticketlab.methods import magnitude_scores
from ticketlab.models import create_model
from ticketlab.select import GroupTarget, select_groups
from ticketlab.structure.layouts import group_layout
from ticketlab.targets import prunable_parameters

SHAPE = (3, 32, 32)
CLASSES = 10
#: The tiny LLaMA of the comparison (GQA: 4 query heads read 2 key/value heads).
#: ``use_cache=False``: with the cache on, the output holds a cache object and Torch-Pruning's
#: tracer fails ("'tuple' object has no attribute 'grad_fn'") unless given an output_transform.
LLAMA: dict[str, Any] = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                         "intermediate_size": 172, "vocab_size": 320, "max_position_embeddings": 128,
                         "use_cache": False, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def _tp():
    import torch_pruning as tp  # imported late: the script explains itself if it is missing
    return tp


def tp_version() -> str:
    from importlib.metadata import version
    return version("torch-pruning")     # 1.6.1's own __version__ still says "1.6.0"


def kept_count(size: int, ratio: float) -> int:
    """Channels Torch-Pruning keeps of a ``size``-channel group in local pruning: the same
    expression as its ``BasePruner._prune`` (``int(initial * (1 - ratio))``, a floor)."""
    return int(size * (1 - ratio))


def ticketlab_own_count(size: int, ratio: float) -> int:
    """What ticketlab's uniform counts keep at the same fraction (round half up, at least 1)."""
    return max(1, math.floor((1 - ratio) * size + 0.5))


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values)


# ------------------------------------------------------------------------------------------------
# ResNet-20
# ------------------------------------------------------------------------------------------------
def resnet(steps: int, seed: int = 0) -> nn.Module:
    """ResNet-20 at its seed-0 init, or after ``steps`` seeded SGD steps on random CIFAR-shaped
    data (batch 32, lr 0.05, momentum 0.9, weight decay 5e-4; BatchNorm in train mode, so its
    statistics and gamma move too). Eval mode on return; the global RNG is untouched."""
    model = create_model("resnet20", SHAPE, CLASSES, seed=0)
    if steps:
        g = torch.Generator().manual_seed(1000 + seed)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        model.train()
        for _ in range(steps):
            x = torch.randn(32, *SHAPE, generator=g)
            y = torch.randint(0, CLASSES, (32,), generator=g)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def ticketlab_prune(model: nn.Module, ratio: float, example: torch.Tensor, phases: dict[str, list[float]] | None = None):
    """ticketlab's pipeline on ``model`` (masked in place): layout, magnitude scores, per-family
    selection at Torch-Pruning's counts, mask, compaction. Returns (compacted, layout, mask, report);
    the seconds of each phase are appended to ``phases`` when given."""
    t0 = time.perf_counter()
    params = prunable_parameters(model)
    layout = group_layout(model, "channel", list(params), example)
    t1 = time.perf_counter()
    counts = {f.name: kept_count(f.size, ratio) for f in layout}
    mask = select_groups(magnitude_scores(model, params), layout, GroupTarget(per_family=counts), aggregate="l2")
    mask.apply_(model)
    t2 = time.perf_counter()
    compacted, report = compact_model(model, example)
    t3 = time.perf_counter()
    if phases is not None:
        for key, value in (("layout (fx trace)", t1 - t0), ("scores + select + mask", t2 - t1),
                           ("compact_model", t3 - t2)):
            phases.setdefault(key, []).append(value)
    return compacted, layout, mask, report


def tp_importance(kind: str):
    tp = _tp()
    if kind == "matched":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="sum", normalizer=None,
                                                 target_types=[nn.Conv2d, nn.Linear])
    return tp.importance.MagnitudeImportance(p=2)   # defaults: mean reduction, mean normaliser, BN counted


def tp_prune(model: nn.Module, ratio: float, example: torch.Tensor, kind: str = "matched",
             phases: dict[str, list[float]] | None = None) -> dict[str, list[int]]:
    """Torch-Pruning on ``model`` (pruned in place, physically). Returns producer name -> the
    output channels it removed (original indices), read from each group before it is applied."""
    tp = _tp()
    t0 = time.perf_counter()
    names = {m: n for n, m in model.named_modules()}
    pruner = tp.pruner.MetaPruner(model, example, importance=tp_importance(kind), pruning_ratio=ratio,
                                  global_pruning=False, ignored_layers=[model.fc], round_to=None)
    if phases is not None:
        phases.setdefault("MetaPruner (graph + groups)", []).append(time.perf_counter() - t0)
    t1 = time.perf_counter()
    removed: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if pruner.DG.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, (nn.Conv2d, nn.Linear)):
                removed[names[dep.target.module]] = sorted(int(i) for i in idxs)
        group.prune()
    if phases is not None:
        phases.setdefault("step (importance + prune)", []).append(time.perf_counter() - t1)
    return removed


def tp_kept_by_family(layout, removed: dict[str, list[int]]) -> dict[str, set[int]]:
    """Torch-Pruning's kept channels per ticketlab family (its producers share the indices; a
    family none of whose producers TP pruned keeps everything)."""
    out = {}
    for family in layout:
        sets = {tuple(removed.get(p, [])) for p in family.producers}
        if len(sets) != 1:
            raise AssertionError(f"Torch-Pruning removed different channels from the producers of {family.name}: {sets}")
        out[family.name] = set(range(family.size)) - set(sets.pop())
    return out


def importance_agreement(model: nn.Module, example: torch.Tensor, layout) -> dict[str, dict[str, Any]]:
    """Per family: max relative difference between Torch-Pruning's matched group importance and
    ticketlab's squared L2 group score (channel by channel), and whether TP's group has the same
    producers. Groups come from TP's own dependency graph."""
    tp = _tp()
    names = {m: n for n, m in model.named_modules()}
    scores = magnitude_scores(model, prunable_parameters(model))
    by_producers = {frozenset(f.producers): f for f in layout}
    imp = tp_importance("matched")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    out = {}
    for group in graph.get_all_groups(ignored_layers=[model.fc], root_module_types=[nn.Conv2d, nn.Linear]):
        producers = frozenset(names[d.target.module] for d, _ in group
                              if graph.is_out_channel_pruning_fn(d.handler) and isinstance(d.target.module, (nn.Conv2d, nn.Linear)))
        family = by_producers.get(producers)
        if family is None:
            out["?" + ",".join(sorted(producers))] = {"matched": False}
            continue
        theirs = imp(group).double()
        ours = family.scores(scores, "l2").square()
        out[family.name] = {"matched": True, "max_rel_diff": float(((theirs - ours).abs() / ours.abs()).max())}
    return out


def masked_with(model: nn.Module, layout, kept: dict[str, set[int]]) -> nn.Module:
    """A copy of ``model`` masked to the given kept channels (rows of producers, columns of
    consumers): the reference Torch-Pruning's compacted model must equal."""
    base = {n: torch.ones(s, dtype=torch.bool) for n, s in layout.shapes.items()}
    for family in layout:
        keep = torch.zeros(family.size, dtype=torch.bool)
        keep[sorted(kept[family.name])] = True
        family.restrict(base, keep)
    out = copy.deepcopy(model)
    Mask(base).apply_(out)
    return out


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {f"{n}.weight": tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def alternate(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median milliseconds of each function, the order rotating every repeat (drift cancels)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    keys = list(fns)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(repeats):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return {k: median_ms(v) for k, v in times.items()}


def compare_resnet(steps: int, ratio: float, args: argparse.Namespace) -> dict[str, Any]:
    example = torch.zeros(1, *SHAPE)
    dense = resnet(steps)
    x = torch.randn(args.batch, *SHAPE, generator=torch.Generator().manual_seed(5))

    tl_masked = copy.deepcopy(dense)
    tl_compacted, layout, mask, report = ticketlab_prune(tl_masked, ratio, example)
    tl_kept = {f.name: set(f.alive(dict(mask.items())).nonzero().flatten().tolist()) for f in layout}

    tp_model = copy.deepcopy(dense)
    removed = tp_prune(tp_model, ratio, example, "matched")
    tp_model.eval()
    tp_kept = tp_kept_by_family(layout, removed)
    tp_default = copy.deepcopy(dense)
    tp_kept_default = tp_kept_by_family(layout, tp_prune(tp_default, ratio, example, "default"))
    agreement = importance_agreement(copy.deepcopy(dense), example, layout)

    families = []
    for family in layout:
        name = family.name
        families.append({
            "family": name, "label": family.label, "size": family.size, "producers": list(family.producers),
            "kept_ticketlab": len(tl_kept[name]), "kept_tp": len(tp_kept[name]),
            "kept_ticketlab_own_rounding": ticketlab_own_count(family.size, ratio),
            "jaccard_tp": jaccard(tl_kept[name], tp_kept[name]),
            "jaccard_tp_default": jaccard(tl_kept[name], tp_kept_default[name]),
            "importance_max_rel_diff": agreement.get(name, {}).get("max_rel_diff"),
        })
    unmatched = [k for k, v in agreement.items() if not v.get("matched")]

    tp_reference = masked_with(dense, layout, tp_kept)
    with torch.inference_mode():
        y_dense, y_tl_masked, y_tl = dense(x), tl_masked.eval()(x), tl_compacted(x)
        y_tp_masked, y_tp = tp_reference.eval()(x), tp_model(x)
    shapes_tl, shapes_tp = weight_shapes(tl_compacted), weight_shapes(tp_model)
    same_sets = all(tl_kept[f.name] == tp_kept[f.name] for f in layout)
    outputs = {
        "ticketlab_compacted_vs_masked": rel_err(y_tl, y_tl_masked),
        "tp_compacted_vs_masked_same_channels": rel_err(y_tp, y_tp_masked),
        "tp_vs_ticketlab_compacted": rel_err(y_tp, y_tl) if same_sets else None,
        "pruned_vs_dense": rel_err(y_tl, y_dense),
    }

    tl_phases: dict[str, list[float]] = {}
    tp_phases: dict[str, list[float]] = {}

    def run_ticketlab():
        ticketlab_prune(copy.deepcopy(dense), ratio, example, tl_phases)

    def run_tp():
        tp_prune(copy.deepcopy(dense), ratio, example, "matched", tp_phases)

    # the deepcopy (0.27M parameters, ~1 ms) is inside both; compact_model copies once more itself
    prune_ms = alternate({"ticketlab": run_ticketlab, "torch_pruning": run_tp}, args.repeats)
    with torch.inference_mode():
        latency_ms = alternate({"dense": lambda: dense(x), "ticketlab": lambda: tl_compacted(x),
                                "torch_pruning": lambda: tp_model(x)}, args.latency_repeats, warmup=2)
    params = {k: sum(p.numel() for p in m.parameters()) for k, m in
              (("dense", dense), ("ticketlab", tl_compacted), ("torch_pruning", tp_model))}
    return {
        "weights": "init" if not steps else f"sgd{steps}", "ratio": ratio, "batch": args.batch, "families": families,
        "unmatched_tp_groups": unmatched, "frozen": dict(layout.frozen), "same_kept_sets": same_sets,
        "shapes_equal": shapes_tl == shapes_tp,
        "shape_differences": {k: [shapes_tl.get(k), shapes_tp.get(k)] for k in sorted(set(shapes_tl) | set(shapes_tp))
                              if shapes_tl.get(k) != shapes_tp.get(k)},
        "compacted_widths": report.widths_after, "outputs_rel_err": outputs,
        "prune_ms": prune_ms, "prune_phases_ms": {"ticketlab": {k: median_ms(v) for k, v in tl_phases.items()},
                                                  "torch_pruning": {k: median_ms(v) for k, v in tp_phases.items()}},
        "latency_ms": latency_ms, "params": params,
    }


# ------------------------------------------------------------------------------------------------
# the tiny LLaMA
# ------------------------------------------------------------------------------------------------
def build_llama(kv_heads: int = 2, seed: int = 0) -> nn.Module:
    """The tiny LlamaForCausalLM, seeded (transformers initialises from the global RNG, which is
    forked so the caller's stays as it was); eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**{**LLAMA, "num_key_value_heads": kv_heads})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def llama_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, LLAMA["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


def layer_shapes(model: nn.Module) -> list[dict[str, Any]]:
    """Per decoder layer: q/k/v/o and MLP widths, and whether the GQA shapes are consistent
    (q = heads·head_dim read by o, k = v = kv_heads·head_dim, heads a multiple of kv_heads)."""
    out = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        d = int(attn.head_dim)
        q, k, v = attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features
        heads, kv = q / d, k / d
        out.append({"hidden": attn.q_proj.in_features, "q": q, "k": k, "v": v, "o_in": attn.o_proj.in_features,
                    "o_out": attn.o_proj.out_features, "head_dim": d, "heads": heads, "kv_heads": kv,
                    "num_key_value_groups": getattr(attn, "num_key_value_groups", None),
                    "mlp": mlp.gate_proj.out_features,
                    "gqa_consistent": bool(q == attn.o_proj.in_features and k == v and heads == int(heads)
                                           and kv == int(kv) and kv > 0 and heads % kv == 0
                                           and getattr(attn, "num_key_value_groups", heads / kv) == heads / kv)})
    return out


def reload_check(model: nn.Module, ids: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    """``save_pretrained`` + ``AutoModelForCausalLM.from_pretrained``: the error's last line, or
    whether every parameter and the logits came back equal."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()     # the load report of a mismatch is summarised below instead
    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model.save_pretrained(tmp)
        except Exception as err:   # noqa: BLE001 - the point is to record it
            return {"saved": False, "error": _last_line(err)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reloaded = AutoModelForCausalLM.from_pretrained(tmp).eval()
        except Exception as err:   # noqa: BLE001
            return {"saved": True, "reloaded": False, "error": _last_line(err)}
    ours, theirs = model.state_dict(), reloaded.state_dict()
    same = set(ours) == set(theirs) and all(ours[k].shape == theirs[k].shape and torch.equal(ours[k], theirs[k])
                                            for k in ours)
    try:
        diff = float((_logits(reloaded, ids) - reference).abs().max())
    except Exception as err:   # noqa: BLE001
        diff = _last_line(err)
    return {"saved": True, "reloaded": True, "same_parameters": same, "logits_max_abs_diff": diff}


def _example_config_edit(model: nn.Module, gqa: bool) -> None:
    """The attribute and config updates Torch-Pruning's LLM example (examples/LLMs/prune_llm.py)
    applies after pruning, for separate q/k/v projections and a gate/up/down MLP."""
    model.config.hidden_size = model.lm_head.in_features
    for name, m in model.named_modules():
        if name.endswith("self_attn"):
            m.hidden_size = m.q_proj.out_features
            m.num_heads = m.hidden_size // m.head_dim
            model.config.num_attention_heads = m.num_heads
            if not gqa:
                m.num_key_value_heads = m.num_heads
            m.num_key_value_groups = m.num_heads // m.num_key_value_heads
        elif name.endswith("mlp"):
            m.hidden_size = m.gate_proj.in_features
            model.config.intermediate_size = m.gate_proj.out_features
    if not gqa:
        model.config.num_key_value_heads = model.config.num_attention_heads


class GroupTooLarge(RuntimeError):
    pass


def _guard_group_size(limit: int) -> None:
    """Make a Torch-Pruning dependency group that grows past ``limit`` entries raise (with the
    kinds of node it is made of) instead of growing until the timeout."""
    from collections import Counter

    from torch_pruning.dependency.group import Group
    original = Group.add_dep

    def add_dep(self, dep, idxs):
        original(self, dep, idxs)
        if len(self._group) > limit:
            kinds = Counter(f"{type(d.target.module).__name__}" for d, _ in self._group).most_common(4)
            root = self._group[0].dep.target.module
            raise GroupTooLarge(f"the dependency group rooted at {type(root).__name__}({getattr(root, 'in_features', '')}->"
                                f"{getattr(root, 'out_features', '')}) grew past {limit} entries: {kinds}")
    Group.add_dep = add_dep


def torch_pruning_llama(ratio: float = 0.5, *, kv_heads: int = 2, mode: str = "example", seed: int = 0,
                        group_limit: int = 20000, round_to: int | None = 4) -> dict[str, Any]:
    """Torch-Pruning 1.6.1 on the tiny LLaMA, in this process (`run_isolated` gives it a timeout).

    ``mode="example"``: the settings of its LLM example (examples/LLMs/prune_llm.py): ``num_heads``
    for q/k/v, ``prune_num_heads=True``, ``prune_head_dims=False``, ``head_pruning_ratio`` and
    ``pruning_ratio`` = ``ratio`` (hidden size and MLP), ``round_to=4``, ``lm_head`` ignored; the
    example's ``GroupNormImportance`` does not exist in 1.6.1, so ``MagnitudeImportance(p=2,
    group_reduction="mean")`` stands in. ``mode="mlp"``: MLP channels only — every attention
    projection and ``down_proj`` (the roots of the head and hidden-size groups) ignored, matched
    importance (sum of squares over gate/up rows and down columns), no rounding: the part
    ticketlab's ``channel`` groups cover. Returns what happened: the stage that failed and how, or
    the kept channels, the shapes, whether GQA shapes stayed consistent, the forward pass, and
    ``save_pretrained`` / ``from_pretrained`` with and without the example's config edit. The
    model's logits before pruning are in ``logits_checksum`` so that two processes can check they
    built the same weights.
    """
    tp = _tp()
    warnings.filterwarnings("ignore")
    if group_limit:
        _guard_group_size(group_limit)
    model = build_llama(kv_heads, seed)
    ids = llama_ids()
    dense_logits = _logits(model, ids)
    result: dict[str, Any] = {"mode": mode, "ratio": ratio, "kv_heads": kv_heads, "torch_pruning": tp_version(),
                              "attn_implementation": getattr(model.config, "_attn_implementation", None),
                              "logits_checksum": float(dense_logits.double().abs().sum())}
    layers = model.model.layers
    if mode == "example":
        num_heads = {}
        for layer in layers:
            num_heads[layer.self_attn.q_proj] = model.config.num_attention_heads
            num_heads[layer.self_attn.k_proj] = model.config.num_key_value_heads
            num_heads[layer.self_attn.v_proj] = model.config.num_key_value_heads
        kwargs: dict[str, Any] = {
            "importance": tp.importance.MagnitudeImportance(p=2, group_reduction="mean"), "num_heads": num_heads,
            "prune_num_heads": True, "prune_head_dims": False, "head_pruning_ratio": ratio,
            "ignored_layers": [model.lm_head], "round_to": round_to}
    else:
        ignored = [model.lm_head] + [m for layer in layers for m in (
            layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj, layer.self_attn.o_proj,
            layer.mlp.down_proj)]
        kwargs = {"importance": tp.importance.MagnitudeImportance(p=2, group_reduction="sum", normalizer=None,
                                                                  target_types=[nn.Linear]),
                  "ignored_layers": ignored, "round_to": None}
    names = {m: n for n, m in model.named_modules()}
    start = time.perf_counter()
    try:
        # transformers returns a ModelOutput holding a cache object; TP traces only tensors
        pruner = tp.pruner.MetaPruner(model, example_inputs=ids[:1], global_pruning=False, pruning_ratio=ratio,
                                      output_transform=lambda out: out.logits, **kwargs)
    except Exception as err:   # noqa: BLE001
        result.update(stage="building the pruner (dependency graph and groups)", error=_last_line(err),
                      seconds=time.perf_counter() - start)
        return result
    result["build_s"] = time.perf_counter() - start
    removed: dict[str, list[int]] = {}
    try:
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                if pruner.DG.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Linear):
                    removed[names[dep.target.module]] = sorted(int(i) for i in idxs)
            group.prune()
    except Exception as err:   # noqa: BLE001
        result.update(stage="pruning", error=_last_line(err))
        return result
    result["prune_s"] = time.perf_counter() - start
    result["stage"] = "done"
    result["kept_mlp"] = {i: sorted(set(range(LLAMA["intermediate_size"]))
                                    - set(removed.get(f"model.layers.{i}.mlp.gate_proj", [])))
                          for i in range(len(layers))}
    result["layers"] = layer_shapes(model)
    result["embedding"] = list(model.model.embed_tokens.weight.shape)
    try:
        pruned_logits = _logits(model, ids)
        result["forward_after_pruning"] = "ok"
    except Exception as err:   # noqa: BLE001
        pruned_logits = None
        result["forward_after_pruning"] = _last_line(err)
    if pruned_logits is not None:
        result["reload_without_config_edit"] = reload_check(model, ids, pruned_logits)
    edited = copy.deepcopy(model)
    try:
        if mode == "example":
            _example_config_edit(edited, gqa=kv_heads != LLAMA["num_attention_heads"])
        else:
            edited.config.intermediate_size = edited.model.layers[0].mlp.gate_proj.out_features
        result["config_after_edit"] = {k: getattr(edited.config, k) for k in (
            "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size")}
        edited_logits = _logits(edited, ids)
        result["forward_after_config_edit"] = "ok"
        result["reload_with_config_edit"] = reload_check(edited, ids, edited_logits)
    except Exception as err:   # noqa: BLE001
        result["config_edit_error"] = _last_line(err)
    return result


def _child(queue, kwargs):
    try:
        queue.put(torch_pruning_llama(**kwargs))
    except BaseException as err:   # noqa: BLE001 - report, whatever it was
        queue.put({"stage": "child", "error": _last_line(err), "traceback": traceback.format_exc()[-2000:]})


def run_isolated(timeout_s: float, threads: int, **kwargs) -> dict[str, Any]:
    """`torch_pruning_llama` in a spawned child process, killed (by its own pid) after ``timeout_s``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_with_threads, args=(queue, kwargs, threads), daemon=True)
    start = time.perf_counter()
    proc.start()
    try:
        result = queue.get(timeout=timeout_s)
    except Exception:   # noqa: BLE001 - queue.Empty: still running
        result = {**kwargs, "stage": "timeout", "error": f"no result within {timeout_s:.0f} s (killed)"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    result["wall_s"] = time.perf_counter() - start
    return result


def _child_with_threads(queue, kwargs, threads):
    torch.set_num_threads(threads)
    _child(queue, kwargs)


def ticketlab_llama(ratio: float, *, kv_heads: int = 2, seed: int = 0, units: tuple[str, ...] = ("head", "channel")
                    ) -> dict[str, Any]:
    """ticketlab's side: `transformer_layout` (units), magnitude scores, per-family selection at
    Torch-Pruning's ``int(size * (1 - ratio))`` counts (key/value groups for heads, at least one),
    `compact_transformer`, and the reload. Reports ``unavailable`` if the modules are not there."""
    try:
        from ticketlab.deploy.compact_hf import compact_transformer
        from ticketlab.llm.adapters import find_blocks, find_targets
        from ticketlab.structure.transformers import transformer_layout
    except Exception as err:   # noqa: BLE001
        return {"stage": "unavailable", "error": _last_line(err)}
    model = build_llama(kv_heads, seed)
    ids = llama_ids()
    dense_logits = _logits(model, ids)
    result: dict[str, Any] = {"units": list(units), "ratio": ratio, "kv_heads": kv_heads,
                              "logits_checksum": float(dense_logits.double().abs().sum())}
    try:
        start = time.perf_counter()
        path, blocks = find_blocks(model)
        names = [t.parameter for t in find_targets(model, path, blocks)]
        params = dict(model.named_parameters())
        layout = transformer_layout(model, units, names)
        counts = {f.name: max(1, kept_count(f.size, ratio)) for f in layout}
        mask = select_groups(magnitude_scores(model, {n: params[n] for n in names}), layout,
                             GroupTarget(per_family=counts), aggregate="l2")
        compacted, report = compact_transformer(model, mask)
        result["prune_s"] = time.perf_counter() - start
    except Exception as err:   # noqa: BLE001
        result.update(stage="pruning", error=_last_line(err), traceback=traceback.format_exc()[-2000:])
        return result
    masked = copy.deepcopy(model)
    mask.apply_(masked)
    compacted_logits = _logits(compacted, ids)
    result.update(stage="done", report=report.to_json(), layers=layer_shapes(compacted),
                  compacted_vs_masked=rel_err(compacted_logits, _logits(masked, ids)),
                  reload=reload_check(compacted, ids, compacted_logits),
                  kept_mlp={int(n.split(".")[2]): v for n, v in report.kept_groups.items() if n.endswith(".mlp")},
                  kept_kv_groups={int(n.split(".")[2]): v for n, v in report.kept_groups.items() if n.endswith(".attn")})
    return result


def llama_part(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ratio in args.ratios:
        key = f"{ratio:g}"
        runs = {
            "tp_example_gqa": run_isolated(args.llama_timeout, args.threads, ratio=ratio, kv_heads=2, mode="example",
                                           group_limit=args.group_limit),
            "tp_example_mha_control": run_isolated(args.llama_timeout, args.threads, ratio=ratio, kv_heads=4,
                                                   mode="example", group_limit=args.group_limit),
            "tp_mlp_gqa": run_isolated(args.llama_timeout, args.threads, ratio=ratio, kv_heads=2, mode="mlp",
                                       group_limit=args.group_limit),
            "ticketlab_gqa": ticketlab_llama(ratio, kv_heads=2),
            "ticketlab_mlp_gqa": ticketlab_llama(ratio, kv_heads=2, units=("channel",)),
        }
        tp_mlp, tl_mlp = runs["tp_mlp_gqa"], runs["ticketlab_mlp_gqa"]
        if tp_mlp.get("stage") == "done" and tl_mlp.get("stage") == "done":
            same_weights = abs(tp_mlp["logits_checksum"] - tl_mlp["logits_checksum"]) < 1e-6 * tl_mlp["logits_checksum"]
            runs["mlp_comparison"] = {
                "same_model_weights": same_weights,
                "jaccard_per_layer": {i: jaccard(set(tp_mlp["kept_mlp"][i]), set(tl_mlp["kept_mlp"][int(i)]))
                                      for i in tp_mlp["kept_mlp"]},
                "kept_per_layer": {i: [len(tl_mlp["kept_mlp"][int(i)]), len(tp_mlp["kept_mlp"][i])]
                                   for i in tp_mlp["kept_mlp"]}}
        out[key] = runs
    return out


# ------------------------------------------------------------------------------------------------
# printing
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-2 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def print_resnet(results: list[dict[str, Any]]) -> None:
    for r in results:
        print(f"\n== ResNet-20, weights {r['weights']}, channel ratio {r['ratio']:g} per layer (fc kept) ==")
        rows = [("family", "size", "kept tl", "kept tp", "J(tp)", "J(tp-default)", "imp rel diff", "tl own rounding")]
        for f in r["families"]:
            shown = f["family"] + (f" (+{len(f['producers']) - 1} res)" if len(f["producers"]) > 1 else "")
            rows.append((shown, f["size"], f["kept_ticketlab"], f["kept_tp"], f"{f['jaccard_tp']:.3f}",
                         f"{f['jaccard_tp_default']:.3f}", _fmt(f["importance_max_rel_diff"], 2),
                         f["kept_ticketlab_own_rounding"]))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  " + "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
        o, p, lat = r["outputs_rel_err"], r["prune_ms"], r["latency_ms"]
        print(f"  same kept sets: {r['same_kept_sets']}; compacted shapes equal: {r['shapes_equal']}"
              + (f" (differ: {r['shape_differences']})" if r["shape_differences"] else "")
              + (f"; TP groups without a ticketlab family: {r['unmatched_tp_groups']}" if r["unmatched_tp_groups"] else ""))
        print(f"  outputs (max rel err): ticketlab compacted vs its masked {_fmt(o['ticketlab_compacted_vs_masked'])}; "
              f"TP compacted vs masked to TP's channels {_fmt(o['tp_compacted_vs_masked_same_channels'])}; "
              f"TP vs ticketlab compacted {_fmt(o['tp_vs_ticketlab_compacted'])}; pruned vs dense {_fmt(o['pruned_vs_dense'])}")
        print(f"  params: dense {r['params']['dense']}, ticketlab {r['params']['ticketlab']}, TP {r['params']['torch_pruning']}")
        print(f"  pruning (median ms): ticketlab {p['ticketlab']:.1f}, TP {p['torch_pruning']:.1f} "
              f"(ticketlab / TP = {p['ticketlab'] / p['torch_pruning']:.2f}); phases: "
              + "; ".join(f"{side} " + ", ".join(f"{k} {v:.1f}" for k, v in ph.items())
                          for side, ph in r["prune_phases_ms"].items()))
        print(f"  latency batch {r['batch']} (median ms): dense {lat['dense']:.2f}, ticketlab {lat['ticketlab']:.2f} "
              f"(x{lat['dense'] / lat['ticketlab']:.2f} vs dense), TP {lat['torch_pruning']:.2f} "
              f"(x{lat['dense'] / lat['torch_pruning']:.2f}); ticketlab / TP = {lat['ticketlab'] / lat['torch_pruning']:.3f}")


def _llama_line(name: str, r: dict[str, Any]) -> str:
    if r.get("stage") != "done":
        return f"  {name}: FAILED at {r.get('stage')}: {r.get('error')} ({_fmt(r.get('wall_s', r.get('seconds')), 3)} s)"
    parts = [f"{name}: ok"]
    if "layers" in r:
        parts.append("layers " + "; ".join(
            f"q{l['q']}/k{l['k']}/v{l['v']}/o_in{l['o_in']}/mlp{l['mlp']}/hidden{l['hidden']}"
            f" heads {l['heads']:g} kv {l['kv_heads']:g} gqa-consistent {l['gqa_consistent']}" for l in r["layers"]))
    for key in ("reload_without_config_edit", "reload_with_config_edit", "reload"):
        if key in r:
            v = r[key]
            shown = (f"error {v['error']}" if "error" in v else
                     f"same params {v['same_parameters']}, logits diff {_fmt(v['logits_max_abs_diff'])}")
            parts.append(f"{key}: {shown}")
    if "config_after_edit" in r:
        parts.append(f"config after the example's edit {r['config_after_edit']}")
    if "config_edit_error" in r:
        parts.append(f"config edit error {r['config_edit_error']}")
    if "kept_kv_groups" in r:
        parts.append(f"kept key/value groups per layer {r['kept_kv_groups']}")
    if "report" in r:
        parts.append(f"reloadable {r['report']['reloadable']} {r['report']['why_not_reloadable']}"
                     f"; compacted vs masked {_fmt(r['compacted_vs_masked'])}")
    return "  " + "\n    ".join(parts)


def print_llama(results: dict[str, Any]) -> None:
    for ratio, runs in results.items():
        print(f"\n== tiny LLaMA (hidden 64, 2 layers, 4 heads / 2 kv heads, MLP 172), ratio {ratio} ==")
        for name in ("tp_example_gqa", "tp_example_mha_control", "tp_mlp_gqa", "ticketlab_gqa", "ticketlab_mlp_gqa"):
            print(_llama_line(name, runs[name]))
        if "mlp_comparison" in runs:
            c = runs["mlp_comparison"]
            print(f"  MLP channels, TP vs ticketlab: same weights {c['same_model_weights']}; kept per layer "
                  f"(tl, tp) {c['kept_per_layer']}; Jaccard {c['jaccard_per_layer']}")


NOTES = """
Notes (what differs between the two and why):
* Importance. TP's MagnitudeImportance(p=2, group_reduction="sum", normalizer=None,
  target_types=[Conv2d, Linear]) is the squared L2 norm of the group's conv/linear weights (rows
  of producers, columns of consumers), i.e. ticketlab's group score squared: 'imp rel diff' is the
  largest channel-wise relative difference (float32 in TP vs float64 in ticketlab).
* BatchNorm. TP's default target_types include BatchNorm, adding |gamma|^2 to each channel's
  score (and its default mean reduction / mean normaliser rescale a group by a constant, which a
  per-layer ranking ignores). At init gamma = 1 for every channel, a constant shift; after the SGD
  steps gamma differs per channel and 'J(tp-default)' shows how much that changes the kept set.
  ticketlab scores no BatchNorm and no bias.
* Counts. TP keeps int(C * (1 - ratio)) channels (floor); ticketlab's uniform counts round half up
  ('tl own rounding'), e.g. 45 instead of 44 of 64 channels at ratio 0.3. The comparison runs
  ticketlab at TP's counts.
* Residual stages. Both couple the stem / each block's conv2 / the shortcut of a stage into one
  channel set; TP names the group by the first module it meets when tracing backwards (e.g. the
  shortcut), ticketlab by its first producer in forward order.
* Ties. TP takes torch.topk of the lowest scores (ties unspecified); ticketlab keeps the lower
  index among equal scores. No ties occur with these random weights.
* LLaMA / GQA. TP 1.6.1 cannot build its dependency groups for the GQA model (transformers 5):
  starting from q/k/v, the walk through the key/value repeat (its _GQAIndexMapping) and RoPE's
  slices/concatenations keeps adding the same layers with new index lists, so the group grows
  without end (the guard stops it at --group-limit entries; TP issue #527 reports the same hang
  on Qwen3-8B). The same settings run on the MHA control. Excluding attention (and the hidden size)
  lets TP prune MLP channels of the GQA model. From TP's source (not reachable here), its GQA head
  pruning would remove query heads inside each key/value group and keep every key/value head;
  ticketlab removes whole key/value groups (a kv head with its query heads).
* Pruning time. ticketlab's layout (one fx trace) plus selection is about as fast as TP's whole
  run; compact_model dominates ticketlab's time because it re-traces the shrinking model after
  every family it compacts (one sweep per change, plus a final one), where TP applies all groups
  on one graph built once.
* LLaMA settings. TP's example also prunes the hidden size (embedding, RMSNorm weights, every
  projection's input; round_to=4) and rounds the number of heads removed up (ceil(ratio * heads):
  ratio 0.3 removes 2 of 4 heads); ticketlab's transformer groups never touch the hidden size and
  keep int(kv_heads * (1 - ratio)) key/value groups here (TP's floor, for parity). Neither TP nor
  its example edits the config: plain save_pretrained + from_pretrained then refuses the pruned
  checkpoint (size mismatch); after the example's hand edit of config / attributes it reloads.
  ticketlab's compact_transformer writes the config itself (report.reloadable). The example's
  GroupNormImportance does not exist in 1.6.1 (MagnitudeImportance(p=2, group_reduction="mean")
  stands in), and with the model's default use_cache=True TP's tracer fails on the cache object.
* Outputs. ticketlab's channel masks zero the consumers' columns too, so the masked model equals
  the compacted one; TP's compacted model is compared with ticketlab's masked model at TP's
  channels, which it equals when TP removed exactly those rows and columns.
"""

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5], help="channel ratios removed per layer")
    parser.add_argument("--train-steps", type=int, nargs="+", default=[0, 20],
                        help="ResNet-20 weights: 0 = init, N = after N seeded SGD steps on random data")
    parser.add_argument("--repeats", type=int, default=5, help="pruning-time repeats per side (alternated)")
    parser.add_argument("--latency-repeats", type=int, default=20, help="latency repeats per model (alternated)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for every timing)")
    parser.add_argument("--skip-llama", action="store_true")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--llama-timeout", type=float, default=120.0, help="seconds per Torch-Pruning LLaMA run")
    parser.add_argument("--group-limit", type=int, default=20000,
                        help="stop a TP dependency group at this many entries (0: no guard, only the timeout)")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args(argv)
    try:
        tp_version()
        _tp()
    except Exception as err:   # noqa: BLE001
        print(f"Torch-Pruning is not installed ({_last_line(err)}): pip install --no-deps torch-pruning==1.6.1",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", module="torch_pruning")
    env = {"torch": torch.__version__, "torch_pruning": tp_version(), "python": platform.python_version(),
           "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, "batch": args.batch}
    try:
        import transformers
        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    print("environment:", env)
    resnet_results = [] if args.skip_resnet else [compare_resnet(steps, ratio, args) for steps in args.train_steps
                                                  for ratio in args.ratios]
    print_resnet(resnet_results)
    llama_results = None
    if not args.skip_llama and env["transformers"]:
        llama_results = llama_part(args)
        print_llama(llama_results)
    print(NOTES)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"environment": env, "command": " ".join(sys.argv), "resnet20": resnet_results,
                       "llama": llama_results}, fh, indent=1, default=list)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
