"""Write the example notebooks of ``notebooks/`` (outputs cleared) with nbformat.

The ``.ipynb`` files are committed; edit the cells here and re-run::

    .venv/bin/python notebooks/make_notebooks.py

``tests/notebooks/test_notebooks.py`` executes both notebooks top to bottom.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
%matplotlib inline

import matplotlib.pyplot as plt
import numpy as np
import torch

torch.set_num_threads(2)
_ = torch.manual_seed(0)"""

RECALIBRATE = '''\
def recalibrate_batchnorm(net, images):
    """Set BatchNorm running statistics from `images`, so that a random network gives varied outputs."""
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(images)
    return net.eval()'''

NOTEBOOK_1 = [
    new_markdown_cell("""\
# Exploring MASS

MASS (Model-Agnostic Shift-equivariant downSampling) makes a CNN exactly equivariant to circular
shifts. Each strided layer picks an *origin*, the polyphase component of its input with the
largest energy, and subsamples from there. When the input shifts, the origin shifts with it, so
every feature map shifts exactly and a global pool makes the class exactly invariant.

This notebook:

1. converts a torchvision model with `mass_lightning.convert`;
2. shows the origins that MASS chooses on a real image, and how they move when the image shifts;
3. checks that the feature maps of a shifted image are *exactly* shifted feature maps
   (max abs difference 0);
4. compares a baseline and a MASS ResNet-20 over every circular shift of one 32x32 CIFAR-10 image.

It runs on CPU in well under 2 minutes and needs no download. It uses the shared data folder
(`$MASS_LIGHTNING_DATA`, by default `../shared/data`) when it exists and falls back to a
synthetic `PeriodicDefects` image when it does not."""),
    new_code_cell(SETUP),
    new_markdown_cell("""\
## 1. Convert a torchvision model

`convert` returns a copy in which every padded convolution and pooling uses circular padding and
every strided layer uses MASS sampling. It keeps the same parameters and buffers, so pretrained
weights load unchanged. Offline, we start from random weights. With internet access, use
`torchvision.models.resnet18(weights="DEFAULT")` to convert the ImageNet model instead."""),
    new_code_cell("""\
from collections import Counter

import torchvision
from PIL import Image

from mass_lightning import convert, get_backbone
from mass_lightning.layers import EquivariantDownsample

original = torchvision.models.resnet18(weights=None).eval()  # online: weights="DEFAULT"
model = convert(original, method="mass").eval()
baseline = convert(original, method="baseline").eval()  # circular padding, fixed phase-0 subsampling

print(Counter(type(m).__name__ for m in model.modules() if isinstance(m, EquivariantDownsample)))
same_weights = original.state_dict().keys() == model.state_dict().keys() and all(
    torch.equal(a, b) for a, b in zip(original.state_dict().values(), model.state_dict().values())
)
print("same state_dict as the original:", same_weights)"""),
    new_markdown_cell("""\
## 2. The origins MASS chooses on a real image

We take a 224x288 centre crop of a CamVid test image. Both sizes are multiples of ResNet-18's
total stride of 32, so every stage divides its input. Forward hooks record the origin
(`last_origin`) of every strided layer. The layers of a residual block share one origin, so we
keep one per stage."""),
    new_code_cell('''\
from mass_lightning.data import IMAGENET_MEAN, IMAGENET_STD, PeriodicDefects, data_root


def load_picture(height=224, width=288):
    """A centre crop of the first CamVid test image in [0, 1], or a synthetic image if CamVid is absent."""
    folder = data_root() / "camvid" / "test"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        picture = Image.open(files[0]).convert("RGB")
        top, left = (picture.height - height) // 2, (picture.width - width) // 2
        array = np.asarray(picture.crop((left, top, left + width, top + height)), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1), f"CamVid {files[0].name}"
    image, _ = PeriodicDefects(num_samples=1, image_size=height, period=8, color=True, normalize=False)[0]
    return image, "synthetic PeriodicDefects image (no CamVid folder found)"


picture, source = load_picture()
mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
x = ((picture - mean) / std)[None]
print(source, tuple(x.shape))'''),
    new_code_cell('''\
def stage_origins(net, images):
    """(layer name, input size, origin) of the first strided layer of every stage, in call order."""
    calls = []
    hooks = [
        module.register_forward_hook(
            lambda mod, inputs, output, name=name: calls.append((name, tuple(inputs[0].shape[-2:]), mod.last_origin[0].tolist()))
        )
        for name, module in net.named_modules()
        if isinstance(module, EquivariantDownsample) and module._stride_pair() != (1, 1)
    ]
    with torch.no_grad():
        net(images)
    for hook in hooks:
        hook.remove()
    stages = {}
    for name, size, origin in calls:
        stages.setdefault(size, (name, origin))
    return [(name, size, origin) for size, (name, origin) in stages.items()]


def composite_origin(stages, image_size):
    """Offset, in input pixels, of the sampling lattice left after all the stages."""
    offset = np.zeros(2, dtype=int)
    for _, size, origin in stages:
        offset += np.array(origin) * (image_size[0] // size[0])
    return offset


shift = (5, 11)  # (dy, dx) in pixels
x_shifted = torch.roll(x, shift, dims=(-2, -1))
stages, stages_shifted = stage_origins(model, x), stage_origins(model, x_shifted)
for (name, size, origin), (_, _, origin_shifted) in zip(stages, stages_shifted):
    print(f"{name:16s} input {size[0]:3d}x{size[1]:<3d} origin {origin} -> {origin_shifted} after the shift")
lattice = composite_origin(stages, x.shape[-2:])
lattice_shifted = composite_origin(stages_shifted, x.shape[-2:])
print("final stride-32 lattice starts at", lattice.tolist(), "and, for the shifted image, at", lattice_shifted.tolist())
print("it moved with the image:", np.array_equal((lattice_shifted - lattice - np.array(shift)) % 32, [0, 0]))'''),
    new_code_cell('''\
def draw_lattice(ax, image, offset, title):
    ax.imshow(image.permute(1, 2, 0).numpy())
    rows, cols = np.meshgrid(np.arange(offset[0], image.shape[1], 32), np.arange(offset[1], image.shape[2], 32))
    ax.scatter(cols.ravel(), rows.ravel(), s=14, c="yellow", edgecolors="black", linewidths=0.5)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


fig, axes = plt.subplots(1, 2, figsize=(11, 4))
draw_lattice(axes[0], picture, lattice, f"original: lattice origin {lattice.tolist()}")
draw_lattice(axes[1], torch.roll(picture, shift, dims=(-2, -1)), lattice_shifted,
             f"shifted by {shift}: lattice origin {lattice_shifted.tolist()}")
fig.suptitle("Where the last stage samples (one dot per output position): the lattice follows the content")
plt.show()'''),
    new_markdown_cell("""\
## 3. Feature maps shift exactly

After `layer2` (total stride 8) the feature map of the shifted image must be a circular shift of
the original feature map. The amount is `(shift + origin - origin_shifted) / 8` per axis, where
the origins are those of the first three stages. We compare the two maps bit for bit. For the
baseline (fixed phase), no circular shift of its map matches. We search all of them and print
the best one."""),
    new_code_cell('''\
def layer2_features(net, *images):
    store = []
    hook = net.layer2.register_forward_hook(lambda module, inputs, output: store.append(output))
    with torch.no_grad():
        for image in images:
            net(image)
    hook.remove()
    return store


features, features_shifted = layer2_features(model, x, x_shifted)
offset = composite_origin(stages[:3], x.shape[-2:])
offset_shifted = composite_origin(stages_shifted[:3], x.shape[-2:])
k = tuple(int(v) for v in (np.array(shift) + offset - offset_shifted) // 8)
mass_error = (torch.roll(features, k, dims=(-2, -1)) - features_shifted).abs().max().item()
print(f"MASS: layer2 features of the shifted image = layer2 features rolled by {k}; max abs diff = {mass_error}")
assert mass_error == 0.0

base, base_shifted = layer2_features(baseline, x, x_shifted)
height, width = base.shape[-2:]
best = min(
    (torch.roll(base, (a, b), dims=(-2, -1)) - base_shifted).abs().max().item()
    for a in range(height) for b in range(width)
)
print(f"baseline: smallest max abs diff over all {height * width} circular shifts of its map = {best:.4f}")'''),
    new_markdown_cell("""\
## 4. Baseline vs MASS over every shift of one image

ResNet-20 on a 32x32 CIFAR-10 test image, under all 32 x 32 = 1,024 circular shifts. Both
networks have the same random weights. Their BatchNorm statistics are set from a few test images,
so that the outputs are not degenerate. A random network seldom changes its *class*, so we
also plot the largest change of any logit relative to the unshifted image.

If `benchmarks/reproduce_cifar10.py` has been run, its trained checkpoints are used instead.
The heat map over 64 images in `docs/results.md` shows the class agreement of the trained models."""),
    new_code_cell(RECALIBRATE),
    new_code_cell('''\
from mass_lightning.data import CIFAR10_MEAN, CIFAR10_STD
from mass_lightning.data.paths import REPO_ROOT
from mass_lightning.tasks import ClassificationTask


def cifar_images(count=32):
    """`count` CIFAR-10 test images in [0, 1] (every class), or synthetic ones if the folder is absent."""
    folder = data_root() / "cifar10-jpeg" / "test"
    files = sorted(folder.glob("*/*.jpg")) if folder.is_dir() else []
    if files:
        chosen = files[:: max(1, len(files) // count)][:count]
        arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in chosen]
        return torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in arrays]), "CIFAR-10 test"
    data = PeriodicDefects(num_samples=count, image_size=32, period=8, normalize=False)
    return torch.stack([data[i][0] for i in range(count)]), "synthetic PeriodicDefects"


images, image_source = cifar_images()
cifar_mean, cifar_std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
batch = (images - cifar_mean) / cifar_std
one = batch[:1]
every_shift = torch.cat([torch.roll(one, (dy, dx), dims=(-2, -1)) for dy in range(32) for dx in range(32)])

results = {}
for method in ("baseline", "mass"):
    checkpoint = REPO_ROOT / "outputs" / "reproduce_cifar10" / method / "final.ckpt"
    if checkpoint.is_file():
        net, origin = ClassificationTask.load_from_checkpoint(checkpoint, map_location="cpu").model.eval(), "trained"
    else:
        torch.manual_seed(0)
        net = recalibrate_batchnorm(get_backbone("resnet20", method=method, num_classes=10), batch)
        origin = "random init"
    with torch.no_grad():
        logits = net(every_shift)
    results[method] = {
        "agree": (logits.argmax(1) == logits[0].argmax()).float().view(32, 32),
        "deviation": (logits - logits[0]).abs().amax(1).view(32, 32),
        "weights": origin,
    }
    r = results[method]
    print(f"{method:8s} ({origin}, {image_source}): class unchanged under {100 * r['agree'].mean():.2f}% of the "
          f"shifts; largest logit change {r['deviation'].max():.2e}")'''),
    new_code_cell('''\
fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
axes[0].imshow(images[0].permute(1, 2, 0).numpy())
axes[0].set_title("the image")
axes[0].axis("off")
for ax, (method, r) in zip(axes[1:], results.items()):
    shown = ax.imshow(torch.log10(r["deviation"] + 1e-9).numpy(), vmin=-9, vmax=1, cmap="magma")
    ax.set_title(f"{method} ({r['weights']})\\nlog10 of the largest logit change\\n"
                 f"class kept under {100 * r['agree'].mean():.1f}% of the shifts", fontsize=9)
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
fig.colorbar(shown, ax=axes[1:].tolist(), shrink=0.8)
plt.show()'''),
    new_markdown_cell("""\
**What the maps show.**

- The baseline's logits are unchanged only for shifts that are multiples of its total stride of 4
  (the regular grid of dark points). Everywhere else they change.
- MASS's logits change by at most about 1e-5 under every shift. That residue is float rounding in
  the global average pool, which sums a shifted map in another order. The feature maps themselves
  are bit-identical up to the shift (section 3), and the class never changes.
- APS (`method="aps"`) is exactly invariant too. What sets MASS apart is that it keeps every layer
  of the original network, so pretrained weights transfer without retraining."""),
]

