"""Issue 5 targets, measured: (1) MCMC and VI against the exact grid on objects drawn from the model,
(2) network vs grid vs MCMC vs VI on flagged cosmoDC2 validation galaxies, point metrics and CRPS.

    flock /tmp/lsm-heavy.lock .venv/bin/python scripts/evaluate_bayes.py --synthetic 300 --dc2 500 \
        --out outputs/bayes_eval.json

Without --conf the settings are conf/bayes.yaml's. ``--amortised`` adds the amortised and semi-amortised VI
(its network is trained first, or read from the cache: lsst_spark_ml/bayes/amortised.py). The grid used as the
reference is checked against a converged one (``--ref-interp`` template-mixture nodes per segment).

"Flagged": with ``--dcp-model DIR``, the rows a DCP model flags (``ood_flag``) among the odd rows of the
validation file (the evaluation half: never in the DCP's labelled set nor its unlabelled region), with that
model's TS3 photo-z as "the network"; the unflagged rows are reported beside them. Without it, the shipped
MBRNN's least certain decile (largest z_std), which is what the OOD stage is meant to catch. A DCP model
trained on a spectroscopic-like selection (``--dcp-model`` from ``lsst-spark-ml ood fit --labelled`` on the
training file's i < 23 rows, see benchmarks/bayes_results.md) is the case the follow-up exists for: the
network has not seen faint, high-redshift galaxies, and the templates do not depend on its training set.
Single-threaded torch so seconds are per core.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsst_spark_ml.bayes.fit import fit                                     # noqa: E402
from lsst_spark_ml.bayes.posterior import Model                             # noqa: E402
from lsst_spark_ml.bayes.summaries import cdf_at                            # noqa: E402
from lsst_spark_ml.bayes.synthetic import draw_objects                      # noqa: E402
from lsst_spark_ml.bayes.templates import build_model_grid                  # noqa: E402
from lsst_spark_ml.config import LSST_1SIGMA_LIMITS, load_config            # noqa: E402
from lsst_spark_ml.metrics import reference as R                            # noqa: E402

BANDS = list("ugrizy")
METHODS = ("grid", "mcmc", "vi")


def run_all(model, values, errors, kind, edges, amortised: bool = False, short_mcmc=(), keep_raw: bool = False):
    """Every method on the same objects; ``short_mcmc``: extra (burn, steps) chain lengths, named mcmc-B+S;
    ``keep_raw``: also each method's CDF or samples (for the PIT; not part of the timed work a job does)."""
    runs = [(m, model, m, None) for m in METHODS]
    runs += [(f"mcmc-{b}+{n}", Model(model.grid, dataclasses.replace(model.settings, mcmc_burn=b, mcmc_steps=n)),
              "mcmc", None) for b, n in short_mcmc]
    if amortised:
        runs += [("vi-amortised", model, "vi", "amortised"), ("vi-semi-amortised", model, "vi", "semi-amortised")]
    out = {}
    for _, mod, m, mode in runs:   # warm-up: first calls import torch.optim/FFT machinery (and train/load the network)
        fit(mod, values[:4], errors[:4], kind, BANDS, LSST_1SIGMA_LIMITS, m, edges, vi_mode=mode)
    for name, mod, m, mode in runs:
        out[name] = fit(mod, values, errors, kind, BANDS, LSST_1SIGMA_LIMITS, m, edges, keep_raw=keep_raw,
                        vi_mode=mode)
    return out


