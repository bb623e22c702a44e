"""Transformer model specifications: exact parameter, weight-byte and KV-cache accounting, and
the analytic multiply-accumulate (MAC) count of one forward step.

A :class:`ModelSpec` is a decoder-only transformer: a token embedding (plus a learned position
embedding when ``rope_theta == 0``, as in GPT-2), ``n_layers`` pre-norm blocks of attention and
feed-forward network (FFN), a final norm and an LM head (tied to the embedding or not).

Model
-----
Attention is one of:

- **MHA / GQA / MQA** (derived from heads: ``n_kv_heads`` equal to ``n_heads``, between, or 1):
  Q is ``d_model x n_heads*head_dim``, K and V ``d_model x n_kv_heads*head_dim``, O
  ``n_heads*head_dim x d_model``. Each query head scores ``head_dim``-wide keys.
- **MLA** (DeepSeek multi-head latent attention, ``kv_lora_rank > 0``), counted in its
  *weight-absorbed* form, in prefill and in decode alike. Per token: ``q_a`` (``d_model x
  q_lora_rank``, then a norm) and ``q_b`` (``q_lora_rank x n_heads*(nope+rope)``), or one
  ``d_model x n_heads*(nope+rope)`` when ``q_lora_rank == 0``; ``kv_a`` (``d_model x
  (kv_lora_rank+rope)``, then a norm on the latent part) makes the cached latent ``c_kv`` and
  the shared rope key. The stored ``kv_b`` matrix (``kv_lora_rank x n_heads*(nope+v)``) is used
  as two per-head pieces: ``W_UK`` (``nope x kv_lora_rank``) turns each head's ``q_nope`` into
  a ``kv_lora_rank``-wide query against the latent cache, and ``W_UV`` (``kv_lora_rank x v``)
  expands each head's attention output after the value product. Scores are therefore
  ``kv_lora_rank + rope`` wide and the value product ``kv_lora_rank`` wide, per head and
  per (query, key) pair; ``O`` is ``n_heads*v x d_model``. Keys and values are never expanded
  to per-head form.

The FFN is ``swiglu`` (gate, up: ``d_model x ffn``, down: ``ffn x d_model``; SiLU) or ``gelu``
(up and down, GELU; GPT-2). A mixture-of-experts (MoE) model (``n_experts > 0``) has
``first_dense_layers`` dense layers first, then MoE layers: a router (``d_model x n_experts``)
and ``n_experts`` routed experts plus ``n_shared_experts`` always-on shared experts, each an FFN
of width ``moe_ffn_dim``; every token runs ``experts_per_token`` routed experts and all shared
ones. With ``sliding_window > 0`` each query attends to at most that many keys (itself and the
``sliding_window - 1`` before it, the transformers convention), as in Mistral-7B v0.1.

Counting rules
--------------
- Parameters are exact: every weight matrix, every norm scale (LayerNorm also has a shift, so
  ``2 x dim``), every bias, and DeepSeek-V3's per-expert router score-correction bias
  (``e_score_correction_bias``, stored in its checkpoint). A tied LM head counts 0.
- Weight bytes: **matrices** (embeddings, LM head, attention, FFN, experts, router) are stored in
  ``weight_dtype``; **vectors** (norm scales and shifts, biases) in ``act_dtype``. The total is
  rounded up to a whole byte (only int4 can leave half a byte).
- KV cache per token: MLA caches ``kv_lora_rank + qk_rope_head_dim`` elements per layer; the
  others ``2 x n_kv_heads x head_dim`` (K and V), all in ``kv_dtype``.
- MACs count matrix products only (see :meth:`ModelSpec.macs`). Elementwise work (norms,
  softmax, activations, RoPE, residual and bias adds, router scoring and the weighting of expert
  outputs) is vector-unit work and is not counted; the embedding lookup is 0 MACs.

Not modelled: DeepSeek-V3's multi-token-prediction (MTP) layer (``num_nextn_predict_layers``;
the 671B total excludes it), RoPE scaling (it changes no shape), alternating local/global
attention layers, dropout, and MoE expert capacity limits or token dropping.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from tilesim.dtypes import ARRAY_INPUT_DTYPES, DTYPES
from tilesim.errors import ConfigError, InputError

PHASES = ("prefill", "decode")
FFN_KINDS = ("swiglu", "gelu")
NORMS = ("rms", "layer")
MODEL_DTYPES = ARRAY_INPUT_DTYPES
"""Datatypes a model's weights, activations and KV cache may use."""


class Weight(NamedTuple):
    """``count`` weight matrices of ``k x n`` elements, each applied once per token
    (``count`` > 1 for MLA's per-head absorbed pieces)."""

    name: str
    count: int
    k: int
    n: int

    @property
    def elements(self) -> int:
        return self.count * self.k * self.n


