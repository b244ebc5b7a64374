"""What the ``imgclass serve`` tests share: test images from the asset mirror, runs recorded by ``imgclass eval``, and
a real uvicorn server on a free port in a thread."""

from __future__ import annotations

import io
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import mirror_file

CIFAR_NPZ = "cifar10-lossless/test-first1000.npz"
IMAGENET_TAR = "imagenet/imagenet-samples.tar"
# An ImageNet sample the Coral MobileNet v2 (1.0, 224) classifies as its own class, "goldfish" (ImageNet class 1,
# index 2 of the model's 1001 outputs with background at 0; the folder wnid n01443537 is its label in the mirror, see
# ../shared/assets/README.md): the model gives it probability 0.999, a margin no float rounding can flip.
IMAGENET_MEMBER = "imagenet-samples/n01443537/n01443537_goldfish.jpg"
IMAGENET_CLASS = "goldfish, Carassius auratus"


def cifar_images(n: int = 10) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` lossless CIFAR-10 test images (uint8 N,32,32,3) and their class names."""
    with np.load(mirror_file(CIFAR_NPZ)) as z:
        names = [str(c) for c in z["class_names"]]
        return z["images"][:n].copy(), [names[int(i)] for i in z["labels"][:n]]


def one_per_class() -> list[tuple[int, np.ndarray, str]]:
    """(index, image, class) of the first test image of each CIFAR-10 class."""
    with np.load(mirror_file(CIFAR_NPZ)) as z:
        names = [str(c) for c in z["class_names"]]
        seen, out = set(), []
        for i, y in enumerate(z["labels"]):
            if int(y) not in seen:
                seen.add(int(y))
                out.append((i, z["images"][i].copy(), names[int(y)]))
        return out


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def imagenet_jpeg() -> bytes:
    """The bytes of the goldfish sample (a 256 px short side JPEG)."""
    with tarfile.open(mirror_file(IMAGENET_TAR)) as t:
        return t.extractfile(IMAGENET_MEMBER).read()


def record_runs(root: Path, store_url: str) -> list[int]:
    """Two eval runs (ResNet-20 and ResNet-32, accuracy + calibration on 100 lossless CIFAR-10 test images) written
    to ``root`` and recorded in ``store_url``; their run ids."""
    from imgclass import evaluate

    ids = []
    for name in ("cifar10-resnet20", "cifar10-resnet32"):
        r = evaluate(f"zoo:{name}", "zoo:cifar10-lossless:test", probes=["accuracy", "calibration"],
                     out=root / name, limit=100, store=store_url, progress=False, workers=0)
        ids.append(int(r["run_id"]))
    return ids


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """``with ServerThread(app, host=...) as s:`` a real uvicorn server on a free port; ``s.url`` reaches it over
    loopback. Leaving the block shuts it down as SIGTERM would (graceful)."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        t0 = time.monotonic()
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30) -> bool:
        self.server.should_exit = True
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def __exit__(self, *exc) -> None:
        self.stop()
