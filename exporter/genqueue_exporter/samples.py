"""README samples and folder checks from exported models, with onnxruntime, numpy, tokenizers and Pillow only.

Nothing here imports torch: this is what a worker sees, so a sample made here is a sample the worker
could have made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from genqueue.registry import Manifest, ModelKind, Registry, RegistryError, load_manifest
from genqueue_exporter.errors import ExportError
from genqueue_exporter.ortload import ort_session

DEFAULT_PROMPTS = ("Once upon a time", "The moon", "A kind word")


def _np_dtype(name: str) -> Any:
    return np.float16 if name == "float16" else np.float32


def generate_images(folder: Path, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 [N,C,H,W] in [-1,1] for the given int64 labels."""
    m = load_manifest(folder)
    assert m.image is not None
    sess = ort_session(folder / m.onnx_file)
    z = np.random.default_rng(seed).standard_normal((len(labels), m.image.latent_size))
    feed: dict[str, np.ndarray] = {"z": z.astype(_np_dtype(m.inputs[0].dtype))}
    if m.image.num_classes > 0:
        feed["class_label"] = labels.astype(np.int64)
    return np.asarray(sess.run(["images"], feed)[0], dtype=np.float32)


def digit_grid(folder: Path, per_class: int = 8, seed: int = 0, scale: int = 2, gap: int = 2) -> Any:
    """A PIL image: one row per class, ``per_class`` samples per row, on a dark grey background."""
    from PIL import Image

    m = load_manifest(folder)
    assert m.image is not None
    n_cls = max(1, m.image.num_classes)
    labels = np.repeat(np.arange(n_cls), per_class)
    imgs = generate_images(folder, labels, seed)  # [N,C,H,W]
    h, w = m.image.height, m.image.width
    canvas = np.full((n_cls * (h + gap) + gap, per_class * (w + gap) + gap), 40, dtype=np.uint8)
    pix = ((imgs[:, 0] + 1.0) * 127.5).clip(0, 255).astype(np.uint8)  # first channel: digits are grey
    for i, img in enumerate(pix):
        r, c = divmod(i, per_class)
        canvas[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = img
    out = Image.fromarray(canvas, mode="L")
    return out.resize((out.width * scale, out.height * scale), Image.Resampling.NEAREST)


def generate_text(folder: Path, prompt: str, max_new_tokens: int = 48, temperature: float = 0.0,
                  seed: int = 0) -> str:
    """One row, KV cache fed back each step: the smallest faithful client of the text contract."""
    from tokenizers import Tokenizer

    m = load_manifest(folder)
    assert m.text is not None
    t = m.text
    tok = Tokenizer.from_file(str(folder / t.tokenizer_file))
    sess = ort_session(folder / m.onnx_file)
    kv_dtype = _np_dtype(t.kv_dtype)
    past_names = [s.name for s in m.inputs if s.name.startswith("past_key_values.")]
    out_names = [s.name for s in m.outputs]
    ids = [t.bos_token_id, *tok.encode(prompt).ids]
    past = [np.zeros((1, t.n_head, 0, t.head_dim), dtype=kv_dtype) for _ in past_names]
    rng = np.random.default_rng(seed)
    cur, total, new = ids, 0, []
    for _ in range(max_new_tokens):
        total += len(cur)
        if total > t.context_length:
            break
        feed = {
            "input_ids": np.array([cur], dtype=np.int64),
            "position_ids": np.arange(total - len(cur), total, dtype=np.int64)[None],
            **dict(zip(past_names, past, strict=True)),
        }
        if t.kv_contract == "ragged":  # lengths instead of a mask; present = the cache with the new columns
            feed["seqlens_k"] = np.array([total - 1], np.int32)
            feed["total_sequence_length"] = np.array(total, np.int32)
        else:
            feed["attention_mask"] = np.ones((1, total), dtype=np.int64)
        logits, *kv = sess.run(out_names, feed)
        # The append contract returns only the new columns; the caller owns the cache.
        past = [np.concatenate([p, n], axis=2) for p, n in zip(past, kv, strict=True)] if t.kv_contract == "append" else kv
        last = logits[0, -1].astype(np.float64)
        if temperature <= 0:
            nxt = int(last.argmax())
        else:
            p = np.exp((last - last.max()) / temperature)
            nxt = int(rng.choice(len(p), p=p / p.sum()))
        if nxt == t.eos_token_id:
            break
        new.append(nxt)
        cur = [nxt]
    return prompt + tok.decode(new)


def write_samples(models_dir: Path, out: Path, per_class: int = 8, seed: int = 0,
                  prompts: list[str] | None = None, image_model: str = "dcgan-digits",
                  text_model: str = "tiny-lm") -> None:
    reg = Registry(Path(models_dir))
    if image_model in reg:
        out.parent.mkdir(parents=True, exist_ok=True)
        digit_grid(reg.resolve(image_model).path, per_class=per_class, seed=seed).save(out)
        print(f"wrote {out} ({image_model}, {per_class} per class)")
    else:
        raise ExportError(f"{models_dir}: no {image_model} model (run `genqueue export builtin` first)")
    if text_model in reg:
        folder = reg.resolve(text_model).path
        for prompt in prompts or DEFAULT_PROMPTS:
            print(f"[greedy]   {generate_text(folder, prompt)!r}")
            print(f"[t=0.8]    {generate_text(folder, prompt, temperature=0.8, seed=seed)!r}")
    else:
        raise ExportError(f"{models_dir}: no {text_model} model (run `genqueue export builtin` first)")


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path)))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{path}: not a valid ONNX model ({first})") from e


