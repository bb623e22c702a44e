"""The numpy reference forward pass checked against itself in independent ways: decoding after a
prefill equals prefilling one more token; a fully vectorised masked implementation written here
(GQA by reshape, RoPE by complex rotation) gives the same logits; the MACs it performs equal the
model's analytic count and the op graph's per-op MACs; RoPE makes scores depend only on relative
position; its MLA, computed the plain way, equals the weight-absorbed form written here."""
from __future__ import annotations

import numpy as np
import pytest

from tests.programs import reference_forward as ref
from tilesim.programs import graph, models


@pytest.fixture(scope="module")
def spec():
    return ref.tiny_spec()


@pytest.fixture(scope="module")
def w(spec):
    return ref.random_weights(spec, seed=1)


def tokens(spec, batch, length, seed=0):
    return np.random.default_rng(seed).integers(0, spec.vocab_size, size=(batch, length))


def test_tiny_spec_is_the_functional_test_model(spec):
    assert (spec.name, spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads,
            spec.head_dim, spec.ffn_dim, spec.vocab_size, spec.max_context) == (
        "tiny-gqa", 2, 64, 4, 2, 16, 128, 96, 64)
    assert (spec.attention, spec.ffn_kind, spec.norm, spec.norm_eps, spec.rope_theta) == (
        "gqa", "swiglu", "rms", 1e-5, 10000.0)
    assert (spec.weight_dtype, spec.act_dtype, spec.kv_dtype) == ("fp32", "fp32", "fp32")
    assert not (spec.tie_embeddings or spec.qkv_bias or spec.attn_out_bias or spec.mlp_bias)
    assert spec.kv_bytes_per_token() == 2 * 2 * 2 * 16 * 4


def test_weights_have_the_shared_names_and_shapes_and_are_seeded(spec, w):
    d, H, KV, hd, F, V = 64, 4, 2, 16, 128, 96
    expected = {"embed": (V, d), "final_norm": (d,), "lm_head": (d, V)}
    for i in range(2):
        expected.update({f"layer{i}.attn_norm": (d,), f"layer{i}.q": (d, H * hd),
                         f"layer{i}.k": (d, KV * hd), f"layer{i}.v": (d, KV * hd),
                         f"layer{i}.o": (H * hd, d), f"layer{i}.ffn_norm": (d,),
                         f"layer{i}.gate": (d, F), f"layer{i}.up": (d, F),
                         f"layer{i}.down": (F, d)})
    assert {k: v.shape for k, v in w.items()} == expected
    assert all(v.dtype == np.float64 for v in w.values())
    again = ref.random_weights(spec, seed=1)
    assert all(np.array_equal(w[k], again[k]) for k in w)
    assert not np.array_equal(w["layer0.q"], ref.random_weights(spec, seed=2)["layer0.q"])
    # parameter count agrees with the spec (no hidden tensors, none missing)
    assert sum(v.size for v in w.values()) == spec.param_count()
    assert 0.8 < np.std(w["layer0.q"]) * np.sqrt(d) < 1.2
    assert 0.8 < np.std(w["layer0.down"]) * np.sqrt(F) < 1.2


def test_logits_are_finite_and_order_one(spec, w):
    logits, cache = ref.forward_prefill(spec, w, tokens(spec, 3, 20))
    assert logits.shape == (3, 96) and np.all(np.isfinite(logits))
    assert 0.1 < logits.std() < 10
    assert len(cache) == 2
    for k, v in cache:
        assert k.shape == v.shape == (3, 2, 20, 16)


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 5), (3, 17), (2, 63)])
def test_decode_after_prefill_equals_prefill_of_one_more_token(spec, w, batch, length):
    toks = tokens(spec, batch, length + 1, seed=length)
    _, cache = ref.forward_prefill(spec, w, toks[:, :length])
    logits, cache2 = ref.forward_decode(spec, w, cache, toks[:, length], length)
    want, want_cache = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-10)
    for (k, v), (wk, wv) in zip(cache2, want_cache):
        np.testing.assert_allclose(k, wk, rtol=0, atol=1e-10)
        np.testing.assert_allclose(v, wv, rtol=0, atol=1e-10)
    assert cache[0][0].shape[2] == length          # the input cache is left alone


def test_several_decode_steps_equal_one_prefill(spec, w):
    toks = tokens(spec, 2, 12, seed=5)
    _, cache = ref.forward_prefill(spec, w, toks[:, :8])
    for pos in range(8, 12):
        logits, cache = ref.forward_decode(spec, w, cache, toks[:, pos], pos)
    want, _ = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-10)


