"""The engine on the CPU: what each candidate change does to a training step and to a teacher's forward, side by side
in one run (alternating rounds, median of each), on the nets of the distillation sweep at 32 px, batch 128:

- student step (forward, backward, SGD with foreach, as `fit` makes it) of resnet20: eager (dpl's default on the
  CPU), channels_last, torch.compile;
- teacher forward under inference_mode of resnet56: float32 (default), channels_last, bfloat16 autocast (oneDNN; AMX
  or AVX512-BF16 where the CPU has them), with how far bf16 moves the teacher's outputs (max |Δp| at tau 1 and top-1
  agreement over the batches).

    .venv/bin/python bench/cpu_engine.py [--rounds 3] [--steps 20]

Ends with a SUMMARY line of each variant's time / the default's (below 1 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dpl.core import models


def build(arch: str, channels_last: bool = False) -> torch.nn.Module:
    model = models.build(models.arch_spec(arch, num_classes=10, in_channels=1, image_size=32))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def timed(fn, batches) -> float:
    fn(batches[0])
    fn(batches[1])                  # warm-up (and compilation)
    start = time.perf_counter()
    for x in batches[2:]:
        fn(x)
    return (time.perf_counter() - start) / (len(batches) - 2)


def step_fn(model):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
    y = torch.zeros(128, dtype=torch.long)

    def step(x):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def forward_fn(model, bf16: bool = False):
    def forward(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x)
    return forward


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    batches = [torch.randn(128, 1, 32, 32) for _ in range(args.steps + 2)]
    last = [x.contiguous(memory_format=torch.channels_last) for x in batches]
    student, student_cl = build("resnet20"), build("resnet20", channels_last=True)
    compiled = torch.compile(build("resnet20"))
    teacher = build("resnet56").eval()
    teacher_cl = build("resnet56", channels_last=True).eval()
    teacher_cl.load_state_dict(teacher.state_dict())
    variants = {
        "step eager": lambda: timed(step_fn(student), batches),
        "step channels_last": lambda: timed(step_fn(student_cl), last),
        "step compile": lambda: timed(step_fn(compiled), batches),
        "forward fp32": lambda: timed(forward_fn(teacher), batches),
        "forward channels_last": lambda: timed(forward_fn(teacher_cl), last),
        "forward bf16": lambda: timed(forward_fn(teacher, bf16=True), batches),
        "forward bf16 channels_last": lambda: timed(forward_fn(teacher_cl, bf16=True), last),
    }
    times = {k: [] for k in variants}
    for r in range(args.rounds):
        for name, fn in variants.items():
            times[name].append(fn())
        print(f"round {r + 1}: " + ", ".join(f"{k} {1000 * statistics.median(v):.1f} ms" for k, v in times.items()),
              flush=True)
    with torch.inference_mode():
        exact = torch.cat([teacher(x).softmax(1) for x in batches])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = torch.cat([teacher(x).float().softmax(1) for x in batches])
    # a random teacher's outputs are flat; a trained one's (dpl label of the sweep's teacher) are measured by
    # kd_sweep.py's label runs
    drift = float((exact - half).abs().max())
    agree = float((exact.argmax(1) == half.argmax(1)).float().mean())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"bf16 teacher outputs (untrained resnet56): max |Δp| {drift:.2e}, top-1 agreement {agree:.4f}")
    print("SUMMARY cpu_engine: " + "; ".join(
        f"{k} {med[k] / med['step eager' if k.startswith('step') else 'forward fp32']:.3f}" for k in med
        if k not in ("step eager", "forward fp32")) + f" (vs eager float32; {torch.get_num_threads()} threads, "
        f"bf16 by oneDNN: {torch.backends.mkldnn.is_available()})")


if __name__ == "__main__":
    main()
