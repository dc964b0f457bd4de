"""``genqueue export ...``: the exporter's command line. ``run(argv)`` returns the exit status.

Exit status: 0 success, 1 a user-facing failure (one line ``genqueue export: error: ...`` on stderr),
2 a usage error. Nothing half-written is left behind in either failure case.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

PROG = "genqueue export"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    # argparse prints usage and calls sys.exit on errors; we want one line and a return value instead.
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is not in {lo}..{hi}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser, version_default: str = "1") -> None:
    p.add_argument("--models-dir", type=Path, default=Path("models"), help="root of the model folders")
    p.add_argument("--version", default=version_default, help="version folder name (default %(default)s)")
    p.add_argument("--quantize", choices=["int8"], help="also publish a dynamic-int8 variant as <version>-int8")
    p.add_argument("--fp16", action="store_true", help="also publish a float16 variant as <version>-fp16")
    p.add_argument("--force", action="store_true", help="replace an existing version folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_kv_contract(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kv-contract", choices=["ragged", "append", "concat"], default="ragged",
        help="text graph's KV cache contract: ragged (default; fastest on CPU), append, or concat (standard "
             "ops with the cache kept on the device: use it for CUDA workers)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Train or import models and export them to ONNX model folders.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("builtin", help="train and export the built-in demo models")
    _add_common(b)
    b.add_argument("--only", choices=["tiny-lm", "dcgan-digits"], help="build just one of them")
    b.add_argument("--quick", action="store_true", help="tiny models in seconds (for tests)")
    b.add_argument("--skip-existing", action="store_true", help="keep model folders that are already valid")
    _add_kv_contract(b)

    h = sub.add_parser("hf", help="export a local Hugging Face GPT-2 checkpoint folder")
    h.add_argument("dir", type=Path, help="folder with config.json, model.safetensors|pytorch_model.bin, tokenizer")
    h.add_argument("--name", required=True, help="model name in the registry")
    _add_common(h)
    _add_kv_contract(h)

    g = sub.add_parser("gan-state-dict", help="export a state dict of the built-in DCGAN generator architecture")
    g.add_argument("file", type=Path, help="generator state dict (.pt/.pth/.bin or .safetensors)")
    g.add_argument("--config", type=Path, required=True, help="JSON with DCGANConfig fields")
    g.add_argument("--name", required=True, help="model name in the registry")
    _add_common(g)

    v = sub.add_parser("verify", help="check an exported model folder: hash, ONNX validity, a smoke run")
    v.add_argument("dir", type=Path, help="a <models>/<name>/<version> folder")

    s = sub.add_parser("samples", help="write a digit grid PNG and print tiny-lm text (onnxruntime only)")
    s.add_argument("--models-dir", type=Path, default=Path("models"))
    s.add_argument("--out", type=Path, default=Path("docs/digits.png"))
    s.add_argument("--per-class", type=_int_in(1, 64), default=8, help="digits per class (1-64)")
    s.add_argument("--seed", type=_int_in(0, 2**63 - 1), default=0)
    s.add_argument("--prompt", action="append", help="text prompt (repeatable)")
    return parser


def _precisions(args: argparse.Namespace) -> list:
    out = ["fp32"]
    if args.quantize == "int8":
        out.append("int8")
    if args.fp16:
        out.append("fp16")
    return out


def _normalize(argv: list[str]) -> list[str]:
    # `genqueue export --from-hf DIR --name X` is an alias of `genqueue export hf DIR --name X`.
    if "--from-hf" in argv:
        i = argv.index("--from-hf")
        if i + 1 < len(argv):
            rest = argv[:i] + argv[i + 2 :]
            if rest[:1] == ["hf"]:  # `export hf --from-hf DIR ...`: the subcommand given twice
                rest = rest[1:]
            return ["hf", argv[i + 1], *rest]
    return argv


def _report(paths: list[Path]) -> None:
    from genqueue.registry import load_manifest

    for p in paths:
        m = load_manifest(p)
        worst = max(m.parity.max_abs_diff.values(), default=0.0)
        figures = ", ".join(f"{k}={v:g}" for k, v in m.metrics.items() if k in ("val_loss", "class_accuracy"))
        print(f"{p}: {m.kind.value} {m.precision}, parity max |ORT-torch| {worst:.2e} "
              f"(tol {m.parity.tolerance:g}), exporter={m.extra.get('exporter')}" + (f", {figures}" if figures else ""))


def _dispatch(args: argparse.Namespace) -> int:
    # torch is imported only by the commands that need it: `verify` and `samples` run on a worker image.
    if args.command == "builtin":
        from genqueue_exporter.builtin import build_builtin

        paths = build_builtin(
            args.models_dir, quick=args.quick, only=args.only, skip_existing=args.skip_existing,
            version=args.version, precisions=_precisions(args), force=args.force, progress=not args.no_progress,
            kv_contract=args.kv_contract,
        )
        _report(paths)
        return 0
    if args.command in ("hf", "gan-state-dict"):
        from genqueue.registry import ModelKind
        from genqueue_exporter.export import ExportJob, check_target, export_model, variant_version

        for p in _precisions(args):  # refuse before reading gigabytes of weights
            check_target(args.models_dir, args.name, variant_version(args.version, p), args.force)
        if args.command == "hf":
            from genqueue_exporter.hf_import import load_hf_gpt2

            imp = load_hf_gpt2(args.dir)
            job = ExportJob(
                kind=ModelKind.text, name=args.name, version=args.version, model=imp.model,
                source=f"hf:{args.dir.resolve()}", tokenizer_json=imp.tokenizer_json,
                bos_token_id=imp.bos_token_id, eos_token_id=imp.eos_token_id, pad_token_id=imp.pad_token_id,
                metrics={"params": float(imp.model.num_params())},
                extra={"config": imp.model.config.to_dict(), "hf_config": imp.hf_config},
                kv_contract=args.kv_contract,
            )
        else:
            from genqueue_exporter.hf_import import load_gan_state_dict

            gen, cfg = load_gan_state_dict(args.file, args.config)
            job = ExportJob(
                kind=ModelKind.image, name=args.name, version=args.version, model=gen,
                source=f"state_dict:{args.file.resolve()}",
                metrics={"params": float(sum(p.numel() for p in gen.parameters()))},
                extra={"config": cfg.to_dict()},
            )
        _report(export_model(job, args.models_dir, _precisions(args), force=args.force))
        return 0
    if args.command == "verify":
        from genqueue_exporter.samples import verify_folder

        print(verify_folder(args.dir))
        return 0
    if args.command == "samples":
        from genqueue_exporter.samples import write_samples

        if args.out.is_dir():
            raise _UsageError(f"--out {args.out} is a folder; give the PNG file to write")

        write_samples(args.models_dir, args.out, per_class=args.per_class, seed=args.seed, prompts=args.prompt)
        return 0
    raise _UsageError(f"unknown command {args.command!r}")


def run(argv: list[str]) -> int:
    from genqueue_exporter.errors import ExportError

    if not logging.getLogger().handlers:
        # Our progress at INFO; torch/onnxscript chatter (optimizer passes, missing torchvision) stays quiet.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        logging.getLogger("genqueue_exporter").setLevel(logging.INFO)
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    previous = _on_sigterm_interrupt()
    try:
        args = build_parser().parse_args(_normalize(list(argv)))
        return _dispatch(args)
    except _Terminated:
        print(f"{PROG}: error: terminated", file=sys.stderr)
        return 143
    except _UsageError as e:
        print(f"{PROG}: error: {e} (see {PROG} --help)", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"{PROG}: error: {e.filename or ''}: {e.strerror or e}".replace(": : ", ": "), file=sys.stderr)
        return 1
    except SystemExit as e:  # --help
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``): unwinds like Ctrl-C, so that the staging folder is removed."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _on_sigterm_interrupt() -> Any:
    """Install the SIGTERM handler for this run; returns the one to restore (None off the main thread, where
    Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def main() -> None:
    raise SystemExit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
