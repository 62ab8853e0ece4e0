"""Deformable attention transformer (DAT; Xia et al., CVPR 2022) for galaxy morphology. Torch only, no Spark.

Swin-style hierarchy: a patch embedding (conv patch x patch, stride patch, LayerNorm), stages of blocks, and a
2x2 stride-2 convolution + LayerNorm between stages. Every block is pre-norm attention + MLP, both residual
with stochastic depth. The attention of a block is one letter of ``DATConfig.stage_spec``:

  L  window attention on non-overlapping ``window`` x ``window`` windows, learned relative position bias;
  S  the same on windows shifted by half a window (cyclic roll plus the mask that keeps tokens from attending
     across the wrap, as in Swin);
  D  deformable attention: a uniform grid of reference points is moved by offsets that a small network
     predicts from the queries; keys and values are bilinearly sampled at the moved points and every query
     attends to all of them, with a relative position bias read from a continuous table.

Feature maps that are not whole windows are padded to whole windows inside L/S blocks and the padding is
masked out as keys, so the real tokens' outputs do not depend on it (480 / 4 = 120 is not a multiple of 7);
the linear layers run on the real tokens only. Odd maps are zero-padded by one row/column before a
downsampling convolution. Without gradients, big batches run in slices (``INFERENCE_ACTIVATION_BYTES``,
``ATTENTION_CHUNK_BYTES``) so that a worker's memory does not grow with the batch.

Details the paper leaves open, or where this differs from its public code (deliberately):
  * Padding in L/S blocks is masked (Swin pads with zeros and lets them act as keys).
  * Offsets are always tanh-bounded (``offset_range_factor`` > 0; the public code's unbounded mode is not
    offered). No attention/projection dropout, plain MLPs, no layer scale: DAT-Tiny's settings.
  * Reference points sit exactly on feature-pixel centres in the ``align_corners=True`` convention
    (the public code normalises centres at i + 0.5 by H - 1, a half-pixel skew).
  * The offset network is depthwise conv (kernel ``offset_kernel``, stride ``offset_stride``) -> LayerNorm ->
    GELU -> 1x1 conv to 2 channels, as in the public code; its weights are shared by the groups (the paper's
    "shared subnetwork"), each group of channels producing its own offsets.
  * The continuous position-bias table of a D block is laid out for an input of ``img_size`` pixels and is
    indexed in normalised coordinates, as in DAT; other input sizes read the same table (bilinearly), so the
    bias is a function of displacement as a fraction of the feature map, not in pixels.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_KINDS = ("L", "S", "D")
MORPHOLOGY_KINDS = ("dat", "cnn")
# Finite rather than -inf: a padded query whose keys are all masked must still give a finite softmax row.
_MASKED = -1.0e4


def _to_tuple(v):
    return tuple(_to_tuple(e) for e in v) if isinstance(v, (list, tuple)) else v


def _to_list(v):
    return [_to_list(e) for e in v] if isinstance(v, (list, tuple)) else v


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class ConfigMixin:
    """JSON round trip for the frozen architecture dataclasses (they go into model manifests)."""

    def to_dict(self) -> dict:
        return {f.name: _to_list(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, Mapping):
            raise ValueError(f"{cls.__name__}.from_dict needs a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {known}")
        return cls(**{k: _to_tuple(v) for k, v in d.items()})

    def _bad(self, field: str, why: str):
        raise ValueError(f"{type(self).__name__}.{field}: {why} (got {getattr(self, field)!r})")

    def _normalise(self):
        for f in fields(self):
            object.__setattr__(self, f.name, _to_tuple(getattr(self, f.name)))

    def _positive_ints(self, *names):
        for k in names:
            if not _is_int(getattr(self, k)) or getattr(self, k) < 1:
                self._bad(k, "must be a positive integer")

    def _per_stage(self, n: int, *names):
        """Entries per stage, the count set by the first name."""
        for k in names:
            v = getattr(self, k)
            if not isinstance(v, tuple) or len(v) != n:
                self._bad(k, f"needs one entry per stage: {names[0]} has {n}")
            if not all(_is_int(e) and e >= 1 for e in v):
                self._bad(k, "entries must be positive integers")


@dataclass(frozen=True)
class DATConfig(ConfigMixin):
    in_chans: int = 11
    num_classes: int = 6
    patch: int = 4
    dims: tuple = (96, 192, 384, 768)
    depths: tuple = (2, 2, 6, 2)
    heads: tuple = (3, 6, 12, 24)
    stage_spec: tuple = (("L", "S"), ("L", "S"), ("L", "D", "L", "D", "L", "D"), ("L", "D"))
    window: int = 7
    offset_range_factor: float = 2.0
    drop_path: float = 0.2
    groups: tuple = (1, 1, 3, 6)             # offset groups of the D blocks, per stage
    offset_kernel: tuple = (9, 7, 5, 3)      # depthwise kernel of the offset network, per stage
    offset_stride: tuple = (1, 1, 1, 1)      # reference-grid stride r (keys per query map = (H/r) x (W/r))
    mlp_ratio: float = 4.0
    img_size: int = 224                      # lays out the D blocks' continuous bias table; any size runs

    def __post_init__(self):
        self._normalise()
        self._positive_ints("in_chans", "num_classes", "patch", "window", "img_size")
        if not isinstance(self.dims, tuple) or not self.dims:
            self._bad("dims", "needs at least one stage")
        n = len(self.dims)
        self._per_stage(n, "dims", "depths", "heads", "groups", "offset_kernel", "offset_stride")
        if not isinstance(self.stage_spec, tuple) or len(self.stage_spec) != n:
            self._bad("stage_spec", f"needs one tuple of block letters per stage: dims has {n}")
        for i, (spec, depth) in enumerate(zip(self.stage_spec, self.depths)):
            if not isinstance(spec, tuple) or len(spec) != depth:
                self._bad("stage_spec", f"stage {i} needs depths[{i}] = {depth} letters")
            if any(s not in BLOCK_KINDS for s in spec):
                self._bad("stage_spec", f"letters must be among {BLOCK_KINDS}")
        for i in range(n):
            if self.dims[i] % self.heads[i]:
                self._bad("heads", f"heads[{i}] = {self.heads[i]} must divide dims[{i}] = {self.dims[i]}")
            if "D" in self.stage_spec[i]:
                if self.heads[i] % self.groups[i]:
                    self._bad("groups", f"groups[{i}] = {self.groups[i]} must divide heads[{i}] = {self.heads[i]}")
                if self.offset_kernel[i] % 2 == 0:
                    self._bad("offset_kernel", f"offset_kernel[{i}] must be odd")
        if not _is_real(self.offset_range_factor) or self.offset_range_factor <= 0:
            self._bad("offset_range_factor", "must be a positive number")
        if not _is_real(self.drop_path) or not 0.0 <= self.drop_path < 1.0:
            self._bad("drop_path", "must be in [0, 1)")
        if not _is_real(self.mlp_ratio) or self.mlp_ratio <= 0:
            self._bad("mlp_ratio", "must be a positive number")
        object.__setattr__(self, "offset_range_factor", float(self.offset_range_factor))
        object.__setattr__(self, "drop_path", float(self.drop_path))
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))

    @classmethod
    def tiny_cpu(cls, num_classes: int = 6) -> "DATConfig":
        """Trains on 2 CPU cores at 64 x 64 in minutes: maps 16 -> 8 -> 4 with window 4, all three block kinds."""
        return cls(num_classes=num_classes, patch=4, dims=(32, 64, 128), depths=(2, 2, 2), heads=(1, 2, 4),
                   stage_spec=(("L", "S"), ("L", "S"), ("L", "D")), window=4, offset_range_factor=2.0,
                   drop_path=0.1, groups=(1, 1, 2), offset_kernel=(5, 5, 3), offset_stride=(1, 1, 1),
                   mlp_ratio=2.0, img_size=64)

    @classmethod
    def dat_tiny(cls, num_classes: int = 6) -> "DATConfig":
        """The paper's DAT-Tiny with 11 input channels, its bias tables laid out for 480 x 480 inputs."""
        return cls(num_classes=num_classes, img_size=480)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = max(1, int(round(dim * ratio)))
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# Bytes of attention bias (and weights) one attention call may hold at once; bigger batches run in chunks so
# that inference memory does not grow with the batch (one 480 px image needs ~80 MB in a DAT-Tiny D block).
# Training keeps every chunk's tensors for the backward pass anyway.
ATTENTION_CHUNK_BYTES = 256 * 2 ** 20


