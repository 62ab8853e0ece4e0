"""The morphology networks (issue 8): DAT with L/S/D blocks, the CNN baseline, their configs and the plot."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lsst_spark_ml.models.dat import (DAT, DATConfig, DeformableAttention, WindowAttention, build_morphology_model,
                                      count_flops, splat_bilinear)
from lsst_spark_ml.models.morph_cnn import CNNConfig, MorphCNN


def _tiny_dat(**over) -> DAT:
    torch.manual_seed(0)
    return DAT(DATConfig.from_dict({**DATConfig.tiny_cpu().to_dict(), **over}))


def _check_attention(attn: torch.Tensor, shape):
    assert attn.shape == shape and attn.dtype == torch.float32
    assert torch.isfinite(attn).all()
    assert float(attn.min()) >= 0.0 and float(attn.max()) <= 1.0
    assert torch.allclose(attn.amax(dim=(1, 2)), torch.ones(shape[0]))


@pytest.mark.parametrize("hw", [(64, 64), (72, 72), (96, 96), (64, 96)])
def test_dat_shapes_any_multiple_of_patch(hw):
    m = _tiny_dat().eval()
    x = torch.randn(2, 11, *hw)
    with torch.no_grad():
        logits = m(x)
        logits2, attn = m.forward_with_attention(x)
    assert logits.shape == (2, 6) and torch.isfinite(logits).all()
    assert torch.allclose(logits, logits2, atol=1e-5)
    _check_attention(attn, (2,) + hw)


def test_dat_rejects_bad_input_shapes():
    m = _tiny_dat()
    with pytest.raises(ValueError, match="multiples of patch"):
        m(torch.randn(1, 11, 66, 64))
    with pytest.raises(ValueError, match="11"):
        m(torch.randn(1, 5, 64, 64))


def test_tiny_config_has_local_shifted_and_deformable_blocks():
    m = _tiny_dat()
    kinds = {blk.kind for stage in m.stages for blk in stage}
    assert kinds == {"L", "S", "D"}
    for stage in m.stages:
        for blk in stage:
            if blk.kind == "D":
                assert isinstance(blk.attn, DeformableAttention)
            else:
                assert isinstance(blk.attn, WindowAttention) and blk.attn.shifted == (blk.kind == "S")
    assert m.stages[-1][-1].kind == "D"
    assert [blk.kind for blk in DAT(DATConfig.dat_tiny()).stages[2]] == ["L", "D", "L", "D", "L", "D"]


def _explicit_attention(attn: WindowAttention, x: torch.Tensor, groups) -> torch.Tensor:
    """Self-attention computed token group by token group: groups is a list of [(row, col, py, px)], the
    token's place in the map and the coordinates its relative position bias is taken from."""
    B, H, W, C = x.shape
    nh, ws = attn.heads, attn.window
    hd = C // nh
    qkv = attn.qkv(x)
    out = torch.zeros(B, H, W, C, dtype=x.dtype)
    table = attn.relative_position_bias_table
    for g in groups:
        rows = torch.tensor([t[0] for t in g])
        cols = torch.tensor([t[1] for t in g])
        py = torch.tensor([t[2] for t in g])
        px = torch.tensor([t[3] for t in g])
        q, k, v = qkv[:, rows, cols].view(B, len(g), 3, nh, hd).permute(2, 0, 3, 1, 4)
        idx = (py[:, None] - py[None, :] + ws - 1) * (2 * ws - 1) + (px[:, None] - px[None, :] + ws - 1)
        bias = table[idx].permute(2, 0, 1)
        w = torch.softmax(q @ k.transpose(-1, -2) * attn.scale + bias, dim=-1)
        out[:, rows, cols] = (w @ v).transpose(1, 2).reshape(B, len(g), C)
    return attn.proj(out)


