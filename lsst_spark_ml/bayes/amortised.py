"""Amortised variational inference: one inference network maps an object's photometry to the parameters of its
variational posterior (the K-component Gaussian mixture of vi.py), so that fitting an object is one forward
pass instead of an optimisation (Gershman & Goodman 2014; Kingma & Welling 2014; Cremer et al. 2018).

The network (MLP, 4 x 256, SiLU; inputs: relative fluxes and errors, S/N, asinh-magnitude colours, missing-band
mask, prior magnitude) is trained once per job configuration (model grid, prior, error floor) on objects simulated
from the prior and the model (synthetic.draw_training: wider magnitude range, jittered depths, missing bands,
noise including the model's error floor):

1. forward KL (neural posterior estimation): maximise log q(z_true, t_true | F) over simulated pairs. Cheap (no
   likelihood evaluation) and mass-covering, so every mode the data allow gets a component;
2. reverse KL: maximise the ELBO of q(. | F) against the model's own unnormalised posterior (posterior.py, the
   density the grid and MCMC target), averaged over simulated objects. This removes the mismatch between the
   simulator and the model's likelihood (error floor, the prior's use of the observed magnitude).

Per object, vi.run_vi then reports the ELBO, checks the fit with the importance weights p/q of the ELBO samples
(effective sample size, as in Yao et al. 2018) and optimises the few objects that fail the check per object,
starting from the network's answer (semi-amortised VI, Kim et al. 2018).
Training takes about two minutes on one core (300,000 simulated objects; 8,000 + 2,000 steps); the result is
cached in memory and on disk (``$LSST_SPARK_ML_CACHE``, default ~/.cache/lsst_spark_ml/bayes_vi, keyed by a hash of
everything it depends on), so a job's workers reuse it. Measured (benchmarks/bayes_results.md): 7,200 objects/s/core,
medians within 0.01(1+z) of the exact grid for ~89% of objects (the per-object VI: 95%); four times the training
gave 91.5%, so the remaining amortisation gap is mostly training budget.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from .likelihood import FluxData, to_fluxes
from .posterior import BatchPosterior, Model

HIDDEN, DEPTH = 256, 4
NPE_OBJECTS, NPE_STEPS, NPE_BATCH, NPE_LR = 300_000, 8000, 512, 2e-3
ELBO_STEPS, ELBO_BATCH, ELBO_SAMPLES, ELBO_LR = 2000, 256, 4, 5e-4
TRAIN_SEED = 20_2407      # never the evaluation's seed (bayes.seed): the network is not tuned on test objects
VERSION = 3               # bump when the architecture or training changes (invalidates cached networks)


def features(flux, weight, m0) -> torch.Tensor:
    """Photometry -> network inputs (N, 5B), float32: flux and error relative to the object's own scale
    (the likelihood is nearly amplitude-free), signal-to-noise, a missing-band mask and the prior magnitude."""
    f = torch.as_tensor(flux, dtype=torch.float64)
    w = torch.as_tensor(weight, dtype=torch.float64)
    used = w > 0
    sig = torch.where(used, 1.0 / torch.sqrt(torch.where(used, w, 1.0)), torch.zeros_like(w))
    nu = used.sum(1, keepdim=True).clamp(min=1)
    scale = torch.sqrt(((f * f + sig * sig) * used).sum(1, keepdim=True) / nu).clamp(min=1e-30)
    r = torch.where(used, f / scale, 0.0)
    e = torch.where(used, torch.log(sig / scale), 0.0)
    snr = torch.where(used, torch.asinh(f / torch.where(used, sig, 1.0)) / 3.0, 0.0)
    m0 = (torch.as_tensor(np.asarray(m0), dtype=torch.float64)[:, None] - 24.0) / 2.0
    # Colours as differences of asinh magnitudes (Lupton et al. 1999, softening = the band's error): the
    # posterior is mostly a function of colours, which an MLP would otherwise have to form from flux ratios.
    lup = torch.where(used, torch.asinh(0.5 * f / torch.where(used, sig, 1.0)) + torch.log(sig / scale), 0.0)
    both = used[:, 1:] & used[:, :-1]
    colour = torch.where(both, lup[:, :-1] - lup[:, 1:], 0.0)
    return torch.cat([r, e, snr, colour, (~used).double(), m0], dim=1).float()


class InferenceNet(torch.nn.Module):
    def __init__(self, n_in: int, k: int):
        super().__init__()
        layers, d = [], n_in
        for _ in range(DEPTH):
            layers += [torch.nn.Linear(d, HIDDEN), torch.nn.SiLU()]
            d = HIDDEN
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(d, 6 * k)
        self.k = k

    def forward(self, x: torch.Tensor):
        """-> mixture parameters in the unconstrained space (float64): mu (N, K, 2), log_sd (N, K, 2),
        rho (N, K), logits (N, K)."""
        o = self.head(self.body(x)).double().view(-1, self.k, 6)
        # Components start spread over the redshift range (logit z in -4..2) so none is born redundant.
        base = torch.linspace(-4.0, 2.0, self.k, dtype=torch.float64)
        mu = torch.stack([o[..., 0] + base, o[..., 1]], dim=-1)
        log_sd = torch.clamp(o[..., 2:4] - 1.0, -9.0, 2.0)
        return mu, log_sd, o[..., 4], o[..., 5]


def _to_unconstrained(model: Model, z: np.ndarray, t: np.ndarray) -> torch.Tensor:
    pz = np.clip((z - model.z0) / (model.z_max - model.z0), 1e-4, 1 - 1e-4)
    pt = np.clip(t / model.t_max, 1e-4, 1 - 1e-4)
    return torch.as_tensor(np.stack([np.log(pz / (1 - pz)), np.log(pt / (1 - pt))], axis=-1))


def _training_data(model: Model, n: int, seed: int):
    from ..config import LSST_1SIGMA_LIMITS
    from .synthetic import draw_training
    s = model.settings
    parts = [draw_training(model, min(5000, n - i), seed + i) for i in range(0, n, 5000)]
    flux, err, z, t = (np.concatenate(x) for x in zip(*parts))
    data = to_fluxes(flux, err, "flux", model.grid.bands, LSST_1SIGMA_LIMITS, s.prior_band, s.flux_err_floor)
    return data, z, t


def _subset(data: FluxData, idx) -> FluxData:
    return FluxData(data.flux[idx], data.weight[idx], data.m0[idx], data.n_used[idx])


def _run_stage(net: InferenceNet, lr: float, steps: int, loss_fn) -> float:
    """``steps`` Adam steps on ``loss_fn()`` with a cosine-annealed step size; -> the last loss."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def train(model: Model, k: int, seed: int = TRAIN_SEED, log=None) -> InferenceNet:
    """Both training stages (module docstring) -> the trained network, in eval mode."""
    from .vi import _Mixture
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data, z, t = _training_data(model, NPE_OBJECTS, seed)
    x = features(data.flux, data.weight, data.m0)
    target = _to_unconstrained(model, z, t)
    net = InferenceNet(x.shape[1], k)
    n = len(x)

    def forward_kl():
        idx = torch.randint(0, n, (NPE_BATCH,), generator=gen)
        q = _Mixture.from_params(None, *net(x[idx]))
        return -q.log_q(target[idx][:, None, :]).mean()
    loss = _run_stage(net, NPE_LR, NPE_STEPS, forward_kl)
    if log:
        log(f"amortised VI: forward-KL stage {time.perf_counter() - t0:.1f} s, last loss {loss:.3f}")

    def reverse_kl():
        idx = torch.randint(0, n, (ELBO_BATCH,), generator=gen).numpy()
        q = _Mixture.from_params(BatchPosterior(model, _subset(data, idx)), *net(x[idx]))
        return -q.elbo(ELBO_SAMPLES, gen).mean()
    loss = _run_stage(net, ELBO_LR, ELBO_STEPS, reverse_kl)
    if log:
        log(f"amortised VI: trained in {time.perf_counter() - t0:.1f} s, last -ELBO {loss:.3f}")
    return net.eval()