def test_prefill_cache_is_causal(spec, w):
    toks = tokens(spec, 2, 10, seed=3)
    _, short = ref.forward_prefill(spec, w, toks[:, :6])
    changed = toks.copy()
    changed[:, 6:] = (changed[:, 6:] + 1) % spec.vocab_size
    _, full = ref.forward_prefill(spec, w, changed)
    for (k, v), (fk, fv) in zip(short, full):
        np.testing.assert_allclose(fk[:, :, :6], k, rtol=0, atol=1e-12)
        np.testing.assert_allclose(fv[:, :, :6], v, rtol=0, atol=1e-12)


def _all_positions(spec, w, toks, attend):
    """The frame both all-positions references share: RMSNorm as ``g x / sqrt(mean x^2 +
    eps)``, a -inf causal mask, SwiGLU, the final norm and the LM head around ``attend(p, h,
    norm, mask)``, which returns layer ``p``'s heads' output [B, S, width] before ``o``."""
    S, eps = toks.shape[1], spec.norm_eps

    def norm(x, g):
        return g * x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)

    mask = np.triu(np.full((S, S), -np.inf), 1)
    x = w["embed"][toks]
    for i in range(spec.n_layers):
        p = f"layer{i}."
        x = x + attend(p, norm(x, w[p + "attn_norm"]), norm, mask) @ w[p + "o"]
        h = norm(x, w[p + "ffn_norm"])
        g = h @ w[p + "gate"]
        x = x + (g / (1 + np.exp(-g)) * (h @ w[p + "up"])) @ w[p + "down"]
    return norm(x, w["final_norm"]) @ w["lm_head"]                   # [B, S, V]


def _complex_rope(S: int, width: int, theta: float):
    """RoPE over ``width`` columns at positions 0..S-1 as multiplication of (x1 + i x2) by
    exp(i pos inv_freq)."""
    rot = np.exp(1j * np.outer(np.arange(S), theta ** (-np.arange(0, width, 2) / width)))

    def rotate(x):                                                   # [..., S, width]
        z = (x[..., : width // 2] + 1j * x[..., width // 2:]) * rot
        return np.concatenate([z.real, z.imag], -1)
    return rotate


def masked_reference(spec, w, toks):
    """All positions at once: a causal -inf mask, GQA by grouping query heads as
    [B, KV, H/KV, S, hd], RoPE as multiplication of (x1 + i x2) by exp(i pos inv_freq)."""
    B, S = toks.shape
    H, KV, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    G = H // KV
    rotate = _complex_rope(S, hd, spec.rope_theta)

    def attend(p, h, norm, mask):
        q = rotate((h @ w[p + "q"]).reshape(B, S, KV, G, hd).transpose(0, 2, 3, 1, 4))
        k = rotate((h @ w[p + "k"]).reshape(B, S, KV, 1, hd).transpose(0, 2, 3, 1, 4))
        v = (h @ w[p + "v"]).reshape(B, S, KV, 1, hd).transpose(0, 2, 3, 1, 4)
        s = np.einsum("bkgqd,bkgtd->bkgqt", q, np.broadcast_to(k, q.shape)) / np.sqrt(hd) + mask
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        return np.einsum("bkgqt,bkgtd->bqkgd", a, np.broadcast_to(v, q.shape)).reshape(
            B, S, H * hd)
    return _all_positions(spec, w, toks, attend)


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 9), (3, 30)])
def test_prefill_equals_an_independent_masked_implementation(spec, w, batch, length):
    toks = tokens(spec, batch, length, seed=7)
    logits, _ = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, masked_reference(spec, w, toks)[:, -1], rtol=0,
                               atol=1e-10)


def test_rope_scores_depend_only_on_relative_position():
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal((1, 16)), rng.standard_normal((1, 16))

    def score(pq, pk):
        return float(ref.rope(q, np.array([pq]), 10000.0)[0]
                     @ ref.rope(k, np.array([pk]), 10000.0)[0])
    assert score(5, 2) == pytest.approx(score(40, 37), abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)
    np.testing.assert_array_equal(ref.rope(q, np.array([0]), 10000.0), q)
    rotated = ref.rope(q, np.array([9]), 10000.0)
    np.testing.assert_allclose(rotated[0, :8] ** 2 + rotated[0, 8:] ** 2,
                               q[0, :8] ** 2 + q[0, 8:] ** 2, atol=1e-12)


def breakdown_nonzero(spec, phase, batch, context):
    return {k: v for k, v in spec.macs_breakdown(phase, batch, context).items() if v}


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 7), (3, 40)])
def test_reference_macs_equal_the_analytic_count_in_both_phases(spec, w, batch, length):
    toks = tokens(spec, batch, length + 1, seed=2)
    c = ref.MacCounter()
    _, cache = ref.forward_prefill(spec, w, toks[:, :length], counter=c)
    assert c.total == spec.macs("prefill", batch, length)
    assert dict(c.by_part) == breakdown_nonzero(spec, "prefill", batch, length)
    c = ref.MacCounter()
    ref.forward_decode(spec, w, cache, toks[:, length], length, counter=c)
    assert c.total == spec.macs("decode", batch, length)
    assert dict(c.by_part) == breakdown_nonzero(spec, "decode", batch, length)


