"""Training of the built-in ``dcgan-digits`` model on scikit-learn's 8x8 digits, upscaled to 32x32.

``load_digits`` ships inside scikit-learn, so nothing is downloaded. The quality figure is
``class_accuracy``: a classifier trained on the real upscaled digits labels generated images, and we count
how often it agrees with the class the generator was asked for.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from genqueue_exporter.dcgan import DCGANConfig, Discriminator, Generator
from genqueue_exporter.progress import training_bar


@dataclass
class GANTrainSettings:
    steps: int = 2500  # ~100 s on 2 cores; digits are recognisable and varied from ~2000
    batch_size: int = 64
    lr: float = 2e-4
    seed: int = 0
    eval_per_class: int = 100  # generated images per class for class_accuracy
    threads: int | None = None  # None = all cores; quick mode uses one (see TextTrainSettings.threads)

    @classmethod
    def quick(cls) -> GANTrainSettings:
        return cls(steps=30, batch_size=32, eval_per_class=10, threads=1)


@dataclass
class TrainedGAN:
    generator: Generator  # in eval mode, BatchNorm statistics recalibrated
    config: DCGANConfig
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, object] = field(default_factory=dict)  # settings recorded in manifest.extra


def load_digits_32() -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits as float32 [N,1,32,32] in [-1,1] and int64 labels [N]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N,1,8,8] in [0,1]
    # Bilinear keeps strokes smooth; nearest would teach the generator 4x4 blocks.
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    return x * 2 - 1, torch.tensor(digits.target, dtype=torch.long)


def fit_digit_classifier(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> tuple[object, float]:
    """A logistic regression on the real upscaled digits; returns it and its held-out accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    flat = x.reshape(len(x), -1).numpy()
    x_tr, x_te, y_tr, y_te = train_test_split(flat, y.numpy(), test_size=0.2, random_state=seed, stratify=y)
    clf = LogisticRegression(max_iter=2000, C=0.1)
    clf.fit(x_tr, y_tr)
    acc = float((clf.predict(x_te) == y_te).mean())
    clf.fit(flat, y.numpy())  # the final judge sees every real digit
    return clf, acc


@torch.no_grad()
def recalibrate_batchnorm(gen: Generator, batches: int = 50, batch_size: int = 256, seed: int = 1) -> None:
    """Replace the running BatchNorm statistics with exact averages over many generated batches.

    The exported graph runs BatchNorm in eval mode; the running averages left by training lag behind the
    final weights, which visibly blurs samples. A cumulative average (momentum=None) over fresh batches
    fixes that without touching the weights.
    """
    gen_rng = torch.Generator().manual_seed(seed)
    bns = [m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    gen.train()
    cfg = gen.config
    for _ in range(batches):
        z = torch.randn(batch_size, cfg.latent_size, generator=gen_rng)
        c = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen_rng)
        gen(z, c)
    for bn in bns:
        bn.momentum = 0.1
    gen.eval()


@torch.no_grad()
def class_accuracy(gen: Generator, clf: object, per_class: int, seed: int = 2) -> float:
    cfg = gen.config
    gen_rng = torch.Generator().manual_seed(seed)
    labels = torch.arange(cfg.num_classes).repeat_interleave(per_class)  # [10*per_class]
    z = torch.randn(len(labels), cfg.latent_size, generator=gen_rng)
    images = gen.eval()(z, labels)
    pred = clf.predict(images.reshape(len(labels), -1).numpy())  # type: ignore[attr-defined]
    return float((pred == labels.numpy()).mean())


def train_dcgan(
    cfg: DCGANConfig | None = None, settings: GANTrainSettings | None = None, progress: bool = True
) -> TrainedGAN:
    cfg = cfg or DCGANConfig()
    st = settings or GANTrainSettings()
    torch.manual_seed(st.seed)
    torch.set_num_threads(st.threads or os.cpu_count() or 1)
    x, y = load_digits_32()
    clf, clf_acc = fit_digit_classifier(x, y, seed=st.seed)

    gen, disc = Generator(cfg), Discriminator(cfg)
    # Adam with beta1=0.5: the DCGAN paper's setting, which damps the oscillation between the two players.
    opt_g = torch.optim.Adam(gen.parameters(), lr=st.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=st.lr, betas=(0.5, 0.999))
    rng = torch.Generator().manual_seed(st.seed)
    n = len(x)
    start = time.monotonic()
    bar = training_bar(st.steps, "dcgan-digits", progress)
    d_loss_v = g_loss_v = 0.0
    for _ in bar:
        idx = torch.randint(0, n, (st.batch_size,), generator=rng)
        real, real_y = x[idx], y[idx]
        # One-pixel random shifts: 1.8k digits is little data, and the discriminator memorises it otherwise.
        shift = torch.randint(-1, 2, (2,), generator=rng).tolist()
        real = torch.roll(real, shifts=(shift[0], shift[1]), dims=(2, 3))
        z = torch.randn(st.batch_size, cfg.latent_size, generator=rng)
        fake_y = torch.randint(0, cfg.num_classes, (st.batch_size,), generator=rng)
        fake = gen(z, fake_y)

        # Discriminator: hinge loss on (image, class) pairs; fakes are judged with the class they were asked for.
        d_loss = (
            F.relu(1.0 - disc(real, real_y)).mean() + F.relu(1.0 + disc(fake.detach(), fake_y)).mean()
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()

        g_loss = -disc(fake, fake_y).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        d_loss_v, g_loss_v = float(d_loss.detach()), float(g_loss.detach())
        bar.set_postfix(d=f"{d_loss_v:.3f}", g=f"{g_loss_v:.3f}", refresh=False)
    bar.close()

    recalibrate_batchnorm(gen)
    acc = class_accuracy(gen, clf, st.eval_per_class)
    seconds = time.monotonic() - start
    metrics = {
        "class_accuracy": acc,
        "classifier_accuracy": clf_acc,
        "d_loss": d_loss_v,
        "g_loss": g_loss_v,
        "params": float(sum(p.numel() for p in gen.parameters())),
        "train_seconds": round(seconds, 1),
    }
    training = {
        "dataset": "sklearn.datasets.load_digits (8x8, upscaled bilinear to 32x32)",
        "steps": st.steps,
        "batch_size": st.batch_size,
        "lr": st.lr,
        "seed": st.seed,
        "judge": "sklearn LogisticRegression(C=0.1) on real upscaled digits",
        "eval_per_class": st.eval_per_class,
    }
    return TrainedGAN(generator=gen.eval(), config=cfg, metrics=metrics, training=training)

