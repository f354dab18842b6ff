"""Model and tokenizer loading for the LM stages: a local path or Hub id, `tiny`, or `smollm2-135m-instruct`.

    tok = load_tokenizer(cfg)                     # pad token distinct from EOS, chat template set
    policy = load_causal_lm(cfg, tok)             # dtype, attention implementation, checkpointing, LoRA
    rm = load_reward_model(cfg, tok)              # AutoModelForSequenceClassification, num_labels=1

`tiny` is a small Llama (about 1M parameters with the defaults) initialised from scratch with a byte-level BPE
trained on the built-in task's corpus, so every test and default recipe runs offline in seconds.
A directory holding `adapter_config.json` is a PEFT adapter: its base is loaded and the adapter applied.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from reins.config import check
from reins.errors import DataError

TINY = "tiny"
SMOLLM2 = "smollm2-135m-instruct"
PAD, EOS = "<|pad|>", "<|endoftext|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Each turn is <|role|>content<|endoftext|>; the generation prompt is <|assistant|>.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


@dataclass
class LoraSpec:
    """PEFT LoRA adapter settings (Hu et al. 2021)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self):
        check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TinySpec:
    """Architecture of `model: tiny` (a Llama initialised from scratch) and its tokenizer's vocabulary."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 1024
    max_position_embeddings: int = 256

    def validate(self):
        check(self.hidden_size % self.num_heads == 0, "tiny.hidden_size must be a multiple of tiny.num_heads")
        check(self.vocab_size >= 300, f"tiny.vocab_size must be >= 300 (bytes + specials), got {self.vocab_size}")


@dataclass
class ModelArgs:
    """Model options shared by every LM stage (a mixin of the stages' Config dataclasses)."""

    model: str = TINY                        # path, Hub id, "tiny" or "smollm2-135m-instruct"
    dtype: str = "float32"                   # float32 | bfloat16 | float16 | float64
    lora: LoraSpec | None = None             # None: full fine-tuning
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None   # eager | sdpa | flash_attention_2 (None: transformers' default)
    tiny: TinySpec = field(default_factory=TinySpec)
    trust_remote_code: bool = False          # run a model repo's own Python code: only if a recipe says so

    def validate_model(self):
        check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(bool(self.model), "model must name a path, a Hub id, 'tiny' or 'smollm2-135m-instruct'")


# ----------------------------------------------------------------------------------------- resolution
def model_cache_dir() -> Path:
    """Where `reins fetch-model` puts models: $REINS_MODEL_DIR, else ~/.cache/reins/models."""
    return Path(os.environ.get("REINS_MODEL_DIR", Path.home() / ".cache" / "reins" / "models"))


def resolve_model(name: str) -> str:
    """Map a model name to something `from_pretrained` accepts (or TINY)."""
    if name == TINY:
        return TINY
    if name == SMOLLM2:
        path = model_cache_dir() / SMOLLM2
        if not (path / "config.json").is_file():
            raise DataError(f"model '{SMOLLM2}' is not fetched yet ({path}); run `reins fetch-model {SMOLLM2}`")
        return str(path)
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir() or not ((p / "config.json").is_file() or (p / "adapter_config.json").is_file()):
            raise DataError(f"model path {p} is not a model directory (no config.json or adapter_config.json)")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise DataError(f"model path {name} does not exist")
    return name  # a Hub id; from_pretrained reports if it cannot be reached (offline)


def _adapter_base(path: str) -> str | None:
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text())["base_model_name_or_path"]


