"""The baseline: a hand-written fine-tuning loop in the style of the PyTorch transfer-learning tutorial.

torchvision ImageFolder + transforms + DataLoader(num_workers=4) + a frozen backbone with a new head,
Adam with one learning rate per parameter group, `model.train()` / `model.eval()` per phase, and the
whole network run on every image in every epoch. It imports nothing from finetune. Prints one JSON line.

    python benchmarks/handwritten.py --data ROOT --source timm --name tf_efficientnet_lite0 \
        --weights W.pth --strategy feature-extract --epochs 10 --batch-size 16
"""

import argparse
import json
import time

import torch
import torchvision
from torch import nn
from torchvision import datasets, transforms


def build_model(args, num_classes):
    if args.source == "timm":
        import timm

        model = timm.create_model(args.name, pretrained=False)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        cfg = timm.data.resolve_data_config({}, model=model)
        size = cfg["input_size"][-1]
        pre = dict(size=size, resize=int(size / cfg["crop_pct"]), mean=cfg["mean"], std=cfg["std"],
                   interpolation=cfg["interpolation"])
        for p in model.parameters():
            p.requires_grad = False
        model.reset_classifier(num_classes)  # the new head: requires_grad=True
        head = model.get_classifier()
    else:
        weights = torchvision.models.get_model_weights(args.name).DEFAULT
        model = torchvision.models.get_model(args.name, weights=None)
        if args.weights:
            model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        t = weights.transforms()
        pre = dict(size=t.crop_size[0], resize=t.resize_size[0], mean=t.mean, std=t.std,
                   interpolation=t.interpolation.value)
        for p in model.parameters():
            p.requires_grad = False
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        head = model.fc
    if args.image_size:
        pre["resize"], pre["size"] = int(args.image_size * pre["resize"] / pre["size"]), args.image_size
    groups = [{"params": head.parameters(), "lr": args.lr_head}]
    if args.strategy == "last-stage":
        stage = [p for n, p in model.named_parameters() if n.split(".")[0] in args.last_stage
                 or ".".join(n.split(".")[:2]) in args.last_stage]
        for p in stage:
            p.requires_grad = True
        groups.append({"params": stage, "lr": args.lr_last_stage})
    return model, pre, groups


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="ImageFolder root with train/ and val/")
    ap.add_argument("--source", choices=["timm", "torchvision"], required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--weights", default=None, help="local state-dict file (default: random init)")
    ap.add_argument("--strategy", choices=["feature-extract", "last-stage"], default="feature-extract")
    ap.add_argument("--last-stage", default="layer4", help="comma-separated module prefixes trained by last-stage")
    ap.add_argument("--augment", choices=["none", "standard"], default="standard")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--lr-head", type=float, default=1e-3)
    ap.add_argument("--lr-last-stage", type=float, default=1e-4)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="CUDA only: autocast to bf16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.last_stage = args.last_stage.split(",")
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    num_classes = len(datasets.ImageFolder(f"{args.data}/train").classes)
    model, pre, groups = build_model(args, num_classes)
    model = model.to(device)
    interp = transforms.InterpolationMode(pre["interpolation"])
    evaluate = [transforms.Resize(pre["resize"], interpolation=interp), transforms.CenterCrop(pre["size"])]
    augment = [transforms.RandomResizedCrop(pre["size"], interpolation=interp), transforms.RandomHorizontalFlip()]
    tail = [transforms.ToTensor(), transforms.Normalize(pre["mean"], pre["std"])]
    data_transforms = {"train": transforms.Compose((augment if args.augment == "standard" else evaluate) + tail),
                       "val": transforms.Compose(evaluate + tail)}
    image_datasets = {x: datasets.ImageFolder(f"{args.data}/{x}", data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=args.batch_size, shuffle=x == "train",
                                                  num_workers=args.workers) for x in ["train", "val"]}
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(groups)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.amp and device.type == "cuda")

    start = time.perf_counter()
    epochs = []
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1}
        for phase in ["train", "val"]:
            model.train() if phase == "train" else model.eval()
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in dataloaders[phase]:
                inputs, labels = inputs.to(device), labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"), autocast:
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs.float(), labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data).item()
            row[f"{phase}_loss"] = running_loss / dataset_sizes[phase]
            row[f"{phase}_acc"] = running_corrects / dataset_sizes[phase]
        row["seconds"] = time.perf_counter() - t0
        epochs.append(row)
    print(json.dumps({"train_seconds": time.perf_counter() - start, "epochs": epochs,
                      "images": dataset_sizes["train"] + dataset_sizes["val"]}))


if __name__ == "__main__":
    main()
