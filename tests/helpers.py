"""Small builders shared by tests: image files of every kind, bad files, tiny classifiers."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from imgclass.data.labels import LabelSpace
from imgclass.models.classifier import Classifier, ModelConfig


def rgb_image(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def save_png(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_bad_files(folder: Path) -> dict[str, str]:
    """One file of every bad kind; returns {file name: expected words in the reason}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes(rgb_image(99, (64, 64)))
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notanimage.jpg").write_bytes(b"this is plain text, not a JPEG\n" * 10)
    bomb = Image.new("1", (10_000, 10_000))  # 100 M pixels, a few kB as PNG
    bomb.save(folder / "bomb.png")
    return {"truncated.jpg": "truncated", "empty.png": "empty", "notanimage.jpg": "not an image",
            "bomb.png": "decompression bomb"}


class TinyNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def tiny_classifier(names: list[str], size: int = 32, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return Classifier(TinyNet(len(names)), labels=LabelSpace.from_names(names),
                      config=ModelConfig((3, size, size), (0.5,) * 3, (0.25,) * 3, 1.0, "bilinear"),
                      source="tiny")


def lossless_train(n: int, folder: Path) -> Path:
    """The first ``n`` lossless CIFAR-10 training images as ``folder/train{n}.npz``."""
    from conftest import mirror_file

    src = np.load(mirror_file("cifar10-lossless/train-first2000.npz"))
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / f"train{n}.npz"
    np.savez(p, images=src["images"][:n], labels=src["labels"][:n], class_names=src["class_names"])
    return p
