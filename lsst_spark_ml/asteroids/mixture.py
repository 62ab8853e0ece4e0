"""Gaussian mixtures in colour space with missing bands and per-object errors (numpy; no Spark here).

Why this and not a plain GMM: LSST asteroids miss bands and carry very different errors. Each object is
modelled exactly (extreme deconvolution, Bovy et al. 2011): the model lives in the space of the B - 1
reflectance colours relative to a reference band; an object observing bands O sees the colours of O
relative to its own first observed band, ``d = A c`` (a linear projection), with noise covariance
``S`` from its magnitude errors. The marginal of a Gaussian under a projection is Gaussian, so the
likelihood ``N(d; A mu_k, A Sigma_k A^T + S)`` is exact for any missing pattern, including a missing
reference band. EM uses the posterior of the noise-free colours given ``d``:

    b_ik = mu_k + Sigma_k A^T T_ik^-1 (d_i - A mu_k),   B_ik = Sigma_k - Sigma_k A^T T_ik^-1 A Sigma_k

and the sufficient statistics ``N_k = sum q_ik``, ``S1_k = sum q_ik b_ik``, ``S2_k = sum q_ik (b b^T + B)``
add over rows, so Spark sums them per partition and the driver only ever sees K (1 + D + D^2) numbers.

The batched Cholesky below loops over the (at most 7) matrix indices and vectorises over objects:
for 4 x 4 matrices it is an order of magnitude faster than numpy's per-matrix LAPACK calls.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass
class MixtureParams:
    """``weights`` (K,), ``means`` (K, D), ``covs`` (K, D, D) in colour space; ``component_class`` (K,) class index."""
    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray
    component_class: np.ndarray

    @property
    def k(self) -> int:
        return len(self.weights)

    @property
    def d(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "covs": self.covs.tolist(),
                "component_class": [int(c) for c in self.component_class]}

    @classmethod
    def from_dict(cls, d: dict) -> "MixtureParams":
        return cls(np.asarray(d["weights"], float), np.asarray(d["means"], float), np.asarray(d["covs"], float),
                   np.asarray(d["component_class"], int))

    def n_free(self) -> int:
        """Free parameters, for BIC."""
        return (self.k - 1) + self.k * self.d + self.k * self.d * (self.d + 1) // 2


# --------------------------------------------------------------------------- projections

def pattern_codes(observed: np.ndarray) -> np.ndarray:
    """(N, B) bool -> (N,) int: bit b set where band b is observed."""
    return (observed.astype(np.int64) << np.arange(observed.shape[1], dtype=np.int64)).sum(axis=1)


def projection(code: int, n_bands: int, ref: int) -> tuple[np.ndarray, np.ndarray]:
    """Observed band indices of ``code`` and A (q, D) mapping model colours to the object's own colours."""
    bands = [b for b in range(n_bands) if code >> b & 1]
    others = [b for b in range(n_bands) if b != ref]

    def unit(b):
        e = np.zeros(n_bands - 1)
        if b != ref:
            e[others.index(b)] = 1.0
        return e

    a = np.array([unit(b) - unit(bands[0]) for b in bands[1:]]).reshape(len(bands) - 1, n_bands - 1)
    return np.asarray(bands), a


