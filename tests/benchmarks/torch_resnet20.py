"""The PyTorch eager equivalent of the harness's inference timing, for side-by-side ratios (not part of the suite).

Run it with a Python that has torch (a throwaway venv: `python -m venv /tmp/torchvenv &&
/tmp/torchvenv/bin/pip install torch==2.13.0`); `tests/benchmarks/side_by_side.py` alternates it with
`python -m bench.run --mode inference`. The same network as the harness's default: ResNet-20,
pre-activation blocks, option B shortcuts (1x1 projection where the shape changes, taking the shared
pre-activation), convs without bias, BN epsilon 1e-5, final BN-ReLU, global average pooling, dense to 10
(272,282 parameters, checked below). The same measurement: uint8 images normalised inside the call,
`--warmup` calls not timed, then each call timed on its own (CPU eager calls are synchronous, and the
mean logit is read back like the harness's window), images/sec = timed images / timed seconds.

  /tmp/torchvenv/bin/python tests/benchmarks/torch_resnet20.py --batch_size 1 --steps 200 --warmup 20
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class PreactBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(c_in, eps=1e-5), nn.ReLU(inplace=False))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.Sequential(nn.BatchNorm2d(c_out, eps=1e-5), nn.ReLU())
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.project = c_in != c_out or stride != 1
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if self.project else None

    def forward(self, x):
        act = self.preact(x)
        short = self.shortcut(act) if self.project else x
        return self.conv2(self.bn1(self.conv1(act))) + short


class ResNet(nn.Module):
    def __init__(self, n=3, num_classes=10):
        super().__init__()
        layers, c = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(n):
                layers.append(PreactBlock(c, width, stride if b == 0 else 1))
                c = width
        layers += [nn.BatchNorm2d(c, eps=1e-5), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1) * 255)

    def forward(self, images_uint8):
        return self.net((images_uint8.float() - self.mean) / self.std)


def measure(batch_size, steps, warmup, channels_last, n=3, bf16=False):
    model = ResNet(n).eval()
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    times = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # bf16 kernels where the CPU has them
    with torch.inference_mode(), autocast:
        for step in range(steps):
            start = time.perf_counter()
            float(model(images).mean())  # read back, like the harness's window
            if step >= warmup:
                times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    return {
        "framework": f"pytorch {torch.__version__} eager",
        "batch_size": batch_size,
        "params": params,
        "threads": torch.get_num_threads(),
        "channels_last": channels_last,
        "bf16": bf16,
        "timed_steps": len(times),
        "images_per_sec": batch_size * len(times) / sum(times),
        "step_time_p50_ms": 1e3 * statistics.median(times),
        "step_time_p99_ms": 1e3 * sorted(times)[min(len(times) - 1, int(0.99 * len(times)))],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (as the harness's --precision bf16)")
    args = parser.parse_args()
    result = measure(args.batch_size, args.steps, args.warmup, args.channels_last, bf16=args.bf16)
    assert result["params"] == 272_282, result["params"]  # the harness's ResNet-20 preact/B
    print(json.dumps(result))


if __name__ == "__main__":
    main()
