"""The benchmark harness's pure helpers: FLOP formulas against torch's own counter, the block protocol on
scripted stdin, the ABBA schedule, throughput arithmetic and the results writers. No timing is asserted."""

import io
import json

import pytest
import torch
from torch import nn

from benchmarks.common import (
    PREFIX,
    BlockClock,
    count_flops,
    fmt,
    linear_flops,
    markdown_table,
    matmul_gflops,
    mlp_forward_flops,
    mlp_train_flops,
    ratio_bound,
    results_paths,
    schedule,
    serve,
    throughput,
    time_abba,
    transformer_forward_flops,
    write_results,
)


def _mlp(dims):
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def test_linear_and_mlp_flops_hand_values():
    assert linear_flops(4, 3, 5) == 2 * 4 * 3 * 5
    # 8 rows through 3 -> 16 -> 2: 2*8*(3*16 + 16*2) = 1280; twin members double it
    assert mlp_forward_flops(8, [3, 16, 2]) == 1280
    assert mlp_forward_flops(8, [3, 16, 2], members=2) == 2560
    # backward: weight grads (= forward) + input grads of every layer but the first (2*8*16*2 = 512)
    assert mlp_train_flops(8, [3, 16, 2]) == 1280 + 1280 + 512
    assert mlp_train_flops(8, [3, 16, 2], input_grad=True) == 1280 + 1280 + 1280


@pytest.mark.parametrize("input_grad", [False, True])
def test_mlp_train_flops_match_torch_counter(input_grad):
    torch.manual_seed(0)
    dims, rows = [7, 32, 24, 3], 16
    net = _mlp(dims)
    x = torch.randn(rows, dims[0], requires_grad=input_grad)
    fwd, _ = count_flops(net, x)
    assert fwd == mlp_forward_flops(rows, dims)
    total, _ = count_flops(lambda: net(x).sum().backward())
    assert total == mlp_train_flops(rows, dims, input_grad=input_grad)


def test_transformer_forward_flops_match_torch_counter():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    b, s = 3, 10
    ids = torch.randint(0, 97, (b, s))
    with torch.no_grad():
        counted, _ = count_flops(model, input_ids=ids)
    expected = transformer_forward_flops(b, s, hidden=32, layers=2, intermediate=48, vocab=97, kv_hidden=16)
    # GQA: k and v project to kv_heads * head_dim = 2 * 8 = 16; the rotary tables are elementwise, not matmuls.
    assert counted == expected


def test_block_clock_protocol_on_scripted_stdin():
    stdin = io.StringIO("run 3\nrun 2\nstop\n")
    stdout = io.StringIO()
    clock = BlockClock(warmup=2, stdin=stdin, stdout=stdout)
    calls = []

    def step():
        calls.append(len(calls))
        sum(range(200_000))  # some CPU time for the block's cpu_seconds
        return float(len(calls))  # losses 1, 2, 3, ...

    serve(clock, step)
    # 2 warm-up steps, a block of 3, a block of 2, then stop
    assert len(calls) == 7
    assert [b["steps"] for b in clock.blocks] == [3, 2]
    # this process's CPU time during each block: some, and at most the wall time (one thread)
    assert all(0 < b["cpu_seconds"] <= b["seconds"] * 1.05 for b in clock.blocks)
    events = [json.loads(line[len(PREFIX):])["event"] for line in stdout.getvalue().splitlines()]
    assert events == ["ready", "block", "block"]
    rec = clock.final(None, flops_per_step=11)
    assert rec["final_loss"] == pytest.approx((6.0 + 7.0) / 2)  # the last block's steps were the 6th and 7th
    assert rec["flops_per_step"] == 11
    assert json.loads(stdout.getvalue().splitlines()[-1][len(PREFIX):])["event"] == "final"


def test_block_clock_without_warmup_and_eof_stops():
    clock = BlockClock(warmup=0, stdin=io.StringIO("run 1\n"), stdout=io.StringIO())
    n = []
    serve(clock, lambda: n.append(1))
    assert len(n) == 1 and not clock.running and len(clock.blocks) == 1


