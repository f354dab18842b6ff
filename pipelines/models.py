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
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from reins.config import check
from reins.errors import DataError, first_line
from reins.runio import is_main_rank

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

    r: int = field(default=8, metadata={"help": "LoRA rank of the low-rank update"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator: the update is scaled by alpha / r"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA branch's input"})
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"],
                                      metadata={"help": "module names that get adapters (all-linear: every linear "
                                                        "layer)"})

    def validate(self):
        check(self.r >= 1, f"lora.r must be >= 1, got {self.r}")
        check(0.0 <= self.dropout < 1.0, f"lora.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class TinySpec:
    """Architecture of `model: tiny` (a Llama initialised from scratch) and its tokenizer's vocabulary."""

    hidden_size: int = field(default=128, metadata={"help": "width of the tiny model"})
    num_layers: int = field(default=4, metadata={"help": "transformer blocks of the tiny model"})
    num_heads: int = field(default=4, metadata={"help": "attention heads of the tiny model"})
    intermediate_size: int = field(default=384, metadata={"help": "MLP width of the tiny model"})
    vocab_size: int = field(default=1024, metadata={"help": "vocabulary size of the tiny model's tokenizer"})
    max_position_embeddings: int = field(default=256, metadata={"help": "longest sequence the tiny model takes"})

    def validate(self):
        check(self.hidden_size % self.num_heads == 0, "tiny.hidden_size must be a multiple of tiny.num_heads")
        check(self.vocab_size >= 300, f"tiny.vocab_size must be >= 300 (bytes + specials), got {self.vocab_size}")


@dataclass
class ModelArgs:
    """Model options shared by every LM stage (a mixin of the stages' Config dataclasses)."""

    model: str = field(default=TINY, metadata={"help": "path, Hub id, \"tiny\" or \"smollm2-135m-instruct\""})
    dtype: str = field(default="float32", metadata={"help": "float32 | bfloat16 | float16 | float64"})
    lora: LoraSpec | None = field(default=None,
                                  metadata={"help": "LoRA adapters (r, alpha, dropout, target_modules); None: full "
                                                    "fine-tuning"})
    gradient_checkpointing: bool = field(default=False,
                                         metadata={"help": "recompute activations in the backward pass (less memory)"})
    attn_implementation: str | None = field(default=None,
                                            metadata={"help": "eager | sdpa | flash_attention_2 (None: transformers' "
                                                              "default)"})
    tiny: TinySpec = field(default_factory=TinySpec,
                           metadata={"help": "architecture of the locally built model when model=tiny"})
    trust_remote_code: bool = field(default=False,
                                    metadata={"help": "run the Python code a model repo ships (custom model or "
                                                      "tokenizer classes) of every model this stage loads; each is "
                                                      "named in a warning. Only for repos you trust"})
    revision: str | None = field(default=None,
                                 metadata={"help": "Hub revision (branch, tag or commit hash) of `model`, as TRL's "
                                                   "model_revision; pin a commit to load exactly what you checked"})

    def validate_model(self):
        check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check(bool(self.model), "model must name a path, a Hub id, 'tiny' or 'smollm2-135m-instruct'")
        check(self.revision is None or (self.model not in _NOT_PATHS and not _looks_local(self.model)),
              f"revision applies to a Hub id; model {self.model!r} is not one")

    def run_config_view(self, d: dict) -> dict:
        """config.yaml records local model paths as absolute paths (reins.runio's hook, applied to the saved
        and the new config alike), so a recorded run names the same model from any working directory, and a
        config.yaml written with a relative path still matches when re-run from where it was written."""
        return {k: absolute_model_path(v) if k in MODEL_PATH_KEYS and isinstance(v, str) else v
                for k, v in d.items()}


# ----------------------------------------------------------------------------------------- resolution
MODEL_PATH_KEYS = ("model", "ref_model", "reward_model", "value_model")
# Names that are never paths: the built-in models and ppo's value_model choices.
_NOT_PATHS = frozenset({TINY, SMOLLM2, "auto", "reward", "policy", "shared", "", "none"})


def _looks_local(name: str) -> bool:
    """A path, not a Hub id: it exists, is written as a path (`./x`, `/x`, `~/x`, `a/b/c`), or its first
    component is a local directory (`outputs/sft` beside an `outputs/`: a run not written yet, not a Hub repo)."""
    if Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).is_dir()


