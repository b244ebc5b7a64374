"""The training loop: one process or many (torchrun), exact resume, validation through the eval probes."""

from __future__ import annotations

import hashlib
import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from ..errors import UsageError
from ..files import atomic_write, write_json
from ..attacks import sample_keys
from ..data import load_dataset
from ..data.labels import align_labels
from ..device import resolve_device
from ..distributed import DistInfo, init_distributed
from ..engine import Engine, Collate, default_workers
from ..models import load_model
from ..models.checkpoint import ARCHS, build_arch
from ..models.classifier import IMAGENET_MEAN, IMAGENET_STD, Classifier, ModelConfig
from ..probes import ProbeContext, get_probe
from .config import TrainConfig
from .data import EpochBatchSampler, MultiViewCollate, TrainView, build_augment, seed_for, subset_indices
from .losses import classification_loss, kd_loss
from .state import load_training_state, save_training_checkpoint, write_logs

__all__ = ["train", "build_student", "knn_monitor"]

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
# settings that do not change the arithmetic: a run may resume with other values
_RESUME_FREE = {"workers", "device", "tensorboard", "checkpoint_every", "eval_every", "max_steps"}


def _top_lr(optimizer) -> float:
    """The schedule's learning rate: the largest over the parameter groups (with layer_decay the lower layers' groups
    run at a fraction of it)."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


def build_student(cfg: TrainConfig, classes) -> Classifier:
    """The model to train, wrapped as a Classifier over the training set's classes."""
    n = len(classes)
    is_arch = cfg.model in ARCHS or (cfg.model.startswith("timm:") and "?" not in cfg.model)
    if is_arch:
        kwargs = dict(cfg.arch_kwargs)  # recorded in every checkpoint (Classifier.arch_kwargs) to rebuild the model
        if cfg.model in ARCHS:
            kwargs.setdefault("zero_init_last", cfg.zero_init_last)
        model = build_arch(cfg.model, n, **kwargs)
        arch = cfg.model
        default_size = model.pretrained_cfg["input_size"][1] if cfg.model.startswith("timm:") else 32
    else:  # fine-tune a model spec (timm:NAME?pretrained=true, zoo:, file:)
        clf = load_model(cfg.model)
        model, arch, kwargs = clf.model, clf.arch, clf.arch_kwargs
        if clf.num_classes != n or list(clf.class_names) != list(classes.names):
            model.reset_classifier(n)
        default_size = clf.input_size[1]
    size = cfg.image_size or default_size
    cifar = classes.tag == "cifar10" or size <= 64
    mean = tuple(cfg.mean) if cfg.mean else (CIFAR_MEAN if cifar else IMAGENET_MEAN)
    std = tuple(cfg.std) if cfg.std else (CIFAR_STD if cifar else IMAGENET_STD)
    config = ModelConfig((3, size, size), mean, std, cfg.crop_pct, cfg.interpolation)
    return Classifier(model, labels=classes, config=config, source=f"train:{cfg.model}", arch=arch,
                      arch_kwargs=kwargs)


class _Run:
    """State and helpers of one training run (kept small: the loop itself is in ``train``)."""

    def __init__(self, cfg: TrainConfig, out: Path, progress: bool):
        self.cfg, self.out, self.progress = cfg, out, progress
        self.device = resolve_device(cfg.device)
        self.dist: DistInfo = init_distributed(str(self.device))
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.cuda = self.device.type == "cuda"

    def log(self, row: dict, history: list[dict], writer) -> None:
        """After the checkpoint that holds ``row`` in its history: the log files from that history, TensorBoard."""
        if not self.dist.is_main:
            return
        write_logs(self.out, history)
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(k, v, row["epoch"])


