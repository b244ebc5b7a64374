"""Training: checkpoints usable by eval (every recipe), exact resume after SIGKILL and Ctrl-C, atomic checkpoints that
respect the umask, settings, drop_last / max_steps / subset, torchrun equivalence."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from imgclass import evaluate, load_model
from imgclass.train import TrainConfig, load_recipe, list_recipes, train
from imgclass.train.data import EpochBatchSampler
from imgclass.train.state import LAST, load_training_state, save_training_checkpoint

from conftest import ROOT, mirror_file
from helpers import lossless_train


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    """256 lossless CIFAR-10 training images as an npz (fast to train on)."""
    return lossless_train(256, tmp_path_factory.mktemp("data"))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _cli(*args: str, env_extra: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "imgclass", "train", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def test_recipes_load_and_resolve():
    assert {"cifar10-resnet20", "cifar10-fast", "imagenet-rsb-a2", "imagenet-rsb-a3"} <= set(list_recipes())
    for name in list_recipes():
        TrainConfig.from_dict(load_recipe(name))  # every key is a known setting
    r20 = TrainConfig.from_dict(load_recipe("cifar10-resnet20"))
    assert r20.lr == 0.1 and r20.weight_decay == 1e-4 and r20.decay_milestones == (82, 123)  # He et al. 2016
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_sampler_shards_the_single_process_batches():
    """Invariant: with N ranks of batch B, step s covers exactly the samples of one process's step s at N*B."""
    one = list(EpochBatchSampler(100, 8, 1, 0, seed=3, epoch=2))
    two = [list(EpochBatchSampler(100, 4, 2, r, seed=3, epoch=2)) for r in range(2)]
    assert len(one) == len(two[0]) == 12
    for s in range(12):
        assert sorted(one[s]) == sorted(two[0][s] + two[1][s])
    resumed = list(EpochBatchSampler(100, 8, 1, 0, seed=3, epoch=2, start_step=5))
    assert resumed == one[5:]


def test_trained_checkpoint_loads_in_eval_with_all_core_probes(small_cifar, tmp_path):
    cfg = TrainConfig(data=f"npz:{small_cifar}", val_data="zoo:cifar10-lossless:test", model="cifar_resnet20",
                      epochs=1, batch_size=64, lr=0.05, workers=0, tensorboard=True, crop="pad")
    res = train(cfg, tmp_path / "run", progress=False)
    assert len(res["history"]) == 1 and res["history"][0]["images"] == 256
    for f in ("config.yaml", "log.csv", "log.jsonl", LAST, "best.safetensors"):
        assert (tmp_path / "run" / f).exists(), f
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    r = evaluate(f"file:{tmp_path / 'run' / 'best.safetensors'}", "zoo:cifar10-lossless:test",
                 probes=["accuracy", "calibration"], limit=200, progress=False)
    assert r["probes"]["accuracy"]["n_evaluated"] == 200 and r["model"]["arch"] == "cifar_resnet20"
    assert r["label_alignment"]["method"] in {"identity", "name"}


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return _cli(f"npz:{data}", "--model", "cifar_resnet20", "--out", str(out), "--quiet",
                "--set", "epochs=2", "--set", "batch_size=32", "--set", "lr=0.05", "--set", "workers=0",
                "--set", "mixup=0.2", "--set", "ema=True", "--set", "tensorboard=False", *extra)


@pytest.fixture(scope="module")
def straight_run(small_cifar, tmp_path_factory) -> Path:
    """The uninterrupted run (16 optimizer steps) that the killed and interrupted runs must reproduce."""
    out = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_train_args(small_cifar, out), check=True, env=_env(), capture_output=True, timeout=600)
    return out


