"""The small networks people start with: a dense baseline, the tutorial CNN and a regularised CNN."""

from __future__ import annotations

import torch
from torch import nn


class DenseBaseline(nn.Module):
    """Multi-layer perceptron on a 32 x 32 thumbnail of the image (the notebooks' "flatten + dense" baseline).

    Pooling to a fixed thumbnail keeps the parameter count independent of ``--image-size``.
    ``width`` is the first hidden layer's size. Input (B, 1, H, W) -> logits (B, out_features).
    """

    def __init__(self, out_features: int, width: int = 256, dropout: float = 0.3) -> None:
        super().__init__()
        hidden = width
        self.net = nn.Sequential(
            nn.AdaptiveAvgPool2d(32),
            nn.Flatten(),
            nn.Linear(32 * 32, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(inplace=True),
            nn.Linear(hidden // 2, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.net(x)


class SimpleCNN(nn.Module):
    """The three-block tutorial CNN: (conv 3x3, ReLU, max-pool) x 3, then two dense layers.

    No batch norm and no dropout, on purpose: it is the unregularised reference. A 4 x 4 adaptive
    pool before the dense layers keeps the parameter count independent of the image size.
    """

    def __init__(self, out_features: int, width: int = 32) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        cin = 1
        for cout in (w, 2 * w, 4 * w):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(cin * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, out_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.head(self.features(x))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class RegularisedCNN(nn.Module):
    """A regularised CNN: a strided stem, four blocks of two conv-BN-ReLU layers with max-pooling
    between them, global average pooling and dropout before the classifier (weight decay comes from
    the optimiser). About 0.7M parameters at the default width of 24; fast on a CPU.
    """

    def __init__(self, out_features: int, width: int = 24, dropout: float = 0.3) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(1, width), nn.MaxPool2d(2)]  # cheap stem halves the image first
        cin = width
        for mult in (1, 2, 4, 8):
            cout = width * mult
            layers += [*_conv_bn(cin, cout), *_conv_bn(cout, cout), nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers[:-1])  # no pool after the last block: GAP follows
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.head(self.features(x))


class _PasaBlock(nn.Module):
    """Two conv-BN-ReLU layers beside a 1x1 conv-BN-ReLU shortcut; the two paths are averaged."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        s = stride // 2 if stride > 1 else 1  # the first block halves the size twice, once per conv
        self.main = nn.Sequential(
            nn.Conv2d(cin, mid, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average of the convolutional path and the shortcut."""
        return (self.main(x) + self.shortcut(x)) * 0.5


class PasaNet(nn.Module):
    """The small TB-screening network of Pasa et al. 2019 (Sci Rep 9:6268), about 0.2M parameters.

    Five residual-style blocks whose channel counts grow by a fixed step (8 by default: 4/16, 24/32,
    40/48, 56/64, 72/80), the first block striding by 4, max-pooling (3x3, stride 2) between blocks,
    global average pooling and one linear layer. Built for fast CPU screening.
    """

    def __init__(self, out_features: int, width: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = 1
        for i in range(5):
            mid, cout = (width * (2 * i + 1) if i else width // 2), width * (2 * i + 2)
            blocks.append(_PasaBlock(cin, mid, cout, stride=4 if i == 0 else 1))
            if i < 4:
                blocks.append(nn.MaxPool2d(3, stride=2, padding=1))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.head(self.features(x))
