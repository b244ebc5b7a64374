"""TCAV (Kim et al. 2018) on a planted concept: a tiny CNN trained for a few seconds on synthetic images
where a red patch means class 'red' and a blue patch class 'blue'. The red concept must score high and
significantly for class 'red'; a random set posing as a concept must not be significant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from imgclass.data.labels import LabelSpace
from imgclass.explain import tcav, train_cav
from imgclass.models.classifier import Classifier, ModelConfig

SIZE = 32
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.1, 0.9)


def _images(n: int, rng: np.random.Generator, colour=None, *, background: str = "noise",
            patches: int = 1) -> torch.Tensor:
    """Noise backgrounds with square patches: of the given colour, or of a random colour when None."""
    if background == "noise":
        x = rng.uniform(0.2, 0.8, (n, 3, SIZE, SIZE))
    else:  # flat gray: concept examples look different from the training images
        x = np.full((n, 3, SIZE, SIZE), rng.uniform(0.3, 0.7, (n, 1, 1, 1)))
    for i in range(n):
        for _ in range(patches):
            s = int(rng.integers(6, 11))
            r, c = rng.integers(0, SIZE - s, 2)
            col = rng.uniform(0, 1, 3) if colour is None else np.asarray(colour) + rng.normal(0, 0.05, 3)
            x[i, :, r:r + s, c:c + s] = np.clip(col, 0, 1)[:, None, None]
    return torch.tensor(x, dtype=torch.float32)


class _PatchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).amax((2, 3)))


@pytest.fixture(scope="module")
def patch_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    clf = Classifier(_PatchNet(), labels=LabelSpace.from_names(["blue", "red"]),
                     config=ModelConfig((3, SIZE, SIZE), (0.5,) * 3, (0.25,) * 3, 1.0, "bilinear"), source="patchnet")
    x = torch.cat([_images(256, rng, BLUE), _images(256, rng, RED)])
    y = torch.cat([torch.zeros(256), torch.ones(256)]).long()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    clf.train()
    for step in range(100):
        idx = torch.randint(0, len(x), (64,))
        loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    clf.eval()
    xt = torch.cat([_images(100, rng, BLUE), _images(100, rng, RED)])
    yt = torch.cat([torch.zeros(100), torch.ones(100)]).long()
    with torch.no_grad():
        acc = float((clf(xt).argmax(1) == yt).float().mean())
    assert acc > 0.95, f"the planted task was not learned (accuracy {acc:.3f})"
    return clf


def test_planted_concept_is_significant_and_random_is_not(patch_model, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    red_dir = tmp_path / "red_concept"
    red_dir.mkdir()
    for i, img in enumerate(_images(24, rng, RED, background="flat", patches=3)):  # a folder of files
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(red_dir / f"{i}.png")
    randoms = [_images(24, np.random.default_rng(100 + k)) for k in range(7)]
    res = tcav(patch_model, _images(40, rng, RED), "red", layer="act2",
               concepts={"red": red_dir, "blue": _images(24, rng, BLUE, background="flat", patches=3),
                         "random_as_concept": _images(24, np.random.default_rng(999))},
               random=randoms, seed=0)
    red, blue, rnd = res.concepts["red"], res.concepts["blue"], res.concepts["random_as_concept"]
    assert res.target == 1 and res.layer == "act2"
    assert red.mean > 0.8 and red.significant and red.p_value < 0.01, red
    assert np.mean(red.cav_accuracy) > 0.75 > np.mean(rnd.cav_accuracy)  # chance is 0.5
    assert blue.mean < 0.3 and blue.significant, blue  # two-sided: a concept that lowers the class counts too
    assert not rnd.significant, rnd
    d = res.to_dict()
    assert set(d["concepts"]) == {"red", "blue", "random_as_concept"} and len(d["random_scores"]) == 6
    fig = res.plot()
    assert len(fig.axes[0].patches) == 4
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_cav_points_to_the_concept_and_tcav_checks_its_inputs(patch_model):
    """A CAV separating two point clouds points from the negatives to the positives (scikit-learn fit)."""
    rng = np.random.default_rng(0)
    pos = rng.normal(0, 1, (60, 5)) + np.array([3, 0, 0, 0, 0])
    neg = rng.normal(0, 1, (60, 5))
    for model in ("sgd", "logistic"):
        cav, acc = train_cav(pos, neg, model=model)
        assert abs(np.linalg.norm(cav) - 1) < 1e-9 and cav[0] > 0.8 and acc > 0.9
    x = _images(8, rng)
    with pytest.raises(ValueError, match="at least 3 random"):
        tcav(patch_model, x, 1, concepts={"a": x}, random=[x, x])
    with pytest.raises(FileNotFoundError, match="not a folder"):
        tcav(patch_model, x, 1, concepts={"a": "/nonexistent/folder"}, random=[x, x, x])


def test_probe_runs_tcav_on_the_dataset_images_of_the_target_class(patch_model, tmp_path):
    """The explanations probe's TCAV equals tcav() on the same images, folders and seed; the report shows it."""
    import json

    from PIL import Image

    from imgclass.evaluate import evaluate
    from imgclass.explain import load_images

    def save(images: torch.Tensor, folder) -> None:
        folder.mkdir(parents=True)
        for i, img in enumerate(images):
            arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i:03d}.png")

    rng = np.random.default_rng(2)
    save(_images(40, rng, RED), tmp_path / "data" / "red")  # the dataset: class folders named as the model's
    save(_images(4, rng, BLUE), tmp_path / "data" / "blue")
    save(_images(24, rng, RED, background="flat", patches=3), tmp_path / "concepts" / "red")
    randoms = [tmp_path / "random" / str(k) for k in range(7)]
    for k, folder in enumerate(randoms):
        save(_images(24, np.random.default_rng(100 + k)), folder)
    params = {"n_samples": 2, "methods": ("gradcam",), "n_steps": 4, "randomization": False, "gallery": 1,
              "tcav_concepts": {"red": str(tmp_path / "concepts" / "red")}, "tcav_random": [str(f) for f in randoms],
              "tcav_target": "red", "tcav_layer": "act2"}
    evaluate(patch_model, f"folder:{tmp_path / 'data'}", probes=["explanations"],
             probe_params={"explanations": params}, out=tmp_path / "out", progress=False, workers=0)
    t = json.loads((tmp_path / "out" / "results.json").read_text())["probes"]["explanations"]["tcav"]
    assert t["target_name"] == "red" and t["n_class_images"] == 40 and len(t["random_scores"]) == 6
    ref = tcav(patch_model, load_images(sorted((tmp_path / "data" / "red").iterdir()), patch_model.config), "red",
               concepts={"red": tmp_path / "concepts" / "red"}, random=randoms, layer="act2", seed=0)
    assert t["concepts"]["red"]["scores"] == pytest.approx(ref.concepts["red"].scores)
    assert t["concepts"]["red"]["p_value"] == pytest.approx(ref.concepts["red"].p_value)
    assert t["concepts"]["red"]["significant"] and t["concepts"]["red"]["mean"] > 0.8
    html = (tmp_path / "out" / "report.html").read_text()
    assert "TCAV" in html and html.count("data:image/png;base64") >= 2  # curves and TCAV plots
    with pytest.raises(ValueError, match="tcav_target"):
        evaluate(patch_model, f"folder:{tmp_path / 'data'}", probes=["explanations"],
                 probe_params={"explanations": {**params, "tcav_target": None}}, progress=False, workers=0)
