"""Model specs: parameter totals against published figures, KV bytes against their closed forms,
MACs against an independent brute-force count of every matrix product, and one-line errors for
every kind of bad config.json."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tilesim.dtypes import DTYPES
from tilesim.errors import ConfigError, InputError
from tilesim.programs import models
from tilesim.programs.models import ModelSpec

# --------------------------------------------------------------------------------------------
# Published figures
# --------------------------------------------------------------------------------------------

# Totals as published / as reported by summing the tensors of each Hugging Face checkpoint
# (gpt2 with its LM head tied to wte). DeepSeek-V3's 671B is rounded in its paper; the exact
# figure below is this module's count without the MTP layer, checked to be within 0.5% of 671e9
# and equal to the tensor-by-tensor count in hf_tensor_shapes().
PUBLISHED = {
    "gpt2": 124_439_808,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496,
    "mistral-7b": 7_241_732_096,
    "mixtral-8x7b": 46_702_792_704,
}
DEEPSEEK_V3_TOTAL = 671_026_419_200

# The Hugging Face config.json of each preset (the keys that set its shape), as published under
# the repo id in models.py's comment for it.
HF_CONFIGS = {
    "gpt2": {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
             "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
             "n_positions": 1024, "vocab_size": 50257},
    "llama-2-7b": {"hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 11008,
                   "max_position_embeddings": 4096, "model_type": "llama",
                   "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 32, "rms_norm_eps": 1e-05,
                   "tie_word_embeddings": False, "vocab_size": 32000},
    "llama-3-8b": {"hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                   "max_position_embeddings": 8192, "model_type": "llama",
                   "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                   "tie_word_embeddings": False, "vocab_size": 128256},
    "llama-3-70b": {"hidden_act": "silu", "hidden_size": 8192, "intermediate_size": 28672,
                    "max_position_embeddings": 8192, "model_type": "llama",
                    "num_attention_heads": 64, "num_hidden_layers": 80,
                    "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
                    "tie_word_embeddings": False, "vocab_size": 128256},
    "mistral-7b": {"hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                   "max_position_embeddings": 32768, "model_type": "mistral",
                   "num_attention_heads": 32, "num_hidden_layers": 32,
                   "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
                   "sliding_window": 4096, "tie_word_embeddings": False, "vocab_size": 32000},
    "mixtral-8x7b": {"hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 14336,
                     "max_position_embeddings": 32768, "model_type": "mixtral",
                     "num_attention_heads": 32, "num_experts_per_tok": 2,
                     "num_hidden_layers": 32, "num_key_value_heads": 8,
                     "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
                     "sliding_window": None, "tie_word_embeddings": False,
                     "vocab_size": 32000},
    "deepseek-v3": {"first_k_dense_replace": 3, "hidden_act": "silu", "hidden_size": 7168,
                    "intermediate_size": 18432, "kv_lora_rank": 512,
                    "max_position_embeddings": 163840, "model_type": "deepseek_v3",
                    "moe_intermediate_size": 2048, "moe_layer_freq": 1,
                    "n_routed_experts": 256, "n_shared_experts": 1,
                    "num_attention_heads": 128, "num_experts_per_tok": 8,
                    "num_hidden_layers": 61, "num_key_value_heads": 128,
                    "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
                    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
                    "rope_theta": 10000, "tie_word_embeddings": False,
                    "topk_method": "noaux_tc", "v_head_dim": 128, "vocab_size": 129280},
}


def test_every_preset_has_a_published_config():
    assert set(models.PRESETS) == set(HF_CONFIGS)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published_total(name):
    assert models.preset(name).param_count() == PUBLISHED[name]


def test_deepseek_v3_total_without_mtp_is_671_026_419_200_within_half_percent_of_671b():
    total = models.preset("deepseek-v3").param_count()
    assert total == DEEPSEEK_V3_TOTAL
    assert abs(total - 671e9) / 671e9 < 0.005


# --------------------------------------------------------------------------------------------
# Parameters, tensor by tensor
# --------------------------------------------------------------------------------------------


def hf_tensor_shapes(s: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint, named as transformers names them, with its shape.
    Written from the model code's layer list, independently of models.py's formulas."""
    t: dict[str, tuple[int, ...]] = {"embed_tokens": (s.vocab_size, s.d_model)}
    if s.rope_theta == 0:
        t["wpe"] = (s.max_context, s.d_model)
    if not s.tie_embeddings:
        t["lm_head"] = (s.vocab_size, s.d_model)

    def norm(name, dim):
        t[name + ".weight"] = (dim,)
        if s.norm == "layer":
            t[name + ".bias"] = (dim,)

    def linear(name, fan_in, fan_out, bias):
        t[name + ".weight"] = (fan_out, fan_in)
        if bias:
            t[name + ".bias"] = (fan_out,)

    def mlp(prefix, width):
        if s.ffn_kind == "swiglu":
            linear(prefix + ".gate_proj", s.d_model, width, s.mlp_bias)
        linear(prefix + ".up_proj", s.d_model, width, s.mlp_bias)
        linear(prefix + ".down_proj", width, s.d_model, s.mlp_bias)

    for i in range(s.n_layers):
        p = f"layers.{i}"
        norm(p + ".input_layernorm", s.d_model)
        norm(p + ".post_attention_layernorm", s.d_model)
        a = p + ".self_attn"
        if s.kv_lora_rank:
            qk = s.qk_nope_head_dim + s.qk_rope_head_dim
            if s.q_lora_rank:
                linear(a + ".q_a_proj", s.d_model, s.q_lora_rank, False)
                norm(a + ".q_a_layernorm", s.q_lora_rank)
                linear(a + ".q_b_proj", s.q_lora_rank, s.n_heads * qk, False)
            else:
                linear(a + ".q_proj", s.d_model, s.n_heads * qk, False)
            linear(a + ".kv_a_proj_with_mqa", s.d_model, s.kv_lora_rank + s.qk_rope_head_dim,
                   False)
            norm(a + ".kv_a_layernorm", s.kv_lora_rank)
            linear(a + ".kv_b_proj", s.kv_lora_rank,
                   s.n_heads * (s.qk_nope_head_dim + s.v_head_dim), False)
            linear(a + ".o_proj", s.n_heads * s.v_head_dim, s.d_model, False)
        else:
            for proj, heads in (("q", s.n_heads), ("k", s.n_kv_heads), ("v", s.n_kv_heads)):
                linear(f"{a}.{proj}_proj", s.d_model, heads * s.head_dim, s.qkv_bias)
            linear(a + ".o_proj", s.n_heads * s.head_dim, s.d_model, s.attn_out_bias)
        if s.n_experts and i >= s.first_dense_layers:
            t[p + ".mlp.gate.weight"] = (s.n_experts, s.d_model)
            if s.router_bias:
                t[p + ".mlp.gate.e_score_correction_bias"] = (s.n_experts,)
            for e in range(s.n_experts):
                mlp(f"{p}.mlp.experts.{e}", s.moe_ffn_dim)
            for e in range(s.n_shared_experts):
                mlp(f"{p}.mlp.shared_experts.{e}", s.moe_ffn_dim)
        else:
            mlp(p + ".mlp", s.ffn_dim)
    norm("norm", s.d_model)
    return t


