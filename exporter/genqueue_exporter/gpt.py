"""A nanoGPT-style GPT-2 decoder whose ``forward`` is exactly the ONNX text contract.

Shapes: B batch, S new tokens, P cached positions, T = P + S, C = n_embd, H = n_head, D = C // H, V vocab.

``forward(input_ids[B,S], attention_mask[B,T], position_ids[B,S], *past)`` where ``past`` is the flat
sequence ``k0, v0, k1, v1, ...`` of ``[B,H,P,D]`` tensors, and returns ``(logits[B,1,V], *present)`` with
present ``[B,H,T,D]`` = concat(past, new): the "concat" contract. The logits are the last position's only:
prompts are left-padded, so that is every row's last real token, the only one a server samples from (the
whole [B,S,V] would be ~400 MB for 32 prompts of 64 tokens at GPT-2's vocabulary). ``forward_append``
(exported through :class:`AppendKV`) is the "append" contract: it returns only the new tokens' keys and
values ``[B,H,S,D]`` and never copies the past, so the worker can keep its cache in place. The cache is
explicit so that the worker owns it (continuous batching moves rows in and out between steps); one graph
serves prefill (P=0) and decode (S=1).

The parameter names match Hugging Face ``GPT2LMHeadModel`` minus the ``transformer.`` prefix, which keeps
the checkpoint import in ``hf_import`` a plain rename (plus the Conv1D transpose).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256  # context length: the largest P + S the learned positions cover
    layer_norm_epsilon: float = 1e-5
    dropout: float = 0.0  # training only; the exported graph is in eval mode

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gelu_tanh(x: Tensor) -> Tensor:
    # GPT-2 uses the tanh approximation; using the exact erf form would shift HF checkpoints' logits.
    return F.gelu(x, approximate="tanh")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.head_dim
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (y [B,S,C], k_new [B,H,S,D], v_new [B,H,S,D]): only the new tokens' keys and values.

        Attention reads the past and the new keys as two operands instead of concatenating them: a concat
        copies the whole cache on every decode step, which profiled as the largest single op of a CPU step
        (36% at 32 rows x 140 positions). The exported "append" contract returns only the new columns and
        the worker writes them into its cache in place.
        """
        B, S, C = x.shape
        P = past_k.shape[2]
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x [B,S,C]
        q = q.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # [B,H,S,D]
        k = k.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # [B,H,S,D]
        v = v.view(B, S, self.n_head, self.head_dim).transpose(1, 2)  # [B,H,S,D]
        scale = 1.0 / math.sqrt(self.head_dim)
        att_past = q @ past_k.transpose(-2, -1)  # [B,H,S,P]
        att_new = q @ k.transpose(-2, -1)  # [B,H,S,S]
        att = torch.cat([att_past, att_new], dim=-1) * scale  # [B,H,S,T]: scores only, not the cache
        # A finite minimum, not -inf: a pad query whose keys are all masked then gets a uniform (harmless)
        # softmax instead of NaN, and NaN would poison the whole row in fp16 kernels.
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min)  # mask [B,1,S,T] broadcasts over H
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = att[..., :P] @ past_v + att[..., P:] @ v  # [B,H,S,D]
        y = y.transpose(1, 2).reshape(B, S, C)  # [B,S,C]
        return self.resid_dropout(self.c_proj(y)), k, v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(gelu_tanh(self.c_fc(x))))  # [B,S,C]


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, mask: Tensor, past_k: Tensor, past_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, k, v = self.attn(self.ln_1(x), mask, past_k, past_v)  # pre-LN, as in GPT-2
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, k, v


