"""The training loop: one loop for every recipe, fed with uint8 image tensors.

`fit` trains a model on a train split, validates on a val split each epoch and
returns the per-epoch history; it never touches the store. Checkpointing is a
callback (`on_checkpoint(state, is_best)`) so the caller decides where files go;
`state` carries everything needed to resume exactly: model, optimiser,
scheduler, scaler, epoch, best metric, early-stop counter and RNG states.

Options plug in through `TrainConfig`: losses "ce" (label smoothing), "soft-ce"
(targets are soft labels when given, else one-hot), "focal"; class weights
"none"/"sqrt"/"balanced"; sampler "shuffle"/"balanced"; schedulers "plateau",
"onecycle", "none"; early stopping on the validation loss; progressive resizing
(`progressive_size`, `progressive_fraction`): the first epochs train on inputs resized
to a smaller size, which costs about (small/full)^2 of a full epoch for a fully
convolutional model; validation, evaluation and later epochs use the model's size.

Mitigations of group gaps work on cells = demographic group x emotion (the
train split's `groups` codes, built by the caller from `group_attributes`):
`group_balance` "sample" draws every cell equally often (with replacement),
"reweight" weights each image's loss by 1/(its cell's count), normalised to
mean 1 (under the class-balanced sampler, which already evens out the emotions,
by its emotion's count / its cell's, so only the groups within an emotion are
evened out); `group_dro` minimises the loss of the worst cell with the online
algorithm of Sagawa et al. (2020, "Distributionally robust neural networks"):
cell weights q <- q * exp(step * cell loss), loss = sum of q * cell loss.

Under torchrun (an initialised process group, pipeline.train.distributed) the same
loop trains with DistributedDataParallel: every rank draws the same seeded epoch
order (so class-balanced and group sampling, soft labels and weights are those of
one process), takes every world_size-th image of each global batch of
`batch_size` images, and DDP averages the gradients; rank 0 validates and
broadcasts the figures early stopping and the scheduler act on, and group DRO
sums its cell losses over the ranks. Augmentation draws from a per-rank generator
seeded from (seed, epoch, rank), so a resumed run continues exactly in any world
size. A world of one runs the loop as it always has.

There is no DataLoader: each split is decoded once (a thread pool, see
pipeline.data.images) into uint8 memory and batches are augmented on the device;
on CUDA a batch is staged in pinned memory and copied asynchronously.
"""
from __future__ import annotations

import copy
import math
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.augment import AugmentConfig, augment_batch, preprocess_batch
from pipeline.train.models import freeze_modules


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "adam"                # "adam" | "adamw" | "sgd"
    lr: float = 3e-4
    weight_decay: float = 0.0
    loss: str = "ce"                       # "ce" | "soft-ce" | "focal"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    class_weights: str = "none"            # "none" | "sqrt" | "balanced"
    sampler: str = "shuffle"               # "shuffle" | "balanced" (class-balanced sampling with replacement)
    scheduler: str = "none"                # "none" | "plateau" | "onecycle"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    onecycle_max_lr: float = 2e-3
    onecycle_pct_start: float = 0.25
    early_stopping_patience: int | None = 5   # epochs without val-loss improvement; None = off
    amp: bool = True                       # mixed precision, used only on CUDA
    frozen_modules: tuple[str, ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    group_attributes: tuple[str, ...] = ("race",)   # the demographic groups of the mitigations below
    group_balance: str = "none"            # "none" | "sample" | "reweight" over group x emotion cells
    group_dro: bool = False                # group DRO over group x emotion cells
    dro_step_size: float = 0.01            # the step of the exponentiated-gradient update of the cell weights
    progressive_size: int | None = None    # progressive resizing: the first progressive_fraction of the epochs
    progressive_fraction: float = 0.0      # train on inputs of this size, the rest at the model's image_size

    @property
    def progressive_epochs(self) -> int:
        """How many of the first epochs train at `progressive_size`: the fraction of the epochs, rounded
        to the nearest, halves down (a fraction, so that --epochs keeps the split; one epoch of a
        half trains at the model's size)."""
        if self.progressive_size is None:
            return 0
        return max(0, math.ceil(self.progressive_fraction * self.epochs - 0.5))

    def epoch_image_size(self, epoch: int, image_size: int) -> int:
        """The input size epoch `epoch` (1-based) trains at, for a model of `image_size`."""
        return self.progressive_size if epoch <= self.progressive_epochs else image_size


def check_progressive_resizing(config: TrainConfig, image_size: int) -> None:
    """Raise UserError when the progressive-resizing settings cannot apply to a model of `image_size`."""
    from pipeline.errors import UserError

    size, fraction = config.progressive_size, config.progressive_fraction
    if size is None:
        return
    if not 8 <= size < image_size:
        raise UserError(f"the progressive-resizing size must be at least 8 and smaller than the model's input size "
                        f"{image_size}, got {size} (--progressive SIZE:FRACTION, or --progressive off)")
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"the progressive-resizing fraction of the epochs must be in (0, 1], got {fraction} "
                        "(--progressive SIZE:FRACTION, or --progressive off)")