def test_abba_schedule():
    assert schedule(4) == [0, 1, 1, 0, 0, 1, 1, 0]
    assert schedule(1, 1) == [0]


def test_throughput_arithmetic():
    final = {"blocks": [{"steps": 10, "seconds": 2.0}, {"steps": 10, "seconds": 3.0}]}
    t = throughput(final, items_per_step=4)
    assert t["steps"] == 20 and t["seconds"] == 5.0
    assert t["steps_per_s"] == pytest.approx(4.0)
    assert t["items_per_s"] == pytest.approx(16.0)
    assert t["block_steps_per_s_min"] == pytest.approx(10 / 3) and t["block_steps_per_s_max"] == pytest.approx(5.0)
    assert t["steps_per_cpu_s"] is None  # blocks without CPU seconds (older results)
    final["blocks"][0]["cpu_seconds"], final["blocks"][1]["cpu_seconds"] = 1.5, 2.5
    assert throughput(final, items_per_step=4)["steps_per_cpu_s"] == pytest.approx(20 / 4.0)


def test_ratio_bound_hand_value():
    # our step: 0.5 GFLOP; ceiling 200 GFLOP/s -> at best 2.5 ms = 400 steps/s; peer does 100 steps/s -> 4x
    assert ratio_bound(0.5e9, 100.0, 200.0) == pytest.approx(4.0)
    assert ratio_bound(None, 100.0, 200.0) is None and ratio_bound(0.5e9, None, 200.0) is None


def test_fmt_cells():
    assert fmt(None) == "-"
    assert fmt(3) == "3"
    assert fmt(0.0) == "0"
    assert fmt(2.34567) == "2.35"
    assert fmt(12345.6) == "12346"
    assert fmt(float("nan")) == "nan"
    assert fmt("a") == "a"


def test_markdown_table_exact():
    rows = [{"a": 1.5, "b": "x|y"}, {"a": None}]
    assert markdown_table(rows, [("a", "A"), ("b", "B")]) == (
        "| A | B |\n|---|---|\n| 1.5 | x\\|y |\n| - | - |")


def test_results_paths_and_writer(tmp_path):
    import datetime as dt

    when = dt.datetime(2026, 1, 2, 3, 4)
    j, m = results_paths(when, tmp_path)
    assert (j.name, m.name) == ("2026-01-02.json", "2026-01-02.md")
    report = {"machine": {"cpu": "cpu0", "cores": 2, "load_average": [1.0]}, "threads": [1], "device": "cpu",
              "ceiling_gflops": 100.0}
    rows = [{"benchmark": "b1", "ours": 2.0, "peer": 1.0, "ratio": 2.0}]
    j1, m1 = write_results(report, rows, directory=tmp_path, when=when, notes=["n1"])
    assert j1 == j
    data = json.loads(j1.read_text())
    assert data["rows"] == rows and data["machine"]["cpu"] == "cpu0"
    text = m1.read_text()
    assert "| b1 |" in text and "- n1" in text and "100 GFLOP/s" in text
    j2, _ = write_results(report, rows, directory=tmp_path, when=when)
    assert j2.name == "2026-01-02-2.json"  # a second run the same day does not overwrite the first


def test_time_abba_alternates_the_variants_and_keeps_their_last_results():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b")}
    times, last = time_abba(fns, rounds=3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3} and all(t >= 0 for v in times.values() for t in v)
    assert last == {"a": 5, "b": 6}   # the return value of each variant's last call


def test_matmul_ceiling_rate_on_a_given_clock():
    ticks = iter(range(1000))  # a clock that advances one second per reading: every timed round takes 1 s

    def clock():
        return float(next(ticks))

    # one product per round (0.3 s wanted, one took 1 s): 2 * 8^3 FLOPs per second, the best of 3 rounds
    assert matmul_gflops(n=8, repeats=3, clock=clock) == pytest.approx(2 * 8**3 / 1e9)
