"""The analysis: what every node of a traced model does to positions, and how to make it exact.

It walks the graph once, in execution order, with the concrete values of a probe run
(sizes, constants), and assigns each value a :class:`~.spatial.Spatial` /
:class:`~.spatial.Invariant` description. Each node gets an :class:`~.rewrite.Action`:

* convolutions and poolings become circular; strided ones become MASS/APS downsamplers
  with a new origin group;
* merges (add, multiply, concatenate, ...) unify the phases of their inputs, which joins
  origin groups: the branches of a residual block, of an Inception block or of an HRNet
  fusion then use one origin;
* upsamplings undo the origins of the levels they skip;
* order-dependent spatial reductions become order-independent ones;
* everything that cannot be made exact is refused with the module path, the reason and
  what to do (:class:`~mass_lightning.errors.ConversionError`).
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..errors import ConversionError, InputSizeError
from ..layers.blur import Blur2d
from ..layers.ddac import DDAC
from ..layers.downsample import (
    APSAvgPool2d,
    APSConv2d,
    APSMaxPool2d,
    CircularAvgPool2d,
    CircularConv2d,
    CircularMaxPool2d,
    EquivariantDownsample,
    MASSAvgPool2d,
    MASSConv2d,
    MASSMaxPool2d,
    equivariant_adaptive_pool2d,
    equivariant_avg_pool2d,
    equivariant_conv2d,
    equivariant_max_pool2d,
    equivariant_subsample,
    polyphase_select,
)
from ..layers.exact import ExactGlobalAvgPool2d, ExactGroupNorm, ExactInstanceNorm2d, exact_group_norm, exact_mean, exact_sum
from ..layers import pointwise as position_free
from ..layers.generic import MASSDownsample
from ..layers.polyphase import as_pair
from ..layers.upsample import MASSConvTranspose2d, circular_conv_transpose2d, max_unpool2d_at
from .ops import broadcast_upsample, circular_resize, circular_upsample
from .rewrite import COPY, Action, Alias, Attr, Call, CopyThenSelect, Downsample, Plan, Upsample
from .spatial import Broken, Invariant, PoolIndices, Spatial, Term, map_reshape
from .tracing import module_path, op_name, timm_types

__all__ = ["Analysis", "ProbeTooSmall"]

_CONV = {"baseline": CircularConv2d, "mass": MASSConv2d, "aps": APSConv2d, "aps_official": APSConv2d}
_MAX = {"baseline": CircularMaxPool2d, "mass": MASSMaxPool2d, "aps": APSMaxPool2d, "aps_official": APSMaxPool2d}
_AVG = {"baseline": CircularAvgPool2d, "mass": MASSAvgPool2d, "aps": APSAvgPool2d, "aps_official": APSAvgPool2d}
_SAMPLING = {"baseline": "fixed", "mass": "mass", "aps": "aps", "aps_official": "aps"}
_ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.ELU, nn.Mish)
_ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, "relu", "relu_"}


class ProbeTooSmall(InputSizeError):
    """The probe input is too small for the model's total stride (the caller retries larger)."""


# --------------------------------------------------------------------------------------- op tables
_POINTWISE_FUNCTIONS: set[Any] = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod, operator.pow,
    operator.neg, operator.pos, operator.abs, operator.iadd, operator.isub, operator.imul, operator.itruediv,
    operator.and_, operator.or_, operator.xor, operator.invert, operator.eq, operator.ne, operator.lt,
    operator.le, operator.gt, operator.ge,
    torch.add, torch.sub, torch.subtract, torch.mul, torch.multiply, torch.div, torch.divide, torch.true_divide,
    torch.pow, torch.neg, torch.abs, torch.exp, torch.log, torch.log1p, torch.expm1, torch.sqrt, torch.rsqrt,
    torch.sigmoid, torch.tanh, torch.relu, torch.clamp, torch.clip, torch.where, torch.maximum, torch.minimum,
    torch.sign, torch.erf, torch.reciprocal, torch.square, torch.sin, torch.cos, torch.floor, torch.ceil,
    torch.round, torch.nan_to_num, torch.lerp, torch.addcmul, torch.addcdiv, torch.logical_and, torch.logical_or,
    torch.logical_not, torch.isnan, torch.isfinite, torch.erfc, torch.exp2, torch.log2, torch.atan, torch.sinh,
    torch.cosh, torch.fmod, torch.remainder, torch.masked_fill, torch.heaviside, torch.hardshrink,
    torch.clamp_min, torch.clamp_max, torch.gt, torch.lt, torch.ge, torch.le, torch.eq, torch.ne,
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.sigmoid, F.tanh, F.leaky_relu, F.elu, F.selu,
    F.celu, F.mish, F.softplus, F.softsign, F.hardtanh, F.threshold, F.logsigmoid, F.dropout,
    F.alpha_dropout, F.dropout2d, F.feature_alpha_dropout, F.tanhshrink, F.softshrink, F.rrelu, F.hardshrink,
    F.relu_, F.elu_, F.leaky_relu_, F.hardtanh_, F.threshold_, torch.nn.functional.dropout1d,
    torch.Tensor.add, torch.Tensor.mul, torch.Tensor.sub, torch.Tensor.div,
}
_POINTWISE_METHODS: set[str] = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "pow", "pow_", "neg", "neg_", "abs",
    "exp", "exp_", "log", "sqrt", "rsqrt", "sigmoid", "sigmoid_", "tanh", "tanh_", "relu", "relu_", "clamp",
    "clamp_", "clip", "clamp_min", "clamp_max", "sign", "erf", "reciprocal", "square", "float", "half", "double",
    "bfloat16", "to", "type", "type_as", "contiguous", "clone", "detach", "masked_fill", "masked_fill_", "where",
    "floor", "ceil", "round", "lerp", "addcmul", "fill_", "zero_", "requires_grad_", "__and__", "__or__", "bool",
    "int", "long", "sin", "cos", "exp2", "log2", "nan_to_num", "maximum", "minimum", "hardtanh_", "gelu", "silu",
    "mish", "logical_and", "logical_or", "logical_not", "eq", "ne", "gt", "lt", "ge", "le", "remainder", "copy_",
    "sigmoid_", "mul_", "__mul__", "__add__", "__sub__", "__truediv__", "__radd__", "__rmul__", "__rsub__",
    "__rtruediv__", "__neg__", "__pow__", "__rpow__", "expm1", "log1p", "erfc", "softplus", "clamp_", "cpu",
    "cuda", "as_strided_scatter",
}
_FACTORY_UNIFORM: set[Any] = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
_FACTORY_METHODS_UNIFORM: set[str] = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
_SHAPE_FUNCTIONS: set[Any] = {torch.reshape, torch.flatten, torch.permute, torch.transpose, torch.swapaxes,
                              torch.squeeze, torch.unsqueeze, torch.movedim, torch.t}
_SHAPE_METHODS: set[str] = {"view", "reshape", "flatten", "unflatten", "permute", "transpose", "swapaxes",
                            "squeeze", "unsqueeze", "movedim", "t", "view_as", "reshape_as", "squeeze_",
                            "unsqueeze_", "transpose_", "mT"}
_EXPAND_METHODS: set[str] = {"expand", "expand_as", "broadcast_to", "repeat"}
_REDUCE_SUM = {torch.mean: "mean", torch.sum: "sum", "mean": "mean", "sum": "sum", "nanmean": "mean",
               "nansum": "sum"}
_REDUCE_EXACT = {torch.amax, torch.amin, "amax", "amin", torch.max, torch.min, "max", "min", torch.logsumexp,
                 "logsumexp", torch.any, torch.all, "any", "all", torch.std, torch.var, "std", "var", torch.norm,
                 "norm", torch.prod, "prod", torch.argmax, torch.argmin, "argmax", "argmin", torch.std_mean,
                 torch.var_mean, torch.linalg.vector_norm}
_CAT = {torch.cat, torch.concat, torch.concatenate, torch.stack}
_SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}
_DIM_POINTWISE = {F.softmax: "dim", F.log_softmax: "dim", torch.softmax: "dim", torch.log_softmax: "dim",
                  F.glu: "dim", F.normalize: "dim", torch.cumsum: "dim", torch.cumprod: "dim",
                  "softmax": "dim", "log_softmax": "dim", "cumsum": "dim", "cumprod": "dim", F.softmin: "dim"}
_MAX_POOL_FUNCTIONS = {F.max_pool2d, torch.max_pool2d}
_AVG_POOL_FUNCTIONS = {F.avg_pool2d, torch._C._nn.avg_pool2d}
_CONSTANT_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "__len__", "is_contiguous", "element_size",
                     "stride", "data_ptr", "get_device", "is_floating_point", "tolist", "item"}

