"""Model cards: the TOML file beside an external model that says how to feed it and read it.

A card declares the model's format (`torchscript`, `pytorch` = an importable
`package.module:factory` plus a state-dict file, or `onnx`), its class names in
output order (emotion names or their usual synonyms, or RAF-DB label codes),
whether it outputs logits or probabilities, its input (square size, channel
order rgb/bgr/grey, layout nchw/nhwc, the value range the 0..255 pixels are
mapped into, per-channel mean and std), and for Grad-CAM the target layer.

`load_card(path)` parses and checks the card's own fields and raises one
UserError per problem, naming the card and the key; it never loads the model
(`pipeline.external.models.load_external_model` does, and probes it). Paths in
a card are relative to the card's folder. Example::

    format = "onnx"
    file = "fer.onnx"
    classes = ["Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Neutral"]
    output = "logits"

    [input]
    size = 64
    channels = "grey"
    range = [0.0, 1.0]
"""
from __future__ import annotations

import hashlib
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.constants import EMOTION_SYNONYMS, EMOTIONS
from pipeline.errors import UserError

FORMATS: tuple[str, ...] = ("torchscript", "pytorch", "onnx")
TORCH_FORMATS: frozenset[str] = frozenset({"torchscript", "pytorch"})
OUTPUTS: tuple[str, ...] = ("logits", "probabilities")
CHANNELS: tuple[str, ...] = ("rgb", "bgr", "grey")
LAYOUTS: tuple[str, ...] = ("nchw", "nhwc")
TOP_KEYS: frozenset[str] = frozenset({"name", "format", "file", "factory", "factory_kwargs", "classes",
                                      "rafdb_codes", "output", "target_layer", "input", "notes"})
INPUT_KEYS: frozenset[str] = frozenset({"size", "channels", "layout", "range", "mean", "std"})


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: size x size images, channels, layout, and the pixel transform
    x = (lo + (hi - lo) * pixel / 255 - mean) / std per channel."""
    size: int
    channels: str = "rgb"
    layout: str = "nchw"
    range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)

    @property
    def n_channels(self) -> int:
        return 1 if self.channels == "grey" else 3


@dataclass(frozen=True)
class ModelCard:
    path: str                              # the card file (absolute)
    name: str
    format: str
    file: str                              # the model file (absolute)
    classes: tuple[str, ...]               # output order, emotion names where known
    input: InputSpec
    output: str = "logits"
    factory: str | None = None             # pytorch: "package.module:callable"
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    target_layer: str | None = None
    notes: str = ""

    def as_config(self) -> dict[str, Any]:
        """The card as stored in runs.config["card"], with the model file's SHA-256."""
        out = asdict(self)
        out["file_sha256"] = file_sha256(self.file)
        return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def canonical_class(name: str) -> str:
    """An emotion name for a class label ('happy' -> 'Happiness'); other names are kept as given."""
    return EMOTION_SYNONYMS.get(str(name).strip().lower(), str(name).strip())


def _fail(card: Path, message: str) -> UserError:
    return UserError(f"model card {card}: {message}")


def _choice(card: Path, table: dict, key: str, choices: tuple[str, ...], default: str, where: str = "") -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or value.lower() not in choices:
        raise _fail(card, f"{where}{key} = {value!r} is not one of {', '.join(choices)}")
    return value.lower()


def _floats(card: Path, value: Any, key: str, length: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)):
        value = [value] * length
    if not isinstance(value, list) or len(value) != length or not all(isinstance(v, (int, float)) for v in value):
        raise _fail(card, f"[input] {key} = {value!r} must be a number or a list of {length} numbers "
                          f"(one per input channel)")
    return tuple(float(v) for v in value)


def _parse_classes(card: Path, data: dict) -> tuple[str, ...]:
    if ("classes" in data) == ("rafdb_codes" in data):
        raise _fail(card, "give exactly one of classes = [names in output order] or rafdb_codes = [1..7 in "
                          f"output order] (emotions: {', '.join(EMOTIONS)})")
    if "rafdb_codes" in data:
        codes = data["rafdb_codes"]
        if not isinstance(codes, list) or not codes or not all(isinstance(c, int) and 1 <= c <= 7 for c in codes):
            raise _fail(card, f"rafdb_codes = {codes!r} must be a list of RAF-DB label codes 1..7 "
                              f"({', '.join(f'{i + 1} {e}' for i, e in enumerate(EMOTIONS))})")
        classes = [EMOTIONS[c - 1] for c in codes]  # RAF-DB code = emotion index + 1
    else:
        names = data["classes"]
        if not isinstance(names, list) or not names or not all(isinstance(c, str) and c.strip() for c in names):
            raise _fail(card, f"classes = {names!r} must be a non-empty list of class names in output order")
        classes = [canonical_class(c) for c in names]
    dupes = sorted({c for c in classes if classes.count(c) > 1})
    if dupes:
        raise _fail(card, f"classes name {', '.join(dupes)} more than once (after mapping synonyms such as "
                          "'happy' -> Happiness); each output needs its own class")
    return tuple(classes)