def absolute_model_path(name: str) -> str:
    """`name` as an absolute path when it is a local path (an existing one, or one written as a path: `./x`,
    `~/x`, `a/b/c`); built-in names and Hub ids (`org/name`) unchanged."""
    if name in _NOT_PATHS or not _looks_local(name):
        return name
    return os.path.abspath(os.path.expanduser(name))


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
        path = os.path.abspath(p)  # absolute: PEFT records it as an adapter's base, read from any directory
        base = _adapter_base(path)
        if base is not None and base != TINY and _looks_local(base) and not Path(base).expanduser().is_dir():
            raise DataError(f"{path}/adapter_config.json: base_model_name_or_path {base} does not exist (a "
                            "relative path is read from the working directory; write the base's absolute path)")
        return path
    if _looks_local(name):
        raise DataError(f"model path {name} does not exist (no such directory; a local path is never a Hub id)")
    return name  # a Hub id; from_pretrained reports if it cannot be reached (offline)


def _adapter_base(path: str) -> str | None:
    cfg = Path(path) / "adapter_config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{cfg}: not a PEFT adapter config (no base_model_name_or_path)") from None


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
    tok.model_max_length = 1 << 30
    return _attach_tiny_template(tok)


# A chat template counts as trained once the model has learnt from text rendered with it: a pretrained model's
# own template, one a run saved after training on conversational data, or this run's conversational data.
# `tiny`'s template is made up when its tokenizer is built: untrained until a run uses it, and only trained
# templates are saved (`save_tokenizer`), so a saved model never advertises a chat format it cannot follow.
_CHAT_TRAINED = "_reins_chat_template_trained"


def _attach_tiny_template(tok):
    tok.chat_template = TINY_CHAT_TEMPLATE
    setattr(tok, _CHAT_TRAINED, False)
    return tok


def _is_tiny_tokenizer(tok) -> bool:
    vocab = tok.get_vocab()
    return tok.eos_token == EOS and tok.pad_token == PAD and all(t in vocab for t in ROLE_TOKENS)


def mark_chat_trained(tok) -> None:
    """Record that this run trains on text rendered with the tokenizer's chat template."""
    setattr(tok, _CHAT_TRAINED, True)


def chat_template_trained(tok) -> bool:
    return bool(getattr(tok, "chat_template", None)) and getattr(tok, _CHAT_TRAINED, True)


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
            tok = AutoTokenizer.from_pretrained(src, **_hub_kwargs(args, src))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load tokenizer '{src}': {first_line(e) or type(e).__name__}") from None
    if not getattr(tok, "chat_template", None) and _is_tiny_tokenizer(tok):
        _attach_tiny_template(tok)  # a tiny model saved without its (untrained) template: usable for chat data
    return ensure_pad_token(tok)


def save_tokenizer(tok, path: str | Path) -> None:
    """`save_pretrained` of the tokenizer, without an untrained chat template, in a form transformers 4.x
    reads too (see `_portable_tokenizer_config`)."""
    template = getattr(tok, "chat_template", None)
    if template and not chat_template_trained(tok):
        tok.chat_template = None
    try:
        tok.save_pretrained(path)
    finally:
        tok.chat_template = template
    _portable_tokenizer_config(Path(path) / "tokenizer_config.json")