def agreement(res, rng) -> dict:
    g = res["grid"]
    zg = g.columns["z_median"]
    grid_cdf = np.concatenate(g.extra["cdf"])
    zgrid = MODEL.grid.z
    # A truth drawn from the grid posterior: PIT of each method against it is uniform iff the two agree.
    u = rng.uniform(size=len(grid_cdf))
    z_draw = np.array([np.interp(ui, c, zgrid) for ui, c in zip(u, grid_cdf)])
    out = {}
    for m in [k for k in res if k != "grid"]:
        r = res[m]
        d = np.abs(r.columns["z_median"] - zg) / (1 + zg)
        if m == "mcmc":
            samples = np.concatenate(r.extra["samples"])
            pit = (samples < z_draw[:, None]).mean(axis=1)
        else:
            pit = cdf_at(zgrid, np.concatenate(r.extra["cdf"]), z_draw[:, None])[:, 0]
        ks = stats.kstest(pit, "uniform")
        out[m] = {"frac_median_within_0.01(1+z)": float(np.mean(d < 0.01)),
                  "frac_median_within_0.05(1+z)": float(np.mean(d < 0.05)),
                  "pit_vs_grid_ks": float(ks.statistic), "pit_vs_grid_ks_pvalue": float(ks.pvalue),
                  "seconds_per_object": r.seconds / len(zg), "objects_per_second_per_core": len(zg) / r.seconds,
                  "flagged_not_converged": float(np.mean(r.columns["flags"] & 2 > 0)),
                  "log_posterior_evaluations_per_object": float(r.extra.get("n_evals", 0))}
        if "n_refined" in r.extra:
            out[m]["frac_refined_per_object"] = r.extra["n_refined"] / len(zg)
    out["grid"] = {"seconds_per_object": g.seconds / len(zg), "objects_per_second_per_core": len(zg) / g.seconds}
    out["vi_speedup_over_mcmc"] = res["mcmc"].seconds / res["vi"].seconds
    return out


def _method_metrics(network_pred, res, zt, edges_net, rows) -> dict:
    out = {"network": {"point": R.point_metrics(network_pred["z_median"][rows], zt),
                       "crps_mean": float(np.nanmean(R.crps_values(
                           R.normalise_pdfs(network_pred["pdf"][rows])[0], edges_net, zt)))}}
    for m, r in res.items():
        c = r.columns
        ok = np.isfinite(c["z_median"])
        out[m] = {"point": R.point_metrics(c["z_median"][ok], zt[ok]),
                  "crps_mean": float(np.mean(R.crps_values(R.normalise_pdfs(c["pdf"][ok])[0], edges_net, zt[ok]))),
                  "seconds": r.seconds, "objects_per_second_per_core": len(zt) / r.seconds,
                  "n_no_data": int((~ok).sum()),
                  # MCMC: R-hat or ESS failed; VI: non-finite ELBO. An answer its own diagnostics reject is not
                  # one a user can adopt, however good it happens to be.
                  "flagged_not_converged": float(np.mean(c["flags"] & 2 > 0))}
    return out


def dc2_comparison(n_max: int, edges_net, rng, dcp_model: str | None = None, amortised: bool = False,
                   short_mcmc=()) -> dict:
    if dcp_model:
        from lsst_spark_ml.artefacts import load_artefact
        from lsst_spark_ml.inference.dcp import DCPPredictor
        from lsst_spark_ml.ood.datasets import dc2_frame
        ev = dc2_frame("validation").iloc[1::2]
        v = ev[[f"mag_{b}_lsst" for b in BANDS]].to_numpy()
        e = ev[[f"mag_err_{b}_lsst" for b in BANDS]].to_numpy()
        z = ev["redshift"].to_numpy()
        dcp = DCPPredictor.from_artefact(load_artefact(dcp_model))
        pred = dcp.predict(v, e, "mag")
        edges_net = dcp.edges
        flag = pred["ood_flag"] & pred["ok"]
        flagged, rest = np.flatnonzero(flag), np.flatnonzero(~flag & pred["ok"])
        selection = (f"ood_flag of {dcp_model} (sha256 {dcp.sha256[:8]}) on the {len(z)} evaluation-half "
                     f"validation galaxies: {len(flagged)} flagged")
    else:
        from helpers_dc2 import load_validation
        from lsst_spark_ml.cli import default_model_dir
        from lsst_spark_ml.inference.photoz import PhotozPredictor
        v, e, z = load_validation()
        pred = PhotozPredictor.load(default_model_dir()).predict(v, e, "mag")
        cut = np.nanpercentile(pred["z_std"], 90)
        flagged, rest = np.flatnonzero(pred["z_std"] >= cut), np.flatnonzero(pred["z_std"] < cut)
        selection = f"top decile of the shipped MBRNN's z_std (>= {cut:.3f}): {len(flagged)} objects"
    n_flagged = len(flagged)
    if len(flagged) > n_max:
        flagged = np.sort(rng.choice(flagged, n_max, replace=False))
    res = run_all(MODEL, v[flagged], e[flagged], "mag", edges_net, amortised, short_mcmc)
    out = {"selection": selection, "n_evaluated": len(flagged),
           **_method_metrics(pred, res, z[flagged], edges_net, flagged)}
    imag = v[:, BANDS.index("i")]
    out["flagged_i_mag_percentiles_5_50_95"] = np.nanpercentile(imag[flagged], [5, 50, 95]).tolist()
    out["flagged_z_percentiles_5_50_95"] = np.percentile(z[flagged], [5, 50, 95]).tolist()
    if dcp_model:
        # The unflagged rows, where the network is kept: the flag is only useful if it is good there.
        sample = np.sort(rng.choice(rest, min(n_max, len(rest)), replace=False))
        res_rest = {"vi": fit(MODEL, v[sample], e[sample], "mag", BANDS, LSST_1SIGMA_LIMITS, "vi", edges_net)}
        out["unflagged"] = {"n": int(len(rest)), "n_evaluated": len(sample),
                            **_method_metrics(pred, res_rest, z[sample], edges_net, sample)}
        ok = pred["ok"]
        out["all_network"] = R.point_metrics(pred["z_median"][ok], z[ok])
        out["fraction_flagged"] = n_flagged / len(z)
        if len(flagged) == n_flagged:
            # The one output a user gets: the network's answer, replaced by the Bayesian one where flagged.
            for m, r in res.items():
                adopted = pred["z_median"].copy()
                zb = r.columns["z_median"]
                adopted[flagged[np.isfinite(zb)]] = zb[np.isfinite(zb)]
                out[f"all_adopted_{m}"] = R.point_metrics(adopted[ok], z[ok])
    else:
        out["all_validation_network"] = R.point_metrics(pred["z_median"], z)
    return out