def _tensorboard(run: _Run):
    if not (run.cfg.tensorboard and run.dist.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        tqdm.write("tensorboard is not installed (pip install 'imgclass[train]'): no event files")
        return None
    return SummaryWriter(str(run.out / "tensorboard"))


def validate(clf: Classifier, ds, cfg: TrainConfig, run: _Run) -> tuple[dict, dict]:
    """The eval probes on the validation set (all ranks take part; figures identical on each): each probe's result
    and the engine's settings."""
    engine = Engine(clf, batch_size=max(cfg.batch_size, 128), workers=cfg.workers, device=str(run.device),
                    progress=False, dist=run.dist, channels_last=cfg.channels_last)
    was_training = clf.training
    ctx = ProbeContext(clf, ds, engine, seed=cfg.seed)
    out = {name: get_probe(name).run(ctx) for name in cfg.probes}
    clf.train(was_training)
    return out, engine.settings()


def knn_monitor(clf: Classifier, train_ds, val_ds, cfg: TrainConfig, *, device: torch.device | str = "cpu",
                dist: DistInfo | None = None) -> dict:
    """The online kNN monitor of self-supervised runs: the backbone's pre-logit features (batch norm in eval mode,
    the model's eval transform, no augmentation) of a seeded ``knn_bank`` subset of the training set and of the
    validation set; kNN top-1 with ``knn_k`` neighbours and temperature ``knn_t`` (InstDisc / lightly's protocol,
    :func:`imgclass.representation.knn.knn_top1`). All ranks take part; the figure is the same on each."""
    from ..representation.knn import knn_top1

    al = align_labels(train_ds.classes, val_ds.classes)
    if al.groups is not None:
        raise UsageError("the kNN monitor needs validation classes that are training classes, not superclasses")
    bank = train_ds
    if cfg.knn_bank is not None and cfg.knn_bank < len(train_ds):
        idx = np.random.default_rng(seed_for(cfg.seed, 999331)).choice(len(train_ds), cfg.knn_bank, replace=False)
        bank = train_ds.subset(np.sort(idx))
    engine = Engine(clf, batch_size=max(cfg.batch_size, 128), workers=cfg.workers, device=str(device),
                    progress=False, dist=dist, channels_last=cfg.channels_last)
    was_training = clf.training
    clf.eval()

    def fn(b):
        with torch.no_grad():
            return {"f": clf.features(engine.to_float(b.images)).float(), "y": b.labels}

    try:
        fb, fv = engine.map(bank, fn, desc="kNN bank").outputs, engine.map(val_ds, fn, desc="kNN validation").outputs
    finally:
        clf.train(was_training)
    y_val = al.index[fv["y"].cpu()]  # validation classes in the training set's label space
    k = min(cfg.knn_k, len(fb["y"]))  # a bank smaller than k: every bank image is a neighbour
    top1 = knn_top1(fv["f"].cpu(), y_val, fb["f"].cpu(), fb["y"].cpu(), len(train_ds.classes), k=k, t=cfg.knn_t)
    return {"val_knn_top1": float(top1), "knn_bank": int(len(fb["y"])), "knn_val": int(len(y_val))}


def _summary(results: dict) -> dict:
    row = {}
    if "accuracy" in results:
        row["val_top1"] = results["accuracy"]["top1"]
        if results["accuracy"].get("top5") is not None:
            row["val_top5"] = results["accuracy"]["top5"]
    if "calibration" in results:
        row["val_ece"], row["val_nll"] = results["calibration"]["ece"], results["calibration"]["nll"]
    return row


def _say(run: _Run, message: str) -> None:
    if run.dist.is_main:
        tqdm.write(message)


def _load_train_data(cfg: TrainConfig, run: _Run, out: Path):
    """The training set (the seeded ``subset`` of it if set) and what to record about the subset."""
    full = load_dataset(cfg.data)
    if cfg.subset is None:
        return full, None
    idx = subset_indices(len(full), cfg.subset, cfg.seed)
    info = {"size": int(cfg.subset), "of": len(full), "seed": cfg.seed, "file": "subset.json",
            "indices_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest()}
    if run.dist.is_main:
        write_json({"data": cfg.data, **info, "indices": idx.tolist(),
                    "sample_ids": [full.sample_id(int(i)) for i in idx]}, out / "subset.json")
    return full.subset(idx), info


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = True, progress: bool = True,
          store: str | bool | None = True, command: list[str] | None = None) -> dict:
    """Train per ``cfg`` into ``out``; resumes from ``out/last.safetensors`` if present.

    A run that trains (to its end or to ``max_steps``) writes ``out/results.json`` (kind ``"train"``: the final
    validation's probe results, the history, the settings) and ``out/report.html``, and is recorded in the run
    store (``store``: True for the default store, a SQLAlchemy URL, False for none); rank 0 only.
    Returns the history, the best validation top-1, the number of optimizer updates done, ``classifier``: the
    trained model in memory (the EMA weights when ``ema`` is on), as the checkpoints hold it, ``results`` (the
    results.json content, None when nothing was trained) and ``run_id`` (the store's, or None).
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    out = Path(out)
    started = time.perf_counter()
    run = _Run(cfg, out, progress)
    if not cfg.data:
        raise UsageError("no training data: give DATA or set data=... in the recipe")
    if run.dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    torch.manual_seed(seed_for(cfg.seed, 1))
    train_ds, subset_info = _load_train_data(cfg, run, out)
    val_ds = load_dataset(cfg.val_data) if cfg.val_data else None
    if val_ds is not None:
        align_labels(train_ds.classes, val_ds.classes)  # fail early on a mismatch
    clf = build_student(cfg, train_ds.classes)
    if cfg.sync_bn and run.dist.enabled:
        clf.model = nn.SyncBatchNorm.convert_sync_batchnorm(clf.model)
    clf.to(run.device)
    if cfg.channels_last:  # faster on CUDA and with oneDNN on CPU alike
        clf.to(memory_format=torch.channels_last)
    size = clf.input_size[1]
    if cfg.advprop:
        from .adversarial import convert_dual_bn

        convert_dual_bn(clf.model)
    ssl_model = None
    if cfg.ssl:  # self-supervised pretraining: the backbone plus the method's heads (and EMA teacher) train together
        clash = [k for k, on in (("mixup", cfg.mixup > 0), ("cutmix", cfg.cutmix > 0), ("teacher", bool(cfg.teacher)),
                                 ("adv", bool(cfg.adv)), ("advprop", cfg.advprop), ("ema", cfg.ema)) if on]
        if clash:
            raise UsageError(f"ssl={cfg.ssl} trains without labels; it cannot be combined with {', '.join(clash)}")
        from .ssl import SSLModel

        ssl_model = SSLModel(clf, cfg).to(run.device)
        if cfg.sync_bn and run.dist.enabled:  # the heads' (and teacher's) batch norm too
            ssl_model = nn.SyncBatchNorm.convert_sync_batchnorm(ssl_model)

    world = run.dist.world_size
    sampler0 = EpochBatchSampler(len(train_ds), cfg.batch_size, world, run.dist.rank, cfg.seed,
                                 drop_last=cfg.drop_last)
    steps_per_epoch = sampler0.steps_per_epoch
    if steps_per_epoch == 0:
        raise UsageError(f"{len(train_ds)} training images are fewer than one global batch "
                         f"({cfg.batch_size} x {world}); lower batch_size or set drop_last=false")
    if cfg.ssl and world > 1 and sampler0.global_count(steps_per_epoch - 1) % world:
        raise UsageError(f"ssl={cfg.ssl} under torchrun gathers every process's views, so each process needs as many "
                         f"images: the last batch of {sampler0.global_count(steps_per_epoch - 1)} does not split over "
                         f"{world} processes; set drop_last=true")
    notes: list[str] = []  # the run's warnings, for results.json
    if sampler0.dropped:
        notes.append(f"drops the last {sampler0.dropped} images of each epoch (batch {cfg.batch_size} x {world} "
                     f"process{'es' if world > 1 else ''}); set drop_last=false to train them too")
        _say(run, notes[-1])
    updates_per_epoch = math.ceil(steps_per_epoch / cfg.accum_steps)
    total_updates = updates_per_epoch * cfg.epochs  # the schedules' length (SSL teacher momentum, masking ...)
    if cfg.layer_decay is not None:
        if ssl_model is not None:
            raise UsageError(f"layer_decay is a fine-tuning setting; ssl={cfg.ssl} pretraining trains every layer "
                             f"at one learning rate")
        if not callable(getattr(clf.model, "group_matcher", None)):
            raise UsageError(f"layer_decay needs a model whose layers timm can order (a group_matcher, as timm's ViT, "
                             f"Swin, ConvNeXt, ResNet), not {type(clf.model).__name__} ({cfg.model})")
    optimizer = create_optimizer_v2(clf.model if ssl_model is None else ssl_model, opt=cfg.opt, lr=cfg.lr,
                                    weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                                    filter_bias_and_bn=cfg.no_wd_norm_bias, layer_decay=cfg.layer_decay)
    warmup = int(round(cfg.warmup_epochs))
    # warmup comes first, then the schedule runs over the remaining epochs (milestones count after warmup)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.sched, num_epochs=max(1, cfg.epochs - warmup), decay_milestones=list(cfg.decay_milestones),
        min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=warmup,
        warmup_prefix=True, step_on_epochs=False, updates_per_epoch=updates_per_epoch)
    # EMA decay warms up (timm's crowsonkb schedule) so short runs are not dominated by the initial weights
    ema = ModelEmaV3(clf, decay=cfg.ema_decay, use_warmup=True) if cfg.ema else None
    mixer = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        from timm.data import Mixup

        mixer = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mix_prob,
                      switch_prob=cfg.mix_switch_prob, label_smoothing=cfg.label_smoothing,
                      num_classes=clf.num_classes)
    teacher, teacher_al = None, None
    if cfg.teacher:
        teacher = load_model(cfg.teacher, device=str(run.device)).eval().requires_grad_(False)
        teacher_al = align_labels(teacher.labels, train_ds.classes)
    adv = None
    if cfg.adv:
        from .adversarial import AdversarialTraining

        adv = AdversarialTraining.from_config(cfg)

    start_epoch, start_step, num_updates, best, history = 0, 0, 0, -1.0, []
    state = load_training_state(out) if resume else None
    if state is not None:
        defaults = TrainConfig().to_dict()  # a run saved before a setting existed had its default
        diff = sorted(k for k, v in cfg.to_dict().items()
                      if k not in _RESUME_FREE and state["config"].get(k, defaults[k]) != v)
        if diff:
            raise UsageError(f"{out} holds a run with other settings ({', '.join(diff)}); use a new --out "
                             "or the same settings to resume")
        clf.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        if ssl_model is not None:
            ssl_model.load_extra_state_dict(state["ssl"])
        start_epoch, start_step, num_updates = state["epoch"], state["step_in_epoch"], state["num_updates"]
        best, history = state["best"], state["history"]
        if start_step >= steps_per_epoch:
            start_epoch, start_step = start_epoch + 1, 0
        if start_epoch >= cfg.epochs:
            _say(run, f"{out} has finished its {cfg.epochs} epochs ({num_updates} updates); nothing to train")
        else:  # 1-based, as the progress bar counts
            _say(run, f"resuming {out} at epoch {start_epoch + 1}/{cfg.epochs}, step {start_step + 1}/"
                      f"{steps_per_epoch} ({num_updates} update{'' if num_updates == 1 else 's'} done)")
        if run.dist.is_main:
            write_logs(out, history)
    scheduler.step_update(num_updates)

    ddp = clf if ssl_model is None else ssl_model
    if run.dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(clf if ssl_model is None else ssl_model, device_ids=[run.device.index] if run.cuda else None)
    writer = _tensorboard(run)
    if ssl_model is not None:
        from .ssl import build_views

        augment = build_views(cfg, size)
    else:
        augment = build_augment(cfg, size)
    view = TrainView(train_ds, augment, cfg.seed)
    workers = default_workers() if cfg.workers is None else cfg.workers
    scaler = torch.amp.GradScaler("cuda", enabled=run.cuda and cfg.amp)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if run.cuda and cfg.amp else nullcontext

    def checkpoint(epoch: int, step_in_epoch: int, metrics: dict, is_best: bool = False) -> None:
        if not run.dist.is_main:
            return
        st = {"model": clf.model.state_dict(), "optimizer": optimizer.state_dict(),
              "ema": None if ema is None else ema.module.state_dict(), "epoch": epoch,
              "step_in_epoch": step_in_epoch, "num_updates": num_updates, "best": best, "history": history,
              "config": cfg.to_dict(), "ssl": None if ssl_model is None else ssl_model.extra_state_dict()}
        weights = (ema.module if ema is not None else clf).model
        if cfg.advprop:
            from .adversarial import main_bn_state_dict

            weights = main_bn_state_dict(weights)
        else:
            weights = weights.state_dict()
        recipe = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
        meta = {"epoch": epoch, "step_in_epoch": step_in_epoch, "num_updates": num_updates, "metrics": metrics,
                "recipe": recipe, "weights": "ema" if ema is not None else "model",
                **({"subset": subset_info} if subset_info else {})}
        save_training_checkpoint(out, classifier=clf, weights=weights, state=st, meta=meta, best=is_best)

    def reached_max_steps() -> bool:
        return cfg.max_steps is not None and num_updates >= cfg.max_steps

    stopped = reached_max_steps() and start_epoch < cfg.epochs
    bar = None
    rows_done = 0  # epochs (or their parts) trained by this call
    validation = None  # the latest row's validation: probe results, engine settings, epoch, whether it set the best
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if reached_max_steps():
                break
            sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, world, run.dist.rank, cfg.seed,
                                        epoch, start_step if epoch == start_epoch else 0, cfg.drop_last)
            loader = torch.utils.data.DataLoader(view, batch_sampler=sampler, num_workers=workers,
                                                 collate_fn=Collate() if ssl_model is None else MultiViewCollate(),
                                                 pin_memory=run.cuda,
                                                 prefetch_factor=4 if workers > 0 else None)
            clf.train()
            t0, seen, images, loss_sum, skipped = time.perf_counter(), 0, 0, 0.0, 0
            done_step = sampler.start_step
            bar = tqdm(total=steps_per_epoch, initial=sampler.start_step, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not (progress and run.dist.is_main), leave=False, dynamic_ncols=True)
            for k, (images_u8, labels, _idx, bad) in enumerate(loader, start=sampler.start_step):
                skipped += len(bad)
                global_step = epoch * steps_per_epoch + k
                step_seed = seed_for(cfg.seed, 104729, global_step)
                torch.manual_seed(step_seed)
                np.random.seed(step_seed)
                y = labels.to(run.device, non_blocking=True)
                if ssl_model is not None:  # a list of views, one tensor per view position
                    views = [v.to(run.device, non_blocking=True).float().div_(255) for v in images_u8]
                    if cfg.channels_last:
                        views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                    x = views[0] if views else torch.empty(0)
                else:
                    x = images_u8.to(run.device, non_blocking=True).float().div_(255)
                    if cfg.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                # this rank's share of the update's mean: its own images x processes / images in the update
                own = min(len(x), sampler.local_count(k))
                first = k - k % cfg.accum_steps
                group = sum(sampler.global_count(j) for j in range(first, min(first + cfg.accum_steps,
                                                                              steps_per_epoch)))
                weight = own * world / group
                target, mixed = y, False
                if mixer is not None and len(x) % 2 == 0:
                    x, target = mixer(x, y)
                    mixed = True
                smoothing = 0.0 if mixed else cfg.label_smoothing  # mixup's targets carry the smoothing
                last_of_update = (k + 1) % cfg.accum_steps == 0 or k + 1 == steps_per_epoch
                sync = nullcontext() if (last_of_update or not run.dist.enabled) else ddp.no_sync()
                with sync:
                    with autocast():
                        if ssl_model is not None:
                            loss = ddp(views, epoch=epoch, progress=num_updates / total_updates)
                        elif adv is not None:
                            keys = sample_keys(seed_for(cfg.seed, 65537, epoch), _idx, run.device)
                            loss = adv.loss(ddp, clf, x, y, step_seed, label_smoothing=cfg.label_smoothing,
                                            keys=keys)
                        else:
                            logits = ddp(x)
                            if teacher is not None:
                                with torch.no_grad():
                                    t_logits = teacher_al.apply(teacher(x))
                                loss = kd_loss(logits, t_logits, target, mode=cfg.kd, temperature=cfg.kd_temperature,
                                               alpha=cfg.kd_alpha, label_smoothing=smoothing)
                            else:
                                loss = classification_loss(logits, target, kind=cfg.loss, label_smoothing=smoothing)
                    scaler.scale(loss if weight == 1.0 else loss * weight).backward()
                done_step = k + 1
                if last_of_update:
                    if cfg.clip_grad:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(clf.model.parameters(), cfg.clip_grad)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    num_updates += 1
                    scheduler.step_update(num_updates)
                    if ema is not None:
                        ema.update(clf, step=num_updates)
                    if ssl_model is not None:
                        ssl_model.update_teacher(num_updates / total_updates)
                    if reached_max_steps():
                        stopped = True
                    elif cfg.checkpoint_every and num_updates % cfg.checkpoint_every == 0 and k + 1 < steps_per_epoch:
                        checkpoint(epoch, k + 1, {})
                seen += own
                images += sampler.global_count(k)
                loss_sum += float(loss.detach()) * own
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{_top_lr(optimizer):.3g}")
                if stopped:
                    break
            bar.close()
            seconds = time.perf_counter() - t0
            finished = done_step >= steps_per_epoch
            skipped = _sum_over_ranks(skipped, run)
            row = {"epoch": epoch + 1, "updates": num_updates, "train_loss": loss_sum / max(seen, 1),
                   "lr": _top_lr(optimizer), "images": images - skipped, "skipped": skipped,
                   "seconds": round(seconds, 3), "images_per_second": (images - skipped) / seconds if seconds > 0 else None}
            if not finished:
                row["stopped"] = f"max_steps at step {done_step}/{steps_per_epoch}"
            metrics, validation = {}, None
            due = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs
            if val_ds is not None and ((finished and due) or stopped):
                evaluated = ema.module if ema is not None else clf
                probed, val_settings = validate(evaluated, val_ds, cfg, run)
                metrics = _summary(probed)
                if ssl_model is not None:
                    monitor = knn_monitor(clf, train_ds, val_ds, cfg, device=run.device, dist=run.dist)
                    metrics["val_knn_top1"] = monitor.pop("val_knn_top1")
                    val_settings = {**val_settings, "knn_monitor": {"k": cfg.knn_k, "t": cfg.knn_t, **monitor}}
                row.update(metrics)
                validation = {"results": probed, "settings": val_settings, "epoch": epoch + 1}
            history.append(row)
            rows_done += 1
            score = metrics.get("val_knn_top1" if ssl_model is not None else "val_top1", -1.0)
            is_best = score > best
            best = max(best, score)
            if validation is not None:
                validation["is_best"] = is_best
            checkpoint(epoch, done_step, metrics, is_best=is_best and val_ds is not None)
            run.log(row, history, writer)
            start_step = 0
            if progress and run.dist.is_main:
                shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
                tqdm.write(shown)
            if stopped:
                break
    finally:  # also on Ctrl-C: the bar leaves its line to the message, TensorBoard gets its last events
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    if stopped:
        _say(run, f"stopped at max_steps={cfg.max_steps} ({num_updates} updates); rerun with a larger max_steps "
                  "(or max_steps=none) to continue")
    results, run_id = None, None
    if rows_done and run.dist.is_main:
        from .report import run_results, write_run

        typed = run_results(out, cfg=cfg, history=history, validation=validation, best=best,
                            num_updates=num_updates, stopped=f"max_steps={cfg.max_steps}" if stopped else None,
                            train_ds=train_ds, val_ds=val_ds, subset_info=subset_info, dist=run.dist,
                            device=run.device, seconds=time.perf_counter() - started, warnings=notes,
                            command=command)
        results, run_id = write_run(out, typed, store=store)
    supervised = ssl_model is None  # SSL runs keep their best by the kNN monitor's top-1
    return {"history": history, "best_val_top1": best if best >= 0 and supervised else None,
            "best_val_knn_top1": best if best >= 0 and not supervised else None, "out": str(out),
            "num_updates": num_updates, "classifier": ema.module if ema is not None else clf,
            "results": results, "run_id": run_id}


def _sum_over_ranks(value: int, run: _Run) -> int:
    if not run.dist.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=run.device)
    torch.distributed.all_reduce(t)
    return int(t.item())
