"""PyTorch peer of `kestrel bench --finetune`: the same fine-tuning step, timed the same way.

features.14 .. features.18 of torchvision's MobileNetV2 (the real weights), global average
pooling and a Linear(1280, 5) head, trained with Adam on a batch of cached features.13 outputs
(96x14x14). BatchNorm layers use their running statistics, as Kestrel's phase 2 does, while their
scale and shift train. The input pattern matches the Rust bench. Prints one JSON object.

Needs only `torch` (no torchvision): the blocks are written out below from the state dict.
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn


def conv_bn(state, prefix, cin, cout, k, stride, groups, relu):
    conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
    bn = nn.BatchNorm2d(cout)
    conv.weight.data.copy_(state[f"{prefix}.0.weight"])
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).data.copy_(state[f"{prefix}.1.{name}"])
    layers = [conv, bn] + ([nn.ReLU6()] if relu else [])
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, state, index, cin, cout, stride, expand):
        super().__init__()
        p = f"features.{index}.conv"
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.expand = conv_bn(state, f"{p}.0", cin, hidden, 1, 1, 1, True)
        self.depthwise = conv_bn(state, f"{p}.1", hidden, hidden, 3, stride, hidden, True)
        self.project = nn.Conv2d(hidden, cout, 1, bias=False)
        self.project.weight.data.copy_(state[f"{p}.2.weight"])
        self.bn = nn.BatchNorm2d(cout)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(self.bn, name).data.copy_(state[f"{p}.3.{name}"])

    def forward(self, x):
        y = self.bn(self.project(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


def top_model(weights):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    # (index, in, out, stride) of features.14 .. features.17, expansion 6.
    blocks = [(14, 96, 160, 2), (15, 160, 160, 1), (16, 160, 160, 1), (17, 160, 320, 1)]
    layers = [InvertedResidual(state, i, cin, cout, s, 6) for i, cin, cout, s in blocks]
    layers.append(conv_bn(state, "features.18", 320, 1280, 1, 1, 1, True))
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 5)
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = top_model(a.weights)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    n = a.batch * 96 * 14 * 14
    x = ((torch.arange(n) % 97).float() / 97.0 - 0.5).reshape(a.batch, 96, 14, 14)
    y = torch.arange(a.batch) % 5
    loss_fn = nn.CrossEntropyLoss()
    times = []
    cpu = []
    for i in range(a.iters + 1):
        t = time.perf_counter()
        c = time.process_time()
        optim.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optim.step()
        if i > 0:
            times.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
    print(
        json.dumps(
            {
                "engine": f"pytorch-{torch.__version__.split('+')[0]}",
                "median_ms": statistics.median(times),
                "median_cpu_ms": statistics.median(cpu),
                "threads": a.threads,
                "batch": a.batch,
            }
        )
    )


if __name__ == "__main__":
    main()