# ----------------------------------------------------------------------------------------- tokenizer
@lru_cache(maxsize=4)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from pipelines.task import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, *ROLE_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tokenizer_corpus(seed=0), trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 1024):
    """Byte-level BPE trained on the sentiment corpus: pad `<|pad|>` (id 0) != EOS `<|endoftext|>` (id 1)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
                                  eos_token=EOS, pad_token=PAD,
                                  additional_special_tokens=list(ROLE_TOKENS))
    tok.chat_template = TINY_CHAT_TEMPLATE
    tok.model_max_length = 1 << 30
    return tok


def ensure_pad_token(tok, model=None):
    """Make the pad token exist and differ from EOS (pad == EOS hides where completions end).

    Prefers an existing special token that is not EOS (no new embedding row); otherwise adds `<|pad|>` and
    resizes `model`'s embeddings if a model is given.
    """
    if tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id:
        return tok
    vocab = tok.get_vocab()
    for cand in ("<|endoftext|>", "<pad>", "<|pad|>", "<unk>", "<|finetune_right_pad_id|>"):
        if cand in vocab and vocab[cand] != tok.eos_token_id:
            tok.pad_token = cand
            return tok
    tok.add_special_tokens({"pad_token": PAD})
    if model is not None:
        model.resize_token_embeddings(len(tok))
    return tok


def load_tokenizer(args: ModelArgs):
    """The tokenizer of `args.model` (for an adapter directory: its own copy, else its base's)."""
    name = resolve_model(args.model)
    if name == TINY:
        return build_tiny_tokenizer(args.tiny.vocab_size)
    from transformers import AutoTokenizer

    src = name
    base = _adapter_base(name)
    if base is not None and not (Path(name) / "tokenizer_config.json").is_file():
        src = resolve_model(base)
        if src == TINY:
            return build_tiny_tokenizer(args.tiny.vocab_size)
    try:
        with _hf_errors_only():
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=args.trust_remote_code)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load tokenizer '{src}': {_first_line(e)}") from None
    return ensure_pad_token(tok)


# ----------------------------------------------------------------------------------------- models
def tiny_config(spec: TinySpec, tok):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
                       num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
                       intermediate_size=spec.intermediate_size,
                       max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)


def _pretrained_kwargs(args: ModelArgs) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": DTYPES[args.dtype], "trust_remote_code": args.trust_remote_code}
    if args.attn_implementation:
        kw["attn_implementation"] = args.attn_implementation
    return kw


