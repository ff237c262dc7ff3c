"""Load the model a card describes and give every format one interface.

`load_external_model(card)` returns a `CardModel`: an `nn.Module` whose
`forward` takes a float batch N,3,H,W of RGB values in [0, 1] at the card's
input size and returns logits (a model that outputs probabilities returns their
log, so a softmax gives them back). It applies the card's input contract
itself (channel order, grey, value range, mean/std, layout), so callers feed
every model the same way; `predict_probabilities(images)` does it from uint8
NHWC arrays. Three back ends:

- `pytorch`: the card's factory builds the module and its state dict is loaded
  strictly; Grad-CAM hooks `inner.<target_layer>` as for a trained model;
- `torchscript`: `torch.jit.load`; a ScriptModule cannot be hooked, so Grad-CAM
  re-emits the forward graph with the target child's output as a second
  output (`activations_and_logits`) and takes the gradient of the scores with
  respect to it: the same numbers as a hook, for targets that are children the
  top-level forward calls;
- `onnx`: an onnxruntime session (no gradients: gradient-free methods only).

`load_external_model` probes the model on a random batch and turns what goes
wrong into UserErrors naming the card: an input the model rejects, an output
width that differs from the class list, NaN outputs, "probabilities" that do not
sum to 1, and an unknown target layer (listing the candidate layers).

`load_run_model(db, run)` is how the explain stage gets any stored run's model: a
`RunModel` over a trained run's checkpoint or the card an external run
recorded (checked against the model file's SHA-256), with one way to prepare
inputs, compute CAMs and predict for the gradient-free methods.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.external.card import ModelCard


# --------------------------------------------------------------------------- back ends

def _import_factory(card: ModelCard):
    module_name, attr = card.factory.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module's own import-time error
        raise UserError(f"model card {card.path}: cannot import {module_name!r} for factory = {card.factory!r} "
                        f"({type(exc).__name__}: {exc}); install the package or add its folder to PYTHONPATH"
                        ) from None
    factory = module
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise UserError(f"model card {card.path}: {module_name} has no {attr!r} (factory = {card.factory!r}); "
                            "name a callable that returns the nn.Module")
    if not callable(factory):
        raise UserError(f"model card {card.path}: factory {card.factory!r} is not callable")
    return factory


def _load_pytorch(card: ModelCard) -> nn.Module:
    from pipeline.train.models import load_state_dict_file

    factory = _import_factory(card)
    try:
        module = factory(**card.factory_kwargs)
    except Exception as exc:
        raise UserError(f"model card {card.path}: {card.factory}(**{card.factory_kwargs}) failed "
                        f"({type(exc).__name__}: {exc}); check factory_kwargs") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"model card {card.path}: {card.factory} returned {type(module).__name__}, not a "
                        "torch.nn.Module")
    state = load_state_dict_file(card.file)
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # torch lists the missing, unexpected and mis-shaped keys
        detail = " ".join(str(exc).split())
        raise UserError(f"model card {card.path}: the state dict in {card.file} does not fit {card.factory}: "
                        f"{detail[:600]}; check factory and factory_kwargs (e.g. num_classes)") from None
    return module


def _load_torchscript(card: ModelCard) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(card.file, map_location="cpu")
    except Exception as exc:
        raise UserError(f"model card {card.path}: {card.file} is not a TorchScript file "
                        f"({type(exc).__name__}: {exc}); save it with torch.jit.save, or use format = \"pytorch\" "
                        "or \"onnx\"") from None


class _OnnxRunner:
    """An onnxruntime session over numpy batches, honouring a fixed batch size when the model has one."""

    def __init__(self, card: ModelCard):
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(card.file, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise UserError(f"model card {card.path}: onnxruntime cannot load {card.file} "
                            f"({type(exc).__name__}: {exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise UserError(f"model card {card.path}: {card.file} has {len(inputs)} inputs "
                            f"({', '.join(i.name for i in inputs)}); only single-input models are supported")
        self.input_name = inputs[0].name
        self.input_shape = list(inputs[0].shape)
        self.output_name = self.session.get_outputs()[0].name
        first = self.input_shape[0] if self.input_shape else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def check_shape(self, card: ModelCard, declared: tuple[int, ...]) -> None:
        if len(self.input_shape) != len(declared):
            raise UserError(f"model card {card.path}: {card.file} takes input of shape {self.input_shape}, the card "
                            f"declares (N, {', '.join(map(str, declared[1:]))}); fix [input] size/channels/layout")
        for want, have in zip(declared[1:], self.input_shape[1:]):
            if isinstance(have, int) and have > 0 and have != want:
                raise UserError(f"model card {card.path}: {card.file} takes input of shape {self.input_shape}, the "
                                f"card declares (N, {', '.join(map(str, declared[1:]))}); fix [input] size, "
                                "channels or layout")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        step = self.fixed_batch or len(x)
        out = []
        for start in range(0, len(x), max(step, 1)):
            chunk = x[start:start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:  # pad to the model's fixed batch, then drop the padding
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            out.append(np.asarray(self.session.run([self.output_name], {self.input_name: chunk})[0])[:n])
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- the interface

class CardModel(nn.Module):
    """Any carded model behind one forward: RGB [0, 1] N,3,H,W at card.input.size -> logits (N, K)."""

    def __init__(self, card: ModelCard, inner: nn.Module | None = None, onnx: _OnnxRunner | None = None):
        super().__init__()
        self.card = card
        self.inner = inner
        self.onnx = onnx
        spec = card.input
        self.register_buffer("_mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("_std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))
        self._tap_cache: dict[str, Any] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.card.classes

    @property
    def has_weights(self) -> bool:
        """Whether the weights are a torch nn.Module (re-initialisable: the randomisation check)."""
        return self.card.format == "pytorch"

    @property
    def differentiable(self) -> bool:
        return self.card.format != "onnx"

    def to_model_input(self, x01: torch.Tensor) -> torch.Tensor:
        """The card's input transform applied to RGB [0, 1] N,3,H,W."""
        spec = self.card.input
        x = x01.float()
        if spec.channels == "bgr":
            x = x.flip(1)
        elif spec.channels == "grey":
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        lo, hi = spec.range
        if (lo, hi) != (0.0, 1.0):
            x = x * (hi - lo) + lo
        x = (x - self._mean) / self._std
        if spec.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        return x.contiguous()

    def _scores(self, out: Any) -> torch.Tensor:
        if isinstance(out, (tuple, list)):
            out = out[0]
        if isinstance(out, dict):
            out = next(iter(out.values()))
        out = torch.as_tensor(out).float()
        if self.card.output == "probabilities":
            out = torch.log(out.clamp_min(1e-12))
        return out

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        x = self.to_model_input(x01)
        if self.onnx is not None:
            arr = self.onnx(x.detach().cpu().numpy().astype(np.float32, copy=False))
            return self._scores(torch.from_numpy(np.ascontiguousarray(arr)).to(x01.device))
        return self._scores(self.inner(x))

    # ----------------------------------------------------------------- target layers

    def candidate_layers(self) -> list[str]:
        """Layers Grad-CAM could hook: for PyTorch modules those with a 4-D output on a probe
        batch (call order), for TorchScript the children the top-level forward calls."""
        if self.card.format == "torchscript":
            return [name for name, _ in _scripted_child_calls(self.inner)]
        if self.inner is None:
            return []
        names: list[str] = []
        handles = []
        for name, module in self.inner.named_modules():
            if not name:
                continue

            def hook(mod, inp, out, name=name):
                if isinstance(out, torch.Tensor) and out.ndim == 4 and name not in names:
                    names.append(name)
            handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self(torch.rand(1, 3, self.card.input.size, self.card.input.size))
        finally:
            for h in handles:
                h.remove()
        return names

    def resolve_layer(self, name: str | None = None) -> tuple[nn.Module | None, str]:
        """(module, dotted name) of the Grad-CAM target layer: `name`, else the card's, else the
        model's default when it is one we know. UserError with the candidates otherwise."""
        from pipeline.explain.cams import find_layer

        name = name or self.card.target_layer
        if self.card.format == "onnx":
            raise UserError(f"model {self.card.name} ({self.card.path}) is an ONNX model: it has no gradients, "
                            "so Grad-CAM methods do not apply; use --methods occlusion,rise")
        if not name:
            if self.card.format == "pytorch":
                from pipeline.train.models import default_target_layer

                try:
                    return default_target_layer(self.inner)
                except ValueError:
                    pass
            raise UserError(self._layer_message("sets no target_layer", None))
        if self.card.format == "torchscript":
            children = dict(_scripted_child_calls(self.inner))
            key = name.strip()
            if key not in children:
                raise UserError(self._layer_message(f"has no layer {name!r} that its forward calls", name))
            return None, key
        try:
            return find_layer(self.inner, name)
        except ValueError:
            raise UserError(self._layer_message(f"has no layer {name!r}", name)) from None

    def _layer_message(self, problem: str, name: str | None) -> str:
        cands = self.candidate_layers()
        shown = ", ".join(cands[-12:]) if cands else "none found"
        where = "the children its forward calls" if self.card.format == "torchscript" else \
            "layers with a 4-D output, deepest last"
        return (f"model card {self.card.path} {problem}; set target_layer (or --target-layer) to one of {where}: "
                f"{shown}")

    def activations_and_logits(self, x01: torch.Tensor, layer_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchScript: (logits, the output of child `layer_name`) from one forward pass with
        autograd on, so torch.autograd.grad(score, activation) is the gradient a hook would give."""
        fn = self._tap_cache.get(layer_name)
        if fn is None:
            fn = self._tap_cache[layer_name] = _scripted_tap(self.inner, layer_name)
        out, act = fn(self.inner._c, self.to_model_input(x01))
        return self._scores(out), act

    # ----------------------------------------------------------------- prediction

    def predict_probabilities(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Softmax probabilities (N, K) float32 of uint8 NHWC images (any size; resized)."""
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                out.append(torch.softmax(self(load_unit_batch(images[start:start + batch_size],
                                                              self.card.input.size)), 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def load_unit_batch(images: np.ndarray, size: int, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 NHWC (or NHW grey) -> float N,3,size,size RGB in [0, 1]: the evaluation resize of
    train.augment.preprocess_batch, without normalisation."""
    from pipeline.train.augment import preprocess_batch

    return preprocess_batch(images, {"image_size": size, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}, device)


# --------------------------------------------------------------------------- TorchScript taps

def _scripted_child_calls(scripted: nn.Module) -> list[tuple[str, Any]]:
    """(child name, output value) of each `self.<child>.forward(...)` call in the top-level graph."""
    graph = scripted.forward.graph
    out = []
    for node in graph.nodes():
        if node.kind() != "prim::CallMethod" or node.s("name") != "forward":
            continue
        obj = node.inputsAt(0).node()
        if obj.kind() == "prim::GetAttr" and obj.inputsAt(0).debugName() == next(iter(graph.inputs())).debugName():
            if node.outputsSize() == 1 and node.output().type().kind() == "TensorType":
                out.append((obj.s("name"), node.output()))
    return out


def _scripted_tap(scripted: nn.Module, child: str):
    """A function (module object, input) -> (output, child's output), from a copy of the forward graph."""
    graph = scripted.forward.graph.copy()
    values = {}
    for node in graph.nodes():
        if node.kind() == "prim::CallMethod" and node.s("name") == "forward":
            obj = node.inputsAt(0).node()
            if obj.kind() == "prim::GetAttr" and node.outputsSize() == 1:
                values.setdefault(obj.s("name"), node.output())
    if child not in values:
        raise UserError(f"TorchScript forward does not call {child!r}")
    original = next(iter(graph.outputs()))
    pair = graph.create("prim::TupleConstruct", [original, values[child]])
    pair.insertBefore(graph.return_node())
    pair.output().setType(torch._C.TupleType([original.type(), values[child].type()]))
    graph.eraseOutput(0)
    graph.registerOutput(pair.output())
    return torch._C._create_function_from_graph(f"forward_tap_{child}", graph)


# --------------------------------------------------------------------------- loading + probing

def load_external_model(card: ModelCard, *, probe: bool = True) -> CardModel:
    """The card's model behind CardModel, in eval mode on the CPU, probed (see module docstring)."""
    if card.format == "pytorch":
        model = CardModel(card, inner=_load_pytorch(card))
    elif card.format == "torchscript":
        model = CardModel(card, inner=_load_torchscript(card))
    else:
        runner = _OnnxRunner(card)
        size, c = card.input.size, card.input.n_channels
        runner.check_shape(card, (0, c, size, size) if card.input.layout == "nchw" else (0, size, size, c))
        model = CardModel(card, onnx=runner)
    model.eval()
    if probe:
        probe_model(model)
        if card.target_layer:
            model.resolve_layer()
    return model


def probe_model(model: CardModel, n: int = 2) -> None:
    """Run a seeded random batch through the model; UserError on what the card got wrong."""
    card = model.card
    size = card.input.size
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    shape = tuple(model.to_model_input(x).shape)
    try:
        with torch.no_grad():
            raw = model(x)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"model card {card.path}: the model fails on a batch of shape {shape} (from [input] size "
                        f"{size}, channels {card.input.channels}, layout {card.input.layout}): "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}. Fix [input] to match the input "
                        "the model expects") from None
    if raw.ndim != 2 or raw.shape[0] != n:
        raise UserError(f"model card {card.path}: the model returns shape {tuple(raw.shape)} for a batch of {n}; "
                        f"it must return one row of {len(card.classes)} class scores per image")
    if raw.shape[1] != len(card.classes):
        raise UserError(f"model card {card.path}: the model outputs {raw.shape[1]} scores per image but the card "
                        f"lists {len(card.classes)} classes ({', '.join(card.classes)}); list every output class "
                        "in output order")
    if not torch.isfinite(raw).all():
        raise UserError(f"model card {card.path}: the model outputs NaN or infinite scores on a random batch of "
                        f"shape {shape}; check [input] range/mean/std and the weights in {card.file}")
    if card.output == "probabilities":
        sums = raw.exp().sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            raise UserError(f"model card {card.path}: output = \"probabilities\" but rows sum to "
                            f"{', '.join(f'{float(s):.3f}' for s in sums)}; set output = \"logits\"")


def compute_card_cams(model: CardModel, x01: torch.Tensor, target_sets, methods, layer_name: str | None = None,
                      out_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """CAM-family maps of a carded torch model at its target layer, like explain.cams.compute_cams:
    {method: float32 (n_sets, N, H, W) in [0, 1]}. PyTorch modules are hooked; TorchScript goes
    through `activations_and_logits` (gradient methods and EigenCAM; ScoreCAM is not offered)."""
    from pipeline.explain.cams import (CLASS_AGNOSTIC_METHODS, GRADIENT_METHODS, compute_cams,
                                       compute_cams_from_activations, validate_methods)

    methods = validate_methods(methods)
    layer, name = model.resolve_layer(layer_name)
    if layer is not None:
        return compute_cams(model, x01, target_sets, methods, layer, out_size)[0]
    unsupported = [m for m in methods if m not in GRADIENT_METHODS | CLASS_AGNOSTIC_METHODS]
    if unsupported:
        raise UserError(f"{', '.join(unsupported)} cannot run on TorchScript model {model.card.name}; use "
                        f"{', '.join(sorted(GRADIENT_METHODS | CLASS_AGNOSTIC_METHODS))}, occlusion or rise")
    targets = np.asarray(target_sets, dtype=np.int64)
    targets = targets[None] if targets.ndim == 1 else targets
    if out_size is None:
        out_size = (int(x01.shape[-1]), int(x01.shape[-2]))
    x = x01.detach().requires_grad_(True)  # so the activation is in the graph even with frozen weights
    # Unoptimised execution: from its third call the profiling executor fuses the tapped graph into one
    # DifferentiableGraph whose outputs (logits, activation) are siblings, and the gradient of the logits
    # with respect to the activation is then "not used in the graph".
    with torch.enable_grad(), torch.jit.optimized_execution(False):
        logits, act = model.activations_and_logits(x, name)
        grads = []
        if any(m in GRADIENT_METHODS for m in methods):
            tgt = torch.as_tensor(targets)
            for s in range(len(targets)):
                score = logits.gather(1, tgt[s].view(-1, 1)).sum()
                (g,) = torch.autograd.grad(score, act, retain_graph=s < len(targets) - 1)
                grads.append(g.detach().float().contiguous().numpy())
    acts = act.detach().float().contiguous().numpy()
    return compute_cams_from_activations(x01, acts, grads, targets, methods, out_size)


def describe(model: CardModel) -> str:
    card = model.card
    return (f"{card.name} ({card.format}, {Path(card.file).name}, {len(card.classes)} classes, "
            f"{card.input.size}x{card.input.size} {card.input.channels})")


# --------------------------------------------------------------------------- a run's model, for explain

@dataclass
class RunModel:
    """The model behind a stored run, whatever made it, as the explain stage uses it.

    module: what `prepare(images)` is fed to (a trained run's network on normalised input, or a
      CardModel on RGB [0, 1]); CAM methods, ROAD and the confidence change run on it.
    prepare: uint8 NHWC images -> module input at `image_size`.
    to_unit: uint8 NHWC images -> RGB [0, 1] N,3,H,W, what the gradient-free methods perturb;
    predict: RGB [0, 1] batches -> probabilities (the perturbation methods' predict function).
    source: 'checkpoint' (trained here) or the card's format.
    """
    module: nn.Module
    classes: list[str]
    image_size: int
    prepare: Any
    to_unit: Any
    predict: Any
    source: str
    card: ModelCard | None = None

    @property
    def has_gradients(self) -> bool:
        return self.source != "onnx"

    @property
    def can_randomise(self) -> bool:
        """The randomisation sanity check re-initialises weights: torch modules only."""
        return self.source in ("checkpoint", "pytorch")

    def resolve_layer(self, name: str | None, module: nn.Module | None = None) -> tuple[nn.Module | None, str]:
        """(layer module inside `module` (default self.module), its name as stored in heatmaps.target_layer)."""
        from pipeline.explain.cams import find_layer, resolve_target_layer

        module = module or self.module
        if self.card is None:
            try:
                return resolve_target_layer(module, name)
            except ValueError as exc:
                raise UserError(str(exc)) from None
        _, layer_name = self.module.resolve_layer(name)
        if self.source != "pytorch":
            return None, layer_name
        return find_layer(module.inner, layer_name)[0], layer_name

    def compute_cams(self, inputs: torch.Tensor, target_sets, methods, layer_name: str | None = None,
                     out_size: tuple[int, int] | None = None, module: nn.Module | None = None):
        """CAM-family maps of `module` (default self.module; e.g. its randomised copy) on prepared inputs."""
        from pipeline.explain.cams import compute_cams

        module = module or self.module
        if self.source == "torchscript":
            return compute_card_cams(module, inputs, target_sets, methods, layer_name, out_size)
        layer, _ = self.resolve_layer(layer_name, module)
        return compute_cams(module, inputs, target_sets, methods, layer, out_size)[0]

    def explain(self, images: np.ndarray, target_sets, methods, *, layer_name: str | None = None,
                out_size: tuple[int, int] | None = None, occlusion=None, rise=None) -> dict[str, np.ndarray]:
        """Maps of every method (CAM family and gradient-free: occlusion, rise) for uint8 NHWC images:
        {method: float32 (n_sets, N, H, W) in [0, 1]}, at out_size (width, height; default the input's)."""
        import cv2

        from pipeline.explain.perturbation import (PERTURBATION_METHODS, OcclusionConfig, RiseConfig,
                                                   compute_perturbation_maps)

        cam_methods = [m for m in methods if m not in PERTURBATION_METHODS]
        free = [m for m in methods if m in PERTURBATION_METHODS]
        out: dict[str, np.ndarray] = {}
        if cam_methods:
            out.update(self.compute_cams(self.prepare(images), target_sets, cam_methods, layer_name, out_size))
        if free:
            maps = compute_perturbation_maps(self.predict, self.to_unit(images), target_sets, free,
                                             occlusion=occlusion or OcclusionConfig(), rise=rise or RiseConfig())
            for m, arr in maps.items():
                if out_size is not None and arr.shape[-1:-3:-1] != tuple(out_size):
                    flat = arr.reshape(-1, *arr.shape[-2:])
                    arr = np.stack([cv2.resize(a, tuple(out_size), interpolation=cv2.INTER_LINEAR) for a in flat])
                    arr = np.clip(arr, 0.0, 1.0).reshape(*maps[m].shape[:2], out_size[1], out_size[0])
                out[m] = arr.astype(np.float32)
        return {m: out[m] for m in methods}


def load_run_model(db: str | Path, run: dict, device: str = "cpu") -> RunModel:
    """The model of stored run `run` of the store `db`: a trained run's checkpoint (through
    train.models.load_run_model: the store's runs folder, its SHA-256, weights-only), or the model
    card an external run recorded (its model file checked against the SHA-256 stored with the run).
    UserError for runs without a model (imported predictions) or with a missing or changed file."""
    from pipeline.explain.perturbation import create_predict_fn
    from pipeline.train.augment import preprocess_batch

    run_id = run["run_id"]
    if run.get("kind") == "predictions":
        source = (run.get("config") or {}).get("source_file", "a predictions file")
        raise UserError(f"run {run_id} holds predictions imported from {source}: there is no model to explain; "
                        "explain a run made by `train` or `evaluate --model CARD`")
    card_config = (run.get("config") or {}).get("card")
    if card_config:
        from pipeline.external.card import file_sha256, load_card

        card = load_card(card_config["path"])
        if card_config.get("file_sha256") and file_sha256(card.file) != card_config["file_sha256"]:
            raise UserError(f"the model file {card.file} of run {run_id} changed since the run was evaluated "
                            "(its SHA-256 differs); evaluate it again with `evaluate --model` for a new run")
        model = load_external_model(card, probe=False)
        size = card.input.size
        unit = lambda images: load_unit_batch(images, size, "cpu")  # noqa: E731
        return RunModel(module=model, classes=list(card.classes), image_size=size, prepare=unit, to_unit=unit,
                        predict=create_predict_fn(model), source=card.format, card=card)
    from pipeline.train.models import load_run_model as load_trained_model

    model, meta = load_trained_model(db, run, device)
    size = int(meta["image_size"])
    mean = torch.tensor(meta["mean"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return RunModel(module=model, classes=list(meta["classes"]), image_size=size,
                    prepare=lambda images: preprocess_batch(images, meta, device),
                    to_unit=lambda images: load_unit_batch(images, size, device),
                    predict=create_predict_fn(model, lambda x: (x - mean) / std, device), source="checkpoint")
