"""The step-speed comparison's own code paths on the tiny model (no timing): the rows a size expands to, the
pre-tokenised data both sides read, our side's SFT loss against a float64 oracle, the adapter both sides get,
and the driver's options for the SmolLM2 rows."""

import json

import pytest
import torch
import yaml

from benchmarks import run_all
from benchmarks.common import REPO, results_paths
from benchmarks.peers import dpo_rm_vs_trl as bench

TINY_ROWS = {"models": {"tiny": (1, 2)}, "tasks": ["sft", "rm", "dpo"], "finetune": ["lora", "full"], "batch": 3,
             "pairs": 8, "warmup": 1, "target": 1.0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench")
    old = bench.SIZES.get("test")
    bench.SIZES["test"] = TINY_ROWS
    try:
        yield bench.prepare("test", work, 1, "cpu"), work
    finally:
        bench.SIZES.pop("test") if old is None else bench.SIZES.update(test=old)


def test_a_size_with_finetune_modes_gives_one_row_per_task_and_mode(prepared):
    cmps, _ = prepared
    assert [c["spec"]["name"] for c in cmps] == [f"{t}_vs_trl/tiny/{f}" for t in ("sft", "rm", "dpo")
                                                 for f in ("lora", "full")]
    assert [c["unit"] for c in cmps] == ["examples/s"] * 2 + ["pairs/s"] * 4
    assert {c["target"] for c in cmps} == {1.0} and {c["spec"]["batch"] for c in cmps} == {3}
    # the adapter is recipes/dpo/smollm2-135m-lora.yaml's on the LoRA rows, none on the full rows
    recipe = yaml.safe_load((REPO / "recipes" / "dpo" / "smollm2-135m-lora.yaml").read_text())["lora"]
    assert [c["spec"]["lora"] for c in cmps[::2]] == [recipe] * 3
    assert [c["spec"]["lora"] for c in cmps[1::2]] == [None] * 3


def test_the_shared_data_and_the_sft_view_of_it(prepared):
    cmps, _ = prepared
    pairs = json.loads(open(cmps[0]["spec"]["data"]).read())
    assert len({c["spec"]["data"] for c in cmps}) == 1 and len(pairs) >= 3
    assert all(p["prompt_ids"] and p["chosen_ids"] != p["rejected_ids"] for p in pairs)
    sft = bench.sft_examples(pairs)
    assert sft == [{"prompt_ids": p["prompt_ids"], "completion_ids": p["chosen_ids"]} for p in pairs]


def test_our_sft_setup_trains_lora_only_and_its_loss_is_the_completion_nll(prepared):
    cmps, _ = prepared
    cfg, _, model, examples, loss_fn, kw = bench._ours_setup(cmps[0]["spec"])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = examples[:3]
    n_tok = sum(kw["count_fn"](e) for e in batch)
    loss, _ = loss_fn(model, batch, float(n_tok))
    # oracle: each example alone, full logits in float64, -log p of every completion token given what precedes
    nll = 0.0
    with torch.no_grad():
        for e in batch:
            ids = torch.tensor([e["prompt_ids"] + e["completion_ids"]])
            lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            p = len(e["prompt_ids"])
            nll -= sum(lp[t - 1, ids[0, t]].item() for t in range(p, ids.shape[1]))
    assert n_tok == sum(len(e["completion_ids"]) for e in batch)
    assert loss.item() == pytest.approx(nll / n_tok, rel=1e-5)


@pytest.mark.parametrize("task", ["sft", "rm"])
def test_trl_gets_the_adapter_reins_builds(prepared, task):
    """The peer's LoraConfig adapts exactly the modules reins adapts (and trains the same scalar head)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cmps, _ = prepared
    spec = next(c["spec"] for c in cmps if c["spec"]["task"] == task and c["spec"]["lora"])
    model = bench._ours_setup(spec)[2]
    ours = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    cls = AutoModelForSequenceClassification if task == "rm" else AutoModelForCausalLM
    base = cls.from_pretrained(spec["model_dir"], **({"num_labels": 1} if task == "rm" else {}))
    peer = get_peft_model(base, bench._trl_lora(spec))
    assert {n: p.shape for n, p in peer.named_parameters() if p.requires_grad} == ours
    assert bench._trl_lora({**spec, "lora": None}) is None


def test_driver_takes_the_135m_size_and_a_results_suffix(tmp_path):
    import datetime as dt

    args, names = run_all._parse_args(["--size", "135m", "--only", "dpo_rm", "--suffix=-steps-135m"])
    assert (args.size, names, args.suffix) == ("135m", ["dpo_rm"], "-steps-135m")
    j, m = results_paths(dt.datetime(2026, 12, 7), tmp_path, "-steps-135m")
    assert (j.name, m.name) == ("2026-12-07-steps-135m.json", "2026-12-07-steps-135m.md")
    rows = bench.SIZES["135m"]
    assert rows["tasks"] == ["sft", "rm", "dpo"] and rows["finetune"] == ["lora", "full"]
    assert bench.MODELS["smollm2"].name == "smollm2-135m-instruct"
