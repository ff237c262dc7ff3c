"""Model architectures, pretrained weights and checkpoint files.

Architectures (`create_model`):
- "lightcnn": the second seed's small residual CNN for 64x64 input in [-1, 1]:
  three blocks of 2, 2 and 3 conv3x3+BN+ReLU layers (the first layer of a block
  changes the width, the others are residual units with identity skips), 2x2
  max-pooling after the first two blocks, channels 32/64/128, global average
  pooling, FC 64, dropout 0.5, linear classifier.
- "lightcnn-half": the same with channels 16/32/64.
- "lightcnn-lite": channels 16/32/64 with blocks of 1, 2 and 2 layers (no
  residual unit at 64x64, one fewer at 16x16): 40% fewer multiply-adds than
  "lightcnn-half" (the demo preset's model).
  The light CNNs take their dropout from the recipe's head_dropout.
- "resnet18", "resnet50": torchvision ResNets whose `fc` is replaced by a head
  `Sequential(Dropout, Linear)`.

Pretrained weights (`weights=`): "none", "imagenet" (torchvision's file, taken
from torch.hub's cache or downloaded; a failure is one WeightsUnavailableError
naming the file and where to put it), or a path to a state dict / checkpoint.

Checkpoints are dicts {"format", "meta", "state_dict", ...training state};
`meta` holds what is needed to rebuild and feed the model (arch, classes,
image_size, mean, std, recipe). They are written atomically (tmp + rename).

A checkpoint is data, never code: `load_checkpoint` unpickles with
`weights_only=True` and an allowlist of the few non-tensor types a checkpoint
holds (numpy's RNG state array), so a crafted file cannot run anything.
`load_run_model` is the one way to load the model of a stored run: the path
is taken from the store's own runs/ folder (or a path the user passed), and
the file's SHA-256 must match the one recorded with the run.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import UserError, WeightsUnavailableError

CHECKPOINT_FORMAT = "fer-trust-checkpoint/1"
ARCHITECTURES: tuple[str, ...] = ("lightcnn", "lightcnn-half", "lightcnn-lite", "resnet18", "resnet50")
# arch -> (channels, layers) of the light CNN's three blocks
LIGHTCNN_SHAPES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "lightcnn": ((32, 64, 128), (2, 2, 3)),
    "lightcnn-half": ((16, 32, 64), (2, 2, 3)),
    "lightcnn-lite": ((16, 32, 64), (1, 2, 2)),
}


# --------------------------------------------------------------------------- light CNN

class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class ResidualUnit(nn.Module):
    """conv3x3+BN+ReLU with an identity skip: x + f(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = ConvBNReLU(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LightBlock(nn.Sequential):
    """`depth` conv layers: one that sets the width, then depth-1 residual units."""

    def __init__(self, c_in: int, c_out: int, depth: int):
        super().__init__(ConvBNReLU(c_in, c_out), *[ResidualUnit(c_out) for _ in range(depth - 1)])


class LightCNN(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (32, 64, 128),
                 depths: tuple[int, int, int] = (2, 2, 3), hidden: int = 64, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3 = widths
        self.block1 = LightBlock(3, c1, depths[0])
        self.pool1 = nn.MaxPool2d(2)
        self.block2 = LightBlock(c1, c2, depths[1])
        self.pool2 = nn.MaxPool2d(2)
        self.block3 = LightBlock(c2, c3, depths[2])
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c3, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        return self.head(self.gap(x))


# --------------------------------------------------------------------------- factory

def _torchvision_weights(arch: str):
    import torchvision.models as tvm

    return {"resnet18": tvm.ResNet18_Weights.DEFAULT, "resnet50": tvm.ResNet50_Weights.DEFAULT}[arch]


def create_model(arch: str, num_classes: int, weights: str | os.PathLike = "none",
                 head_dropout: float = 0.3) -> nn.Module:
    """Build `arch` with a `num_classes` output.

    weights: "none"; "imagenet" (ResNets only); or the path of a state dict or
    checkpoint whose backbone is loaded (the classifier head is skipped when its
    shape differs).
    """
    if arch in LIGHTCNN_SHAPES:
        widths, depths = LIGHTCNN_SHAPES[arch]
        model: nn.Module = LightCNN(num_classes, widths=widths, depths=depths, dropout=head_dropout)
    elif arch in ("resnet18", "resnet50"):
        import torchvision.models as tvm

        model = getattr(tvm, arch)(weights=None)
        model.fc = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(model.fc.in_features, num_classes))
    else:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")

    weights = str(weights)
    if weights == "none":
        return model
    if weights == "imagenet":
        if arch not in ("resnet18", "resnet50"):
            raise UserError(f"there are no ImageNet weights for {arch!r}; use --weights none or a file path")
        state = load_imagenet_state_dict(arch)
        source = f"torchvision's ImageNet weights ({Path(urlparse(_torchvision_weights(arch).url).path).name})"
    else:
        state = load_state_dict_file(weights)
        source = weights
    skipped = load_backbone_state(model, state, source)
    if skipped:
        print(f"note: classifier head not loaded from {source} ({', '.join(skipped)}); it starts fresh")
    return model


def load_imagenet_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet state dict, from torch.hub's cache or downloaded.

    Raises WeightsUnavailableError naming the file and where to put it when the
    file is not cached and cannot be downloaded (e.g. no network).
    """
    url = _torchvision_weights(arch).url
    filename = Path(urlparse(url).path).name
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / filename
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
    except Exception as exc:  # urllib/socket/hash errors: all mean "not available here"
        raise WeightsUnavailableError(
            f"ImageNet weights for {arch} are not available: {filename} is not in {cache_dir} and could not be "
            f"downloaded from {url} ({type(exc).__name__}: {exc}). Download it elsewhere and copy it to "
            f"{cached}, or pass --weights PATH (a state-dict file) or --weights none (train from scratch)."
        ) from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from `path`: a bare state dict or a checkpoint dict holding one
    under 'state_dict' or 'model'. Keys prefixed 'module.' (DataParallel) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass an existing file, 'imagenet' or 'none'")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"could not read weights file {path} ({type(exc).__name__}: {exc}); "
                        "it must be a PyTorch state dict saved with torch.save") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} holds no state dict (a dict of tensors, or a checkpoint with "
                        "'state_dict' or 'model'); pass a state-dict file, 'imagenet' or 'none'")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_head_key(key: str) -> bool:
    return key.startswith(("fc.", "head."))


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load `state` into `model`; head keys ('fc.*', 'head.*') that are missing or
    differ in shape are skipped and returned. A torchvision-style plain `fc.weight`
    is mapped onto our `fc.1.weight` head when shapes agree. Any other mismatch is
    a UserError naming `source`."""
    own = model.state_dict()
    state = dict(state)
    for suffix in ("weight", "bias"):  # torchvision's plain Linear fc -> our Sequential(Dropout, Linear)
        if f"fc.{suffix}" in state and f"fc.1.{suffix}" in own and f"fc.{suffix}" not in own:
            state[f"fc.1.{suffix}"] = state.pop(f"fc.{suffix}")
    skipped = []
    for key in list(state):
        if _is_head_key(key) and (key not in own or own[key].shape != state[key].shape):
            skipped.append(key)
            del state[key]
    missing = [k for k in own if k not in state and not _is_head_key(k)]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
             for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(part for part in (
            f"missing {len(missing)} keys (e.g. {', '.join(missing[:3])})" if missing else "",
            f"unexpected {len(unexpected)} keys (e.g. {', '.join(unexpected[:3])})" if unexpected else "",
            f"shape mismatches: {', '.join(wrong[:3])}" if wrong else "",
        ) if part)
        raise UserError(f"weights in {source} do not fit this architecture: {detail}. "
                        "Pass weights saved from the same architecture, 'imagenet' or 'none'")
    head_missing = [k for k in own if _is_head_key(k) and k not in state]
    model.load_state_dict(state, strict=False)
    return sorted(set(skipped) | set(head_missing))


def default_target_layer(model: nn.Module) -> tuple[nn.Module, str]:
    """The layer CAM methods hook by default: layer4[-1] for ResNets, the last
    block for the light CNN. Returns (module, dotted name)."""
    if isinstance(model, LightCNN):
        return model.block3, "block3"
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential):
        return layer4[-1], f"layer4.{len(layer4) - 1}"
    raise ValueError(f"no default target layer known for {type(model).__name__}")


def freeze_modules(model: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Module]:
    """Stop gradients for the named top-level modules (e.g. 'conv1', 'bn1', 'layer1');
    returns them so the training loop can keep them in eval mode (frozen BN stats)."""
    frozen = []
    for name in prefixes:
        module = getattr(model, name, None)
        if module is None:
            raise ValueError(f"cannot freeze {name!r}: {type(model).__name__} has no such module")
        for p in module.parameters():
            p.requires_grad_(False)
        frozen.append(module)
    return frozen


# --------------------------------------------------------------------------- checkpoints

def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _checkpoint_safe_globals() -> list:
    """The non-tensor types a checkpoint of ours holds, allowed through `weights_only` unpickling:
    numpy arrays (the numpy RNG state saved for exact resumption) and their dtypes, and
    torch's version string (a str subclass, in the run config of older checkpoints)."""
    import numpy as np
    from torch.torch_version import TorchVersion

    return [np._core.multiarray._reconstruct, np.ndarray, np.dtype, np.dtypes.UInt32DType, TorchVersion]


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path` (with training state); UserError when it is not one of ours.

    Unpickled with `weights_only=True`: a file holding anything but tensors, plain
    containers and the allowlisted numpy types is refused before any of it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run id or a run folder holding best.pt/last.pt")
    try:
        with torch.serialization.safe_globals(_checkpoint_safe_globals()):
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        unsafe = next((line.strip() for line in first if "GLOBAL" in line or "Unsupported" in line), "")
        raise UserError(f"refused to load checkpoint {path}: it holds objects other than weights, which could "
                        f"run code when loaded{f' ({unsafe})' if unsafe else ''}. Load only checkpoints "
                        f"written by `python -m pipeline train`.") from None
    except Exception as exc:
        raise UserError(f"could not read checkpoint {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a checkpoint written by `python -m pipeline train`")
    return ckpt


def hash_checkpoint(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a checkpoint file, as hex (recorded with the run, checked before loading)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_run_checkpoint(db: str | os.PathLike, run: dict[str, Any],
                           checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of a stored run, never a path taken blindly from the store.

    `checkpoint` (a path the user passed) wins. Otherwise the recorded
    `checkpoint_path` is used only when it lies inside the store's own runs/
    folder (`runs_dir_for(db)`); failing that, runs/<run or parent run>/<file name>
    there (a store moved with its runs folder). Anything else is a UserError.
    """
    from pipeline.paths import runs_dir_for

    if checkpoint is not None:
        path = Path(checkpoint).expanduser().resolve()
        if not path.is_file():
            raise UserError(f"checkpoint {path} (passed on the command line) does not exist")
        return path
    recorded = run.get("checkpoint_path")
    if not recorded:
        raise UserError(f"run {run.get('run_id')} records no checkpoint; it is not a trained run")
    runs_dir = runs_dir_for(Path(db)).resolve()
    path = Path(recorded).expanduser()
    path = (runs_dir.parent / path).resolve() if not path.is_absolute() else path.resolve()
    if path.is_relative_to(runs_dir) and path.is_file():
        return path
    name = Path(recorded).name if Path(recorded).suffix == ".pt" else "best.pt"
    for owner in (run.get("run_id"), run.get("parent_run_id")):
        if owner and (runs_dir / owner / name).is_file():
            return runs_dir / owner / name
    where = "does not exist" if path.is_relative_to(runs_dir) else f"is outside the store's runs folder {runs_dir}"
    raise UserError(f"the checkpoint of run {run.get('run_id')} recorded in {db} ({recorded}) {where}; "
                    f"restore runs/{run.get('parent_run_id') or run.get('run_id')}/ beside the store, "
                    f"(or, for `evaluate`, pass the checkpoint file you trust with --checkpoint PATH)")


def verify_checkpoint(path: str | os.PathLike, expected_sha256: str | None, run_id: str = "") -> None:
    """Raise UserError when the file's SHA-256 differs from the one recorded with the run.

    Runs stored before checksums were recorded (None) are not checked; their file is
    still unpickled weights-only.
    """
    if not expected_sha256:
        return
    found = hash_checkpoint(path)
    if found != expected_sha256:
        raise UserError(f"checkpoint {path} does not match the SHA-256 recorded with run {run_id} "
                        f"(recorded {expected_sha256[:12]}..., file {found[:12]}...): it was changed or replaced "
                        f"after training. Restore the original file, or re-train the run.")


def load_run_model(db: str | os.PathLike, run: dict[str, Any], device: str | torch.device = "cpu", *,
                   checkpoint: str | os.PathLike | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of stored run `run` (a `store.get_run` dict) of the store `db`, in eval mode.

    The one function the evaluate and explain stages load a run's model with:
    the file comes from `resolve_run_checkpoint`, its SHA-256 is checked against
    the run's `checkpoint_sha256` (unless the user passed `checkpoint`), and it
    is unpickled weights-only. Returns (model, meta) as `load_model_from_checkpoint`.
    """
    path = resolve_run_checkpoint(db, run, checkpoint)
    if checkpoint is None:
        verify_checkpoint(path, run.get("checkpoint_sha256"), str(run.get("run_id")))
    return load_model_from_checkpoint(path, device)


def load_model_from_checkpoint(path: str | os.PathLike,
                               device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model saved at `path`, in eval mode on `device`.

    Returns (model, meta); meta has arch, classes, num_classes, image_size,
    mean, std, recipe, head_dropout and the run's config.
    """
    ckpt = load_checkpoint(path, "cpu")
    meta = dict(ckpt["meta"])
    model = create_model(meta["arch"], len(meta["classes"]), head_dropout=meta.get("head_dropout", 0.3))
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return model, meta