def _smoke(onnx_path: Path, run: Callable[[], np.ndarray]) -> np.ndarray:
    """The smoke inference; a graph the manifest misdescribes (heads, head size, dtypes, contract) fails here
    inside onnxruntime, which is reported as one line."""
    try:
        return run()
    except Exception as e:
        raise ExportError(f"{onnx_path}: the smoke inference with the manifest's shapes failed: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:300]}") from e


def verify_folder(folder: Path) -> str:
    """Hash, ONNX checker, I/O names against the manifest, and one finite inference; returns a summary."""
    try:
        m: Manifest = load_manifest(Path(folder), check_hash=True)
    except RegistryError as e:
        raise ExportError(str(e)) from e
    onnx_path = Path(folder) / m.onnx_file
    _check_onnx(onnx_path)
    sess = ort_session(onnx_path)
    got = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
    want = ([i.name for i in m.inputs], [o.name for o in m.outputs])
    if got != want:
        raise ExportError(f"{onnx_path}: graph I/O {got} does not match the manifest {want}")
    if m.kind is ModelKind.text:
        assert m.text is not None
        t = m.text
        feed = {
            "input_ids": np.zeros((2, 3), dtype=np.int64),
            "position_ids": np.tile(np.arange(3, dtype=np.int64), (2, 1)),
        }
        if t.kv_contract == "ragged":
            feed["seqlens_k"] = np.full(2, 2, np.int32)
            feed["total_sequence_length"] = np.array(3, np.int32)
        else:
            feed["attention_mask"] = np.ones((2, 3), dtype=np.int64)
        for s in m.inputs:
            if s.name.startswith("past_key_values."):
                feed[s.name] = np.zeros((2, t.n_head, 0, t.head_dim), dtype=_np_dtype(t.kv_dtype))
        if t.tokenizer_file:
            from tokenizers import Tokenizer

            try:
                Tokenizer.from_file(str(Path(folder) / t.tokenizer_file))
            except Exception as e:
                raise ExportError(f"{Path(folder) / t.tokenizer_file}: not a tokenizer: {str(e).splitlines()[0][:200]}") from e
        first = _smoke(onnx_path, lambda: sess.run(None, feed)[0])
        if first.shape[-1] != t.vocab_size:
            raise ExportError(f"{onnx_path}: the graph gives {first.shape[-1]} logits, the manifest says vocab_size={t.vocab_size}")
    else:
        first = _smoke(onnx_path, lambda: generate_images(Path(folder), np.zeros(2, dtype=np.int64)))
    if not np.isfinite(first.astype(np.float32)).all():
        raise ExportError(f"{onnx_path}: smoke inference produced non-finite values")
    return f"{folder}: ok ({m.name}@{m.version}, {m.kind.value}, {m.precision}, sha256 {m.sha256[:12]})"
