"""The op graph: its MACs add up to the model's analytic count term by term, its parameter bytes
to the model's weight bytes (less the embedding table a lookup does not read), its KV traffic to
the cache's closed forms; it is a DAG whose insertion order is the execution order; layers of one
signature are the same graph; bad arguments are one-line errors."""
from __future__ import annotations

import re

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.programs.test_models import BAD_STEP_ARGS, SPECS, small_specs
from tilesim.dtypes import DTYPES
from tilesim.errors import InputError
from tilesim.programs import graph, models
from tilesim.programs.models import ModelSpec

CASES = [("prefill", 1, 1), ("prefill", 3, 257), ("prefill", 2, 5000), ("decode", 1, 0),
         ("decode", 4, 1000), ("decode", 2, 5000)]


def node_sum(g: nx.DiGraph, attr: str, kind: str | None = None) -> int:
    return sum(a[attr] for _, a in g.nodes(data=True)
               if attr in a and (kind is None or a["kind"] == kind))


# --------------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", models.PRESETS)
@pytest.mark.parametrize("phase,batch,context", CASES)
def test_model_graph_macs_equal_spec_macs_term_by_term(name, phase, batch, context):
    s = models.preset(name)
    g = graph.model_graph(s, phase, batch, context)
    assert node_sum(g, "macs") == s.macs(phase, batch, context)
    assert graph.macs_by_part(g) == s.macs_breakdown(phase, batch, context)
    for _, a in g.nodes(data=True):
        assert a["macs"] == sum(a["macs_parts"].values())
        assert set(a["macs_parts"]) <= set(graph.MACS_PARTS)
        assert a["kind"] in graph.KINDS
        if a["kind"] in ("matmul", "router", "lm_head"):
            assert a["macs"] == a["count"] * a["m"] * a["k"] * a["n"]
        if not a["macs_parts"]:
            assert a["kind"] in ("embedding", "norm", "rope", "residual_add", "activation",
                                 "topk")


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("phase,batch,context", [("prefill", 1, 1), ("prefill", 3, 9),
                                                 ("decode", 1, 0), ("decode", 4, 11)])
def test_small_specs_of_every_shape(name, phase, batch, context):
    s = SPECS[name]
    g = graph.model_graph(s, phase, batch, context)
    assert graph.macs_by_part(g) == s.macs_breakdown(phase, batch, context)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=small_specs(), phase=st.sampled_from(models.PHASES), batch=st.integers(1, 3),
       context=st.integers(0, 12))
def test_random_specs_add_up(s, phase, batch, context):
    if phase == "prefill":
        context = max(context, 1)
    g = graph.model_graph(s, phase, batch, context)
    assert graph.macs_by_part(g) == s.macs_breakdown(phase, batch, context)
    assert node_sum(g, "weight_bytes") == expected_weight_bytes(s)
    check_dag_in_execution_order(g)


def layer_matrices(g: nx.DiGraph, layer: int) -> set[tuple[str, int, int, int]]:
    out = set()
    for _, a in g.nodes(data=True):
        if a["layer"] == layer and a["kind"] in ("matmul", "router"):
            out.add((a["name"].split(".", 1)[1], a["count"], a["k"], a["n"]))
    return out


@pytest.mark.parametrize("name", models.PRESETS)
def test_every_layer_runs_exactly_the_spec_weight_matrices(name):
    s = models.preset(name)
    g = graph.model_graph(s, "decode", 2, 9)
    for i in range(s.n_layers):
        expected = {(w.name, w.count, w.k, w.n) for w in s.attention_weights()}
        if i >= s.n_dense_layers:
            expected.add(("router", 1, s.d_model, s.n_experts))
            experts = g.nodes[f"layer{i}.experts"]
            assert experts["expert_weights"] == s.ffn_weights(s.moe_ffn_dim)
        else:
            expected |= {(w.name, w.count, w.k, w.n) for w in s.ffn_weights(s.ffn_dim)}
        assert layer_matrices(g, i) == expected, i