def _portable_tokenizer_config(path: Path) -> None:
    """Rewrite transformers 5's tokenizer_config.json in the older spelling, which 5.x reads the same way and
    4.x reads at all: the class `TokenizersBackend` (5.x only) as `PreTrainedTokenizerFast` (a tokenizer.json
    tokenizer in both), and a list of `extra_special_tokens` (4.x wants a dict there) as
    `additional_special_tokens`."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    extra = cfg.get("extra_special_tokens")
    if isinstance(extra, list):
        del cfg["extra_special_tokens"]
        cfg["additional_special_tokens"] = list(dict.fromkeys([*cfg.get("additional_special_tokens", []), *extra]))
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def portable_model_config(path: Path) -> None:
    """Add the transformers 4.x spelling of the rotary settings beside 5.x's `rope_parameters`: 4.x ignores
    `rope_parameters` and would silently run a model with a non-default `rope_theta` (SmolLM2: 100000) at
    its default 10000; 5.x reads both spellings to the same values."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    rope = cfg.get("rope_parameters")
    if not isinstance(rope, dict) or "rope_theta" not in rope or "rope_theta" in cfg:
        return
    cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default" and cfg.get("rope_scaling") is None:
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------- models
def tiny_config(spec: TinySpec, tok):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
                       num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
                       intermediate_size=spec.intermediate_size,
                       max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
                       pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)


def _pretrained_kwargs(args: ModelArgs, name: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"dtype": DTYPES[args.dtype], **_hub_kwargs(args, name)}
    if args.attn_implementation:
        kw["attn_implementation"] = args.attn_implementation
    return kw


def _hub_kwargs(args: ModelArgs, name: str) -> dict[str, Any]:
    """trust_remote_code (announced once per model) and `revision` (for `args.model` itself when a Hub id)."""
    if args.trust_remote_code and name not in _TRUST_WARNED and is_main_rank():
        _TRUST_WARNED.add(name)
        print(f"reins: warning: trust_remote_code is on: the Python code shipped with model '{name}' (if any) "
              "runs in this process", file=sys.stderr, flush=True)
    kw: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
    if getattr(args, "revision", None) and name == args.model and not _looks_local(name):
        kw["revision"] = args.revision
    return kw


_TRUST_WARNED: set[str] = set()  # models announced in this process


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
            return cls.from_pretrained(name, **_pretrained_kwargs(args, name), **extra)
    except (OSError, ValueError, RuntimeError) as e:
        # ValueError: e.g. a repo that needs its own code while trust_remote_code is off; RuntimeError: weights
        # whose shapes do not match the config (a corrupt or hand-edited checkpoint).
        raise DataError(f"cannot load model '{name}': {first_line(e) or type(e).__name__}") from None


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


def save_model(model, tok, path: str | Path, *, state_dict: dict | None = None) -> None:
    """`save_pretrained` of the model (adapter only under LoRA) and of the tokenizer into `path`; `state_dict`:
    the model's full weights gathered from a sharded model (pipelines.sharded), saved instead of its own.

    An adapter's base is recorded as an absolute path (or saved beside it when it has no loadable name, e.g.
    `tiny`), so `PeftModel`/`AutoPeftModelForCausalLM.from_pretrained(path)` works from any directory.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, **({"state_dict": state_dict} if state_dict is not None else {}))
    portable_model_config(path / "config.json")
    save_tokenizer(tok, path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        cfg = json.loads(adapter_cfg.read_text())
        base = cfg.get("base_model_name_or_path") or ""
        if not base or not Path(base).is_dir() and base != TINY and "/" not in base:
            # A base with no loadable name (e.g. `tiny`, built from scratch): save it beside the adapter.
            import copy

            copy.deepcopy(model).unload().save_pretrained(path / "base")  # unload: adapters removed, not merged
            portable_model_config(path / "base" / "config.json")
            save_tokenizer(tok, path / "base")
            cfg["base_model_name_or_path"] = str((path / "base").resolve())
        elif Path(base).is_dir():
            cfg["base_model_name_or_path"] = os.path.abspath(base)
        adapter_cfg.write_text(json.dumps(cfg, indent=2))


def count_parameters(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