def numel(shape):
    return int(np.prod(shape, dtype=np.int64))


@pytest.mark.parametrize("name", models.PRESETS)
def test_param_count_equals_tensor_by_tensor_count(name):
    s = models.preset(name)
    assert s.param_count() == sum(numel(x) for x in hf_tensor_shapes(s).values())


@pytest.mark.parametrize("name", models.PRESETS)
def test_breakdown_sums_to_total_and_layers_sum_to_their_parts(name):
    s = models.preset(name)
    b = s.param_breakdown()
    assert sum(b.values()) == s.param_count()
    for key in ("attention", "dense_ffn", "moe_routed_experts", "moe_shared_experts", "router",
                "biases"):
        assert b[key] == sum(s.layer_params(i)[key] for i in range(s.n_layers))
    assert b["lm_head"] == (0 if s.tie_embeddings else s.vocab_size * s.d_model)


def test_weight_bytes_puts_matrices_in_weight_dtype_and_vectors_in_act_dtype():
    s = models.preset("gpt2", weight_dtype="int4", act_dtype="fp32")
    shapes = hf_tensor_shapes(s)
    vectors = sum(numel(x) for x in shapes.values() if len(x) == 1)
    matrices = sum(numel(x) for x in shapes.values() if len(x) == 2)
    assert s.weight_bytes() == (matrices * 4 + vectors * 32) // 8
    assert models.preset("llama-2-7b").weight_bytes() == 2 * PUBLISHED["llama-2-7b"]