@dataclass
class SplitTensors:
    """One split decoded once: uint8 NHWC images, hard labels, optional soft labels."""
    images: torch.Tensor                   # uint8 N,H,W,3
    labels: torch.Tensor                   # int64 N
    soft: torch.Tensor | None = None       # float32 N,C
    groups: torch.Tensor | None = None     # int64 N: demographic group codes (0..G-1), for the mitigations

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class FitResult:
    history: list[dict[str, float]]        # one dict per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds
    best_epoch: int
    best_val_loss: float
    best_state_dict: dict[str, torch.Tensor]
    stopped_early: bool
    finished: bool                         # False when stopped by `stop_after` (resumable)
    train_seconds: float


# --------------------------------------------------------------------------- pieces

def compute_class_weights(labels: np.ndarray | torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Per-class loss weights from training counts: 'sqrt' ~ 1/sqrt(n), 'balanced'
    ~ 1/n, both rescaled to average 1 over the samples; 'none' -> None."""
    if mode == "none":
        return None
    counts = torch.bincount(torch.as_tensor(labels).long(), minlength=num_classes).double().clamp(min=1)
    if mode == "sqrt":
        w = counts.rsqrt()
    elif mode == "balanced":
        w = counts.reciprocal()
    else:
        raise ValueError(f"class_weights must be none, sqrt or balanced, got {mode!r}")
    w = w * counts.sum() / (w * counts).sum()
    return w.float()


def compute_loss(logits: torch.Tensor, labels: torch.Tensor, soft: torch.Tensor | None, config: TrainConfig,
                 weight: torch.Tensor | None = None, *, reduction: str = "mean") -> torch.Tensor:
    """The batch's mean loss under config.loss, or with reduction "none" each image's loss."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be mean or none, got {reduction!r}")
    mean = reduction == "mean"
    if config.loss == "ce":
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=config.label_smoothing,
                               reduction=reduction)
    logp = F.log_softmax(logits.float(), dim=1)
    if config.loss == "soft-ce":
        target = soft if soft is not None else F.one_hot(labels, logits.shape[1]).float()
        if config.label_smoothing:
            target = target * (1 - config.label_smoothing) + config.label_smoothing / logits.shape[1]
        per_class = -target * logp
        if weight is not None:
            per_class = per_class * weight.view(1, -1)
        return per_class.sum(1).mean() if mean else per_class.sum(1)
    if config.loss == "focal":
        logp_t = logp.gather(1, labels.view(-1, 1)).squeeze(1)
        loss = -((1 - logp_t.exp()) ** config.focal_gamma) * logp_t
        if weight is not None:
            loss = loss * weight[labels]
        return loss.mean() if mean else loss
    raise ValueError(f"loss must be ce, soft-ce or focal, got {config.loss!r}")


