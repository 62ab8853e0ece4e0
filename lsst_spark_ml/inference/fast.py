"""Inference-only form of the MBRNN family: BatchNorm folded into the preceding Linear, bfloat16 weights.

At load time every Linear -> BatchNorm1d(eval) pair becomes one Linear:

    BN(W x + b) = s * (W x + b - mu) + beta,   s = gamma / sqrt(var + eps)
               = (s[:, None] * W) x + (s * (b - mu) + beta)

computed in float64 and stored in float32, so the folded network equals the unfolded one up to float32
rounding (tests/test_inference_fast.py checks it). Each member is then Linear-Softplus only: 9 matrix
products and 8 element-wise passes instead of 9 + 16.

Precision ``bfloat16`` casts the folded hidden-layer weights to bfloat16 once (explicit weights, not
autocast: no per-call weight casts); the first and last Linear, the softmax and the ensemble combination
stay float32 (``FoldedEnsemble``). benchmarks/inference_paths.py measures it against autocast.
"""
from __future__ import annotations

import copy
import functools
import os

import torch
from torch import nn

from ..models.mbrnn import MBRNN, MBRNNEnsemble, ensemble_probabilities

PRECISIONS = ("auto", "float32", "bfloat16")


def fold_linear_bn(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    """One Linear equal to ``bn(linear(x))`` with ``bn`` in eval mode (running statistics)."""
    w = linear.weight.detach().double()
    b = (linear.bias.detach().double() if linear.bias is not None
         else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device))
    mu, var = bn.running_mean.double(), bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(mu)
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(mu)
    s = gamma / torch.sqrt(var + bn.eps)
    out = nn.Linear(linear.in_features, linear.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_((s[:, None] * w).to(linear.weight.dtype))
        out.bias.copy_((s * (b - mu) + beta).to(linear.weight.dtype))
    return out.to(linear.weight.device)


def fold_sequential(net: nn.Sequential) -> nn.Sequential:
    """A copy of ``net`` with every Linear followed by a BatchNorm1d merged into one Linear."""
    layers = list(net)
    out: list[nn.Module] = []
    i = 0
    while i < len(layers):
        m = layers[i]
        if isinstance(m, nn.Linear) and i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm1d):
            out.append(fold_linear_bn(m, layers[i + 1]))
            i += 2
        else:
            if isinstance(m, nn.BatchNorm1d):
                raise ValueError("a BatchNorm1d that does not follow a Linear cannot be folded")
            out.append(copy.deepcopy(m))     # never share a module with the source model
            i += 1
    return nn.Sequential(*out).eval()


def fold_mbrnn(model: MBRNN) -> nn.Sequential:
    return fold_sequential(model.net)


class FoldedEnsemble(nn.Module):
    """Inference-only MBRNN ensemble: folded members, softmax and combination in float32.

    With ``dtype=torch.bfloat16`` the inner hidden-to-hidden products (256-512-1024-512-256-128: 97 % of
    the FLOPs of the shipped architecture) run in bfloat16, while the first two and the last two Linear
    layers stay float32 (``float32_ends``). Measured on the cosmoDC2 validation set with the shipped
    ensemble (float32_ends -> PDF total variation p99, worst point/PDF metric change, rows/s on 1 thread):
    (0, 0) 0.018, 1.09 %, 13.6 k; (1, 1) 0.0104, 1.27 %, 13.8 k; (2, 2) 0.0060, 0.91 %, 13.5 k;
    (2, 3) 0.0057, 0.55 %, 12.9 k. Only (2, 2) and (2, 3) pass the gate (``inference.accuracy``): the
    features and the first Softplus output, rounded to bfloat16's 3 significant digits, and bfloat16
    logits (errors of ~0.05 on values of ~10, i.e. ~5 % in probability) cost the most accuracy.
    """
    SCHEME = "bf16-inner-f32-ends-v1"     # part of the accuracy gate's cache key

    def __init__(self, ensemble: MBRNNEnsemble, dtype: torch.dtype = torch.float32,
                 float32_ends: tuple[int, int] = (2, 2)):
        super().__init__()
        self.dtype = dtype
        nets = []
        for m in ensemble.members:
            net = list(fold_mbrnn(m))
            linears = [i for i, layer in enumerate(net) if isinstance(layer, nn.Linear)]
            n_head, n_tail = float32_ends
            # float32 [first Linear(s) + Softplus] -> dtype [hidden blocks] -> float32 [last Linear(s)]
            cut_head = linears[n_head] if n_head < len(linears) else len(net)
            cut_tail = linears[-n_tail] if n_tail > 0 else len(net)
            cut_tail = max(cut_tail, cut_head)
            head = nn.Sequential(*net[:cut_head])
            body = nn.Sequential(*net[cut_head:cut_tail]).to(dtype)
            tail = nn.Sequential(*net[cut_tail:])
            nets.append(nn.ModuleList([head, body, tail]))
        self.nets = nn.ModuleList(nets)
        self.register_buffer("weights", ensemble.weights.detach().float().clone())
        self.eval()

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.float()
        return [tail(body(head(x).to(self.dtype)).float()) for head, body, tail in self.nets]

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.softmax(z, dim=1) for z in self.member_logits(x)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ensemble_probabilities(self.member_probabilities(x), self.weights)


def flops_per_row(hidden, n_in: int, n_bins: int, members: int = 1) -> int:
    """Multiply-adds x 2 of the Linear layers (the work the matrix units do), per object."""
    widths = [n_in, *hidden, n_bins]
    return members * sum(2 * a * b for a, b in zip(widths[:-1], widths[1:]))


# ---------------------------------------------------------------- hardware

@functools.lru_cache(maxsize=1)
def cpu_bf16_features() -> tuple[str, ...]:
    """The CPU's native bfloat16 instruction sets: 'amx_bf16' and/or 'avx512_bf16' (from /proc/cpuinfo)."""
    found: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    found |= flags & {"amx_bf16", "avx512_bf16"}
                    break
    except OSError:
        pass
    if not found:
        # Not Linux, or no flags line: torch's own dispatch level ("AMX" only on AMX machines).
        cap = str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()).upper()
        if "AMX" in cap:
            found.add("amx_bf16")
    return tuple(sorted(found))


def hardware_bf16(device: torch.device) -> bool:
    """True where bfloat16 matrix products run natively: CUDA with bf16 support, or a CPU with AMX or
    AVX-512 BF16. ``LSST_SPARK_ML_CPU_BF16=0|1`` overrides the CPU probe (tests, odd kernels)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    env = os.environ.get("LSST_SPARK_ML_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    return bool(cpu_bf16_features())


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` -> bfloat16 on bf16 hardware, else float32; explicit values are returned unchanged.

    The accuracy gate (``inference.accuracy``) is applied on top of this by the predictor loaders.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    return "bfloat16" if hardware_bf16(device) else "float32"