def test_gpt2_biases_are_counted_on_every_linear():
    s = models.preset("gpt2")
    d, f, L = 768, 3072, 12
    assert s.param_breakdown()["biases"] == L * (3 * d + d + f + d)
    assert s.param_breakdown()["norms"] == (2 * L + 1) * 2 * d


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------

KV_BF16 = {"gpt2": 36_864, "llama-2-7b": 524_288, "llama-3-8b": 131_072,
           "llama-3-70b": 327_680, "mistral-7b": 131_072, "mixtral-8x7b": 131_072,
           "deepseek-v3": 70_272}


@pytest.mark.parametrize("name", models.PRESETS)
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8e4m3", "int4", "fp32"])
def test_kv_bytes_per_token_closed_form(name, kv_dtype):
    s = models.preset(name, kv_dtype=kv_dtype)
    elem = DTYPES[kv_dtype].bits / 8
    if s.attention == "mla":
        expected = elem * s.n_layers * (s.kv_lora_rank + s.qk_rope_head_dim)
    else:
        expected = 2 * elem * s.n_layers * s.n_kv_heads * s.head_dim
    assert s.kv_bytes_per_token() == expected
    assert models.preset(name).kv_bytes_per_token() == KV_BF16[name]


def test_kv_cache_keeps_only_the_sliding_window():
    s = models.preset("mistral-7b")
    assert s.kv_cache_bytes(3, 1000) == 3 * 1000 * 131_072
    assert s.kv_cache_bytes(3, 10_000) == 3 * 4096 * 131_072
    assert models.preset("llama-3-8b").kv_cache_bytes(2, 8192) == 2 * 8192 * 131_072


def test_attention_kind_is_derived_from_heads_or_mla():
    kinds = {n: models.preset(n).attention for n in models.PRESETS}
    assert kinds == {"gpt2": "mha", "llama-2-7b": "mha", "llama-3-8b": "gqa",
                     "llama-3-70b": "gqa", "mistral-7b": "gqa", "mixtral-8x7b": "gqa",
                     "deepseek-v3": "mla"}
    assert dataclasses.replace(models.preset("llama-3-8b"), n_kv_heads=1).attention == "mqa"


# --------------------------------------------------------------------------------------------
# MACs: brute force, one matrix product at a time
# --------------------------------------------------------------------------------------------


