"""Exporter tests: real training (quick mode), real ONNX export, real onnxruntime; nothing mocked.

Needs the ``export`` extra (torch); without it the whole module is skipped with that reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the exporter needs torch: pip install -e '.[export]'")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
import numpy as np  # noqa: E402

from genqueue.registry import Registry, load_manifest  # noqa: E402
from genqueue_exporter.cli import run  # noqa: E402
from genqueue_exporter.dcgan import DCGANConfig, Generator  # noqa: E402
from genqueue_exporter.errors import ExportError  # noqa: E402
from genqueue_exporter.gpt import GPT, GPTConfig, position_ids_from_mask  # noqa: E402
from genqueue_exporter.hf_import import _hf_tokenizer_json, load_hf_gpt2  # noqa: E402
from genqueue_exporter.train_text import train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


# --- helpers ---------------------------------------------------------------------------------------------


def session(folder: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


def ort_text(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray,
             past: list[np.ndarray]) -> list[np.ndarray]:
    """(logits, *cache after the call): an append graph's new columns are appended to ``past`` here, as the
    worker's cache does, so that callers see the same thing from either contract."""
    names = [i.name for i in sess.get_inputs()]
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **dict(zip(names[3:], past, strict=True))}
    logits, *kv = sess.run(None, feed)
    if sess.get_outputs()[1].name.startswith("new_key_values."):
        kv = [np.concatenate([p, n], axis=2) for p, n in zip(past, kv, strict=True)]
    return [logits, *kv]


def empty_past_np(m_text, batch: int) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    return [np.zeros((batch, m_text.n_head, 0, m_text.head_dim), np.float32) for _ in range(2 * m_text.n_layer)]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("genqueue export: error:")]
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]


def no_leftovers(models_dir: Path) -> None:
    if models_dir.is_dir():
        assert not [p.name for p in models_dir.iterdir() if p.name.startswith(".")], list(models_dir.iterdir())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both built-in models in quick mode, built once through the CLI."""
    models = tmp_path_factory.mktemp("models")
    assert run(["builtin", "--models-dir", str(models), "--quick", "--no-progress"]) == 0
    return models


# --- the torch module ------------------------------------------------------------------------------------


def small_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=32)).eval()
    for p in model.parameters():  # bigger weights than the 0.02 init, so that mistakes show in the logits
        torch.nn.init.normal_(p, std=0.3)
    return model


def all_logits(model: GPT, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Every position's logits [B,S,V] (the training path); ``forward`` keeps the last position's only."""
    return model._run(ids, mask, pos, tuple(past), last_only=False)


def test_kv_cache_prefill_then_decode_equals_full_sequence_torch() -> None:
    model = small_gpt()
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        full, _ = all_logits(model, ids, torch.ones(2, 9, dtype=torch.long), torch.arange(9).expand(2, 9), model.empty_past(2))
        last, *_ = model(ids, torch.ones(2, 9, dtype=torch.long), torch.arange(9).expand(2, 9), *model.empty_past(2))
        assert last.shape == (2, 1, 97) and (last - full[:, -1:]).abs().max().item() <= 1e-5
        out, new = all_logits(model, ids[:, :5], torch.ones(2, 5, dtype=torch.long), torch.arange(5).expand(2, 5), model.empty_past(2))
        steps = [out]
        past = list(new)
        for t in range(5, 9):
            out, *past = model(ids[:, t : t + 1], torch.ones(2, t + 1, dtype=torch.long), torch.tensor([[t], [t]]), *past)
            steps.append(out)
    assert past[0].shape == (2, 4, 9, 8)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


def test_left_padded_rows_equal_rows_alone_torch() -> None:
    model = small_gpt(1)
    rows = [torch.randint(0, 97, (n,)) for n in (7, 4, 1)]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, 7 - len(row):], mask[r, 7 - len(row):] = row, 1
    with torch.no_grad():
        padded, _ = all_logits(model, ids, mask, position_ids_from_mask(mask, 7), model.empty_past(3))
        assert torch.isfinite(padded).all()  # fully-masked pad queries must not produce NaN
        for r, row in enumerate(rows):
            n = len(row)
            alone, _ = all_logits(model, row[None], torch.ones(1, n, dtype=torch.long), torch.arange(n)[None], model.empty_past(1))
            assert (padded[r, 7 - n:] - alone[0]).abs().max().item() <= 1e-4


# --- built-in models through the CLI ---------------------------------------------------------------------


