"""Large float32 linear layers on CPU run through oneDNN instead of torch's default BLAS call.

Why: on the x86 CPUs this project is measured on (2 cores, AMD EPYC), torch's float32 ``F.linear`` calls MKL's
sgemm, and oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the kernel torch's own compiler emits on CPU)
is faster on the shapes of a real model's weights. Qwen2.5-0.5B's MLP is 1.3-1.5x faster, its LM head 1.1-2.4x,
its attention projections 1.05-1.8x (`benchmarks/linear_kernel.py`). A full forward pass over 300 prompts takes
30 s instead of 38 s, with the same answers to float32 rounding: the largest logit difference was 6e-5, and the
argmax was the same on every prompt.

Small weights are slower through oneDNN (a fixed cost per call), so only weights with at least ``MIN_WEIGHT``
elements switch. Below that, which includes the zoo and every test model, layers keep the default kernel, bit for bit.

The op has no autograd kernel, so where a gradient must flow (the attribution engine's backward pass) the layer
uses ``F.linear``. ``MECHTEST_LINEAR=default`` in the environment turns the switch off.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

MIN_WEIGHT = 2**19  # elements: 512x1024 and up; measured no faster at 512x512, slower at 896x128 on few rows


class OneDNNLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose forward takes oneDNN's kernel where it can (module docstring), F.linear elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or self.weight.device.type != "cpu" or x.dim() < 2 or not torch.backends.mkldnn.enabled
                or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def describe() -> str:
    """Which kernel large CPU float32 layers take in this run, for the JSON report's environment."""
    if _turned_off():
        return "default (MECHTEST_LINEAR=default)"
    if not available():
        return "default (no oneDNN linear in this torch build)"
    return f"oneDNN for CPU float32 nn.Linear layers of >= {MIN_WEIGHT} weights"


def use_onednn(module: torch.nn.Module) -> int:
    """Switch every large float32 CPU ``nn.Linear`` inside ``module`` to :class:`OneDNNLinear` (in place; the
    weights are not copied); the number switched. Nothing switches where oneDNN is missing or turned off."""
    if _turned_off() or not available():
        return 0
    switched = 0
    for layer in module.modules():
        if type(layer) is torch.nn.Linear and layer.weight.numel() >= MIN_WEIGHT \
                and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu":
            layer.__class__ = OneDNNLinear
            switched += 1
    return switched


def _turned_off() -> bool:
    return os.environ.get("MECHTEST_LINEAR", "").lower() == "default"


@functools.cache
def available() -> bool:
    """oneDNN's linear exists in this torch build and agrees with F.linear on a small case."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # fixed values, not torch.randn: probing must not move the caller's random number stream
        x = torch.linspace(-1, 1, 24).reshape(3, 8)
        w, b = torch.linspace(-0.5, 0.5, 32).reshape(4, 8), torch.linspace(0, 0.3, 4)
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.allclose(out, F.linear(x, w, b), atol=1e-5))