def brute_macs(s: ModelSpec, phase: str, batch: int, context: int, seed: int = 0) -> int:
    """Sum m x k x n over every matrix product of the step, walking layers, sequences, heads and
    query positions one by one; MoE tokens are routed at random (seeded) to distinct experts."""
    rng = np.random.default_rng(seed)
    d, H = s.d_model, s.n_heads
    T = batch * context if phase == "prefill" else batch
    # keys seen by each query of one sequence
    if phase == "prefill":
        keys = [i + 1 for i in range(context)]
    else:
        keys = [context + 1]
    if s.sliding_window:
        keys = [min(k, s.sliding_window) for k in keys]

    def mm(m, k, n):
        return m * k * n

    def ffn(tokens, width):
        n_mats = 3 if s.ffn_kind == "swiglu" else 2
        return n_mats * mm(tokens, d, width)

    total = 0
    for layer in range(s.n_layers):
        if s.kv_lora_rank:
            nope, rope, r, v = (s.qk_nope_head_dim, s.qk_rope_head_dim, s.kv_lora_rank,
                                s.v_head_dim)
            if s.q_lora_rank:
                total += mm(T, d, s.q_lora_rank) + mm(T, s.q_lora_rank, H * (nope + rope))
            else:
                total += mm(T, d, H * (nope + rope))
            total += mm(T, d, r + rope)                     # latent c_kv and shared rope key
            for _head in range(H):
                total += mm(T, nope, r)                     # q_nope @ W_UK
                for _seq in range(batch):
                    for n_keys in keys:
                        total += mm(1, r, n_keys) + mm(1, rope, n_keys)     # scores
                        total += mm(1, n_keys, r)           # probabilities @ c_kv
                total += mm(T, r, v)                        # latent output @ W_UV
            total += mm(T, H * v, d)
        else:
            hd = s.head_dim
            total += mm(T, d, H * hd) + 2 * mm(T, d, s.n_kv_heads * hd)
            for _head in range(H):
                for _seq in range(batch):
                    for n_keys in keys:
                        total += mm(1, hd, n_keys) + mm(1, n_keys, hd)
            total += mm(T, H * hd, d)
        if s.n_experts and layer >= s.first_dense_layers:
            total += mm(T, d, s.n_experts)                  # router logits
            per_expert = np.zeros(s.n_experts, dtype=np.int64)
            for _tok in range(T):
                per_expert[rng.choice(s.n_experts, s.experts_per_token, replace=False)] += 1
            for tokens in per_expert:
                total += ffn(int(tokens), s.moe_ffn_dim)
            for _shared in range(s.n_shared_experts):
                total += ffn(T, s.moe_ffn_dim)
        else:
            total += ffn(T, s.ffn_dim)
    total += mm(batch, d, s.vocab_size)                     # last token of each sequence
    return total


TINY = dict(name="tiny", vocab_size=37, d_model=24, n_layers=3, n_heads=4, n_kv_heads=4,
            head_dim=6, ffn_dim=40, max_context=64)
SPECS = {
    "dense-mha-gelu": ModelSpec(**TINY, ffn_kind="gelu", norm="layer", rope_theta=0.0,
                                tie_embeddings=True, qkv_bias=True, attn_out_bias=True,
                                mlp_bias=True),
    "gqa": ModelSpec(**{**TINY, "n_kv_heads": 2}),
    "mqa-window": ModelSpec(**{**TINY, "n_kv_heads": 1}, sliding_window=5),
    "moe": ModelSpec(**{**TINY, "n_kv_heads": 2}, n_experts=6, experts_per_token=2,
                     moe_ffn_dim=10, n_shared_experts=1, first_dense_layers=1),
    "mla-moe": ModelSpec(**{**TINY, "head_dim": 7}, q_lora_rank=9, kv_lora_rank=8,
                         qk_nope_head_dim=4, qk_rope_head_dim=3, v_head_dim=5, n_experts=5,
                         experts_per_token=3, moe_ffn_dim=6, n_shared_experts=2,
                         first_dense_layers=2, router_bias=True),
    "mla-no-q-lora": ModelSpec(**{**TINY, "head_dim": 6}, kv_lora_rank=8,
                               qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=3),
}


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("phase,batch,context", [("prefill", 1, 1), ("prefill", 3, 9),
                                                 ("decode", 1, 0), ("decode", 4, 11)])
def test_macs_equal_brute_force_count(name, phase, batch, context):
    s = SPECS[name]
    assert s.macs(phase, batch, context) == brute_macs(s, phase, batch, context)


@pytest.mark.parametrize("seed", range(3))
def test_moe_macs_do_not_depend_on_routing(seed):
    s = SPECS["moe"]
    assert brute_macs(s, "prefill", 2, 7, seed) == s.macs("prefill", 2, 7)