NOTEBOOK_2 = [
    new_markdown_cell("""\
# Segmentation equivariance on CamVid

A segmentation network is *shift equivariant* if shifting the image shifts the label map by the
same amount. `mass_lightning.get_segmentation_model` builds a DeepLabV3+ (segmentation-models-pytorch)
whose encoder downsamples with MASS, and whose decoder upsamples back on the same grid. It is
equivariant to circular shifts: exactly in its features, and up to float rounding in its logits
(see the end).

We compare it with the baseline (circular padding, fixed-phase downsampling) on one CamVid test
image, cropped to 224x288 (multiples of the total stride 32):

1. predict on the image circularly shifted by two random offsets;
2. shift each prediction back;
3. show where the two label maps disagree.

The networks have random weights: pretrained encoders cannot be downloaded offline. Their BatchNorm
statistics are set from the image, so that the label maps are not constant. If
`benchmarks/reproduce_camvid.py` has been run, its trained checkpoints are used instead.
Runs in well under 2 minutes on CPU."""),
    new_code_cell(SETUP),
    new_code_cell(RECALIBRATE),
    new_code_cell('''\
from mass_lightning import get_segmentation_model
from mass_lightning.data import CAMVID_CLASSES, IMAGENET_MEAN, IMAGENET_STD, CamVidDataModule, PeriodicDefectsSegmentation, data_root
from mass_lightning.data.paths import REPO_ROOT
from mass_lightning.metrics import roll_per_sample, sample_shifts, unroll_per_sample
from mass_lightning.tasks import SegmentationTask

HEIGHT, WIDTH = 224, 288
if (data_root() / "camvid").is_dir():
    image, target = CamVidDataModule(eval_size=(HEIGHT, WIDTH), num_workers=0).dataset("test")[0]
    source, num_classes = "CamVid test image 0 (centre crop)", len(CAMVID_CLASSES)
else:
    image, target = PeriodicDefectsSegmentation(num_samples=1, image_size=HEIGHT)[0]
    source, num_classes = "synthetic PeriodicDefectsSegmentation image (no CamVid folder found)", 11
x = image[None]
print(source, tuple(x.shape))

models = {}
for method in ("baseline", "mass"):
    checkpoint = REPO_ROOT / "outputs" / "reproduce_camvid" / method / "final.ckpt"
    if checkpoint.is_file():
        models[method] = SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu").model.eval()
        print(method, "trained checkpoint", checkpoint)
    else:
        torch.manual_seed(0)
        net = get_segmentation_model(encoder="resnet18", method=method, num_classes=num_classes)
        models[method] = recalibrate_batchnorm(net, torch.cat([x, x.flip(-1)]))
        print(method, "random init, BatchNorm statistics from the image")'''),
    new_code_cell('''\
shifts = sample_shifts(2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))  # two (dy, dx)
print("shifts:", shifts.tolist())

outputs = {}
for method, net in models.items():
    with torch.no_grad():
        # predict on each shifted copy, then shift the logits back to the image frame
        logits = [unroll_per_sample(net(roll_per_sample(x, s[None])), s[None])[0] for s in shifts]
    labels = [l.argmax(0) for l in logits]
    differ = labels[0] != labels[1]
    outputs[method] = {"labels": labels, "differ": differ, "logits": logits}
    print(f"{method:8s}: {differ.sum().item()} of {differ.numel()} pixels ({100 * differ.float().mean():.3f}%) change "
          f"class between the two shifts; largest logit difference {(logits[0] - logits[1]).abs().max():.2e}")

# Where MASS's two label maps differ at all, the two best classes are tied up to float rounding:
mass = outputs["mass"]
top2 = mass["logits"][0].topk(2, dim=0).values
gap = (top2[0] - top2[1])[mass["differ"]]
if gap.numel():
    print(f"MASS: at the {gap.numel()} differing pixel(s) the top-2 logits are within {gap.max():.1e} (a near-tie)")
assert gap.numel() == 0 or gap.max() < 1e-4'''),
    new_code_cell('''\
palette = np.array([(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
                    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)], dtype=np.uint8)


def colorize(labels):
    labels = labels.numpy()
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = labels < len(palette)
    out[valid] = palette[labels[valid]]
    return out


mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
picture = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
gray = np.repeat(picture.mean(axis=2, keepdims=True), 3, axis=2) * 0.6 + 0.2

fig, axes = plt.subplots(3, 3, figsize=(13, 9))
axes[0, 0].imshow(picture)
axes[0, 0].set_title("image")
axes[0, 1].imshow(colorize(target))
axes[0, 1].set_title("ground truth")
axes[0, 2].axis("off")
axes[0, 2].text(0, 0.5, f"shift A = {tuple(shifts[0].tolist())}\\nshift B = {tuple(shifts[1].tolist())}\\n\\n"
                "predictions are shifted back;\\nred = the two label maps differ", fontsize=11, va="center")
for row, (method, out) in enumerate(outputs.items(), start=1):
    overlay = gray.copy()
    overlay[out["differ"].numpy()] = (0.9, 0.1, 0.1)
    axes[row, 0].imshow(colorize(out["labels"][0]))
    axes[row, 0].set_title(f"{method}: shift A")
    axes[row, 1].imshow(colorize(out["labels"][1]))
    axes[row, 1].set_title(f"{method}: shift B")
    axes[row, 2].imshow(overlay)
    axes[row, 2].set_title(f"{method}: {100 * out['differ'].float().mean():.2f}% of pixels differ")
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()'''),
    new_markdown_cell("""\
**What it shows.**

- The baseline's label map depends on where the image sits relative to its fixed sampling grid,
  so its predictions disagree along object boundaries.
- MASS's encoder features are exact shifts of each other. Its logits differ only at the level of
  float rounding (about 1e-7 to 1e-5): the ASPP image-pooling branch averages a shifted map in
  another order. A pixel whose two best classes are tied to that precision can therefore flip,
  which is why the cell above reports any differing MASS pixel together with its top-2 logit gap.
  Every other pixel agrees.
- mASCC (`mass_lightning.metrics.SegmentationCircularConsistency`, paper eq. 5) averages this
  agreement over a test set. See Table 3 of `docs/results.md`."""),
]


def write(cells: list, name: str) -> Path:
    """Save ``cells`` as ``notebooks/<name>`` with a python3 kernelspec and no outputs."""
    notebook = new_notebook(cells=cells)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating gives the same file
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    path = HERE / name
    nbformat.write(notebook, path)
    return path


if __name__ == "__main__":
    for cells, name in ((NOTEBOOK_1, "01_exploring_mass.ipynb"), (NOTEBOOK_2, "02_segmentation_equivariance.ipynb")):
        print("wrote", write(cells, name))