class _FieldError(ConfigError):
    """A ModelSpec field is out of range; keeps the parts so a loader can name its own key."""

    def __init__(self, model: str, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"model {model!r}: {key}: {value!r} is not allowed ({allowed})")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A decoder-only transformer. Sizes are element counts, ``max_context`` is in positions
    (tokens). Construction validates every field and raises a one-line ConfigError."""

    name: str
    vocab_size: int            # tokens in the vocabulary
    d_model: int               # hidden size, elements
    n_layers: int              # transformer blocks
    n_heads: int               # query heads
    n_kv_heads: int            # key/value heads (= n_heads for MHA and MLA, 1 for MQA)
    head_dim: int              # query/key width per head (MLA: qk_nope + qk_rope)
    ffn_dim: int               # hidden width of a dense FFN layer
    ffn_kind: str = "swiglu"   # swiglu | gelu
    norm: str = "rms"          # rms (scale only) | layer (scale and shift)
    norm_eps: float = 1e-5
    max_context: int           # positions the model accepts
    rope_theta: float = 10000.0    # RoPE base; 0 = learned absolute positions (GPT-2)
    sliding_window: int = 0    # keys a query may attend to at most; 0 = all earlier ones
    tie_embeddings: bool = False   # the LM head reuses the token embedding
    qkv_bias: bool = False     # biases on the Q, K, V projections
    attn_out_bias: bool = False    # bias on the attention output projection
    mlp_bias: bool = False     # biases on every FFN projection (dense and experts)
    # MLA: kv_lora_rank > 0 selects it
    q_lora_rank: int = 0       # query compression rank; 0 = one d_model x heads matrix
    kv_lora_rank: int = 0      # latent KV width (cached)
    qk_nope_head_dim: int = 0  # per-head query/key width without RoPE
    qk_rope_head_dim: int = 0  # per-head query width with RoPE; the rope key is shared
    v_head_dim: int = 0        # per-head value width
    # MoE: n_experts > 0 selects it
    n_experts: int = 0         # routed experts per MoE layer
    experts_per_token: int = 0     # routed experts each token runs (top-k)
    moe_ffn_dim: int = 0       # hidden width of one expert FFN
    n_shared_experts: int = 0  # experts every token runs, each moe_ffn_dim wide
    first_dense_layers: int = 0    # leading layers with a dense FFN of ffn_dim
    router_bias: bool = False  # per-expert score-correction bias (DeepSeek-V3)
    routed_scale: float = 1.0  # the routed experts' weighted sum is scaled by this before the
                               # shared experts' rows are added (DeepSeek-V3's
                               # routed_scaling_factor, 2.5); values only, no time
    # datatypes, names from tilesim.dtypes
    weight_dtype: str = "bf16"
    act_dtype: str = "bf16"
    kv_dtype: str = "bf16"

    def __post_init__(self):
        _check_spec(self)

    # ---- derived facts ------------------------------------------------------------------------
    @property
    def attention(self) -> str:
        """mla when kv_lora_rank > 0; else mha, mqa or gqa from the head counts."""
        if self.kv_lora_rank:
            return "mla"
        if self.n_kv_heads == self.n_heads:
            return "mha"
        return "mqa" if self.n_kv_heads == 1 else "gqa"

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0

    @property
    def n_dense_layers(self) -> int:
        """Layers with a dense FFN: all of them, or the first ``first_dense_layers`` of a MoE."""
        return self.first_dense_layers if self.is_moe else self.n_layers

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    def attention_weights(self) -> tuple[Weight, ...]:
        """The weight matrices of one attention block, in the order a token meets them. MLA
        lists the absorbed per-head pieces of ``kv_b`` (``k_up`` = W_UK, ``v_up`` = W_UV)."""
        d, h = self.d_model, self.n_heads
        if self.attention != "mla":
            return (Weight("q", 1, d, h * self.head_dim),
                    Weight("k", 1, d, self.n_kv_heads * self.head_dim),
                    Weight("v", 1, d, self.n_kv_heads * self.head_dim),
                    Weight("o", 1, h * self.head_dim, d))
        nope, rope, r = self.qk_nope_head_dim, self.qk_rope_head_dim, self.kv_lora_rank
        q = ((Weight("q_a", 1, d, self.q_lora_rank),
              Weight("q_b", 1, self.q_lora_rank, h * (nope + rope)))
             if self.q_lora_rank else (Weight("q", 1, d, h * (nope + rope)),))
        return q + (Weight("kv_a", 1, d, r + rope),
                    Weight("k_up", h, nope, r),
                    Weight("v_up", h, r, self.v_head_dim),
                    Weight("o", 1, h * self.v_head_dim, d))

    def ffn_weights(self, width: int) -> tuple[Weight, ...]:
        """The matrices of one FFN (a dense layer's or one expert's) of hidden ``width``."""
        d = self.d_model
        gate = (Weight("gate", 1, d, width),) if self.ffn_kind == "swiglu" else ()
        return gate + (Weight("up", 1, d, width), Weight("down", 1, width, d))

    # ---- parameters ---------------------------------------------------------------------------
    def layer_params(self, layer: int) -> dict[str, int]:
        """Parameters of block ``layer`` (0-based) by part: attention, dense_ffn,
        moe_routed_experts, moe_shared_experts, router (matrix), norms, biases."""
        if not 0 <= layer < self.n_layers:
            raise InputError(f"layer: {layer!r} is not allowed (0 to {self.n_layers - 1})")
        d = self.d_model
        moe = layer >= self.n_dense_layers
        attn_bias = ((self.n_heads + 2 * self.n_kv_heads) * self.head_dim if self.qkv_bias else 0)
        attn_bias += d if self.attn_out_bias else 0
        norm_dims = 2 * d
        if self.attention == "mla":     # q_a and kv_a outputs are normalised too
            norm_dims += self.q_lora_rank + self.kv_lora_rank
        out = {"attention": sum(w.elements for w in self.attention_weights()),
               "dense_ffn": 0, "moe_routed_experts": 0, "moe_shared_experts": 0, "router": 0,
               "norms": norm_dims * (2 if self.norm == "layer" else 1),
               "biases": attn_bias}
        if moe:
            expert = sum(w.elements for w in self.ffn_weights(self.moe_ffn_dim))
            out["moe_routed_experts"] = self.n_experts * expert
            out["moe_shared_experts"] = self.n_shared_experts * expert
            out["router"] = d * self.n_experts
            out["biases"] += ((self.n_experts + self.n_shared_experts) * self._ffn_bias(
                self.moe_ffn_dim) + (self.n_experts if self.router_bias else 0))
        else:
            out["dense_ffn"] = sum(w.elements for w in self.ffn_weights(self.ffn_dim))
            out["biases"] += self._ffn_bias(self.ffn_dim)
        return out

    def _ffn_bias(self, width: int) -> int:
        if not self.mlp_bias:
            return 0
        return (2 if self.ffn_kind == "swiglu" else 1) * width + self.d_model

    def param_breakdown(self) -> dict[str, int]:
        """Parameters of the whole model by part; the values sum to :meth:`param_count`.
        embedding (tokens), position_embedding (learned, rope_theta == 0), lm_head (0 when
        tied), then the totals over all layers of attention, dense_ffn, moe_routed_experts,
        moe_shared_experts, router, norms (with the final norm) and biases."""
        d = self.d_model
        out = {"embedding": self.vocab_size * d,
               "position_embedding": self.max_context * d if self.rope_theta == 0 else 0,
               "lm_head": 0 if self.tie_embeddings else self.vocab_size * d}
        dense, moe = self.layer_params(0), self.layer_params(self.n_layers - 1)
        for key in dense:
            out[key] = self.n_dense_layers * dense[key] + self.n_moe_layers * moe[key]
        out["norms"] += d * (2 if self.norm == "layer" else 1)
        return out

    def param_count(self) -> int:
        """Total parameters (exact)."""
        return sum(self.param_breakdown().values())

    def weight_bytes(self) -> int:
        """Bytes of all parameters: matrices in weight_dtype, norms and biases in act_dtype,
        rounded up to a whole byte."""
        p = self.param_breakdown()
        vectors = p["norms"] + p["biases"]
        bits = ((self.param_count() - vectors) * DTYPES[self.weight_dtype].bits
                + vectors * DTYPES[self.act_dtype].bits)
        return -(-bits // 8)

    # ---- KV cache -----------------------------------------------------------------------------
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes one token adds over all layers, rounded up to a whole byte.
        MLA: ``n_layers x (kv_lora_rank + qk_rope_head_dim)`` elements; otherwise
        ``2 x n_layers x n_kv_heads x head_dim`` elements; each of kv_dtype's width."""
        if self.attention == "mla":
            elements = self.n_layers * (self.kv_lora_rank + self.qk_rope_head_dim)
        else:
            elements = 2 * self.n_layers * self.n_kv_heads * self.head_dim
        return -(-elements * DTYPES[self.kv_dtype].bits // 8)

    def kv_cache_bytes(self, batch: int, tokens: int) -> int:
        """KV-cache bytes of ``batch`` sequences of ``tokens`` tokens each; a sliding window
        keeps only its last ``sliding_window`` tokens."""
        _check_int("batch", batch, 1)
        _check_int("tokens", tokens, 0)
        kept = min(tokens, self.sliding_window) if self.sliding_window else tokens
        return batch * kept * self.kv_bytes_per_token()

    # ---- MACs ---------------------------------------------------------------------------------
    def attended_pairs(self, phase: str, context: int) -> int:
        """(query, key) pairs of one sequence, per head and per layer.

        prefill (``context`` = S prompt tokens, causal): query i (0-based) sees i + 1 keys, so
        the pairs are S(S+1)/2; with a window W < S, W(W+1)/2 + (S - W) x W.
        decode (one new token after ``context`` cached ones): ``context + 1`` keys, at most W.
        """
        _check_phase_context(phase, context)
        w = self.sliding_window
        if phase == "decode":
            return min(context + 1, w) if w else context + 1
        s = context
        if not w or s <= w:
            return s * (s + 1) // 2
        return w * (w + 1) // 2 + (s - w) * w

    def macs_breakdown(self, phase: str, batch: int, context: int) -> dict[str, int]:
        """MACs of one forward step by part (the terms of :meth:`macs`)."""
        _check_int("batch", batch, 1)
        _check_phase_context(phase, context)
        tokens = batch * context if phase == "prefill" else batch
        pairs = batch * self.attended_pairs(phase, context)
        if self.attention == "mla":
            score_width = self.kv_lora_rank + self.qk_rope_head_dim
            value_width = self.kv_lora_rank
        else:
            score_width = value_width = self.head_dim
        attn = sum(w.elements for w in self.attention_weights())
        dense = sum(w.elements for w in self.ffn_weights(self.ffn_dim))
        expert = sum(w.elements for w in self.ffn_weights(self.moe_ffn_dim)) if self.is_moe else 0
        return {
            "embedding": 0,
            "attn_proj": self.n_layers * tokens * attn,
            "attn_scores": self.n_layers * pairs * self.n_heads * score_width,
            "attn_values": self.n_layers * pairs * self.n_heads * value_width,
            "ffn_dense": self.n_dense_layers * tokens * dense,
            "moe_router": self.n_moe_layers * tokens * self.d_model * self.n_experts,
            "moe_routed": self.n_moe_layers * tokens * self.experts_per_token * expert,
            "moe_shared": self.n_moe_layers * tokens * self.n_shared_experts * expert,
            "lm_head": batch * self.d_model * self.vocab_size,
        }

    def macs(self, phase: str, batch: int, context: int) -> int:
        """Multiply-accumulates of one forward step (exact integer).

        ``prefill``: ``batch`` sequences of ``context`` prompt tokens, T = batch x context
        tokens. ``decode``: one new token per sequence after ``context`` cached tokens,
        T = batch. P = batch x :meth:`attended_pairs` (query, key) pairs per head per layer
        (prefill S(S+1)/2 per sequence, decode context + 1). With L layers, H query heads,
        d = d_model, V = vocab_size, the total is the sum of

        - ``attn_proj   = L x T x sum(k x n)`` over :meth:`attention_weights`: for MHA/GQA/MQA
          ``d x H x head_dim + 2 x d x n_kv_heads x head_dim + H x head_dim x d``; for MLA
          (absorbed) ``d x q_lora + q_lora x H x (nope + rope)`` (or ``d x H x (nope + rope)``)
          ``+ d x (kv_lora + rope) + H x nope x kv_lora + H x kv_lora x v + H x v x d``;
        - ``attn_scores = L x P x H x w_qk``, w_qk = head_dim, or kv_lora + rope for MLA;
        - ``attn_values = L x P x H x w_v``, w_v = head_dim, or kv_lora for MLA (the
          ``kv_lora x v`` expansion after it is in attn_proj);
        - ``ffn_dense   = n_dense_layers x T x m x d x ffn_dim``, m = 3 (swiglu) or 2 (gelu);
        - ``moe_router  = n_moe_layers x T x d x n_experts``;
        - ``moe_routed  = n_moe_layers x T x experts_per_token x m x d x moe_ffn_dim``;
        - ``moe_shared  = n_moe_layers x T x n_shared_experts x m x d x moe_ffn_dim``;
        - ``lm_head     = batch x d x V``: in prefill only the last token of each sequence
          produces logits (the next token); in decode every sequence's one token does.

        The MoE terms are exact whatever the routing: each of the T tokens runs
        ``experts_per_token`` routed and every shared expert FFN, however they are spread over
        experts. ``context`` is not checked against ``max_context`` here (see
        :func:`check_context`).
        """
        return sum(self.macs_breakdown(phase, batch, context).values())


# --------------------------------------------------------------------------------------------
# Validation of a spec
# --------------------------------------------------------------------------------------------

_INT_FIELDS_MIN = {
    "vocab_size": 1, "d_model": 1, "n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 1,
    "ffn_dim": 1, "max_context": 1, "sliding_window": 0, "q_lora_rank": 0, "kv_lora_rank": 0,
    "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0, "n_experts": 0,
    "experts_per_token": 0, "moe_ffn_dim": 0, "n_shared_experts": 0, "first_dense_layers": 0,
}
_BOOL_FIELDS = ("tie_embeddings", "qkv_bias", "attn_out_bias", "mlp_bias", "router_bias")
_MLA_FIELDS = ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
_MOE_FIELDS = ("experts_per_token", "moe_ffn_dim", "n_shared_experts", "first_dense_layers")


def _check_spec(s: ModelSpec) -> None:
    def fail(key, allowed):
        raise _FieldError(s.name, key, getattr(s, key), allowed)

    if not isinstance(s.name, str) or not s.name.strip():
        raise ConfigError(f"model name: {s.name!r} is not allowed (a non-empty string)")
    for key, lo in _INT_FIELDS_MIN.items():
        v = getattr(s, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            fail(key, f"an integer >= {lo}")
    for key in _BOOL_FIELDS:
        if not isinstance(getattr(s, key), bool):
            fail(key, "true or false")
    for key, v in (("norm_eps", s.norm_eps), ("rope_theta", s.rope_theta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            fail(key, "a finite number >= 0")
    if s.norm_eps <= 0:
        fail("norm_eps", "a number > 0")
    v = s.routed_scale
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        fail("routed_scale", "a finite number > 0")
    for key, choices in (("ffn_kind", FFN_KINDS), ("norm", NORMS), ("weight_dtype", MODEL_DTYPES),
                         ("act_dtype", MODEL_DTYPES), ("kv_dtype", MODEL_DTYPES)):
        if getattr(s, key) not in choices:
            hint = difflib.get_close_matches(str(getattr(s, key)), choices, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            fail(key, "one of " + ", ".join(choices) + extra)
    if s.n_heads % s.n_kv_heads:
        fail("n_kv_heads", f"a divisor of n_heads = {s.n_heads}")
    if s.kv_lora_rank:
        if s.qk_nope_head_dim + s.qk_rope_head_dim != s.head_dim:
            fail("head_dim", f"qk_nope_head_dim + qk_rope_head_dim = "
                 f"{s.qk_nope_head_dim + s.qk_rope_head_dim} for MLA")
        if s.n_kv_heads != s.n_heads:
            fail("n_kv_heads", f"n_heads = {s.n_heads} for MLA (every head reads the latent cache)")
        if s.v_head_dim < 1:
            fail("v_head_dim", "an integer >= 1 for MLA")
        if s.qkv_bias or s.attn_out_bias:
            fail("qkv_bias" if s.qkv_bias else "attn_out_bias", "false for MLA")
    else:
        for key in _MLA_FIELDS:
            if getattr(s, key):
                fail(key, "0 unless kv_lora_rank > 0 (MLA)")
    if s.n_experts:
        if not 1 <= s.experts_per_token <= s.n_experts:
            fail("experts_per_token", f"from 1 to n_experts = {s.n_experts}")
        if s.moe_ffn_dim < 1:
            fail("moe_ffn_dim", "an integer >= 1 for a MoE model")
        if s.first_dense_layers >= s.n_layers:
            fail("first_dense_layers", f"below n_layers = {s.n_layers}, so some layers are MoE")
    else:
        for key in _MOE_FIELDS + ("router_bias",):
            if getattr(s, key):
                fail(key, f"{'false' if key == 'router_bias' else '0'} unless n_experts > 0 (MoE)")
        if s.routed_scale != 1:
            fail("routed_scale", "1 unless n_experts > 0 (MoE)")


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"{name}: {value!r} is not allowed (an integer >= {lo})")


def _check_phase_context(phase: str, context: int) -> None:
    if phase not in PHASES:
        hint = difflib.get_close_matches(str(phase), PHASES, n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise InputError(f"phase: {phase!r} is not allowed (prefill or decode{extra})")
    _check_int("context", context, 1 if phase == "prefill" else 0)


def check_context(spec: ModelSpec, context: int, phase: str = "prefill") -> None:
    """Raise InputError (one line) when the positions a step needs exceed ``max_context``:
    ``context`` for prefill, ``context + 1`` for decode (the new token's position)."""
    _check_phase_context(phase, context)
    if phase == "prefill" and context > spec.max_context:
        raise InputError(f"context {context} is longer than {spec.name} allows "
                         f"({spec.max_context} positions)")
    if phase == "decode" and context + 1 > spec.max_context:
        raise InputError(f"decode at context {context} needs {context + 1} positions, more than "
                         f"{spec.name} allows ({spec.max_context} positions)")


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

_PRESETS: dict[str, ModelSpec] = {s.name: s for s in (
    # openai-community/gpt2 config.json: n_embd 768, n_layer 12, n_head 12, n_positions 1024,
    # vocab_size 50257, n_inner null (transformers: 4 x n_embd = 3072), activation_function
    # gelu_new, layer_norm_epsilon 1e-05; learned positions, LM head tied (default); GPT-2's
    # Conv1D layers all carry biases. 124,439,808 parameters.
    ModelSpec(name="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
              n_kv_heads=12, head_dim=64, ffn_dim=3072, ffn_kind="gelu", norm="layer",
              norm_eps=1e-5, max_context=1024, rope_theta=0.0, tie_embeddings=True,
              qkv_bias=True, attn_out_bias=True, mlp_bias=True),
    # meta-llama/Llama-2-7b-hf config.json: hidden_size 4096, num_hidden_layers 32,
    # num_attention_heads 32, num_key_value_heads 32, intermediate_size 11008, vocab_size 32000,
    # max_position_embeddings 4096, rms_norm_eps 1e-05, rope_theta 10000 (default),
    # hidden_act silu, tie_word_embeddings false.
    ModelSpec(name="llama-2-7b", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
              n_kv_heads=32, head_dim=128, ffn_dim=11008, norm_eps=1e-5, max_context=4096,
              rope_theta=10000.0),
    # meta-llama/Meta-Llama-3-8B config.json: hidden_size 4096, num_hidden_layers 32,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336, vocab_size 128256,
    # max_position_embeddings 8192, rms_norm_eps 1e-05, rope_theta 500000.0, hidden_act silu,
    # tie_word_embeddings false.
    ModelSpec(name="llama-3-8b", vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
              n_kv_heads=8, head_dim=128, ffn_dim=14336, norm_eps=1e-5, max_context=8192,
              rope_theta=500000.0),
    # meta-llama/Meta-Llama-3-70B config.json: hidden_size 8192, num_hidden_layers 80,
    # num_attention_heads 64, num_key_value_heads 8, intermediate_size 28672, vocab_size 128256,
    # max_position_embeddings 8192, rms_norm_eps 1e-05, rope_theta 500000.0, hidden_act silu,
    # tie_word_embeddings false.
    ModelSpec(name="llama-3-70b", vocab_size=128256, d_model=8192, n_layers=80, n_heads=64,
              n_kv_heads=8, head_dim=128, ffn_dim=28672, norm_eps=1e-5, max_context=8192,
              rope_theta=500000.0),
    # mistralai/Mistral-7B-v0.1 config.json: hidden_size 4096, num_hidden_layers 32,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336, vocab_size 32000,
    # max_position_embeddings 32768, sliding_window 4096, rms_norm_eps 1e-05, rope_theta
    # 10000.0, hidden_act silu, tie_word_embeddings false.
    ModelSpec(name="mistral-7b", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
              n_kv_heads=8, head_dim=128, ffn_dim=14336, norm_eps=1e-5, max_context=32768,
              rope_theta=10000.0, sliding_window=4096),
    # mistralai/Mixtral-8x7B-v0.1 config.json: hidden_size 4096, num_hidden_layers 32,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336 (each expert),
    # num_local_experts 8, num_experts_per_tok 2, vocab_size 32000, max_position_embeddings
    # 32768, sliding_window null, rms_norm_eps 1e-05, rope_theta 1000000.0, hidden_act silu,
    # tie_word_embeddings false. Every layer is MoE; the router has no bias.
    ModelSpec(name="mixtral-8x7b", vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
              n_kv_heads=8, head_dim=128, ffn_dim=14336, norm_eps=1e-5, max_context=32768,
              rope_theta=1000000.0, n_experts=8, experts_per_token=2, moe_ffn_dim=14336),
    # deepseek-ai/DeepSeek-V3 config.json: hidden_size 7168, num_hidden_layers 61,
    # num_attention_heads 128, q_lora_rank 1536, kv_lora_rank 512, qk_nope_head_dim 128,
    # qk_rope_head_dim 64, v_head_dim 128, intermediate_size 18432 (dense layers),
    # first_k_dense_replace 3, n_routed_experts 256, num_experts_per_tok 8, n_shared_experts 1,
    # moe_intermediate_size 2048, vocab_size 129280, max_position_embeddings 163840,
    # rms_norm_eps 1e-06, rope_theta 10000 (YaRN scaling, shape-neutral), hidden_act silu,
    # tie_word_embeddings false, topk_method noaux_tc (routers carry e_score_correction_bias),
    # scoring_func sigmoid, norm_topk_prob true, routed_scaling_factor 2.5.
    # The multi-token-prediction layer (num_nextn_predict_layers 1) is left out.
    ModelSpec(name="deepseek-v3", vocab_size=129280, d_model=7168, n_layers=61, n_heads=128,
              n_kv_heads=128, head_dim=192, ffn_dim=18432, norm_eps=1e-6, max_context=163840,
              rope_theta=10000.0, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
              qk_rope_head_dim=64, v_head_dim=128, n_experts=256, experts_per_token=8,
              moe_ffn_dim=2048, n_shared_experts=1, first_dense_layers=3, router_bias=True,
              routed_scale=2.5),
)}

PRESETS: tuple[str, ...] = tuple(_PRESETS)
"""Names of the built-in models."""


def preset(name: str, weight_dtype: str = "bf16", act_dtype: str = "bf16",
           kv_dtype: str = "bf16") -> ModelSpec:
    """A built-in model with the given datatypes; unknown names raise a one-line ConfigError."""
    if name not in _PRESETS:
        hint = difflib.get_close_matches(str(name), PRESETS, n=1, cutoff=0.5)
        extra = f"; did you mean {hint[0]!r}?" if hint else ""
        raise ConfigError(f"model {name!r}: no such preset (presets: {', '.join(PRESETS)}{extra})")
    return dataclasses.replace(_PRESETS[name], weight_dtype=weight_dtype, act_dtype=act_dtype,
                               kv_dtype=kv_dtype)


# --------------------------------------------------------------------------------------------
# Hugging Face config.json
# --------------------------------------------------------------------------------------------

HF_MODEL_TYPES = ("gpt2", "llama", "mistral", "mixtral", "deepseek_v3")
"""The ``model_type`` values :func:`from_hf_config` understands."""

_GELU_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast")
_SILU_ACTS = ("silu", "swish")


class _Reader:
    """Typed access to a parsed config.json; every failure is one line naming file and key."""

    def __init__(self, data: dict, source: str):
        self.data, self.source = data, source
        self.keys: dict[str, str] = {}       # ModelSpec field -> config.json key it came from

    def fail(self, key: str, value: Any, allowed: str):
        shown = json.dumps(value) if not isinstance(value, str) else repr(value)
        raise ConfigError(f"{self.source}: {key}: {shown[:60]} is not allowed ({allowed})")

    def get(self, names: tuple[str, ...], kind: type, *, field: str | None = None,
            default: Any = dataclasses.MISSING, lo: float | None = None):
        """The value of the first of ``names`` present and not null (aliases must agree)."""
        present = [n for n in names if self.data.get(n) is not None]
        if not present:
            if default is dataclasses.MISSING:
                raise ConfigError(f"{self.source}: {names[0]}: required key is missing "
                                  f"({_KIND[kind]}{'' if lo is None else f' >= {lo}'})")
            return default
        key, value = present[0], self.data[present[0]]
        for other in present[1:]:
            if self.data[other] != value:
                raise ConfigError(f"{self.source}: {other}: {json.dumps(self.data[other])} "
                                  f"disagrees with {key}: {json.dumps(value)} (give one of them)")
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, str) if kind is str else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            self.fail(key, value, _KIND[kind])
        if lo is not None and value < lo:
            self.fail(key, value, f"{_KIND[kind]} >= {lo}")
        if field:
            self.keys[field] = key
        return value


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _read_json(path: Path) -> dict:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read ({e.__class__.__name__}: {e})") from None

    def no_duplicates(pairs):
        seen = {}
        for k, v in pairs:
            if k in seen:
                raise ConfigError(f"{source}: key {k!r} appears twice in one object "
                                  "(each key may be given once)")
            seen[k] = v
        return seen

    def no_constant(name):
        raise ConfigError(f"{source}: {name} is not a number JSON allows (finite numbers only)")

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: line {e.lineno}, column {e.colno}: not valid JSON "
                          f"({e.msg})") from None
    except RecursionError:
        raise ConfigError(f"{source}: JSON nests too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a JSON object of config keys, "
                          f"not {type(data).__name__}")
    return data


def from_hf_config(path: str | Path, weight_dtype: str = "bf16", act_dtype: str = "bf16",
                   kv_dtype: str = "bf16") -> ModelSpec:
    """Read a local Hugging Face ``config.json`` (or a directory holding one) of model_type
    gpt2, llama, mistral, mixtral or deepseek_v3. The spec is named after the directory.

    Keys that transformers itself defaults when absent take transformers' class defaults:
    ``num_key_value_heads`` (= heads), ``rope_theta`` (10000), ``tie_word_embeddings`` (true
    for gpt2, false otherwise), the norm epsilon (gpt2 1e-5, mixtral 1e-5, others 1e-6),
    ``hidden_act`` / ``activation_function`` (silu; gpt2 gelu_new), ``n_inner`` (4 x n_embd),
    ``attention_bias`` and ``mlp_bias`` (false). Every other size is required. deepseek_v3's
    ``num_key_value_heads`` and ``head_dim`` are not read (every MLA head reads the one latent
    cache; its query/key width is qk_nope + qk_rope). Any problem is a one-line ConfigError
    naming the file and the key.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    data = _read_json(path)
    r = _Reader(data, str(path))
    mtype = r.get(("model_type",), str)
    if mtype not in HF_MODEL_TYPES:
        hint = difflib.get_close_matches(mtype, HF_MODEL_TYPES, n=1)
        r.fail("model_type", mtype, "one of " + ", ".join(HF_MODEL_TYPES)
               + (f"; did you mean {hint[0]!r}?" if hint else ""))
    gpt2 = mtype == "gpt2"
    name = path.parent.name or path.stem
    kw: dict[str, Any] = {"name": name, "weight_dtype": weight_dtype, "act_dtype": act_dtype,
                          "kv_dtype": kv_dtype}
    kw["vocab_size"] = r.get(("vocab_size",), int, field="vocab_size", lo=1)
    d = kw["d_model"] = r.get(("n_embd", "hidden_size") if gpt2 else ("hidden_size",), int,
                              field="d_model", lo=1)
    kw["n_layers"] = r.get(("n_layer", "num_hidden_layers") if gpt2 else ("num_hidden_layers",),
                           int, field="n_layers", lo=1)
    heads_key = "n_head" if gpt2 else "num_attention_heads"
    h = kw["n_heads"] = r.get((heads_key, "num_attention_heads") if gpt2 else (heads_key,), int,
                              field="n_heads", lo=1)
    kw["max_context"] = r.get(("n_positions", "max_position_embeddings") if gpt2
                              else ("max_position_embeddings",), int, field="max_context", lo=1)
    eps_default = 1e-5 if mtype in ("gpt2", "mixtral") else 1e-6
    kw["norm_eps"] = float(r.get(("layer_norm_epsilon",) if gpt2 else ("rms_norm_eps",), float,
                                 field="norm_eps", default=eps_default))
    kw["tie_embeddings"] = r.get(("tie_word_embeddings",), bool, field="tie_embeddings",
                                 default=gpt2)

    act_key = "activation_function" if gpt2 else "hidden_act"
    act = r.get((act_key,), str, default="gelu_new" if gpt2 else "silu")
    allowed_acts = _GELU_ACTS if gpt2 else _SILU_ACTS
    if act not in allowed_acts:
        r.fail(act_key, act, f"one of {', '.join(allowed_acts)} for model_type {mtype!r}")
    kw["ffn_kind"] = "gelu" if gpt2 else "swiglu"

    if gpt2:
        kw.update(norm="layer", rope_theta=0.0, n_kv_heads=h, qkv_bias=True, attn_out_bias=True,
                  mlp_bias=True)
        kw["ffn_dim"] = r.get(("n_inner",), int, field="ffn_dim", default=4 * d, lo=1)
        if d % h:
            r.fail("n_embd", d, f"a multiple of n_head = {h}")
        kw["head_dim"] = d // h
        return _build(kw, r)

    kw["rope_theta"] = float(r.get(("rope_theta",), float, field="rope_theta",
                                   default=_rope_parameters_theta(r), lo=0))
    kw["ffn_dim"] = r.get(("intermediate_size",), int, field="ffn_dim", lo=1)
    if mtype in ("mistral", "mixtral"):
        kw["sliding_window"] = r.get(("sliding_window",), int, field="sliding_window", default=0,
                                     lo=1)
    if mtype == "llama":
        bias = r.get(("attention_bias",), bool, default=False)
        kw.update(qkv_bias=bias, attn_out_bias=bias)
        kw["mlp_bias"] = r.get(("mlp_bias",), bool, field="mlp_bias", default=False)
        r.keys["qkv_bias"] = r.keys["attn_out_bias"] = "attention_bias"

    if mtype == "deepseek_v3":
        if r.get(("attention_bias",), bool, default=False):
            r.fail("attention_bias", True, "false: tilesim counts MLA without biases")
        if r.get(("moe_layer_freq",), int, default=1) != 1:
            r.fail("moe_layer_freq", data["moe_layer_freq"], "1: every layer after "
                   "first_k_dense_replace is MoE")
        nope = kw["qk_nope_head_dim"] = r.get(("qk_nope_head_dim",), int,
                                              field="qk_nope_head_dim", lo=0)
        rope = kw["qk_rope_head_dim"] = r.get(("qk_rope_head_dim",), int,
                                              field="qk_rope_head_dim", lo=0)
        kw["q_lora_rank"] = r.get(("q_lora_rank",), int, field="q_lora_rank", default=0, lo=1)
        kw["kv_lora_rank"] = r.get(("kv_lora_rank",), int, field="kv_lora_rank", lo=1)
        kw["v_head_dim"] = r.get(("v_head_dim",), int, field="v_head_dim", lo=1)
        kw.update(n_kv_heads=h, head_dim=nope + rope, router_bias=True)
        r.keys["head_dim"] = "qk_nope_head_dim"
        kw["n_experts"] = r.get(("n_routed_experts",), int, field="n_experts", lo=1)
        kw["experts_per_token"] = r.get(("num_experts_per_tok",), int,
                                        field="experts_per_token", lo=1)
        kw["moe_ffn_dim"] = r.get(("moe_intermediate_size",), int, field="moe_ffn_dim", lo=1)
        kw["n_shared_experts"] = r.get(("n_shared_experts",), int, field="n_shared_experts",
                                       lo=0)
        kw["first_dense_layers"] = r.get(("first_k_dense_replace",), int,
                                         field="first_dense_layers", lo=0)
        # DeepseekV3Config's default routed_scaling_factor is 2.5 (its __init__ signature, as
        # vLLM's copy documents it: docs.vllm.ai, vllm.transformers_utils.configs.deepseek_v3)
        kw["routed_scale"] = float(r.get(("routed_scaling_factor",), float,
                                         field="routed_scale", default=2.5))
        return _build(kw, r)

    kv = kw["n_kv_heads"] = r.get(("num_key_value_heads",), int, field="n_kv_heads", default=h,
                                  lo=1)
    if h % kv:
        r.fail("num_key_value_heads", kv, f"a divisor of num_attention_heads = {h}")
    head_dim = r.get(("head_dim",), int, field="head_dim", default=None, lo=1)
    if head_dim is None:
        if d % h:
            r.fail("hidden_size", d, f"a multiple of num_attention_heads = {h} when head_dim "
                   "is not given")
        head_dim = d // h
    kw["head_dim"] = head_dim
    if mtype == "mixtral":
        kw["n_experts"] = r.get(("num_local_experts",), int, field="n_experts", lo=1)
        kw["experts_per_token"] = r.get(("num_experts_per_tok",), int,
                                        field="experts_per_token", lo=1)
        kw["moe_ffn_dim"] = kw["ffn_dim"]
        r.keys["moe_ffn_dim"] = "intermediate_size"
    return _build(kw, r)


def _rope_parameters_theta(r: _Reader) -> float:
    """rope_theta from transformers v5's ``rope_parameters`` object, else the 10000 default."""
    params = r.data.get("rope_parameters")
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        value = params["rope_theta"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            r.fail("rope_parameters.rope_theta", value, "a number >= 0")
        return float(value)
    return 10000.0


def _build(kw: dict, r: _Reader) -> ModelSpec:
    """Construct the spec; a field the spec rejects is reported under its config.json key."""
    try:
        return ModelSpec(**kw)
    except _FieldError as e:
        if e.key in r.keys:
            r.fail(r.keys[e.key], e.value, e.allowed)
        raise ConfigError(f"{r.source}: {e}") from None     # a datatype argument


def resolve_model(name_or_path: str | Path, weight_dtype: str = "bf16", act_dtype: str = "bf16",
                  kv_dtype: str = "bf16") -> ModelSpec:
    """A preset name, a config.json path, or a directory holding a config.json. An existing
    path wins over a preset of the same name (as chip configs do)."""
    dtypes = {"weight_dtype": weight_dtype, "act_dtype": act_dtype, "kv_dtype": kv_dtype}
    p = Path(name_or_path)
    if p.exists():
        if p.is_dir() and not (p / "config.json").is_file():
            raise ConfigError(f"{p}: directory holds no config.json")
        return from_hf_config(p, **dtypes)
    if str(name_or_path) in _PRESETS:
        return preset(str(name_or_path), **dtypes)
    hint = difflib.get_close_matches(str(name_or_path), PRESETS, n=1, cutoff=0.5)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{name_or_path}: no such model preset or file (presets: "
                      f"{', '.join(PRESETS)}{extra})")
