"""The four models of RLHF-PPO and how they are wired: policy, value, reference, reward model.

- policy: a causal LM (full fine-tuning or LoRA), from `model` (the SFT model);
- reference: a frozen copy of the initial policy, `ref_model`, or (under LoRA) the policy with its adapter
  disabled (no second copy of the weights);
- reward model: a frozen sequence classifier (`reward_model`: a `reward` stage's output dir or any
  AutoModelForSequenceClassification directory); when its tokenizer differs from the policy's, texts are
  decoded and re-tokenised for scoring (TRL never supported this: trl#1674, #1979, #3595);
- value model: a separate scalar-head network initialised from the reward model (N+ detail 7, the default
  when the tokenizers match) or from the policy with a fresh head, or a scalar head sharing the policy trunk.

`ActorCritic` holds the trainable policy and value function in ONE module, so one `accelerator.prepare` (one
DDP wrapper) synchronises both, and one forward returns the response-token logits and values.
Dropout is disabled in every model (N+ detail 4): the log-probs of the rollout and of the first PPO
minibatch must come from the same function for the ratio to start at 1.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from pipelines.models import ModelArgs, freeze, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.scoring import Reference, last_logits_kwargs, position_ids
from reins.errors import ConfigError, DataError


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability to 0 (modules and the config's attention dropout)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "attention_dropout"):
            cfg.attention_dropout = 0.0
    return model


def _bare(model):
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in its modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _scalar_head(model) -> tuple[nn.Module, nn.Module]:
    """(trunk, head) of a sequence-classification model whose head is applied per token (Llama, GPT-2, ...)."""
    bare = _bare(model)
    trunk = getattr(bare, bare.base_model_prefix, None)
    head = getattr(bare, "score", None)
    if trunk is None or head is None:
        raise ConfigError(f"value model {type(bare).__name__} has no per-token `score` head; use value_model=policy "
                          "or value_model=shared")
    return trunk, head


def resolve_reward_dir(path: str) -> str:
    """A reward stage's output dir holds its model in `model/`; any other path is used as it is."""
    p = Path(path).expanduser()
    if (p / "model" / "config.json").is_file() and not (p / "config.json").is_file():
        return str(p / "model")
    return str(p)


def same_tokenizer(a, b) -> bool:
    """True when both tokenizers map every token to the same id (ids can be passed between the models)."""
    return (a is b) or (a.pad_token_id == b.pad_token_id and a.eos_token_id == b.eos_token_id
                        and a.get_vocab() == b.get_vocab())


class ActorCritic(nn.Module):
    """Policy and value function in one module; `forward` scores the last R tokens of a batch.

    Batches are laid out by `pipelines.rollout.rollout_batch`: left-padded prompts then right-padded
    responses, the response occupying the last R columns. For response token j (column P + j):
    logits[:, j] predict it from column P + j - 1, and values[:, j] = V(prompt, response[:j]) is the value of
    the state in which it was generated, read at the same column (TRL PPOv2 / N+ convention).
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None = None, value_head: nn.Module | None = None):
        super().__init__()
        if (critic is None) == (value_head is None):
            raise ValueError("ActorCritic needs exactly one of critic / value_head")
        self.policy, self.critic, self.value_head = policy, critic, value_head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_length: int):
        R = response_length
        pos = position_ids(attention_mask)
        shared = self.value_head is not None
        out = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=False,
                          output_hidden_states=shared, **last_logits_kwargs(self.policy, R + 1))
        logits = out.logits[:, -R - 1:-1]
        if shared:
            hidden = out.hidden_states[-1][:, -R - 1:-1]
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        else:
            trunk, head = _scalar_head(self.critic)
            h = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                      use_cache=False).last_hidden_state[:, -R - 1:-1]
            values = head(h).squeeze(-1)
        return logits, values

    def policy_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.policy.parameters() if p.requires_grad]

    def value_parameters(self) -> list[nn.Parameter]:
        mod = self.critic if self.critic is not None else self.value_head
        return [p for p in mod.parameters() if p.requires_grad]


def _args_for(cfg: ModelArgs, model: str, *, trainable: bool) -> ModelArgs:
    """The config's model options for another model; frozen models get neither LoRA nor checkpointing."""
    a = copy.copy(cfg)
    a.model = model
    if model != cfg.model:
        a.revision = None  # `revision` pins the policy's model only
    if not trainable:
        a.lora, a.gradient_checkpointing = None, False
    return a


