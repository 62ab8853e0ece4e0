"""Objects per second per core of the three Bayesian photo-z methods, measured in one run on the same objects.

    flock /tmp/lsm-heavy.lock .venv/bin/python benchmarks/bayes_throughput.py --objects 512

Objects are drawn from the model (so all three methods fit the same well-posed problems); torch runs on one
thread so the numbers are per core (a Spark executor with c cores runs c such tasks). "Matched accuracy" is
reported beside the speed: the fraction of objects whose MCMC / VI median lies within 0.01(1+z) of the grid's.
"""
from __future__ import annotations

import argparse
import json
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
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.conf, a.overrides)
    t0 = time.perf_counter()
    model = Model(build_model_grid(cfg.bayes, BANDS), cfg.bayes)
    setup = time.perf_counter() - t0
    flux, err, _, _ = draw_objects(model, a.objects, seed=cfg.bayes.seed)
    edges = np.linspace(cfg.model.z_min, cfg.model.z_max, cfg.model.n_bins + 1)
    for m in ("grid", "mcmc", "vi"):     # first calls import torch.optim/FFT machinery: not per-object cost
        fit(model, flux[:4], err[:4], "flux", BANDS, LSST_1SIGMA_LIMITS, m, edges)
    res = {m: fit(model, flux, err, "flux", BANDS, LSST_1SIGMA_LIMITS, m, edges) for m in ("grid", "mcmc", "vi")}
    zg = res["grid"].columns["z_median"]
    report = {"objects": a.objects, "threads": a.threads, "model_grid_seconds": round(setup, 2),
              "batch_size": cfg.bayes.batch_size}
    for m, r in res.items():
        report[m] = {"seconds": round(r.seconds, 3),
                     "objects_per_second_per_core": round(a.objects / r.seconds / a.threads, 1)}
        if m != "grid":
            d = np.abs(r.columns["z_median"] - zg) / (1 + zg)
            report[m]["frac_median_within_0.01(1+z)_of_grid"] = round(float(np.mean(d < 0.01)), 3)
    report["mcmc"]["evals_per_object"] = (cfg.bayes.mcmc_burn + cfg.bayes.mcmc_steps) * cfg.bayes.mcmc_walkers
    report["vi_speedup_over_mcmc"] = round(res["mcmc"].seconds / res["vi"].seconds, 2)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
