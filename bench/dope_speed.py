"""DOPE's pipeline vs its student, side by side in one run on the same test figures: keypoints of every image from
the three part experts (the body expert on the image, then the hand expert on a crop around each predicted wrist
and the face expert on a crop around the head, mapped back: `keypoints.label_experts`) vs the whole-body student's
one forward pass (`label_experts` with the student alone), images/s under inference_mode, interleaved ROUNDS
times; medians printed. Target (issue 30): the student >= 2x the experts' images/s.

    .venv/bin/python bench/dope_speed.py BODY HANDS FACE STUDENT [--images 500 --rounds 5 --batch-size 256]

The checkpoints are those of recipes/dope (out-dope-seed0/{body,hands,face,student}.safetensors).
"""

import argparse
import statistics
import time

import torch

from dpl.core.data import poses
from dpl.core.engine.train import runtime
from dpl.core.methods import keypoints


def images_per_s(models, images, names, rt, batch_size) -> float:
    start = time.perf_counter()
    keypoints.label_experts(models, images, names, rt, batch_size)
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experts", nargs=3, help="body, hands, face expert checkpoints")
    p.add_argument("student")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    rt = runtime(args.device)
    experts = [(rt.prepare(m), c.meta) for m, c in map(keypoints.load_model, args.experts)]
    model, ckpt = keypoints.load_model(args.student)
    student = [(rt.prepare(model), ckpt.meta)]
    spec = poses.pose_spec_of(ckpt.meta["data"])
    data = poses.build_poses(spec, "test").subset(torch.arange(min(args.images, spec.test_count)))
    names = list(data.names)
    images_per_s(experts, data.images[:32], names, rt, args.batch_size)        # warm-up
    images_per_s(student, data.images[:32], names, rt, args.batch_size)
    e, s = [], []
    for _ in range(args.rounds):
        e.append(images_per_s(experts, data.images, names, rt, args.batch_size))
        s.append(images_per_s(student, data.images, names, rt, args.batch_size))
    em, sm = statistics.median(e), statistics.median(s)
    print(f"{len(data)} images of {data.spec}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"three experts (body + 2 hand crops + face crop): {em:.1f} images/s  (rounds: "
          f"{', '.join(f'{v:.0f}' for v in e)})")
    print(f"whole-body student: {sm:.1f} images/s  (rounds: {', '.join(f'{v:.0f}' for v in s)})")
    print(f"SUMMARY student / experts images/s = {sm / em:.2f} (target >= 2)")


if __name__ == "__main__":
    main()
