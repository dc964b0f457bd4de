"""Training of the built-in ``tiny-lm``: a byte-level BPE tokenizer and a small GPT on ``corpus.py``'s text.

Everything is seeded and runs on CPU in a few minutes. Documents are joined GPT-2 style, each one preceded
by ``<|endoftext|>``, so a prompt that starts with that token (bos) is exactly what the model saw in training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from genqueue_exporter.corpus import corpus_documents
from genqueue_exporter.gpt import GPT, GPTConfig, preview_generate
from genqueue_exporter.progress import training_bar

EOT = "<|endoftext|>"


@dataclass
class TextTrainSettings:
    # The model's shape; its vocab_size is the tokenizer's target, and the trained tokenizer's real size wins.
    # Dropout: ~25k training tokens seen ~100 times; without it the model memorises them.
    model: GPTConfig = field(default_factory=lambda: GPTConfig(vocab_size=2048, n_embd=128, dropout=0.1))
    train_seq: int = 128  # training windows; shorter than block_size keeps steps cheap
    batch_size: int = 16
    steps: int = 400  # validation loss bottoms out near here (see val_curve); more only memorises
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.1
    val_fraction: float = 0.05
    seed: int = 1234
    eval_every: int = 100  # validation loss shown in the progress bar
    max_docs: int | None = None  # quick mode trains on a slice
    # None = all cores. Quick mode uses one: its matrices are too small to gain from more, and OpenMP
    # spin-waiting makes several multi-threaded builds on a small shared machine 20x slower.
    threads: int | None = None

    @classmethod
    def quick(cls) -> TextTrainSettings:
        return cls(
            model=GPTConfig(vocab_size=320, n_layer=2, n_head=4, n_embd=64, block_size=64), train_seq=32, batch_size=8,
            steps=100, warmup=10, eval_every=0, max_docs=120, threads=1,
        )


@dataclass
class TrainedText:
    model: GPT  # eval mode
    tokenizer: Tokenizer
    eot_id: int
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, object] = field(default_factory=dict)  # recorded in manifest.extra
    samples: list[str] = field(default_factory=list)


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE like GPT-2: any UTF-8 text round-trips, and ``<|endoftext|>`` is id 0."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def _encode_stream(tok: Tokenizer, docs: list[str], eot_id: int) -> torch.Tensor:
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.append(eot_id)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def _eval_loss(model: GPT, stream: torch.Tensor, seq: int, max_windows: int = 64) -> float:
    """Mean next-token loss over non-overlapping windows (deterministic, every token weighted once)."""
    model.eval()
    n = min((len(stream) - 1) // seq, max_windows)
    if n == 0:
        raise ValueError(f"evaluation stream of {len(stream)} tokens is shorter than one window of {seq}")
    x = torch.stack([stream[i * seq : (i + 1) * seq] for i in range(n)])  # [n,seq]
    y = torch.stack([stream[i * seq + 1 : (i + 1) * seq + 1] for i in range(n)])
    losses = [float(model.loss(x[i : i + 16], y[i : i + 16])) * len(x[i : i + 16]) for i in range(0, n, 16)]
    model.train()
    return sum(losses) / n


def train_tiny_lm(settings: TextTrainSettings | None = None, progress: bool = True) -> TrainedText:
    st = settings or TextTrainSettings()
    torch.manual_seed(st.seed)
    torch.set_num_threads(st.threads or os.cpu_count() or 1)
    docs = corpus_documents(seed=st.seed)
    rng = random.Random(st.seed)
    rng.shuffle(docs)
    if st.max_docs is not None:
        docs = docs[: st.max_docs]
    n_val = max(1, round(len(docs) * st.val_fraction))
    val_docs, train_docs = docs[:n_val], docs[n_val:]

    # The tokenizer sees only training documents, so the validation loss is honest about unseen words too.
    tok = train_tokenizer(train_docs, st.model.vocab_size)
    eot_id = tok.token_to_id(EOT)
    assert eot_id is not None, "the BPE trainer always adds the special token"
    train_stream = _encode_stream(tok, train_docs, eot_id)
    val_stream = _encode_stream(tok, val_docs, eot_id)

    cfg = dataclasses.replace(st.model, vocab_size=tok.get_vocab_size())
    model = GPT(cfg)
    model.train()
    # No weight decay on biases, LayerNorm gains or embeddings' tied matrix, as in nanoGPT.
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": st.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=st.lr, betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < st.warmup:
            return st.lr * (step + 1) / st.warmup
        frac = (step - st.warmup) / max(1, st.steps - st.warmup)
        return st.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))  # cosine down to lr/10

    gen = torch.Generator().manual_seed(st.seed)
    seq = st.train_seq
    start = time.monotonic()
    ema: float | None = None
    curve: list[tuple[int, float]] = []  # (step, val_loss): kept in manifest.extra to show over-fitting
    last_val = float("nan")
    bar = training_bar(st.steps, "tiny-lm", progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, len(train_stream) - seq - 1, (st.batch_size,), generator=gen)
        x = torch.stack([train_stream[s : s + seq] for s in starts.tolist()])  # [B,seq]
        y = torch.stack([train_stream[s + 1 : s + seq + 1] for s in starts.tolist()])  # [B,seq]
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = float(loss.detach())
        ema = lv if ema is None else 0.95 * ema + 0.05 * lv
        if st.eval_every and (step + 1) % st.eval_every == 0:
            last_val = _eval_loss(model, val_stream, min(seq, len(val_stream) - 1))
            curve.append((step + 1, round(last_val, 4)))
        bar.set_postfix(loss=f"{ema:.3f}", val=f"{last_val:.3f}" if curve else "-", refresh=False)
    bar.close()
    seconds = time.monotonic() - start

    val_loss = _eval_loss(model, val_stream, min(seq, len(val_stream) - 1))
    train_loss = _eval_loss(model, train_stream, seq)
    model.eval()
    samples = [
        prompt + tok.decode(preview_generate(model, [eot_id, *tok.encode(prompt).ids], 40, eot_id))
        for prompt in ("Once upon a time", "The moon")
    ]
    metrics = {
        "val_loss": round(val_loss, 4),
        "train_loss": round(train_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 2),
        "params": float(model.num_params()),
        "train_tokens": float(len(train_stream)),
        "val_tokens": float(len(val_stream)),
        "train_seconds": round(seconds, 1),
    }
    training = {
        "corpus": "genqueue_exporter/corpus (hand-written, Apache-2.0) + seeded templates",
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "steps": st.steps,
        "batch_size": st.batch_size,
        "train_seq": seq,
        "lr": st.lr,
        "seed": st.seed,
        "dropout": st.model.dropout,
        "val_curve": curve,
        "bos_prepended_in_training": True,
    }
    return TrainedText(model=model, tokenizer=tok, eot_id=eot_id, metrics=metrics, training=training, samples=samples)