def test_lm_head_and_final_norm_see_the_last_token_of_each_sequence_only():
    s = models.preset("llama-3-8b")
    for phase, context in (("prefill", 300), ("decode", 300)):
        g = graph.model_graph(s, phase, 5, context)
        head = g.nodes["lm_head"]
        assert (head["m"], head["k"], head["n"]) == (5, 4096, 128256)
        assert g.nodes["final_norm"]["rows"] == 5
        assert g.nodes["layer31.ffn_residual"]["elements"] == g.graph["tokens"] * 4096
    assert g.graph["tokens"] == 5


# --------------------------------------------------------------------------------------------
# Bytes
# --------------------------------------------------------------------------------------------


def expected_weight_bytes(s: ModelSpec) -> int:
    """ModelSpec.weight_bytes less the token table (unless the LM head reads it as its weight)
    and the learned position table: tables a lookup gathers rows from, not reads."""
    wbits = DTYPES[s.weight_dtype].bits
    tables = 0 if s.tie_embeddings else s.vocab_size * s.d_model
    if s.rope_theta == 0:
        tables += s.max_context * s.d_model
    assert tables * wbits % 8 == 0
    return s.weight_bytes() - tables * wbits // 8


DTYPE_COMBOS = [("bf16", "bf16"), ("int4", "fp32"), ("fp8e4m3", "bf16"), ("int8", "int4")]


@pytest.mark.parametrize("name", models.PRESETS)
@pytest.mark.parametrize("weight_dtype,act_dtype", DTYPE_COMBOS)
def test_parameter_bytes_are_the_model_weight_bytes_less_the_gathered_tables(
        name, weight_dtype, act_dtype):
    s = models.preset(name, weight_dtype=weight_dtype, act_dtype=act_dtype)
    for phase, context in (("prefill", 17), ("decode", 17)):
        g = graph.model_graph(s, phase, 2, context)
        assert node_sum(g, "weight_bytes") == expected_weight_bytes(s)


def test_tied_lm_head_reads_the_embedding_table():
    s = models.preset("gpt2")
    g = graph.model_graph(s, "decode", 1, 10)
    head = g.nodes["lm_head"]
    assert head["tied"] and head["weight"] == "embed"
    assert head["weight_bytes"] == 50257 * 768 * 2
    emb = g.nodes["embed"]
    assert emb["weight_bytes"] == 0 and emb["learned_positions"]
    assert emb["gather_rows"] == 1 + 1 and emb["bytes_min"] == 2 * 768 * 2
    g = graph.model_graph(s, "prefill", 3, 10)
    assert g.nodes["embed"]["gather_rows"] == 30 + 10


def test_gpt2_biases_and_layernorm_shifts_are_read_with_their_ops():
    s = models.preset("gpt2")
    g = graph.layer_graph(s, 0, "decode", 1, 0)
    assert [g.nodes[n]["bias"] for n in ("layer0.q", "layer0.k", "layer0.v", "layer0.o",
                                         "layer0.up", "layer0.down")] == [768] * 4 + [3072, 768]
    assert g.nodes["layer0.q"]["weight_bytes"] == (768 * 768 + 768) * 2
    assert g.nodes["layer0.attn_norm"]["weight_bytes"] == 2 * 768 * 2
    assert "layer0.gate" not in g and g.nodes["layer0.act"]["fn"] == "gelu"
    assert "layer0.rope" not in g


@pytest.mark.parametrize("name", models.PRESETS)
@pytest.mark.parametrize("kv_dtype", ["bf16", "fp8e4m3", "int4"])
def test_kv_traffic_matches_the_cache_closed_forms(name, kv_dtype):
    s = models.preset(name, kv_dtype=kv_dtype)
    B, S = 3, 5000
    g = graph.model_graph(s, "decode", B, S)
    assert node_sum(g, "kv_write_bytes") == B * s.kv_bytes_per_token()
    kept = min(S, s.sliding_window - 1) if s.sliding_window else S   # the new token is on chip
    assert node_sum(g, "kv_read_bytes") == B * kept * s.kv_bytes_per_token()
    g = graph.model_graph(s, "prefill", B, S)
    assert node_sum(g, "kv_write_bytes") == s.kv_cache_bytes(B, S)
    assert node_sum(g, "kv_read_bytes") == 0