def observed_colours(mags: np.ndarray, errs: np.ndarray, bands: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colours relative to the first observed band and their (n, q, q) noise covariance."""
    x = mags[:, bands]
    s2 = errs[:, bands] ** 2
    d = x[:, 1:] - x[:, :1]
    q = len(bands) - 1
    cov = np.broadcast_to(s2[:, :1, None], (len(x), q, q)).copy()
    idx = np.arange(q)
    cov[:, idx, idx] += s2[:, 1:]
    return d, cov


# --------------------------------------------------------------------------- batched small linear algebra

def chol(t: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of each (n, q, q) symmetric positive-definite matrix."""
    n, q, _ = t.shape
    low = np.zeros_like(t)
    for j in range(q):
        s = t[:, j, j] - np.einsum("nk,nk->n", low[:, j, :j], low[:, j, :j])
        low[:, j, j] = np.sqrt(np.maximum(s, 1e-300))
        for i in range(j + 1, q):
            low[:, i, j] = (t[:, i, j] - np.einsum("nk,nk->n", low[:, i, :j], low[:, j, :j])) / low[:, j, j]
    return low


def forward(low: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Solve L y = r for each row."""
    y = np.empty_like(r)
    for i in range(r.shape[1]):
        y[:, i] = (r[:, i] - np.einsum("nk,nk->n", low[:, i, :i], y[:, :i])) / low[:, i, i]
    return y


def backward(low: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Solve L^T x = y for each row."""
    q = y.shape[1]
    x = np.empty_like(y)
    for i in range(q - 1, -1, -1):
        x[:, i] = (y[:, i] - np.einsum("nk,nk->n", low[:, i + 1:, i], x[:, i + 1:])) / low[:, i, i]
    return x


def inverse_from_chol(low: np.ndarray) -> np.ndarray:
    n, q, _ = low.shape
    eye = np.broadcast_to(np.eye(q), (n, q, q))
    cols = [backward(low, forward(low, eye[:, :, j])) for j in range(q)]
    return np.stack(cols, axis=2)


# --------------------------------------------------------------------------- likelihoods and E-step

SMALL = 256   # below this many rows numpy's per-matrix LAPACK calls beat the index loops


def component_terms(params: MixtureParams, d: np.ndarray, noise: np.ndarray, a: np.ndarray, want_stats: bool):
    """Per component: log N(d; A mu, A Sigma A^T + S) (n,), chi2 (n,), and (when asked) v = T^-1 r, T^-1."""
    q = a.shape[0]
    small = len(d) < SMALL
    out = []
    for k in range(params.k):
        t = a @ params.covs[k] @ a.T + noise
        r = d - a @ params.means[k]
        if small:
            tinv = np.linalg.inv(t)
            v = np.einsum("nij,nj->ni", tinv, r)
            chi2 = np.einsum("ni,ni->n", r, v)
            logdet = np.linalg.slogdet(t)[1]
        else:
            low = chol(t)
            y = forward(low, r)
            chi2 = np.einsum("ni,ni->n", y, y)
            logdet = 2.0 * np.log(np.diagonal(low, axis1=1, axis2=2)).sum(axis=1)
            v = backward(low, y) if want_stats else None
            tinv = inverse_from_chol(low) if want_stats else None
        logp = -0.5 * (chi2 + logdet + q * LOG_2PI)
        out.append((logp, chi2, v, tinv) if want_stats else (logp, chi2, None, None))
    return out


def logsumexp(x: np.ndarray, axis: int = 1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))).squeeze(axis)


def usable(mags: np.ndarray, errs: np.ndarray | None) -> np.ndarray:
    """(N, B) bool: a band is usable when its magnitude is finite and its error (if any) finite and > 0."""
    ok = np.isfinite(mags)
    if errs is not None:
        ok &= np.isfinite(errs) & (errs > 0)
    return ok


def _groups(observed: np.ndarray):
    codes = pattern_codes(observed)
    counts = observed.sum(axis=1)
    for code in np.unique(codes[counts >= 2]):
        yield int(code), np.nonzero(codes == code)[0]


def e_step_stats(params: MixtureParams, mags: np.ndarray, errs: np.ndarray, ref: int,
                 label_mask: np.ndarray | None = None) -> dict:
    """Sufficient statistics of one block of rows.

    ``label_mask`` (N, K) bool: for a labelled row, the components its class allows (responsibilities are
    renormalised over them, i.e. the label fixes the class); all True for an unlabelled row.
    Returns N (K,), S1 (K, D), S2 (K, D, D), loglik (sum of log marginal likelihoods), rows used.
    """
    n_bands = mags.shape[1]
    kk, dd = params.k, params.d
    stats = {"N": np.zeros(kk), "S1": np.zeros((kk, dd)), "S2": np.zeros((kk, dd, dd)), "loglik": 0.0,
             "rows": 0.0}
    observed = usable(mags, errs)
    logw = np.log(np.maximum(params.weights, 1e-300))
    for code, idx in _groups(observed):
        bands, a = projection(code, n_bands, ref)
        d, noise = observed_colours(mags[idx], errs[idx], bands)
        terms = component_terms(params, d, noise, a, want_stats=True)
        logp = np.stack([t[0] for t in terms], axis=1) + logw
        if label_mask is not None:
            logp_fixed = np.where(label_mask[idx], logp, -np.inf)
        else:
            logp_fixed = logp
        norm = logsumexp(logp_fixed)
        resp = np.exp(logp_fixed - norm[:, None])
        stats["loglik"] += float(logsumexp(logp).sum())
        stats["rows"] += len(idx)
        for k, (_, _, v, tinv) in enumerate(terms):
            qk = resp[:, k]
            nk = qk.sum()
            if nk <= 0:
                continue
            g = params.covs[k] @ a.T                      # (D, q)
            sv = qk @ v                                   # (q,)
            svv = np.einsum("n,ni,nj->ij", qk, v, v)
            stin = np.einsum("n,nij->ij", qk, tinv)
            mu = params.means[k]
            gsv = g @ sv
            stats["N"][k] += nk
            stats["S1"][k] += nk * mu + gsv
            stats["S2"][k] += (nk * np.outer(mu, mu) + np.outer(mu, gsv) + np.outer(gsv, mu) + g @ svv @ g.T
                               + nk * params.covs[k] - g @ stin @ g.T)
    return stats