@contextlib.contextmanager
def _hf_errors_only():
    """transformers' config warnings (e.g. an unknown model type) would precede our one-line error."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _from_pretrained(cls, name: str, args: ModelArgs, **extra):
    try:
        with _hf_errors_only():
            return cls.from_pretrained(name, **_pretrained_kwargs(args), **extra)
    except (OSError, ValueError, RuntimeError) as e:
        # ValueError: e.g. a repo that needs its own code while trust_remote_code is off; RuntimeError: weights
        # whose shapes do not match the config (a corrupt or hand-edited checkpoint).
        raise DataError(f"cannot load model '{name}': {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _finish(model, tok, args: ModelArgs, *, seed: int, task_type: str, trainable: bool = True):
    """Set pad ids, checkpointing and (optionally) a fresh LoRA adapter."""
    model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tok.pad_token_id
        model.generation_config.eos_token_id = tok.eos_token_id
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    if args.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); non-reentrant works with frozen inputs (LoRA).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.lora is not None and trainable and not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        target = args.lora.target_modules
        lcfg = LoraConfig(r=args.lora.r, lora_alpha=args.lora.alpha, lora_dropout=args.lora.dropout,
                          target_modules=target[0] if target == ["all-linear"] else target,
                          task_type=task_type, modules_to_save=["score"] if task_type == "SEQ_CLS" else None)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model = get_peft_model(model, lcfg)
    return model


def load_causal_lm(args: ModelArgs, tok, *, seed: int = 0, trainable: bool = True):
    """The policy: `tiny` (seeded init), an HF directory / Hub id, or a PEFT adapter directory on its base."""
    from transformers import AutoModelForCausalLM

    name = resolve_model(args.model)
    if name == TINY:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cfg = tiny_config(args.tiny, tok)
            if args.attn_implementation:
                cfg._attn_implementation = args.attn_implementation
            model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[args.dtype])
    else:
        base = _adapter_base(name)
        if base is not None:
            from peft import PeftModel

            base_name = resolve_model(base)
            inner = ModelArgs(model=base_name, dtype=args.dtype, attn_implementation=args.attn_implementation,
                              tiny=args.tiny, trust_remote_code=args.trust_remote_code)
            model = load_causal_lm(inner, tok, seed=seed, trainable=False)
            model = PeftModel.from_pretrained(model, name, is_trainable=trainable)
        else:
            model = _from_pretrained(AutoModelForCausalLM, name, args)
    return _finish(model, tok, args, seed=seed, task_type="CAUSAL_LM", trainable=trainable)


def load_reward_model(args: ModelArgs, tok, *, seed: int = 0, trainable: bool = True, require_head: bool = False):
    """A scalar-head sequence classifier (num_labels=1) initialised from `args.model` (e.g. the SFT model).

    The head `score` is freshly initialised (seeded) when the checkpoint is a causal LM; a directory saved by
    the reward stage loads with its trained head. Under LoRA the head is trained too (`modules_to_save`).
    `require_head`: the model is used to score (a reward model, a value model given by path), so a checkpoint
    without a trained head (a plain causal LM, `tiny`) is refused rather than scored by a random head.
    """
    from transformers import AutoModelForSequenceClassification

    name = resolve_model(args.model)
    if require_head and name == TINY:
        raise DataError("model 'tiny' is built from scratch and has no trained scalar head; give the output of "
                        "`reins reward` (or any sequence-classification model directory)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == TINY:
            cfg = tiny_config(args.tiny, tok)
            cfg.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(cfg, dtype=DTYPES[args.dtype])
        else:
            if _adapter_base(name) is not None:
                raise DataError(f"reward model {name}: merge the adapter first (adapter reward models unsupported)")
            from transformers.utils import logging as hf_logging

            # The fresh `score` head is expected when starting from a causal LM: skip the MISSING-key report.
            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                model, info = _from_pretrained(AutoModelForSequenceClassification, name, args, num_labels=1,
                                               output_loading_info=True)
            finally:
                hf_logging.set_verbosity(level)
            missing = sorted(info.get("missing_keys") or [])
            if require_head and missing:
                kind = _architectures(name)
                raise DataError(f"{name} has no trained scalar head (its checkpoint lacks {missing[0]}"
                                f"{f'; it is a {kind}' if kind else ''}): scoring with a randomly initialised "
                                "head is refused; give the output of `reins reward` or a sequence-classification "
                                "model directory")
    return _finish(model, tok, args, seed=seed, task_type="SEQ_CLS", trainable=trainable)


def _architectures(path: str) -> str:
    """The `architectures` a model directory's config.json names ('' when it names none)."""
    try:
        return ", ".join(json.loads((Path(path) / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        return ""


def freeze(model):
    """A frozen eval-mode model (reference policies, reward models used for scoring)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (all of them for full fine-tuning; adapters and heads under LoRA)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise DataError(f"checkpoint does not match the model (missing {missing[0]})")
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


def save_model(model, tok, path: str | Path) -> None:
    """`save_pretrained` of the model (adapter only under LoRA) and of the tokenizer into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        cfg = json.loads(adapter_cfg.read_text())
        base = cfg.get("base_model_name_or_path") or ""
        if not base or not Path(base).is_dir() and base != TINY and "/" not in base:
            # A base with no loadable name (e.g. `tiny`, built from scratch): save it beside the adapter.
            import copy

            copy.deepcopy(model).unload().save_pretrained(path / "base")  # unload: adapters removed, not merged
            tok.save_pretrained(path / "base")
            cfg["base_model_name_or_path"] = str((path / "base").resolve())
            adapter_cfg.write_text(json.dumps(cfg, indent=2))


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
