"""What the stages that train a policy against a frozen reference on fixed data (dpo, kto) share: the config
fields of the reference model, its cached log-probs and the generation evaluation; building the reference; the
reference log-probs computed once and cached on disk; the reward model the evaluation scores with."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.data import BUILTIN
from pipelines.evaluation import EvalArgs
from pipelines.models import ModelArgs, freeze, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.scoring import Reference, batched_logps
from reins.runio import atomic_torch_save, safe_torch_load


@dataclass
class ReferenceEvalArgs:
    """Config fields of the reference model (and its precomputed log-probs) and of the generation evaluation."""

    ref_model: str | None = field(default=None,
                                  metadata={"help": "default: the initial policy (frozen copy / adapter disabled)"})
    precompute_ref_logps: bool = field(default=False,
                                       metadata={"help": "score the reference once before training and cache it"})
    ref_cache_dir: str | None = field(default=None, metadata={"help": "default: output_dir/cache"})
    eval_prompts: str | None = field(default=BUILTIN,
                                     metadata={"help": "prompts for the generation eval (None/\"none\": skip it)"})
    eval: EvalArgs = field(default_factory=EvalArgs,
                           metadata={"help": "the generation eval (num_prompts, seed, temperature, max_new_tokens, "
                                             "batch_size, ...)"})
    reward_model: str | None = field(default=None,
                                     metadata={"help": "a reward stage's model dir: adds eval/reward_model_score"})


def build_reference(cfg, policy, tok) -> Reference:
    """`ref_model` loaded frozen (without the policy's LoRA and revision), else under LoRA the policy with its
    adapter disabled (no second copy), else a frozen copy of the initial policy."""
    if cfg.ref_model:
        ref_args = copy.copy(cfg)
        ref_args.model, ref_args.lora, ref_args.revision = cfg.ref_model, None, None
        return Reference(freeze(load_causal_lm(ref_args, tok, seed=cfg.seed, trainable=False)))
    if cfg.lora is not None:
        return Reference(adapter_host=policy)
    return Reference(freeze(copy.deepcopy(policy)))


def weights_fingerprint(model, data) -> str:
    """A short hash of the model's weights and of `data` (JSON-serialisable token ids): the key of a log-prob
    cache, so a changed reference or changed data is scored again."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(json.dumps(data).encode())
    return h.hexdigest()[:20]


def cached_ref_logps(reference: Reference, prompts: list, sides: dict[str, list], key_data, pad_id: int,
                     path_prefix: Path, *, batch_size: int, is_main: bool, wait) -> tuple[dict, Path]:
    """The reference's sequence log-probs of each prompt with each side's completions ({side: [N]}), computed once
    by the main process and cached at `path_prefix`-<fingerprint of the reference and `key_data`>.pt; every
    process waits (`wait()`) and reads the cache. Returns (log-probs, cache path)."""
    with reference.active() as ref_model:
        key = weights_fingerprint(ref_model, key_data)
        device = next(ref_model.parameters()).device
    path = path_prefix.with_name(f"{path_prefix.name}-{key}.pt")
    if is_main and not path.is_file():
        atomic_torch_save({side: batched_logps(reference, prompts, completions, pad_id, batch_size=batch_size,
                                               device=device)[0] for side, completions in sides.items()}, path)
    wait()
    return safe_torch_load(path), path


def eval_reward_model(cfg, prompts: list, device) -> tuple:
    """(reward model, its tokenizer) that the generation evaluation scores with, or (None, None) without
    `reward_model` or without evaluation prompts."""
    if not (prompts and cfg.reward_model):
        return None, None
    rm_args = ModelArgs(model=cfg.reward_model, dtype=cfg.dtype, tiny=cfg.tiny, trust_remote_code=cfg.trust_remote_code)
    rm_tok = load_tokenizer(rm_args)
    return freeze(load_reward_model(rm_args, rm_tok, require_head=True)).to(device), rm_tok
