"""Model cards: parsing, and every validation error a user can meet, on tiny real models of each format."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pipeline.constants import EMOTIONS, EMOTIONS_6
from pipeline.errors import UserError
from pipeline.external.card import InputSpec, load_card, render_card
from pipeline.external.models import compute_card_cams, load_external_model
from tests.pipeline.external.factories import tiny

FACTORY = "tests.pipeline.external.factories:tiny"


def write_card(folder, *, format="pytorch", file="tiny.pt", classes=EMOTIONS_6, size=16, channels="rgb",
               extra="", factory=FACTORY, kwargs="{ num_classes = 6 }", output="logits", name="card"):
    text = render_card(name="tiny", format=format, file=file, classes=classes,
                       input=InputSpec(size=size, channels=channels, mean=(0.5,) * (1 if channels == "grey" else 3),
                                       std=(0.25,) * (1 if channels == "grey" else 3)), output=output)
    if format == "pytorch":
        text = text.replace("[input]", f'factory = "{factory}"\nfactory_kwargs = {kwargs}\n{extra}\n[input]')
    elif extra:
        text = text.replace("[input]", f"{extra}\n[input]")
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model as a state dict, TorchScript and ONNX (fixed 16x16 input), in one folder."""
    folder = tmp_path_factory.mktemp("cards")
    model = tiny().eval()
    torch.save(model.state_dict(), folder / "tiny.pt")
    x = torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, x).save(str(folder / "tiny.ts"))
        torch.onnx.export(model, (x,), str(folder / "tiny.onnx"), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return folder, model


@pytest.mark.parametrize("fmt, file", [("pytorch", "tiny.pt"), ("torchscript", "tiny.ts"), ("onnx", "tiny.onnx")])
def test_every_format_predicts_like_the_module(files, fmt, file):
    folder, model = files
    card = load_card(write_card(folder, format=fmt, file=file, name=fmt))
    loaded = load_external_model(card)
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = torch.softmax(model((x - 0.5) / 0.25), 1).numpy()
    np.testing.assert_allclose(loaded.predict_probabilities(images, batch_size=2), expected, atol=1e-5)
    assert card.classes == EMOTIONS_6 and card.input.size == 16


def test_torchscript_gradcam_equals_the_hooked_module(files):
    from pipeline.explain.cams import compute_cams

    folder, model = files
    scripted = load_external_model(load_card(write_card(folder, format="torchscript", file="tiny.ts",
                                                        extra='target_layer = "features"', name="ts")))
    x01 = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    targets = [[0, 1, 2], [3, 4, 5]]
    ref, _ = compute_cams(model, (x01 - 0.5) / 0.25, targets, ["gradcam", "gradcam++"], model.features)
    got = compute_card_cams(scripted, x01, targets, ["gradcam", "gradcam++"])
    for m in ref:
        np.testing.assert_allclose(got[m], ref[m], atol=1e-5)


def test_rafdb_codes_and_synonyms(tmp_path, files):
    folder, _ = files
    path = write_card(folder, name="codes")
    path.write_text(path.read_text().replace(f"classes = {list(EMOTIONS_6)!r}".replace("'", '"'),
                                             "rafdb_codes = [6, 3, 2, 4, 5, 1]"))
    assert load_card(path).classes == ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
    path = write_card(folder, name="syn", classes=["angry", "disgust", "fear", "happy", "sad", "surprised"])
    assert load_card(path).classes == ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")


@pytest.mark.parametrize("case, make, message", [
    ("output size", lambda f: write_card(f, classes=EMOTIONS), "outputs 6 scores per image but the card lists 7"),
    ("input shape", lambda f: write_card(f, channels="grey"), "fails on a batch of shape (2, 1, 16, 16)"),
    ("onnx input shape", lambda f: write_card(f, format="onnx", file="tiny.onnx", size=32),
     "takes input of shape ['batch', 3, 16, 16]"),
    ("nan", lambda f: write_card(f, factory="tests.pipeline.external.factories:nan_model"), "NaN or infinite"),
    ("unknown layer", lambda f: write_card(f, extra='target_layer = "block9"'),
     "has no layer 'block9'; set target_layer (or --target-layer) to one of layers with a 4-D output, "
     "deepest last: stem.0, stem.1, stem, features"),
    ("unknown torchscript layer", lambda f: write_card(f, format="torchscript", file="tiny.ts",
                                                       extra='target_layer = "stem.0"'),
     "the children its forward calls: stem, features, pool, fc"),
    ("factory import", lambda f: write_card(f, factory="no_such_package.models:net"),
     "cannot import 'no_such_package.models'"),
    ("factory attribute", lambda f: write_card(f, factory="tests.pipeline.external.factories:nothing"),
     "has no 'nothing'"),
    ("state dict shape", lambda f: write_card(f, kwargs="{ num_classes = 7 }", classes=EMOTIONS),
     "does not fit"),
    ("probabilities", lambda f: write_card(f, output="probabilities"), 'set output = "logits"'),
])
def test_validation_errors(files, case, make, message):
    folder, _ = files
    with pytest.raises(UserError) as err:
        load_external_model(load_card(make(folder)))
    assert message in str(err.value), str(err.value)
    assert "card" in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('format = "pytorch"', 'format = "keras"'), "format = 'keras' is not one of"),
    (lambda t: t.replace('file = "tiny.pt"', 'file = "missing.pt"'), "missing.pt (file = 'missing.pt') does not exist"),
    (lambda t: t.replace("size = 16", "size = 3"), "size = 3 must be one integer >= 8"),
    (lambda t: t.replace("mean = [0.5, 0.5, 0.5]", "mean = [0.5, 0.5]"), "mean = [0.5, 0.5] must be"),
    (lambda t: t.replace("name =", "nmae ="), "unknown key(s) nmae"),
    (lambda t: t.replace("classes = [", "rafdb_codes = [1]\nclasses = ["), "give exactly one of classes"),
    (lambda t: t.replace('"Fear"', '"Surprise"'), "classes name Surprise more than once"),
    (lambda t: t.replace("[input]", "[input"), "is not valid TOML"),
])
def test_card_field_errors(files, edit, message):
    folder, _ = files
    path = write_card(folder, name="edited")
    path.write_text(edit(path.read_text()))
    with pytest.raises(UserError) as err:
        load_card(path)
    assert message in str(err.value), str(err.value)