def create_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {config.optimizer!r}")


def create_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """(scheduler, stepped_per_batch)."""
    if config.scheduler == "none":
        return None, False
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", patience=config.plateau_patience, factor=config.plateau_factor), False
    if config.scheduler == "onecycle":
        pct_start = config.onecycle_pct_start
        if abs(pct_start * config.epochs * steps_per_epoch - 1.0) < 1e-9:
            # Warm-up of exactly one step: OneCycleLR divides by its length minus one (a
            # ZeroDivisionError). Nudged by a millionth the schedule is the same (the peak
            # at step 1) and defined.
            pct_start *= 1 + 1e-6
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.onecycle_max_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch,
            pct_start=pct_start), True
    raise ValueError(f"scheduler must be none, plateau or onecycle, got {config.scheduler!r}")


def epoch_order(labels: torch.Tensor, sampler: str, generator: torch.Generator) -> torch.Tensor:
    """Indices of one epoch: a permutation, or class-balanced draws with replacement."""
    n = labels.shape[0]
    if sampler == "shuffle":
        return torch.randperm(n, generator=generator)
    if sampler == "balanced":
        counts = torch.bincount(labels).double()
        weights = (1.0 / counts)[labels]
        return torch.multinomial(weights, n, replacement=True, generator=generator)
    raise ValueError(f"sampler must be shuffle or balanced, got {sampler!r}")


# --------------------------------------------------------------------------- group mitigations

