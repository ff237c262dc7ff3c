"""`export-model`: write a trained run's model as TorchScript or ONNX, with its model card.

The model is rebuilt from the run's best checkpoint and written beside a card
(`<name>.toml`) that `evaluate --model` reads back: the run's classes, input
size, mean and std (value range [0, 1], RGB, NCHW), and for TorchScript the
Grad-CAM target layer. A ScriptModule can be tapped only at children its
top-level forward calls, so the card names the top-level child that holds the
run's default target layer (ResNets: `layer4`, whose output is `layer4[-1]`'s;
the light CNN: `block3`): the same activations, hence the same maps.

TorchScript is traced (`torch.jit.trace`); ONNX uses torch's TorchScript-based
exporter (`dynamo=False`, which needs the `onnx` package) with a dynamic batch
axis, and is checked by running it in onnxruntime against the checkpoint.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

EXPORT_FORMATS: dict[str, str] = {"torchscript": "pt", "onnx": "onnx"}   # format -> file extension
ONNX_OPSET = 17


def _card_target_layer(model) -> str | None:
    from pipeline.train.models import default_target_layer

    try:
        _, name = default_target_layer(model)
    except ValueError:
        return None
    return name.split(".")[0]


def export_run_model(db: str | Path, run: str, fmt: str, out_dir: str | Path) -> dict[str, Any]:
    """Export the model of a trained run; returns {card, file, format, run_id, max_abs_diff}."""
    import torch

    from pipeline.external.card import InputSpec, render_card
    from pipeline.store import db as store
    from pipeline.train.models import load_run_model

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    db = Path(db)
    if not db.is_file():
        raise UserError(f"results store {db} does not exist; pass --db PATH")
    with store.open_store(db, read_only=True) as con:
        row = store.get_run(con, run)
    ckpt = row.get("checkpoint_path")
    if row["kind"] != "train" or not ckpt:
        raise UserError(f"run {row['run_id']} is a {row['kind']!r} run without a checkpoint of its own; "
                        "export a train run (see `python -m pipeline runs`)")
    if not Path(ckpt).is_file():
        raise UserError(f"checkpoint {ckpt} of run {row['run_id']} is missing; restore the run folder")
    model, meta = load_run_model(db, row, "cpu")   # from the store's runs/ folder, SHA-256 checked
    model = model.to(memory_format=torch.contiguous_format).eval()
    size = int(meta["image_size"])
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    name = f"{row['run_id']}-{fmt}"
    model_file = out / f"{name}.{EXPORT_FORMATS[fmt]}"
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    example = (example - mean) / std
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit / legacy ONNX exporter deprecation notices
        if fmt == "torchscript":
            with torch.no_grad():
                torch.jit.trace(model, example).save(str(model_file))
        else:
            try:
                torch.onnx.export(model, (example,), str(model_file), dynamo=False, opset_version=ONNX_OPSET,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            except Exception as exc:
                raise UserError(f"ONNX export of run {row['run_id']} failed ({type(exc).__name__}: {exc}); "
                                "it needs the `onnx` package (pip install -r requirements.txt)") from None
    card_text = render_card(
        name=name, format=fmt, file=model_file.name, classes=meta["classes"],
        input=InputSpec(size=size, mean=tuple(meta["mean"]), std=tuple(meta["std"])), output="logits",
        target_layer=_card_target_layer(model) if fmt == "torchscript" else None,
        notes=f"exported from run {row['run_id']} ({row['recipe']}, {meta['arch']}) by fer-trust export-model")
    card_path = out / f"{name}.toml"
    card_path.write_text(card_text, encoding="utf-8")
    return {"run_id": row["run_id"], "format": fmt, "file": str(model_file), "card": str(card_path),
            "max_abs_diff": check_export(card_path, model, example)}


def check_export(card_path: Path, model, example) -> float:
    """Largest |Δ logit| of the exported model (loaded through its card) against the original on `example`
    (normalised input); a UserError when they disagree beyond float noise."""
    import numpy as np
    import torch

    from pipeline.external.card import load_card
    from pipeline.external.models import load_external_model

    loaded = load_external_model(load_card(card_path))
    spec = loaded.card.input
    x01 = example * torch.tensor(spec.std).view(1, -1, 1, 1) + torch.tensor(spec.mean).view(1, -1, 1, 1)
    with torch.no_grad():
        diff = float((loaded(x01) - model(example)).abs().max())
    if not np.isfinite(diff) or diff > 1e-3:
        raise UserError(f"the exported model {card_path} does not reproduce the run's logits (max |Δ| {diff:.2g}); "
                        "please report this with the run's architecture")
    return diff