@pytest.mark.parametrize("name", ["llama-3-8b", "gpt2", "mistral-7b"])
def test_dense_bytes_min_is_parameters_plus_kv_plus_gathered_rows(name):
    s = models.preset(name)
    for phase, context in (("prefill", 64), ("decode", 64)):
        g = graph.model_graph(s, phase, 2, context)
        assert node_sum(g, "bytes_min") == (node_sum(g, "weight_bytes")
                                            + node_sum(g, "kv_read_bytes")
                                            + node_sum(g, "kv_write_bytes")
                                            + node_sum(g, "gather_bytes"))


def test_moe_decode_reads_only_the_experts_that_get_tokens():
    s = models.preset("deepseek-v3")
    g = graph.layer_graph(s, 3, "decode", 1, 100)
    e = g.nodes["layer3.experts"]
    one = 3 * 7168 * 2048 * 2
    assert e["weight_bytes"] == (256 + 1) * one
    assert e["active_experts"] == 8 and e["bytes_min"] == (8 + 1) * one
    # 100 prompt tokens reach 256 (1 - (31/32)^100) = 245.3 experts on average; all of them
    # when balanced
    g = graph.layer_graph(s, 3, "prefill", 1, 100)
    assert g.nodes["layer3.experts"]["bytes_min"] == (245 + 1) * one
    g = graph.layer_graph(s, 3, "prefill", 1, 100, routing="balanced")
    assert g.nodes["layer3.experts"]["bytes_min"] == (256 + 1) * one


# --------------------------------------------------------------------------------------------
# Attention and MoE shapes
# --------------------------------------------------------------------------------------------


