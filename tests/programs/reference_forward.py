"""An independent numpy reference forward pass of a small dense transformer, in float64, with
GQA/MQA/MHA or DeepSeek's multi-head latent attention (MLA).

A test helper, not part of tilesim: the functional test of the compiler runs a tiny random-weight
model on a simulated chip and compares its logits with :func:`forward_prefill` and
:func:`forward_decode`. Nothing here imports tilesim's compiler; only the ModelSpec describing the
model (and its MAC count, which the tests check against :class:`MacCounter`).

Conventions the compiler shares:

- Every projection is ``y = x @ W`` with ``W`` stored ``[fan_in, fan_out]``.
- Parameter names and shapes (d = d_model, H = n_heads, KV = n_kv_heads, hd = head_dim,
  F = ffn_dim, V = vocab_size): ``embed`` [V, d]; per layer i ``layer{i}.attn_norm`` [d],
  ``layer{i}.q`` [d, H*hd], ``layer{i}.k`` and ``layer{i}.v`` [d, KV*hd], ``layer{i}.o``
  [H*hd, d], ``layer{i}.ffn_norm`` [d], ``layer{i}.gate`` and ``layer{i}.up`` [d, F],
  ``layer{i}.down`` [F, d]; ``final_norm`` [d]; ``lm_head`` [d, V].
- RMSNorm: ``x / sqrt(mean(x**2) + eps) * g`` over the last axis.
- RoPE, "rotate-half" per head: ``x1 = x[..., :hd/2]``, ``x2 = x[..., hd/2:]``,
  ``inv_freq[i] = theta ** (-2i/hd)``, ``angle = pos * inv_freq``,
  ``out = concat(x1*cos - x2*sin, x2*cos + x1*sin)``, on q and k; positions are 0-based.
- Attention: ``softmax(q k^T / sqrt(hd))`` over the keys at or before the query's position;
  query head h reads KV head ``h // (H / KV)``; heads are the column blocks of q/k/v
  (head h is columns ``h*hd : (h+1)*hd``), concatenated in head order before ``o``.
- FFN: ``down(silu(x @ gate) * (x @ up))``; pre-norm residual blocks; final norm; LM head.
- GPT-2's kind (the model says which): LayerNorm ``(x - mean) / sqrt(var + eps) * g + b``
  (shift ``<norm>.bias``); ``down(gelu(x @ up))`` with GPT-2's tanh GELU; a bias
  ``<weight>.bias`` [fan_out] on q, k, v, o and the FFN projections; learned positions
  ``pos_embed`` [max_context, d] added to the token rows instead of RoPE; a tied LM head
  (``embed.T``); a sliding window keeps a query's last ``sliding_window`` keys.
- The KV cache is a list over layers of ``(K, V)``, each ``[B, KV, S, hd]``, K after RoPE.
  With ``kv_round`` (a function of an array), the new keys and values are stored rounded by
  it (a cache in a narrower type than the activations, e.g. fp8) and attention reads them so.
- MLA (``kv_lora_rank`` r > 0; nope, rope, v the per-head widths, ``q_lora_rank`` ql), computed
  the plain way, *not* weight-absorbed as the compiler runs it: ``q = rms(h @ q_a, q_a_norm)
  @ q_b`` ([ql, H*(nope+rope)], head h's columns ``[nope | rope]``), RoPE on each head's rope
  part; ``kv_a`` [d, r+rope] gives the latent ``c = rms(kv[:, :r], kv_a_norm)`` and the one
  rope key ``kv[:, r:]`` after RoPE, shared by every head; head h's keys are ``[c @
  k_up[h].T | rope key]`` and its values ``c @ v_up[h]`` (``k_up`` [H, nope, r], ``v_up``
  [H, r, v], the two halves of DeepSeek's ``kv_b``); scores scale by ``1/sqrt(nope+rope)``;
  ``o`` is [H*v, d]. Its cache per layer is ``(latent, None)``, latent ``[B, 1, S, r+rope]``
  (c, then the rope key after RoPE).

Prefill computes each query position against its causal prefix of keys (no masked-out products
are computed), so :class:`MacCounter` counts exactly the multiply-accumulates performed (for
MLA, those of the plain form, which expands every cached key and value per head: more than the
absorbed form the model counts).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from tilesim.programs.models import ModelSpec


def tiny_spec() -> ModelSpec:
    """The 2-layer GQA model of the functional test: d_model 64, 4 query heads of 16, 2 KV
    heads, SwiGLU FFN of 128, RMSNorm, vocabulary 96, 64 positions, fp32 everywhere."""
    return ModelSpec(name="tiny-gqa", vocab_size=96, d_model=64, n_layers=2, n_heads=4,
                     n_kv_heads=2, head_dim=16, ffn_dim=128, ffn_kind="swiglu", norm="rms",
                     norm_eps=1e-5, max_context=64, rope_theta=10000.0, tie_embeddings=False,
                     qkv_bias=False, attn_out_bias=False, mlp_bias=False,
                     weight_dtype="fp32", act_dtype="fp32", kv_dtype="fp32")


def tiny_mla_spec() -> ModelSpec:
    """The tiny model with MLA in place of GQA: 4 heads of nope 8 + rope 4, values of 8, a
    query rank of 16 and a latent of 16 (so a cached token is 20 elements a layer)."""
    import dataclasses
    return dataclasses.replace(tiny_spec(), name="tiny-mla", n_kv_heads=4, head_dim=12,
                               q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
                               qk_rope_head_dim=4, v_head_dim=8)


def tiny_moe_spec(mla: bool = False) -> ModelSpec:
    """The tiny model with MoE FFNs of 32: Mixtral's kind (4 experts, top 2, every layer MoE,
    softmax gates), or with ``mla`` DeepSeek-V3's (MLA, a dense first layer, 8 experts, top 3,
    a shared expert, sigmoid gates with a router bias, routed outputs scaled by 2.5)."""
    import dataclasses
    if mla:
        return dataclasses.replace(tiny_mla_spec(), name="tiny-mla-moe", n_experts=8,
                                   experts_per_token=3, moe_ffn_dim=32, n_shared_experts=1,
                                   first_dense_layers=1, router_bias=True, routed_scale=2.5)
    return dataclasses.replace(tiny_spec(), name="tiny-moe", n_experts=4, experts_per_token=2,
                               moe_ffn_dim=32)


def tiny_gpt2_spec() -> ModelSpec:
    """The tiny model built as GPT-2 is: 4 heads of 16 (MHA), LayerNorm, a GELU FFN, biases
    on every projection, learned positions, the LM head tied to the embedding."""
    import dataclasses
    return dataclasses.replace(tiny_spec(), name="tiny-gpt2", n_kv_heads=4, ffn_kind="gelu",
                               norm="layer", rope_theta=0.0, tie_embeddings=True,
                               qkv_bias=True, attn_out_bias=True, mlp_bias=True)


def weight_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in a fixed order."""
    d, H, KV, hd, F, V = (spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim,
                          spec.ffn_dim, spec.vocab_size)
    shapes: dict[str, tuple[int, ...]] = {"embed": (V, d)}
    for i in range(spec.n_layers):
        p = f"layer{i}."
        shapes[p + "attn_norm"] = (d,)
        if spec.attention == "mla":
            ql, r = spec.q_lora_rank, spec.kv_lora_rank
            nope, rope, v = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
            shapes.update({p + "q_a": (d, ql), p + "q_a_norm": (ql,),
                           p + "q_b": (ql, H * (nope + rope)), p + "kv_a": (d, r + rope),
                           p + "kv_a_norm": (r,), p + "k_up": (H, nope, r),
                           p + "v_up": (H, r, v), p + "o": (H * v, d)})
        else:
            shapes.update({p + "q": (d, H * hd), p + "k": (d, KV * hd), p + "v": (d, KV * hd),
                           p + "o": (H * hd, d)})
        shapes[p + "ffn_norm"] = (d,)
        ffns = [(p, F)]
        if i >= spec.n_dense_layers:
            E, W = spec.n_experts, spec.moe_ffn_dim
            shapes[p + "router"] = (d, E)
            if spec.router_bias:
                shapes[p + "router_bias"] = (E,)
            ffns = [(f"{p}expert{e}.", W) for e in range(E)] + \
                [(f"{p}shared{j}.", W) for j in range(spec.n_shared_experts)]
        for q, width in ffns:
            if spec.ffn_kind == "swiglu":
                shapes[q + "gate"] = (d, width)
            shapes.update({q + "up": (d, width), q + "down": (width, d)})
    shapes["final_norm"] = (d,)
    if not spec.tie_embeddings:
        shapes["lm_head"] = (d, V)
    if spec.rope_theta == 0:
        shapes["pos_embed"] = (spec.max_context, d)
    # biases and LayerNorm shifts: "<weight>.bias" [fan_out]
    for name, shape in list(shapes.items()):
        short = name.rpartition(".")[2]
        if (spec.norm == "layer" and short in ("attn_norm", "ffn_norm", "final_norm")
                or spec.qkv_bias and short in ("q", "k", "v")
                or spec.attn_out_bias and short == "o"
                or spec.mlp_bias and short in ("gate", "up", "down")):
            shapes[name + ".bias"] = shape[-1:]
    return shapes