# Ops whose CPU kernels round differently at some positions (see layers/pointwise.py), with
# the names of their parameters in call order.
_POSITION_FREE_FUNCTIONS: dict[Any, tuple[Callable[..., Tensor], tuple[str, ...]]] = {
    torch.sigmoid: (position_free.sigmoid, ()),
    F.sigmoid: (position_free.sigmoid, ()),
    "sigmoid": (position_free.sigmoid, ()),
    F.silu: (position_free.silu, ("inplace",)),
    F.softplus: (position_free.softplus, ("beta", "threshold")),
    F.mish: (position_free.mish, ("inplace",)),
    F.elu: (position_free.elu, ("alpha", "inplace")),
    F.selu: (position_free.selu, ("inplace",)),
    F.celu: (position_free.celu, ("alpha", "inplace")),
}
_POSITION_FREE_INPLACE_METHODS = {"sigmoid_": position_free.sigmoid}
_POSITION_FREE_MODULES: dict[type, tuple[Callable[..., Tensor], tuple[str, ...]]] = {
    nn.Sigmoid: (position_free.sigmoid, ()),
    nn.SiLU: (position_free.silu, ("inplace",)),
    nn.Softplus: (position_free.softplus, ("beta", "threshold")),
    nn.Mish: (position_free.mish, ("inplace",)),
    nn.ELU: (position_free.elu, ("alpha", "inplace")),
    nn.SELU: (position_free.selu, ("inplace",)),
    nn.CELU: (position_free.celu, ("alpha", "inplace")),
}

_POINTWISE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold,
    nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.RReLU, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.SyncBatchNorm, nn.LocalResponseNorm, nn.ChannelShuffle, nn.Softmax2d,
)
_NORM_REPLACEMENTS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.GroupNorm: ExactGroupNorm.from_module,
    nn.InstanceNorm2d: ExactInstanceNorm2d.from_module,
}
_ALREADY_EXACT = (ExactGlobalAvgPool2d, ExactGroupNorm, ExactInstanceNorm2d)


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Tensor)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape)


def _leaves(value: Any) -> list[Any]:
    out: list[Any] = []
    fx.node.map_aggregate(value, lambda v: out.append(v))
    return out


def _is_stochastic_depth(target: Any) -> bool:
    """torchvision's ``stochastic_depth`` (a per-sample or per-batch random scale)."""
    return getattr(target, "__name__", "") == "stochastic_depth" and \
        str(getattr(target, "__module__", "")).startswith("torchvision")


def _static_same_lead(module: nn.Conv2d) -> tuple[int, int] | None:
    """The leading padding of a conv whose forward zero-pads with a fixed ``static_padding``
    module and then runs ``F.conv2d`` with ``self.padding`` (TF "same" convs of EfficientNet
    ports such as smp's ``Conv2dStaticSamePadding``; smp's dilation sets ``static_padding`` to
    ``nn.Identity`` and ``padding`` instead), else ``None``. Its circular version pads
    circularly by the same leading amount."""
    static = getattr(module, "static_padding", None)
    if static is None or type(module).forward is nn.Conv2d.forward or isinstance(module.padding, str):
        return None
    top, left = as_pair(module.padding, "padding", 0)
    if isinstance(static, nn.ZeroPad2d) or (isinstance(static, nn.ConstantPad2d) and static.value == 0):
        return (top + static.padding[2], left + static.padding[0])
    return (top, left) if isinstance(static, nn.Identity) else None