def build_mask(attention_mask: Tensor, seq_len: int) -> Tensor:
    """Boolean [B,1,S,T]: query i (absolute position T-S+i) may see key j iff j <= T-S+i and key j is real.

    Derived from shapes only (no data-dependent control flow) so that it traces into one ONNX graph.
    """
    T = attention_mask.shape[1]
    q_pos = torch.arange(seq_len, device=attention_mask.device) + (T - seq_len)  # [S]
    k_pos = torch.arange(T, device=attention_mask.device)  # [T]
    causal = k_pos.unsqueeze(0) <= q_pos.unsqueeze(1)  # [S,T]
    keep = attention_mask.bool().unsqueeze(1).unsqueeze(2)  # [B,1,1,T]
    return causal.unsqueeze(0).unsqueeze(0) & keep  # [B,1,S,T]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init for the residual projections keeps the residual stream's variance flat in depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        # Tied weights are counted once by parameters().
        return sum(p.numel() for p in self.parameters())

    def empty_past(self, batch: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
        cfg = self.config
        shape = (batch, cfg.n_head, 0, cfg.head_dim)  # [B,H,0,D]: the prefill call
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * cfg.n_layer)]

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor
    ) -> tuple[Tensor, ...]:
        """The "concat" contract: ``(logits [B,1,V], *present)`` with present = concat(past, new) [B,H,T,D]."""
        logits, new = self._run(input_ids, attention_mask, position_ids, past, last_only=True)
        presents = [torch.cat([p, n], dim=2) for p, n in zip(past, new, strict=True)]  # [B,H,T,D]
        return (logits, *presents)

    def forward_append(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor
    ) -> tuple[Tensor, ...]:
        """The "append" contract: ``(logits [B,1,V], *new)`` with new [B,H,S,D]; the caller appends to its cache."""
        logits, new = self._run(input_ids, attention_mask, position_ids, past, last_only=True)
        return (logits, *new)

    def _run(
        self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, past: tuple[Tensor, ...], last_only: bool
    ) -> tuple[Tensor, list[Tensor]]:
        _, S = input_ids.shape
        n_layer = len(self.h)
        if len(past) != 2 * n_layer:
            raise ValueError(f"expected {2 * n_layer} past tensors, got {len(past)}")
        mask = build_mask(attention_mask, S)  # [B,1,S,T]
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # [B,S,C]
        new: list[Tensor] = []
        for i, block in enumerate(self.h):
            x, k, v = block(x, mask, past[2 * i], past[2 * i + 1])  # k, v [B,H,S,D]
            new += [k, v]
        if last_only:
            x = x[:, -1:]  # [B,1,C]: the head for the last position alone (serving); training wants all S
        return self.lm_head(self.ln_f(x)), new  # logits [B,S or 1,V]

    def loss(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Next-token cross-entropy for training on unpadded [B,S] windows (no cache)."""
        B, S = idx.shape
        ones = torch.ones(B, S, dtype=torch.long, device=idx.device)
        pos = torch.arange(S, device=idx.device).unsqueeze(0).expand(B, S)
        logits, _ = self._run(idx, ones, pos, tuple(self.empty_past(B)), last_only=False)  # [B,S,V]
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


class AppendKV(nn.Module):
    """Export wrapper whose ``forward`` is the "append" contract (GPT.forward_append)."""

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        self.gpt = gpt

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        return self.gpt.forward_append(input_ids, attention_mask, position_ids, *past)


def position_ids_from_mask(attention_mask: Tensor, seq_len: int) -> Tensor:
    """Positions for the last ``seq_len`` slots of a left-padded mask: real tokens count from 0, pads get 0.

    This is the convention the parity checks (and the worker) use, so a padded row sees exactly the positions
    it would see alone.
    """
    pos = attention_mask.long().cumsum(-1) - 1  # [B,T]
    pos = pos.clamp(min=0)
    return pos[:, -seq_len:]  # [B,S]


@torch.no_grad()
def preview_generate(
    model: GPT, prompt_ids: list[int], max_new_tokens: int, eos_id: int, temperature: float = 0.0, seed: int = 0
) -> list[int]:
    """Greedy (temperature 0) or sampled single-row decode with the KV cache; for README previews only.

    The serving sampler lives in the worker; this exists so that training can print what it learned.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long)  # [1,S]
    past = model.empty_past(1)
    out: list[int] = []
    pos0 = 0
    cur = ids
    for _ in range(max_new_tokens):
        T = pos0 + cur.shape[1]
        if model.config.block_size < T:
            break
        mask = torch.ones(1, T, dtype=torch.long)
        pos = torch.arange(pos0, T).unsqueeze(0)
        logits, *past = model(cur, mask, pos, *past)
        last = logits[0, -1]  # [V]
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            probs = F.softmax(last / temperature, dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=gen))
        if nxt == eos_id:
            break
        out.append(nxt)
        pos0 = T
        cur = torch.tensor([[nxt]], dtype=torch.long)
    return out
