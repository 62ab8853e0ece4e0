import numpy as np
import torch

from lsst_spark_ml.inference.summaries import summarize
from lsst_spark_ml.models import MBRNN, MBRNNEnsemble, anchor_loss, ensemble_probabilities, redshift_to_bin


def numpy_anchor(p, y, gamma, margin=0.05):
    onehot = np.eye(p.shape[1])[y]
    p_true = (p * onehot).sum(1, keepdims=True)
    p_star = np.maximum(p_true - margin, 0)
    loss = -onehot * np.log(p) - (1 - onehot) * (1 + p - p_star) ** gamma * np.log(1 - p)
    return loss.sum(1).mean()


def test_architecture_matches_paper_sizes():
    m = MBRNN(17, 64)
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    # the paper's 17-128-256-512-1024-512-256-128-32-64 network: about 1.39 M parameters
    assert 1.38e6 < n < 1.40e6
    kinds = [type(l).__name__ for l in m.net[:3]]
    assert kinds == ["Linear", "BatchNorm1d", "Softplus"]


def test_anchor_loss_matches_numpy():
    torch.manual_seed(0)
    logits = torch.randn(50, 16)
    y = torch.randint(0, 16, (50,))
    p = torch.softmax(logits, 1).numpy().astype(np.float64)
    for gamma in (0.0, 2.0, 5.0):
        got = float(anchor_loss(logits, y, gamma))
        assert abs(got - numpy_anchor(p, y.numpy(), gamma)) < 1e-4


def test_anchor_loss_gamma0_is_one_vs_all_bce():
    logits = torch.randn(20, 8)
    y = torch.randint(0, 8, (20,))
    p = torch.softmax(logits, 1)
    bce = torch.nn.functional.binary_cross_entropy(p, torch.nn.functional.one_hot(y, 8).float(),
                                                   reduction="sum") / 20
    assert torch.allclose(anchor_loss(logits, y, 0.0), bce, atol=1e-5)


def test_ensemble_combination_formula():
    probs = torch.softmax(torch.randn(3, 5, 7), dim=2)
    w = torch.rand(3, 7) - 0.5
    got = ensemble_probabilities(probs, w)
    num = (w.abs()[:, None, :] * probs).sum(0)
    assert torch.allclose(got, num / num.sum(1, keepdim=True))
    assert torch.allclose(got.sum(1), torch.ones(5))
    ens = MBRNNEnsemble([MBRNN(4, 7, [8]), MBRNN(4, 7, [8])]).eval()
    assert torch.allclose(ens(torch.randn(3, 4)).sum(1), torch.ones(3))


def test_redshift_bins_clip_to_range():
    z = torch.tensor([-0.1, 0.0, 1.5, 3.05, 9.0], dtype=torch.float64)
    assert redshift_to_bin(z, 0.0, 3.0, 30).tolist() == [0, 0, 15, 29, 29]


def test_summaries_against_sampled_distribution():
    rng = np.random.default_rng(1)
    edges = np.linspace(0, 3, 31)
    pdf = rng.random((4, 30)) ** 4
    pdf /= pdf.sum(1, keepdims=True)
    s = summarize(pdf, edges)
    for i in range(4):
        # Draw from the piecewise-constant density and compare moments and quantiles.
        k = rng.choice(30, size=400_000, p=pdf[i])
        z = edges[k] + rng.random(k.size) * 0.1
        assert abs(s["z_mean"][i] - z.mean()) < 3e-3
        assert abs(s["z_std"][i] - z.std()) < 3e-3
        assert abs(s["z_median"][i] - np.median(z)) < 5e-3
        assert abs(s["z_lo68"][i] - np.quantile(z, 0.158655)) < 5e-3
        assert abs(s["z_hi68"][i] - np.quantile(z, 0.841345)) < 5e-3
        assert s["z_mode"][i] == 0.5 * (edges[pdf[i].argmax()] + edges[pdf[i].argmax() + 1])