def test_builtin_quick_round_trip(built: Path) -> None:
    reg = Registry(built, check_hash=True)
    assert reg.names() == ["dcgan-digits", "tiny-lm"], reg.errors
    text = load_manifest(built / "tiny-lm" / "1", check_hash=True)
    image = load_manifest(built / "dcgan-digits" / "1", check_hash=True)
    assert text.text is not None and image.image is not None
    assert (built / "tiny-lm" / "1" / "tokenizer.json").is_file()
    assert text.inputs[0].name == "input_ids" and text.outputs[0].name == "logits"
    assert text.text.kv_contract == "ragged"  # the default: GroupQueryAttention over rows of their own lengths
    assert text.dynamic_axes["present.0.key"] == {"0": "batch", "2": "present"}
    assert text.dynamic_axes["seqlens_k"] == {"0": "batch"}
    assert {"prompt_ragged_b3", "decode_ragged_b3"} <= set(text.parity.max_abs_diff)
    assert max(text.parity.max_abs_diff.values()) <= text.parity.tolerance
    assert {"val_loss", "train_loss", "params"} <= set(text.metrics)
    assert "class_accuracy" in image.metrics and image.dynamic_axes["z"] == {"0": "batch"}
    assert text.extra["exporter"] == "onnx-helper(ragged)" and image.extra["exporter"] in ("dynamo", "torchscript")
    assert text.exporter_version and text.created_at.endswith("Z") and text.opset >= 17
    no_leftovers(built)