# A run that SIGKILLs itself at a fixed point: right after the checkpoint of update AFTER ("after"), or inside
# that checkpoint's write, once the state file is in place but before last.safetensors is renamed ("during").
_KILLING_RUN = """
import os, signal, sys
import imgclass.train.loop as loop
import imgclass.train.state as state
from imgclass.cli import main

after, phase = int(sys.argv[1]), sys.argv[2]
real_save = loop.save_training_checkpoint

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def save_then_die(out, **kw):
    if kw["state"]["num_updates"] != after:
        return real_save(out, **kw)
    if phase == "during":
        state.save_checkpoint = die
    real_save(out, **kw)
    die()

loop.save_training_checkpoint = save_then_die
sys.exit(main(["train", *sys.argv[3:]]))
"""

# The kill points: drawn once from a fixed seed, so every run of the test kills at the same place.
_KILL_POINTS = [(int(n), phase) for n, phase in
                zip(np.random.default_rng(20240611).integers(2, 15, size=2), ("after", "during"))]


@pytest.mark.slow
@pytest.mark.parametrize("after,phase", _KILL_POINTS, ids=[f"{p}-update-{n}" for n, p in _KILL_POINTS])
def test_kill_and_resume_gives_identical_weights(small_cifar, straight_run, tmp_path, after, phase):
    """Invariant: SIGKILL at a fixed, seeded point (after update AFTER's checkpoint, or in the middle of writing it),
    then the same command resumes; the final safetensors file is byte-identical to an uninterrupted run's (CPU)."""
    killed = tmp_path / "killed"
    args = _train_args(small_cifar, killed, "--set", "checkpoint_every=1")
    p = subprocess.run([sys.executable, "-c", _KILLING_RUN, str(after), phase, *args[4:]], env=_env(),
                       capture_output=True, timeout=600, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    resumed_from = load_training_state(killed)["num_updates"]
    assert resumed_from == (after if phase == "after" else after - 1)  # a half-written checkpoint does not count
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    epoch, step = divmod(resumed_from, 8)  # 8 steps per epoch; the message counts from 1, as the progress bar
    assert f"at epoch {epoch + 1}/2, step {step + 1}/8 ({resumed_from} updates done)" in r.stdout
    assert _sha(killed / LAST) == _sha(straight_run / LAST), f"killed {phase} update {after}"
    hist = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and [h["updates"] for h in hist] == [8, 16]


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_the_same_command_resumes(small_cifar, straight_run, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) after the first checkpoint: one line saying how
    to resume, exit code 130, no traceback; the same command then resumes and ends byte-identical to the
    uninterrupted run (reference: that run)."""
    out = tmp_path / "run"
    args = _train_args(small_cifar, out, "--set", "checkpoint_every=1")
    # A shell without job control starts background jobs with SIGINT ignored, which their children inherit (and
    # Python then installs no KeyboardInterrupt handler): restore the default so the run sees Ctrl-C as a terminal's.
    p = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / LAST).exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    assert stderr.strip().splitlines() == ["interrupted; rerun the same command to resume"]
    done = load_training_state(out)["num_updates"]
    assert 1 <= done < 16, "the run ended before the interrupt"
    r = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({done} update{'' if done == 1 else 's'} done)" in r.stdout and "done:" in r.stdout
    assert _sha(out / LAST) == _sha(straight_run / LAST)


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    """A kill between writing the state and renaming last.safetensors: the old pair is still consistent."""
    from imgclass.models import checkpoint as ck

    clf = load_model("zoo:cifar10-resnet20")
    base = {"model": {}, "optimizer": {}, "ema": None, "best": 0.0, "history": [], "config": {}}
    save_training_checkpoint(tmp_path, classifier=clf, weights=clf.model.state_dict(),
                             state={**base, "num_updates": 1, "epoch": 0, "step_in_epoch": 1}, meta={})
    real_replace = os.replace

    def dying_replace(src, dst):
        if str(dst).endswith(LAST):
            raise KeyboardInterrupt("killed while renaming")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_training_checkpoint(tmp_path, classifier=clf, weights=clf.model.state_dict(),
                                 state={**base, "num_updates": 2, "epoch": 0, "step_in_epoch": 2}, meta={})
    monkeypatch.setattr(ck.os, "replace", real_replace)
    assert load_training_state(tmp_path)["num_updates"] == 1
    assert load_model(f"file:{tmp_path / LAST}").num_classes == 10


@pytest.mark.distributed
def test_torchrun_two_processes_match_one_process_of_double_batch(small_cifar, tmp_path):
    """Documented equivalence: N processes x batch B = one process x batch N*B (same samples per step,
    gradients averaged); exact up to float summation order for a model without batch norm."""
    common = ["--model", "lenet", "--quiet", "--set", "epochs=1", "--set", "lr=0.05", "--set", "workers=0",
              "--set", "tensorboard=False", "--set", "opt='sgd'"]
    subprocess.run(_cli(f"npz:{small_cifar}", "--out", str(tmp_path / "one"), "--set", "batch_size=32", *common),
                   check=True, env=_env(), capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "imgclass", "train", f"npz:{small_cifar}", "--out", str(tmp_path / "two"),
                    "--set", "batch_size=16", *common], check=True, env=_env(), capture_output=True, timeout=600)
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "one" / LAST), load_file(tmp_path / "two" / LAST)
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    la = json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[-1])
    lb = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[-1])
    assert la["images"] == lb["images"] == 256


@pytest.mark.slow
def test_distilled_student_beats_the_same_student_without_teacher(tmp_path):
    """Reference: Hinton et al. 2015 (soft-target KD helps most with little data): a ResNet-20 distilled from the
    published ResNet-56 beats the same student, seed and short schedule without a teacher (measured here on
    1,000 training images, 6 epochs: 27.6 % vs 25.5 % on the lossless test images)."""
    data = lossless_train(1000, tmp_path)
    acc = {}
    for teacher in (None, "zoo:cifar10-resnet56"):
        cfg = TrainConfig(data=f"npz:{data}", val_data="zoo:cifar10-lossless:test", model="cifar_resnet20",
                          epochs=6, batch_size=64, lr=0.1, weight_decay=5e-4, sched="cosine", warmup_epochs=1,
                          teacher=teacher, kd="soft", kd_temperature=4.0, kd_alpha=0.9, workers=0,
                          tensorboard=False, probes=("accuracy",), eval_every=100)
        acc[teacher] = train(cfg, tmp_path / str(teacher).replace(":", "_"), progress=False)["best_val_top1"]
    assert acc["zoo:cifar10-resnet56"] > acc[None] + 0.01, acc


def _pgd_accuracy(ckpt: Path, eps: float, n: int = 300) -> float:
    from imgclass import load_dataset
    from imgclass.attacks import get_attack
    from imgclass.engine import Engine

    clf = load_model(f"file:{ckpt}")
    ds = load_dataset("zoo:cifar10-lossless:test").subset(range(n))
    engine = Engine(clf, batch_size=100, workers=0, progress=False)
    attack = get_attack("pgd", eps=eps, steps=10, seed=0)

    def fn(b):
        x = engine.to_float(b.images)
        adv = attack(clf, x, b.labels).adv
        with torch.no_grad():
            return {"ok": clf(adv).argmax(1) == b.labels}

    return float(engine.map(ds, fn, grad=True).outputs["ok"].double().mean())


@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy(tmp_path):
    """Reference: Madry et al. 2018 and TRADES (Zhang et al. 2019): PGD or TRADES training at eps 2/255 raises PGD
    accuracy at 2/255 over standard training with the same schedule and seed (here: one epoch of fine-tuning the
    published ResNet-20 on the first 1,000 training images; PGD-10 on 300 test images)."""
    full = mirror_file("cifar10-lossless/train-first2000.npz")
    mirror_file("models/akamaster-resnet-cifar10/resnet20-12fca82f.th")
    data = tmp_path / "train-first1000.npz"
    with np.load(full) as z:
        np.savez(data, **{k: z[k][:1000] for k in z.files})
    robust = {}
    for adv in (None, "pgd", "trades"):
        cfg = TrainConfig(data=f"npz:{data}", model="zoo:cifar10-resnet20", epochs=1, batch_size=64, lr=0.01,
                          weight_decay=5e-4, sched="cosine", warmup_epochs=0, adv=adv, adv_eps=2 / 255, adv_steps=3,
                          workers=0, tensorboard=False)
        train(cfg, tmp_path / str(adv), progress=False)
        robust[adv] = _pgd_accuracy(tmp_path / str(adv) / LAST, 2 / 255)
    print(robust)
    assert robust["pgd"] > robust[None] + 0.05, robust
    assert robust["trades"] > robust[None] + 0.05, robust


# -- every recipe round-trips, settings, umask ------------------------------------------------------------------

# Shrinking for speed only (the test must still rebuild the shrunk model from the checkpoint's metadata alone).
# A recipe not listed here is trained as it is, at a 32 px image size.
_SHRINK = {"timm:resnet50": {"layers": [1, 1, 1, 1]}}


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    return lossless_train(8, tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_round_trips_from_train_to_the_file_spec(recipe, tiny_cifar, tmp_path, single_thread):
    """Every shipped recipe (its model, arch_kwargs, augmentation, loss) trains one step on 8 images, and
    best/last.safetensors load through the public ``file:`` spec alone into a model whose logits equal the trained
    model's in memory (reference: that model)."""
    settings = load_recipe(recipe)
    settings.update(data=f"npz:{tiny_cifar}", val_data=f"npz:{tiny_cifar}", epochs=1, batch_size=8, workers=0,
                    warmup_epochs=0, tensorboard=False, probes=("accuracy",))
    if settings.get("image_size"):
        settings["image_size"] = 32
    settings["arch_kwargs"] = {**settings.get("arch_kwargs", {}), **_SHRINK.get(settings["model"], {})}
    result = train(TrainConfig.from_dict(settings), tmp_path, progress=False)
    assert result["num_updates"] == 1
    trained = result["classifier"].eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = trained(x)
        for name in (LAST, "best.safetensors"):
            loaded = load_model(f"file:{tmp_path / name}")
            assert loaded.arch == trained.arch and loaded.arch_kwargs == trained.arch_kwargs
            for k, v in settings["arch_kwargs"].items():
                assert loaded.arch_kwargs[k] == v
            assert loaded.class_names == trained.class_names and loaded.input_size == (3, 32, 32)
            torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_run_files_respect_the_umask(mask, small_cifar, tmp_path, single_thread):
    """Reference: what ``open(path, "w")`` gives under the umask (0o666 & ~umask), for every file a run writes."""
    old = os.umask(mask)
    try:
        cfg = TrainConfig(data=f"npz:{small_cifar}", val_data=f"npz:{small_cifar}", model="lenet", epochs=1,
                          batch_size=64, workers=0, tensorboard=False, subset=128, probes=("accuracy",))
        train(cfg, tmp_path, progress=False)
        with open(tmp_path / "plain", "w"):
            pass
    finally:
        os.umask(old)
    want = 0o666 & ~mask
    assert (tmp_path / "plain").stat().st_mode & 0o777 == want
    files = [LAST, "best.safetensors", "config.yaml", "log.jsonl", "log.csv", "subset.json",
             *[p.name for p in tmp_path.glob("state-*.pt")]]
    assert len(files) == 7
    for name in files:
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_list_settings_prints_the_resolved_settings_and_their_origin(capsys):
    """Reference: TrainConfig.from_dict of defaults < recipe < command line < --set."""
    from imgclass.cli import main

    assert main(["train", "--list-settings", "--recipe", "cifar10-fast", "--model", "lenet",
                 "--set", "lr=0.5", "--set", "drop_last=false"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    want = TrainConfig.from_dict({**load_recipe("cifar10-fast"), "model": "lenet", "lr": 0.5, "drop_last": False})
    assert set(lines) == set(want.to_dict())
    for name, value in dataclasses.asdict(want).items():
        assert lines[name].split(None, 1)[1].startswith(repr(value)), lines[name]
    assert lines["lr"].endswith("(--set)") and lines["drop_last"].endswith("(--set)")
    assert lines["model"].endswith("(command line)")
    assert lines["arch_kwargs"].endswith("(recipe)") and "{'width': 16}" in lines["arch_kwargs"]
    assert lines["epochs"].endswith("(recipe)") and "10" in lines["epochs"]
    assert not lines["max_steps"].endswith(")")  # a default


def test_settings_use_the_shared_set_parser_and_fail_as_usage_errors(capsys, tmp_path):
    """Reference: imgclass.settings.parse_flat_sets (one --set parser for eval, explain and train); unknown names
    and bad values are usage errors (exit 2) with close matches."""
    from imgclass.cli import main
    from imgclass.errors import UnknownNameError, UsageError
    from imgclass.settings import parse_flat_sets
    from imgclass.train import apply_overrides

    sets = ["ema=TRUE", "teacher=none", "arch_kwargs={'width': 32}", "mean=(0.5, 0.5, 0.5)", "lr=1e-3",
            "probes=accuracy,calibration"]
    assert apply_overrides({"lr": 0.1, "epochs": 3}, sets) == {"epochs": 3, **parse_flat_sets(sets)}
    cfg = TrainConfig.from_dict(apply_overrides({}, sets))
    assert cfg.ema is True and cfg.teacher is None and cfg.arch_kwargs == {"width": 32} and cfg.lr == 1e-3
    assert cfg.probes == ("accuracy", "calibration") and cfg.mean == (0.5, 0.5, 0.5)
    with pytest.raises(UnknownNameError, match="did you mean 'lr'"):
        TrainConfig.from_dict({"lrr": 0.1})
    with pytest.raises(UnknownNameError, match="did you mean 'rrc'"):
        TrainConfig(crop="rcc")
    for bad, words in [({"epochs": "two"}, "epochs: expected an integer"), ({"max_steps": 0}, "max_steps must be"),
                       ({"drop_last": "yes"}, "drop_last: expected true or false"),
                       ({"arch_kwargs": "{width: 3}"}, "arch_kwargs: expected a mapping"),
                       ({"label_smoothing": 1.5}, "label_smoothing must lie in")]:
        with pytest.raises(UsageError, match=words):
            TrainConfig.from_dict(bad)
    for argv, words in [(["--set", "bach_size=8"], "did you mean 'batch_size'"),
                        (["--set", "epochs=two"], "expected an integer"), (["--recipe", "cifar10-fats"],
                                                                          "did you mean 'cifar10-fast'")]:
        assert main(["train", "npz:x.npz", "--out", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:") and words in err, err
    assert not list(tmp_path.iterdir())


# -- drop_last, max_steps, subset ---------------------------------------------------------------------------------

@settings(max_examples=200)
@given(n=st.integers(1, 200), batch=st.integers(1, 12), world=st.integers(1, 4), drop_last=st.booleans(),
       epoch=st.integers(0, 3))
def test_sampler_ranks_split_the_single_process_batches(n, batch, world, drop_last, epoch):
    """Invariants, with and without drop_last: at every step the ranks' own images are exactly the images of one
    process's batch of world x batch, each rank's count is what the loop weighs it by, an epoch covers every image
    once (less the dropped ones), and a resumed sampler yields the rest of the same batches."""
    one = EpochBatchSampler(n, batch * world, 1, 0, seed=5, epoch=epoch, drop_last=drop_last)
    ranks = [EpochBatchSampler(n, batch, world, r, seed=5, epoch=epoch, drop_last=drop_last) for r in range(world)]
    batches = list(one)
    assert len(batches) == one.steps_per_epoch == ranks[0].steps_per_epoch
    parts = [list(r) for r in ranks]
    for s, full in enumerate(batches):
        own = [p[s][:r.local_count(s)] for p, r in zip(parts, ranks)]
        assert sorted(i for o in own for i in o) == sorted(full)
        assert sum(len(o) for o in own) == one.global_count(s) == len(full)
        assert all(len(p[s]) >= 1 for p in parts)  # a rank without images of its own still takes part
        counts = [r.local_count(s) for r in ranks]
        assert max(counts) - min(counts) <= 1
    seen = [i for b in batches for _, i in b]
    assert len(set(seen)) == len(seen) == n - one.dropped
    assert one.dropped == (n % (batch * world) if drop_last else 0)
    for s in range(len(batches) + 1):
        assert list(EpochBatchSampler(n, batch * world, 1, 0, seed=5, epoch=epoch, start_step=s,
                                      drop_last=drop_last)) == batches[s:]


def _lenet_cfg(data: Path, **kw) -> TrainConfig:
    base = {"data": f"npz:{data}", "model": "lenet", "epochs": 2, "batch_size": 32, "lr": 0.05, "workers": 0,
            "tensorboard": False, "crop": "none", "hflip": False}
    return TrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


@pytest.fixture(scope="module")
def cifar100(tmp_path_factory) -> Path:
    """100 images: with batch 32, three full batches and 4 images left over per epoch."""
    return lossless_train(100, tmp_path_factory.mktemp("data"))


def test_drop_last_is_said_once_and_drop_last_false_trains_every_image(cifar100, tmp_path, capsys, single_thread):
    dropped = train(_lenet_cfg(cifar100), tmp_path / "a")
    out = capsys.readouterr().out
    assert out.count("drops the last 4 images of each epoch (batch 32 x 1 process)") == 1
    assert [h["images"] for h in dropped["history"]] == [96, 96] and dropped["num_updates"] == 6
    kept = train(_lenet_cfg(cifar100, drop_last=False), tmp_path / "b")
    assert "drops" not in capsys.readouterr().out
    assert [h["images"] for h in kept["history"]] == [100, 100] and kept["num_updates"] == 8


def test_accumulation_equals_the_larger_batch_also_for_the_last_smaller_batch(cifar100, tmp_path, single_thread):
    """Invariant: accum_steps=2 of batch 16 takes the same updates as batch 32 (every update the mean over the
    images it saw, the last 4-image update included); equal up to float summation order (no batch norm)."""
    a = train(_lenet_cfg(cifar100, drop_last=False), tmp_path / "a", progress=False)
    b = train(_lenet_cfg(cifar100, drop_last=False, batch_size=16, accum_steps=2), tmp_path / "b", progress=False)
    assert a["num_updates"] == b["num_updates"] == 8
    wa, wb = _weights(tmp_path / "a" / LAST), _weights(tmp_path / "b" / LAST)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("drop_last", [True, False])
def test_max_steps_stops_with_a_checkpoint_and_extending_it_equals_the_full_run(cifar100, tmp_path, drop_last,
                                                                                 single_thread):
    """max_steps stops after that many updates with a resumable checkpoint, the schedule still spanning `epochs`:
    rerunning with max_steps=none continues the same batches (the last smaller one too without drop_last) and ends
    byte-identical to the uninterrupted run (reference: that run, CPU; a schedule cut to max_steps would differ)."""
    per_epoch = 3 if drop_last else 4
    stop = per_epoch - 1  # mid-epoch, just before the epoch's last (and, without drop_last, smaller) batch
    full = train(_lenet_cfg(cifar100, drop_last=drop_last, ema=True), tmp_path / "full", progress=False)
    part = train(_lenet_cfg(cifar100, drop_last=drop_last, ema=True, max_steps=stop), tmp_path / "part",
                 progress=False)
    assert part["num_updates"] == stop
    st_ = load_training_state(tmp_path / "part")
    assert (st_["num_updates"], st_["epoch"], st_["step_in_epoch"]) == (stop, 0, stop)
    assert part["history"][-1]["stopped"] == f"max_steps at step {stop}/{per_epoch}"
    resumed = train(_lenet_cfg(cifar100, drop_last=drop_last, ema=True), tmp_path / "part", progress=False)
    assert resumed["num_updates"] == full["num_updates"] == 2 * per_epoch
    assert _sha(tmp_path / "part" / LAST) == _sha(tmp_path / "full" / LAST)
    again = train(_lenet_cfg(cifar100, drop_last=drop_last, ema=True, max_steps=stop), tmp_path / "part",
                  progress=False)
    assert again["num_updates"] == 2 * per_epoch  # nothing more to do


def test_subset_trains_on_the_recorded_seeded_subset(small_cifar, tmp_path, single_thread):
    """Reference: training on an npz that holds exactly the recorded subset's images, in order, gives the same
    weights as training with subset=K on the whole file."""
    cfg = _lenet_cfg(small_cifar, subset=40, epochs=1, batch_size=8, seed=3)
    res = train(cfg, tmp_path / "sub", progress=False)
    rec = json.loads((tmp_path / "sub" / "subset.json").read_text())
    idx = np.array(rec["indices"])
    assert rec["size"] == 40 and rec["of"] == 256 and rec["seed"] == 3 and len(set(idx.tolist())) == 40
    assert np.all(np.diff(idx) > 0) and idx.max() < 256 and not np.array_equal(idx, np.arange(40))
    assert res["history"][0]["images"] == 40
    import yaml

    from imgclass.models.checkpoint import read_checkpoint

    assert yaml.safe_load((tmp_path / "sub" / "config.yaml").read_text())["subset"] == 40
    meta = read_checkpoint(tmp_path / "sub" / LAST)[1]["extra"]
    assert meta["recipe"]["subset"] == 40 and meta["subset"]["indices_sha256"] == rec["indices_sha256"]
    with np.load(small_cifar) as z:
        np.savez(tmp_path / "picked.npz", images=z["images"][idx], labels=z["labels"][idx],
                 class_names=z["class_names"])
    train(_lenet_cfg(tmp_path / "picked.npz", epochs=1, batch_size=8, seed=3), tmp_path / "ref", progress=False)
    a, b = _weights(tmp_path / "sub" / LAST), _weights(tmp_path / "ref" / LAST)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(_lenet_cfg(small_cifar, subset=40, epochs=1, batch_size=8, seed=4), tmp_path / "other",
                  progress=False)
    assert json.loads((tmp_path / "other" / "subset.json").read_text())["indices"] != rec["indices"]
    assert other["num_updates"] == 5


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("n", [241, 225])
def test_torchrun_without_drop_last_matches_one_process(small_cifar, tmp_path, n):
    """Documented equivalence with drop_last=false: the last global batch of r images is split over the 2
    processes (241: r=17, parts 9 and 8; 225: r=1, the second process's part is a stand-in of weight 0), each
    process's loss weighted by its share, so 2 x batch 16 trains the model of 1 x batch 32, exact up to float
    summation order for a model without batch norm."""
    with np.load(small_cifar) as z:
        np.savez(tmp_path / "data.npz", **{k: z[k][:n] if k != "class_names" else z[k] for k in z.files})
    common = ["--model", "lenet", "--quiet", "--set", "epochs=1", "--set", "lr=0.05", "--set", "workers=0",
              "--set", "tensorboard=False", "--set", "drop_last=false"]
    data = f"npz:{tmp_path / 'data.npz'}"
    subprocess.run(_cli(data, "--out", str(tmp_path / "one"), "--set", "batch_size=32", *common),
                   check=True, env=_env(), capture_output=True, timeout=600)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                    "imgclass", "train", data, "--out", str(tmp_path / "two"), "--set", "batch_size=16", *common],
                   check=True, env=_env(), capture_output=True, timeout=600)
    a, b = _weights(tmp_path / "one" / LAST), _weights(tmp_path / "two" / LAST)
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    la = json.loads((tmp_path / "one" / "log.jsonl").read_text().splitlines()[-1])
    lb = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[-1])
    assert la["images"] == lb["images"] == n and la["updates"] == lb["updates"] == 8


@pytest.mark.parametrize("mode", ["pgd", "trades"])
def test_adversarial_training_examples_do_not_depend_on_the_batch(mode):
    """Invariant: with per-sample keys an image's PGD / TRADES example is the same alone, in a batch, or in another
    order (so N processes of batch B attack as one process of batch N*B), up to sign-gradient steps flipped by float
    rounding where a gradient is ~0 (a few values in 10,000; without per-sample keys every random start differs)."""
    from helpers import tiny_classifier
    from imgclass.attacks import sample_keys
    from imgclass.train.adversarial import AdversarialTraining

    clf = tiny_classifier([str(i) for i in range(10)])
    at = AdversarialTraining(mode, eps=8 / 255, steps=3, step_size=2 / 255, seed=0)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    idx = torch.tensor([11, 3, 7, 0, 42, 5])
    keys = sample_keys(123, idx)
    full = at._generate(clf, x, y, 9, keys)
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    shuffled = at._generate(clf, x[perm], y[perm], 9, keys[perm])
    alone = torch.cat([at._generate(clf, x[i:i + 1], y[i:i + 1], 9, keys[i:i + 1]) for i in range(6)])
    for other, ref in ((shuffled, full[perm]), (alone, full)):
        assert ((other - ref).abs() > 1e-6).double().mean() < 1e-3
    assert (full - x).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(full, x)
    other_keys = at._generate(clf, x, y, 9, sample_keys(124, idx))
    assert ((other_keys - full).abs() > 1e-6).double().mean() > 0.5  # the keys do decide the random starts


def test_layer_decay_param_groups_equal_timms_and_follow_the_schedule(small_cifar, tmp_path):
    """Reference: timm's param_groups_layer_decay on the same ViT (BEiT / MAE / SimMIM fine-tuning). The run's
    optimizer holds the same groups in the same order (lr scale, weight decay, parameter count), and every group's
    learning rate is the schedule's (the history's lr) times its scale after the timm scheduler's updates."""
    from timm.optim._param_groups import param_groups_layer_decay

    from imgclass.models.checkpoint import build_arch

    kw = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
    cfg = TrainConfig.from_dict({"data": f"npz:{small_cifar}", "model": "timm:vit_tiny_patch16_224",
                                 "arch_kwargs": kw, "image_size": 32, "epochs": 2, "max_steps": 3, "batch_size": 32, "opt": "adamw",
                                 "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1, "layer_decay": 0.5,
                                 "workers": 0, "tensorboard": False, "probes": []})
    res = train(cfg, tmp_path / "run", progress=False, store=False)
    groups = load_training_state(tmp_path / "run")["optimizer"]["param_groups"]
    torch.manual_seed(0)
    model = build_arch("timm:vit_tiny_patch16_224", 10, **kw)
    ref = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5,
                                   no_weight_decay_list=model.no_weight_decay())
    assert [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in groups] == \
           [(g["lr_scale"], g["weight_decay"], len(g["params"])) for g in ref]
    assert sorted({g["lr_scale"] for g in groups}) == [0.5 ** 3, 0.5 ** 2, 0.5, 1.0]  # embed, 2 blocks, head
    top = res["history"][-1]["lr"]
    assert top > 0
    for g in groups:
        assert g["lr"] == pytest.approx(top * g["lr_scale"], rel=1e-12)


def test_layer_decay_refuses_models_without_layer_order_and_ssl(small_cifar, tmp_path):
    """Usage errors, one line each: a network timm cannot order into layers, and self-supervised pretraining."""
    from imgclass.errors import UsageError

    base = {"data": f"npz:{small_cifar}", "epochs": 1, "max_steps": 1, "batch_size": 32, "workers": 0,
            "tensorboard": False, "probes": [], "layer_decay": 0.7}
    with pytest.raises(UsageError, match="layer_decay needs a model whose layers timm can order"):
        train(TrainConfig.from_dict({**base, "model": "cifar_resnet20"}), tmp_path / "a", progress=False,
              store=False)
    with pytest.raises(UsageError, match="layer_decay is a fine-tuning setting"):
        train(TrainConfig.from_dict({**base, "model": "cifar_resnet20", "ssl": "rotnet"}), tmp_path / "b",
              progress=False, store=False)
    with pytest.raises(UsageError, match="layer_decay must lie in"):
        TrainConfig.from_dict({**base, "layer_decay": 1.5})