def _chunks(n: int, bytes_per_item: int):
    step = n if bytes_per_item <= 0 else max(1, ATTENTION_CHUNK_BYTES // bytes_per_item)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


# Activation bytes one inference pass may hold: without gradients the networks split big batches into passes
# of this size, so that the 4 GB per-worker budget holds whatever batch a caller sends (DAT-Tiny at 480 px
# holds ~70 MB per image at its peak, in stage 1).
INFERENCE_ACTIVATION_BYTES = 2 ** 30


def inference_passes(x: torch.Tensor, bytes_per_image: int) -> tuple[torch.Tensor, ...]:
    if torch.is_grad_enabled() or x.shape[0] <= 1:
        return (x,)
    return x.split(max(1, INFERENCE_ACTIVATION_BYTES // max(1, bytes_per_image)))


def _normalised(pix: torch.Tensor, n: int) -> torch.Tensor:
    """Pixel coordinates -> [-1, 1] in grid_sample's align_corners=True convention (pixel centres at +-1)."""
    return pix * (2.0 / (n - 1)) - 1.0 if n > 1 else torch.zeros_like(pix)


@functools.lru_cache(maxsize=64)
def _window_geometry(H: int, W: int, ws: int, shift: int, device: torch.device, inference: bool):
    """Window layout of an H x W map padded to whole windows and rolled by -``shift``.

    -> (gather (nW * N,) long: the flat map token for every window slot, padding slots pointing at token 0;
        scatter (H * W,) long: the window slot of every map token;
        mask: additive (nW, N, N) float32, or None when nothing is masked;
        valid (nW, N) bool: slots holding a real token).
    A key is masked when it is padding, or when it sits across the cyclic wrap from the query: in the rolled
    frame the last ``shift`` rows/columns hold the map's first rows/columns and must not mix with the rows
    they were rolled next to (Swin's mask). Cached per geometry; ``inference`` is in the key because tensors
    made under inference_mode cannot be saved for a later backward.
    """
    del inference
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    orig_r = (torch.arange(Hp, device=device) + shift) % Hp
    orig_c = (torch.arange(Wp, device=device) + shift) % Wp
    valid = (orig_r[:, None] < H) & (orig_c[None, :] < W)
    token = torch.where(valid, orig_r[:, None] * W + orig_c[None, :], 0)
    r, c = torch.arange(Hp, device=device), torch.arange(Wp, device=device)
    region = (r >= Hp - shift).long()[:, None] * 2 + (c >= Wp - shift).long()[None, :]

    def windows(t):
        return t.view(Hp // ws, ws, Wp // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)

    valid_w, region_w, token_w = windows(valid), windows(region), windows(token)
    gather = token_w.reshape(-1)
    scatter = torch.empty(H * W, dtype=torch.long, device=device)
    slots = torch.arange(gather.numel(), device=device)
    scatter[gather[valid_w.reshape(-1)]] = slots[valid_w.reshape(-1)]
    blocked = (region_w[:, :, None] != region_w[:, None, :]) | ~valid_w[:, None, :]
    mask = None
    if bool(blocked.any()):
        mask = torch.zeros(blocked.shape, dtype=torch.float32, device=device).masked_fill_(blocked, _MASKED)
    return gather, scatter, mask, valid_w


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ``window`` x ``window`` windows (L), optionally shifted by half (S)."""

    def __init__(self, dim: int, heads: int, window: int, shifted: bool):
        super().__init__()
        self.heads, self.window, self.shifted = heads, window, shifted
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        yy, xx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        coords = torch.stack([yy.flatten(), xx.flatten()])                   # (2, N)
        rel = coords[:, :, None] - coords[:, None, :] + (window - 1)          # (2, N, N), >= 0
        self.register_buffer("relative_position_index", rel[0] * (2 * window - 1) + rel[1], persistent=False)

    def relative_position_bias(self) -> torch.Tensor:
        n = self.window ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, self.heads).permute(2, 0, 1)                   # (heads, N, N)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """x: (B, H, W, C) -> (B, H, W, C); with ``return_attn`` also (B, H, W): attention received per token
        (mean over heads, summed over the real queries of its window)."""
        B, H, W, C = x.shape
        ws, nh = self.window, self.heads
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        # A single window row or column has nothing to shift into (Swin's rule).
        shift = ws // 2 if self.shifted and min(Hp, Wp) > ws else 0
        gather, scatter, mask, valid = _window_geometry(H, W, ws, shift, x.device,
                                                        torch.is_inference_mode_enabled())
        n_win, N = valid.shape
        # Projecting before windowing keeps the padding out of the linear layers; one gather does pad, roll
        # and partition at once (padding slots hold an arbitrary real token and are masked as keys).
        qkv = self.qkv(x.reshape(B, H * W, C))[:, gather]                    # (B, nW * N, 3C)
        q, k, v = qkv.view(B * n_win, N, 3, nh, C // nh).permute(2, 0, 3, 1, 4).unbind(0)
        rpb = self.relative_position_bias()
        per_image = n_win * nh * N * N * 6 if (mask is not None or return_attn) else 0
        outs, maps = [], []
        for b0, b1 in _chunks(B, per_image):
            sl = slice(b0 * n_win, b1 * n_win)
            bias = rpb
            if mask is not None:
                # SDPA's CPU kernels want the batch dimension of the mask explicit: built per chunk.
                bias = (rpb[None] + mask[:, None]).expand(b1 - b0, -1, -1, -1, -1).reshape(-1, nh, N, N)
            if return_attn:
                ct = torch.promote_types(q.dtype, torch.float32)
                attn = torch.softmax(q[sl].to(ct) @ k[sl].to(ct).transpose(-1, -2) * self.scale + bias, dim=-1)
                outs.append((attn @ v[sl].to(ct)).to(q.dtype))
                received = (attn.mean(1) * valid.repeat(b1 - b0, 1)[:, :, None].to(ct)).sum(1)   # (b * nW, N)
                maps.append(received.view(b1 - b0, n_win * N)[:, scatter].view(b1 - b0, H, W))
            else:
                outs.append(F.scaled_dot_product_attention(q[sl], k[sl], v[sl], attn_mask=bias.to(q.dtype),
                                                           scale=self.scale))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        out = out.transpose(1, 2).reshape(B, n_win * N, C)[:, scatter]
        out = self.proj(out).view(B, H, W, C)
        if return_attn:
            return out, torch.cat(maps)
        return out


def splat_bilinear(pos: torch.Tensor, weight: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Adjoint of bilinear sampling: spread ``weight`` (N, P) at ``pos`` (N, P, 2; (y, x) in [-1, 1],
    align_corners=True) onto an (N, H, W) grid. Mass falling outside the grid is dropped, as grid_sample's
    zero padding ignores it."""
    N = pos.shape[0]
    py = (pos[..., 0].float() + 1.0) * 0.5 * (H - 1)
    px = (pos[..., 1].float() + 1.0) * 0.5 * (W - 1)
    y0, x0 = py.floor(), px.floor()
    fy, fx = py - y0, px - x0
    out = torch.zeros(N, H * W, dtype=torch.float32, device=pos.device)
    for dy in (0, 1):
        for dx in (0, 1):
            yy, xx = y0 + dy, x0 + dx
            w = (fy if dy else 1.0 - fy) * (fx if dx else 1.0 - fx) * weight.float()
            inside = (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
            idx = (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).long()
            out.scatter_add_(1, idx, w * inside)
    return out.view(N, H, W)


class DeformableAttention(nn.Module):
    """DAT's deformable multi-head attention over a whole (B, H, W, C) map."""

    def __init__(self, dim: int, heads: int, groups: int, offset_kernel: int, offset_stride: int,
                 offset_range_factor: float, table_hw: int):
        super().__init__()
        self.dim, self.heads, self.groups = dim, heads, groups
        self.group_channels = dim // groups
        self.scale = (dim // heads) ** -0.5
        self.offset_stride, self.offset_range_factor = offset_stride, offset_range_factor
        gc = self.group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, offset_kernel, offset_stride, offset_kernel // 2, groups=gc),
            ChannelLayerNorm(gc), nn.GELU(), nn.Conv2d(gc, 2, 1, bias=False))
        self.proj_q, self.proj_k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj_v, self.proj_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        t = max(1, table_hw)
        self.rpe_table = nn.Parameter(torch.zeros(heads, 2 * t - 1, 2 * t - 1))
        nn.init.trunc_normal_(self.rpe_table, std=0.01)

    def sampling_points(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected queries (B, H, W, C) -> (reference (Hk, Wk, 2), positions (B * groups, Hk, Wk, 2)).

        (y, x) in [-1, 1] with align_corners=True. Offsets are tanh-bounded: |offset| <= offset_range_factor /
        (Hk - 1) per axis, i.e. at most offset_range_factor / 2 reference-grid cells."""
        B, H, W, C = q.shape
        qg = q.permute(0, 3, 1, 2).reshape(B * self.groups, self.group_channels, H, W)
        off = self.conv_offset(qg).float().permute(0, 2, 3, 1)               # (B * g, Hk, Wk, 2)
        Hk, Wk = off.shape[1:3]
        span = torch.tensor([1.0 / max(Hk - 1, 1), 1.0 / max(Wk - 1, 1)], device=q.device)
        off = off.tanh() * (span * self.offset_range_factor)
        r = self.offset_stride
        cy = (torch.arange(Hk, device=q.device, dtype=torch.float32) * r + (r - 1) / 2).clamp(max=H - 1)
        cx = (torch.arange(Wk, device=q.device, dtype=torch.float32) * r + (r - 1) / 2).clamp(max=W - 1)
        ref = torch.stack(torch.meshgrid(_normalised(cy, H), _normalised(cx, W), indexing="ij"), -1)
        return ref, ref + off

    def position_bias(self, pos: torch.Tensor, B: int, H: int, W: int) -> torch.Tensor:
        """(B, heads, H*W, Hk*Wk): the continuous table read at (query - key) / 2 in normalised coordinates."""
        g, hg = self.groups, self.heads // self.groups
        qy = _normalised(torch.arange(H, device=pos.device, dtype=torch.float32), H)
        qx = _normalised(torch.arange(W, device=pos.device, dtype=torch.float32), W)
        # (x, y) order, as grid_sample reads it, and halved before the broadcast: one pass over the big tensor.
        qgrid = torch.stack(torch.meshgrid(qx, qy, indexing="xy"), -1).view(1, H * W, 1, 2) * 0.5
        disp = qgrid - pos.flip(-1).reshape(B * g, 1, -1, 2) * 0.5              # (B * g, Nq, Ns, 2)
        table = self.rpe_table.float().view(1, g, hg, *self.rpe_table.shape[1:]).expand(B, -1, -1, -1, -1)
        bias = F.grid_sample(table.reshape(B * g, hg, *self.rpe_table.shape[1:]), disp,
                             mode="bilinear", padding_mode="border", align_corners=True)
        return bias.view(B, self.heads, H * W, -1)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        """x: (B, H, W, C) -> (B, H, W, C); with ``return_attn`` also (B, H, W): attention mass received by
        the sampled points (mean over the heads of a group, summed over all queries), splatted bilinearly at
        the deformed positions and summed over groups."""
        B, H, W, C = x.shape
        g, nh, hd = self.groups, self.heads, C // self.heads
        q = self.proj_q(x)
        _, pos = self.sampling_points(q)
        Ns = pos.shape[1] * pos.shape[2]
        feats = x.permute(0, 3, 1, 2).reshape(B * g, self.group_channels, H, W)
        # float32: grid_sample needs input and grid of one dtype, and bfloat16 positions are too coarse.
        sampled = F.grid_sample(feats.float(), pos.flip(-1), mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        sampled = sampled.to(q.dtype).reshape(B, C, Ns).transpose(1, 2)        # (B, Ns, C)
        k = self.proj_k(sampled).view(B, Ns, nh, hd).transpose(1, 2)
        v = self.proj_v(sampled).view(B, Ns, nh, hd).transpose(1, 2)
        qh = q.reshape(B, H * W, nh, hd).transpose(1, 2)
        Nq = H * W
        per_image = Nq * Ns * (g * 8 + nh * 6 + (nh * 4 if return_attn else 0))
        outs, maps = [], []
        for b0, b1 in _chunks(B, per_image):
            pc = pos[b0 * g:b1 * g]
            bias = self.position_bias(pc, b1 - b0, H, W)
            if return_attn:
                ct = torch.promote_types(qh.dtype, torch.float32)
                attn = torch.softmax(qh[b0:b1].to(ct) @ k[b0:b1].to(ct).transpose(-1, -2) * self.scale + bias,
                                     dim=-1)
                outs.append((attn @ v[b0:b1].to(ct)).to(v.dtype))
                mass = attn.view(b1 - b0, g, nh // g, Nq, Ns).mean(2).sum(2)           # (b, g, Ns)
                amap = splat_bilinear(pc.reshape(-1, Ns, 2), mass.reshape(-1, Ns), H, W)
                maps.append(amap.view(b1 - b0, g, H, W).sum(1))
            else:
                outs.append(F.scaled_dot_product_attention(qh[b0:b1], k[b0:b1], v[b0:b1],
                                                           attn_mask=bias.to(qh.dtype), scale=self.scale))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        out = self.proj_out(out.transpose(1, 2).reshape(B, H, W, C))
        if return_attn:
            return out, torch.cat(maps)
        return out


class DATBlock(nn.Module):
    def __init__(self, kind: str, dim: int, heads: int, cfg: DATConfig, stage: int, drop_path: float,
                 table_hw: int):
        super().__init__()
        self.kind = kind
        self.norm1 = nn.LayerNorm(dim)
        if kind == "D":
            self.attn = DeformableAttention(dim, heads, cfg.groups[stage], cfg.offset_kernel[stage],
                                            cfg.offset_stride[stage], cfg.offset_range_factor, table_hw)
        else:
            self.attn = WindowAttention(dim, heads, cfg.window, shifted=kind == "S")
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, cfg.mlp_ratio)

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        amap = None
        if return_attn:
            y, amap = self.attn(self.norm1(x), return_attn=True)
        else:
            y = self.attn(self.norm1(x))
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, amap) if return_attn else x


class Downsample(nn.Module):
    """2x2 stride-2 convolution + LayerNorm on a channels-last map; odd sizes are zero-padded first."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, 2, 2, bias=False)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x):
        H, W = x.shape[1:3]
        x = x.permute(0, 3, 1, 2)
        if H % 2 or W % 2:
            x = F.pad(x, (0, W % 2, 0, H % 2))
        return self.norm(self.conv(x).permute(0, 2, 3, 1))


def _init_weights(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class DAT(nn.Module):
    """Deformable attention transformer classifier; see the module docstring for the architecture."""

    def __init__(self, cfg: DATConfig | Mapping | None = None):
        super().__init__()
        if cfg is None:
            cfg = DATConfig()
        elif isinstance(cfg, Mapping):
            cfg = DATConfig.from_dict(cfg)
        self.cfg = cfg
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dims[0], cfg.patch, cfg.patch)
        self.embed_norm = nn.LayerNorm(cfg.dims[0])
        rates = torch.linspace(0.0, cfg.drop_path, sum(cfg.depths)).tolist()
        self.stages, self.downsamples = nn.ModuleList(), nn.ModuleList()
        b = 0
        for i, (dim, heads, spec) in enumerate(zip(cfg.dims, cfg.heads, cfg.stage_spec)):
            if i > 0:
                self.downsamples.append(Downsample(cfg.dims[i - 1], dim))
            fmap = max(1, cfg.img_size // (cfg.patch * 2 ** i))
            self.stages.append(nn.ModuleList(
                DATBlock(kind, dim, heads, cfg, i, rates[b + j], fmap) for j, kind in enumerate(spec)))
            b += len(spec)
        self.norm = nn.LayerNorm(cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)
        self.apply(_init_weights)

    @property
    def total_stride(self) -> int:
        return self.cfg.patch * 2 ** (len(self.cfg.dims) - 1)

    def _check(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans:
            raise ValueError(f"DAT expects (B, {self.cfg.in_chans}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % self.cfg.patch or x.shape[3] % self.cfg.patch:
            raise ValueError(f"DAT: H and W must be multiples of patch = {self.cfg.patch}, got "
                             f"{tuple(x.shape[2:])}")

    def forward_features(self, x: torch.Tensor, return_attn: bool = False):
        self._check(x)
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))
        amap = None
        last = len(self.stages) - 1
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = self.downsamples[i - 1](x)
            for j, blk in enumerate(stage):
                if return_attn and i == last and j == len(stage) - 1:
                    x, amap = blk(x, return_attn=True)
                else:
                    x = blk(x)
        return self.norm(x), amap

    def _activation_bytes(self, x: torch.Tensor) -> int:
        """Peak activation bytes per image, about: 16 float32 stage-1 maps (measured ~13 at 480 px)."""
        return (x.shape[-2] // self.cfg.patch) * (x.shape[-1] // self.cfg.patch) * self.cfg.dims[0] * 4 * 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_chans, H, W), H and W multiples of ``patch`` -> logits (B, num_classes)."""
        self._check(x)
        outs = [self.head(self.forward_features(c)[0].mean((1, 2)))
                for c in inference_passes(x, self._activation_bytes(x))]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits, attn (B, H, W) float32 in [0, 1]).

        attn is the LAST block's attention as a map on the input. For a D block (DAT-Tiny and tiny_cpu end
        with one): the softmax weights of every query and head onto the sampled keys are averaged over the
        heads of an offset group and summed over all queries; that mass is splatted bilinearly at the key's
        deformed sampling position on the last feature map and summed over groups. For an L/S block: the
        same mass per key token (mean over heads, sum over the real queries of its window). The map is then
        upsampled bilinearly (align_corners=False: feature pixel i covers input pixels [s i, s (i + 1)) with
        s the total stride) and divided by its per-image maximum.
        """
        self._check(x)
        logits, maps = [], []
        for c in inference_passes(x, self._activation_bytes(x)):
            feats, amap = self.forward_features(c, return_attn=True)
            logits.append(self.head(feats.mean((1, 2))))
            maps.append(attention_to_input(amap, x.shape[-2:], self.total_stride))
        return torch.cat(logits), torch.cat(maps)


def attention_to_input(amap: torch.Tensor, size, stride: int | None = None) -> torch.Tensor:
    """(B, h, w) non-negative map -> (B, H, W) float32 in [0, 1], max 1 per image.

    With ``stride``, feature pixel i covers input pixels [stride i, stride (i + 1)) (the map may extend past
    the input where feature maps were padded: it is cropped); without, the map is stretched onto the input.
    """
    H, W = int(size[0]), int(size[1])
    amap = amap.float()[:, None]
    out = (H, W) if stride is None else (amap.shape[-2] * stride, amap.shape[-1] * stride)
    up = F.interpolate(amap, size=out, mode="bilinear", align_corners=False)[:, 0, :H, :W]
    peak = up.amax(dim=(1, 2), keepdim=True)
    return (up / peak.clamp_min(1e-30)).clamp_(0.0, 1.0)


def build_morphology_model(kind: str, config: Mapping | None = None) -> nn.Module:
    """kind "dat" -> DAT, "cnn" -> MorphCNN, from a ``to_dict()`` mapping (empty or None: the defaults)."""
    config = {} if config is None else config
    if kind == "dat":
        return DAT(DATConfig.from_dict(config))
    if kind == "cnn":
        from .morph_cnn import CNNConfig, MorphCNN
        return MorphCNN(CNNConfig.from_dict(config))
    raise ValueError(f"unknown morphology model kind {kind!r}; choices: {list(MORPHOLOGY_KINDS)}")


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, lq, d = query_shape
    s, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * s * (d + dv)


def count_flops(model: nn.Module, input_shape) -> int:
    """Multiply-adds per image of one eval-mode forward pass, for an input of ``input_shape`` ((C, H, W) or
    (B, C, H, W); divided by B).

    Measured with torch.utils.flop_counter.FlopCounterMode, which counts matrix products and convolutions
    (linear layers, attention products, convs, including the CPU fused attention kernel) and nothing else:
    softmax, norms, activations, grid_sample and the bias-table reads are not counted, as in the
    papers' GFLOPs. FlopCounterMode reports 2 FLOPs per multiply-add; this returns multiply-adds.
    """
    from torch.utils.flop_counter import FlopCounterMode
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (C, H, W) or (B, C, H, W), got {tuple(input_shape)}")
    p = next(model.parameters(), None)
    x = torch.zeros(shape, device=p.device if p is not None else "cpu")
    custom = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        custom[op] = _sdpa_cpu_flops
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=custom) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2 // shape[0]