@pytest.mark.parametrize("phase", models.PHASES)
def test_reference_macs_per_op_equal_the_op_graph(spec, w, phase):
    batch, length = 2, 11
    toks = tokens(spec, batch, length + 1, seed=4)
    c = ref.MacCounter()
    _, cache = ref.forward_prefill(spec, w, toks[:, :length], counter=c)
    if phase == "decode":
        c = ref.MacCounter()
        ref.forward_decode(spec, w, cache, toks[:, length], length, counter=c)
    g = graph.model_graph(spec, phase, batch, length)
    assert dict(c.by_op) == {n: a["macs"] for n, a in g.nodes(data=True) if a["macs"]}
    # the reference's parameter names are the graph's weight names (embed: the gathered table)
    assert {a["weight"] for _, a in g.nodes(data=True) if a["weight"]} == set(w)


@pytest.mark.parametrize("mla", [False, True])
def test_reference_moe_macs_equal_the_analytic_count_and_the_op_graph(mla):
    """A MoE reference step (experts picked by the fixed rule, moe_active of them) spends the
    model's MoE MACs part by part (router, routed experts: T x top_k expert FFNs, shared
    experts) and op by op (the graph's ``layerI.experts`` holds routed and shared). Only the
    MoE parts: the reference computes MLA the plain way, with other attention MACs."""
    spec = ref.tiny_moe_spec(mla)
    w = ref.random_weights(spec, 0)
    batch, length = 2, 7
    toks = tokens(spec, batch, length + 1, seed=2)
    for phase, n in (("prefill", batch * length), ("decode", batch)):
        active = sum(1 for x in graph.expert_tokens(n, spec.experts_per_token, spec.n_experts)
                     if x)
        c = ref.MacCounter()
        if phase == "prefill":
            _, cache = ref.forward_prefill(spec, w, toks[:, :length], counter=c,
                                           moe_active=active)
        else:
            ref.forward_decode(spec, w, cache, toks[:, length], length, counter=c,
                               moe_active=active)
        moe = {k: v for k, v in breakdown_nonzero(spec, phase, batch, length).items()
               if k.startswith("moe")}
        assert len(moe) == (3 if mla else 2)
        assert {k: v for k, v in c.by_part.items() if k.startswith("moe")} == moe
        g = graph.model_graph(spec, phase, batch, length)
        assert {n: m for n, m in c.by_op.items() if n.endswith(("router", "experts"))} == {
            n: a["macs"] for n, a in g.nodes(data=True) if a["kind"] in ("router", "moe_experts")}
    with pytest.raises(ValueError, match="needs moe_active"):
        ref.forward_prefill(spec, w, toks[:, :length])


def test_reference_rejects_what_it_does_not_model(spec, w):
    import dataclasses
    with pytest.raises(ValueError, match="does not model MoE expert biases"):
        ref.random_weights(dataclasses.replace(ref.tiny_moe_spec(), mlp_bias=True), 0)
    with pytest.raises(ValueError, match="MLA without q_lora_rank"):
        ref.random_weights(dataclasses.replace(ref.tiny_mla_spec(), q_lora_rank=0), 0)
    with pytest.raises(ValueError, match="position 3 is not the cache length 4"):
        _, cache = ref.forward_prefill(spec, w, tokens(spec, 1, 4))
        ref.forward_decode(spec, w, cache, np.array([1]), 3)
    with pytest.raises(ValueError, match="token ids"):
        ref.forward_prefill(spec, w, np.array([[96]]))
    with pytest.raises(ValueError, match="prompt length 65"):
        ref.forward_prefill(spec, w, tokens(spec, 1, 65))


@pytest.fixture(scope="module")
def mla():
    spec = ref.tiny_mla_spec()
    return spec, ref.random_weights(spec, seed=4)