def _parse_input(card: Path, data: dict) -> InputSpec:
    table = data.get("input")
    if not isinstance(table, dict):
        raise _fail(card, "an [input] table with at least size = N (the square input side) is required")
    unknown = sorted(set(table) - INPUT_KEYS)
    if unknown:
        raise _fail(card, f"unknown [input] key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(INPUT_KEYS))}")
    size = table.get("size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise _fail(card, f"[input] size = {size!r} must be one integer >= 8 (square inputs only), "
                          "e.g. size = 224")
    channels = _choice(card, table, "channels", CHANNELS, "rgb", "[input] ")
    layout = _choice(card, table, "layout", LAYOUTS, "nchw", "[input] ")
    n = 1 if channels == "grey" else 3
    lo, hi = _floats(card, table.get("range", [0.0, 1.0]), "range", 2)
    if not hi > lo:
        raise _fail(card, f"[input] range = [{lo}, {hi}] must be increasing, e.g. [0, 1], [-1, 1] or [0, 255]")
    mean = _floats(card, table.get("mean", 0.0), "mean", n)
    std = _floats(card, table.get("std", 1.0), "std", n)
    if any(s <= 0 for s in std):
        raise _fail(card, f"[input] std = {list(std)} must be positive")
    return InputSpec(size=size, channels=channels, layout=layout, range=(lo, hi), mean=mean, std=std)


def load_card(path: str | Path) -> ModelCard:
    """Parse and check a model card (see the module docstring); UserError naming the card and key."""
    card = Path(path).expanduser().resolve()
    if not card.is_file():
        raise UserError(f"model card {card} does not exist; pass the path of a .toml card "
                        "(see README, 'Bring your own model')")
    try:
        data = tomllib.loads(card.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(card, f"is not valid TOML ({exc})") from None
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise _fail(card, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    fmt = _choice(card, data, "format", FORMATS, "")
    file = data.get("file")
    if not isinstance(file, str) or not file:
        raise _fail(card, "file = \"...\" (the model file, relative to the card) is required")
    model_file = (card.parent / file).resolve()
    if not model_file.is_file():
        raise _fail(card, f"model file {model_file} (file = {file!r}) does not exist")
    factory, kwargs = data.get("factory"), data.get("factory_kwargs", {})
    if fmt == "pytorch":
        if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
            raise _fail(card, f"format = \"pytorch\" needs factory = \"package.module:callable\" (e.g. "
                              f"\"torchvision.models:resnet18\"), got {factory!r}")
        if not isinstance(kwargs, dict):
            raise _fail(card, f"factory_kwargs = {kwargs!r} must be a table, e.g. {{ num_classes = 7 }}")
    elif factory is not None or "factory_kwargs" in data:
        raise _fail(card, f"factory and factory_kwargs apply to format = \"pytorch\" only, not {fmt!r}")
    target_layer = data.get("target_layer")
    if target_layer is not None and (not isinstance(target_layer, str) or not target_layer.strip()):
        raise _fail(card, f"target_layer = {target_layer!r} must be a dotted module name such as \"layer4\"")
    if target_layer is not None and fmt not in TORCH_FORMATS:
        raise _fail(card, f"target_layer applies to torch models only; an {fmt} model is explained with the "
                          "gradient-free methods (occlusion, rise): remove target_layer")
    name = data.get("name", card.stem)
    if not isinstance(name, str) or not name.strip():
        raise _fail(card, f"name = {name!r} must be a non-empty string")
    return ModelCard(
        path=str(card), name=name.strip(), format=fmt, file=str(model_file), classes=_parse_classes(card, data),
        input=_parse_input(card, data), output=_choice(card, data, "output", OUTPUTS, "logits"),
        factory=factory, factory_kwargs=dict(kwargs) if fmt == "pytorch" else {},
        target_layer=target_layer.strip() if target_layer else None, notes=str(data.get("notes", "")),
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to a model card")


def render_card(*, name: str, format: str, file: str, classes, input: InputSpec, output: str = "logits",
                target_layer: str | None = None, notes: str = "") -> str:
    """The TOML text of a card (what export-model writes); load_card reads it back."""
    lines = ["# fer-trust model card (see README, 'Bring your own model')",
             f"name = {_toml_value(name)}", f"format = {_toml_value(format)}", f"file = {_toml_value(file)}",
             f"classes = {_toml_value(list(classes))}", f"output = {_toml_value(output)}"]
    if target_layer:
        lines.append(f"target_layer = {_toml_value(target_layer)}")
    if notes:
        lines.append(f"notes = {_toml_value(notes)}")
    lines += ["", "[input]", f"size = {input.size}", f"channels = {_toml_value(input.channels)}",
              f"layout = {_toml_value(input.layout)}", f"range = {_toml_value(list(input.range))}",
              f"mean = {_toml_value(list(input.mean))}", f"std = {_toml_value(list(input.std))}"]
    return "\n".join(lines) + "\n"
