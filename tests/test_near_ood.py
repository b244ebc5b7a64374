"""zoo:imagenet-near-ood-cifar10: the overlap list against the ImageNet class list, invariants of the dataset, and a
sanity check with a real CIFAR-10 model."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from imgclass import load_dataset, load_model
from imgclass.data.labels import CIFAR10
from imgclass.data.near_ood import cifar10_imagenet_overlap, resize_like_cifar

from conftest import mirror_file

OVERLAP = cifar10_imagenet_overlap()
REMOVED = {r.index for r in OVERLAP}

# ImageNet-1k index ranges checked against the names file below (first and last member, and the neighbours outside)
RANGES = {
    "bird": [(7, 24, "cock", "great_grey_owl"), (80, 100, "black_grouse", "black_swan"),
             (127, 146, "white_stork", "albatross")],
    "dog": [(151, 268, "Chihuahua", "Mexican_hairless"), (269, 280, "timber_wolf", "grey_fox")],
    "cat": [(281, 285, "tabby", "Egyptian_cat"), (286, 293, "cougar", "cheetah")],
    "frog": [(30, 32, "bullfrog", "tailed_frog")],
}
NOT_NEIGHBOURS = {6: "stingray", 25: "European_fire_salamander", 29: "axolotl", 33: "loggerhead", 79: "centipede",
                  101: "tusker", 126: "isopod", 147: "grey_whale", 150: "sea_lion", 294: "brown_bear"}
# every named CIFAR-10 look-alike the brief lists
NAMED = {"sorrel": "horse", "airliner": "airplane", "warplane": "airplane", "sports_car": "automobile",
         "cab": "automobile", "convertible": "automobile", "jeep": "automobile", "limousine": "automobile",
         "minivan": "automobile", "Model_T": "automobile", "racer": "automobile", "beach_wagon": "automobile",
         "ambulance": "automobile", "police_van": "automobile", "liner": "ship", "container_ship": "ship",
         "schooner": "ship", "yawl": "ship", "catamaran": "ship", "trimaran": "ship", "fireboat": "ship",
         "lifeboat": "ship", "pirate": "ship", "submarine": "ship", "speedboat": "ship", "fire_engine": "truck",
         "garbage_truck": "truck", "moving_van": "truck", "pickup": "truck", "tow_truck": "truck",
         "trailer_truck": "truck"}
# names that look like a CIFAR-10 class but are not one (by index: ImageNet names repeat, e.g. crane 134 and 517)
NAME_TRAPS = {726: "plane", 705: "passenger_car", 383: "Madagascar_cat", 996: "hen-of-the-woods", 934: "hotdog",
              475: "car_mirror", 479: "car_wheel", 517: "crane", 448: "birdhouse", 3: "tiger_shark",
              300: "tiger_beetle", 405: "airship", 779: "school_bus", 847: "tank"}


@pytest.fixture(scope="module")
def imagenet_classes() -> list[tuple[int, str, str]]:
    path = mirror_file("imagenet/imagenet-samples-classes.tsv")
    rows = [line.split("\t") for line in path.read_text().splitlines() if line]
    return [(int(i), w, n) for i, w, n in rows]


@pytest.fixture(scope="module")
def near_ood():
    mirror_file("imagenet/imagenet-samples.tar")
    return load_dataset("zoo:imagenet-near-ood-cifar10:all")


def test_removed_list_has_no_duplicates_and_every_class_exists(imagenet_classes):
    assert len({r.index for r in OVERLAP}) == len({r.wnid for r in OVERLAP}) == len(OVERLAP)
    by_index = {i: (w, n) for i, w, n in imagenet_classes}
    assert len(by_index) == 1000
    for r in OVERLAP:
        assert by_index[r.index] == (r.wnid, r.name), r
        assert r.cifar10_class in CIFAR10 and r.reason.strip(), r
    assert set(Counter(r.cifar10_class for r in OVERLAP)) == set(CIFAR10)  # every CIFAR-10 class has look-alikes


def test_index_ranges_match_the_names_file(imagenet_classes):
    names = {i: n for i, _, n in imagenet_classes}
    for ranges in RANGES.values():
        for lo, hi, first, last in ranges:
            assert (names[lo], names[hi]) == (first, last)
    for i, name in NOT_NEIGHBOURS.items():
        assert names[i] == name


def test_invariant_every_bird_dog_cat_frog_by_index_range_is_removed():
    cls = {r.index: r.cifar10_class for r in OVERLAP}
    for cifar, ranges in RANGES.items():
        for lo, hi, _, _ in ranges:
            assert {i: cls.get(i) for i in range(lo, hi + 1)} == {i: cifar for i in range(lo, hi + 1)}
    assert not REMOVED & set(NOT_NEIGHBOURS)


def test_invariant_named_look_alikes_removed_and_name_traps_kept(imagenet_classes):
    cls = {r.name: r.cifar10_class for r in OVERLAP}
    assert {n: cls.get(n) for n in NAMED} == NAMED
    names = {i: n for i, _, n in imagenet_classes}
    assert {i: names[i] for i in NAME_TRAPS} == NAME_TRAPS
    assert not REMOVED & set(NAME_TRAPS)


def test_resize_like_cifar_short_side_then_centre_crop():
    rng = np.random.default_rng(0)
    for h, w in [(375, 500), (500, 333), (64, 64), (20, 50)]:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        out = resize_like_cifar(img)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8
        s = 32 / min(h, w)
        nh, nw = round(h * s), round(w * s)
        ref = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BOX))
        top, left = (nh - 32) // 2, (nw - 32) // 2
        np.testing.assert_array_equal(out, ref[top:top + 32, left:left + 32])
    flat = np.full((300, 400, 3), 77, dtype=np.uint8)
    assert (resize_like_cifar(flat) == 77).all()


def test_dataset_counts_shape_unlabeled_and_ids(near_ood):
    ds = near_ood
    assert len(ds) == 1000 - len(OVERLAP) == 740
    assert not ds.labeled and (ds.labels == -1).all()
    x = ds[0].image
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8
    assert ds.images.shape == (len(ds), 32, 32, 3) and ds.images.dtype == np.uint8
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert len(set(ids)) == len(ids)
    removed_wnids = {r.wnid for r in OVERLAP}
    assert not {i.split("/")[0] for i in ids} & removed_wnids
    assert ds.images.std() > 20  # real images, not a blank buffer


def test_dataset_is_deterministic_and_matches_its_source(near_ood):
    again = load_dataset("zoo:imagenet-near-ood-cifar10")
    np.testing.assert_array_equal(again.images, near_ood.images)
    assert [again.sample_id(i) for i in range(len(again))] == [near_ood.sample_id(i) for i in range(len(near_ood))]
    src = load_dataset("zoo:imagenet-samples:all")
    pos = {src.sample_id(i): i for i in range(len(src))}
    for k in (0, len(near_ood) // 2, len(near_ood) - 1):
        img = src.load(pos[near_ood.sample_id(k)]).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(near_ood.images[k], resize_like_cifar(img))


def _mean_msp(clf, images_nchw_uint8: torch.Tensor) -> float:
    with torch.no_grad():
        return float(clf(images_nchw_uint8.float() / 255).softmax(1).amax(1).mean())


def test_sanity_check_cifar10_model_is_less_confident_on_near_ood_than_on_cifar10(near_ood):
    """Sanity check, not a benchmark: ResNet-20's mean max-softmax is lower here than on CIFAR-10 test images."""
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    mirror_file("cifar10-lossless/test-first1000.npz")
    clf = load_model("zoo:cifar10-resnet20").eval()
    cifar = load_dataset("zoo:cifar10-lossless:test")
    id_msp = _mean_msp(clf, torch.stack([cifar.load(i) for i in range(len(cifar))]))
    ood_msp = _mean_msp(clf, torch.from_numpy(near_ood.images).permute(0, 3, 1, 2))
    assert ood_msp < id_msp - 0.05, (ood_msp, id_msp)