def absorbed_mla_reference(spec, w, toks):
    """All positions at once, MLA weight-absorbed as the compiler runs it (and as DeepSeek
    decodes): each head's query nope part goes through k_up[h] into the latent space, scores
    are taken against the cached latent itself (plus the shared rope key), and the softmax-
    weighted latent goes through v_up[h]; no per-head key or value is ever formed. RoPE by
    complex rotation, a -inf causal mask."""
    B, S = toks.shape
    H, r = spec.n_heads, spec.kv_lora_rank
    nope, rp, vd = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    rotate = _complex_rope(S, rp, spec.rope_theta)

    def attend(p, h, norm, mask):
        q = (norm(h @ w[p + "q_a"], w[p + "q_a_norm"]) @ w[p + "q_b"]).reshape(B, S, H, nope + rp)
        q_lat = np.einsum("bshn,hnr->bhsr", q[..., :nope], w[p + "k_up"])
        q_pe = rotate(q[..., nope:].transpose(0, 2, 1, 3))           # [B, H, S, rope]
        kv = h @ w[p + "kv_a"]
        c = norm(kv[..., :r], w[p + "kv_a_norm"])                    # [B, S, r]
        k_pe = rotate(kv[..., r:])                                   # [B, S, rope]
        s = (np.einsum("bhqr,btr->bhqt", q_lat, c) + np.einsum("bhqe,bte->bhqt", q_pe, k_pe))
        a = np.exp(s / np.sqrt(nope + rp) + mask)
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("bhrv,bhqr->bqhv", w[p + "v_up"][None], np.einsum("bhqt,btr->bhqr", a, c))
        return o.reshape(B, S, H * vd)
    return _all_positions(spec, w, toks, attend)


@pytest.mark.parametrize("batch,length", [(1, 1), (2, 9), (3, 21)])
def test_mla_plain_form_equals_the_absorbed_form(mla, batch, length):
    spec, w = mla
    toks = tokens(spec, batch, length, seed=11)
    logits, cache = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, absorbed_mla_reference(spec, w, toks)[:, -1], rtol=0,
                               atol=1e-10)
    # the cache is the latent and the rope key: exactly the model's KV bytes per token
    assert [c[1] for c in cache] == [None] * spec.n_layers
    assert all(c[0].shape == (batch, 1, length, 16 + 4) for c in cache)
    assert sum(c[0][0, :, 0].size for c in cache) * 4 == spec.kv_bytes_per_token()


def test_mla_decode_after_prefill_equals_prefill_and_its_weights_are_the_model_s(mla):
    spec, w = mla
    toks = tokens(spec, 2, 8, seed=12)
    _, cache = ref.forward_prefill(spec, w, toks[:, :7])
    logits, _ = ref.forward_decode(spec, w, cache, toks[:, 7], 7)
    want, _ = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-10)
    assert sum(v.size for v in w.values()) == spec.param_count()
    g = graph.model_graph(spec, "decode", 2, 7)
    assert {a["weight"] for _, a in g.nodes(data=True) if a["weight"]} == set(w)
    # the plain form expands every cached key and value per head: more MACs than the model's
    c = ref.MacCounter()
    ref.forward_decode(spec, w, cache, toks[:, 7], 7, counter=c)
    assert c.total > spec.macs("decode", 2, 7)


def test_gpt2_kind_weights_are_the_model_s_and_decode_equals_prefill():
    """LayerNorm, GELU, biases, learned positions and a tied head: the weights are exactly
    the model's parameters, and decoding after a prefill equals prefilling one more token
    (the new token gets its own position row)."""
    spec = ref.tiny_gpt2_spec()
    w = ref.random_weights(spec, seed=5)
    assert sum(v.size for v in w.values()) == spec.param_count()
    assert "lm_head" not in w and w["pos_embed"].shape == (64, 64)
    toks = tokens(spec, 2, 8, seed=6)
    _, cache = ref.forward_prefill(spec, w, toks[:, :7])
    logits, _ = ref.forward_decode(spec, w, cache, toks[:, 7], 7)
    want, _ = ref.forward_prefill(spec, w, toks)
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-10)
    # the position rows matter: the same tokens one position later give other logits
    other, _ = ref.forward_decode(spec, w, [(k[:, :, 1:], v[:, :, 1:]) for k, v in cache],
                                  toks[:, 7], 6)
    assert np.abs(other - logits).max() > 1e-3


def test_a_sliding_window_drops_exactly_the_keys_before_it():
    """One layer with a window W: the last position's logits equal those of the model without
    a window run on the last W tokens alone (RoPE's scores depend only on relative position),
    and differ from it run on all of them."""
    import dataclasses
    spec = dataclasses.replace(ref.tiny_spec(), n_layers=1, sliding_window=4)
    w = {k: v for k, v in ref.random_weights(dataclasses.replace(spec, n_layers=2),
                                             seed=7).items() if not k.startswith("layer1.")}
    toks = tokens(spec, 2, 9, seed=8)
    windowed, _ = ref.forward_prefill(spec, w, toks)
    full = dataclasses.replace(spec, sliding_window=0)
    last4, _ = ref.forward_prefill(full, w, toks[:, -4:])
    np.testing.assert_allclose(windowed, last4, rtol=0, atol=1e-10)
    all9, _ = ref.forward_prefill(full, w, toks)
    assert np.abs(all9 - windowed).max() > 1e-3