def test_attention_variants_and_widths():
    a = graph.layer_graph(models.preset("llama-3-8b"), 0, "decode", 2, 99).nodes[
        "layer0.attention"]
    assert (a["variant"], a["q_heads"], a["kv_heads"], a["score_width"], a["value_width"]) == (
        "gqa", 32, 8, 128, 128)
    assert (a["queries"], a["keys"], a["pairs"], a["causal"]) == (1, 100, 100, False)
    assert (a["kv_tokens_read"], a["kv_tokens_written"]) == (99, 1)
    assert a["kv_read_bytes"] == 2 * 99 * 2 * 8 * 128 * 2
    a = graph.layer_graph(models.preset("llama-2-7b"), 0, "prefill", 2, 99).nodes[
        "layer0.attention"]
    assert (a["variant"], a["queries"], a["keys"], a["pairs"], a["causal"]) == (
        "mha", 99, 99, 99 * 100 // 2, True)
    assert a["softmax_elements"] == 2 * 32 * 99 * 100 // 2
    a = graph.layer_graph(models.preset("deepseek-v3"), 0, "decode", 1, 999).nodes[
        "layer0.attention"]
    assert (a["variant"], a["kv_heads"], a["score_width"], a["value_width"], a["kv_elements"]) \
        == ("mla", 1, 576, 512, 576)
    a = graph.layer_graph(SPECS["mqa-window"], 0, "decode", 1, 20).nodes["layer0.attention"]
    assert (a["variant"], a["window"], a["keys"], a["kv_tokens_read"]) == ("mqa", 5, 5, 4)


def test_mla_ops_in_order_with_per_head_absorbed_pieces():
    g = graph.layer_graph(models.preset("deepseek-v3"), 0, "prefill", 1, 8)
    names = [n.split(".", 1)[1] for n in g]
    assert names == ["attn_norm", "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "rope", "k_up",
                     "attention", "v_up", "o", "attn_residual", "ffn_norm", "gate", "up", "act",
                     "down", "ffn_residual"]
    k_up, v_up = g.nodes["layer0.k_up"], g.nodes["layer0.v_up"]
    assert (k_up["count"], k_up["m"], k_up["k"], k_up["n"]) == (128, 8, 128, 512)
    assert (v_up["count"], v_up["m"], v_up["k"], v_up["n"]) == (128, 8, 512, 128)
    rope = g.nodes["layer0.rope"]
    assert (rope["q_heads"], rope["k_heads"], rope["rot_dim"]) == (128, 1, 64)


def test_rope_positions():
    s = models.preset("llama-3-8b")
    r = graph.layer_graph(s, 0, "prefill", 2, 50).nodes["layer0.rope"]
    assert (r["position_start"], r["positions"], r["rows"], r["theta"]) == (0, 50, 100, 500000.0)
    assert r["elements"] == 100 * (32 + 8) * 128
    r = graph.layer_graph(s, 0, "decode", 2, 50).nodes["layer0.rope"]
    assert (r["position_start"], r["positions"], r["rows"]) == (50, 1, 2)


@pytest.mark.parametrize("routing", graph.ROUTINGS)
@pytest.mark.parametrize("tokens,top_k,experts", [(1, 8, 256), (7, 2, 8), (4096, 8, 256),
                                                  (3, 3, 5), (1, 1, 1), (33, 2, 8), (32, 8, 256)])
def test_routing_sums_exactly_and_differs_by_at_most_one(tokens, top_k, experts, routing):
    per = graph.expert_tokens(tokens, top_k, experts, routing)
    active = [n for n in per if n]
    assert len(per) == experts and sum(per) == tokens * top_k
    assert max(active) - min(active) <= 1 and max(per) <= tokens
    assert list(per) == sorted(per, reverse=True)      # the remainder goes to the first experts
    assert top_k <= len(active) <= experts
    if routing == "balanced":
        assert len(active) == min(experts, tokens * top_k)


@pytest.mark.parametrize("routing", graph.ROUTINGS)
@pytest.mark.parametrize("tokens,top_k,experts", [(1, 8, 256), (7, 2, 8), (300, 8, 256),
                                                  (3, 3, 5), (1, 1, 1), (33, 2, 8)])
def test_expert_assignment_gives_each_expert_its_count_of_distinct_tokens(tokens, top_k,
                                                                          experts, routing):
    """The (token, choice) -> expert table the compiler and the reference share: every expert
    gets exactly expert_tokens' count, a token's choices are distinct experts, and choice
    t x k + j is row (t x k + j) // A of its expert (its tokens in order)."""
    per = graph.expert_tokens(tokens, top_k, experts, routing)
    active = sum(1 for n in per if n)
    table = np.array(graph.expert_assignment(tokens, top_k, active))
    assert table.shape == (tokens, top_k)
    assert np.bincount(table.ravel(), minlength=experts).tolist() == list(per)
    assert all(len(set(row)) == top_k for row in table)
    for e in range(active):
        toks = np.nonzero(table == e)[0]
        assert list(toks) == sorted(toks)
        slots = (np.arange(tokens * top_k).reshape(tokens, top_k))[table == e]
        assert list(slots // active) == list(range(per[e]))


@pytest.mark.parametrize("tokens,top_k,experts", [(4, 2, 8), (32, 8, 256), (1, 8, 256),
                                                  (16, 2, 8), (64, 8, 256), (3, 3, 5)])
def test_random_routing_reaches_the_experts_sampled_choices_reach(tokens, top_k, experts):
    """The experts ``random`` routing uses equal, to within one, the mean number of distinct
    experts over 4,000 sampled steps in which each token picks top_k distinct experts at
    random (a Monte Carlo check of E (1 - (1 - k / E)^T)); mixtral-8x7b at 4 sequences uses
    5 of 8, deepseek-v3 at 32 uses 163 of 256 (the README's figures)."""
    rng = np.random.default_rng(0)
    reached = [len(np.unique(np.argsort(rng.random((tokens, experts)), axis=1)[:, :top_k]))
               for _ in range(4000)]
    used = sum(1 for n in graph.expert_tokens(tokens, top_k, experts, "random") if n)
    assert abs(used - np.mean(reached)) <= 1.0
    assert graph.expert_tokens(4, 2, 8).count(0) == 3
    assert 256 - graph.expert_tokens(32, 8, 256).count(0) == 163


def test_routing_is_checked_and_sets_the_bytes_a_moe_decode_needs():
    """A deepseek-v3 decode step of 32 sequences: balanced routing reads every routed expert,
    random routing 163 of them, so its bytes_min is 93 experts' weights lower; an unknown
    routing is a one-line error naming the allowed ones."""
    s = models.preset("deepseek-v3")
    one = 3 * 7168 * 2048 * 2
    need = {r: graph.layer_graph(s, 3, "decode", 32, 100, routing=r).nodes["layer3.experts"]
            for r in graph.ROUTINGS}
    assert need["balanced"]["active_experts"] == 256 and need["random"]["active_experts"] == 163
    assert need["balanced"]["bytes_min"] - need["random"]["bytes_min"] == 93 * one
    with pytest.raises(InputError,
                       match=r"routing: 'skewed' is not allowed \(one of random, balanced\)"):
        graph.model_graph(s, "decode", 2, 8, routing="skewed")


@pytest.mark.parametrize("name", ["mixtral-8x7b", "deepseek-v3"])
@pytest.mark.parametrize("phase,batch,context", [("prefill", 3, 7), ("decode", 5, 7)])
def test_moe_nodes_carry_their_token_counts(name, phase, batch, context):
    s = models.preset(name)
    g = graph.model_graph(s, phase, batch, context)
    T = g.graph["tokens"]
    moe = [a for _, a in g.nodes(data=True) if a["kind"] == "moe_experts"]
    assert len(moe) == s.n_moe_layers
    for a in moe:
        assert sum(a["tokens_per_expert"]) == T * s.experts_per_token
        assert a["shared_experts"] == s.n_shared_experts and a["tokens"] == T
        assert a["act_elements"] == (T * s.experts_per_token + T * s.n_shared_experts) * \
            s.moe_ffn_dim


# --------------------------------------------------------------------------------------------
# Structure
# --------------------------------------------------------------------------------------------


def check_dag_in_execution_order(g: nx.DiGraph) -> None:
    assert nx.is_directed_acyclic_graph(g)
    order = list(g)
    assert [g.nodes[n]["order"] for n in order] == list(range(len(order)))
    assert all(g.nodes[n]["name"] == n for n in order)
    for u, v in g.edges:
        assert g.nodes[u]["order"] < g.nodes[v]["order"], (u, v)


@pytest.mark.parametrize("name", models.PRESETS)
@pytest.mark.parametrize("phase", models.PHASES)
def test_graph_is_a_dag_from_embedding_to_lm_head_in_execution_order(name, phase):
    s = models.preset(name)
    g = graph.model_graph(s, phase, 2, 16)
    check_dag_in_execution_order(g)
    order = list(g)
    assert order[0] == "embed" and order[-2:] == ["final_norm", "lm_head"]
    assert [n for n in g if g.in_degree(n) == 0] == ["embed"]
    assert [n for n in g if g.out_degree(n) == 0] == ["lm_head"]
    assert nx.descendants(g, "embed") == set(order[1:])
    layers = [g.nodes[n]["layer"] for n in order]
    assert layers[0] == layers[-2] == layers[-1] == -1
    assert layers[1:-2] == sorted(layers[1:-2]) and set(layers[1:-2]) == set(range(s.n_layers))
    assert g.graph["layers"] == tuple(range(s.n_layers))
    assert (g.graph["model"], g.graph["phase"], g.graph["batch"], g.graph["context"]) == (
        name, phase, 2, 16)


def test_residual_stream_edges():
    g = graph.model_graph(models.preset("llama-3-8b"), "decode", 1, 5)
    assert set(g.predecessors("layer1.attn_norm")) == {"layer0.ffn_residual"}
    assert set(g.predecessors("layer1.attn_residual")) == {"layer0.ffn_residual", "layer1.o"}
    assert set(g.predecessors("layer1.attention")) == {"layer1.rope", "layer1.v"}
    assert set(g.predecessors("layer1.act")) == {"layer1.gate", "layer1.up"}
    assert set(g.predecessors("layer0.attn_norm")) == {"embed"}


def strip(a: dict) -> dict:
    return {k: v for k, v in a.items() if k not in ("name", "layer", "weight", "order")}


def layer_shape(g: nx.DiGraph, layer: int) -> tuple[list, set]:
    prefix = re.compile(r"^layer\d+\.")
    nodes = [(prefix.sub("", n), strip(a)) for n, a in g.nodes(data=True) if a["layer"] == layer]
    edges = {(prefix.sub("", u), prefix.sub("", v)) for u, v in g.edges
             if g.nodes[u]["layer"] == layer == g.nodes[v]["layer"]}
    return nodes, edges


@pytest.mark.parametrize("name", models.PRESETS)
def test_layers_of_one_signature_are_the_same_graph(name):
    s = models.preset(name)
    groups = graph.layer_groups(s)
    assert sorted(i for layers in groups.values() for i in layers) == list(range(s.n_layers))
    g = graph.model_graph(s, "decode", 2, 33)
    shapes = {sig: layer_shape(g, layers[0]) for sig, layers in groups.items()}
    for sig, layers in groups.items():
        for i in layers:
            assert graph.layer_signature(s, i) == sig
            assert layer_shape(g, i) == shapes[sig]
    if len(shapes) == 2:
        assert shapes["dense"] != shapes["moe"]


def test_layer_groups_of_presets():
    assert graph.layer_groups(models.preset("deepseek-v3")) == {"dense": (0, 1, 2),
                                                                "moe": tuple(range(3, 61))}
    assert graph.layer_groups(models.preset("mixtral-8x7b")) == {"moe": tuple(range(32))}
    assert graph.layer_groups(models.preset("llama-3-70b")) == {"dense": tuple(range(80))}


@pytest.mark.parametrize("name", ["deepseek-v3", "gpt2", "mistral-7b"])
def test_layer_graph_is_the_layer_of_the_model_graph(name):
    s = models.preset(name)
    full = graph.model_graph(s, "prefill", 2, 40)
    for i in (0, s.n_layers - 1):
        g = graph.layer_graph(s, i, "prefill", 2, 40)
        assert layer_shape(g, i) == layer_shape(full, i)
        check_dag_in_execution_order(g)
        assert g.graph["exit"] == f"layer{i}.ffn_residual"
        assert g.graph["entry"] == (f"layer{i}.attn_norm", f"layer{i}.attn_residual")
        assert g.graph["layers"] == (i,)
        assert all(full.nodes[n]["weight"] == a["weight"] for n, a in g.nodes(data=True))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,message", BAD_STEP_ARGS)
def test_bad_arguments_are_one_line_errors(args, message):
    s = models.preset("gpt2")
    with pytest.raises(InputError) as e:
        graph.model_graph(s, *args)
    assert str(e.value) == message
    with pytest.raises(InputError) as e:
        graph.layer_graph(s, 0, *args)
    assert str(e.value) == message


@pytest.mark.parametrize("layer", [-1, 12, True, 1.0, "0"])
def test_bad_layer_is_a_one_line_error(layer):
    s = models.preset("gpt2")
    msg = f"layer: {layer!r} is not allowed (0 to 11)"
    with pytest.raises(InputError) as e:
        graph.layer_graph(s, layer, "decode", 1, 1)
    assert str(e.value) == msg
    with pytest.raises(InputError) as e:
        graph.layer_signature(s, layer)
    assert str(e.value) == msg
