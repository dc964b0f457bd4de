"""A small class-conditional DCGAN for 32x32 single-channel images, and its discriminator.

The generator is the ONNX image contract: ``forward(z[B,latent] float32, class_label[B] int64)`` ->
``images[B,C,32,32]`` in [-1, 1]. The discriminator judges (image, class) pairs, which makes the generator
draw the class it is asked for; ``class_accuracy`` in the manifest measures how well it does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class DCGANConfig:
    latent_size: int = 64
    num_classes: int = 10
    channels: int = 1
    image_size: int = 32  # fixed by the three 2x up-samplings from 4x4
    ngf: int = 32  # generator width: channels at 16x16; 2x at 8x8, 4x at 4x4
    ndf: int = 32  # discriminator width
    embed_dim: int = 16  # class embedding concatenated to z

    def __post_init__(self) -> None:
        for f in fields(self):  # a JSON config can hold anything: "8", -1, null, true
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{f.name} must be an integer in 1..4096, not {value!r}")
        if self.image_size != 32:
            raise ValueError(f"image_size must be 32 for this architecture, got {self.image_size}")
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1 (the built-in generator is conditional)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DCGANConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown DCGAN config keys: {', '.join(unknown)}")
        return cls(**raw)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        self.config = cfg
        g = cfg.ngf
        self.embed = nn.Embedding(cfg.num_classes, cfg.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(cfg.latent_size + cfg.embed_dim, 4 * g * 4 * 4, bias=False),
            nn.BatchNorm1d(4 * g * 4 * 4),
            nn.ReLU(True),
        )
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * g, 2 * g, 4, 2, 1, bias=False),  # [B,2g,8,8]
            nn.BatchNorm2d(2 * g),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * g, g, 4, 2, 1, bias=False),  # [B,g,16,16]
            nn.BatchNorm2d(g),
            nn.ReLU(True),
            nn.ConvTranspose2d(g, cfg.channels, 4, 2, 1),  # [B,C,32,32]
            nn.Tanh(),
        )
        self.apply(_dcgan_init)

    def forward(self, z: Tensor, class_label: Tensor) -> Tensor:
        h = torch.cat([z, self.embed(class_label)], dim=1)  # [B,latent+embed]
        h = self.project(h).view(z.shape[0], 4 * self.config.ngf, 4, 4)  # [B,4g,4,4]
        return self.net(h)  # [B,C,32,32] in [-1,1]


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama, 2018) with a minibatch-stddev feature (Karras et al.).

    An auxiliary-classifier head (AC-GAN) was tried first: classes came out right but every z gave the same
    digit. The projection term conditions without rewarding the single most classifiable image, and the
    stddev channel lets the discriminator see (and punish) a batch with no variety.
    """

    def __init__(self, cfg: DCGANConfig) -> None:
        super().__init__()
        d = cfg.ndf
        self.features = nn.Sequential(
            nn.Conv2d(cfg.channels, d, 4, 2, 1),  # [B,d,16,16]
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(d, 2 * d, 4, 2, 1),  # [B,2d,8,8]
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * d, 4 * d, 4, 2, 1),  # [B,4d,4,4]
            nn.LeakyReLU(0.2, True),
        )
        self.final = nn.Sequential(
            nn.Conv2d(4 * d + 1, 4 * d, 4, 1, 0),  # [B,4d,1,1]: +1 input channel for the batch stddev
            nn.LeakyReLU(0.2, True),
            nn.Flatten(),  # [B,4d]
        )
        self.real_fake = nn.Linear(4 * d, 1)
        self.class_embed = nn.Embedding(cfg.num_classes, 4 * d)
        self.apply(_dcgan_init)

    def forward(self, images: Tensor, class_label: Tensor) -> Tensor:
        h = self.features(images)  # [B,4d,4,4]
        std = h.std(dim=0).mean().expand(h.shape[0], 1, 4, 4)  # [B,1,4,4]: one figure for the whole batch
        h = self.final(torch.cat([h, std], dim=1))  # [B,4d]
        proj = (self.class_embed(class_label) * h).sum(dim=1)  # [B]
        return self.real_fake(h).squeeze(1) + proj  # [B] real/fake logit for that class


def _dcgan_init(m: nn.Module) -> None:
    # The DCGAN paper's init; the default Kaiming init makes early training noticeably less stable.
    if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
