"""Detectors, side by side in one run on the same scenes, model and batch size:

- `label` with a detector (box shards written) vs the bare detector forward under inference_mode, images/s
  (target >= 0.9);
- an epoch of online Chen et al. distillation (teacher forward on the student's RoIs, soft CE on RoIs and RPN,
  bounded regression, hint) vs an epoch of `teach` of the same student (target <= 1.6).

Each pair is measured ROUNDS times interleaved (the machine is shared), the first epoch of each run left out as
warm-up; medians are printed.

    OMP_NUM_THREADS=1 .venv/bin/python bench/detect_speed.py [--data fashion-mnist --scenes 320 --student frcnn-cnn-s
                                                              --teacher frcnn-cnn-m --rounds 3]

With --checkpoints A B ...: instead, the bare forward (eval mode, inference_mode, NMS included) of each trained
detector on its test scenes, interleaved ROUNDS times, e.g. the three families (frcnn/retinanet/fcos-cnn-s) side by side.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from timing import epoch_times  # noqa: E402

from dpl.core import artifacts
from dpl.core.data import augment, scenes
from dpl.core.methods import detect
from dpl.core.methods.common import ModelOptions
from dpl.core.engine.train import TrainConfig, runtime


def bare_forward(model, meta, images, rt, batch_size) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            model(augment.to_input(images[i: i + batch_size].to(rt.device), meta["input"]["mean"],
                                   meta["input"]["std"], rt.cuda))
    if rt.cuda:
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def labeling(model, meta, images, rt, batch_size, folder: Path) -> float:
    folder.mkdir(exist_ok=True)
    for f in folder.glob("shard-*"):
        f.unlink()
    start = time.perf_counter()
    folder_meta = {"teachers": [], "data": {"spec": "bench"}, "classes": meta["classes"],
                   "num_classes": meta["num_classes"], "image_size": list(images.shape[-2:]), "total": len(images),
                   "world": 1}
    detect.label_boxes(model, meta, images, torch.arange(len(images)), folder, folder_meta, rt, batch_size=batch_size)
    if rt.cuda:
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def families(paths: list[Path], rounds: int, batch_size: int, rt) -> None:
    loaded = [(p, *detect.load_detector(p)) for p in paths]
    specs = {ckpt.meta["data"]["spec"].rsplit(":", 1)[0] for _, _, ckpt in loaded}
    if len(specs) != 1:
        raise SystemExit(f"the checkpoints come from different data: {specs}")
    ckpt = loaded[0][2]
    data = scenes.load_boxes(f"{specs.pop()}:test", "test", scenes.scene_spec_of(ckpt.meta["data"]))
    speeds = {p: [] for p in paths}
    for _ in range(rounds):
        for p, model, ckpt in loaded:
            speeds[p].append(bare_forward(rt.prepare(model), ckpt.meta, data.images, rt, batch_size))
    print(f"{data.spec}: {len(data)} images at {'x'.join(map(str, data.shape))}, batch {batch_size}, "
          f"torch threads {torch.get_num_threads()}, {rounds} rounds (medians)")
    for p, _, ckpt in loaded:
        print(f"{ckpt.arch['name']:24s} {statistics.median(speeds[p]):8.1f} images/s   ({p})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--scenes", type=int, default=320)
    p.add_argument("--student", default="frcnn-cnn-s")
    p.add_argument("--teacher", default="frcnn-cnn-m")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoints", nargs="+", type=Path)
    a = p.parse_args()
    rt = runtime(a.device)
    if a.checkpoints:
        return families(a.checkpoints, a.rounds, a.batch_size, rt)
    data = scenes.load_boxes(f"scenes:{a.data}", "train", scenes.SceneSpec(source=a.data, scenes=a.scenes))
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, lr=0.02)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A teacher checkpoint (one epoch: its weights do not change what an epoch costs).
        trained = detect.teach(data, None, ModelOptions(arch=a.teacher), detect.BoxNoise(flip=False),
                               TrainConfig(epochs=1, batch_size=a.batch_size, lr=0.02), rt)
        teacher = tmp / "teacher.safetensors"
        artifacts.save_checkpoint(teacher, trained.model, trained.meta)
        model, ckpt = detect.load_detector(teacher)
        model = rt.prepare(model)
        bare, labeled, teach_s, chen_s = [], [], [], []
        for _ in range(a.rounds):
            bare.append(bare_forward(model, ckpt.meta, data.images, rt, a.batch_size))
            labeled.append(labeling(model, ckpt.meta, data.images, rt, a.batch_size, tmp / "boxes"))
            teach_s += epoch_times(lambda on: detect.teach(data, None, ModelOptions(arch=a.student), detect.BoxNoise(),
                                                           cfg, rt, on_progress=on), rt)[1:]
            chen_s += epoch_times(lambda on: detect.distill_online(
                data, None, teacher, ModelOptions(arch=a.student), detect.BoxNoise(),
                detect.ChenOptions(hint_weight=1.0), cfg, rt, on_progress=on), rt)[1:]
    med = statistics.median
    print(f"{a.data} scenes: {len(data)} images at {'x'.join(map(str, data.shape))}, batch {a.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {a.rounds} rounds (medians)")
    print(f"label ({a.teacher}, box shards)  {med(labeled):8.1f} images/s   bare forward {med(bare):8.1f} images/s   "
          f"ratio {med(labeled) / med(bare):.3f} (target >= 0.9)")
    print(f"epoch: teach {a.student} {med(teach_s):7.2f} s   Chen KD from {a.teacher} (soft+rpn+bound+hint) "
          f"{med(chen_s):7.2f} s   ratio {med(chen_s) / med(teach_s):.3f} (target <= 1.6)")


if __name__ == "__main__":
    main()
