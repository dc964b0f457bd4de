"""Bring-your-own weights from local files only: Hugging Face GPT-2 folders and DCGAN state dicts.

Nothing here touches the network. A GPT-2 checkpoint maps onto ``gpt.GPT`` by name; HF stores attention
and MLP weights as ``Conv1D`` ([in, out]), the transpose of ``nn.Linear`` ([out, in]).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import torch

from genqueue_exporter.dcgan import DCGANConfig, Generator
from genqueue_exporter.errors import ExportError
from genqueue_exporter.gpt import GPT, GPTConfig

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers (the causal-mask tables) and the tied head that HF checkpoints may carry; no information for us.
_IGNORED = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")
_TANH_GELUS = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"}  # all the tanh approximation GPT uses


@dataclass
class ImportedGPT:
    model: GPT
    tokenizer_json: str
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    hf_config: dict[str, Any]



def _check_weight(source: object, key: str, ours_key: str, value: Any, ours: dict[str, Any], kind: str) -> None:
    """One line naming the weight when a file's tensor has no place in our model or the wrong shape."""
    if ours_key not in ours:
        raise ExportError(f"{source}: unexpected weight {key!r} (not {kind}?)")
    if tuple(value.shape) != tuple(ours[ours_key].shape):
        raise ExportError(
            f"{source}: config does not match weights: {key} has shape {tuple(value.shape)}, "
            f"config implies {tuple(ours[ours_key].shape)}"
        )

def _read_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ExportError(f"{path} is missing") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return raw


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a torch pickle, loaded with ``weights_only`` (never arbitrary code)."""
    if not path.is_file():
        raise ExportError(f"{path} is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: unreadable weights ({first})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ExportError(f"{path}: expected a state dict of tensors")
    return sd


def _token_id(value: Any) -> TypeGuard[int]:
    """An id the config states as one integer (not a list, not JSON's true)."""
    return isinstance(value, int) and not isinstance(value, bool)


def gpt_config_from_hf(cfg: dict[str, Any], path: Path) -> GPTConfig:
    model_type = cfg.get("model_type")
    if model_type != "gpt2":
        raise ExportError(f"{path}: unsupported architecture model_type={model_type!r} (only 'gpt2' is supported)")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise ExportError(f"{path}: unsupported activation_function={act!r} (GPT-2's tanh GELU expected)")
    # Options that change the math of GPT-2 attention; we refuse rather than export a silently wrong model.
    for key, expected in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("reorder_and_upcast_attn", False), ("add_cross_attention", False)):
        if cfg.get(key, expected) != expected:
            raise ExportError(f"{path}: unsupported {key}={cfg[key]!r}")
    def count(key: str, value: Any, least: int = 1) -> int:
        # JSON's true and 2.5 would pass int(); a config that says them is not one we understand.
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ExportError(f"{path}: {key} must be an integer >= {least}, not {value!r}")
        return value

    try:
        vocab, n_layer, n_head, n_embd = (count(k, cfg[k]) for k in ("vocab_size", "n_layer", "n_head", "n_embd"))
    except KeyError as e:
        raise ExportError(f"{path}: missing key {e.args[0]!r}") from e
    block = count("n_positions", cfg.get("n_positions", cfg.get("n_ctx", 1024)), least=2)
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 < eps < 1:
        raise ExportError(f"{path}: layer_norm_epsilon must be a number in (0, 1), not {eps!r}")
    if n_embd % n_head:
        raise ExportError(f"{path}: n_embd={n_embd} is not a multiple of n_head={n_head}")
    n_inner = cfg.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ExportError(f"{path}: unsupported n_inner={n_inner!r} (must be 4 * n_embd)")
    # Checked before any tensor is allocated: a single-file ONNX holds at most 2 GB of fp32 weights.
    params = vocab * n_embd + block * n_embd + n_layer * 12 * n_embd * n_embd
    if params * 4 >= 2**31:
        raise ExportError(f"{path}: ~{params / 1e6:.0f}M parameters is over the 2 GB a single-file ONNX can hold")
    return GPTConfig(vocab_size=vocab, n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block,
                     layer_norm_epsilon=float(eps))