@st.composite
def small_specs(draw):
    n_heads = draw(st.integers(1, 4))
    mla = draw(st.booleans())
    kw = dict(name="random", vocab_size=draw(st.integers(1, 50)),
              d_model=draw(st.integers(1, 16)), n_layers=draw(st.integers(1, 3)),
              n_heads=n_heads, ffn_dim=draw(st.integers(1, 20)),
              ffn_kind=draw(st.sampled_from(models.FFN_KINDS)),
              norm=draw(st.sampled_from(models.NORMS)), max_context=64,
              rope_theta=draw(st.sampled_from([0.0, 10000.0])),
              sliding_window=draw(st.sampled_from([0, 1, 3, 6])),
              tie_embeddings=draw(st.booleans()), mlp_bias=draw(st.booleans()))
    if mla:
        nope, rope = draw(st.integers(0, 4)), draw(st.integers(0, 4))
        kw.update(n_kv_heads=n_heads, head_dim=max(nope + rope, 1), qk_nope_head_dim=nope,
                  qk_rope_head_dim=rope + (nope + rope == 0),
                  q_lora_rank=draw(st.integers(0, 6)), kv_lora_rank=draw(st.integers(1, 6)),
                  v_head_dim=draw(st.integers(1, 5)))
    else:
        kw.update(n_kv_heads=draw(st.sampled_from([k for k in range(1, n_heads + 1)
                                                   if n_heads % k == 0])),
                  head_dim=draw(st.integers(1, 6)), qkv_bias=draw(st.booleans()),
                  attn_out_bias=draw(st.booleans()))
    if draw(st.booleans()):
        n_experts = draw(st.integers(1, 6))
        kw.update(n_experts=n_experts, experts_per_token=draw(st.integers(1, n_experts)),
                  moe_ffn_dim=draw(st.integers(1, 8)), n_shared_experts=draw(st.integers(0, 2)),
                  first_dense_layers=draw(st.integers(0, kw["n_layers"] - 1)),
                  router_bias=draw(st.booleans()))
    return ModelSpec(**kw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=small_specs(), phase=st.sampled_from(models.PHASES), batch=st.integers(1, 3),
       context=st.integers(0, 12))
def test_macs_equal_brute_force_on_random_specs(s, phase, batch, context):
    if phase == "prefill":
        context = max(context, 1)
    assert s.macs(phase, batch, context) == brute_macs(s, phase, batch, context)
    assert s.param_count() == sum(numel(x) for x in hf_tensor_shapes(s).values())


def matrix_params_per_token(s: ModelSpec) -> int:
    """Weight elements one token multiplies by in the blocks: every matrix it passes through
    (only its experts of a MoE layer), without embeddings, LM head, norms or biases."""
    total = 0
    for i in range(s.n_layers):
        p = s.layer_params(i)
        routed = p["moe_routed_experts"] // s.n_experts * s.experts_per_token if s.is_moe else 0
        total += p["attention"] + p["dense_ffn"] + routed + p["moe_shared_experts"] + p["router"]
    return total


@pytest.mark.parametrize("name", models.PRESETS)
def test_prefill_macs_are_params_per_token_times_tokens_plus_attention_and_lm_head(name):
    s = models.preset(name)
    batch, S = 2, 512
    b = s.macs_breakdown("prefill", batch, S)
    attention = b["attn_scores"] + b["attn_values"]
    assert s.macs("prefill", batch, S) == (matrix_params_per_token(s) * batch * S + attention
                                           + batch * s.d_model * s.vocab_size)
    width = (2 * s.kv_lora_rank + s.qk_rope_head_dim if s.attention == "mla"
             else 2 * s.head_dim)
    assert attention == s.n_layers * s.n_heads * width * batch * S * (S + 1) // 2
    assert b["embedding"] == 0


def test_lm_head_runs_once_per_sequence_in_prefill_and_decode():
    s = models.preset("llama-3-8b")
    for phase, context in (("prefill", 1), ("prefill", 4000), ("decode", 4000)):
        assert s.macs_breakdown(phase, 5, context)["lm_head"] == 5 * 4096 * 128256


def test_attended_pairs_triangle_and_window():
    s = models.preset("llama-3-8b")
    assert s.attended_pairs("prefill", 1000) == 1000 * 1001 // 2
    assert s.attended_pairs("decode", 1000) == 1001
    m = models.preset("mistral-7b")
    assert m.attended_pairs("prefill", 4096) == 4096 * 4097 // 2
    assert m.attended_pairs("prefill", 5000) == sum(min(i + 1, 4096) for i in range(5000))
    assert m.attended_pairs("decode", 4095) == 4096
    assert m.attended_pairs("decode", 9000) == 4096