def test_builtin_existing_version_is_refused_or_skipped(built: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sha = load_manifest(built / "tiny-lm" / "1").sha256
    code, err = run_cli(["builtin", "--models-dir", built, "--quick", "--no-progress", "--only", "tiny-lm"], capsys)
    assert_one_line_error(code, err, "already exists")
    assert run(["builtin", "--models-dir", str(built), "--quick", "--skip-existing"]) == 0
    assert load_manifest(built / "tiny-lm" / "1").sha256 == sha


@pytest.mark.parametrize("contract", ["append", "concat"])
def test_ort_kv_cache_and_left_padding(contract: str, tmp_path: Path) -> None:
    from genqueue.registry import ModelKind
    from genqueue_exporter.export import ExportJob, export_model

    tok = train_tokenizer(["the cat sat on the mat."] * 4, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    (folder,) = export_model(
        ExportJob(ModelKind.text, "m", "1", model, tokenizer_json=tok.to_str(), kv_contract=contract), tmp_path
    )
    m = load_manifest(folder)
    assert m.text is not None
    sess = session(folder)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, m.text.vocab_size, (2, 8))
    ones = lambda n: np.ones((2, n), np.int64)  # noqa: E731

    def prefill(n: int) -> list[np.ndarray]:
        return ort_text(sess, ids[:, :n], ones(n), np.tile(np.arange(n), (2, 1)), empty_past_np(m.text, 2))

    # The graph returns the last position's logits; each decode step's equal a prefill of the same prefix,
    # and the cache built step by step equals the one prefill writes.
    out, *past = prefill(5)
    assert out.shape == (2, 1, m.text.vocab_size)
    for t in range(5, 8):
        out, *past = ort_text(sess, ids[:, t : t + 1], ones(t + 1), np.full((2, 1), t), past)
        ref, *ref_kv = prefill(t + 1)
        assert np.abs(out - ref).max() <= 1e-4
    assert max(float(np.abs(a - b).max()) for a, b in zip(past, ref_kv, strict=True)) <= 1e-4

    # Left padding: row 1 is row 0's last three tokens; its logits and KV must match them run alone.
    alone, *alone_kv = ort_text(sess, ids[:1, 5:], np.ones((1, 3), np.int64), np.arange(3)[None], empty_past_np(m.text, 1))
    batch = np.stack([ids[0], np.concatenate([np.zeros(5, np.int64), ids[0, 5:]])])
    mask = np.array([[1] * 8, [0] * 5 + [1] * 3], np.int64)
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    padded, *padded_kv = ort_text(sess, batch, mask, pos, empty_past_np(m.text, 2))
    assert np.isfinite(padded).all()
    assert np.abs(padded[1, -1] - alone[0, -1]).max() <= 1e-4
    assert max(float(np.abs(a[1, :, 5:] - b[0]).max()) for a, b in zip(padded_kv, alone_kv, strict=True)) <= 1e-4


def test_ort_ragged_cache_in_place_matches_the_full_sequence(built: Path) -> None:
    """The built-in (ragged) graph: a prompt, then decode steps whose present is the past buffer itself, give
    each position the logits a prompt ending there gets, and the cache a whole-sequence prompt writes; two
    rows of different lengths share every call."""
    folder = built / "tiny-lm" / "1"
    m = load_manifest(folder)
    assert m.text is not None and m.text.kv_contract == "ragged"
    t = m.text
    sess = session(folder)
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    ids = rng.integers(0, t.vocab_size, (2, 8))
    lens = [8, 6]  # row 1 is shorter: right-padded, and it decodes from position 4 while row 0 is at 5

    def call(x: np.ndarray, pos: np.ndarray, seqlens: list[int], past: list[np.ndarray]) -> list[np.ndarray]:
        feed = {"input_ids": x, "position_ids": pos, "seqlens_k": np.array(seqlens, np.int32),
                "total_sequence_length": np.array(max(seqlens) + x.shape[1] if x.shape[1] == 1 else x.shape[1], np.int32)}
        feed.update(zip([i.name for i in sess.get_inputs()][4:], past, strict=True))
        return sess.run(names, feed)

    empty = [np.zeros((2, t.n_head, 0, t.head_dim), np.float32) for _ in range(2 * t.n_layer)]

    def prompt(n: list[int]) -> list[np.ndarray]:
        """Row r's first n[r] tokens as one right-padded prompt call."""
        x = np.zeros((2, max(n)), np.int64)
        for r in range(2):
            x[r, : n[r]] = ids[r, : n[r]]
        return call(x, np.tile(np.arange(max(n)), (2, 1)), [k - 1 for k in n], empty)

    cur = [5, 3]  # prompt tokens per row
    out = prompt(cur)
    assert out[0].shape == (2, 1, t.vocab_size)  # each row's last real token only
    cache = [np.zeros((2, t.n_head, 12, t.head_dim), np.float32) for _ in range(2 * t.n_layer)]
    for c, present in zip(cache, out[1:], strict=True):
        c[:, :, :5] = present
    while cur[0] < lens[0]:
        x = np.array([[ids[0, cur[0]]], [ids[1, min(cur[1], 7)]]], np.int64)
        step = call(x, np.array([[cur[0]], [cur[1]]], np.int64), cur, cache)
        for c, present in zip(cache, step[1:], strict=True):
            assert present.shape == c.shape
            c[...] = present  # what the worker gets for free by binding present to the past's memory
        cur = [cur[0] + 1, cur[1] + 1]
        ref = prompt([cur[0], min(cur[1], lens[1])])[0]
        assert np.abs(step[0][0] - ref[0]).max() <= 1e-4
        if cur[1] <= lens[1]:
            assert np.abs(step[0][1] - ref[1]).max() <= 1e-4
    full = prompt(lens)
    for c, present in zip(cache, full[1:], strict=True):
        assert np.abs(c[0, :, :8] - present[0, :, :8]).max() <= 1e-4
        assert np.abs(c[1, :, :6] - present[1, :, :6]).max() <= 1e-4


def test_runner_reads_the_last_token_from_either_logits_layout(tmp_path: Path) -> None:
    """Ragged graphs exported before the head kept only the last token return every position's logits
    [B,S,V]; the worker's runner must give the same last-token logits from those as from [B,1,V] graphs."""
    from genqueue_exporter.gpt_ragged import build_ragged_onnx
    from genqueue_worker.engine.kv_cache import prefill_inputs
    from genqueue_worker.engine.ort_session import SessionConfig
    from genqueue_worker.engine.ort_text import OrtTextRunner
    from genqueue_worker.engine.runner import TextModelInfo

    model = small_gpt(3)
    cfg = model.config
    info = TextModelInfo(cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.block_size, 0, 0, 0, kv_contract="ragged")
    prompts = [[5, 9, 2, 7, 1], [3], [8, 8, 4]]  # different lengths: each row's last token sits elsewhere
    got = {}
    for every in (False, True):
        path = tmp_path / f"every-{every}.onnx"
        build_ragged_onnx(model, path, all_logits=every)
        shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_outputs()[0].shape
        assert shape[1] == ("seq" if every else 1)
        runner = OrtTextRunner(path, info, SessionConfig(provider="cpu"))
        got[every], _ = runner.prefill(*prefill_inputs(prompts, 0))
    with torch.no_grad():
        ref = np.stack([model(torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), torch.arange(len(p))[None],
                              *model.empty_past(1))[0][0, -1].numpy() for p in prompts])
    assert got[False].shape == got[True].shape == (3, cfg.vocab_size)
    assert np.abs(got[False] - got[True]).max() <= 1e-5
    assert np.abs(got[False] - ref).max() <= 1e-4


