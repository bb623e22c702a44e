"""The op graph of one forward step: one transformer layer, or the whole model, as a
``networkx.DiGraph`` whose nodes are ops and whose edges are data dependencies.

The step is the one :meth:`ModelSpec.macs <tilesim.programs.models.ModelSpec.macs>` counts:

- ``prefill``: ``batch`` sequences of ``context`` prompt tokens, T = batch x context tokens,
  causal attention over the prompt, the KV cache of the prompt written, and logits for the
  **last** token of each sequence only (final norm and LM head run on ``batch`` rows).
- ``decode``: one new token per sequence after ``context`` cached tokens, T = batch; attention
  reads the cache and appends the new token's entry.

Nodes
-----
A node's key is its ``name`` (``"embed"``, ``"layer3.q"``, ``"final_norm"``, ``"lm_head"``).
Nodes are inserted in execution order, so ``list(graph)`` is the execution order (every edge
goes forward in it, so it is a topological order); ``order`` is the index in it. Every node has

======================  =========================================================================
``kind``                embedding, norm, matmul, rope, attention, residual_add, activation,
                        router, topk, moe_experts, lm_head (:data:`KINDS`)
``name``                the node key
``layer``               the block it belongs to, -1 for embedding, final norm and LM head
``order``               position in execution order (0-based, over the graph built)
``macs``                exact multiply-accumulates, ``sum(macs_parts.values())``
``macs_parts``          ``{term of ModelSpec.macs_breakdown: macs}`` (empty for vector ops)
``weight``              name of the parameters the op reads, None if none (see below)
``weight_bytes``        bytes of all those parameters (matrices in weight_dtype, norm scales and
                        shifts and biases in act_dtype, rounded up to a byte per op)
``bytes_min``           bytes that must cross DRAM at minimum: parameters actually needed
                        (``weight_bytes``, but only the experts that receive tokens for
                        ``moe_experts``, and only the gathered rows for ``embedding``) plus KV
                        cache read and written; activations are assumed to stay on chip
``in_bytes``            activation bytes the op reads (act_dtype; for attention also the new
                        tokens' keys and values, not the cache)
``out_bytes``           activation bytes the op produces (act_dtype)
======================  =========================================================================

and by kind:

- ``matmul``, ``router``, ``lm_head``: ``m`` (rows: tokens), ``k``, ``n``, ``count`` (independent
  ``m x k @ k x n`` products, e.g. MLA ``k_up``/``v_up`` run once per head, ``count = H``),
  ``bias`` (bias elements, 0 if none). ``macs = count x m x k x n``. ``lm_head`` also has
  ``tied`` (its weight is ``"embed"``).
- ``embedding``: ``tokens``, ``dim``, ``learned_positions`` (GPT-2 adds a position row),
  ``gather_rows`` (table rows read: ``min(T, vocab)`` token rows, assuming distinct tokens,
  plus one row per distinct position when positions are learned), ``gather_bytes``,
  ``elements`` (T x d written).
- ``norm``: ``norm`` (rms | layer), ``rows``, ``dim``, ``eps``, ``elements`` (rows x dim).
- ``rope``: ``rows`` (tokens), ``q_heads``, ``k_heads`` (heads rotated: n_kv_heads, or 1 for the
  shared MLA rope key), ``rot_dim`` (rotated width per head), ``position_start``,
  ``positions`` (per sequence), ``theta``, ``elements`` (rows x (q_heads + k_heads) x rot_dim).
- ``attention``: ``variant`` (mha | gqa | mqa | mla), ``batch``, ``q_heads``, ``kv_heads``
  (MLA: 1, the latent cache is shared by every head), ``queries`` (per sequence: context in
  prefill, 1 in decode), ``keys`` (keys in range per sequence: the prompt in prefill, causal;
  cache + new token in decode, at most the window), ``pairs`` (attended (query, key) pairs per
  sequence and head, :meth:`ModelSpec.attended_pairs`), ``causal``, ``window`` (0 = none),
  ``score_width``, ``value_width`` (MLA: kv_lora + rope and kv_lora), ``kv_elements`` (cache
  elements per token in this layer), ``kv_tokens_read`` / ``kv_tokens_written`` (per sequence:
  decode reads ``keys - 1`` cached tokens and writes 1; prefill reads none and writes the
  prompt, or its last ``window`` tokens), ``kv_read_bytes``, ``kv_write_bytes`` (kv_dtype, over
  the batch), ``softmax_elements`` (batch x q_heads x pairs). ``macs_parts`` has
  ``attn_scores`` and ``attn_values``.
- ``residual_add``: ``elements``.
- ``activation``: ``fn`` (silu_mul for SwiGLU's silu(gate) * up, or gelu), ``elements``.
- ``topk``: ``tokens``, ``experts``, ``top_k``, ``elements`` (router scores, tokens x experts);
  DeepSeek-V3's score-correction bias is its weight (``"layerI.router_bias"``).
- ``moe_experts``: ``tokens``, ``experts``, ``top_k``, ``tokens_per_expert`` (tuple, one per
  routed expert), ``active_experts``, ``shared_experts`` (each runs all T tokens), ``d_model``,
  ``width`` (moe_ffn_dim), ``expert_weights`` (one expert's matrices: tuple of
  :class:`~tilesim.programs.models.Weight` named gate/up/down), ``bias`` (bias elements per
  expert), ``fn`` (silu_mul | gelu), ``act_elements`` (activation outputs over all expert
  rows), ``combine_elements`` (the weighted sum of routed outputs, T x top_k x d). Its weight
  ``"layerI.experts"`` stands for ``layerI.expert{e}.{gate,up,down}`` and
  ``layerI.shared{j}.{gate,up,down}``; ``macs_parts`` has ``moe_routed`` and ``moe_shared``.

Routing (:data:`ROUTINGS`, the graph's ``routing``): the T x top_k (token, expert) choices
go as evenly as possible over the experts that take part, each expert getting at most T tokens
(a token picks distinct experts), so the total is exactly T x top_k. Which experts take part:
``random`` (the default) as many as independent uniform choices reach on average,
``E (1 - (1 - top_k / E)^T)`` rounded (an expert escapes one token's top_k with probability
``1 - top_k / E``): a decode step of 4 sequences on mixtral-8x7b reads 5 of its 8 experts, of 32
on deepseek-v3 163 of 256; ``balanced`` every expert, as a router trained to balance load
would spread a large batch (for a small one, the most expert weights a step can read). The MAC
count does not depend on this; the bytes do (an expert with no tokens is not read). Which
(token, choice) goes to which expert: :func:`expert_assignment`.

Parameter names (``weight``) follow the compiler's convention (``y = x @ W``): ``embed``
[V, d], ``layerI.attn_norm``, ``layerI.q`` / ``k`` / ``v`` / ``o`` (MLA: ``q_a``, ``q_a_norm``,
``q_b`` or ``q``, ``kv_a``, ``kv_a_norm``, ``k_up``, ``v_up``, ``o``), ``layerI.ffn_norm``,
``layerI.gate`` / ``up`` / ``down``, ``layerI.router``, ``final_norm``, ``lm_head`` [d, V].
A matmul's bias is part of its weight and its weight_bytes.

What the parameter bytes add up to
----------------------------------
``sum(weight_bytes)`` over :func:`model_graph` is :meth:`ModelSpec.weight_bytes` **minus the
token embedding table unless the LM head is tied to it** (a lookup gathers T rows, it does not
read the table; a tied LM head reads all of it as its weight) **and minus the learned position
table** (GPT-2). It is exact whenever every op's parameter bits are a whole number of bytes,
which holds for every preset in every datatype (only int4 with an odd element count could
round up, by under a byte per op). ``sum(bytes_min)`` adds the KV cache traffic and the
embedding rows, and drops routed experts that receive no token.

Graph attributes: ``model``, ``phase``, ``batch``, ``context``, ``tokens`` (T), ``layers``
(the layers built), ``weight_dtype``, ``act_dtype``, ``kv_dtype``; :func:`layer_graph` also
sets ``entry`` (the nodes that read the layer's input) and ``exit`` (the node producing its
output).
"""
from __future__ import annotations