def map_hf_gpt2_weights(sd: dict[str, torch.Tensor], model: GPT, source: str) -> None:
    """Copy a GPT2Model / GPT2LMHeadModel state dict into ``model``; shape or key mismatches raise."""
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key.removeprefix("transformer.")
        if _IGNORED.match(k):
            continue
        if k.endswith(_CONV1D):
            value = value.t()
        _check_weight(source, key, k, value, ours, "a GPT-2 checkpoint")
        mapped[k] = value.to(torch.float32).contiguous()
    # lm_head is tied to wte in our module, so it never needs its own entry.
    missing = sorted(k for k in ours if k not in mapped and k != "lm_head.weight")
    if missing:
        raise ExportError(f"{source}: config does not match weights: missing {missing[0]}" +
                          (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    lm = sd.get("lm_head.weight")
    if lm is not None and not torch.equal(lm.float(), mapped["wte.weight"]):
        raise ExportError(f"{source}: lm_head.weight is not tied to wte.weight; untied heads are not supported")
    model.load_state_dict(mapped, strict=False)


def _hf_tokenizer_json(folder: Path) -> str:
    tj = folder / "tokenizer.json"
    if tj.is_file():
        from tokenizers import Tokenizer

        try:
            return Tokenizer.from_file(str(tj)).to_str()  # round trip = validation
        except Exception as e:
            raise ExportError(f"{tj}: unreadable tokenizer ({e})") from e
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        from tokenizers import ByteLevelBPETokenizer

        try:
            tok = ByteLevelBPETokenizer(str(vocab), str(merges), add_prefix_space=False)
        except Exception as e:
            raise ExportError(f"{vocab}/{merges.name}: unreadable BPE files ({e})") from e
        eot = "<|endoftext|>"
        if tok.token_to_id(eot) is not None:
            tok.add_special_tokens([eot])  # keep it atomic, as GPT-2's tokenizer does
        return tok._tokenizer.to_str()
    raise ExportError(f"{folder}: no tokenizer.json and no vocab.json + merges.txt")


def load_hf_gpt2(folder: Path) -> ImportedGPT:
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(f"{folder}: not a directory")
    cfg_path = folder / "config.json"
    hf_cfg = _read_json(cfg_path)
    gcfg = gpt_config_from_hf(hf_cfg, cfg_path)
    for candidate in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / candidate
        if weights.is_file():
            break
    else:
        raise ExportError(f"{folder}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)")
    sd = load_state_dict_file(weights)
    model = GPT(gcfg)
    map_hf_gpt2_weights(sd, model, str(weights))
    tok_json = _hf_tokenizer_json(folder)
    from tokenizers import Tokenizer

    tok_vocab = Tokenizer.from_str(tok_json).get_vocab_size()
    if tok_vocab > gcfg.vocab_size:
        raise ExportError(f"{folder}: tokenizer has {tok_vocab} tokens but the model only {gcfg.vocab_size}")
    eos = hf_cfg.get("eos_token_id")
    if not _token_id(eos):
        eos = Tokenizer.from_str(tok_json).token_to_id("<|endoftext|>")
    if not isinstance(eos, int):
        raise ExportError(f"{cfg_path}: no eos_token_id and the tokenizer has no <|endoftext|>")
    eos_id: int = eos
    bos = hf_cfg.get("bos_token_id")
    pad = hf_cfg.get("pad_token_id")
    # GPT-2 has no pad token; padded positions are masked out, so reusing eos is harmless.
    ids: dict[str, int] = {"eos_token_id": eos_id, "bos_token_id": bos if _token_id(bos) else eos_id,
                           "pad_token_id": pad if _token_id(pad) else eos_id}
    for key, value in ids.items():  # the worker feeds these ids to the graph: one outside it fails at start
        if not 0 <= value < gcfg.vocab_size:
            raise ExportError(f"{cfg_path}: {key}={value!r} is not a token id of the model (0..{gcfg.vocab_size - 1})")
    return ImportedGPT(
        model=model.eval(), tokenizer_json=tok_json, eos_token_id=ids["eos_token_id"],
        bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"], hf_config=hf_cfg,
    )


def load_gan_state_dict(weights: Path, config: Path) -> tuple[Generator, DCGANConfig]:
    """A generator state dict for the built-in DCGAN architecture plus its JSON config (DCGANConfig fields)."""
    raw = _read_json(Path(config))
    try:
        cfg = DCGANConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise ExportError(f"{config}: {e}") from e
    sd = load_state_dict_file(Path(weights))
    gen = Generator(cfg)
    ours = gen.state_dict()
    sd = {k.removeprefix("generator."): v for k, v in sd.items()}
    for k, v in sd.items():
        _check_weight(weights, k, k, v, ours, "a genqueue DCGAN generator")
    missing = sorted(set(ours) - set(sd))
    if missing:
        raise ExportError(f"{weights}: config does not match weights: missing {missing[0]}")
    gen.load_state_dict(sd)
    return gen.eval(), cfg