def test_dcgan_batch_axis_is_dynamic(built: Path) -> None:
    sess = session(built / "dcgan-digits" / "1")
    m = load_manifest(built / "dcgan-digits" / "1")
    assert m.image is not None
    for b in (1, 3, 7):
        z = np.random.default_rng(b).standard_normal((b, m.image.latent_size)).astype(np.float32)
        (images,) = sess.run(None, {"z": z, "class_label": np.arange(b, dtype=np.int64) % 10})
        assert images.shape == (b, 1, 32, 32)
        assert images.min() >= -1.0 and images.max() <= 1.0


def test_worker_side_loads_without_torch(built: Path, tmp_path: Path) -> None:
    png = tmp_path / "digits.png"
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import numpy as np
        from genqueue_exporter.cli import run
        from genqueue_exporter.samples import generate_images, generate_text
        models = Path({str(built)!r})
        text = generate_text(models / "tiny-lm" / "1", "Once upon a time", max_new_tokens=5)
        assert text.startswith("Once upon a time"), text
        imgs = generate_images(models / "dcgan-digits" / "1", np.arange(4))
        assert imgs.shape == (4, 1, 32, 32)
        assert run(["samples", "--models-dir", str(models), "--out", {str(png)!r}, "--per-class", "2"]) == 0
        assert run(["verify", str(models / "tiny-lm" / "1")]) == 0
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]
    from PIL import Image

    assert Image.open(png).size == (2 * (2 * (32 + 2) + 2), 2 * (10 * (32 + 2) + 2))


# --- bring your own weights ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT2LMHeadModel saved with save_pretrained, plus a tokenizer.json we train here."""
    transformers = pytest.importorskip("transformers", reason="transformers (dev extra) builds the HF fixture")
    folder = tmp_path_factory.mktemp("hf")
    docs = ["the cat sat on the mat", "a dog ran in the park", "the moon is bright tonight"] * 20
    tok = train_tokenizer(docs, vocab_size=300)
    tok.save(str(folder / "tokenizer.json"))
    cfg = transformers.GPT2Config(
        vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        bos_token_id=0, eos_token_id=0, initializer_range=0.3,  # large weights: mapping mistakes show
    )
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).eval().save_pretrained(str(folder))
    return folder


def test_hf_gpt2_export_matches_transformers(hf_dir: Path, tmp_path: Path) -> None:
    # The concat contract takes the same mask and positions as transformers, so logits compare directly;
    # the default (ragged) export of the same checkpoint is compared through the engine further down.
    transformers = pytest.importorskip("transformers")
    models = tmp_path / "models"
    argv = ["hf", str(hf_dir), "--name", "tiny-gpt2", "--models-dir", str(models), "--no-progress", "--kv-contract", "concat"]
    assert run(argv) == 0
    folder = models / "tiny-gpt2" / "1"
    m = load_manifest(folder, check_hash=True)
    assert m.source.startswith("hf:") and m.text is not None and m.text.eos_token_id == 0
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    ids = np.random.default_rng(0).integers(0, m.text.vocab_size, (2, 8))
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()  # [2,8,V]
    sess = session(folder)
    ones = lambda n: np.ones((2, n), np.int64)  # noqa: E731
    full = ort_text(sess, ids, ones(8), np.tile(np.arange(8), (2, 1)), empty_past_np(m.text, 2))[0]
    assert np.abs(full[:, 0] - ref[:, -1]).max() <= 1e-4  # the graph returns the last position's logits
    # Every other position through the cache: one token, then one decode step per token.
    out, *past = ort_text(sess, ids[:, :1], ones(1), np.zeros((2, 1), np.int64), empty_past_np(m.text, 2))
    assert np.abs(out[:, 0] - ref[:, 0]).max() <= 1e-4
    for t in range(1, 8):
        out, *past = ort_text(sess, ids[:, t : t + 1], ones(t + 1), np.full((2, 1), t), past)
        assert np.abs(out[:, 0] - ref[:, t]).max() <= 1e-4

    # Left padding agrees with transformers given the same mask and positions.
    mask = np.array([[1] * 8, [0] * 3 + [1] * 5], np.int64)
    pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    with torch.no_grad():
        ref_pad = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                     position_ids=torch.from_numpy(pos)).logits.numpy()
    got = ort_text(sess, ids, mask, pos, empty_past_np(m.text, 2))[0]
    assert np.abs(got[:, 0] - ref_pad[:, -1]).max() <= 1e-4


