"""Backbones + a linear head. The head is separate because GradMix's gradient algebra
needs the features h(x): f(x) = W h(x) + b.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import ExperimentConfig


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, feat_dim: int, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feat_dim, num_classes)
        self.feat_dim = feat_dim
        # eval() vs train() only matters with these layers; skipping the switch saves time per step
        self.mode_sensitive = any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout))
                                  for m in backbone.modules())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class eval_mode:
    """`with eval_mode(model):` no-grad-free switch to eval() and back, skipped when it can't matter."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.switch = getattr(model, "mode_sensitive", True) and model.training

    def __enter__(self):
        if self.switch:
            self.model.eval()
        return self.model

    def __exit__(self, *exc):
        if self.switch:
            self.model.train()


def _mlp(cfg: ExperimentConfig, in_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(in_shape)
    for h in cfg.model.hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        if cfg.model.dropout > 0:
            layers.append(nn.Dropout(cfg.model.dropout))
        d = h
    return nn.Sequential(*layers), d


def _cnn(cfg: ExperimentConfig, in_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    c, h, w = in_shape
    net = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if h >= 8 else nn.Identity(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4, 128), nn.ReLU(),
    )
    return net, 128


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """ResNet18 with nf=20 filters, as in GEM / ER (Lopez-Paz 2017, Chaudhry 2019)."""

    def __init__(self, in_ch: int, nf: int = 20):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        layers, cin = [], nf
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            layers += [_BasicBlock(cin, nf * mult, stride), _BasicBlock(nf * mult, nf * mult, 1)]
            cin = nf * mult
        self.layers = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


def _reduced_resnet18(cfg, in_shape):
    net = ReducedResNet18(in_shape[0], cfg.model.nf)
    return net, net.out_dim


def _resnet18(cfg, in_shape):
    """torchvision resnet18 adapted to 32x32 inputs: 3x3 stem, no max-pool."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net, 512


def _vit(cfg, in_shape):
    """A small torchvision ViT for 32x32-ish images (patch 4, 4 layers, width 128)."""
    import torchvision

    c, h, _ = in_shape
    patch = 4 if h % 4 == 0 else (2 if h % 2 == 0 else 1)
    vit = torchvision.models.VisionTransformer(image_size=h, patch_size=patch, num_layers=4, num_heads=4,
                                               hidden_dim=128, mlp_dim=256, num_classes=1)
    vit.heads = nn.Identity()
    if c != 3:
        vit.conv_proj = nn.Conv2d(c, 128, patch, patch)
    return vit, 128


MODELS: dict[str, Callable[[ExperimentConfig, tuple[int, ...]], tuple[nn.Module, int]]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "reduced_resnet18": _reduced_resnet18,
    "resnet18": _resnet18,
    "vit": _vit,
}


def build_model(cfg: ExperimentConfig, input_shape: tuple[int, ...], num_classes: int) -> Classifier:
    if cfg.model.name != "mlp" and len(input_shape) != 3:
        from .config import ConfigError

        raise ConfigError(None, "model.name", f"{cfg.model.name} needs image inputs, got shape {input_shape}",
                          "use model.name: mlp for vector data")
    backbone, dim = MODELS[cfg.model.name](cfg, input_shape)
    return Classifier(backbone, dim, num_classes)