def _same_pad_lead(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int]:
    """TF/timm "same" padding's leading side for sizes the stride divides."""
    return tuple(max((k - 1) * d + 1 - s, 0) // 2 for k, s, d in zip(kernel, stride, dilation))  # type: ignore[return-value]


class Analysis:
    """Analyse one graph of ``root`` with the probe values ``values``; see the module docs.

    Args:
        root: the model (deep copy) the graph was traced from.
        graph: the traced graph.
        values: every node's value on the probe input.
        method: ``"baseline"``, ``"mass"`` or ``"aps"``.
        antialias: a :class:`~.convert.Antialias` spec or ``None``.
        strict: raise on the first refusal; otherwise record it, keep the op and go on.
        replacements: module replacements shared by the graphs of all modes (path -> module).
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, values: dict[fx.Node, Any], *, method: str,
                 antialias: Any, strict: bool, replacements: dict[str, nn.Module]) -> None:
        self.root, self.graph, self.values = root, graph, values
        self.modules = dict(root.named_modules())
        self.method, self.antialias, self.strict = method, antialias, strict
        self.replacements = replacements
        self.plan = Plan(tracks_origins=method != "baseline")
        self.sampling = _SAMPLING[method]
        self.infos: dict[fx.Node, Any] = {}
        self.problems: list[ConversionError] = []
        self.pad_users: dict[fx.Node, int] = {}
        self.select_after: dict[fx.Node, tuple[tuple[int, int], str, int, int]] = {}
        self.full_resolution: dict[fx.Node, Spatial] = {}
        self.activation_input: dict[fx.Node, Spatial] = {}
        self.fidelity_checked: set[str] = set()

    # ------------------------------------------------------------------ driver
    def run(self) -> Plan:
        for node in self.graph.nodes:
            try:
                info = self.visit(node)
            except ConversionError as error:
                if self.strict or isinstance(error, ProbeTooSmall):
                    raise
                self.problems.append(error)
                self.plan.actions.pop(node, None)
                info = Broken(error.reason)
            if node in self.select_after and isinstance(info, Spatial):
                info = self.select_output(node, info)
            self.infos[node] = info
            node.meta["mass_info"] = info
        for node, info in self.full_resolution.items():
            node.meta["mass_info"] = info  # what these nodes compute now (before the selection)
        for pad, remaining in self.pad_users.items():
            if remaining:
                self.refuse(pad, "pads a feature map without a convolution or pooling right after it, which "
                                 "changes its size.", "Fold the padding into the next convolution's padding.")
        self.plan.finish()
        return self.plan

    def refuse(self, node: fx.Node, reason: str, hint: str = "") -> None:
        path = module_path(node) or "<top level>"
        op = op_name(node)
        raise ConversionError(f"{path} ({op})" if op != "module" else path, reason, hint)

    def info(self, value: Any) -> Any:
        """The description of an argument (a node, a constant, or a container of them)."""
        if isinstance(value, fx.Node):
            return self.infos[value]
        if isinstance(value, (list, tuple)):
            return type(value)(self.info(v) for v in value) if not hasattr(value, "_fields") else value
        return value

    def value(self, arg: Any) -> Any:
        return fx.node.map_arg(arg, lambda n: self.values[n])

    # ------------------------------------------------------------------ dispatch
    def visit(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.placeholder(node)
        if node.op == "get_attr":
            value = self.values[node]
            return Invariant() if _is_tensor(value) else value
        if node.op == "output":
            return self.output(node)
        infos = _leaves([self.info(a) for a in _leaves((node.args, node.kwargs))])
        if any(isinstance(i, Broken) for i in infos):
            return Broken()
        if node.op == "call_module":
            return self.call_module(node, self.modules[str(node.target)])
        return self.call_function(node)

    def placeholder(self, node: fx.Node) -> Any:
        value = self.values.get(node)
        if _is_tensor(value) and value.dim() == 4:
            return Spatial(h=2, w=3, size=(value.shape[2], value.shape[3]))
        if _is_tensor(value):
            return Invariant()
        return value

    def output(self, node: fx.Node) -> Any:
        return self.info(node.args[0])

    def spatial_inputs(self, node: fx.Node) -> list[Spatial]:
        infos = _leaves([self.info(a) for a in _leaves((node.args, node.kwargs))])
        return [i for i in infos if isinstance(i, Spatial)]

    def non_tensor_result(self, node: fx.Node) -> Any:
        """The result of an op with no position-dependent input."""
        value = self.values.get(node)
        if not any(_is_tensor(v) for v in _leaves(value)):
            return value
        return fx.node.map_aggregate(value, lambda v: Invariant() if _is_tensor(v) else v)

    # ------------------------------------------------------------------ modules
    def call_module(self, node: fx.Node, module: nn.Module) -> Any:
        path = str(node.target)
        x = self.info(node.args[0]) if node.args else None
        if isinstance(module, _ALREADY_EXACT):
            return self.reduce_like_module(node, x, module)
        if isinstance(module, EquivariantDownsample):
            return self.own_layer(node, module, x)
        if isinstance(module, nn.Conv2d):
            return self.conv_module(node, module, x, path)
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool_module(node, module, x, path)
        if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return self.adaptive_pool(node, x, module.output_size, isinstance(module, nn.AdaptiveAvgPool2d))
        if isinstance(module, tuple(_NORM_REPLACEMENTS)):
            return self.spatial_norm_module(node, module, x, path)
        if isinstance(module, nn.LayerNorm):
            return self.layer_norm(node, x, len(module.normalized_shape))
        if isinstance(module, (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)):
            return self.interpolate(node, x, module.mode, node.args[0], module.size, module.scale_factor)
        if isinstance(module, nn.ConvTranspose2d):
            return self.conv_transpose(node, module, x, path)
        if isinstance(module, nn.MaxUnpool2d):
            return self.max_unpool(node, node.args[0], node.args[1], as_pair(module.stride))
        if isinstance(module, nn.PixelShuffle):
            return self.pixel_shuffle(node, x, module.upscale_factor, Call(path, (node.args[0],), module=True))
        if isinstance(module, nn.PixelUnshuffle):
            return self.module_downsample(node, module, x, path, module.downscale_factor)
        space_to_depth = timm_types("SpaceToDepth")
        if space_to_depth and isinstance(module, space_to_depth):
            return self.module_downsample(node, module, x, path, module.bs)
        if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
                               nn.CircularPad2d)):
            return self.pad(node, x, tuple(module.padding))
        if isinstance(module, nn.PReLU) and isinstance(x, Spatial) and module.num_parameters > 1 and 1 in x.axes():
            self.refuse(node, "applies per-channel PReLU weights along a spatial axis.")
        if type(module) in _POSITION_FREE_MODULES or (isinstance(module, nn.GELU) and module.approximate == "tanh"):
            return self.position_free_module(node, module)
        if isinstance(module, (*_POINTWISE_MODULES, nn.PReLU)):
            return self.pointwise(node)
        if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)):
            return self.along_dim(node, x, module.dim)
        if isinstance(module, nn.Linear):
            result = self.linear(node, x)
            if isinstance(result, Spatial) and type(module).forward is nn.Linear.forward:
                bias = Attr(f"{path}.bias") if module.bias is not None else None
                self.plan.actions[node] = Call(position_free.linear, (node.args[0], Attr(f"{path}.weight"), bias))
            return result
        if isinstance(module, nn.Flatten):
            return self.reshape(node, x)
        if isinstance(module, nn.Unflatten):
            return self.reshape(node, x)
        if not self.spatial_inputs(node):
            return self.non_tensor_result(node)
        self.refuse(node, f"is a {type(module).__name__}, which is not known to be shift-equivariant.",
                    "Use it only on pooled (position-free) features, or replace it.")
        raise AssertionError  # unreachable

    def replace_module(self, path: str, new: nn.Module) -> nn.Module:
        existing = self.replacements.get(path)
        if existing is not None:
            return existing
        if hasattr(new, "name"):
            new.name = path
        self.replacements[path] = new
        return new

    # --- convolutions and poolings
    def conv_geometry(self, node: fx.Node, x: Any, kernel: tuple[int, int], stride: tuple[int, int],
                      dilation: tuple[int, int], padding: Any) -> tuple[Spatial, tuple[int, int] | str, fx.Node]:
        """Check that the op keeps ``H / s`` (circular padding cannot change what it computes
        otherwise); returns the spatial input, the leading padding and the input node (a padding
        in front folded in)."""
        source = node.args[0]
        if isinstance(x, _Padded):
            padding = x.fold(padding, kernel, dilation, node, self)
            source, x = x.source, x.info
        if not isinstance(x, Spatial) or x.h is None or x.w is None or x.flat is not None:
            raise _NotSpatial
        if (x.h, x.w) != (len(_shape(self.values[source])) - 2, len(_shape(self.values[source])) - 1):
            self.refuse(node, "runs on a tensor whose last two axes are not its spatial axes.")
        height, width = x.size
        if height % stride[0] or width % stride[1]:
            raise ProbeTooSmall(f"{module_path(node)}: the probe's {height}x{width} map is not divisible by the "
                                f"stride {stride[0]}x{stride[1]}.")
        out = _shape(self.values[node] if _is_tensor(self.values[node]) else self.values[node][0])
        if tuple(out[-2:]) != (height // stride[0], width // stride[1]):
            self.refuse(
                node,
                f"maps {height}x{width} to {out[-2]}x{out[-1]} instead of {height // stride[0]}x{width // stride[1]}: "
                "valid (unpadded) convolutions and poolings shrink maps, and no circular op computes that.",
                "Give it padding (kernel_size // 2 for odd kernels) and fine-tune, or refuse this model.",
            )
        if padding == "valid" or padding is None:
            padding = (0, 0)
        return x, padding, source

    def conv_module(self, node: fx.Node, module: nn.Conv2d, x: Any, path: str) -> Any:
        stride, dilation = as_pair(module.stride), as_pair(module.dilation, "dilation")
        same_types = timm_types("Conv2dSame")
        dynamic_same = isinstance(module, same_types) or bool(getattr(module, "same_pad", False))
        padding: Any = _same_pad_lead(module.kernel_size, stride, dilation) if dynamic_same else module.padding
        static_lead = _static_same_lead(module)
        if static_lead is not None:
            padding = static_lead
        try:
            x, lead, source = self.conv_geometry(node, x, module.kernel_size, stride, dilation, padding)
        except _NotSpatial:
            return self.non_spatial_op(node, x)
        own_forward = None if not (isinstance(module, same_types) or static_lead is not None) else False
        strided = stride != (1, 1)
        if strided and self.method == "aps_official":
            activation = self.bn_activation_after(node)
            if activation is not None:
                return self.official_aps_conv(node, module, x, path, lead, source, stride, activation, own_forward)
        method = self.method if strided else "baseline"
        filt = self.antialias.build(module.out_channels if self.antialias.kind == "ddac" else module.in_channels) \
            if (self.antialias is not None and strided) else None
        new = self.replace_module(path, _CONV[method].from_conv(module, antialias=filt, padding=tuple(lead) if not
                                  isinstance(lead, str) else lead, own_forward=own_forward))
        if getattr(new, "_own_forward", None) is not None:
            self.check_fidelity(node, module, new, source, stride)
        return self.downsampled(node, x, stride, Call(path, (source,), module=True), "module")

    def bn_activation_after(self, node: fx.Node) -> fx.Node | None:
        """The activation node of a ``conv -> BatchNorm -> activation`` chain, if ``node`` starts one."""
        def only_user(n: fx.Node) -> fx.Node | None:
            users = list(n.users)
            return users[0] if len(users) == 1 else None

        bn = only_user(node)
        if bn is None or not ((bn.op == "call_module" and isinstance(self.modules.get(str(bn.target)),
                                                                      nn.modules.batchnorm._BatchNorm))
                              or bn.target is F.batch_norm):
            return None
        act = only_user(bn)
        if act is None:
            return None
        if act.op == "call_module" and isinstance(self.modules.get(str(act.target)), _ACTIVATION_MODULES):
            return act
        if act.op in ("call_function", "call_method") and act.target in _ACTIVATION_FUNCTIONS:
            return act
        return None

    def official_aps_conv(self, node: fx.Node, module: nn.Conv2d, x: Spatial, path: str, lead: Any,
                          source: fx.Node, stride: tuple[int, int], activation: fx.Node,
                          own_forward: bool | None) -> Spatial:
        """The official APS code's placement: the conv at stride 1, BatchNorm and activation at
        full resolution, then the polyphase selection (after its blur, with LPF). The chain is
        described at the selected resolution (as the probe computed it), and its values before
        the selection at full resolution (:attr:`full_resolution`)."""
        if self.antialias is not None and self.antialias.kind == "ddac":
            self.refuse(node, "aps_official is defined without anti-aliasing or with LPF only (the official APS "
                              "code has no DDAC).", "Use method='aps' with DDAC.")
        new = CircularConv2d.from_conv(module, padding=tuple(lead) if not isinstance(lead, str) else lead,
                                       own_forward=own_forward)
        new.stride = (1, 1)
        self.replace_module(path, new)
        self.plan.actions[node] = COPY if source is node.args[0] else Call(path, (source,), module=True)
        blur = self.antialias.kernel_size if self.antialias is not None else 1
        down = self.downsampled(node, x, stride, Call(path, (source,), module=True), "module")
        self.plan.actions[node] = COPY if source is node.args[0] else Call(path, (source,), module=True)
        group = down.phase[-1].group
        self.select_after[activation] = (stride, f"{path} (APS after its BatchNorm and activation)", blur, group)
        bn = next(iter(node.users))
        self.full_resolution.update({node: x, bn: x})
        self.activation_input[activation] = x
        return down

    def select_output(self, node: fx.Node, info: Spatial) -> Spatial:
        stride, name, blur, group = self.select_after[node]
        call = Call(polyphase_select, (node, stride, blur), {"name": name})
        self.plan.actions[node] = CopyThenSelect(call, group, before=self.activation_input[node])
        return info

    def check_fidelity(self, node: fx.Node, original: nn.Module, new: CircularConv2d, source: fx.Node,
                       stride: tuple[int, int]) -> None:
        """A conv with a forward of its own must compute, made circular, what it computed:
        on the probe's map tiled 3x3, the original's centre crop equals the circular result."""
        path = str(node.target)
        if path in self.fidelity_checked:
            return
        self.fidelity_checked.add(path)
        x = self.values[source]
        if not _is_tensor(x) or x.dim() != 4:
            return
        height, width = x.shape[-2:]
        with torch.no_grad():
            tiled = x.repeat(1, 1, 3, 3)
            reference = original(tiled)[..., height // stride[0]: 2 * height // stride[0],
                                        width // stride[1]: 2 * width // stride[1]]
            baseline = CircularConv2d.from_conv(original, padding=new.padding, own_forward=True)
            ours = baseline(x)
        scale = reference.abs().amax().clamp(min=1e-6)
        if reference.shape != ours.shape or not bool(((reference - ours).abs().amax() <= 1e-4 * scale)):
            self.refuse(node, f"is a {type(original).__name__} whose forward cannot be made circular: run on a "
                              "circularly padded input it does not compute what it computed before.",
                        "Write its forward with F.conv2d and self.padding, or replace it by an nn.Conv2d.")

    def pool_module(self, node: fx.Node, module: nn.Module, x: Any, path: str) -> Any:
        is_max = isinstance(module, nn.MaxPool2d)
        same_types = timm_types("MaxPool2dSame", "AvgPool2dSame")
        if type(module).forward not in (nn.MaxPool2d.forward, nn.AvgPool2d.forward) and \
                not isinstance(module, same_types):
            self.refuse(node, f"is a {type(module).__name__} with a forward of its own, which the conversion "
                              "cannot make circular.", "Use nn.MaxPool2d / nn.AvgPool2d.")
        kernel = as_pair(module.kernel_size, "kernel_size")
        stride = as_pair(module.stride if module.stride else module.kernel_size)
        dilation = as_pair(getattr(module, "dilation", 1), "dilation")
        padding: Any = _same_pad_lead(kernel, stride, dilation) if isinstance(module, same_types) else \
            as_pair(module.padding, "padding", 0)
        try:
            x, lead, source = self.conv_geometry(node, x, kernel, stride, dilation, padding)
        except _NotSpatial:
            return self.non_spatial_op(node, x)
        strided = stride != (1, 1)
        method = self.method if strided else "baseline"
        filt = self.antialias.build(0) if (self.antialias is not None and strided and self.antialias.kind == "lpf") \
            else None
        if self.antialias is not None and strided and self.antialias.kind == "ddac":
            channels = _shape(self.values[source])[1]
            filt = self.antialias.build(channels)
        table = _MAX if is_max else _AVG
        new = self.replace_module(path, table[method].from_pool(module, antialias=filt, padding=tuple(lead)))
        out = self.downsampled(node, x, stride, Call(path, (source,), module=True), "module")
        if is_max and getattr(new, "return_indices", False):
            spatial = out
            term = spatial.phase[-1] if strided else None
            return (spatial, PoolIndices(x, term) if term is not None else Broken("indices of a stride-1 pool"))
        return out

    def downsampled(self, node: fx.Node, x: Spatial, stride: tuple[int, int], call: Call, kind: str,
                    level: bool = False) -> Spatial:
        """The output description of a (possibly strided) op at ``stride``; records the action.
        ``level`` makes a level (an origin group) even at stride 1."""
        if stride == (1, 1) and not level:
            self.plan.actions[node] = call if kind == "function" else COPY if call.args == tuple(node.args[:1]) \
                else call
            return x.moved(size=x.size)
        group = self.plan.groups.new()
        self.plan.actions[node] = Downsample(call, group)
        term = Term(group, x.stride, stride)
        size = (x.size[0] // stride[0], x.size[1] // stride[1])
        return x.moved(size=size, stride=(x.stride[0] * stride[0], x.stride[1] * stride[1]), phase=x.phase + (term,))

    def module_downsample(self, node: fx.Node, module: nn.Module, x: Any, path: str, factor: int) -> Any:
        """A lossless rearrangement (space-to-depth): MASS around the module."""
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        stride = as_pair(factor)
        x, _, source = self.conv_geometry(node, x, stride, stride, (1, 1), (0, 0))
        if self.method != "baseline":
            self.replace_module(path, MASSDownsample(module, stride))
        return self.downsampled(node, x, stride, Call(path, (source,), module=True), "module")

    def own_layer(self, node: fx.Node, module: EquivariantDownsample, x: Any) -> Any:
        """One of this library's layers already in the model: keep it, track its phase."""
        if node.kwargs.get("origin") is not None or node.kwargs.get("return_origin"):
            self.refuse(node, "is a mass_lightning layer called with explicit origins; the conversion cannot "
                              "follow origins wired by hand.", "Convert the plain model instead.")
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        stride = module._stride_pair()
        x, _, source = self.conv_geometry(node, x, stride, stride, (1, 1), (0, 0))
        if module.sampling == "fixed" or stride == (1, 1):
            return x.moved(size=(x.size[0] // stride[0], x.size[1] // stride[1]),
                           stride=(x.stride[0] * stride[0], x.stride[1] * stride[1]))
        return self.downsampled(node, x, stride, Call(str(node.target), (source,), module=True), "module")

    def adaptive_pool(self, node: fx.Node, x: Any, output_size: Any, average: bool, module_path: str | None = None,
                      ) -> Any:
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        sizes = (output_size, output_size) if isinstance(output_size, int) or output_size is None else \
            tuple(output_size)
        if any(size not in (None, 1) for size in sizes):
            return self.binned_pool(node, x, sizes, average)
        axes = [axis for size, axis in zip(sizes, (x.h, x.w)) if size is not None]
        if average:
            self.plan.actions[node] = Call(exact_mean, (node.args[0], tuple(axes)), {"keepdim": True})
        return self.reduced(x, axes, keepdim=True)

    def binned_pool(self, node: fx.Node, x: Spatial, sizes: tuple[Any, ...], average: bool) -> Any:
        """Adaptive pooling into fixed bins: a MASS-sampled pooling when the bins tile the map."""
        if None in sizes or x.h is None or x.w is None or x.flat is not None:
            self.refuse(node, f"pools to a fixed {sizes} grid along one axis only.")
        bins = (int(sizes[0]), int(sizes[1]))
        height, width = x.size
        if height % bins[0] or width % bins[1]:
            need = (x.stride[0] * bins[0], x.stride[1] * bins[1])
            self.refuse(node, f"pools a {height}x{width} map to a fixed {bins[0]}x{bins[1]} grid. That is "
                              "shift-equivariant only when the bins tile the map (then it is a pooling whose "
                              "phase MASS chooses), and a flattening classifier after it would still see "
                              "positions.", f"For pyramid pooling use inputs whose sides are multiples of the "
                              f"pooled map's stride times the bins (here at least {need[0]}x{need[1]}) and pass "
                              "such an example_input; for classifiers use a global pool.")
        stride = (height // bins[0], width // bins[1])
        call = Call(equivariant_adaptive_pool2d, (node.args[0], bins),
                    {"average": average, "sampling": _SAMPLING[self.method],
                     "name": f"{module_path(node) or 'model'} (adaptive pooling)"})
        out = self.downsampled(node, x, stride, call, "function", level=True)
        term = out.phase[-1]
        return out.moved(phase=out.phase[:-1] + (Term(term.group, term.in_stride, term.step, bins),))

    def reduced(self, x: Spatial, axes: list[int], keepdim: bool) -> Any:
        remaining = {"h": x.h, "w": x.w}
        if x.flat is not None:
            return Invariant() if x.flat in axes else x
        for name in ("h", "w"):
            if remaining[name] in axes:
                remaining[name] = None
        if remaining["h"] is None and remaining["w"] is None:
            return Invariant()
        if not keepdim:
            for name in ("h", "w"):
                if remaining[name] is not None:
                    remaining[name] -= sum(1 for a in axes if a < remaining[name])
        return x.moved(**remaining)

    def reduce_like_module(self, node: fx.Node, x: Any, module: nn.Module) -> Any:
        if isinstance(module, ExactGlobalAvgPool2d):
            return Invariant() if isinstance(x, Spatial) else self.non_tensor_result(node)
        return self.info(node.args[0])

    def spatial_norm_module(self, node: fx.Node, module: nn.Module, x: Any, path: str) -> Any:
        if isinstance(x, Spatial):
            replacement = _NORM_REPLACEMENTS[next(t for t in _NORM_REPLACEMENTS if isinstance(module, t))]
            if type(module).forward not in (nn.GroupNorm.forward, nn.InstanceNorm2d.forward):
                self.refuse(node, f"is a {type(module).__name__} with a forward of its own.")
            if not (isinstance(module, nn.InstanceNorm2d) and module.track_running_stats):
                self.replace_module(path, replacement(module))
            return x
        return self.non_tensor_result(node)

    def layer_norm(self, node: fx.Node, x: Any, normalized_dims: int) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        ndim = len(_shape(self.values[node.args[0]]))
        if any(a >= ndim - normalized_dims for a in x.axes()):
            self.refuse(node, "normalises over spatial axes with a LayerNorm, whose per-position weights and "
                              "order-dependent statistics are not shift-equivariant.",
                        "Normalise over channels only (LayerNorm on channels-last maps, or GroupNorm).")
        return x

    def conv_transpose(self, node: fx.Node, module: nn.ConvTranspose2d, x: Any, path: str) -> Any:
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        stride = as_pair(module.stride)
        out = _shape(self.values[node])
        if tuple(out[-2:]) != (x.size[0] * stride[0], x.size[1] * stride[1]):
            self.refuse(node, f"maps {x.size[0]}x{x.size[1]} to {out[-2]}x{out[-1]} instead of "
                              f"{x.size[0] * stride[0]}x{x.size[1] * stride[1]}, which no circular op computes.")
        self.replace_module(path, MASSConvTranspose2d.from_module(module))
        return self.upsampled(node, x, stride, Call(path, (node.args[0],), module=True), origin_kwarg="origin")

    def max_unpool(self, node: fx.Node, values: Any, indices: Any, stride: tuple[int, int]) -> Any:
        x, idx = self.info(values), self.info(indices)
        if not isinstance(x, Spatial) or not isinstance(idx, PoolIndices):
            self.refuse(node, "max-unpools with indices that do not come from a max-pool of this model.")
        pooled = idx.source
        expected = pooled.phase + (idx.term,)
        self.unify(node, x.phase, expected)
        call = Call(max_unpool2d_at, (values, indices, stride))
        if self.plan.tracks_origins:
            self.plan.actions[node] = Upsample(call, [(idx.term, (1, 1))], origin_kwarg="origin")
        else:
            self.plan.actions[node] = call
        return pooled

    def pixel_shuffle(self, node: fx.Node, x: Any, factor: int, call: Call) -> Any:
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        return self.upsampled(node, x, (factor, factor), call)

    # ------------------------------------------------------------------ upsampling
    def upsampled(self, node: fx.Node, x: Spatial, scale: tuple[int, int], call: Call,
                  origin_kwarg: str | None = None) -> Spatial:
        """An upsampling by ``scale``: output at ``stride / scale``, its origins undone."""
        target = (x.stride[0] // scale[0], x.stride[1] // scale[1])
        if x.stride[0] % scale[0] or x.stride[1] % scale[1]:
            self.refuse(node, f"upsamples a map of stride {x.stride} by {scale}, beyond the input's resolution, "
                              "where no phase can be tracked.")
        prefix, stride = [], (1, 1)
        for term in x.phase:
            if stride == target:
                break
            prefix.append(term)
            stride = (stride[0] * term.step[0], stride[1] * term.step[1])
        if stride != target:
            self.refuse(node, f"upsamples to stride {target}, which is not the stride of any earlier level "
                              f"(levels: {[t.in_stride for t in x.phase]}).")
        undo = [(t, (t.in_stride[0] // target[0], t.in_stride[1] // target[1])) for t in x.phase[len(prefix):]]
        self.plan.actions[node] = Upsample(call, undo, origin_kwarg) if undo else call
        size = (x.size[0] * scale[0], x.size[1] * scale[1])
        return x.moved(size=size, stride=target, phase=tuple(prefix))

    def interpolate(self, node: fx.Node, x: Any, mode: str, source: fx.Node, size: Any, scale: Any) -> Any:
        """Any interpolation (``align_corners`` has no meaning on a torus and is dropped)."""
        out = _shape(self.values[node])
        if isinstance(x, Invariant):
            in_shape = _shape(self.values[source])
            if in_shape[-2:] == (1, 1):
                if size is not None:
                    kwargs = {"size": size}
                else:
                    factors = (scale, scale) if not isinstance(scale, (tuple, list)) else scale
                    kwargs = {"scale": (int(factors[0]), int(factors[1]))}
                self.plan.actions[node] = Call(broadcast_upsample, (source,), kwargs)
                return Invariant(uniform=True)
            return self.non_tensor_result(node)
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        scale = (out[-2] / x.size[0], out[-1] / x.size[1])
        if scale == (1.0, 1.0):
            return x
        if any(s != int(s) or s < 1 for s in scale):
            self.refuse(node, f"resizes {x.size[0]}x{x.size[1]} to {out[-2]}x{out[-1]}, not by an integer "
                              "factor, which no circular op computes.", "Use integer up-sampling factors.")
        if mode not in ("nearest", "nearest-exact", "bilinear", "bicubic"):
            self.refuse(node, f"interpolates with mode {mode!r}, which has no circular counterpart here.")
        factor = (int(scale[0]), int(scale[1]))
        dynamic = any(term.bins is not None for term in x.phase)
        if dynamic and size is not None:
            return self.upsampled(node, x, factor, Call(circular_resize, (source, size, mode)))
        if dynamic:
            self.refuse(node, "upsamples a pyramid-pooled map by a fixed factor; its size depends on the input.",
                        "Upsample to the size of the map it is merged with (size=...).")
        return self.upsampled(node, x, factor, Call(circular_upsample, (source, factor, mode)))

    # ------------------------------------------------------------------ functions
    def call_function(self, node: fx.Node) -> Any:
        target = node.target
        spatial = self.spatial_inputs(node)
        method = node.op == "call_method"
        if method and target in _CONSTANT_METHODS:
            return self.non_tensor_result(node)
        if target in (F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest):
            mode = self._arg(node, 3, "mode", "nearest") if target in (F.interpolate, F.upsample) else \
                ("bilinear" if target is F.upsample_bilinear else "nearest")
            return self.interpolate(node, self.info(node.args[0]), mode, node.args[0], self._arg(node, 1, "size"),
                                    self._arg(node, 2, "scale_factor"))
        if not spatial and not any(isinstance(i, (_Padded, PoolIndices)) for i in
                                   _leaves([self.info(a) for a in _leaves((node.args, node.kwargs))])):
            return self.invariant_function(node)
        if target is operator.getitem:
            return self.getitem(node)
        if target in _POSITION_FREE_FUNCTIONS and (target != "sigmoid" or method) or \
                (method and target in _POSITION_FREE_INPLACE_METHODS) or (target is F.gelu and
                                                                         self._arg(node, 1, "approximate") == "tanh"):
            return self.position_free_function(node)
        if target in _POINTWISE_FUNCTIONS or (method and target in _POINTWISE_METHODS) or _is_stochastic_depth(target):
            return self.pointwise(node)
        if target in _SHAPE_FUNCTIONS or (method and target in _SHAPE_METHODS) or target is getattr:
            return self.reshape(node, self.info(node.args[0]))
        if (method and target in _EXPAND_METHODS) or target is torch.broadcast_to:
            return self.expand(node, self.info(node.args[0]))
        if target in _REDUCE_SUM or target in _REDUCE_EXACT:
            return self.reduction(node, self.info(node.args[0]))
        if target in _CAT:
            return self.concatenate(node)
        if target in _SPLIT_FUNCTIONS or (method and target in _SPLIT_METHODS):
            return self.split(node, self.info(node.args[0]))
        if target in _DIM_POINTWISE:
            return self.along_dim(node, self.info(node.args[0]), self._arg(node, 1, "dim"))
        if target in (F.conv2d, torch.conv2d):
            return self.functional_conv(node)
        if target in _MAX_POOL_FUNCTIONS or target in _AVG_POOL_FUNCTIONS:
            return self.functional_pool(node, target in _MAX_POOL_FUNCTIONS)
        if target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, torch.adaptive_avg_pool1d):
            return self.adaptive_pool(node, self.info(node.args[0]), self._arg(node, 1, "output_size"),
                                      target is F.adaptive_avg_pool2d)
        if target in (F.pad, torch.constant_pad_nd):
            return self.pad(node, self.info(node.args[0]), tuple(self.value(self._arg(node, 1, "pad"))))
        if target in (torch.roll,) or (method and target == "roll"):
            return self.roll(node, self.info(node.args[0]))
        if target in (F.pixel_shuffle, torch.pixel_shuffle):
            factor = self.value(self._arg(node, 1, "upscale_factor"))
            x = self.info(node.args[0])
            return self.pixel_shuffle(node, x, factor, Call(target, tuple(node.args), dict(node.kwargs)))
        if target in (F.pixel_unshuffle, torch.pixel_unshuffle):
            self.refuse(node, "is a functional pixel_unshuffle; use nn.PixelUnshuffle so it can be wrapped.")
        if target is F.conv_transpose2d:
            return self.functional_conv_transpose(node)
        if target is F.max_unpool2d:
            return self.max_unpool(node, node.args[0], node.args[1], as_pair(self.value(self._arg(node, 2,
                                                                                                "kernel_size"))))
        if target in (F.group_norm,):
            return self.functional_group_norm(node)
        if target in (F.instance_norm,):
            return self.functional_instance_norm(node)
        if target in (F.layer_norm,):
            return self.layer_norm(node, self.info(node.args[0]), len(self.value(self._arg(node, 1,
                                                                                            "normalized_shape"))))
        if target in (F.batch_norm, F.prelu):
            return self.channel_affine(node, self.info(node.args[0]))
        if target in (F.linear,):
            result = self.linear(node, self.info(node.args[0]))
            if isinstance(result, Spatial):
                self.plan.actions[node] = Call(position_free.linear, (node.args[0], self._arg(node, 1, "weight"),
                                                                     self._arg(node, 2, "bias")))
            return result
        if target in (torch.matmul, operator.matmul, torch.bmm, torch.einsum) or (method and target in
                                                                                    ("matmul", "bmm", "__matmul__")):
            return self.matmul(node)
        if target in _FACTORY_UNIFORM or (method and target in _FACTORY_METHODS_UNIFORM):
            return Invariant(uniform=True)
        if target in (builtins.len, builtins.isinstance, builtins.getattr):
            return self.non_tensor_result(node)
        self.refuse(node, f"uses {op_name(node)} on a feature map, which the conversion does not know how to "
                          "make shift-equivariant.",
                    "Use it only on pooled features, express it with supported ops, or open an issue.")
        raise AssertionError  # unreachable

    def _arg(self, node: fx.Node, index: int, name: str, default: Any = None) -> Any:
        if len(node.args) > index:
            return node.args[index]
        return node.kwargs.get(name, default)

    def invariant_function(self, node: fx.Node) -> Any:
        if node.target in _FACTORY_UNIFORM or (node.op == "call_method" and node.target in _FACTORY_METHODS_UNIFORM):
            return Invariant(uniform=True)
        infos = [self.info(a) for a in _leaves((node.args, node.kwargs))]
        result = self.non_tensor_result(node)
        tensors = [i for i in infos if isinstance(i, Invariant)]
        pointwise = node.target in _POINTWISE_FUNCTIONS or (node.op == "call_method" and
                                                            node.target in _POINTWISE_METHODS | _SHAPE_METHODS)
        if tensors and all(i.uniform for i in tensors) and pointwise and isinstance(result, Invariant):
            return Invariant(uniform=True)
        return result

    def non_spatial_op(self, node: fx.Node, x: Any) -> Any:
        """A conv/pool on a value that does not move with the input (a pooled vector)."""
        if isinstance(x, (Spatial, _Padded)):
            self.refuse(node, "runs on a flattened or permuted feature map.")
        return self.non_tensor_result(node)

    # --- elementwise and merges
    def pointwise(self, node: fx.Node) -> Any:
        """Elementwise ops and merges: spatial inputs must align and have one phase."""
        out_value = self.values[node]
        if not _is_tensor(out_value) or not self.spatial_inputs(node):
            return self.invariant_function(node)
        out_ndim = out_value.dim()
        spatial: list[Spatial] = []
        for arg in _leaves((node.args, node.kwargs)):
            info = self.info(arg)
            if isinstance(info, (_Padded, PoolIndices)):
                self.refuse(node, "uses padded maps or pooling indices in an elementwise op.")
            if isinstance(info, Spatial):
                shift = out_ndim - self.values[arg].dim()
                spatial.append(info.moved(h=None if info.h is None else info.h + shift,
                                          w=None if info.w is None else info.w + shift,
                                          flat=None if info.flat is None else info.flat + shift))
        base = spatial[0]
        for other in spatial[1:]:
            if other.flat != base.flat or (other.h not in (None, base.h) and base.h is not None) or \
                    (other.w not in (None, base.w) and base.w is not None):
                self.refuse(node, "combines feature maps whose spatial axes do not line up.")
            if other.stride != base.stride:
                self.refuse(node, f"combines maps of strides {base.stride} and {other.stride}.")
            self.unify(node, base.phase, other.phase)
            base = base.moved(h=base.h if base.h is not None else other.h, w=base.w if base.w is not None else other.w)
        axes = base.axes()
        for arg in _leaves((node.args, node.kwargs)):
            info = self.info(arg)
            if isinstance(info, Invariant) and not info.uniform:
                shape = _shape(self.values[arg])
                shift = out_ndim - len(shape)
                if any(0 <= a - shift < len(shape) and shape[a - shift] != 1 for a in axes):
                    self.refuse(node, "adds or multiplies a tensor that depends on the absolute position (for example "
                                      "a learned position embedding), which cannot be shift-equivariant.",
                                "Remove the absolute position embedding, or use a relative one.")
        size = tuple(out_value.shape[a] for a in (base.h, base.w) if a is not None)
        return base.moved(size=base.size if len(size) != 2 else size)

    def unify(self, node: fx.Node, a: tuple[Term, ...], b: tuple[Term, ...]) -> None:
        """Make two phases equal by merging origin groups, or refuse."""
        groups = self.plan.groups
        if len(a) != len(b):
            self.refuse(node, "merges branches that downsample a different number of times.")
        for ta, tb in zip(a, b):
            if (ta.in_stride, ta.step, ta.bins) != (tb.in_stride, tb.step, tb.bins):
                self.refuse(node, f"merges branches that downsample differently (stride {ta.step} after "
                                  f"{ta.in_stride} against {tb.step} after {tb.in_stride}).")
            groups.union(ta.group, tb.group)

    def concatenate(self, node: fx.Node) -> Any:
        dim = self._arg(node, 1, "dim", 0)
        tensors = node.args[0]
        out_value = self.values[node]
        for arg in tensors:
            info = self.info(arg)
            if isinstance(info, Spatial):
                ndim = self.values[arg].dim()
                axis = dim % ndim if node.target is not torch.stack else dim % (ndim + 1)
                if axis in info.axes():
                    if info.flat is not None:
                        self.refuse(node, "adds a token to the flattened positions (a class token, as vision "
                                          "transformers do); tokens and absolute position embeddings are not "
                                          "shift-equivariant.", "Use a CNN, or pool the tokens without a class token.")
                    self.refuse(node, "concatenates maps along a spatial axis.")
        if node.target is torch.stack:
            result = self.pointwise_like_stack(node, dim)
            return result
        return self.pointwise(node) if _is_tensor(out_value) else self.non_tensor_result(node)

    def pointwise_like_stack(self, node: fx.Node, dim: int) -> Any:
        infos = [self.info(a) for a in node.args[0]]
        spatial = [i for i in infos if isinstance(i, Spatial)]
        base = spatial[0]
        for other in spatial[1:]:
            if other.axes() != base.axes() or other.stride != base.stride:
                self.refuse(node, "stacks maps whose spatial axes or strides differ.")
            self.unify(node, base.phase, other.phase)
        ndim = self.values[node].dim()
        axis = dim % ndim

        def move(a: int | None) -> int | None:
            return None if a is None else a + (1 if a >= axis else 0)

        return base.moved(h=move(base.h), w=move(base.w), flat=move(base.flat))

    def split(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        target = node.target
        dim = self._arg(node, 2, "dim", 0) if target not in ("unbind", torch.unbind) else self._arg(node, 1, "dim", 0)
        ndim = self.values[node.args[0]].dim()
        axis = dim % ndim
        if axis in x.axes():
            self.refuse(node, "splits a map along a spatial axis.")
        parts = self.values[node]
        if target in ("unbind", torch.unbind):
            def drop(a: int | None) -> int | None:
                return None if a is None else a - (1 if a > axis else 0)
            return type(parts)(x.moved(h=drop(x.h), w=drop(x.w), flat=drop(x.flat)) for _ in parts)
        return type(parts)(x for _ in parts)

    def along_dim(self, node: fx.Node, x: Any, dim: Any) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        ndim = self.values[node.args[0]].dim()
        if dim is None or (dim % ndim) in x.axes():
            self.refuse(node, "normalises or accumulates along a spatial axis.")
        target = node.target
        module = self.modules.get(str(target)) if node.op == "call_module" else None
        softmax = target in (F.softmax, torch.softmax, "softmax") or isinstance(module, nn.Softmax)
        log_softmax = target in (F.log_softmax, torch.log_softmax, "log_softmax") or isinstance(module, nn.LogSoftmax)
        if softmax or log_softmax:
            fn = position_free.softmax if softmax else position_free.log_softmax
            self.plan.actions[node] = Call(fn, (node.args[0], dim % ndim))
        elif target in (torch.cumsum, torch.cumprod, "cumsum", "cumprod"):
            self.refuse(node, "accumulates along channels with a kernel that rounds differently by position.")
        return x

    def position_free_module(self, node: fx.Node, module: nn.Module) -> Any:
        """An activation module whose kernel rounds by position: the position-free function."""
        result = self.pointwise(node)
        if isinstance(result, Spatial):
            if isinstance(module, nn.GELU):
                self.plan.actions[node] = Call(position_free.gelu_tanh, (node.args[0],))
            else:
                fn, names = _POSITION_FREE_MODULES[type(module)]
                self.plan.actions[node] = Call(fn, (node.args[0],), {n: getattr(module, n) for n in names})
        return result

    def position_free_function(self, node: fx.Node) -> Any:
        """A functional activation whose kernel rounds by position: the position-free function."""
        result = self.pointwise(node)
        if not isinstance(result, Spatial):
            return result
        target = node.target
        if target is F.gelu:
            self.plan.actions[node] = Call(position_free.gelu_tanh, (node.args[0],))
        elif node.op == "call_method" and target in _POSITION_FREE_INPLACE_METHODS:
            self.plan.actions[node] = Call(_POSITION_FREE_INPLACE_METHODS[target], (node.args[0],), {"inplace": True})
        else:
            fn, names = _POSITION_FREE_FUNCTIONS[target]
            kwargs = {name: self.value(self._arg(node, i + 1, name)) for i, name in enumerate(names)
                      if self._arg(node, i + 1, name) is not None}
            self.plan.actions[node] = Call(fn, (node.args[0],), kwargs)
        return result

    def channel_affine(self, node: fx.Node, x: Any) -> Any:
        """Ops whose parameters broadcast along axis 1 (batch norm, PReLU)."""
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        if 1 in x.axes():
            self.refuse(node, "applies per-channel parameters along a spatial axis.")
        return x

    def linear(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        ndim = self.values[node.args[0]].dim()
        if ndim - 1 in x.axes():
            what = "all positions flattened" if x.flat is not None else "a spatial axis"
            self.refuse(node, f"is a linear layer over {what}: a flattening classifier sees where things are.",
                        "Pool globally before the classifier.")
        return x

    def matmul(self, node: fx.Node) -> Any:
        a, b = (self.info(v) for v in node.args[:2]) if node.target is not torch.einsum else (None, None)
        if node.target is torch.einsum:
            self.refuse(node, "mixes positions with einsum (attention).")
        if isinstance(a, Spatial) and a.axes() and max(a.axes()) >= self.values[node.args[0]].dim() - 1:
            self.refuse(node, "contracts over positions (attention or a spatial matrix product).")
        if isinstance(b, Spatial) and b.axes() and min(b.axes()) >= self.values[node.args[1]].dim() - 2:
            self.refuse(node, "contracts over positions (attention or a spatial matrix product).")
        if isinstance(a, Spatial) and isinstance(b, Spatial):
            self.refuse(node, "multiplies two feature maps as matrices (attention).")
        spatial = a if isinstance(a, Spatial) else b
        return spatial

    # --- shapes and indexing
    def reshape(self, node: fx.Node, x: Any) -> Any:
        if node.target is getattr:
            return self.non_tensor_result(node)
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        in_shape = _shape(self.values[node.args[0]])
        out_shape = _shape(self.values[node])
        target = node.target
        if target in ("permute", torch.permute, "transpose", torch.transpose, "swapaxes", torch.swapaxes, "t",
                      torch.t, "movedim", torch.movedim, "mT", "transpose_"):
            order = self._permutation(node, len(in_shape))
            where = {old: new for new, old in enumerate(order)}
            return x.moved(h=None if x.h is None else where[x.h], w=None if x.w is None else where[x.w],
                           flat=None if x.flat is None else where[x.flat])
        moved = map_reshape(x, in_shape, out_shape)
        if moved is None:
            self.refuse(node, f"reshapes {tuple(in_shape)} to {tuple(out_shape)}, mixing positions with other axes "
                              "(for example positions into channels, or windows).",
                        "Keep the spatial axes intact (pool first), or use a space-to-depth layer.")
        return moved

    def _permutation(self, node: fx.Node, ndim: int) -> list[int]:
        target = node.target
        args = [self.value(a) for a in node.args[1:]]
        if target in ("permute", torch.permute):
            dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
            dims = dims or self.value(node.kwargs.get("dims"))
            return [d % ndim for d in dims]
        order = list(range(ndim))
        if target in ("t", torch.t, "mT"):
            a, b = ndim - 2, ndim - 1
        elif target in ("movedim", torch.movedim):
            src, dst = (args + [node.kwargs.get("source"), node.kwargs.get("destination")])[:2]
            item = order.pop(src % ndim)
            order.insert(dst % ndim, item)
            return order
        else:
            a, b = (args + [node.kwargs.get("dim0"), node.kwargs.get("dim1")])[:2]
            a, b = a % ndim, b % ndim
        order[a], order[b] = order[b], order[a]
        return order

    def expand(self, node: fx.Node, x: Any) -> Any:
        if isinstance(x, Invariant):
            in_shape = _shape(self.values[node.args[0]])
            out_shape = _shape(self.values[node])
            if len(in_shape) == len(out_shape) and any(i == 1 and o != 1 for i, o in zip(in_shape, out_shape)):
                return Invariant(uniform=True) if all(i in (1, o) for i, o in zip(in_shape, out_shape)) else x
            return x
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        in_shape, out_shape = _shape(self.values[node.args[0]]), _shape(self.values[node])
        shift = len(out_shape) - len(in_shape)
        for axis in x.axes():
            if out_shape[axis + shift] != in_shape[axis]:
                self.refuse(node, "tiles a map along a spatial axis.")
        new = x.moved(h=None if x.h is None else x.h + shift, w=None if x.w is None else x.w + shift,
                      flat=None if x.flat is None else x.flat + shift)
        if node.target == "repeat":
            pass
        return new

    def getitem(self, node: fx.Node) -> Any:
        container, index = node.args
        info = self.info(container)
        if isinstance(info, (tuple, list)):
            return info[index]
        value = self.values[container]
        if not _is_tensor(value):
            return self.non_tensor_result(node)
        if not isinstance(info, Spatial):
            return self.non_tensor_result(node)
        index = self.value(index)
        items = index if isinstance(index, tuple) else (index,)
        if any(_is_tensor(i) or isinstance(i, list) for i in items):
            self.refuse(node, "indexes a feature map with a tensor (a gather over positions).")
        ndim = value.dim()
        consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for item in items:
            if item is Ellipsis:
                expanded.extend([slice(None)] * (ndim - consumed))
            else:
                expanded.append(item)
        expanded.extend([slice(None)] * (ndim - sum(1 for i in expanded if i is not None)))
        axis, out_axis, mapping, steps = 0, 0, {}, {}
        for item in expanded:
            if item is None:
                out_axis += 1
                continue
            if isinstance(item, int):
                if axis in x_axes(info):
                    self.refuse(node, "selects one position of a feature map.")
                axis += 1
                continue
            if axis in x_axes(info):
                start, stop, step = item.start or 0, item.stop, item.step or 1
                size = value.shape[axis]
                if stop is not None and stop < size or start >= step or start < 0:
                    self.refuse(node, "crops a feature map (a slice with a start or stop), which depends on the "
                                      "absolute position.")
                steps[axis] = (step, start)
            elif item != slice(None):
                steps.setdefault("other", True)
            mapping[axis] = out_axis
            axis += 1
            out_axis += 1
        moved = info.moved(h=None if info.h is None else mapping.get(info.h), w=None if info.w is None else
                           mapping.get(info.w), flat=None if info.flat is None else mapping.get(info.flat))
        strided = {a: s for a, s in steps.items() if a != "other" and s[0] > 1}
        if not strided:
            return moved
        if info.flat is not None or info.h is None or info.w is None or "other" in steps or \
                (info.h, info.w) != (ndim - 2, ndim - 1):
            self.refuse(node, "subsamples a feature map with a slice together with other indexing.")
        stride = (steps.get(info.h, (1, 0))[0], steps.get(info.w, (1, 0))[0])
        offset = (steps.get(info.h, (1, 0))[1], steps.get(info.w, (1, 0))[1])
        if info.size[0] % stride[0] or info.size[1] % stride[1]:
            raise ProbeTooSmall(f"{module_path(node)}: probe map {info.size} not divisible by {stride}.")
        call = Call(equivariant_subsample, (container, stride, offset),
                    {"sampling": _SAMPLING[self.method], "name": f"{module_path(node) or 'model'} (subsampling slice)"})
        return self.downsampled(node, info, stride, call, "function")

    def reduction(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        target = node.target
        ndim = self.values[node.args[0]].dim()
        dim = self._arg(node, 1, "dim", None)
        dim = self.value(dim)
        axes = list(range(ndim)) if dim is None else [d % ndim for d in ((dim,) if isinstance(dim, int) else dim)]
        keepdim = bool(self._arg(node, 2, "keepdim", False))
        if not set(axes) & set(x.axes()):
            result = self.reduced(x, axes, keepdim)
            name = _REDUCE_SUM.get(target)
            if name is not None:
                fn = position_free.position_free_mean if name == "mean" else position_free.position_free_sum
                self.plan.actions[node] = Call(fn, (node.args[0], tuple(axes)), {"keepdim": keepdim})
            return (result, result) if isinstance(self.values[node], tuple) else result
        name = _REDUCE_SUM.get(target)
        if name is not None:
            fn = exact_mean if name == "mean" else exact_sum
            self.plan.actions[node] = Call(fn, (node.args[0], tuple(axes)), {"keepdim": keepdim})
        elif target in ("argmax", "argmin", torch.argmax, torch.argmin):
            self.refuse(node, "takes the position of a maximum, which moves with the input.")
        elif target in ("std", "var", torch.std, torch.var, "norm", torch.norm, torch.logsumexp, "logsumexp",
                        "prod", torch.prod, torch.std_mean, torch.var_mean, torch.linalg.vector_norm):
            self.refuse(node, f"reduces over positions with {op_name(node)}, whose float result depends on the "
                              "order of the pixels.", "Use a mean or a max.")
        elif target in ("max", "min", torch.max, torch.min) and dim is not None:
            self.refuse(node, "takes a max/min with indices over positions.", "Use amax/amin.")
        if isinstance(self.values[node], tuple):
            return self.non_tensor_result(node)
        result = self.reduced(x, axes, keepdim)
        return result

    def roll(self, node: fx.Node, x: Any) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        dims = self.value(self._arg(node, 2, "dims"))
        if dims is None or x.flat is not None:
            self.refuse(node, "rolls a flattened map.")
        return x

    def pad(self, node: fx.Node, x: Any, pad: tuple[int, ...]) -> Any:
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        ndim = self.values[node.args[0]].dim()
        amounts = {ndim - 1 - i // 2: (pad[i], pad[i + 1]) if i + 1 < len(pad) else (pad[i], 0)
                   for i in range(0, len(pad), 2)}
        spatial = {a: p for a, p in amounts.items() if a in x.axes() and any(p)}
        if not spatial:
            return x  # padding channels only (an option-A shortcut)
        if x.h is None or x.w is None or (x.h, x.w) != (ndim - 2, ndim - 1) or any(
                a not in x.axes() and any(p) for a, p in amounts.items()):
            self.refuse(node, "pads a feature map in a way the conversion cannot fold into a convolution.")
        h_pad, w_pad = amounts.get(x.h, (0, 0)), amounts.get(x.w, (0, 0))
        self.pad_users[node] = len(node.users)
        self.plan.actions[node] = Alias(node.args[0])
        return _Padded(node.args[0], x, (w_pad[0], w_pad[1], h_pad[0], h_pad[1]), node)

    # --- functional convolutions and norms
    def functional_conv(self, node: fx.Node) -> Any:
        x = self.info(node.args[0])
        weight = self.values[self._arg(node, 1, "weight")]
        stride = as_pair(self.value(self._arg(node, 3, "stride", 1)))
        padding = self.value(self._arg(node, 4, "padding", 0))
        dilation = as_pair(self.value(self._arg(node, 5, "dilation", 1)), "dilation")
        groups = self.value(self._arg(node, 6, "groups", 1))
        if not isinstance(padding, str):
            padding = as_pair(padding, "padding", 0)
        try:
            x, lead, source = self.conv_geometry(node, x, tuple(weight.shape[-2:]), stride, dilation, padding)
        except _NotSpatial:
            return self.non_spatial_op(node, x)
        args = (source, self._arg(node, 1, "weight"), self._arg(node, 2, "bias"), stride, lead, dilation, groups)
        sampling = _SAMPLING[self.method] if stride != (1, 1) else "fixed"
        call = Call(equivariant_conv2d, args, {"sampling": sampling, "name": f"{module_path(node)} (F.conv2d)"})
        return self.downsampled(node, x, stride, call, "function")

    def functional_pool(self, node: fx.Node, is_max: bool) -> Any:
        x = self.info(node.args[0])
        kernel = as_pair(self.value(self._arg(node, 1, "kernel_size")), "kernel_size")
        stride_arg = self.value(self._arg(node, 2, "stride", None))
        stride = as_pair(stride_arg if stride_arg not in (None, (), []) else kernel)
        padding = as_pair(self.value(self._arg(node, 3, "padding", 0)), "padding", 0)
        dilation = as_pair(self.value(self._arg(node, 4, "dilation", 1)), "dilation") if is_max else (1, 1)
        if is_max and (self._arg(node, 6, "return_indices", False)):
            self.refuse(node, "is a functional max-pool that returns indices; use nn.MaxPool2d(return_indices=True).")
        try:
            x, lead, source = self.conv_geometry(node, x, kernel, stride, dilation, padding)
        except _NotSpatial:
            return self.non_spatial_op(node, x)
        sampling = _SAMPLING[self.method] if stride != (1, 1) else "fixed"
        name = f"{module_path(node)} ({op_name(node)})"
        if is_max:
            call = Call(equivariant_max_pool2d, (source, kernel, stride, lead, dilation),
                        {"sampling": sampling, "name": name})
        else:
            divisor = self._arg(node, 6, "divisor_override", None)
            call = Call(equivariant_avg_pool2d, (source, kernel, stride, lead),
                        {"divisor_override": divisor, "sampling": sampling, "name": name})
        return self.downsampled(node, x, stride, call, "function")

    def functional_conv_transpose(self, node: fx.Node) -> Any:
        x = self.info(node.args[0])
        if not isinstance(x, Spatial):
            return self.non_spatial_op(node, x)
        stride = as_pair(self.value(self._arg(node, 3, "stride", 1)))
        padding = as_pair(self.value(self._arg(node, 4, "padding", 0)), "padding", 0)
        groups = self.value(self._arg(node, 6, "groups", 1))
        dilation = as_pair(self.value(self._arg(node, 7, "dilation", 1)), "dilation")
        out = _shape(self.values[node])
        if tuple(out[-2:]) != (x.size[0] * stride[0], x.size[1] * stride[1]):
            self.refuse(node, f"maps {x.size[0]}x{x.size[1]} to {out[-2]}x{out[-1]} instead of "
                              f"{x.size[0] * stride[0]}x{x.size[1] * stride[1]}, which no circular op computes.")
        call = Call(circular_conv_transpose2d, (node.args[0], self._arg(node, 1, "weight"), self._arg(node, 2, "bias"),
                                                stride, padding, dilation, groups))
        return self.upsampled(node, x, stride, call)

    def functional_group_norm(self, node: fx.Node) -> Any:
        x = self.info(node.args[0])
        if isinstance(x, Spatial):
            self.plan.actions[node] = Call(exact_group_norm, tuple(node.args), dict(node.kwargs))
        return x if isinstance(x, Spatial) else self.non_tensor_result(node)

    def functional_instance_norm(self, node: fx.Node) -> Any:
        x = self.info(node.args[0])
        if not isinstance(x, Spatial):
            return self.non_tensor_result(node)
        use_input_stats = self._arg(node, 5, "use_input_stats", True)
        if use_input_stats:
            channels = self.values[node.args[0]].shape[1]
            args = (node.args[0], channels, self._arg(node, 3, "weight"), self._arg(node, 4, "bias"),
                    self._arg(node, 7, "eps", 1e-5))
            self.plan.actions[node] = Call(exact_group_norm, args)
        return x


def x_axes(info: Spatial) -> tuple[int, ...]:
    return info.axes()


class _NotSpatial(Exception):
    """The input of a conv/pool is not a spatial map (a pooled vector)."""


class _Padded:
    """A map padded by ``F.pad``/``nn.ZeroPad2d``: only a conv or pooling may consume it,
    which then pads circularly by the sum of both paddings."""

    def __init__(self, source: fx.Node, info: Spatial, pad: tuple[int, int, int, int], node: fx.Node) -> None:
        self.source, self.info, self.pad, self.node = source, info, pad, node

    def fold(self, padding: Any, kernel: tuple[int, int], dilation: tuple[int, int], consumer: fx.Node,
             analysis: Analysis) -> tuple[int, int]:
        left, right, top, bottom = self.pad
        if isinstance(padding, str):
            padding = (0, 0) if padding == "valid" else tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation))
        analysis.pad_users[self.node] -= 1
        return (top + padding[0], left + padding[1])
