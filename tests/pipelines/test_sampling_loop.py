"""pipelines.generation's decode loop against transformers' `model.generate`, the path it replaced.

Oracle: `model.generate` on the same left-padded chunks under the same seed (sampling from the processed scores
with `output_scores`), as `generate` called it before. The loop prefills each run of equal prompts once and
drops finished rows from the decode batch; neither may change a token, and the log-probs agree to rounding.
The tiny model's EOS row is turned towards its hidden states so that completions stop at different steps.
"""

from __future__ import annotations

import pytest
import torch

from pipelines.data import encode_prompt
from pipelines.generation import GenerationArgs, generate, truncate_after_eos
from pipelines.scoring import pad
from tests.pipelines.helpers import small_model, small_tok

PROMPTS = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's on Friday and", "I watched it",
           "The hotel"]


@pytest.fixture(scope="module")
def tok():
    return small_tok()


@pytest.fixture(scope="module")
def model(tok):
    """The small model with EOS at a few percent a step, so rows finish at different steps."""
    m = small_model(tok).eval()
    with torch.no_grad():
        ids = torch.tensor([encode_prompt(tok, PROMPTS[0] + " the room was clean")])
        d = m.model(input_ids=ids).last_hidden_state[0].mean(0)
        m.lm_head.weight[tok.eos_token_id] = 3.0 * d / d.norm() ** 2
    return m


@torch.no_grad()
def hf_generate(model, tok, prompt_ids, args: GenerationArgs, seed: int):
    """(completions, finished, log-probs of the sampled tokens) from `model.generate` per chunk."""
    from transformers import GenerationConfig

    sampling = args.temperature > 0
    gcfg = GenerationConfig(do_sample=sampling, temperature=args.temperature if sampling else None,
                            top_p=args.top_p if sampling else None, top_k=0 if sampling else None,
                            max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id,
                            eos_token_id=tok.eos_token_id, return_dict_in_generate=True, output_scores=True)
    comps, fins, lps = [], [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for s in range(0, len(prompt_ids), args.batch_size):
            ids, attn = pad(prompt_ids[s:s + args.batch_size], tok.pad_token_id, side="left")
            out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gcfg)
            new = out.sequences[:, ids.shape[1]:]
            lp = torch.stack([torch.log_softmax(sc, -1).gather(1, new[:, j:j + 1])[:, 0]
                              for j, sc in enumerate(out.scores)], 1)
            for row, r_lp in zip(new.tolist(), lp.tolist()):
                c, f = truncate_after_eos(row, tok.eos_token_id, tok.pad_token_id)
                comps.append(c)
                fins.append(f)
                lps.append(r_lp[:len(c)])
    return comps, fins, lps


CASES = {  # (args, completions per prompt): groups split across chunks; top-p; greedy; all prompts distinct
    "groups-across-chunks": (GenerationArgs(max_new_tokens=20, temperature=1.0, batch_size=6), 4),
    "tempered-top-p": (GenerationArgs(max_new_tokens=20, temperature=0.7, top_p=0.9, batch_size=64), 4),
    "greedy": (GenerationArgs(max_new_tokens=12, temperature=0.0, batch_size=8), 2),
    "distinct-prompts": (GenerationArgs(max_new_tokens=30, temperature=1.0, batch_size=3), 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_tokens_and_logprobs_are_model_generates(tok, model, case):
    args, g = CASES[case]
    prompts = PROMPTS if g > 1 else PROMPTS + [p + " so" for p in PROMPTS]
    pids = [encode_prompt(tok, p) for p in prompts for _ in range(g)]
    assert len({len(p) for p in pids}) >= len(PROMPTS)   # left padding differs per row
    want_ids, want_fin, want_lp = hf_generate(model, tok, pids, args, seed=5)
    got = generate(model, tok, pids, args, seed=5)
    if case != "greedy":   # completions stop at different steps, some run to max_new_tokens
        assert len({len(c) for c in got.completion_ids}) >= 3 and 0 < sum(got.finished) < len(pids)
    assert got.completion_ids == want_ids
    assert got.finished == want_fin
    for a, b in zip(got.logprobs, want_lp):
        assert len(a) == len(b)
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-5)


def test_a_group_is_prefilled_once_and_finished_rows_leave_the_batch(tok, model):
    """The forward passes' batch sizes: one prefill row per distinct prompt of the chunk, then decode steps
    over exactly the rows still unfinished."""
    args = GenerationArgs(max_new_tokens=20, temperature=1.0, batch_size=64)
    pids = [encode_prompt(tok, p) for p in PROMPTS for _ in range(4)]
    rows = []
    hook = model.model.register_forward_pre_hook(lambda mod, a, kw: rows.append(kw["input_ids"].shape),
                                                 with_kwargs=True)
    try:
        got = generate(model, tok, pids, args, seed=5)
    finally:
        hook.remove()
    assert rows[0] == (len(PROMPTS), max(map(len, pids)))
    lengths = [len(c) for c in got.completion_ids]
    steps = max(lengths)
    # decode step t feeds token t-1 of the rows that had not emitted EOS by then
    want = [sum(1 for c, f in zip(got.completion_ids, got.finished) if len(c) > t or (len(c) == t and not f))
            for t in range(1, steps)]
    assert [r[0] for r in rows[1:]] == want and all(r[1] == 1 for r in rows[1:])
    assert want[-1] < len(pids)   # rows did leave


@pytest.mark.parametrize("switch", ["SHARE_PREFILL", "DROP_FINISHED"])
def test_each_saving_switched_off_alone_still_gives_model_generates_tokens(tok, model, monkeypatch, switch):
    """The ablation switches of benchmarks/peers/sampling_vs_generate.py time the same samples."""
    from pipelines import generation

    monkeypatch.setattr(generation, switch, False)
    args = GenerationArgs(max_new_tokens=20, temperature=1.0, batch_size=6)
    pids = [encode_prompt(tok, p) for p in PROMPTS for _ in range(4)]
    want_ids, want_fin, _ = hf_generate(model, tok, pids, args, seed=5)
    got = generate(model, tok, pids, args, seed=5)
    assert got.completion_ids == want_ids and got.finished == want_fin


class _OlderSignature(torch.nn.Module):
    """A causal LM whose forward names its KV cache `past_key_values` (transformers 5.x before `cache`) and drops
    any keyword it does not declare, as a model's **kwargs would: the loop must find the cache keyword."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, cache=past_key_values,
                          use_cache=use_cache)


def test_a_model_taking_past_key_values_gets_its_cache(tok, model):
    from pipelines.generation import _cache_kwarg

    wrapped = _OlderSignature(model)
    assert _cache_kwarg(wrapped) == "past_key_values" and _cache_kwarg(model) == "cache"
    args = GenerationArgs(max_new_tokens=12, temperature=1.0, batch_size=8)
    pids = [encode_prompt(tok, p) for p in PROMPTS for _ in range(2)]
    assert generate(wrapped, tok, pids, args, seed=3).completion_ids == generate(model, tok, pids, args,
                                                                                 seed=3).completion_ids
