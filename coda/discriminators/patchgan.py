"""VQGAN-style PatchGAN (NLayerDiscriminator design): needs no pretrained weights."""
from __future__ import annotations

from torch import nn


class PatchGAN(nn.Module):
    """Strided 4x4 convs with LeakyReLU 0.2, BatchNorm after all but the first, one logit per patch.

    ``n_layers`` stride-2 convs halve the image each; one more stride-1 conv doubles the width
    again (capped at 8x) before the final 1-channel conv.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = 1
        for n in range(1, n_layers + 1):
            previous, width = width, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(channels * previous, channels * width, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(channels * width), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(channels * width, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.config = {"kind": "patchgan", "in_channels": in_channels, "channels": channels, "n_layers": n_layers}
        self.apply(_init_weights)

    def forward(self, x):
        return self.main(x)


def _init_weights(module: nn.Module) -> None:
    # VQGAN's init: conv weights N(0, 0.02); BatchNorm gain N(1, 0.02), bias 0.
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
