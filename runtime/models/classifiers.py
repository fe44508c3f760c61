"""The `fixed` models: an MLP and a small CNN classifier, returning softmax probabilities and argmax labels."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import torch
from torch import Tensor, nn

from odhsim.scenario.live import CnnSpec, MlpSpec
from runtime.models.weights import load_state_dict, seeded_init


class MlpClassifier(nn.Module):
    """[batch, input_dim] -> logits [batch, classes] through ReLU hidden layers."""

    def __init__(self, spec: MlpSpec) -> None:
        super().__init__()
        self.spec = spec
        widths = [spec.input_dim, *spec.hidden]
        layers: list[nn.Module] = []
        for a, b in pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], spec.classes))
        self.net = nn.Sequential(*layers)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One row's shape (the batch dimension excluded)."""
        return (self.spec.input_dim,)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CnnClassifier(nn.Module):
    """[batch, C, H, W] -> logits: 3x3 conv + ReLU + 2x2 max-pool per stage, global average pool, linear."""

    def __init__(self, spec: CnnSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: list[nn.Module] = []
        c, h, w = spec.channels, spec.height, spec.width
        for out in spec.conv_channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            if h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c = out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, spec.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.spec.channels, self.spec.height, self.spec.width)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


Classifier = MlpClassifier | CnnClassifier


def build_classifier(
    spec: MlpSpec | CnnSpec, *, base_dir: str | Path = ".", device: str | torch.device = "cpu"
) -> Classifier:
    """The classifier of `spec` in eval mode: weights from `spec.weights` (a state_dict) or `spec.seed`."""
    model: Classifier = MlpClassifier(spec) if isinstance(spec, MlpSpec) else CnnClassifier(spec)
    if spec.weights is not None:
        load_state_dict(model, spec.weights, base_dir)
    else:
        seeded_init(model, spec.seed)
    return model.to(device).eval()


@torch.inference_mode()
def predict(model: Classifier, x: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax probabilities [batch, classes] (float32, CPU) and argmax labels [batch] (int64, CPU) for `x`."""
    device = next(model.parameters()).device
    probs = torch.softmax(model(x.to(device=device, dtype=torch.float32)).float(), dim=-1).cpu()
    return probs, probs.argmax(dim=-1)
