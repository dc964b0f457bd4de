"""The two built-in demo models: ``tiny-lm`` (text) and ``dcgan-digits`` (image), trained and exported here."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from genqueue.registry import ModelKind, RegistryError, load_manifest
from genqueue_exporter.errors import ExportError
from genqueue_exporter.export import (
    ExportJob,
    KVContract,
    Precision,
    check_target,
    export_model,
    variant_version,
)

log = logging.getLogger(__name__)

TEXT_NAME = "tiny-lm"
IMAGE_NAME = "dcgan-digits"
BUILTIN_NAMES = (TEXT_NAME, IMAGE_NAME)


def _existing(models_dir: Path, name: str, versions: Sequence[str]) -> bool:
    """True when every requested version folder holds a valid manifest (a broken folder gets rebuilt)."""
    for v in versions:
        try:
            load_manifest(models_dir / name / v, check_hash=False)
        except RegistryError:
            return False
    return True


def build_tiny_lm(models_dir: Path, version: str, quick: bool, precisions: Sequence[Precision],
                  force: bool, progress: bool, kv_contract: KVContract = "ragged") -> list[Path]:
    from genqueue_exporter.train_text import TextTrainSettings, train_tiny_lm

    settings = TextTrainSettings.quick() if quick else TextTrainSettings()
    trained = train_tiny_lm(settings, progress=progress)
    for s in trained.samples:
        log.info("tiny-lm sample: %r", s)
    job = ExportJob(
        kind=ModelKind.text, name=TEXT_NAME, version=version, model=trained.model, source="builtin",
        metrics=trained.metrics,
        extra={"config": trained.model.config.to_dict(), "training": trained.training, "quick": quick,
               "samples_greedy": trained.samples},
        tokenizer_json=trained.tokenizer.to_str(),
        bos_token_id=trained.eot_id, eos_token_id=trained.eot_id, pad_token_id=trained.eot_id,
        prepend_bos=True,  # training put <|endoftext|> before every document
        kv_contract=kv_contract,
    )
    return export_model(job, models_dir, precisions, force=force)


def build_dcgan_digits(models_dir: Path, version: str, quick: bool, precisions: Sequence[Precision],
                       force: bool, progress: bool) -> list[Path]:
    from genqueue_exporter.train_gan import GANTrainSettings, train_dcgan

    settings = GANTrainSettings.quick() if quick else GANTrainSettings()
    trained = train_dcgan(settings=settings, progress=progress)
    job = ExportJob(
        kind=ModelKind.image, name=IMAGE_NAME, version=version, model=trained.generator, source="builtin",
        metrics=trained.metrics,
        extra={"config": trained.config.to_dict(), "training": trained.training, "quick": quick,
               "class_names": [str(i) for i in range(trained.config.num_classes)]},
    )
    return export_model(job, models_dir, precisions, force=force)


def build_builtin(
    models_dir: Path,
    quick: bool = False,
    only: str | None = None,
    skip_existing: bool = False,
    version: str = "1",
    precisions: Sequence[Precision] = ("fp32",),
    force: bool = False,
    progress: bool = True,
    kv_contract: KVContract = "ragged",
) -> list[Path]:
    """Train and publish the built-in models; returns their version folders (built or already present).

    ``quick`` trains tiny versions in seconds (tests); ``skip_existing`` keeps valid folders untouched, so
    ``make models`` is cheap the second time.
    """
    models_dir = Path(models_dir)
    if only is not None and only not in BUILTIN_NAMES:
        raise ExportError(f"unknown built-in model {only!r} (choose from {', '.join(BUILTIN_NAMES)})")
    names = [only] if only else list(BUILTIN_NAMES)
    versions = [variant_version(version, p) for p in precisions]
    todo: list[str] = []
    out: list[Path] = []
    for name in names:
        if skip_existing and _existing(models_dir, name, versions):
            log.info("%s: %s present, skipped", name, ", ".join(versions))
            out += [models_dir / name / v for v in versions]
            continue
        # A broken folder under --skip-existing is replaced rather than left to fail the worker.
        replace = force or skip_existing
        for v in versions:
            check_target(models_dir, name, v, force=replace)  # fail before minutes of training
        todo.append(name)
    for name in todo:
        t0 = time.monotonic()
        if name == TEXT_NAME:
            out += build_tiny_lm(models_dir, version, quick, precisions, force or skip_existing, progress, kv_contract)
        else:
            out += build_dcgan_digits(models_dir, version, quick, precisions, force or skip_existing, progress)
        log.info("%s built in %.1f s", name, time.monotonic() - t0)
    return out