def load_reward(cfg, policy_tok):
    """(frozen reward model, its tokenizer, whether it shares the policy's tokenizer)."""
    if not cfg.reward_model:
        raise ConfigError("reward_model must name a reward stage output dir or a sequence-classification model")
    path = resolve_reward_dir(cfg.reward_model)
    if not Path(path).is_dir():
        raise DataError(f"reward_model {cfg.reward_model} is not a directory")
    rm_args = _args_for(cfg, path, trainable=False)
    rm_tok = load_tokenizer(rm_args)
    rm = freeze(disable_dropout(load_reward_model(rm_args, rm_tok, seed=cfg.seed, trainable=False,
                                                  require_head=True)))
    same = same_tokenizer(policy_tok, rm_tok)
    return rm, (policy_tok if same else rm_tok), same


def build_policy(cfg, tok, *, with_reference: bool = True) -> tuple[nn.Module, Reference | None]:
    """(trainable policy without dropout, its Reference or None): `ref_model` when set, else (under LoRA) the
    policy with its adapter disabled, else a frozen copy of the initial policy."""
    policy = disable_dropout(load_causal_lm(cfg, tok, seed=cfg.seed))
    if not with_reference:
        return policy, None
    if cfg.ref_model:
        reference = Reference(freeze(disable_dropout(
            load_causal_lm(_args_for(cfg, cfg.ref_model, trainable=False), tok, seed=cfg.seed, trainable=False))))
    elif cfg.lora is not None:
        reference = Reference(adapter_host=policy)
    else:
        reference = Reference(freeze(copy.deepcopy(policy)))   # the initial policy, frozen
    return policy, reference


def build_models(cfg, tok, *, same_tok: bool, reward_path: str):
    """(ActorCritic, Reference) for the config's `value_model` and `ref_model` choices.

    value_model: `auto` (the reward model if it shares the policy's tokenizer, else `policy`), `reward`,
    `policy` (the policy's trunk, a separate copy, with a fresh seeded scalar head), `shared` (a fresh head on
    the policy's own last hidden state), or a path to any scalar-head sequence classifier.
    """
    policy, reference = build_policy(cfg, tok)
    choice = cfg.value_model
    if choice == "auto":
        choice = "reward" if same_tok else "policy"
    if choice == "shared":
        hidden = policy.config.hidden_size if not hasattr(policy, "get_base_model") else \
            policy.get_base_model().config.hidden_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 2)
            head = nn.Linear(hidden, 1)
            # N+ detail 5: a small normal init, bias 0, so initial values are near 0.
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
        return ActorCritic(policy, value_head=head.to(next(policy.parameters()).dtype)), reference
    if choice == "reward":
        if not same_tok:
            raise ConfigError("value_model=reward needs the reward model to share the policy's tokenizer; "
                              "use value_model=policy")
        src = reward_path
    elif choice == "policy":
        src = cfg.model
    else:
        src = resolve_reward_dir(choice)
        if not Path(src).is_dir():
            raise DataError(f"value_model {choice} is not a directory (nor auto, reward, policy or shared)")
    # A value model given by path must bring its trained head; `policy` starts a fresh one by design.
    critic = disable_dropout(load_reward_model(_args_for(cfg, src, trainable=True), tok, seed=cfg.seed + 3,
                                               require_head=choice != "policy"))
    _scalar_head(critic)  # fail early on a head that cannot be applied per token
    return ActorCritic(policy, critic=critic), reference
