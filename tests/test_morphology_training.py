"""Morphology training pieces that need no rendered data: FixMatch loss, curriculum, budget, augmentations,
the S/N difficulty, class weights, and the Parquet loader's transform hook."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from lsst_spark_ml.config import MorphologySettings
from lsst_spark_ml.morphology import augment
from lsst_spark_ml.morphology.difficulty import difficulty, image_snr
from lsst_spark_ml.training.morphology import (STRONG, WEAK, admitted, class_weights, fixmatch_loss,
                                               plan_epochs)


def test_fixmatch_loss_is_supervised_ce_plus_masked_pseudo_label_term():
    torch.manual_seed(0)
    lab = torch.randn(4, 6)
    weak = torch.tensor([[9.0, 0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0, 0]])     # first confident, second not
    strong = torch.randn(2, 6)
    logits = torch.cat([lab, weak, strong])
    codes = torch.tensor([0, 1, 2, 3, WEAK, WEAK, STRONG, STRONG])
    stats: dict = {}
    got = fixmatch_loss(logits, codes, None, tau=0.9, lam=2.0, stats=stats, relative=False)
    want = F.cross_entropy(lab, codes[:4]) + 2.0 * F.cross_entropy(strong[:1], torch.tensor([0])) / 2
    assert torch.allclose(got, want, atol=1e-6)
    assert stats == {"kept": 1, "seen": 2}
    # Nothing above tau: the supervised term alone; and no gradient reaches the weak rows.
    logits.requires_grad_(True)
    loss = fixmatch_loss(logits, codes, None, tau=0.99999, lam=1.0, relative=False)
    loss.backward()
    assert torch.allclose(loss, F.cross_entropy(lab, codes[:4]))
    assert logits.grad[4:6].abs().sum() == 0


def test_class_weights_counter_imbalance_and_average_one():
    labels = np.array([0] * 80 + [1] * 20)
    w = class_weights(labels, 3, "inverse")
    assert w[1] / w[0] == pytest.approx(4.0)
    assert float(w[labels].mean()) == pytest.approx(1.0)
    ws = class_weights(labels, 3, "inverse-sqrt")
    assert ws[1] / ws[0] == pytest.approx(2.0)
    assert torch.all(class_weights(labels, 3, "none") == class_weights(labels, 3, "none")[0])


def test_curriculum_admits_easiest_first_and_everything_after_the_ramp():
    ms = MorphologySettings(curriculum="snr", curriculum_start=0.25, curriculum_ramp=0.5)
    order = np.arange(100)
    sizes = [len(admitted(order, e, 20, ms)) for e in range(1, 21)]
    assert sizes[0] == 25 and sizes == sorted(sizes) and sizes[10] == 100 and sizes[-1] == 100
    assert np.array_equal(admitted(order, 3, 20, ms), order[:sizes[2]])
    assert len(admitted(order, 1, 20, MorphologySettings(curriculum="none"))) == 100


def test_budget_gives_both_modes_the_same_images():
    sup = MorphologySettings(mode="supervised", budget_images=96_000, batch_size=32, steps_per_epoch=10,
                             unlabelled_ratio=3, labelled_strong=False)
    semi = MorphologySettings(mode="semi", budget_images=96_000, batch_size=32, steps_per_epoch=10,
                              unlabelled_ratio=3, labelled_strong=False)
    (e1, p1), (e2, p2) = plan_epochs(sup), plan_epochs(semi)
    assert p2 == 7 * p1
    assert e1 * p1 * 10 == 96_000                      # supervised: the budget exactly
    assert 0 <= 96_000 - e2 * p2 * 10 < p2 * 10         # semi: within one epoch of it, never over
    both = MorphologySettings(mode="semi", batch_size=32, unlabelled_ratio=3, labelled_strong=True)
    assert plan_epochs(both)[1] == 2 * 32 + 2 * 3 * 32


def test_warmup_spends_its_share_of_the_budget_on_labelled_rows_and_the_rest_in_full_steps():
    from lsst_spark_ml.training.morphology import images_seen, warmup_epochs
    ms = MorphologySettings(mode="semi", budget_images=150_000, batch_size=32, steps_per_epoch=40,
                            unlabelled_ratio=3, labelled_strong=True, warmup_fraction=0.5)
    epochs, per_step = plan_epochs(ms)
    w = warmup_epochs(ms)
    assert w == 75_000 // (64 * 40) == 29
    assert epochs == w + (150_000 - w * 64 * 40) // (per_step * 40)
    assert 0 <= 150_000 - images_seen(ms, epochs) < per_step * 40      # the budget, never over
    assert images_seen(ms, w) == w * 64 * 40
    assert warmup_epochs(dataclasses.replace(ms, mode="supervised")) == 0
    assert warmup_epochs(dataclasses.replace(ms, warmup_fraction=0.0)) == 0


def test_weak_view_is_an_exact_symmetry_and_strong_view_moves_masks_only_with_geometry():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 11, 24, 24)
    x[:, 5:] = (torch.rand(16, 6, 24, 24) > 0.5).float()
    w = augment.weak(x, g)
    for i in range(16):      # a flip/rotation permutes pixels: same multiset of values per channel
        assert torch.equal(torch.sort(w[i].flatten(1))[0], torch.sort(x[i].flatten(1))[0])
    s = augment.strong(x, torch.Generator().manual_seed(1))
    g1 = torch.Generator().manual_seed(1)                          # same draws: same geometry
    ref = augment.zoom_out(augment.weak(x, g1), g1)
    assert torch.equal(s[:, 5:], ref[:, 5:])
    assert not torch.allclose(s[:, :5], ref[:, :5])
    assert torch.isfinite(s).all()


def test_colour_shift_reddens_band_fluxes_only_and_is_off_by_default():
    bands = torch.ones(4000, 5, 2, 2)
    out = augment.redshift_colours(bands, torch.Generator().manual_seed(0))
    dm = -2.5 * torch.log10(out[:, :, 0, 0])                       # magnitudes added per image and band
    t = dm[:, 0] / augment.REDSHIFT_COLOUR_SHIFT[0]
    assert -1e-5 <= float(t.min()) < 0.01 and 0.99 < float(t.max()) <= 1.0   # t ~ U(0, 1) of the whole shift
    assert float(t.mean()) == pytest.approx(0.5, abs=0.02)
    assert torch.allclose(dm, t[:, None] * torch.tensor(augment.REDSHIFT_COLOUR_SHIFT), atol=1e-5)
    assert torch.equal(dm[:, 1], torch.zeros(4000))               # r held fixed: colours, not brightness
    x = torch.randn(8, 11, 24, 24)
    x[:, 5:] = (torch.rand(8, 6, 24, 24) > 0.5).float()
    plain = augment.strong(x, torch.Generator().manual_seed(3))
    again = augment.strong(x, torch.Generator().manual_seed(3), colour_shift=False)
    shifted = augment.strong(x, torch.Generator().manual_seed(3), colour_shift=True)
    assert torch.equal(plain, again)                              # off unless asked for
    assert torch.equal(shifted[:, 5:], plain[:, 5:])               # masks untouched
    assert not torch.equal(shifted[:, :5], plain[:, :5])


@pytest.mark.parametrize("shift,unlabelled,expect", [(True, True, (True, True)), (True, False, (True, False)),
                                                     (False, True, (False, False))])
def test_unlabelled_strong_views_can_leave_the_colour_shift_out(shift, unlabelled, expect):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.training.morphology import strong_views
    ms = load_config(None, [f"morphology.colour_shift={str(shift).lower()}",
                            f"morphology.colour_shift_unlabelled={str(unlabelled).lower()}"]).morphology
    lab, unl = strong_views(ms)
    x = torch.randn(6, 11, 16, 16)
    plain = augment.strong(x, torch.Generator().manual_seed(5))
    shifted = augment.strong(x, torch.Generator().manual_seed(5), colour_shift=True)
    for view, reddened in zip((lab, unl), expect):
        assert torch.equal(view(x, torch.Generator().manual_seed(5)), shifted if reddened else plain)


def test_blur_preserves_flux_and_broadens():
    img = torch.zeros(1, 1, 31, 31)
    img[0, 0, 15, 15] = 1.0
    out = augment._blur(img, torch.tensor([1.5]))
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-4)
    yy = torch.arange(31.0)[:, None] - 15
    var = float((out[0, 0] * yy ** 2).sum())
    assert var == pytest.approx(1.5 ** 2, rel=0.05)


def test_snr_ranks_bright_above_faint_and_empty_mask_is_hardest():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    blob = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 3.0 ** 2))
    mask = blob > 0.1
    bright = rng.normal(0, 1, (5, 32, 32)) + 20 * blob
    faint = rng.normal(0, 1, (5, 32, 32)) + 2 * blob
    faint[2] = np.nan                                     # a missing band is skipped, not a crash
    snr = image_snr(np.stack([bright, faint, bright]), np.stack([mask, mask, np.zeros_like(mask)]))
    assert snr[0] > 5 * snr[1] > 0 and snr[2] == 0
    d = difficulty(snr)
    assert d[0] < d[1] < d[2] and math.isfinite(d[2])


def test_loader_transform_decodes_binary_columns_with_exact_counts(tmp_path):
    from lsst_spark_ml.training.loader import ParquetLoader
    imgs = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
    table = pa.table({"id": np.arange(10), "blob": pa.array([a.tobytes() for a in imgs], pa.binary())})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)

    def transform(t):
        data = np.stack([np.frombuffer(b, np.float32).reshape(2, 2) for b in t.column("blob").to_pylist()])
        return {"id": t.column("id").to_numpy(), "img": data}

    loader = ParquetLoader(str(tmp_path / "t.parquet"), None, batch_size=4, shuffle=True, seed=3,
                           rank=0, world_size=1, transform=transform)
    batches = list(loader.epoch(0))
    ids = torch.cat([b["id"] for b in batches]).numpy()
    got = torch.cat([b["img"] for b in batches]).numpy()
    assert sorted(ids) == list(range(10))
    assert np.array_equal(got, imgs[ids])

    bad = ParquetLoader(str(tmp_path / "t.parquet"), None, batch_size=4, rank=0, world_size=1,
                        transform=lambda t: {"id": t.column("id").to_numpy()[:1]})
    with pytest.raises(RuntimeError, match="transform returned"):
        list(bad.epoch(0))


def test_zoom_out_shrinks_the_object_and_conserves_its_flux():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = 50 * torch.exp(-((yy - 15.5) ** 2 + (xx - 15.5) ** 2) / (2 * 4.0 ** 2))
    x = torch.zeros(1, 11, 32, 32)
    x[0, :5] = torch.asinh(blob)
    x[0, 5] = (blob > 5).float()
    out = augment.zoom_out(x, torch.Generator().manual_seed(0), zooms=(0.5,))
    assert float(out[0, 5].sum()) == pytest.approx(float(x[0, 5].sum()) / 4, rel=0.15)
    flux = torch.sinh(out[0, 0]).sum()     # "area" keeps surface brightness: a quarter of the pixels
    assert float(flux) == pytest.approx(float(blob.sum()) / 4, rel=0.1)


def test_relative_threshold_scales_with_labelled_confidence_and_aligns_classes():
    lab = torch.tensor([[2.0, 0, 0], [0, 2.0, 0]])                   # labelled mean confidence ~0.78
    weak = torch.tensor([[2.2, 0, 0], [0, 2.2, 0]])                   # confidence ~0.82 each
    strong = torch.zeros(2, 3)
    logits = torch.cat([lab, weak, strong])
    codes = torch.tensor([0, 1, WEAK, WEAK, STRONG, STRONG])
    kept_abs, kept_rel = {}, {}
    fixmatch_loss(logits, codes, None, tau=0.9, lam=1.0, stats=kept_abs, relative=False)
    fixmatch_loss(logits, codes, None, tau=0.9, lam=1.0, stats=kept_rel, relative=True)
    assert kept_abs["kept"] == 0                 # 0.82 < 0.9
    assert kept_rel["kept"] == 2                 # 0.82 >= 0.9 x 0.79 (same class mix: alignment changes little)


def test_distribution_alignment_pulls_shifted_pseudo_labels_back_to_the_class_mix():
    from lsst_spark_ml.training.morphology import DistributionAlignment
    # The labelled class mix is uniform; the model's unlabelled predictions have drifted towards class 0 (as
    # survey galaxies drift one class earlier) over the previous steps.
    skewed = torch.tensor([[0.8, 0.15, 0.05]] * 8)
    weak = torch.log(torch.tensor([[0.55, 0.40, 0.05]] * 3 + [[0.1, 0.1, 0.8]]))
    codes = torch.tensor([WEAK] * 4 + [STRONG] * 4)
    logits = torch.cat([weak, weak])                   # the strong views predict as the weak ones

    def drifted():
        align = DistributionAlignment(np.array([0, 1, 2] * 10), 3, momentum=0.5)
        for _ in range(10):
            align(skewed)
        return align
    p = drifted()(torch.softmax(weak, 1))
    assert p.argmax(1).tolist() == [1, 1, 1, 2]       # class 0 over-predicted: its share is divided down
    torch.testing.assert_close(p.sum(1), torch.ones(4))
    a = fixmatch_loss(logits, codes, None, tau=0.01, lam=1.0, relative=False)
    b = fixmatch_loss(logits, codes, None, tau=0.01, lam=1.0, relative=False, align=drifted())
    assert not torch.isclose(a, b)                     # through the loss: other pseudo-labels, another loss


def test_ema_teacher_answers_the_weak_rows_without_gradient_and_follows_the_student_slowly():
    from lsst_spark_ml.training.morphology import EMATeacher
    torch.manual_seed(0)
    student = torch.nn.Linear(4, 3)
    teacher = EMATeacher(student, decay=0.9)
    x = torch.randn(6, 4)
    only_labelled = torch.tensor([0, 1, 2, 0, 1, 2])
    torch.testing.assert_close(teacher(student, x, only_labelled), student(x))
    assert teacher.avg is None                          # no unlabelled rows (warm-up): no teacher yet

    codes = torch.tensor([0, 1, WEAK, WEAK, STRONG, STRONG])
    weak = codes == WEAK
    out = teacher(student, x, codes)                    # the first such step copies the student
    torch.testing.assert_close(out, student(x))
    out[~weak].sum().backward(retain_graph=True)
    g_rows = student.weight.grad.clone()
    student.zero_grad()
    out.sum().backward()                                # the weak rows' logits carry no gradient
    torch.testing.assert_close(student.weight.grad, g_rows)

    w_old = student.weight.detach().clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    out = teacher(student, x, codes)
    expected_w = 0.9 * w_old + 0.1 * student.weight.detach()
    torch.testing.assert_close(teacher.avg.module.weight, expected_w)
    torch.testing.assert_close(out[weak], F.linear(x[weak], expected_w, teacher.avg.module.bias))
    torch.testing.assert_close(out[~weak], student(x[~weak]))

    resumed = EMATeacher(student, decay=0.9)          # what the loop does with a checkpoint
    resumed.load_state_dict(teacher.state_dict())
    torch.testing.assert_close(resumed(student, x, codes), teacher(student, x, codes))


@pytest.mark.parametrize("change,pattern", [({"pseudo_labels": "teacher"}, "pseudo_labels must be student|ema"),
                                            ({"teacher_decay": 1.0}, "teacher_decay must be in")])
def test_pseudo_label_source_is_checked(change, pattern):
    from lsst_spark_ml.config import load_config
    from lsst_spark_ml.errors import ConfigError
    with pytest.raises(ConfigError, match=pattern):
        load_config([], [f"morphology.{k}={v}" for k, v in change.items()])
