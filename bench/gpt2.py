"""A text model of realistic size for ``make bench``: GPT-2 small's shape (12 layers, d768, 12 heads, vocab
50257, context 1024, 124M parameters) with random weights, built here and exported through the exporter's
Hugging Face import path (``genqueue export hf``), the way a user brings their own checkpoint. Nothing is
downloaded: the config comes from ``transformers.GPT2Config``, the weights from its random initialisation,
and the tokenizer is a byte-level BPE trained on the bench prompts (the model's extra ids decode to nothing,
which changes no timing: every job generates its tokens whatever they spell).

Why: on tiny-lm a batch-1 step already runs near this CPU's GEMM rate, so batching can barely show; a
124M-parameter model is bound by memory bandwidth at batch 1, as real deployments are.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from genqueue.registry import ModelEntry, Registry

NAME = "gpt2-bench"
SHAPE: dict[str, Any] = {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "n_positions": 1024}
TOKENIZER_VOCAB = 2048


def write_hf_folder(folder: Path, seed: int = 0) -> Path:
    """config.json, model.safetensors and tokenizer.json of a random GPT-2-small-shaped model."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    from bench.workload import PROMPTS

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    cfg = GPT2Config(**SHAPE, bos_token_id=50256, eos_token_id=50256)
    GPT2LMHeadModel(cfg).eval().save_pretrained(str(folder), safe_serialization=True)
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(PROMPTS) * 4, vocab_size=TOKENIZER_VOCAB, special_tokens=["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    return folder


def build(work_dir: Path, models_dir: Path) -> ModelEntry:
    """The exported model in ``models_dir`` (built once; an existing valid folder is reused)."""
    reg = Registry(models_dir)
    if NAME in reg:
        return reg.resolve(NAME)
    src = write_hf_folder(work_dir / "gpt2-hf")
    subprocess.run([sys.executable, "-m", "genqueue.cli", "export", "hf", str(src), "--name", NAME,
                    "--models-dir", str(models_dir), "--no-progress"], check=True)
    return Registry(models_dir).resolve(NAME)
