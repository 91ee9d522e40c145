"""Write, run and check the example notebooks of ``notebooks/``; they are stored with their outputs.

    .venv/bin/python notebooks/make_notebooks.py            # rebuild, execute, store with outputs
    .venv/bin/python notebooks/make_notebooks.py --check    # execute fresh copies, compare with the stored ones

Each notebook is a :class:`Notebook`: a title and introduction, setup cells, and a list
of :class:`Section` objects. Sections are numbered when the notebook is built, and the
introduction lists them, so adding one is a single entry in ``sections``::

    NOTEBOOK_1.sections.append(Section("Check your own model", "...", [new_markdown_cell(...), new_code_cell(...)]))

Cells state exactness through :func:`report` (defined in the setup cell), which prints a
line ``exact: <what> = <value>``. ``--check`` (and ``tests/notebooks/test_notebooks.py``,
which CI runs) executes every notebook again and fails if those lines differ from the
stored outputs, so the text around them cannot drift from what the code measures. Other
numbers (baseline results, timings) may vary across machines and are not compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
EXACT_PREFIX = "exact: "
CELL_TIMEOUT_S = 600  # generous: the machines running the notebooks are small and shared


@dataclass
class Section:
    """A numbered part of a notebook: ``## <n>. <title>``, then its cells.

    Attributes:
        title: Heading, without the number.
        summary: One line for the introduction's list of sections.
        cells: The section's cells (markdown and code), after the heading.
    """

    title: str
    summary: str
    cells: list = field(default_factory=list)


@dataclass
class Notebook:
    """A notebook to build: file name, title, introduction, setup cells, sections, closing cells."""

    name: str
    title: str
    intro: str
    outro: str
    setup: list = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def cells(self) -> list:
        """All cells: the title and introduction (with the numbered list of sections), setup, sections."""
        listing = "\n".join(f"{n}. {section.summary}" for n, section in enumerate(self.sections, 1))
        cells = [new_markdown_cell(f"# {self.title}\n\n{self.intro}\n\nThis notebook:\n\n{listing}\n\n{self.outro}")]
        cells += copy.deepcopy(self.setup)
        for number, section in enumerate(self.sections, 1):
            heading, *rest = section.cells if section.cells and section.cells[0].cell_type == "markdown" else [None]
            text = f"## {number}. {section.title}" + (f"\n\n{heading.source}" if heading is not None else "")
            cells.append(new_markdown_cell(text))
            cells += copy.deepcopy(rest if heading is not None else section.cells)
        return cells


SETUP = '''\
import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by lightning
%matplotlib inline

import matplotlib.pyplot as plt
import numpy as np
import torch

torch.set_num_threads(1)  # small inputs; on a shared CPU, competing threads slow everything down
_ = torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 60  # small stored images


def report(what, value):
    """Print an exactness claim as `exact: <what> = <value>`; the notebook test compares it with a fresh run."""
    print(f"exact: {what} = {value}")'''

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

# ---------------------------------------------------------------- notebook 1
CONVERT = Section(
    "Convert a torchvision model",
    "converts a torchvision model with `mass_lightning.convert`;",
    [
        new_markdown_cell("""\
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
report("converted ResNet-18 has the original state_dict", same_weights)"""),
    ],
)

ORIGINS = Section(
    "The origins MASS chooses on a real image",
    "shows the origins that MASS chooses on a real image, and how they move when the image shifts;",
    [
        new_markdown_cell("""\
We take a 224x288 centre crop of a CamVid test image. Both sizes are multiples of ResNet-18's
total stride of 32, so every stage divides its input. Origins are values, not layer state: the
first strided layer of each stage is called with `return_origin=True` and returns its origin,
and the other strided layers of the stage (the shortcut of a residual block) receive it as
`origin=`. A forward hook with keyword arguments sees it, so we record one origin per stage."""),
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
    """(layer name, input size, origin) of the layer that chose each stage's origin, in call order."""
    calls = []

    def record(name):
        def hook(module, args, kwargs, output):
            if kwargs.get("return_origin"):  # this layer chose the origin and returned it
                calls.append((name, tuple(args[0].shape[-2:]), output[1][0].tolist()))
        return hook

    hooks = [module.register_forward_hook(record(name), with_kwargs=True)
             for name, module in net.named_modules() if isinstance(module, EquivariantDownsample)]
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
report("the final sampling lattice moved with the image",
       np.array_equal((lattice_shifted - lattice - np.array(shift)) % 32, [0, 0]))'''),
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
    ],
)

FEATURES = Section(
    "Feature maps shift exactly",
    "checks that the feature maps of a shifted image are *exactly* shifted feature maps (max abs "
    "difference 0);",
    [
        new_markdown_cell("""\
After `layer2` (total stride 8) the feature map of the shifted image must be a circular shift of
the original feature map. The amount is `(shift + origin - origin_shifted) / 8` per axis, where
the origins are those of the first three stages. We compare the two maps bit for bit. For the
baseline (fixed phase), no circular shift of its map matches. We search all of them and print
the best one."""),
        new_code_cell('''\
