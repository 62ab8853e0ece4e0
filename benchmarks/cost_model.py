"""Cost of one data release: FLOPs per object, measured objects/s per core, projected core-hours (and GPU-hours).

    .venv/bin/python benchmarks/cost_model.py [--objects 20000] [--galaxies 20e9] [--stars 17e9]

Per model, on this machine, one torch thread (one core; Spark's layout is one task per core):
 * FLOPs per object: 2 x multiply-adds of the Linear layers from the layer shapes (``inference.fast.
   flops_per_row``); Softplus, softmax and the summaries are not counted (they are a few % of the time);
 * objects/s/core for the network alone (features already scaled) and for the whole per-row work
   (fluxes -> features -> network -> summaries), float32 and bfloat16 where the model supports it;
 * Bayesian follow-up: the measured numbers of benchmarks/bayes_results.md (not rerun: minutes per point),
   on the shipped DCP's flagged fraction and on a spectroscopic-like training set's;
 * morphology per cutout: DAT-Tiny at ``--morph-size`` px (random weights: speed does not depend on them) on
   GalSim renders of the survey domain, whole per-galaxy work (object masks, stretch, network), measured
   here on one core, float32 and bfloat16 autocast.
Projection: core-hours = objects / (objects/s/core) / 3600 for the whole per-row work, under the
assumptions printed with the table. GPU-hours: the rates measured on an NVIDIA H200 with 16 host cores
(benchmarks/gpu_results.md, benchmarks/gpu_check.py; no GPU on this machine), 16 tasks sharing the GPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# benchmarks/bayes_results.md, "Throughput" table (4,096 objects, 2 shared cores, 1 torch thread, default
# conf/bayes.yaml: n_interp 7, MCMC 16 x (150 + 250), VI iterative 6 x 100, amortised VI 1,024 per call)
BAYES_OBJECTS_PER_S_CORE = {"grid": 121.0, "mcmc": 273.0, "vi": 194.0, "vi_amortised": 18167.0}
# make demo / README: 320 of 20,449 cosmoDC2 validation galaxies carry ood_flag with the shipped DCP model
FLAGGED_GALAXY_FRACTION = 320 / 20449
# benchmarks/bayes_results.md: a DCP trained on a spectroscopic-like set (i < 23) flags 7,083 of 10,224
SPEC_LIKE_FLAGGED_FRACTION = 7083 / 10224
# benchmarks/gpu_results.md: one NVIDIA H200 + 16 host cores, 16 tasks sharing the GPU, whole per-row work,
# bfloat16 (photo-z ensemble) and bfloat16 autocast (DAT-Tiny 480 px, masks built on the host cores)
GPU_MEASURED = {"photoz_ensemble_rows_per_s": 5.45e6, "morphology_480_images_per_s": 129.0,
                "morphology_480_network_only_images_per_s": 460.0, "dcp_rows_per_s_one_task": 338e3,
                "device": "NVIDIA H200 + 16 host cores"}
# Galaxies resolved well enough for morphology: i < 23, about 10 per arcmin^2 over 18,000 deg^2 (an
# assumption, scaled linearly; --morph-galaxies)
MORPH_GALAXIES = 0.65e9


def _rate(f, n, repeats=3):
    f()
    best = min(_time(f) for _ in range(repeats))
    return n / best


def _time(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def morphology_rates(size: int, n: int) -> dict:
    """Images/s on one core for DAT-Tiny at ``size`` px: the whole per-galaxy work and the network alone."""
    import torch

    from lsst_spark_ml.config import MorphologySettings
    from lsst_spark_ml.inference.morphology import MorphologyPredictor
    from lsst_spark_ml.models.dat import build_morphology_model, count_flops
    from lsst_spark_ml.morphology.classes import CLASSES
    from lsst_spark_ml.morphology.inputs import build_inputs
    from lsst_spark_ml.morphology.render import RenderSettings, render_galaxies
    from lsst_spark_ml.training.morphology import network_config
    cfg = network_config(MorphologySettings(network="dat", preset="dat_tiny", image_size=size), len(CLASSES))
    torch.manual_seed(0)
    model = build_morphology_model("dat", cfg).eval()
    bands = render_galaxies(n, seed=5, settings=RenderSettings.survey(size=size)).images
    bands = bands.astype(np.float16).astype(np.float32)                  # what the cutout tables hold
    out = {"gflop": 2 * count_flops(model, (1, 11, size, size)) / 1e9}
    x = torch.from_numpy(build_inputs(bands[:1], size)[0])
    for prec in ("float32", "bfloat16"):
        pred = MorphologyPredictor(model, {"classes": list(CLASSES), "image_size": size}, "", torch.device("cpu"),
                                   prec)
        ac = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bfloat16")

        def net():
            with torch.inference_mode(), ac:
                model(x)
        out[prec + "_network"] = _rate(net, 1, repeats=2)
        out[prec] = _rate(lambda: pred.predict(bands, batch_size=1), n, repeats=1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=20000, help="objects timed per measurement")
    ap.add_argument("--galaxies", type=float, default=20e9)
    ap.add_argument("--stars", type=float, default=17e9)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--json", default=None)
    ap.add_argument("--morph-galaxies", type=float, default=MORPH_GALAXIES)
    ap.add_argument("--morph-size", type=int, default=480)
    ap.add_argument("--morph-images", type=int, default=4, help="cutouts timed per precision")
    args = ap.parse_args()

    import torch
    torch.set_num_threads(1)
    from lsst_spark_ml.artefacts import load_artefact
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.features.photometry import build_features
    from lsst_spark_ml.inference.accuracy import calibration_sample
    from lsst_spark_ml.inference.dcp import DCPPredictor
    from lsst_spark_ml.inference.fast import FoldedEnsemble, cpu_bf16_features, flops_per_row
    from lsst_spark_ml.inference.photoz import PhotozPredictor

    v, e, kind, _ = calibration_sample()
    reps = int(np.ceil(args.objects / len(v)))
    v, e = np.tile(v, (reps, 1))[:args.objects], np.tile(e, (reps, 1))[:args.objects]
    n, bs = len(v), args.batch
    rows = []

    pz = PhotozPredictor.load(default_model_dir(), precision="float32")
    arch = pz.manifest["architecture"]
    X, _, _ = build_features(v, e, kind, pz.bands, pz.features)
    Xt = torch.from_numpy(pz.scaler.transform(X)[0])
    member_flops = flops_per_row(arch["hidden"], arch["n_in"], arch["n_bins"])

    def net_rate(module):
        def run():
            with torch.inference_mode():
                for s in range(0, n, bs):
                    module(Xt[s:s + bs])
        return _rate(run, n)

    for prec, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        runner = FoldedEnsemble(pz.ensemble, dt)
        one = FoldedEnsemble(type(pz.ensemble)(pz.ensemble.members[:1]), dt)
        p = pz.with_precision(prec)
        rows.append({"model": "MBRNN member", "precision": prec, "flops": member_flops,
                     "net_per_s": net_rate(one), "whole_per_s": None})
        rows.append({"model": f"MBRNN ensemble ({arch['n_members']} members)", "precision": prec,
                     "flops": member_flops * arch["n_members"], "net_per_s": net_rate(runner),
                     "whole_per_s": _rate(lambda: p.predict(v, e, kind, batch_size=bs), n)})
        print(json.dumps(rows[-2:]), file=sys.stderr, flush=True)

    art = load_artefact(Path(default_model_dir()).parent / "dcp_dc2")
    dcp = DCPPredictor.from_artefact(art)
    da = art.manifest["architecture"]
    dcp_flops = 4 * flops_per_row(da["hidden"], da["n_in"], da["n_bins"])   # TS2 (he, le) + TS3 (he, le)
    Xd = dcp.scaler.transform(build_features(v, e, kind, dcp.bands, dcp.features)[0])[0]
    Xdt = torch.from_numpy(Xd)

    for prec in ("float32", "bfloat16"):
        d = dcp.with_precision(prec)

        def pair_only(d=d):
            with torch.inference_mode():
                for s in range(0, n, bs):
                    d._runners[0].member_logits(Xdt[s:s + bs])
        rows.append({"model": "DCP pair (TS2 he + le: the OOD score alone; folded)", "precision": prec,
                     "flops": dcp_flops // 2, "net_per_s": _rate(pair_only, n), "whole_per_s": None})
        rows.append({"model": "DCP (TS2 score pair + TS3 photo-z pair; folded)", "precision": prec,
                     "flops": dcp_flops, "net_per_s": _rate(lambda: d.score_and_pdf(Xd, bs), n),
                     "whole_per_s": _rate(lambda: d.predict(v, e, kind, batch_size=bs), n)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    morph = morphology_rates(args.morph_size, args.morph_images)
    print(json.dumps(morph), file=sys.stderr, flush=True)

    n_all = args.galaxies + args.stars
    flagged = FLAGGED_GALAXY_FRACTION * args.galaxies
    print(f"\ncost model: this CPU ({', '.join(cpu_bf16_features()) or 'no native bf16'}), 1 thread = 1 core, "
          f"{n:,} cosmoDC2 objects per measurement, network batch {bs}")
    print(f"release: {args.galaxies:.3g} galaxies + {args.stars:.3g} stars = {n_all:.3g} objects\n")
    print("| model | precision | MFLOP/object | network objects/s/core | whole per-row work objects/s/core | "
          "objects | core-hours (whole work) | GFLOP/s/core achieved |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    total = {"float32": 0.0, "bfloat16": 0.0}
    for r in rows:
        rate = r["whole_per_s"] or r["net_per_s"]
        objs = n_all
        ch = objs / rate / 3600
        r["core_hours"] = ch
        whole = f"{r['whole_per_s']:,.0f}" if r["whole_per_s"] else "(network only)"
        print(f"| {r['model']} | {r['precision']} | {r['flops'] / 1e6:.2f} | {r['net_per_s']:,.0f} | {whole} | "
              f"{objs:.3g} | {ch:,.0f} | {r['net_per_s'] * r['flops'] / 1e9:.1f} |")
    for method, rate in BAYES_OBJECTS_PER_S_CORE.items():
        ch = flagged / rate / 3600
        print(f"| Bayesian follow-up, {method} (measured, bayes_results.md) | float32 | - | - | {rate:,.0f} | "
              f"{flagged:.3g} | {ch:,.0f} | - |")
    for prec in ("float32", "bfloat16"):
        rate = morph[prec]
        print(f"| morphology, DAT-Tiny {args.morph_size} px per cutout (masks + network) | {prec} | "
              f"{morph['gflop'] * 1e3:,.0f} | {morph[prec + '_network']:.2f} | {rate:.2f} | "
              f"{args.morph_galaxies:.3g} | {args.morph_galaxies / rate / 3600:,.0f} | "
              f"{morph[prec + '_network'] * morph['gflop']:.1f} |")
    ens = {r["precision"]: r for r in rows if r["model"].startswith("MBRNN ensemble")}
    # the DCP model as the jobs run it: score (TS2) + photo-z (TS3)
    dcp_rows = {r["precision"]: r for r in rows if r["model"].startswith("DCP (")}
    vi = flagged / BAYES_OBJECTS_PER_S_CORE["vi"] / 3600
    for prec in total:
        total[prec] = ens[prec]["core_hours"] + dcp_rows[prec]["core_hours"] + vi
    print(f"\nrelease total (photo-z ensemble + DCP on every object, VI on flagged galaxies): "
          f"{total['float32']:,.0f} core-hours in float32, {total['bfloat16']:,.0f} in bfloat16 (both models pass "
          "the accuracy gate)")
    spec = SPEC_LIKE_FLAGGED_FRACTION * args.galaxies
    print(f"with a DCP trained on a spectroscopic-like set ({SPEC_LIKE_FLAGGED_FRACTION:.0%} of galaxies flagged, "
          f"{spec:.3g}): per-object VI {spec / BAYES_OBJECTS_PER_S_CORE['vi'] / 3600:,.0f} core-hours, amortised "
          f"VI {spec / BAYES_OBJECTS_PER_S_CORE['vi_amortised'] / 3600:,.0f}, MCMC "
          f"{spec / BAYES_OBJECTS_PER_S_CORE['mcmc'] / 3600:,.0f}")
    g = GPU_MEASURED
    print(f"\nGPU ({g['device']}, measured: benchmarks/gpu_results.md; 16 tasks share the GPU, whole per-row work):")
    print(f"  photo-z ensemble, bfloat16: {g['photoz_ensemble_rows_per_s'] / 1e6:.2f} M rows/s -> "
          f"{n_all / g['photoz_ensemble_rows_per_s'] / 3600:,.1f} GPU-hours for {n_all:.3g} objects")
    morph_gh = args.morph_galaxies / g["morphology_480_images_per_s"] / 3600
    morph_gh_net = args.morph_galaxies / g["morphology_480_network_only_images_per_s"] / 3600
    print(f"  morphology, DAT-Tiny 480 px, bfloat16: {g['morphology_480_images_per_s']:.0f} images/s -> "
          f"{morph_gh:,.0f} GPU-hours for {args.morph_galaxies:.3g} galaxies ({morph_gh_net:,.0f} if the masks "
          "were built on the GPU: the network-only rate)")
    print(f"  DCP (one task per GPU measured, float32): {g['dcp_rows_per_s_one_task'] / 1e3:.0f} k rows/s -> "
          f"{n_all / g['dcp_rows_per_s_one_task'] / 3600:,.1f} GPU-hours at one task per GPU (an upper bound)")
    print("\nAssumptions: every object (galaxy or star) goes through the photo-z ensemble and DCP, because the "
          "star/galaxy split is itself uncertain; the Bayesian follow-up runs on DCP-flagged galaxies only, at "
          f"the flagged fraction measured on cosmoDC2 ({FLAGGED_GALAXY_FRACTION:.2%}); a cluster core is as fast as "
          "one core here; Spark's overhead is the measured Spark / plain-torch ratio (benchmarks/inference_paths.py) "
          "and is not included above; reading and writing (HATS) are not included (release_throughput.py); "
          f"morphology runs on {args.morph_galaxies:.3g} galaxies (i < 23, about 10 per arcmin^2 over 18,000 "
          f"deg^2) at {args.morph_size} px, and a {args.morph_size} px float16 cutout is "
          f"{5 * args.morph_size ** 2 * 2 / 1e6:.1f} MB to store and read.")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "total_core_hours": total}, indent=1, default=float))


if __name__ == "__main__":
    main()
