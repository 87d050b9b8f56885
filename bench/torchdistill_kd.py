"""One online KD run through torchdistill 1.1.5, laid out as its examples/torchvision/image_classification.py: a
DistillationBox built from a config (KDLoss, SGD, a per-step cosine schedule), its forward and post-forward processes
over a DataLoader of PIL transforms, validation on the test split after every epoch, the test at the end (student
only, `-student_only`). kd_sweep.py runs it in torchdistill's own venv, where dpl is installed without its
dependencies for two things only: the same nets (`models.build`) and the teacher's weights (a dpl checkpoint, read
through safetensors). Prints one JSON line: top-1, wall times.

    python bench/torchdistill_kd.py --teacher t.safetensors --student resnet20 --tau 4 --alpha 0.9 --epochs 4 \\
        --imagefolder WORK/fm
"""

from __future__ import annotations

import argparse
import json
import math
import time

T0 = time.perf_counter()

import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision import transforms  # noqa: E402
from torchdistill.common.main_util import set_seed  # noqa: E402
from torchdistill.core.distillation import get_distillation_box  # noqa: E402
from torchdistill.core.interfaces import forward_proc  # noqa: E402,F401  (registers forward_batch_only)

from dpl.core import artifacts, models  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", required=True, help="a dpl registry arch")
    p.add_argument("--tau", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9, help="CE + alpha * tau^2 * KL, as dpl's --alpha")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--imagefolder", required=True, help="a folder of train/CLASS/*.png and test/CLASS/*.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    set_seed(args.seed)
    torch.set_num_threads(torch.get_num_threads())

    ckpt = artifacts.load_checkpoint(args.teacher)
    size, mean, std = ckpt.input["size"], ckpt.input["mean"], ckpt.input["std"]
    teacher = ckpt.build_model()
    student = models.build(models.arch_spec(args.student, num_classes=ckpt.num_classes,
                                            in_channels=ckpt.input["channels"], image_size=size))
    normalize = transforms.Normalize(mean, std)
    grey = [transforms.Grayscale(1)] if ckpt.input["channels"] == 1 else []
    train_tf = transforms.Compose([*grey, transforms.Resize(size), transforms.RandomCrop(size, padding=max(1, size // 8)),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([*grey, transforms.Resize(size), transforms.ToTensor(), normalize])
    train_set = torchvision.datasets.ImageFolder(f"{args.imagefolder}/train", transform=train_tf)
    test_set = torchvision.datasets.ImageFolder(f"{args.imagefolder}/test", transform=test_tf)
    if train_set.classes != ckpt.meta["classes"]:
        raise SystemExit(f"classes {train_set.classes} differ from the teacher's {ckpt.meta['classes']}")
    steps = len(train_set) // args.batch_size * args.epochs
    loader = {"sampler": {"class_or_func": torch.utils.data.RandomSampler, "kwargs": {}},
              "kwargs": {"batch_size": args.batch_size, "num_workers": args.workers, "drop_last": True}}
    train_config = {
        "num_epochs": args.epochs,
        "train_data_loader": {"dataset_id": "train", **loader},
        "val_data_loader": {"dataset_id": "test", "sampler": {"class_or_func": torch.utils.data.SequentialSampler,
                                                               "kwargs": {}},
                            "kwargs": {"batch_size": 512, "num_workers": args.workers}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False,
                    "frozen_modules": []},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [],
                    "requires_grad": True, "frozen_modules": []},
        "optimizer": {"key": "SGD", "kwargs": {"lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": args.tau, "alpha": 1.0, "beta": args.alpha,
                                        "reduction": "batchmean"}}, "weight": 1.0}}}},
    }
    device = torch.device("cpu")
    box = get_distillation_box(teacher, student, {"train": train_set, "test": test_set}, train_config, device, None,
                               False, 1)
    t_loop = time.perf_counter()
    for epoch in range(args.epochs):
        box.pre_epoch_process(epoch=epoch)
        box.student_model.train()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch.to(device), targets.to(device), supp_dict)
            box.post_forward_process(loss=loss)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"loss {loss.item()}")
        evaluate(box.student_model, box.val_data_loader)       # the example's validation after every epoch
        box.post_epoch_process()
    loop = time.perf_counter() - t_loop
    top1 = evaluate(box.student_model, box.val_data_loader)   # the example's test (student only)
    print(json.dumps({"tool": "torchdistill", "student": args.student, "tau": args.tau, "top1": top1,
                      "loop_s": loop, "process_s": time.perf_counter() - T0}))


@torch.inference_mode()
def evaluate(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    return correct / total


if __name__ == "__main__":
    main()
