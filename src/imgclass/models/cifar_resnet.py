"""CIFAR ResNets of He et al. 2016 (Sec. 4.2): 3 stages of 16/32/64 channels, n basic blocks each.

Shortcut "option A": parameter-free; when the shape changes, subsample by 2 and zero-pad channels.
State-dict keys follow the published weights of akamaster/pytorch_resnet_cifar10, so they load as is.
Also ResNet-9 (Page 2018) and ResNet-18 with the CIFAR stem (the self-supervised benchmarks' backbone).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError

__all__ = ["CifarResNet", "CifarResNet18", "ResNet9", "cifar_resnet"]


class _PadShortcut(nn.Module):
    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU()
        self.act2 = nn.ReLU()
        self.shortcut = _PadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs, with timm's model interface (forward_features / forward_head)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, zero_init_last: bool = False):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise UsageError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.num_features = 64
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act1 = nn.ReLU()
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
        if zero_init_last:  # each block starts as the identity (Goyal et al. 2017, "Bag of Tricks")
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(64, num_classes)


def cifar_resnet(depth: int, num_classes: int = 10, **kw) -> CifarResNet:
    return CifarResNet(depth, num_classes, **kw)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.res1, self.res2 = _conv_bn(c, c), _conv_bn(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    """The ResNet-9 of Page ("How to train your ResNet", 2018; DAWNBench), with a width multiplier.

    prep (w) -> layer1 (2w, pool, residual) -> layer2 (4w, pool) -> layer3 (8w, pool, residual) ->
    global max pool -> linear, logits scaled by 0.125.
    """

    def __init__(self, num_classes: int = 10, width: int = 64, in_chans: int = 3, zero_init_last: bool = False):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.num_features = 8 * w
        self.prep = _conv_bn(in_chans, w)
        self.layer1 = nn.Sequential(_conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w))
        self.layer2 = nn.Sequential(_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2))
        self.layer3 = nn.Sequential(_conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w))
        self.linear = nn.Linear(8 * w, num_classes, bias=False)
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, _Residual):
                    nn.init.zeros_(m.res2[1].weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer3(self.layer2(self.layer1(self.prep(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.amax(x, dim=(2, 3))
        return x if pre_logits else self.linear(x) * 0.125

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes, bias=False)


class CifarResNet18(nn.Module):
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, so 32x32
    inputs reach the last stage at 4x4 (the backbone of lightly's CIFAR-10 benchmark, ResNetGenerator('resnet-18'),
    and of SimCLR's CIFAR experiments). State-dict keys are torchvision's; timm's model interface."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, zero_init_last: bool = False):
        super().__init__()
        from torchvision.models.resnet import BasicBlock as TvBasicBlock, ResNet

        net = ResNet(TvBasicBlock, [2, 2, 2, 2], num_classes=num_classes, zero_init_residual=zero_init_last)
        net.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision inits convs
        net.maxpool = nn.Identity()
        self.num_classes = num_classes
        self.num_features = 512
        for name in ("conv1", "bn1", "relu", "layer1", "layer2", "layer3", "layer4", "fc"):
            self.add_module(name, getattr(net, name))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)