def test_deepseek_v3_decode_scores_read_the_576_wide_latent_cache():
    s = models.preset("deepseek-v3")
    b = s.macs_breakdown("decode", 1, 999)
    assert b["attn_scores"] == 61 * 1000 * 128 * 576
    assert b["attn_values"] == 61 * 1000 * 128 * 512
    assert b["moe_routed"] == 58 * 8 * 3 * 7168 * 2048
    assert b["moe_shared"] == 58 * 1 * 3 * 7168 * 2048
    assert b["ffn_dense"] == 3 * 3 * 7168 * 18432


BAD_STEP_ARGS = [       # (phase, batch, context) -> the one-line error; graph.py uses it too
    (("prefil", 1, 8),
     "phase: 'prefil' is not allowed (prefill or decode; did you mean 'prefill'?)"),
    (("prefill", 0, 8), "batch: 0 is not allowed (an integer >= 1)"),
    (("prefill", 1, 0), "context: 0 is not allowed (an integer >= 1)"),
    (("decode", 1, -1), "context: -1 is not allowed (an integer >= 0)"),
    (("decode", True, 3), "batch: True is not allowed (an integer >= 1)"),
    (("decode", 1.0, 3), "batch: 1.0 is not allowed (an integer >= 1)"),
    (("decode", 1, 2.0), "context: 2.0 is not allowed (an integer >= 0)"),
]


@pytest.mark.parametrize("args,message", BAD_STEP_ARGS)
def test_macs_reject_bad_arguments_in_one_line(args, message):
    with pytest.raises(InputError) as e:
        models.preset("gpt2").macs(*args)
    assert str(e.value) == message


# --------------------------------------------------------------------------------------------
# Context checks, presets, resolving names
# --------------------------------------------------------------------------------------------


def test_check_context_names_the_model_and_its_limit():
    s = models.preset("llama-2-7b")
    models.check_context(s, 4096)
    models.check_context(s, 4095, "decode")
    with pytest.raises(InputError) as e:
        models.check_context(s, 9000)
    assert str(e.value) == "context 9000 is longer than llama-2-7b allows (4096 positions)"
    with pytest.raises(InputError) as e:
        models.check_context(s, 4096, "decode")
    assert str(e.value) == ("decode at context 4096 needs 4097 positions, more than llama-2-7b "
                            "allows (4096 positions)")


def test_unknown_preset_lists_presets_and_suggests():
    with pytest.raises(ConfigError) as e:
        models.preset("lama-3-8b")
    msg = str(e.value)
    assert "\n" not in msg and "did you mean 'llama-3-8b'?" in msg
    assert all(n in msg for n in models.PRESETS)


def test_preset_datatypes_are_checked():
    assert models.preset("gpt2", "int4", "int8", "fp8e5m2").kv_dtype == "fp8e5m2"
    with pytest.raises(ConfigError, match=r"weight_dtype: 'int3' is not allowed \(one of"):
        models.preset("gpt2", weight_dtype="int3")


def write(tmp_path, data, name="m") -> str:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = folder / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


@pytest.mark.parametrize("name", models.PRESETS)
def test_published_config_json_loads_to_the_preset(tmp_path, name):
    path = write(tmp_path, HF_CONFIGS[name], name)
    spec = models.from_hf_config(path)
    assert spec == models.preset(name)          # the name comes from the folder
    assert models.from_hf_config(tmp_path / name) == spec
    assert models.resolve_model(str(tmp_path / name)) == spec
    assert models.resolve_model(path, kv_dtype="fp8e4m3").kv_dtype == "fp8e4m3"


