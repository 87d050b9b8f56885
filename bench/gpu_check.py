"""The GPU fast path, measured side by side on one CUDA device (run by bench/gpu_check.sh):

- `label` throughput for resnet50 at 224x224 in bf16 against the bare bf16 forward (target >= 0.9);
- `teach` step time for resnet18 on 32x32 data against a hand-written bf16 channels_last loop (target <= 1.2);
- the same `teach` with the images left in host memory and gathered by 4 DataLoader workers into pinned
  memory (`--workers 4`, the path for data that does not fit on the GPU) against the images on the GPU.
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dpl.core import artifacts, models
from dpl.core.data import augment
from dpl.core.methods import label
from dpl.core.data import Dataset
from dpl.core.methods.common import ModelOptions, NoiseOptions
from dpl.core.methods.teach import teach
from dpl.core.engine.train import TrainConfig, runtime


def synthetic(n, size, classes=10) -> Dataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return Dataset("imagefolder:/synthetic", "train", images, torch.randint(0, classes, (n,), generator=g),
                   [str(c) for c in range(classes)])


def label_vs_forward(rt, tmp: Path, n=32768, batch=256) -> float:
    ds = synthetic(n, 224)
    spec = models.arch_spec("resnet50", num_classes=10, in_channels=3, image_size=224)
    model = models.build(spec)
    path = tmp / "r50.safetensors"
    artifacts.save_checkpoint(path, model, {"arch": spec, "num_classes": 10, "classes": ds.classes,
                                            "input": artifacts.input_meta(3, 224, [0.5] * 3, [0.25] * 3), "parents": []})
    net = rt.prepare(models.build(spec)).eval()
    bare, ours = [], []
    for r in range(3):
        with torch.inference_mode(), rt.autocast():
            x = augment.to_input(ds.images[:batch].to(rt.device), [0.5] * 3, [0.25] * 3, True)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(n // batch):
                net(x)
            torch.cuda.synchronize()
        bare.append(n / (time.perf_counter() - start))
        start = time.perf_counter()
        label.label([path], ds, label.LabelOptions(batch_size=batch), rt, tmp / f"labels{r}")
        torch.cuda.synchronize()
        ours.append(n / (time.perf_counter() - start))
    print(f"resnet50 224px bf16: label {statistics.median(ours):.0f} img/s, bare forward {statistics.median(bare):.0f} img/s")
    return statistics.median(ours) / statistics.median(bare)


def teach_step(ds, rt, batch, epochs) -> float:
    """Median seconds per step of dpl teach (resnet18, no augmentation), the first epoch dropped."""
    stamps = []
    cfg = TrainConfig(epochs=epochs, batch_size=batch, warmup_epochs=0)
    teach(ds, None, ModelOptions(arch="resnet18"), NoiseOptions(crop=False, flip=False), cfg, rt,
          on_progress=lambda e: (torch.cuda.synchronize(), stamps.append(time.perf_counter()))
          if e["event"] in ("start", "epoch") else None)
    return statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])) / (len(ds) // batch)


def teach_vs_hand(rt, n=50_000, batch=256, epochs=3) -> tuple[float, float]:
    ds = synthetic(n, 32)
    ours = teach_step(ds, rt, batch, epochs)
    loader = teach_step(ds, runtime("cuda", workers=4), batch, epochs)
    model = rt.prepare(models.build(models.arch_spec("resnet18", num_classes=10, in_channels=3, image_size=32)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    images, labels = ds.images.to(rt.device), ds.labels.to(rt.device)
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for idx in torch.randperm(n, device=rt.device)[: n - n % batch].view(-1, batch):
            x = augment.to_input(images[idx], [0.5] * 3, [0.25] * 3, True)
            with rt.autocast():
                loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / (n // batch))
    hand = statistics.median(times[1:])
    print(f"resnet18 32px bf16 step: teach {ours * 1e3:.2f} ms, hand-written {hand * 1e3:.2f} ms, "
          f"teach --workers 4 (images in host memory) {loader * 1e3:.2f} ms")
    return ours / hand, loader / ours


def main():
    rt = runtime("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        throughput = label_vs_forward(rt, Path(tmp))
    step, loader = teach_vs_hand(rt)
    print(f"SUMMARY gpu_check: label / bare forward = {throughput:.3f} (target >= 0.9); "
          f"teach / hand-written step time = {step:.3f} (target <= 1.2); "
          f"host-memory loader / on-GPU step time = {loader:.3f} (reported)")


if __name__ == "__main__":
    main()