def random_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Seeded float64 weights: biases and shifts ~ 0.1 N(0, 1), learned positions ~ 0.5
    N(0, 1), matrices ~ N(0, 1/sqrt(fan_in)) (standard deviation; a stack of per-head
    matrices [H, fan_in, fan_out] likewise), the
    embedding table ~ N(0, 1) (a lookup, not a product), norm scales ~ 1 + 0.1 N(0, 1)."""
    _check_supported(spec)
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in weight_shapes(spec).items():
        if name.endswith(".bias"):
            w[name] = 0.1 * rng.standard_normal(shape)
        elif len(shape) == 1:
            w[name] = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name in ("embed", "pos_embed"):
            w[name] = rng.standard_normal(shape) * (1.0 if name == "embed" else 0.5)
        else:
            w[name] = rng.standard_normal(shape) / np.sqrt(shape[-2])
    return w


class MacCounter:
    """Counts multiply-accumulates of every matrix product it performs: an ``a @ b`` with
    inner dimension k producing ``n`` output elements is ``n x k`` MACs. ``by_part`` uses the
    terms of ModelSpec.macs_breakdown, ``by_op`` the op names of the op graph."""

    def __init__(self):
        self.by_part: dict[str, int] = defaultdict(int)
        self.by_op: dict[str, int] = defaultdict(int)

    @property
    def total(self) -> int:
        return sum(self.by_part.values())

    def mm(self, a: np.ndarray, b: np.ndarray, part: str, op: str) -> np.ndarray:
        out = np.matmul(a, b)
        macs = int(out.size) * int(a.shape[-1])
        self.by_part[part] += macs
        self.by_op[op] += macs
        return out


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def norm(spec: ModelSpec, w: dict, name: str, x: np.ndarray) -> np.ndarray:
    """The model's norm ``name``: RMSNorm, or LayerNorm ``(x - mean) / sqrt(var + eps) * g
    + b`` (biased variance)."""
    if spec.norm == "rms":
        return rms_norm(x, w[name], spec.norm_eps)
    c = x - x.mean(axis=-1, keepdims=True)
    return c / np.sqrt(np.mean(c * c, axis=-1, keepdims=True) + spec.norm_eps) * w[name] \
        + w[name + ".bias"]


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def linear(counter, x, w: dict, name: str, part: str, op: str | None = None) -> np.ndarray:
    """``x @ w[name]`` (+ ``w[name + ".bias"]`` when the model has it); MACs counted as
    ``part`` of ``op`` (default: ``name``)."""
    y = counter.mm(x, w[name], part, op or name)
    return y + w[name + ".bias"] if name + ".bias" in w else y


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE of ``x[..., S, hd]`` at ``positions[S]``."""
    hd = x.shape[-1]
    inv_freq = theta ** (-2.0 * np.arange(hd // 2) / hd)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]   # [S, hd/2]
    cos, sin = np.cos(angle), np.sin(angle)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def forward_prefill(spec: ModelSpec, w: dict[str, np.ndarray], tokens,
                    counter: MacCounter | None = None, kv_round=None, moe_active: int = 0):
    """Run the prompt ``tokens[B, S]``; return (logits ``[B, V]`` of the last position,
    the KV cache of the S positions)."""
    _check_supported(spec)
    tokens = _tokens(spec, tokens, 2)
    B, S = tokens.shape
    if not 1 <= S <= spec.max_context:
        raise ValueError(f"prompt length {S} is not allowed (1 to {spec.max_context})")
    x = _embed(spec, w, tokens, np.arange(S))                       # [B, S, d]
    return _forward(spec, w, x, [None] * spec.n_layers, 0, counter or MacCounter(), kv_round,
                    moe_active)


def forward_decode(spec: ModelSpec, w: dict[str, np.ndarray], kv_cache, new_tokens,
                   position: int, counter: MacCounter | None = None, kv_round=None,
                   moe_active: int = 0):
    """One new token per sequence, ``new_tokens[B]``, at ``position`` = S, the number of cached
    positions; return (logits ``[B, V]``, the cache extended to S + 1). The input cache is not
    modified."""
    _check_supported(spec)
    new_tokens = _tokens(spec, new_tokens, 1)
    if len(kv_cache) != spec.n_layers:
        raise ValueError(f"kv_cache has {len(kv_cache)} layers, the model {spec.n_layers}")
    cached = kv_cache[0][0].shape[2]
    if position != cached:
        raise ValueError(f"position {position} is not the cache length {cached}")
    if position + 1 > spec.max_context:
        raise ValueError(f"position {position} is past max_context {spec.max_context}")
    x = _embed(spec, w, new_tokens[:, None], np.array([position]))  # [B, 1, d]
    return _forward(spec, w, x, list(kv_cache), position, counter or MacCounter(), kv_round,
                    moe_active)


def _embed(spec, w, tokens, positions):
    """Token rows, plus learned position rows (rope_theta == 0)."""
    x = w["embed"][tokens]
    return x + w["pos_embed"][positions] if spec.rope_theta == 0 else x


def _forward(spec, w, x, cache, start, counter, kv_round=None, moe_active=0):
    """Run ``x[B, T, d]`` (positions start .. start+T-1) through the blocks after ``cache``
    (per layer the ``start`` earlier positions' cache, or None when start == 0); new cache
    rows pass through ``kv_round`` when given."""
    kv_round = kv_round or (lambda a: a)
    positions = np.arange(start, start + x.shape[1])
    attend = _mla if spec.attention == "mla" else _mha
    new_cache = []
    for i in range(spec.n_layers):
        p = f"layer{i}."
        h = norm(spec, w, p + "attn_norm", x)
        attn, layer_cache = attend(spec, w, p, h, cache[i], positions, counter, kv_round)
        new_cache.append(layer_cache)
        x = x + linear(counter, attn, w, p + "o", "attn_proj")
        h = norm(spec, w, p + "ffn_norm", x)
        if i >= spec.n_dense_layers:
            x = x + _moe(spec, w, p, h, counter, moe_active)
        else:
            x = x + _ffn(spec, w, p, h, counter, "ffn_dense")
    last = norm(spec, w, "final_norm", x[:, -1, :])
    head = w["embed"].T if spec.tie_embeddings else w["lm_head"]
    return counter.mm(last, head, "lm_head", "lm_head"), new_cache


def _ffn(spec, w, p, h, counter, part, op=None):
    """The FFN whose matrices are ``p + "gate" / "up" / "down"`` (and biases, if any); MACs
    counted as ``part`` of ``op`` (default: each matrix's name, the dense graph's ops)."""
    up = linear(counter, h, w, p + "up", part, op)
    a = (silu(linear(counter, h, w, p + "gate", part, op)) * up if spec.ffn_kind == "swiglu"
         else gelu(up))
    return linear(counter, a, w, p + "down", part, op)


def _moe(spec, w, p, h, counter, active):
    """A MoE FFN of the normed ``h[B, T, d]``. Tokens flattened batch-major; choice j of
    token t goes to expert ``(t x k + j) mod active`` (the compiler's fixed routing); its
    weight is the softmax of the token's k router logits at those experts, or (with a router
    bias, DeepSeek-V3) their sigmoid scores normalised to sum 1 (the bias only picks experts,
    so it is unused here), times ``routed_scale``. Plus every shared expert on every
    token."""
    if not active:
        raise ValueError("a MoE model needs moe_active (the experts that take part)")
    B, T, d = h.shape
    hf = h.reshape(B * T, d)
    k = spec.experts_per_token
    logits = counter.mm(hf, w[p + "router"], "moe_router", p + "router")
    choice = (np.arange(B * T)[:, None] * k + np.arange(k)[None, :]) % active
    picked = np.take_along_axis(logits, choice, axis=1)
    if spec.router_bias:
        s = 1.0 / (1.0 + np.exp(-picked))
        gate = s / s.sum(axis=1, keepdims=True)
    else:
        gate = softmax(picked)
    gate = gate * spec.routed_scale
    out = np.zeros_like(hf)
    for e in range(active):
        tok, j = np.nonzero(choice == e)
        y = _ffn(spec, w, f"{p}expert{e}.", hf[tok], counter, "moe_routed", p + "experts")
        np.add.at(out, tok, gate[tok, j][:, None] * y)
    for j in range(spec.n_shared_experts):
        out += _ffn(spec, w, f"{p}shared{j}.", hf, counter, "moe_shared", p + "experts")
    return out.reshape(B, T, d)


def _mha(spec, w, p, h, cache, positions, counter, kv_round):
    """MHA/GQA/MQA of the normed ``h[B, T, d]``: (heads' outputs [B, T, H*hd], (K, V))."""
    B, T, _ = h.shape
    H, KV, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    q = linear(counter, h, w, p + "q", "attn_proj").reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = linear(counter, h, w, p + "k", "attn_proj").reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = linear(counter, h, w, p + "v", "attn_proj").reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    if spec.rope_theta:
        q, k = rope(q, positions, spec.rope_theta), rope(k, positions, spec.rope_theta)
    k, v = kv_round(k), kv_round(v)
    if cache is not None:
        k = np.concatenate([cache[0], k], axis=2)
        v = np.concatenate([cache[1], v], axis=2)
    kv_of_head = np.arange(H) // (H // KV)
    out = _causal(q, q, k[:, kv_of_head], k[:, kv_of_head], v[:, kv_of_head], positions[0],
                  hd, p, counter, spec.sliding_window)
    return out.transpose(0, 2, 1, 3).reshape(B, T, H * hd), (k, v)


def _mla(spec, w, p, h, cache, positions, counter, kv_round):
    """MLA of the normed ``h[B, T, d]`` in its plain (not absorbed) form (module doc):
    (heads' outputs [B, T, H*v], (latent, None))."""
    B, T, _ = h.shape
    H, r = spec.n_heads, spec.kv_lora_rank
    nope, rp, vd = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    qa = rms_norm(counter.mm(h, w[p + "q_a"], "attn_proj", p + "q_a"), w[p + "q_a_norm"],
                  spec.norm_eps)
    q = counter.mm(qa, w[p + "q_b"], "attn_proj", p + "q_b")
    q = q.reshape(B, T, H, nope + rp).transpose(0, 2, 1, 3)           # [B, H, T, nope+rope]
    q_nope, q_pe = q[..., :nope], rope(q[..., nope:], positions, spec.rope_theta)
    kv = counter.mm(h, w[p + "kv_a"], "attn_proj", p + "kv_a")         # [B, T, r+rope]
    c = rms_norm(kv[..., :r], w[p + "kv_a_norm"], spec.norm_eps)
    k_pe = rope(kv[:, None, :, r:], positions, spec.rope_theta)      # [B, 1, T, rope]
    latent = kv_round(np.concatenate([c[:, None], k_pe], axis=-1))    # [B, 1, T, r+rope]
    if cache is not None:
        latent = np.concatenate([cache[0], latent], axis=2)
    c_all, pe_all = latent[:, 0, :, :r], latent[:, :, :, r:]          # [B, S, r], [B, 1, S, rope]
    # every head's keys and values, expanded from the latent
    k_nope = np.stack([counter.mm(c_all, w[p + "k_up"][j].T, "attn_up", p + "attention")
                       for j in range(H)], axis=1)                     # [B, H, S, nope]
    vals = np.stack([counter.mm(c_all, w[p + "v_up"][j], "attn_up", p + "attention")
                     for j in range(H)], axis=1)                      # [B, H, S, v]
    S = latent.shape[2]
    out = _causal(q_nope, q_pe, k_nope, np.broadcast_to(pe_all, (B, H, S, rp)), vals,
                  positions[0], nope + rp, p, counter, spec.sliding_window)
    return out.transpose(0, 2, 1, 3).reshape(B, T, H * vd), (latent, None)


def _causal(qa, qb, ka, kb, v, start, qk_dim, p, counter, window=0):
    """Causal attention of queries at positions start.. over every key up to their own (the
    last ``window`` of them when window > 0):
    scores ``(qa . ka + qb . kb) / sqrt(qk_dim)`` (MLA's rope part is the second term; GQA
    passes the same q and k as both, which then count once), softmax, times ``v``. Shapes
    [B, H, T or S, width]; returns [B, H, T, v width]."""
    B, H, T, _ = qa.shape
    out = np.empty((B, H, T, v.shape[-1]))
    for t in range(T):
        seen = start + t + 1                                          # causal prefix
        lo = max(0, seen - window) if window else 0
        scores = counter.mm(qa[:, :, t:t + 1, :], ka[:, :, lo:seen, :].transpose(0, 1, 3, 2),
                            "attn_scores", p + "attention")
        if qb is not qa:
            scores = scores + counter.mm(qb[:, :, t:t + 1, :],
                                         kb[:, :, lo:seen, :].transpose(0, 1, 3, 2),
                                         "attn_scores", p + "attention")
        out[:, :, t:t + 1, :] = counter.mm(softmax(scores / np.sqrt(qk_dim)),
                                           v[:, :, lo:seen, :], "attn_values", p + "attention")
    return out


def _tokens(spec: ModelSpec, tokens, ndim: int) -> np.ndarray:
    t = np.asarray(tokens)
    if t.ndim != ndim or t.shape[0] < 1 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be a {ndim}-d integer array with a batch >= 1, "
                         f"not {t.dtype}{list(t.shape)}")
    if t.size and (t.min() < 0 or t.max() >= spec.vocab_size):
        raise ValueError(f"token ids must be in 0..{spec.vocab_size - 1}")
    return t


def _check_supported(spec: ModelSpec) -> None:
    """The reference covers dense and MoE models (no expert biases) with RMSNorm or LayerNorm, SwiGLU or GELU,
    RoPE or learned positions, biases, tied embeddings and sliding windows; MLA only with a
    query rank (DeepSeek-V3's form)."""
    rot = spec.qk_rope_head_dim if spec.attention == "mla" else spec.head_dim
    unsupported = [name for name, bad in (
        ("MLA without q_lora_rank", spec.attention == "mla" and not spec.q_lora_rank),
        ("MoE expert biases", spec.is_moe and spec.mlp_bias),
        ("an odd rotated width", spec.rope_theta and rot % 2 == 1))
        if bad]
    if unsupported:
        raise ValueError(f"reference forward does not model {', '.join(unsupported)} "
                         f"(model {spec.name!r})")