def layer2_features(net, *images):
    """The output of `layer2`: the last call of its last block's ReLU (a converted model runs its
    leaf layers, so hooks go on leaves, not on containers such as `layer2`)."""
    store = []
    hook = net.layer2[-1].relu.register_forward_hook(lambda module, inputs, output: store.append(output))
    outputs = []
    with torch.no_grad():
        for image in images:
            store.clear()
            net(image)
            outputs.append(store[-1])
    hook.remove()
    return outputs


features, features_shifted = layer2_features(model, x, x_shifted)
offset = composite_origin(stages[:3], x.shape[-2:])
offset_shifted = composite_origin(stages_shifted[:3], x.shape[-2:])
k = tuple(int(v) for v in (np.array(shift) + offset - offset_shifted) // 8)
mass_error = (torch.roll(features, k, dims=(-2, -1)) - features_shifted).abs().max().item()
print(f"MASS: layer2 features of the shifted image = layer2 features rolled by {k}")
report("MASS layer2 features, max abs difference from the rolled ones", mass_error)
assert mass_error == 0.0

base, base_shifted = layer2_features(baseline, x, x_shifted)
height, width = base.shape[-2:]
best = min(
    (torch.roll(base, (a, b), dims=(-2, -1)) - base_shifted).abs().max().item()
    for a in range(height) for b in range(width)
)
print(f"baseline: smallest max abs diff over all {height * width} circular shifts of its map = {best:.4f}")
assert best > 0'''),
    ],
)

EVERY_SHIFT = Section(
    "A trained baseline changes its class under shifts; MASS never does",
    "trains a baseline ResNet-20 on the quickstart's defect images and compares it with MASS, "
    "using the same trained weights, over every circular shift.",
    [
        new_markdown_cell("""\
We train a baseline ResNet-20 (circular padding, fixed-phase stride 2) as `make quickstart` does, on the
images of `make quickstart`: defects of one or two pixels on a 4-pixel lattice of pads, over a
texture that repeats every 2 pixels. Then we give *the same trained weights* to a MASS ResNet-20: the
`state_dict` keys are the same, so no retraining is needed.

ResNet-20 has a total stride of 4, so the baseline sees 16 different sampling phases; every other
circular shift repeats one of them. We count the validation images whose class changes under
one of those shifts, then show every shift of the image that changes most.

The quickstart's own runs (`lightning_logs/quickstart/{baseline,mass}/version_*/checkpoints/last.ckpt`)
load with `ClassificationTask.load_from_checkpoint(path).model`; they are better trained and
behave the same way."""),
        new_code_cell('''\
import logging

from lightning.pytorch import Trainer, seed_everything

from mass_lightning.data import DEFECT_TYPES, PeriodicDefectsDataModule
from mass_lightning.tasks import ClassificationTask

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # keep the trainer quiet
warnings.filterwarnings("ignore", module="lightning")

DATA = dict(image_size=16, period=4, texture=0.2, texture_period=2, noise_std=0.03)  # as in configs/quickstart.yaml
seed_everything(0, verbose=False)
data = PeriodicDefectsDataModule(num_train=2048, num_val=128, num_test=16, batch_size=32, **DATA)
task = ClassificationTask(backbone="resnet20", method="baseline", num_classes=6, lr=0.05, nesterov=True,
                          warmup_steps=15, eval_consistency=False)
trainer = Trainer(accelerator="cpu", max_epochs=8, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
trainer.fit(task, datamodule=data)

nets = {"baseline": task.model.eval(), "mass": get_backbone("resnet20", method="mass", num_classes=6).eval()}
nets["mass"].load_state_dict(nets["baseline"].state_dict())  # the same trained weights
images = torch.stack([data.dataset("val")[i][0] for i in range(128)])
labels = torch.tensor([data.dataset("val")[i][1] for i in range(128)])
phases = [(dy, dx) for dy in range(4) for dx in range(4)]  # every shift modulo the total stride 4
with torch.no_grad():
    classes = {name: torch.stack([net(torch.roll(images, s, dims=(2, 3))).argmax(1) for s in phases])
               for name, net in nets.items()}
changed = {name: (c != c[:1]).any(0) for name, c in classes.items()}
for name in nets:
    accuracy = (classes[name][0] == labels).float().mean()
    print(f"{name:8s}: accuracy {100 * accuracy:.1f}% (unshifted); {int(changed[name].sum())} of {len(labels)} "
          "validation images change class under some circular shift")
report("MASS (baseline weights): validation images whose class changes under a shift", int(changed["mass"].sum()))
assert changed["baseline"].any(), "the trained baseline should change class under some shift"'''),
        new_code_cell('''\
index = int(((classes["baseline"] != classes["baseline"][:1]).sum(0)).argmax())  # the image that changes most
size = images.shape[-1]
every_shift = [(0, 0)] + [(dy, dx) for dy in range(size) for dx in range(size)]  # reference first, one batch
batch = torch.cat([torch.roll(images[index:index + 1], s, dims=(2, 3)) for s in every_shift])
results = {}
for name, net in nets.items():
    with torch.no_grad():
        logits = net(batch)
    reference, shifted = logits[0], logits[1:]
    results[name] = {"agree": (shifted.argmax(1) == reference.argmax()).float().view(size, size),
                     "classes": shifted.argmax(1).unique().tolist(),
                     "change": (shifted - reference).abs().amax(1).view(size, size)}
    print(f"{name:8s}: class unchanged under {100 * results[name]['agree'].mean():.2f}% of the {size * size} shifts "
          f"(classes seen: {', '.join(DEFECT_TYPES[c] for c in results[name]['classes'])}); "
          f"largest logit change {results[name]['change'].max():.2e}")
report("MASS: shifts of that image under which the class is unchanged",
       f"{100 * results['mass']['agree'].mean():.2f}%")
report("MASS: largest logit change over every shift of that image", results["mass"]["change"].max().item())
assert results["baseline"]["agree"].mean() < 1'''),
        new_code_cell('''\
fig, axes = plt.subplots(1, 3, figsize=(13, 4))
axes[0].imshow(((images[index] * 0.2 + 0.3).clamp(0, 1)).permute(1, 2, 0).numpy())
axes[0].set_title(f"validation image {index} ({DEFECT_TYPES[int(labels[index])]})")
axes[0].axis("off")
for ax, (name, r) in zip(axes[1:], results.items()):
    ax.imshow(r["agree"].numpy(), vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_title(f"{name}: class kept under {100 * r['agree'].mean():.1f}% of the shifts", fontsize=10)
    ax.set_xlabel("dx")
    ax.set_ylabel("dy")
fig.suptitle("Green: the shifted image gets the class of the unshifted one; red: another class")
plt.show()'''),
        new_markdown_cell("""\
**What the maps show.**

- The baseline's class depends on where the defect falls relative to its fixed stride-2 sampling
  grid: the red cells of its map repeat with period 4, its total stride.
- MASS, with the very same weights, keeps the class under every shift, and its logits do not
  change at all (largest change 0, printed above): the feature maps are exact shifts of each other
  (section 3), and `convert` swaps the global average pool for one whose sum does not depend
  on the order of the pixels, so even the last bit of the logits is the same.
- APS (`method="aps"`) is exactly invariant too. What sets MASS apart is that it keeps every layer
  of the original network, so trained weights transfer without retraining, as here."""),
    ],
)

CHECK = Section(
    "Check any model, layer by layer",
    "runs `mass_lightning.check_equivariance` on a model that is not equivariant and on its "
    "converted version, and reads the per-layer report.",
    [
        new_markdown_cell("""\
`check_equivariance(model, x)` runs `x` and a few circular shifts of it through the model and
compares every intermediate value with the matching shift of the unshifted one. For a converted
model it knows how far each feature map must move (it follows the origins); for any other model
only shifts by multiples of a map's stride can be predicted, and the report says so
(`phase tracked: no`). The first value that is not equivariant names the layer to look at.

The plain torchvision ResNet-18 (zero padding, fixed-phase stride 2) fails at its first layer;
its MASS conversion passes everywhere."""),
        new_code_cell('''\
from mass_lightning import check_equivariance

probe = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
plain_report = check_equivariance(original, probe)
converted_report = check_equivariance(model, probe)
print("plain ResNet-18, first failure:", plain_report.first_failure)
lines = str(converted_report).splitlines()
print("\\n".join(lines[:6] + ["..."] + lines[-3:]))
report("plain ResNet-18 passes check_equivariance", plain_report.ok)
report("converted ResNet-18 passes check_equivariance", converted_report.ok)
report("largest error over all values of the converted ResNet-18",
       max(layer.max_error for layer in converted_report.layers))'''),
        new_markdown_cell("""\
The same check runs inside `convert`: after converting, the model is run on a probe input and a
few shifts of it, and a mismatch raises an error that names the first module that breaks (with
`strict=False`, a warning). Models that cannot be made exact are refused before that, with the
module and the reason (for example VGG: `avgpool: pools to a fixed (7, 7) grid ...`)."""),
    ],
)

NOTEBOOK_1 = Notebook(
    name="01_exploring_mass.ipynb",
    title="Exploring MASS",
    intro="""\
MASS (Model-Agnostic Shift-equivariant downSampling) makes a CNN exactly equivariant to circular
shifts. Each strided layer picks an *origin*, the polyphase component of its input with the
largest energy, and subsamples from there. When the input shifts, the origin shifts with it, so
every feature map shifts exactly and a global pool makes the class exactly invariant.""",
    outro="""\
It runs on CPU in about a minute and needs no download. It uses the shared data folder
(`$MASS_LIGHTNING_DATA`, by default `../shared/data`) when it exists and falls back to a
synthetic `PeriodicDefects` image when it does not. Lines that start with `exact:` are
checked against a fresh run by the test suite.""",
    setup=[new_code_cell(SETUP)],
    sections=[CONVERT, ORIGINS, FEATURES, EVERY_SHIFT, CHECK],
)

# ---------------------------------------------------------------- notebook 2
TWO_SHIFTS = Section(
    "Label maps of two shifted copies",
    "predicts on the image circularly shifted by two random offsets, shifts each prediction back, "
    "and shows where the two label maps disagree.",
    [
        new_markdown_cell("""\
The networks have random weights: pretrained encoders cannot be downloaded offline. Their BatchNorm
statistics are set from the image, so that the label maps are not constant. If
`benchmarks/reproduce_camvid.py` has been run, its trained checkpoints are used instead."""),
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
        # predict on both shifted copies in one batch, then shift the logits back to the image frame
        logits = unroll_per_sample(net(roll_per_sample(x.expand(2, -1, -1, -1), shifts)), shifts)
    labels = logits.argmax(1)
    differ = labels[0] != labels[1]
    outputs[method] = {"labels": labels, "differ": differ, "logits": logits}
    print(f"{method:8s}: {differ.sum().item()} of {differ.numel()} pixels ({100 * differ.float().mean():.3f}%) change "
          f"class between the two shifts; largest logit difference {(logits[0] - logits[1]).abs().max():.2e}")

report("MASS: pixels whose class differs between the two shifts", outputs["mass"]["differ"].sum().item())
report("MASS: largest logit difference between the two shifts",
       (outputs["mass"]["logits"][0] - outputs["mass"]["logits"][1]).abs().max().item())'''),
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
- MASS's two label maps agree on every pixel, and its logits are bit-identical once shifted back
  (largest difference 0, printed above). The encoder's feature maps are exact shifts of each other,
  the decoder undoes the origins exactly, and ASPP's image-pooling branch is exact too: `convert`
  swaps its global average pool for one that sums in a fixed order, and the pooled `1 x 1` map is
  broadcast rather than interpolated.
- mASCC (`mass_lightning.metrics.SegmentationCircularConsistency`, paper eq. 5) averages this
  agreement over a test set. See the CamVid section (paper Table 5) of `docs/results.md`."""),
    ],
)

NOTEBOOK_2 = Notebook(
    name="02_segmentation_equivariance.ipynb",
    title="Segmentation equivariance on CamVid",
    intro="""\
A segmentation network is *shift equivariant* if shifting the image shifts the label map by the
same amount. `mass_lightning.get_segmentation_model` builds a DeepLabV3+ (segmentation-models-pytorch)
whose encoder downsamples with MASS, and whose decoder upsamples back on the same grid. It is
exactly equivariant to circular shifts: on CPU, the logits of a shifted image, shifted back, are
bit-identical to those of the image.

We compare it with the baseline (circular padding, fixed-phase downsampling) on one CamVid test
image, cropped to 224x288 (multiples of the total stride 32).""",
    outro="""\
It runs on CPU in well under a minute. Lines that start with `exact:` are checked against a fresh
run by the test suite.""",
    setup=[new_code_cell(SETUP)],
    sections=[TWO_SHIFTS],
)

NOTEBOOKS: tuple[Notebook, ...] = (NOTEBOOK_1, NOTEBOOK_2)


# ---------------------------------------------------------------- build, run, check
def build(spec: Notebook) -> nbformat.NotebookNode:
    """The notebook of ``spec`` without outputs, with stable cell ids and a python3 kernelspec."""
    notebook = new_notebook(cells=spec.cells())
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index:02d}"  # stable ids: rebuilding gives the same file
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    return notebook


def execute(notebook: nbformat.NotebookNode, timeout: int = CELL_TIMEOUT_S) -> nbformat.NotebookNode:
    """Run ``notebook`` top to bottom in ``notebooks/`` with a kernel on this interpreter; returns it.

    The kernel is this interpreter (``sys.executable``), written to a temporary kernelspec,
    so the notebook sees the environment of the caller whatever kernels are installed.

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (with its traceback).
    """
    import nbclient
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    with tempfile.TemporaryDirectory() as kernels:
        (Path(kernels) / "python3").mkdir()
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3", "language": "python"}  # fmt: skip
        (Path(kernels) / "python3" / "kernel.json").write_text(json.dumps(spec))
        manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[kernels]))
        client = nbclient.NotebookClient(
            notebook, km=manager, timeout=timeout, kernel_name="python3", record_timing=False,
            resources={"metadata": {"path": str(HERE)}},
        )  # fmt: skip
        client.execute()
    return notebook


def exact_lines(notebook: nbformat.NotebookNode) -> list[str]:
    """The ``exact: ...`` lines that the notebook's cells printed, in order."""
    lines = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                lines += [line for line in output["text"].splitlines() if line.startswith(EXACT_PREFIX)]
    return lines


def write(spec: Notebook) -> Path:
    """Build ``spec``, run it, and store it with its outputs as ``notebooks/<name>``."""
    path = HERE / spec.name
    nbformat.write(execute(build(spec)), path)
    return path


def check(spec: Notebook) -> list[str]:
    """What differs between the stored notebook and a fresh run: its cells' sources, or its ``exact:`` lines."""
    stored = nbformat.read(HERE / spec.name, as_version=4)
    fresh = build(spec)
    if [cell.source for cell in stored.cells] != [cell.source for cell in fresh.cells]:
        return [f"{spec.name}: cells differ from notebooks/make_notebooks.py; run it to rebuild the notebook"]
    return compare(spec.name, stored, execute(fresh))


def compare(name: str, stored: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
    """The ``exact:`` lines that differ between a stored notebook and a fresh run of it."""
    problems = []
    stored_lines, fresh_lines = exact_lines(stored), exact_lines(fresh)
    if not stored_lines:
        problems.append(f"{name}: stored without outputs (no 'exact:' line); run notebooks/make_notebooks.py")
    for old, new in zip(stored_lines, fresh_lines):
        if old != new:
            problems.append(f"{name}: stored '{old}' but a fresh run prints '{new}'")
    if len(stored_lines) != len(fresh_lines):
        problems.append(f"{name}: {len(stored_lines)} stored 'exact:' lines, {len(fresh_lines)} in a fresh run")
    return problems


def main(args: Sequence[str] | None = None) -> int:
    """Rebuild and store all notebooks (or the named ones), or ``--check`` them against fresh runs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="run fresh copies and compare with the stored notebooks")
    parser.add_argument("names", nargs="*", help="notebook file names (default: all)")
    options = parser.parse_args(args)
    chosen = [spec for spec in NOTEBOOKS if not options.names or spec.name in options.names]
    if options.check:
        problems = [problem for spec in chosen for problem in check(spec)]
        print("\n".join(problems) or f"{len(chosen)} notebook(s): stored outputs match a fresh run")
        return 1 if problems else 0
    for spec in chosen:
        print("wrote", write(spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