def test_hf_vocab_merges_and_bin_weights(hf_dir: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    alt = tmp_path / "alt"
    alt.mkdir()
    (alt / "config.json").write_text((hf_dir / "config.json").read_text())
    from safetensors.torch import load_file

    torch.save(load_file(str(hf_dir / "model.safetensors")), alt / "pytorch_model.bin")
    Tokenizer.from_file(str(hf_dir / "tokenizer.json")).model.save(str(alt))  # vocab.json + merges.txt
    imported = load_hf_gpt2(alt)
    original = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    rebuilt = Tokenizer.from_str(_hf_tokenizer_json(alt))
    text = "the moon sat on the dog"
    assert rebuilt.encode(text).ids == original.encode(text).ids
    assert rebuilt.decode(rebuilt.encode(text).ids) == text
    ref = load_hf_gpt2(hf_dir).model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in imported.model.state_dict().items())


def test_gan_state_dict_export(tmp_path: Path) -> None:
    cfg = DCGANConfig(latent_size=16, ngf=8, ndf=8)
    torch.manual_seed(0)
    gen = Generator(cfg).eval()
    torch.save(gen.state_dict(), tmp_path / "g.pt")
    (tmp_path / "g.json").write_text(json.dumps(cfg.to_dict()))
    models = tmp_path / "models"
    argv = ["gan-state-dict", tmp_path / "g.pt", "--config", tmp_path / "g.json", "--name", "my-gan",
            "--models-dir", models, "--quantize", "int8"]
    assert run([str(a) for a in argv]) == 0
    m = load_manifest(models / "my-gan" / "1", check_hash=True)
    q = load_manifest(models / "my-gan" / "1-int8", check_hash=True)
    assert m.image is not None and m.image.latent_size == 16 and q.precision == "int8"
    z = torch.randn(5, 16)
    c = torch.arange(5)
    with torch.no_grad():
        ref = gen(z, c).numpy()
    (got,) = session(models / "my-gan" / "1").run(None, {"z": z.numpy(), "class_label": c.numpy()})
    assert np.abs(got - ref).max() <= 1e-4


# --- bad input -------------------------------------------------------------------------------------------


