"""A converted model keeps no per-call state: threads, checkpointing, re-entrant calls, compile.

Each scenario gives the same results as plain sequential eager calls. Covered for a
classifier and for segmentation models (MASS DeepLabV3+ and U-Net).
"""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
import torch.utils.checkpoint as checkpoint

from mass_lightning import convert, get_segmentation_model
from mass_lightning.errors import NonFiniteInputError
from mass_lightning.testing import build

MODELS = ["classifier", "deeplabv3plus", "unet"]


def _model(kind: str) -> tuple[torch.nn.Module, tuple[int, int]]:
    torch.manual_seed(0)
    if kind == "classifier":
        return convert(build("resnet18")).eval(), (64, 96)
    return get_segmentation_model(kind, encoder="resnet18", num_classes=3).eval(), (64, 96)


@pytest.fixture(scope="module", params=MODELS)
def model_and_size(request):
    return _model(request.param)


def _inputs(size: tuple[int, int], count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(2, 3, *size, generator=generator) for _ in range(count)]


def test_threads_share_one_model(model_and_size):
    model, size = model_and_size
    inputs = _inputs(size, 6)
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    threads, iterations = 3, 4
    barrier = threading.Barrier(threads)
    failures: list[str] = []

    def work(worker: int) -> None:
        barrier.wait()
        with torch.no_grad():
            for step in range(iterations):
                index = (worker * 2 + step) % len(inputs)
                if not torch.equal(model(inputs[index]), expected[index]):
                    failures.append(f"thread {worker}, step {step}, input {index}")

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not failures, failures


@pytest.mark.parametrize("reentrant", [False, True])
def test_activation_checkpointing(model_and_size, reentrant):
    model, size = model_and_size
    x = _inputs(size, 1)[0]
    plain_input = x.clone().requires_grad_()
    plain = model(plain_input)
    plain.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ckpt_input = x.clone().requires_grad_()
    out = checkpoint.checkpoint(model, ckpt_input, use_reentrant=reentrant)
    out.square().mean().backward()
    assert torch.equal(out, plain)
    assert torch.equal(ckpt_input.grad, plain_input.grad)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)
    model.zero_grad()


def test_reentrant_call_from_inside_a_forward(model_and_size):
    """A hook that calls the same model while it runs (per-call state on modules breaks this)."""
    model, size = model_and_size
    outer_input, inner_input = _inputs(size, 2)
    with torch.no_grad():
        expected_outer, expected_inner = model(outer_input), model(inner_input)
    seen: list[torch.Tensor] = []
    submodule = next(m for name, m in model.named_modules() if name.endswith("layer2.0.conv1"))

    def hook(module, args, output):
        if not seen:
            seen.append(torch.empty(0))
            seen.append(model(inner_input))

    handle = submodule.register_forward_hook(hook)
    try:
        with torch.no_grad():
            outer = model(outer_input)
    finally:
        handle.remove()
    assert torch.equal(outer, expected_outer)
    assert torch.equal(seen[1], expected_inner)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "timm/regnety_008"])
def test_exact_at_the_default_thread_count(name, default_threads):
    """Multi-threaded kernels (batch 4, all cores) are as exact as single-threaded ones."""
    torch.manual_seed(0)
    model = convert(build(name)).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(x)
        for shift in [(1, 0), (13, 45), (63, 63)]:
            assert torch.equal(model(torch.roll(x, shift, (2, 3))), reference), shift


def test_non_finite_input_is_an_error_naming_the_layer(model_and_size):
    model, size = model_and_size
    x = _inputs(size, 1)[0]
    x[1, 0, 3, 5] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"conv1.*sample\(s\) \[1\] holds NaN or Inf"):
        with torch.no_grad():
            model(x)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "convnext_tiny", "efficientnet_b0", "timm/regnety_008",
                                  "deeplabv3plus", "unet", "fpn"])
def test_compiles_as_one_graph(name, mode):
    """No graph break: torch.compile sees the whole converted forward (fullgraph=True raises on a break)."""
    torch.manual_seed(0)
    if name in ("deeplabv3plus", "unet", "fpn"):
        model = get_segmentation_model(name, encoder="resnet18", num_classes=3, encoder_weights=None)
    else:
        model = convert(build(name), antialias="lpf3" if name == "resnet18" else None)
    model.train(mode == "train")
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.set_grad_enabled(mode == "train"):
        compiled(torch.randn(2, 3, 64, 64))


def test_many_models_compile_without_hitting_the_recompile_limit():
    """Every converted model has its own forward code object, so torch.compile's per-code
    cache (8 entries by default) does not fill up and fall back to eager after a few models."""
    torch.manual_seed(0)
    for index in range(10):
        model = convert(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.ReLU()))
        model.train(index % 2 == 0)
        torch.compile(model, fullgraph=True, backend="eager")(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("kind", ["classifier", "unet"])
def test_a_dropped_model_is_freed_at_once(kind):
    """No reference cycle holds a converted model's parameters (the tracer's, the forward's):
    converting many models in one process does not pile them up until a full collection."""
    gc.collect()
    gc.disable()
    try:
        model, size = _model(kind)
        with torch.no_grad():
            model(_inputs(size, 1)[0])
        parameters = [weakref.ref(p) for p in model.parameters()]
        del model
        assert not [ref for ref in parameters if ref() is not None]
    finally:
        gc.enable()


def test_whole_model_pickles(tmp_path):
    """``torch.save(model)`` of a whole converted model loads back to the same function."""
    model, size = _model("classifier")
    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    x = _inputs(size, 1)[0]
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert type(loaded).forward is not type(model).forward and isinstance(loaded, type(model).__bases__[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["classifier", "deeplabv3plus"])
def test_inductor_compile(kind, default_threads):
    """Compiled (at the default thread count): bit-identical under shifts within the compiled
    model, close to eager, NaN stays NaN."""
    model, size = _model(kind)
    compiled = torch.compile(model)
    x = _inputs(size, 1)[0]
    with torch.no_grad():
        reference = compiled(x)
        torch.testing.assert_close(reference, model(x), atol=1e-4, rtol=1e-4)
        for shift in [(1, 0), (0, 1), (5, 17)]:
            shifted = compiled(torch.roll(x, shift, (2, 3)))
            expected = reference if kind == "classifier" else torch.roll(reference, shift, (2, 3))
            assert torch.equal(shifted, expected), f"compiled output not exact under {shift}"
        poisoned = x.clone()
        poisoned[0, 1, 2, 3] = float("nan")
        out = compiled(poisoned)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()