def _swin_windows(H, W, ws, shift):
    """Shifted windows without the cyclic trick: cuts at shift + k * ws, partial windows at both edges."""
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws

    def edges(n, npad):
        e = sorted({0, npad} | {shift + k * ws for k in range(npad // ws)})
        return [(a, min(b, n)) for a, b in zip(e[:-1], e[1:]) if a < n]

    return [[(r, c, r, c) for r in range(r0, r1) for c in range(c0, c1)]
            for r0, r1 in edges(H, Hp) for c0, c1 in edges(W, Wp)]


def _wrapped_windows(H, W, ws, shift):
    """The rolled windows with NO wrap mask: tokens rolled round from the far edge mix with their neighbours."""
    groups: dict = {}
    for r in range(H):
        for c in range(W):
            rr, cc = (r - shift) % H, (c - shift) % W
            groups.setdefault((rr // ws, cc // ws), []).append((r, c, rr, cc))
    return list(groups.values())


@pytest.mark.parametrize("hw", [(8, 8), (6, 7), (12, 8)])
@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_explicit_per_window_reference(hw, shifted):
    torch.manual_seed(1)
    attn = WindowAttention(dim=8, heads=2, window=4, shifted=shifted).double()
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    H, W = hw
    Hp, Wp = -(-H // 4) * 4, -(-W // 4) * 4
    shift = 2 if shifted and min(Hp, Wp) > 4 else 0
    with torch.no_grad():
        got = attn(x)
        want = _explicit_attention(attn, x, _swin_windows(H, W, 4, shift))
        got_map = attn(x, return_attn=True)[1]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    assert got_map.shape == (2, H, W) and torch.isfinite(got_map).all()
    # Every real query spreads a unit of attention over real keys only: padding and masked keys get none.
    torch.testing.assert_close(got_map.sum((1, 2)), torch.full((2,), float(H * W), dtype=torch.float64))
    if shifted and (H, W) == (8, 8):
        # The same windows without the wrap mask give another answer: the mask is what the reference checks.
        with torch.no_grad():
            leaky = _explicit_attention(attn, x, _wrapped_windows(H, W, 4, shift))
        assert (got - leaky).abs().max() > 1e-3


@pytest.mark.parametrize("factor,stride,hw", [(2.0, 1, (8, 12)), (1.0, 2, (9, 6)), (3.0, 1, (5, 5))])
def test_deformable_offsets_are_bounded_by_the_range_factor(factor, stride, hw):
    torch.manual_seed(2)
    d = DeformableAttention(dim=16, heads=4, groups=2, offset_kernel=3, offset_stride=stride,
                            offset_range_factor=factor, table_hw=8)
    with torch.no_grad():
        d.conv_offset[-1].weight.mul_(1e4)            # saturate the tanh: offsets reach their bound
        q = d.proj_q(torch.randn(3, *hw, 16))
        ref, pos = d.sampling_points(q)
    Hk, Wk = ref.shape[:2]
    assert pos.shape == (3 * 2, Hk, Wk, 2)
    off = (pos - ref).abs()
    bound = torch.tensor([factor / (Hk - 1), factor / (Wk - 1)])
    assert (off <= bound * (1 + 1e-5)).all()
    assert (off.amax(dim=(0, 1, 2)) >= 0.99 * bound).all()
    # Reference points are the feature-pixel (or r x r cell) centres in align_corners=True coordinates.
    assert ref[0, 0, 0] == pytest.approx(-1.0 + (stride - 1) / (hw[0] - 1))
    assert (ref[:, :, 0] == ref[:, :1, 0]).all() and (ref[:, 1:, 1] > ref[:, :-1, 1]).all()


def test_splat_is_the_adjoint_of_bilinear_sampling():
    torch.manual_seed(3)
    img = torch.randn(2, 1, 7, 9, dtype=torch.float64)
    pos = torch.rand(2, 30, 2, dtype=torch.float64) * 2.4 - 1.2           # some points off the map
    w = torch.rand(2, 30, dtype=torch.float64)
    sampled = F.grid_sample(img, pos.flip(-1)[:, None], mode="bilinear", padding_mode="zeros",
                            align_corners=True)[:, 0, 0]                    # (2, 30)
    lhs = (sampled * w).sum()
    rhs = (img[:, 0] * splat_bilinear(pos, w, 7, 9).double()).sum()
    assert float(lhs) == pytest.approx(float(rhs), rel=1e-5)


def test_gradient_reaches_the_offset_network_and_bias_tables():
    m = _tiny_dat(drop_path=0.0)
    x = torch.randn(4, 11, 64, 64)
    F.cross_entropy(m(x), torch.tensor([0, 1, 2, 3])).backward()
    d_blocks = [blk for stage in m.stages for blk in stage if blk.kind == "D"]
    assert d_blocks
    for blk in d_blocks:
        for name, p in list(blk.attn.conv_offset.named_parameters()) + [("rpe", blk.attn.rpe_table)]:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert float(p.grad.abs().sum()) > 0, name


def _overfit(model, steps=40, lr=3e-3):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 11, 64, 64, generator=g)
    y = torch.randint(0, 6, (32,), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def test_dat_overfits_random_labels():
    losses = _overfit(_tiny_dat(drop_path=0.0))
    assert losses[0] > 1.2 and min(losses[-5:]) < 0.2 * losses[0], losses


def test_cnn_overfits_random_labels():
    torch.manual_seed(0)
    losses = _overfit(MorphCNN(CNNConfig.tiny_cpu()))
    assert losses[0] > 1.2 and min(losses[-5:]) < 0.2 * losses[0], losses


@pytest.mark.parametrize("kind", ["dat", "cnn"])
def test_inference_mode_and_bfloat16_autocast(kind):
    torch.manual_seed(0)
    cfg = (DATConfig if kind == "dat" else CNNConfig).tiny_cpu().to_dict()
    m = build_morphology_model(kind, cfg).eval()
    x = torch.randn(2, 11, 64, 96)
    with torch.inference_mode():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = m(x)
            logits2, attn = m.forward_with_attention(x)
    assert torch.isfinite(logits).all() and torch.isfinite(logits2).all()
    assert (logits.float() - ref).abs().max() < 0.25 * ref.abs().max() + 0.1
    _check_attention(attn, (2, 64, 96))
    # A model used under inference_mode still trains afterwards (cached window masks are not inference tensors).
    m.train()
    m(x).sum().backward()


def test_rotated_input_gives_finite_outputs():
    m = _tiny_dat().eval()
    x = torch.randn(2, 11, 64, 96)
    with torch.no_grad():
        a = torch.softmax(m(x), 1)
        b, attn = m.forward_with_attention(torch.rot90(x, 1, (2, 3)))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    _check_attention(attn, (2, 96, 64))


def test_cnn_shapes_and_attention_proxy():
    torch.manual_seed(0)
    m = MorphCNN(CNNConfig.tiny_cpu()).eval()
    with torch.no_grad():
        logits, attn = m.forward_with_attention(torch.randn(3, 11, 72, 72))
    assert logits.shape == (3, 6)
    _check_attention(attn, (3, 72, 72))


@pytest.mark.parametrize("cfg", [DATConfig(), DATConfig.tiny_cpu(4), DATConfig.dat_tiny(),
                                 CNNConfig(), CNNConfig.tiny_cpu(3), CNNConfig.base()])
def test_config_round_trip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert type(cfg).from_dict(d) == cfg


@pytest.mark.parametrize("cls,over,field", [
    (DATConfig, {"heads": [1, 3, 4]}, "heads"),
    (DATConfig, {"stage_spec": [["L", "S"], ["L", "X"], ["L", "D"]]}, "stage_spec"),
    (DATConfig, {"depths": [2, 2, 3]}, "stage_spec"),
    (DATConfig, {"groups": [1, 1, 3]}, "groups"),
    (DATConfig, {"offset_kernel": [5, 5, 4]}, "offset_kernel"),
    (DATConfig, {"drop_path": 1.5}, "drop_path"),
    (DATConfig, {"window": 0}, "window"),
    (DATConfig, {"dims": [32, 64]}, "dims"),
    (DATConfig, {"offset_range_factor": -1}, "offset_range_factor"),
    (DATConfig, {"depth": [2, 2, 2]}, "depth"),
    (CNNConfig, {"norm_groups": 7}, "norm_groups"),
    (CNNConfig, {"widths": [24, 48]}, "depths"),
])
def test_bad_config_field_raises_naming_it(cls, over, field):
    with pytest.raises(ValueError, match=field):
        cls.from_dict({**cls.tiny_cpu().to_dict(), **over})


def test_build_morphology_model_kinds():
    assert isinstance(build_morphology_model("dat", DATConfig.tiny_cpu().to_dict()), DAT)
    assert isinstance(build_morphology_model("cnn", {}), MorphCNN)
    with pytest.raises(ValueError, match="'dat', 'cnn'"):
        build_morphology_model("vit", {})


def test_count_flops_counts_multiply_adds_per_image():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, (3, 10, 10)) == 8 * 3 * 9 * 100
    assert count_flops(conv, (4, 3, 10, 10)) == 8 * 3 * 9 * 100
    m = DAT(DATConfig.dat_tiny())
    n_params = sum(p.numel() for p in m.parameters())
    assert 26e6 < n_params < 29e6                       # DAT-Tiny: 29 M with a 1000-class head
    macs = count_flops(m, (11, 224, 224))
    assert 4.3e9 < macs < 4.9e9                         # DAT-Tiny: 4.6 G at 224 px
    # Global deformable attention grows with the square of the token count and everything else linearly:
    # were the fused attention kernel not counted, 448 px would cost exactly 4x 224 px.
    assert count_flops(m, (11, 448, 448)) > 4 * macs


def test_attention_grid_writes_png(tmp_path):
    from lsst_spark_ml.plots.morphology import attention_grid
    yy, xx = np.mgrid[:48, :48]
    rng = np.random.default_rng(0)
    imgs = np.stack([100 * np.exp(-((yy - 24) ** 2 + (xx - 24 - k) ** 2) / (2 * (3 + k) ** 2))
                     + rng.normal(0, 1, (48, 48)) for k in range(3)])
    imgs[1, :, :5] = np.nan                               # a chip gap
    attn = np.stack([np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 50.0)] * 3)
    out = attention_grid(imgs, attn, ["E", "Sb", "Irr"], tmp_path / "attn.png")
    data = (tmp_path / "attn.png").read_bytes()
    assert out == tmp_path / "attn.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError, match="title"):
        attention_grid(imgs, attn, ["E"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        attention_grid(imgs, attn[:, :40], ["E", "Sb", "Irr"], tmp_path / "bad.png")


@pytest.mark.parametrize("kind,budget", [("dat", "ATTENTION_CHUNK_BYTES"), ("dat", "INFERENCE_ACTIVATION_BYTES"),
                                         ("cnn", "INFERENCE_ACTIVATION_BYTES")])
def test_splitting_big_batches_changes_nothing(monkeypatch, kind, budget):
    import lsst_spark_ml.models.dat as dat
    torch.manual_seed(0)
    m = build_morphology_model(kind, (DATConfig if kind == "dat" else CNNConfig).tiny_cpu().to_dict()).eval()
    x = torch.randn(5, 11, 72, 72)
    with torch.no_grad():
        want, want_map = m.forward_with_attention(x)
        want_plain = m(x)
        monkeypatch.setattr(dat, budget, 1)                          # one image at a time
        got, got_map = m.forward_with_attention(x)
        got_plain = m(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_map, want_map)
    torch.testing.assert_close(got_plain, want_plain)


def test_drop_path_only_acts_in_training():
    m = _tiny_dat(drop_path=0.5)
    x = torch.randn(2, 11, 64, 64)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = [m(x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    assert math.isclose(m.stages[-1][-1].drop_path.p, 0.5)