def test_resolve_model_takes_presets_and_rejects_the_rest_in_one_line(tmp_path):
    assert models.resolve_model("mixtral-8x7b") == models.preset("mixtral-8x7b")
    with pytest.raises(ConfigError) as e:
        models.resolve_model("mixtral")
    assert "no such model preset or file" in str(e.value)
    assert "did you mean 'mixtral-8x7b'?" in str(e.value)
    with pytest.raises(ConfigError, match="directory holds no config.json"):
        models.resolve_model(tmp_path)


def test_optional_keys_take_transformers_defaults(tmp_path):
    cfg = {k: v for k, v in HF_CONFIGS["llama-2-7b"].items()
           if k not in ("num_key_value_heads", "rms_norm_eps", "tie_word_embeddings",
                        "hidden_act")}
    s = models.from_hf_config(write(tmp_path, cfg))
    assert (s.n_kv_heads, s.norm_eps, s.tie_embeddings, s.rope_theta) == (32, 1e-6, False, 1e4)
    s = models.from_hf_config(write(tmp_path, {**cfg, "head_dim": 64, "attention_bias": True,
                                               "rope_theta": None,
                                               "rope_parameters": {"rope_theta": 5e5}}))
    assert (s.head_dim, s.qkv_bias, s.attn_out_bias, s.rope_theta) == (64, True, True, 5e5)
    v2_lite = {**HF_CONFIGS["deepseek-v3"], "q_lora_rank": None}
    assert models.from_hf_config(write(tmp_path, v2_lite)).q_lora_rank == 0


LLAMA = HF_CONFIGS["llama-3-8b"]
BAD_CONFIGS = [
    # (config.json content, the key the message must name, words it must contain)
    ({k: v for k, v in LLAMA.items() if k != "hidden_size"}, "hidden_size",
     "required key is missing"),
    ({**LLAMA, "hidden_size": None}, "hidden_size", "required key is missing"),
    ({**LLAMA, "num_hidden_layers": "32"}, "num_hidden_layers", "'32' is not allowed (an integer)"),
    ({**LLAMA, "num_hidden_layers": 32.0}, "num_hidden_layers", "is not allowed (an integer)"),
    ({**LLAMA, "vocab_size": True}, "vocab_size", "true is not allowed (an integer)"),
    ({**LLAMA, "intermediate_size": 0}, "intermediate_size", "an integer >= 1"),
    ({**LLAMA, "rms_norm_eps": "small"}, "rms_norm_eps", "(a number)"),
    ({**LLAMA, "rms_norm_eps": 0}, "rms_norm_eps", "a number > 0"),
    ({**LLAMA, "tie_word_embeddings": "no"}, "tie_word_embeddings", "(true or false)"),
    ({**LLAMA, "num_key_value_heads": 5}, "num_key_value_heads",
     "a divisor of num_attention_heads = 32"),
    ({**LLAMA, "hidden_size": 4100}, "hidden_size", "a multiple of num_attention_heads = 32"),
    ({**LLAMA, "hidden_act": "relu"}, "hidden_act",
     "'relu' is not allowed (one of silu, swish for model_type 'llama')"),
    ({**HF_CONFIGS["gpt2"], "activation_function": "silu"}, "activation_function",
     "(one of gelu, gelu_new, gelu_pytorch_tanh, gelu_fast for model_type 'gpt2')"),
    ({**HF_CONFIGS["gpt2"], "n_embd": 770}, "n_embd", "a multiple of n_head = 12"),
    ({**HF_CONFIGS["gpt2"], "hidden_size": 1024}, "hidden_size", "disagrees with n_embd: 768"),
    ({**LLAMA, "model_type": "qwen2"}, "model_type", "one of gpt2, llama"),
    ({k: v for k, v in LLAMA.items() if k != "model_type"}, "model_type",
     "required key is missing"),
    ({**HF_CONFIGS["mixtral-8x7b"], "num_experts_per_tok": 9}, "num_experts_per_tok",
     "from 1 to n_experts = 8"),
    ({k: v for k, v in HF_CONFIGS["mixtral-8x7b"].items() if k != "num_local_experts"},
     "num_local_experts", "required key is missing"),
    ({**HF_CONFIGS["mistral-7b"], "sliding_window": 0}, "sliding_window", "an integer >= 1"),
    ({**HF_CONFIGS["deepseek-v3"], "first_k_dense_replace": 61}, "first_k_dense_replace",
     "below n_layers = 61"),
    ({**HF_CONFIGS["deepseek-v3"], "moe_layer_freq": 2}, "moe_layer_freq", "every layer after"),
    ({**HF_CONFIGS["deepseek-v3"], "attention_bias": True}, "attention_bias", "without biases"),
    ({**HF_CONFIGS["deepseek-v3"], "v_head_dim": -1}, "v_head_dim", "an integer >= 1"),
    ({**HF_CONFIGS["deepseek-v3"], "routed_scaling_factor": 0}, "routed_scaling_factor",
     "a finite number > 0"),
    ({**HF_CONFIGS["deepseek-v3"], "kv_lora_rank": None}, "kv_lora_rank",
     "required key is missing"),
    ({**LLAMA, "rope_theta": None, "rope_parameters": {"rope_theta": -1}},
     "rope_parameters.rope_theta", "a number >= 0"),
    ("[1, 2]", "", "the top level must be a JSON object"),
    ('{"model_type": "llama",', "", "not valid JSON"),
    ('{"model_type": "llama", "model_type": "gpt2"}', "", "key 'model_type' appears twice"),
    (json.dumps(LLAMA)[:-1] + ', "initializer_range": NaN}', "", "NaN is not a number JSON allows"),
]