def flatten_stats(stats: dict) -> np.ndarray:
    return np.concatenate([stats["N"], stats["S1"].ravel(), stats["S2"].ravel(), [stats["loglik"], stats["rows"]]])


def unflatten_stats(vec: np.ndarray, k: int, d: int) -> dict:
    vec = np.asarray(vec, float)
    i = 0
    n = vec[i:i + k]; i += k
    s1 = vec[i:i + k * d].reshape(k, d); i += k * d
    s2 = vec[i:i + k * d * d].reshape(k, d, d); i += k * d * d
    return {"N": n, "S1": s1, "S2": s2, "loglik": float(vec[i]), "rows": float(vec[i + 1])}


def m_step(params: MixtureParams, stats: dict, reg_covar: float) -> MixtureParams:
    n = stats["N"]
    total = max(n.sum(), 1e-300)
    means = params.means.copy()
    covs = params.covs.copy()
    for k in range(params.k):
        if n[k] < 1e-6:           # an empty component keeps its parameters (and a tiny weight)
            continue
        mu = stats["S1"][k] / n[k]
        cov = stats["S2"][k] / n[k] - np.outer(mu, mu)
        cov = 0.5 * (cov + cov.T) + reg_covar * np.eye(params.d)
        means[k], covs[k] = mu, cov
    weights = np.maximum(n / total, 1e-8)
    return MixtureParams(weights / weights.sum(), means, covs, params.component_class.copy())


def posterior(params: MixtureParams, mags: np.ndarray, errs: np.ndarray, ref: int, n_classes: int):
    """Per row: class probabilities (N, C), log marginal likelihood, chi2 tail of the nearest component, bands used.

    Rows with fewer than two usable bands get NaN everywhere (the caller flags them).
    """
    from scipy.special import gammaincc
    n, n_bands = mags.shape
    probs = np.full((n, n_classes), np.nan)
    loglik = np.full(n, np.nan)
    tail = np.full(n, np.nan)
    observed = usable(mags, errs)
    logw = np.log(np.maximum(params.weights, 1e-300))
    onehot = np.zeros((params.k, n_classes))
    onehot[np.arange(params.k), params.component_class] = 1.0
    for code, idx in _groups(observed):
        bands, a = projection(code, n_bands, ref)
        d, noise = observed_colours(mags[idx], errs[idx], bands)
        terms = component_terms(params, d, noise, a, want_stats=False)
        logp = np.stack([t[0] for t in terms], axis=1) + logw
        chi2 = np.stack([t[1] for t in terms], axis=1)
        norm = logsumexp(logp)
        probs[idx] = np.exp(logp - norm[:, None]) @ onehot
        loglik[idx] = norm
        # Upper-tail probability of the best chi2 with q dof: comparable across missing-band patterns.
        tail[idx] = gammaincc(0.5 * a.shape[0], 0.5 * chi2.min(axis=1))
    return probs, loglik, tail, observed.sum(axis=1)


def init_params(sample_colours: np.ndarray, sample_labels: np.ndarray | None, n_classes: int,
                components_per_class: int, rng: np.random.Generator, reg_covar: float) -> MixtureParams:
    """Start values from a bounded driver-side sample of complete rows (colours relative to the reference band).

    Labelled: each class's components start at its members' mean (jittered) and covariance.
    Unlabelled (``sample_labels`` None): k-means++ centres, pooled covariance.
    """
    x = sample_colours
    d = x.shape[1]
    pooled = np.cov(x.T).reshape(d, d) + reg_covar * np.eye(d) if len(x) > 1 else np.eye(d) * 0.01
    means, covs, cls = [], [], []
    if sample_labels is not None:
        for c in range(n_classes):
            xc = x[sample_labels == c]
            mu = xc.mean(axis=0) if len(xc) else x.mean(axis=0)
            cov = (np.cov(xc.T).reshape(d, d) + reg_covar * np.eye(d)) if len(xc) > d + 1 else pooled
            chol_c = np.linalg.cholesky(cov)
            for j in range(components_per_class):
                shift = chol_c @ rng.standard_normal(d) * (0.5 if j else 0.0)
                means.append(mu + shift)
                covs.append(cov)
                cls.append(c)
    else:
        k = n_classes * components_per_class
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            dist = np.min([((x - c) ** 2).sum(axis=1) for c in centres], axis=0)
            p = dist / dist.sum() if dist.sum() > 0 else None
            centres.append(x[rng.choice(len(x), p=p)])
        means = centres
        covs = [pooled / max(k, 1) ** (2.0 / d) + reg_covar * np.eye(d) for _ in range(k)]
        cls = list(range(k))
    kk = len(means)
    return MixtureParams(np.full(kk, 1.0 / kk), np.asarray(means), np.asarray(covs), np.asarray(cls))