def compute_cells(groups: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each image's group x emotion cell: group * num_classes + label."""
    return torch.as_tensor(groups).long() * num_classes + torch.as_tensor(labels).long()


def compute_group_weights(groups: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                          within_class: bool = False) -> torch.Tensor:
    """Per-image weights 1/(count of its group x emotion cell), rescaled to mean 1: every
    non-empty cell then carries the same total weight.

    within_class: for images drawn by a class-balanced sampler, which already gives every
    emotion the same weight: n_emotion / (its non-empty cells x n_cell), so each emotion's
    images keep mean weight 1 and its cells share it equally. (1/n_cell on top of that
    sampler weighted each emotion by 1/n_emotion a second time: on bench_mitigation's
    `fewer` set Happiness got 2.6% of the loss, Fear 32%, and single images weight 22.)
    """
    cells = compute_cells(groups, labels, num_classes)
    counts = torch.bincount(cells).double()
    w = counts.reciprocal()[cells]
    if within_class:
        labels = torch.as_tensor(labels).long()
        per_class = torch.bincount(labels, minlength=num_classes).double()
        cells_per_class = torch.bincount(torch.unique(cells) % num_classes, minlength=num_classes).double()
        return (w * per_class[labels] / cells_per_class[labels]).float()
    return (w * len(w) / w.sum()).float()


class GroupDRO:
    """Online group DRO (Sagawa et al. 2020, Algorithm 1) over `n_cells` cells.

    `loss(sample_losses, cells)` updates the cell weights q <- q * exp(step * mean loss
    of the cell in this batch) (cells absent from the batch keep theirs), renormalises,
    and returns sum_g q_g * mean loss of cell g: the gradient flows to the worst cells.
    """

    def __init__(self, n_cells: int, step_size: float, device: torch.device | str = "cpu"):
        if step_size <= 0:
            raise ValueError(f"dro_step_size must be positive, got {step_size}")
        self.step_size = step_size
        self.q = torch.full((n_cells,), 1.0 / n_cells, dtype=torch.float64, device=device)
        # Under DDP: sums a (2, n_cells) tensor over the ranks, so that every rank updates q from the
        # whole global batch's cell losses and the ranks' q stay equal.
        self.reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def loss(self, sample_losses: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        n = self.q.shape[0]
        sums = torch.zeros(n, dtype=sample_losses.dtype, device=sample_losses.device).index_add(
            0, cells, sample_losses)
        counts = torch.bincount(cells, minlength=n).to(sample_losses.dtype)
        cell_loss = sums / counts.clamp(min=1)
        observed = cell_loss.detach()
        if self.reduce is not None:
            total = self.reduce(torch.stack([sums.detach(), counts]).double())
            observed = total[0] / total[1].clamp(min=1)
        self.q = self.q * torch.exp(self.step_size * observed.double())
        self.q = self.q / self.q.sum()
        return (self.q.to(cell_loss.dtype) * cell_loss).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.q = state["q"].to(self.q.device, torch.float64)


def create_group_mitigation(train: SplitTensors, num_classes: int, config: TrainConfig,
                            device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None, GroupDRO | None]:
    """(cells, per-image weights, GroupDRO) of the train split under config's group options;
    all None when no group option is on."""
    if config.group_balance not in ("none", "sample", "reweight"):
        raise ValueError(f"group_balance must be none, sample or reweight, got {config.group_balance!r}")
    if config.group_balance == "none" and not config.group_dro:
        return None, None, None
    if train.groups is None:
        raise ValueError("group_balance/group_dro need the train split's group codes (SplitTensors.groups)")
    cells = compute_cells(train.groups, train.labels, num_classes)
    weights = compute_group_weights(train.groups, train.labels, num_classes,
                                    within_class=config.group_balance == "reweight" and config.sampler == "balanced") \
        if config.group_balance != "none" else None
    dro = GroupDRO((int(train.groups.max()) + 1) * num_classes, config.dro_step_size, device) if config.group_dro else None
    return cells, weights, dro


def get_rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["generator"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Seed torch/numpy/random; on CUDA also ask for deterministic kernels (CPU kernels
    already are, and the switch costs seconds of imports). Returns the data generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if torch.device(device).type == "cuda":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor | np.ndarray, meta: dict[str, Any],
                   device: torch.device | str = "cpu", batch_size: int = 256) -> torch.Tensor:
    """Logits (float32, CPU) of uint8 NHWC images, in eval mode, batch by batch."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess_batch(images[start:start + batch_size], meta, device)
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, len(meta["classes"]))


def predict_probabilities(model: nn.Module, images: torch.Tensor | np.ndarray, meta: dict[str, Any],
                          device: torch.device | str = "cpu", batch_size: int = 256) -> np.ndarray:
    """Softmax probabilities (N, C) float32 numpy."""
    return torch.softmax(predict_logits(model, images, meta, device, batch_size), 1).numpy()


def _validate(model, split: SplitTensors, meta, config, device, batch_size) -> tuple[float, float]:
    if len(split) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, split.images, meta, device, batch_size)
    loss = compute_loss(logits, split.labels, split.soft, config).item()
    acc = (logits.argmax(1) == split.labels).float().mean().item()
    return loss, acc


def _group_loss(sample_losses: torch.Tensor, idx: torch.Tensor, cells: torch.Tensor,
                group_weights: torch.Tensor | None, dro: GroupDRO | None, config: TrainConfig) -> torch.Tensor:
    """The batch loss under the group mitigations (reweighting, then group DRO)."""
    if config.group_balance == "reweight":
        sample_losses = sample_losses * group_weights[idx].to(sample_losses.device)
    if dro is not None:
        return dro.loss(sample_losses, cells[idx].to(sample_losses.device))
    return sample_losses.mean()


# --------------------------------------------------------------------------- distributed pieces

def _wrap_distributed(model: nn.Module, device: torch.device, dro: GroupDRO | None, world) -> nn.Module:
    """`model` itself in a world of one; else DistributedDataParallel over it (which starts every rank
    from rank 0's weights), with group DRO's cell losses summed over the ranks. On CUDA the BatchNorm
    layers become SyncBatchNorm (in place: the state dict keeps its keys), so they normalise over the
    global batch as one process does; SyncBatchNorm is CUDA-only, so on CPU each rank normalises its own
    share (the gap this leaves is measured in tests/pipeline/train/test_distributed.py)."""
    if world.size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    from pipeline.train.distributed import all_reduce_sum

    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))

    if dro is not None:
        dro.reduce = lambda t: all_reduce_sum(t, str(device)).to(t.device)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    """The augmentation generator of one rank and epoch (DDP only): independent streams, and a
    resumed run draws what it would have drawn, whatever the world size before."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _stage(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A gathered uint8 batch, in pinned memory when it goes to a GPU (the copy is then asynchronous)."""
    return images.pin_memory() if device.type == "cuda" else images


def _sum_over_ranks(values: tuple[float, ...], device: torch.device) -> tuple[float, ...]:
    from pipeline.train.distributed import all_reduce_sum

    return tuple(all_reduce_sum(list(values), str(device)).tolist())


def _validate_on_main(model, split: SplitTensors, meta, config, device, batch_size, world) -> tuple[float, float]:
    """`_validate` on rank 0, broadcast to all ranks so that every rank takes the same decisions."""
    if world.size == 1:
        return _validate(model, split, meta, config, device, batch_size)
    from pipeline.train.distributed import broadcast_object

    figures = _validate(model, split, meta, config, device, batch_size) if world.is_main else None
    return broadcast_object(figures)


# --------------------------------------------------------------------------- the loop

def fit(model: nn.Module, train: SplitTensors, val: SplitTensors, meta: dict[str, Any], config: TrainConfig,
        device: torch.device | str = "cpu", *,
        on_checkpoint: Callable[[dict[str, Any], bool], None] | None = None,
        resume: dict[str, Any] | None = None,
        stop_after: int | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] = print) -> FitResult:
    """Train `model` in place and return the history and best weights.

    meta: image_size, mean, std (the model's input contract).
    resume: a state dict previously passed to on_checkpoint (plus optional
      'best_state_dict'); training continues from its next epoch.
    stop_after: stop after this epoch number as if interrupted (the result is
      resumable, `finished` False).
    progress: tqdm bars per epoch; None = only when stderr is a TTY.
    """
    # Long on purpose: the training loop: epochs, batches, AMP, group DRO, checkpoints and early stopping
    # share the loop's state (optimizer, scaler, RNG, weights) and must resume exactly.
    from tqdm.auto import tqdm

    from pipeline.train.distributed import current_world

    world = current_world()
    check_progressive_resizing(config, int(meta["image_size"]))
    device = torch.device(device)
    generator = seed_everything(config.seed, device)
    model.to(device).to(memory_format=torch.channels_last)
    frozen = freeze_modules(model, config.frozen_modules)
    num_classes = int(meta["num_classes"])
    weight = compute_class_weights(train.labels, num_classes, config.class_weights)
    weight_dev = weight.to(device) if weight is not None else None
    cells, group_weights, dro = create_group_mitigation(train, num_classes, config, device)
    steps = max(1, math.ceil(len(train) / config.batch_size))
    optimizer = create_optimizer(model, config)
    scheduler, per_batch = create_scheduler(optimizer, config, steps)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    show = (sys.stderr.isatty() if progress is None else progress) and world.is_main

    history: list[dict[str, float]] = []
    start_epoch, best_loss, best_epoch, bad_epochs = 1, math.inf, 0, 0
    best_state = copy.deepcopy(model.state_dict())
    elapsed = 0.0
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if scheduler is not None and resume.get("scheduler") is not None:
            scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch = int(resume["epoch"]) + 1
        best_loss, best_epoch, bad_epochs = resume["best_val_loss"], resume["best_epoch"], resume["bad_epochs"]
        history = list(resume["history"])
        elapsed = float(resume.get("train_seconds", 0.0))
        best_state = resume.get("best_state_dict") or copy.deepcopy(model.state_dict())
        set_rng_state(resume["rng"], generator)
        if dro is not None and resume.get("group_dro") is not None:
            dro.load_state_dict(resume["group_dro"])
        if resume.get("stopped_early"):
            start_epoch = config.epochs + 1

    net = _wrap_distributed(model, device, dro, world)
    stopped_early = bool(resume and resume.get("stopped_early"))
    finished = True
    for epoch in range(start_epoch, config.epochs + 1):
        t0 = time.perf_counter()
        aug_generator = generator if world.size == 1 else _rank_generator(config.seed, epoch, world.rank)
        model.train()
        for m in frozen:
            m.eval()
        if config.group_balance == "sample":
            order = torch.multinomial(group_weights.double(), len(train), replacement=True, generator=generator)
        else:
            order = epoch_order(train.labels, config.sampler, generator)
        total_loss, total_correct, seen = 0.0, 0, 0
        epoch_meta = {**meta, "image_size": config.epoch_image_size(epoch, int(meta["image_size"]))}
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{config.epochs}", disable=not show, leave=False,
                   file=sys.stderr)
        for b in bar:
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            if len(idx) < 2 * world.size and len(order) > 1 and b > 0:
                continue  # a lone sample (on a rank) breaks BatchNorm; it is seen again next epoch
            if world.size > 1:
                idx = idx[world.rank::world.size]
            x = augment_batch(_stage(train.images[idx], device), epoch_meta, config.augment, aug_generator, device)
            y = train.labels[idx].to(device)
            soft = train.soft[idx].to(device) if train.soft is not None else None
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = net(x)
                if cells is None:
                    loss = compute_loss(logits, y, soft, config, weight_dev)
                else:
                    loss = _group_loss(compute_loss(logits, y, soft, config, weight_dev, reduction="none"),
                                       idx, cells, group_weights, dro, config)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if per_batch:
                scheduler.step()
            n = len(idx)
            total_loss += loss.item() * n
            total_correct += (logits.argmax(1) == y).sum().item()
            seen += n
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{total_correct / seen:.3f}")
        bar.close()

        if world.size > 1:
            total_loss, total_correct, seen = _sum_over_ranks((total_loss, total_correct, seen), device)
        val_loss, val_acc = _validate_on_main(model, val, meta, config, device, max(config.batch_size, 128), world)
        monitor = val_loss if not math.isnan(val_loss) else total_loss / max(seen, 1)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None and not per_batch:
            scheduler.step(monitor)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_acc": total_correct / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": seconds}
        history.append(row)
        improved = monitor < best_loss
        if improved:
            best_loss, best_epoch, bad_epochs = monitor, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        stopped_early = (config.early_stopping_patience is not None and bad_epochs >= config.early_stopping_patience
                         and epoch < config.epochs)
        log(f"epoch {epoch:3d}/{config.epochs}  loss {row['train_loss']:.4f}  acc {row['train_acc']:.4f}  "
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}  lr {lr:.2e}  {seconds:.1f}s"
            + (f"  (trained at {epoch_meta['image_size']}px)" if epoch_meta["image_size"] != meta["image_size"] else "")
            + ("  *" if improved else ""))
        if on_checkpoint is not None:
            on_checkpoint({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "scaler": scaler.state_dict() if use_amp else None,
                "epoch": epoch, "best_val_loss": best_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "stopped_early": stopped_early, "history": history, "train_seconds": elapsed,
                "rng": get_rng_state(generator),
                "group_dro": dro.state_dict() if dro is not None else None,
            }, improved)
        if stopped_early:
            log(f"early stopping: no validation improvement for {bad_epochs} epochs (best epoch {best_epoch})")
            break
        if stop_after is not None and epoch >= stop_after and epoch < config.epochs:
            finished = False
            log(f"stopped after epoch {epoch} as requested; continue with --resume")
            break

    return FitResult(history=history, best_epoch=best_epoch, best_val_loss=best_loss, best_state_dict=best_state,
                     stopped_early=stopped_early, finished=finished, train_seconds=elapsed)