from typing import Any, Iterable

import networkx as nx

from tilesim.dtypes import DTYPES
from tilesim.errors import InputError
from tilesim.programs.models import ModelSpec, _check_int, _check_phase_context

KINDS = ("embedding", "norm", "matmul", "rope", "attention", "residual_add", "activation",
         "router", "topk", "moe_experts", "lm_head")
"""Every value a node's ``kind`` takes."""

MACS_PARTS = ("embedding", "attn_proj", "attn_scores", "attn_values", "ffn_dense", "moe_router",
              "moe_routed", "moe_shared", "lm_head")
"""The terms of :meth:`ModelSpec.macs_breakdown`, in its order."""


def _nbytes(elements: int, bits: int) -> int:
    return -(-elements * bits // 8)


ROUTINGS = ("random", "balanced")
"""How a MoE layer's tokens spread over its routed experts (module docstring, Routing)."""


def check_routing(routing: str, key: str = "routing") -> None:
    """A one-line InputError naming ``key`` unless ``routing`` is one of :data:`ROUTINGS`."""
    if routing not in ROUTINGS:
        raise InputError(f"{key}: {routing!r} is not allowed (one of {', '.join(ROUTINGS)})")


def expert_tokens(tokens: int, top_k: int, experts: int,
                  routing: str = "random") -> tuple[int, ...]:
    """Tokens each routed expert receives: over the A experts that take part (``balanced``:
    all; ``random``: ``E (1 - (1 - top_k / E)^tokens)`` rounded, at least top_k),
    ``tokens x top_k // A`` each and one more for the first ``tokens x top_k % A``, 0 for the
    others; the sum is ``tokens x top_k`` and none gets more than ``tokens``."""
    check_routing(routing)
    active = experts
    if routing == "random":
        reached = experts * (1.0 - (1.0 - top_k / experts) ** tokens)
        active = min(experts, max(top_k, round(reached)))
    q, r = divmod(tokens * top_k, active)
    return tuple(q + (e < r) if e < active else 0 for e in range(experts))


def expert_assignment(tokens: int, top_k: int, active: int) -> list[list[int]]:
    """Which expert runs each (token, choice) when ``active`` experts take part (the nonzero
    entries of :func:`expert_tokens`, which this spread has exactly): choice j of token t
    (tokens in row order) goes to expert ``(t x top_k + j) mod active``. A token's choices are
    distinct (top_k <= active), and expert e's tokens, in row order, are the choices
    ``e, e + active, ...`` (choice p is the ``p // active``-th row of its expert). Fixed when
    the step is compiled: the router's scores weight the outputs (codegen's combine) but do
    not pick the experts."""
    return [[(t * top_k + j) % active for j in range(top_k)] for t in range(tokens)]


def layer_signature(spec: ModelSpec, layer: int) -> str:
    """``"dense"`` or ``"moe"``: layers with the same signature have graphs identical in every
    shape, MAC and byte (only names and ``layer`` differ), so a runner may simulate one and
    reuse it. A MoE model's first ``first_dense_layers`` layers are dense, the rest MoE."""
    _check_layer(spec, layer)
    return "moe" if layer >= spec.n_dense_layers else "dense"


def layer_groups(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Layers by :func:`layer_signature`, in order of their first layer:
    e.g. deepseek-v3 ``{"dense": (0, 1, 2), "moe": (3, ..., 60)}``."""
    out: dict[str, list[int]] = {}
    for i in range(spec.n_layers):
        out.setdefault(layer_signature(spec, i), []).append(i)
    return {k: tuple(v) for k, v in out.items()}


def layer_graph(spec: ModelSpec, layer: int, phase: str, batch: int,
                context: int, routing: str = "random") -> nx.DiGraph:
    """The ops of block ``layer`` alone (from its attention norm to its FFN residual add)."""
    _check_args(phase, batch, context)
    _check_layer(spec, layer)
    b = _Builder(spec, phase, batch, context, (layer,), routing)
    entry, exit_ = b.layer(layer, None)
    b.g.graph.update(entry=entry, exit=exit_)
    return b.g


def model_graph(spec: ModelSpec, phase: str, batch: int, context: int,
                routing: str = "random") -> nx.DiGraph:
    """The whole step: embedding, every block, final norm and LM head; MoE tokens spread
    over experts by ``routing`` (:data:`ROUTINGS`).

    ``context`` is not checked against ``max_context`` here (as in :meth:`ModelSpec.macs`);
    use :func:`tilesim.programs.models.check_context`."""
    _check_args(phase, batch, context)
    b = _Builder(spec, phase, batch, context, tuple(range(spec.n_layers)), routing)
    x = b.embedding()
    for i in range(spec.n_layers):
        _, x = b.layer(i, x)
    b.final(x)
    return b.g


def lm_head_slice(spec: ModelSpec, phase: str, batch: int, context: int,
                  slices: int) -> dict:
    """The ``lm_head`` node of :func:`model_graph` over ``vocab_size / slices`` of the vocabulary
    (``slices`` divides it): one of the equal slices ``tilesim.simulate`` runs a large head as."""
    _check_args(phase, batch, context)
    if not isinstance(slices, int) or slices < 1 or spec.vocab_size % slices:
        raise ValueError(f"slices {slices!r} does not divide vocab_size {spec.vocab_size}")
    b = _Builder(spec, phase, batch, context, (), "random")
    return dict(b.g.nodes[b.head((), spec.vocab_size // slices)])


def macs_by_part(graph: nx.DiGraph) -> dict[str, int]:
    """Node MACs summed by :meth:`ModelSpec.macs_breakdown` term (every term present)."""
    out = dict.fromkeys(MACS_PARTS, 0)
    for _, parts in graph.nodes(data="macs_parts"):
        for key, value in parts.items():
            out[key] += value
    return out


# --------------------------------------------------------------------------------------------


def _check_args(phase: str, batch: int, context: int) -> None:
    _check_phase_context(phase, context)
    _check_int("batch", batch, 1)


def _check_layer(spec: ModelSpec, layer: int) -> None:
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < spec.n_layers:
        raise InputError(f"layer: {layer!r} is not allowed (0 to {spec.n_layers - 1})")


class _Builder:
    def __init__(self, spec: ModelSpec, phase: str, batch: int, context: int,
                 layers: tuple[int, ...], routing: str):
        check_routing(routing)
        self.s, self.phase, self.batch, self.context = spec, phase, batch, context
        self.routing = routing
        self.T = batch * context if phase == "prefill" else batch
        self.wbits = DTYPES[spec.weight_dtype].bits
        self.abits = DTYPES[spec.act_dtype].bits
        self.kvbits = DTYPES[spec.kv_dtype].bits
        self.g = nx.DiGraph(model=spec.name, phase=phase, batch=batch, context=context,
                            tokens=self.T, layers=layers, weight_dtype=spec.weight_dtype,
                            act_dtype=spec.act_dtype, kv_dtype=spec.kv_dtype,
                            routing=routing)

    # ---- generic --------------------------------------------------------------------------
    def act(self, elements: int) -> int:
        return _nbytes(elements, self.abits)

    def add(self, name: str, kind: str, layer: int, deps: Iterable[str | None],
            **attrs: Any) -> str:
        parts = attrs.pop("macs_parts", {})
        weight_bytes = attrs.pop("weight_bytes", 0)
        node = dict(kind=kind, name=name, layer=layer, order=len(self.g),
                    macs=sum(parts.values()), macs_parts=parts, weight=attrs.pop("weight", None),
                    weight_bytes=weight_bytes,
                    bytes_min=attrs.pop("bytes_min", weight_bytes),
                    in_bytes=attrs.pop("in_bytes"), out_bytes=attrs.pop("out_bytes"))
        node.update(attrs)
        self.g.add_node(name, **node)
        for d in deps:
            if d is not None:
                self.g.add_edge(d, name)
        return name

    def matmul(self, name: str, layer: int, deps, m: int, k: int, n: int, part: str,
               count: int = 1, bias: int = 0, kind: str = "matmul", weight: str | None = None,
               **extra) -> str:
        wb = _nbytes(count * k * n, self.wbits) + _nbytes(bias, self.abits)
        return self.add(name, kind, layer, deps, m=m, k=k, n=n, count=count, bias=bias,
                        weight=weight or name, weight_bytes=wb,
                        macs_parts={part: count * m * k * n},
                        in_bytes=self.act(count * m * k), out_bytes=self.act(count * m * n),
                        **extra)

    def norm(self, name: str, layer: int, deps, rows: int, dim: int) -> str:
        params = dim * (2 if self.s.norm == "layer" else 1)
        return self.add(name, "norm", layer, deps, norm=self.s.norm, rows=rows, dim=dim,
                        eps=self.s.norm_eps, elements=rows * dim, weight=name,
                        weight_bytes=_nbytes(params, self.abits),
                        in_bytes=self.act(rows * dim), out_bytes=self.act(rows * dim))

    def elementwise(self, name: str, kind: str, layer: int, deps, elements: int, inputs: int,
                    out_elements: int | None = None, **extra) -> str:
        """A vector op over ``elements`` outputs reading ``inputs`` operands of that size."""
        out = elements if out_elements is None else out_elements
        return self.add(name, kind, layer, deps, elements=elements,
                        in_bytes=self.act(inputs * elements), out_bytes=self.act(out), **extra)

    # ---- embedding and head ---------------------------------------------------------------
    def embedding(self) -> str:
        s, T = self.s, self.T
        learned = s.rope_theta == 0
        rows = min(T, s.vocab_size)
        if learned:
            rows += self.context if self.phase == "prefill" else 1
        gather = _nbytes(rows * s.d_model, self.wbits)
        return self.add("embed", "embedding", -1, (), tokens=T, dim=s.d_model,
                        learned_positions=learned, gather_rows=rows, gather_bytes=gather,
                        elements=T * s.d_model, weight="embed", weight_bytes=0,
                        bytes_min=gather, in_bytes=0, out_bytes=self.act(T * s.d_model))

    def final(self, x: str) -> None:
        n = self.norm("final_norm", -1, (x,), self.batch, self.s.d_model)
        self.head((n,), self.s.vocab_size)

    def head(self, deps, vocab: int) -> str:
        s = self.s
        return self.matmul("lm_head", -1, deps, self.batch, s.d_model, vocab, "lm_head",
                           kind="lm_head", weight="embed" if s.tie_embeddings else "lm_head",
                           tied=s.tie_embeddings)

    # ---- one block ------------------------------------------------------------------------
    def layer(self, i: int, x: str | None) -> tuple[tuple[str, ...], str]:
        """Add block ``i`` reading ``x``; return (nodes reading the block input, output node)."""
        s, T, d = self.s, self.T, self.s.d_model
        p = f"layer{i}."
        n1 = self.norm(p + "attn_norm", i, (x,), T, d)
        attn_out = self.mla(i, n1) if s.attention == "mla" else self.mha(i, n1)
        r1 = self.elementwise(p + "attn_residual", "residual_add", i, (x, attn_out), T * d, 2)
        n2 = self.norm(p + "ffn_norm", i, (r1,), T, d)
        if layer_signature(s, i) == "moe":
            f = self.moe(i, n2)
        else:
            f = self.ffn(i, n2)
        r2 = self.elementwise(p + "ffn_residual", "residual_add", i, (r1, f), T * d, 2)
        return (n1, r1), r2

    def rope(self, name: str, layer: int, deps, q_heads: int, k_heads: int,
             rot_dim: int) -> str | None:
        if self.s.rope_theta == 0 or rot_dim == 0:
            return None
        T = self.T
        elements = T * (q_heads + k_heads) * rot_dim
        start, count = (0, self.context) if self.phase == "prefill" else (self.context, 1)
        return self.elementwise(name, "rope", layer, deps, elements, 1, rows=T, q_heads=q_heads,
                                k_heads=k_heads, rot_dim=rot_dim, position_start=start,
                                positions=count, theta=self.s.rope_theta)

    def attention(self, name: str, layer: int, deps, kv_heads: int, score_width: int,
                  value_width: int, kv_elements: int, q_in: int, new_kv_in: int) -> str:
        s, B, S, T = self.s, self.batch, self.context, self.T
        H, w = s.n_heads, s.sliding_window
        pairs = s.attended_pairs(self.phase, S)
        if self.phase == "prefill":
            queries, keys, causal = S, S, True
            read, written = 0, (min(S, w) if w else S)
        else:
            queries, causal = 1, False
            keys = min(S + 1, w) if w else S + 1
            read, written = keys - 1, 1
        return self.add(
            name, "attention", layer, deps, variant=s.attention, batch=B, q_heads=H,
            kv_heads=kv_heads, queries=queries, keys=keys, pairs=pairs, causal=causal, window=w,
            score_width=score_width, value_width=value_width, kv_elements=kv_elements,
            kv_tokens_read=read, kv_tokens_written=written,
            kv_read_bytes=_nbytes(B * read * kv_elements, self.kvbits),
            kv_write_bytes=_nbytes(B * written * kv_elements, self.kvbits),
            softmax_elements=B * H * pairs,
            macs_parts={"attn_scores": B * pairs * H * score_width,
                        "attn_values": B * pairs * H * value_width},
            bytes_min=(_nbytes(B * read * kv_elements, self.kvbits)
                       + _nbytes(B * written * kv_elements, self.kvbits)),
            in_bytes=self.act(T * (q_in + new_kv_in)), out_bytes=self.act(T * H * value_width))

    def mha(self, i: int, n1: str) -> str:
        s, T, d, hd = self.s, self.T, self.s.d_model, self.s.head_dim
        H, KV, p = s.n_heads, s.n_kv_heads, f"layer{i}."
        qb = kb = 0
        if s.qkv_bias:
            qb, kb = H * hd, KV * hd
        q = self.matmul(p + "q", i, (n1,), T, d, H * hd, "attn_proj", bias=qb)
        k = self.matmul(p + "k", i, (n1,), T, d, KV * hd, "attn_proj", bias=kb)
        v = self.matmul(p + "v", i, (n1,), T, d, KV * hd, "attn_proj", bias=kb)
        r = self.rope(p + "rope", i, (q, k), H, KV, hd)
        deps = (q, k, v) if r is None else (r, v)
        a = self.attention(p + "attention", i, deps, KV, hd, hd, 2 * KV * hd, H * hd,
                           2 * KV * hd)
        return self.matmul(p + "o", i, (a,), T, H * hd, d, "attn_proj",
                           bias=d if s.attn_out_bias else 0)

    def mla(self, i: int, n1: str) -> str:
        s, T, d, H, p = self.s, self.T, self.s.d_model, self.s.n_heads, f"layer{i}."
        nope, rope, r, v = s.qk_nope_head_dim, s.qk_rope_head_dim, s.kv_lora_rank, s.v_head_dim
        if s.q_lora_rank:
            qa = self.matmul(p + "q_a", i, (n1,), T, d, s.q_lora_rank, "attn_proj")
            qn = self.norm(p + "q_a_norm", i, (qa,), T, s.q_lora_rank)
            q = self.matmul(p + "q_b", i, (qn,), T, s.q_lora_rank, H * (nope + rope),
                            "attn_proj")
        else:
            q = self.matmul(p + "q", i, (n1,), T, d, H * (nope + rope), "attn_proj")
        kva = self.matmul(p + "kv_a", i, (n1,), T, d, r + rope, "attn_proj")
        kvn = self.norm(p + "kv_a_norm", i, (kva,), T, r)
        ro = self.rope(p + "rope", i, (q, kva), H, 1, rope)
        kup = self.matmul(p + "k_up", i, (q,), T, nope, r, "attn_proj", count=H)
        a = self.attention(p + "attention", i, (kup, kvn, ro if ro else kva), 1, r + rope, r,
                           r + rope, H * (r + rope), r + rope)
        vup = self.matmul(p + "v_up", i, (a,), T, r, v, "attn_proj", count=H)
        return self.matmul(p + "o", i, (vup,), T, H * v, d, "attn_proj")

    def ffn(self, i: int, n2: str) -> str:
        s, T, d, F, p = self.s, self.T, self.s.d_model, self.s.ffn_dim, f"layer{i}."
        bias = s.mlp_bias
        if s.ffn_kind == "swiglu":
            g = self.matmul(p + "gate", i, (n2,), T, d, F, "ffn_dense", bias=F if bias else 0)
            u = self.matmul(p + "up", i, (n2,), T, d, F, "ffn_dense", bias=F if bias else 0)
            a = self.elementwise(p + "act", "activation", i, (g, u), T * F, 2, fn="silu_mul")
        else:
            u = self.matmul(p + "up", i, (n2,), T, d, F, "ffn_dense", bias=F if bias else 0)
            a = self.elementwise(p + "act", "activation", i, (u,), T * F, 1, fn="gelu")
        return self.matmul(p + "down", i, (a,), T, F, d, "ffn_dense", bias=d if bias else 0)

    def moe(self, i: int, n2: str) -> str:
        s, T, d, p = self.s, self.T, self.s.d_model, f"layer{i}."
        E, k, W = s.n_experts, s.experts_per_token, s.moe_ffn_dim
        rt = self.matmul(p + "router", i, (n2,), T, d, E, "moe_router", kind="router")
        rb = _nbytes(E, self.abits) if s.router_bias else 0
        # out: the T x top_k routing weights kept (expert indices ride along)
        tk = self.elementwise(p + "topk", "topk", i, (rt,), T * E, 1, out_elements=T * k,
                              tokens=T, experts=E, top_k=k,
                              weight=p + "router_bias" if s.router_bias else None,
                              weight_bytes=rb)
        per_expert = expert_tokens(T, k, E, self.routing)
        mats = s.ffn_weights(W)
        per_token = sum(w.elements for w in mats)
        bias = s._ffn_bias(W)
        one = _nbytes(per_token, self.wbits) + _nbytes(bias, self.abits)
        active = sum(1 for t in per_expert if t)
        shared = s.n_shared_experts
        rows = T * k + shared * T
        return self.add(
            p + "experts", "moe_experts", i, (n2, tk), tokens=T, experts=E, top_k=k,
            tokens_per_expert=per_expert, active_experts=active, shared_experts=shared,
            d_model=d, width=W, expert_weights=mats, bias=bias,
            fn="silu_mul" if s.ffn_kind == "swiglu" else "gelu", act_elements=rows * W,
            combine_elements=T * k * d, weight=p + "experts",
            weight_bytes=(E + shared) * one, bytes_min=(active + shared) * one,
            macs_parts={"moe_routed": T * k * per_token, "moe_shared": shared * T * per_token},
            in_bytes=self.act(T * d), out_bytes=self.act(T * d))
