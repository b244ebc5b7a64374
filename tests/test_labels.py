"""Label spaces align by wnid or name, never by hoping indices agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgclass import evaluate
from imgclass.data.base import ArrayDataset
from imgclass.data.labels import LabelAlignmentError, LabelSpace, align_labels, imagenet_space, named_space
from imgclass.models.classifier import Classifier, ModelConfig

from conftest import mirror_file


def test_1001_way_model_on_1000_class_folder_aligns_by_wnid():
    """The background column is dropped; class i of the folder is model output i + 1."""
    model = imagenet_space(background=True)
    data = LabelSpace.from_names(list(imagenet_space().wnids))  # a folder named by wnids
    al = align_labels(model, data)
    assert al.method == "wnid" and torch.equal(al.index, torch.arange(1, 1001))
    assert al.dropped == ["background"]
    logits = torch.randn(4, 1001)
    assert torch.equal(al.apply(logits), logits[:, 1:])


def test_subset_of_classes_by_name_in_any_order():
    model = named_space("cifar10")
    data = LabelSpace.from_names(["ship", "cat", "Automobile"])
    al = align_labels(model, data)
    assert al.method == "name" and al.index.tolist() == [8, 3, 1]


def test_missing_classes_error_names_them():
    with pytest.raises(LabelAlignmentError, match="2 of the dataset's 3 classes.*(giraffe|zebra)"):
        align_labels(named_space("cifar10"), LabelSpace.from_names(["cat", "giraffe", "zebra"]))


def test_unnamed_spaces_align_by_index_only_when_sizes_agree():
    al = align_labels(LabelSpace.anonymous(10), named_space("cifar10"))
    assert al.method == "index" and al.is_identity
    with pytest.raises(LabelAlignmentError, match="classes=") :
        align_labels(LabelSpace.anonymous(1001), named_space("cifar10"))


def test_labels_file_of_1001_lines_is_imagenet_with_background(tmp_path):
    p = mirror_file("models/coral-mobilenet-tflite/imagenet_labels.txt")
    space = named_space(str(p))
    assert len(space) == 1001 and space.wnids[0] is None and space.wnids[1] == "n01440764"


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)) * 0 + self.logits[: x.shape[0]]


def test_shuffled_dataset_class_order_gives_the_same_accuracy():
    """Invariant: renaming/reordering a dataset's classes (labels permuted alike) does not change accuracy."""
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 10, n)
    logits = torch.tensor(rng.normal(size=(n, 10)), dtype=torch.float32)
    logits[torch.arange(n), torch.tensor(labels)] += 1.5
    names = list(named_space("cifar10").names)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    perm = rng.permutation(10)  # dataset class j is cifar class perm[j]
    inv = np.argsort(perm)
    ds_a = ArrayDataset(images, labels, named_space("cifar10"), spec="a")
    ds_b = ArrayDataset(images, inv[labels], LabelSpace.from_names([names[p] for p in perm]), spec="b")

    class Fixed(torch.nn.Module):
        def forward(self, x):
            idx = (x[:, 0, 0, 0] * 0).long()  # logits by position: batches keep dataset order here
            return logits[self.offset:self.offset + len(x)] + idx[:, None]

    results = []
    for ds in (ds_a, ds_b):
        m = Fixed()
        m.offset = 0
        clf = Classifier(m, labels=named_space("cifar10"), config=ModelConfig((3, 4, 4), (0,) * 3, (1,) * 3, 1.0),
                         source="fixed")
        r = evaluate(clf, ds, probes=["accuracy", "calibration"], batch_size=n, workers=0, progress=False)
        results.append(r["probes"])
    assert results[0]["accuracy"]["top1"] == results[1]["accuracy"]["top1"]
    assert results[0]["calibration"]["ece"] == pytest.approx(results[1]["calibration"]["ece"], abs=1e-12)