def main(argv=None) -> int:
    global MODEL
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", type=int, default=300, help="objects drawn from the model (agreement test)")
    p.add_argument("--dc2", type=int, default=500, help="at most this many flagged DC2 validation galaxies")
    p.add_argument("--conf", action="append", default=[], help="configuration YAML (bayes section)")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--amortised", action="store_true", help="also amortised and semi-amortised VI")
    p.add_argument("--ref-interp", type=int, default=31, help="converged grid for checking the reference grid")
    p.add_argument("--short-mcmc", type=int, nargs=2, action="append", default=[], metavar=("BURN", "STEPS"),
                   help="DC2 comparison: also MCMC with these chain lengths (repeatable)")
    p.add_argument("--dcp-model", help="select the DC2 rows this DCP model flags (else the shipped MBRNN's "
                   "least certain decile)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(a.conf or [str(Path(__file__).resolve().parent.parent / "conf" / "bayes.yaml")], a.overrides)
    MODEL = Model(build_model_grid(cfg.bayes, BANDS), cfg.bayes)
    edges = np.linspace(cfg.model.z_min, cfg.model.z_max, cfg.model.n_bins + 1)
    rng = np.random.default_rng(cfg.bayes.seed)
    t0 = time.time()
    report = {"settings": vars(cfg.bayes), "torch_threads": 1}
    if a.synthetic:
        flux, err, _, _ = draw_objects(MODEL, a.synthetic, seed=cfg.bayes.seed)
        res = run_all(MODEL, flux, err, "flux", edges, a.amortised, keep_raw=True)
        report["synthetic_agreement"] = agreement(res, rng)
        # Is the reference converged? The same grid with many more template-mixture nodes.
        ref_model = Model(MODEL.grid, dataclasses.replace(cfg.bayes, n_interp=a.ref_interp))
        ref = fit(ref_model, flux, err, "flux", BANDS, LSST_1SIGMA_LIMITS, "grid", edges).columns["z_median"]
        out = {"ref_interp": a.ref_interp}
        for m, r in res.items():
            d = np.abs(r.columns["z_median"] - ref) / (1 + ref)
            out[m] = {"frac_median_within_0.01(1+z)": float(np.mean(d < 0.01)), "max": float(d.max())}
        report["synthetic_agreement"]["against_converged_grid"] = out
    if a.dc2:
        report["dc2_flagged"] = dc2_comparison(a.dc2, edges, rng, a.dcp_model, a.amortised, a.short_mcmc)
    report["seconds"] = round(time.time() - t0, 1)
    text = json.dumps(report, indent=2, default=float)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


MODEL = None

if __name__ == "__main__":
    sys.exit(main())