@pytest.mark.parametrize("content,key,words", BAD_CONFIGS,
                         ids=[f"{i}-{c[1] or c[2][:12]}" for i, c in enumerate(BAD_CONFIGS)])
def test_bad_config_json_is_one_line_naming_file_and_key(tmp_path, content, key, words):
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as e:
        models.from_hf_config(path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}:" if key else f"{path}:")
    assert words in msg


def test_unreadable_config_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as e:
        models.from_hf_config(tmp_path / "missing.json")
    assert "missing.json: cannot read (FileNotFoundError" in str(e.value)
    assert "\n" not in str(e.value)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**6)
                           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                           max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(base=st.sampled_from(sorted(HF_CONFIGS)),
       changes=st.dictionaries(st.sampled_from(sorted({k for c in HF_CONFIGS.values() for k in c}
                                                      | {"head_dim", "n_inner", "mlp_bias"})),
                               JSON_VALUES, min_size=1, max_size=3))
def test_any_mangled_config_loads_or_fails_in_one_line(tmp_path_factory, base, changes):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps({**HF_CONFIGS[base], **changes}))
    try:
        spec = models.from_hf_config(path)
    except ConfigError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))
    else:
        assert spec.param_count() > 0


def test_layer_params_reject_a_layer_out_of_range():
    s = models.preset("deepseek-v3")
    assert s.layer_params(2)["dense_ffn"] == 3 * 7168 * 18432
    assert s.layer_params(3)["moe_routed_experts"] == 256 * 3 * 7168 * 2048
    with pytest.raises(InputError, match=r"layer: 61 is not allowed \(0 to 60\)"):
        s.layer_params(61)


def test_spec_validation_names_the_field():
    with pytest.raises(ConfigError) as e:
        ModelSpec(**{**TINY, "n_kv_heads": 3})
    assert str(e.value) == "model 'tiny': n_kv_heads: 3 is not allowed (a divisor of n_heads = 4)"
    with pytest.raises(ConfigError, match="v_head_dim: 2 is not allowed .*unless kv_lora_rank"):
        ModelSpec(**TINY, v_head_dim=2)
    with pytest.raises(ConfigError, match="router_bias: True is not allowed .*unless n_experts"):
        ModelSpec(**TINY, router_bias=True)
    with pytest.raises(ConfigError, match=r"routed_scale: 2.5 is not allowed \(1 unless n_exp"):
        ModelSpec(**TINY, routed_scale=2.5)
    with pytest.raises(ConfigError, match=r"ffn_kind: 'gelu2' .*did you mean 'gelu'\?"):
        ModelSpec(**TINY, ffn_kind="gelu2")
