"""Objects per second per core of the three Bayesian photo-z methods, measured in one run on the same objects.

    flock /tmp/lsm-heavy.lock .venv/bin/python benchmarks/bayes_throughput.py --objects 512 --fresh-network

Objects are drawn from the model (so all three methods fit the same well-posed problems); torch runs on one
thread so the numbers are per core (a Spark executor with c cores runs c such tasks). "Matched accuracy" is
reported beside the speed: the fraction of objects whose MCMC / VI median lies within 0.01(1+z) of the grid's.
Rows: the grid; MCMC at the configured length and shorter ones (``--short-mcmc BURN STEPS``, repeatable;
default 40 + 40, the cheapest chain found to keep the 95% agreement, and 0 + 10, the shortest allowed); VI as
configured (per-object optimisation), amortised (the inference network alone) and semi-amortised (the network,
then per-object steps where its fit fails the importance-sampling check). The network's one-off training is
timed separately (``--fresh-network``: train it now, in a temporary cache, instead of reading the cached one).
Without --conf the settings are conf/bayes.yaml's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lsst_spark_ml.bayes.fit import fit                                     # noqa: E402
from lsst_spark_ml.bayes.posterior import Model                             # noqa: E402
from lsst_spark_ml.bayes.synthetic import draw_objects                      # noqa: E402
from lsst_spark_ml.bayes.templates import build_model_grid                  # noqa: E402
from lsst_spark_ml.config import LSST_1SIGMA_LIMITS, load_config            # noqa: E402

BANDS = list("ugrizy")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=512)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: per-core numbers)")
    p.add_argument("--conf", action="append", default=[])
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--out", help="JSON file to write")
    p.add_argument("--short-mcmc", type=int, nargs=2, action="append", metavar=("BURN", "STEPS"),
                   help="extra MCMC lengths to time (repeatable); default 40 40 and 0 10 (the shortest allowed)")
    p.add_argument("--fresh-network", action="store_true", help="train the amortised-VI network now (timed)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.conf or [str(Path(__file__).resolve().parent.parent / "conf" / "bayes.yaml")], a.overrides)
    shorts = a.short_mcmc or [(40, 40), (0, 10)]
    if a.fresh_network:
        os.environ["LSST_SPARK_ML_CACHE"] = tempfile.mkdtemp(prefix="bayes_vi_")
    t0 = time.perf_counter()
    model = Model(build_model_grid(cfg.bayes, BANDS), cfg.bayes)
    setup = time.perf_counter() - t0
    flux, err, _, _ = draw_objects(model, a.objects, seed=cfg.bayes.seed)
    edges = np.linspace(cfg.model.z_min, cfg.model.z_max, cfg.model.n_bins + 1)
    from lsst_spark_ml.bayes.amortised import get_network
    t1 = time.perf_counter()
    get_network(model, cfg.bayes.vi_components)
    network = time.perf_counter() - t1
    runs = {"grid": (model, "grid", None), "mcmc": (model, "mcmc", None)}
    for burn, steps in shorts:
        runs[f"mcmc-{burn}+{steps}"] = (Model(model.grid, dataclasses.replace(cfg.bayes, mcmc_burn=burn,
                                                                                mcmc_steps=steps)), "mcmc", None)
    runs.update({"vi": (model, "vi", None), "vi-amortised": (model, "vi", "amortised"),
                 "vi-semi-amortised": (model, "vi", "semi-amortised")})
    for mod, m, mode in runs.values():     # first calls import torch.optim/FFT machinery: not per-object cost
        fit(mod, flux[:4], err[:4], "flux", BANDS, LSST_1SIGMA_LIMITS, m, edges, vi_mode=mode)
    res = {k: fit(mod, flux, err, "flux", BANDS, LSST_1SIGMA_LIMITS, m, edges, vi_mode=mode)
           for k, (mod, m, mode) in runs.items()}
    zg = res["grid"].columns["z_median"]
    report = {"objects": a.objects, "threads": a.threads, "model_grid_seconds": round(setup, 2),
              "amortised_network_seconds": round(network, 1),
              "amortised_network": "trained now" if a.fresh_network else "from the cache (trained if absent)",
              "batch_size": cfg.bayes.batch_size, "n_interp": cfg.bayes.n_interp}
    for m, r in res.items():
        report[m] = {"seconds": round(r.seconds, 3),
                     "objects_per_second_per_core": round(a.objects / r.seconds / a.threads, 1)}
        if m != "grid":
            d = np.abs(r.columns["z_median"] - zg) / (1 + zg)
            report[m]["frac_median_within_0.01(1+z)_of_grid"] = round(float(np.mean(d < 0.01)), 3)
            report[m]["log_posterior_evaluations_per_object"] = round(float(r.extra.get("n_evals", 0)), 1)
            # MCMC: R-hat > mcmc_rhat_max or ESS < mcmc_min_ess; VI: non-finite ELBO
            report[m]["frac_flagged_not_converged"] = round(float(np.mean(r.columns["flags"] & 2 > 0)), 3)
        if "n_refined" in r.extra:
            report[m]["frac_refined"] = round(r.extra["n_refined"] / a.objects, 3)
    report["speedup_over"] = {v: {m: round(res[m].seconds / res[v].seconds, 2) for m in res if m.startswith("mcmc")}
                              for v in ("vi", "vi-amortised", "vi-semi-amortised")}
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