def _hf_copy(hf_dir: Path, dst: Path, **config_changes: object) -> Path:
    dst.mkdir()
    for f in hf_dir.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((hf_dir / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


_CONFIG_CASES: dict[str, dict[str, object]] = {
    "zero_heads": {"n_head": 0}, "negative_vocab": {"vocab_size": -5}, "fractional_layers": {"n_layer": 2.5},
    "boolean_layers": {"n_layer": True}, "odd_inner": {"n_inner": "x"}, "huge_vocab": {"vocab_size": 10**12},
    "eos_outside": {"eos_token_id": 99999}, "pad_negative": {"pad_token_id": -1},
}


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing_dir", "not a directory"),
        ("llama", "unsupported architecture model_type='llama'"),
        ("wrong_width", "config does not match weights"),
        ("corrupt_weights", "unreadable weights"),
        ("no_tokenizer", "no tokenizer.json"),
        ("zero_heads", "n_head must be an integer >= 1, not 0"),
        ("negative_vocab", "vocab_size must be an integer >= 1, not -5"),
        ("fractional_layers", "n_layer must be an integer >= 1, not 2.5"),
        ("boolean_layers", "n_layer must be an integer >= 1, not True"),
        ("odd_inner", "unsupported n_inner='x'"),
        ("huge_vocab", "over the 2 GB a single-file ONNX can hold"),
        ("eos_outside", "eos_token_id=99999 is not a token id of the model"),
        ("pad_negative", "pad_token_id=-1 is not a token id of the model"),
    ],
)
def test_hf_bad_input(case: str, needle: str, hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "nowhere"
    if case == "llama":
        src = _hf_copy(hf_dir, tmp_path / "src", model_type="llama")
    elif case == "wrong_width":
        src = _hf_copy(hf_dir, tmp_path / "src", n_embd=64)
    elif case == "corrupt_weights":
        src = _hf_copy(hf_dir, tmp_path / "src")
        (src / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 10)
    elif case == "no_tokenizer":
        src = _hf_copy(hf_dir, tmp_path / "src")
        (src / "tokenizer.json").unlink()
    elif case in _CONFIG_CASES:
        src = _hf_copy(hf_dir, tmp_path / "src", **_CONFIG_CASES[case])
    models = tmp_path / "models"
    code, err = run_cli(["hf", src, "--name", "bad", "--models-dir", models], capsys)
    assert_one_line_error(code, err, needle)
    assert not (models / "bad").exists()
    no_leftovers(models)


def test_gan_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = DCGANConfig(latent_size=16, ngf=8, ndf=8)
    torch.save(Generator(cfg).state_dict(), tmp_path / "g.pt")
    (tmp_path / "wide.json").write_text(json.dumps({**cfg.to_dict(), "ngf": 16}))
    (tmp_path / "odd.json").write_text(json.dumps({"latent_size": 16, "colour": "blue"}))
    models = tmp_path / "models"
    base = ["--name", "bad-gan", "--models-dir", models]
    code, err = run_cli(["gan-state-dict", tmp_path / "g.pt", "--config", tmp_path / "wide.json", *base], capsys)
    assert_one_line_error(code, err, "config does not match weights")
    code, err = run_cli(["gan-state-dict", tmp_path / "g.pt", "--config", tmp_path / "odd.json", *base], capsys)
    assert_one_line_error(code, err, "unknown DCGAN config keys: colour")
    for field, value in (("latent_size", "8"), ("ngf", -1), ("channels", None), ("ndf", True)):
        (tmp_path / "typed.json").write_text(json.dumps({**cfg.to_dict(), field: value}))
        code, err = run_cli(["gan-state-dict", tmp_path / "g.pt", "--config", tmp_path / "typed.json", *base], capsys)
        assert_one_line_error(code, err, f"{field} must be an integer in 1..4096, not {value!r}")
    code, err = run_cli(["gan-state-dict", tmp_path / "missing.pt", "--config", tmp_path / "wide.json", *base], capsys)
    assert_one_line_error(code, err, "missing.pt is missing")
    assert not (models / "bad-gan").exists()


def test_unwritable_models_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works even as root, where chmod would not stop us
    code, err = run_cli(["builtin", "--models-dir", blocker / "models", "--quick", "--only", "dcgan-digits"], capsys)
    assert_one_line_error(code, err, "cannot write to models folder")


def test_corrupt_onnx_is_reported(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "dcgan-digits" / "1"
    folder.mkdir(parents=True)
    for f in (built / "dcgan-digits" / "1").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    assert run(["verify", str(folder)]) == 0
    (folder / "model.onnx").write_bytes(b"garbage" * 100)
    code, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, "sha256")  # the registry's hash check trips first
    from genqueue.registry import sha256_file

    raw = json.loads((folder / "manifest.json").read_text())
    raw["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "manifest.json").write_text(json.dumps(raw))
    code, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, "not a valid ONNX model")


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        ({"n_head": 8}, "the smoke inference with the manifest's shapes failed"),
        ({"vocab_size": 5, "eos_token_id": 0, "bos_token_id": 0, "pad_token_id": 0}, "logits, the manifest says vocab_size=5"),
        ({"eos_token_id": 10**6}, "eos_token_id=1000000 is outside the vocabulary"),
        ({"tokenizer_file": "/etc/hostname"}, "must be a file name inside the model folder"),
        ("garbage tokenizer", "not a tokenizer"),
        ("onnx outside", "must be a file name inside the model folder"),
    ],
)
def test_verify_reports_a_misdescribed_folder_in_one_line(edit: object, needle: str, built: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "tiny-lm" / "1"
    folder.mkdir(parents=True)
    for f in (built / "tiny-lm" / "1").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    raw = json.loads((folder / "manifest.json").read_text())
    if edit == "garbage tokenizer":
        (folder / "tokenizer.json").write_text("nope")
    elif edit == "onnx outside":
        raw["onnx_file"] = "../../../elsewhere/model.onnx"
    else:
        raw["text"].update(edit)
    (folder / "manifest.json").write_text(json.dumps(raw))
    code, err = run_cli(["verify", folder], capsys)
    assert_one_line_error(code, err, needle)


def test_parity_failure_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genqueue.registry import ModelKind
    from genqueue_exporter import export

    monkeypatch.setitem(export.TOLERANCE, "text", {"fp32": -1.0})  # an impossible bar, real measurement
    job = export.ExportJob(kind=ModelKind.text, name="strict", version="1", model=small_gpt(),
                           tokenizer_json="{}")
    with pytest.raises(ExportError, match=r"parity check failed: case prompt_ragged_b3, output \S+: max \|ORT - torch\|"):
        export.export_model(job, tmp_path)
    assert not (tmp_path / "strict").exists()
    no_leftovers(tmp_path)


def test_a_failure_while_publishing_takes_every_variant_back_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genqueue.registry import ModelKind
    from genqueue_exporter import export

    job = export.ExportJob(kind=ModelKind.text, name="pair", version="1", model=small_gpt(), tokenizer_json="{}")
    first = export.export_model(job, tmp_path, ("fp32",))[0]
    (first / "served-since.txt").write_text("the version being replaced")  # tells the old folder from a new one
    before = {f.name: f.read_bytes() for f in first.iterdir()}
    real_publish, calls = export._publish, []

    def publish(staged: Path, target: Path, force: bool) -> Path | None:
        calls.append(target)
        if len(calls) == 2:  # the second variant: another exporter got there, the disk filled, ...
            raise OSError(28, "No space left on device")
        return real_publish(staged, target, force)

    monkeypatch.setattr(export, "_publish", publish)
    with pytest.raises(ExportError, match="No space left"):
        export.export_model(job, tmp_path, ("fp32", "int8"), force=True)
    assert {f.name: f.read_bytes() for f in first.iterdir()} == before  # the replaced version is back
    assert not (tmp_path / "pair" / "1-int8").exists()
    no_leftovers(tmp_path)


def test_a_signal_during_publishing_rolls_the_whole_set_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    from genqueue.registry import ModelKind
    from genqueue_exporter import export

    class Stopped(Exception):
        pass

    def stop(signum: int, frame: object) -> None:
        raise Stopped

    job = export.ExportJob(kind=ModelKind.text, name="sig", version="1", model=small_gpt(), tokenizer_json="{}")
    real_publish = export._publish

    def publish(staged: Path, target: Path, force: bool) -> Path | None:
        trash = real_publish(staged, target, force)
        os.kill(os.getpid(), signal.SIGTERM)  # lands right after a rename, before the bookkeeping
        return trash

    monkeypatch.setattr(export, "_publish", publish)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            export.export_model(job, tmp_path, ("fp32", "int8"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not (tmp_path / "sig").exists() or not any((tmp_path / "sig").iterdir())
    no_leftovers(tmp_path)


def test_an_interrupt_inside_the_onnx_exporter_is_not_a_failure_to_fall_back_from() -> None:
    from genqueue_exporter import onnx_export

    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as ki:
            raise AttributeError("wrapped by torch.export") from ki
    except AttributeError as wrapped:
        onnx_export._reraise_interrupt(RuntimeError("plain failure"))  # no interrupt inside: the fallback may run
        outer = RuntimeError("TorchExportError")
        outer.__cause__ = wrapped
        with pytest.raises(KeyboardInterrupt):
            onnx_export._reraise_interrupt(outer)


def test_stale_staging_folders_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    import os
    import time

    from genqueue_exporter import export

    old, fresh = tmp_path / ".staging-old", tmp_path / ".staging-new"
    for d in (old, fresh):
        (d / "m" / "1").mkdir(parents=True)
    past = time.time() - export.STALE_STAGING_S - 60
    os.utime(old, (past, past))
    export._sweep_stale_staging(tmp_path)
    assert not old.exists() and fresh.exists()


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["builtin", "--only", "gpt-5"]) == 2
    assert "genqueue export: error:" in capsys.readouterr().err
    for bad in (["--per-class", "0"], ["--per-class", "100000"], ["--seed", "-1"]):
        assert run(["samples", *bad]) == 2
        assert "genqueue export: error:" in capsys.readouterr().err
    assert run(["hf", "x", "--name", "Bad Name"]) == 1
    assert "invalid model name" in capsys.readouterr().err


def test_every_kv_contract_generates_the_same_tokens(tmp_path: Path) -> None:
    """The three KV contracts of one model, served by the continuous-batching engine (jobs join and leave a
    3-row batch, so the caches grow, trim and swap-remove), give the same greedy tokens."""
    from genqueue.registry import ModelKind
    from genqueue_exporter.export import ExportJob, export_model
    from genqueue_worker.engine.kv_append import AppendKVCache
    from genqueue_worker.engine.kv_cache import HostKVCache
    from genqueue_worker.engine.kv_ragged import RaggedKVCache
    from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
    from genqueue_worker.engine.types import TextParams, TextRequest

    tok = train_tokenizer(["the cat sat on the mat. a dog ran in the park."] * 4, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    tokens: dict[str, list[list[int]]] = {}
    for contract, cache_type in (("ragged", RaggedKVCache), ("append", AppendKVCache), ("concat", HostKVCache)):
        job = ExportJob(ModelKind.text, f"m-{contract}", "1", model, tokenizer_json=tok.to_str(), kv_contract=contract)
        export_model(job, tmp_path)
        entry = Registry(tmp_path).resolve(f"m-{contract}")
        assert entry.manifest.text is not None and entry.manifest.text.kv_contract == contract
        engine = TextEngine(entry, "cpu", TextEngineConfig(max_batch_size=3, return_token_ids=True))
        assert isinstance(engine.cache, cache_type)
        reqs = [
            TextRequest(f"j{i}", "the cat sat"[: 3 + 2 * i], TextParams(max_new_tokens=3 + 4 * i, temperature=0, ignore_eos=True))
            for i in range(6)
        ]
        results = engine.run_all(reqs)
        assert all(r.status == "succeeded" for r in results), [r.error_message for r in results]
        tokens[contract] = [r.output["token_ids"][0] for r in results if r.output is not None]
    assert [len(t) for t in tokens["concat"]] == [3 + 4 * i for i in range(6)]
    assert tokens["ragged"] == tokens["concat"]
    assert tokens["append"] == tokens["concat"]


def test_text_precision_variants_are_served(tmp_path: Path) -> None:
    """int8 keeps the ragged graph (only MatMul weights are quantized); fp16 falls back to the append
    contract, since GroupQueryAttention's CPU kernel is fp32. Both pass their parity checks and serve jobs."""
    from genqueue.registry import ModelKind
    from genqueue_exporter.export import ExportJob, export_model
    from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
    from genqueue_worker.engine.types import TextParams, TextRequest

    tok = train_tokenizer(["the cat sat on the mat. a dog ran in the park."] * 4, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_head=2, n_embd=32, block_size=64)).eval()
    job = ExportJob(ModelKind.text, "m", "1", model, tokenizer_json=tok.to_str())
    export_model(job, tmp_path, ("fp32", "int8", "fp16"))
    reg = Registry(tmp_path, check_hash=True)
    for version, contract, precision in (("1", "ragged", "fp32"), ("1-int8", "ragged", "int8"), ("1-fp16", "append", "fp16")):
        entry = reg.resolve(f"m@{version}")
        assert entry.manifest.text is not None and entry.manifest.precision == precision
        assert entry.manifest.text.kv_contract == contract, version
        assert max(entry.manifest.parity.max_abs_diff.values()) <= entry.manifest.parity.tolerance
        engine = TextEngine(entry, "cpu", TextEngineConfig(max_batch_size=2, return_token_ids=True))
        results = engine.run_all([
            TextRequest(f"j{i}", "the cat", TextParams(max_new_tokens=4 + i, temperature=0.8, seed=i, ignore_eos=True))
            for i in range(3)
        ])
        assert [r.status for r in results] == ["succeeded"] * 3, [r.error_message for r in results]
        assert [len(r.output["token_ids"][0]) for r in results if r.output] == [4, 5, 6]


def test_engine_serves_hf_export_like_transformers(hf_dir: Path, tmp_path: Path) -> None:
    """The worker's continuous-batching engine, fed an exported HF checkpoint, generates the same greedy
    tokens as transformers run on each prompt alone, although jobs join and leave a 2-row batch."""
    transformers = pytest.importorskip("transformers")
    from genqueue.registry import Registry
    from genqueue_worker.engine.text_engine import TextEngine, TextEngineConfig
    from genqueue_worker.engine.types import TextParams, TextRequest

    models = tmp_path / "models"
    assert run(["hf", str(hf_dir), "--name", "tiny-gpt2", "--models-dir", str(models), "--no-progress"]) == 0
    entry = Registry(models).resolve("tiny-gpt2")
    engine = TextEngine(entry, "cpu", TextEngineConfig(max_batch_size=2, return_token_ids=True))
    prompts = ["the cat", "a dog ran in the", "the moon is bright", "park", "the cat sat on the mat"]
    new = [10, 4, 12, 7, 9]
    results = engine.run_all([
        TextRequest(f"j{i}", p, TextParams(max_new_tokens=n, temperature=0, ignore_eos=True))
        for i, (p, n) in enumerate(zip(prompts, new, strict=True))
    ])
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    for res, prompt, n in zip(results, prompts, new, strict=True):
        assert res.status == "succeeded", res.error_message
        ids = list(engine.tokenizer.encode(prompt, add_special_tokens=False).ids)
        expected = []
        with torch.no_grad():
            for _ in range(n):
                nxt = int(hf(torch.tensor([ids + expected])).logits[0, -1].argmax())
                expected.append(nxt)
        assert res.output is not None and res.output["token_ids"][0] == expected, prompt