def _key(model: Model, k: int) -> str:
    s = model.settings
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(model.grid.flux, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(model.grid.z, dtype=np.float64).tobytes())
    h.update(repr((model.grid.templates, model.grid.bands, model.grid.prior_band, s.prior, s.flux_err_floor, k,
                   HIDDEN, DEPTH, NPE_OBJECTS, NPE_STEPS, NPE_BATCH, NPE_LR, ELBO_STEPS, ELBO_BATCH,
                   ELBO_SAMPLES, ELBO_LR, TRAIN_SEED, VERSION, torch.__version__)).encode())
    return h.hexdigest()[:24]


def cache_dir() -> Path:
    root = os.environ.get("LSST_SPARK_ML_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lsst_spark_ml")
    return Path(root) / "bayes_vi"


def get_network(model: Model, k: int, log=None) -> InferenceNet:
    """The trained network for this model and K: from memory, else the disk cache, else trained (and cached)."""
    nets = model.__dict__.get("_vi_nets", {})
    if k in nets:
        return nets[k]
    path = cache_dir() / f"{_key(model, k)}.pt"
    if path.is_file():
        try:
            return install_network(model, k, torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # noqa: BLE001 - a corrupt or stale cache entry is retrained, never trusted
            pass
    n_threads = torch.get_num_threads()
    with torch.enable_grad():
        state = network_state(train(model, k, log=log))
    torch.set_num_threads(n_threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)           # atomic: concurrent workers never read a half-written file
    except OSError:
        pass
    return install_network(model, k, state)


def network_state(net: InferenceNet) -> dict:
    """The trained weights as the disk cache holds them and a Spark job ships them to its workers."""
    return {"n_in": net.body[0].in_features, "weights": {k: v.detach().clone() for k, v in net.state_dict().items()}}


def install_network(model: Model, k: int, state: dict) -> InferenceNet:
    """Put a network (``network_state``: from the disk cache, or trained on a job's driver) into ``model``'s
    memory cache, where ``get_network`` finds it."""
    nets = model.__dict__.setdefault("_vi_nets", {})
    if k not in nets:
        net = InferenceNet(state["n_in"], k)
        net.load_state_dict(state["weights"])
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        nets[k] = net
    return nets[k]


def log_effective_fraction(log_w: torch.Tensor) -> torch.Tensor:
    """Importance weights (N, S) -> log of the effective sample fraction (sum w)^2 / (S sum w^2)."""
    lw = torch.nan_to_num(log_w, nan=-math.inf)
    return 2 * torch.logsumexp(lw, 1) - torch.logsumexp(2 * lw, 1) - math.log(lw.shape[1])
