"""GPU check and benchmark in one run: correctness of the CUDA paths, then rows/s and images/s against the
device's own matrix-multiply peak measured in the same run.

    .venv/bin/python benchmarks/gpu_check.py prepare --dir outputs/gpu_in        # here: inputs that travel
    python3 benchmarks/gpu_check.py run --dir outputs/gpu_in --out RESULTS_DIR    # on the GPU machine

The GPU machines lent to this project have PyTorch and pyarrow but no JVM and no PySpark, and nothing can be
installed there, so this drives the code Spark's Python workers run -- ``PhotozPredictor`` /
``DCPPredictor`` / ``MorphologyPredictor`` and the jobs' own ``mapInArrow`` functions from ``udfs`` fed with
Arrow record batches -- without Spark around it. ``_Shipped`` stands in for the Broadcast handle (the
functions read only its ``.value``: the verified model bytes). The Spark-side pieces (ResourceProfile, task
GPU addresses) are covered by the CPU tests and are not exercised here.

``prepare`` writes the cosmoDC2 validation photometry (the accuracy gate's sample) and a few 480 x 480
GalSim renders of the survey domain (float16, as the cutout tables store them), since neither the RAIL
data package nor GalSim is on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prepare(d: Path, renders: int, size: int) -> None:
    from lsst_spark_ml.inference.accuracy import calibration_sample
    from lsst_spark_ml.morphology.render import RenderSettings, render_galaxies
    d.mkdir(parents=True, exist_ok=True)
    v, e, kind, z = calibration_sample()
    np.savez_compressed(d / "calib.npz", v=v.astype(np.float32), e=e.astype(np.float32), z=z, kind=kind)
    r = render_galaxies(renders, seed=5, settings=RenderSettings.survey(size=size))
    np.savez(d / "cutouts.npz", bands=r.images.astype(np.float16), labels=r.labels)
    print({p.name: p.stat().st_size for p in d.iterdir()})


class _Shipped:
    """What the jobs' mapper functions read from a Spark Broadcast: ``.value``, the verified payload."""
    def __init__(self, value):
        self.value = value


def _sync(dev):
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _best(f, dev, repeats=5, warm=2) -> float:
    for _ in range(warm):
        f()
    _sync(dev)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peaks(dev, n: int) -> dict:
    import torch
    out = {}
    torch.backends.cuda.matmul.allow_tf32 = False
    for name, dt in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
        out[name] = 2 * n ** 3 / _best(lambda: a @ b, dev, repeats=10, warm=3)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        a, b = torch.randn(n, n, device=dev), torch.randn(n, n, device=dev)
        out["tf32"] = 2 * n ** 3 / _best(lambda: a @ b, dev, repeats=10, warm=3)
        torch.backends.cuda.matmul.allow_tf32 = False
    return out


def photoz(res: dict, dev, calib, rows: int, quick: bool) -> None:
    import pyarrow as pa
    import torch

    from lsst_spark_ml.artefacts import read_payload
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.config import CatalogSettings, InferenceSettings
    from lsst_spark_ml.inference.accuracy import bf16_gate
    from lsst_spark_ml.inference.fast import FoldedEnsemble, flops_per_row
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.io.columns import resolve_columns
    from udfs.photoz import photoz_arrow_mapper

    v, e, kind, z = calib
    cpu = PhotozPredictor.load(default_model_dir(), device="cpu", precision="float32")
    gpu = PhotozPredictor.load(default_model_dir(), device=str(dev), precision="float32")
    a, b = cpu.predict(v[:5000], e[:5000], kind), gpu.predict(v[:5000], e[:5000], kind, batch_size=4096)
    ok = a["ok"]
    res["photoz_check"] = {
        "pdf_max_abs_diff_vs_cpu": float(np.nanmax(np.abs(a["pdf"] - b["pdf"]))),
        "z_median_max_abs_diff_vs_cpu": float(np.max(np.abs(a["z_median"][ok] - b["z_median"][ok]))),
        "ok_equal": bool((a["ok"] == b["ok"]).all()), "flags_equal": bool((a["flags"] == b["flags"]).all()),
        "pinned_staging": bool(gpu._pinned(4096, 11).is_pinned()) if dev.type == "cuda" else None}
    gate = bf16_gate(gpu, sample=calib, use_cache=False)
    res["photoz_check"]["bf16_gate_on_device"] = {"passed": gate.passed, "reason": gate.reason,
                                                  "tv_p99": gate.tv_p99}
    print("photoz check", json.dumps(res["photoz_check"]), file=sys.stderr, flush=True)

    arch = gpu.manifest["architecture"]
    flops = flops_per_row(arch["hidden"], arch["n_in"], arch["n_bins"]) * arch["n_members"]
    reps = int(np.ceil(rows / len(v)))
    V, E = np.tile(v, (reps, 1))[:rows], np.tile(e, (reps, 1))[:rows]
    Xs = gpu.scaled_features(V, E, kind)[1]
    Xs = Xs[np.isfinite(Xs).all(1)].astype(np.float32)
    Xd = torch.from_numpy(Xs).to(dev)
    net = {}
    for prec, dt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        runner = FoldedEnsemble(gpu.ensemble, dt).to(dev)
        for bs in ((16384,) if quick else (8192, 65536, 262144)):
            def run(runner=runner, bs=bs):
                with torch.inference_mode():
                    for s in range(0, len(Xd), bs):
                        runner(Xd[s:s + bs])
            rate = len(Xd) / _best(run, dev, repeats=3)
            net[f"{prec}@{bs}"] = {"rows_per_s": rate, "tflops": rate * flops / 1e12}
    res["photoz_network_only_device_resident"] = net
    res["photoz_flops_per_row"] = flops
    print("photoz network", json.dumps(net), file=sys.stderr, flush=True)

    whole = {}
    bs = 16384 if quick else 65536
    for prec in ("float32", "bfloat16"):
        p = gpu.with_precision(prec)
        whole[f"probabilities_from_host_{prec}"] = len(Xs) / _best(lambda: p.probabilities(Xs, bs), dev, 3, 1)
        whole[f"whole_predict_{prec}"] = len(V) / _best(lambda: p.predict(V, E, kind, batch_size=bs), dev, 3, 1)
        # the CPU default network batch (inference.batch_size 2048), to show what device-sized batches give
        whole[f"whole_predict_{prec}_batch2048"] = len(V) / _best(lambda: p.predict(V, E, kind, batch_size=2048),
                                                                  dev, 2, 1)
    # The same per-row work on one CPU core of this machine, in the same run: what one GPU replaces.
    torch.set_num_threads(1)
    c16 = cpu.with_precision("bfloat16")
    n_cpu = min(len(V), 20000)
    whole["cpu_1core_whole_predict_float32"] = n_cpu / _best(lambda: cpu.predict(V[:n_cpu], E[:n_cpu], kind), dev, 2, 1)
    whole["cpu_1core_whole_predict_bfloat16"] = n_cpu / _best(lambda: c16.predict(V[:n_cpu], E[:n_cpu], kind),
                                                              dev, 2, 1)
    torch.set_num_threads(os.cpu_count() or 1)
    # The jobs' mapInArrow function, on Arrow batches of 16 MB-ish (the predict job's default sizing).
    cols_names = [f"mag_{b}_lsst" for b in "ugrizy"] + [f"mag_err_{b}_lsst" for b in "ugrizy"]
    table = pa.table({n: np.concatenate([V, E], 1)[:, i].astype(np.float64) for i, n in enumerate(cols_names)}
                     | {"id": np.arange(len(V), dtype=np.int64)})
    schema = {f.name: "double" for f in table.schema}
    schema["id"] = "bigint"
    cols = resolve_columns(schema, CatalogSettings())
    batches = table.to_batches(max_chunksize=65536)
    for prec in ("float32", "bfloat16"):
        inf = InferenceSettings(device="cuda" if dev.type == "cuda" else "cpu", precision=prec, batch_size=bs)
        mapper = photoz_arrow_mapper(_Shipped(read_payload(default_model_dir())), cols, inf)
        n_out = sum(b.num_rows for b in mapper(iter(batches[:1])))          # loads the model once (cache)
        t = time.perf_counter()
        n_out = sum(b.num_rows for b in mapper(iter(batches)))
        _sync(dev)
        whole[f"spark_worker_mapInArrow_fn_{prec}"] = n_out / (time.perf_counter() - t)
        assert n_out == len(V), (n_out, len(V))
    res["photoz_whole_per_row_work"] = whole
    print("photoz whole", json.dumps(whole), file=sys.stderr, flush=True)


def dcp(res: dict, dev, calib, rows: int) -> None:
    import torch

    from lsst_spark_ml.artefacts import load_artefact
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.inference.accuracy import bf16_gate
    from lsst_spark_ml.inference.dcp import DCPPredictor
    v, e, kind, _ = calib
    art = load_artefact(Path(default_model_dir()).parent / "dcp_dc2")
    cpu, gpu = DCPPredictor.from_artefact(art, "cpu"), DCPPredictor.from_artefact(art, str(dev))
    a, b = cpu.predict(v[:5000], e[:5000], kind), gpu.predict(v[:5000], e[:5000], kind)
    reps = int(np.ceil(rows / len(v)))
    V, E = np.tile(v, (reps, 1))[:rows], np.tile(e, (reps, 1))[:rows]
    torch.set_num_threads(os.cpu_count() or 1)
    gate = bf16_gate(gpu, sample=calib, use_cache=False)
    res["dcp"] = {"score_max_abs_diff_vs_cpu": float(np.max(np.abs(a["ood_score"] - b["ood_score"]))),
                  "ood_flag_equal": bool((a["ood_flag"] == b["ood_flag"]).all()),
                  "bf16_gate_on_device": {"passed": gate.passed, "reason": gate.reason, "deltas": gate.deltas}}
    for prec in ("float32", "bfloat16"):
        g = gpu.with_precision(prec)
        res["dcp"][f"whole_predict_rows_per_s_{prec}"] = len(V) / _best(
            lambda: g.predict(V, E, kind, batch_size=65536), dev, 3, 1)
    print("dcp", json.dumps(res["dcp"], default=float), file=sys.stderr, flush=True)


def morphology(res: dict, dev, cutouts: np.ndarray, quick: bool) -> None:
    import torch

    from lsst_spark_ml.artefacts import read_payload, save_artefact
    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.config import MorphologySettings
    from lsst_spark_ml.inference.morphology import KIND, MorphologyPredictor
    from lsst_spark_ml.models.dat import build_morphology_model, count_flops
    from lsst_spark_ml.morphology.inputs import build_inputs
    from lsst_spark_ml.training.morphology import network_config

    size = cutouts.shape[-1]
    bands = cutouts.astype(np.float32)
    m = {}
    # The shipped (small, 64 px) model: the same probabilities on the GPU as on the CPU.
    shipped = Path(default_model_dir()).parent / "morphology_dat"
    cpu_s = MorphologyPredictor.load(shipped, device="cpu")
    gpu_s = MorphologyPredictor.load(shipped, device=str(dev))
    CLASSES, BANDS = cpu_s.classes, cpu_s.manifest["bands"]       # render.py needs GalSim, not there
    s = cpu_s.image_size
    small = bands[:, :, (size - s) // 2:(size + s) // 2, (size - s) // 2:(size + s) // 2]
    pa_, pb = cpu_s.predict(small, attention=True), gpu_s.predict(small, attention=True)
    m["shipped_model_prob_max_abs_diff_vs_cpu"] = float(np.nanmax(np.abs(pa_["probs"] - pb["probs"])))
    m["shipped_model_attention_max_abs_diff_vs_cpu"] = float(np.max(np.abs(pa_["attention"] - pb["attention"])))

    ms = MorphologySettings(network="dat", preset="dat_tiny", image_size=size)
    cfg = network_config(ms, len(CLASSES))
    torch.manual_seed(0)
    model = build_morphology_model("dat", cfg).eval()
    flops = 2 * count_flops(model, (1, 11, size, size))
    m["gflop_per_image"] = flops / 1e9
    model_dir = Path(tempfile.mkdtemp(prefix="dat_tiny_random_"))     # 110 MB: not among the results
    save_artefact(model_dir, model.state_dict(), {
        "kind": KIND, "network": "dat", "architecture": cfg, "classes": list(CLASSES), "bands": list(BANDS),
        "image_size": size, "note": "random weights: benchmark only"})
    t = time.perf_counter()
    x, _ = build_inputs(bands, size)
    m["input_build_images_per_s_1core"] = len(bands) / (time.perf_counter() - t)
    model = model.to(dev)
    for prec in ("float32", "bfloat16"):
        for bs in ((4,) if quick else (8, 32)):
            xb = torch.from_numpy(np.ascontiguousarray(np.resize(x, (bs,) + x.shape[1:]))).to(dev)
            ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=prec == "bfloat16")
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)

            def run():
                with torch.inference_mode(), ac:
                    model(xb)
            secs = _best(run, dev, repeats=3, warm=1)
            r = {"images_per_s": bs / secs, "tflops": bs / secs * flops / 1e12}
            if dev.type == "cuda":
                r["peak_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
            m[f"network_only_{prec}@{bs}"] = r
            print("dat", prec, bs, json.dumps(r), file=sys.stderr, flush=True)
    # A training step (forward + backward + AdamW) in bfloat16 autocast: the cost of training on GPUs.
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    bs = 4 if quick else 16
    xb = torch.from_numpy(np.ascontiguousarray(np.resize(x, (bs,) + x.shape[1:]))).to(dev)
    yb = torch.arange(bs, device=dev) % len(CLASSES)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m["train_step_bf16_images_per_s"] = bs / _best(step, dev, repeats=3, warm=1)
    model.eval()
    # The whole per-galaxy work (masks on the host CPU, network on the GPU) through the jobs' mapper.
    import pyarrow as pa

    from udfs.morphology import morphology_arrow_mapper
    n_img = len(cutouts)
    table = pa.table({"id": np.arange(n_img, dtype=np.int64),
                      "cutout": [c.tobytes() for c in cutouts],
                      "cutout_shape": [list(c.shape) for c in cutouts],
                      "cutout_dtype": ["float16"] * n_img})
    for prec in ("float32", "bfloat16"):
        ms_p = MorphologySettings(network="dat", preset="dat_tiny", image_size=size, precision=prec,
                                  device="cuda" if dev.type == "cuda" else "cpu", batch_size_predict=8)
        mapper = morphology_arrow_mapper(_Shipped(read_payload(model_dir)), ms_p)
        list(mapper(iter(table.to_batches(max_chunksize=2)[:1])))
        t = time.perf_counter()
        outs = list(mapper(iter(table.to_batches(max_chunksize=8))))
        _sync(dev)
        m[f"spark_worker_mapInArrow_fn_{prec}_images_per_s"] = n_img / (time.perf_counter() - t)
        assert sum(b.num_rows for b in outs) == n_img
    res["morphology"] = m
    print("morphology", json.dumps(m), file=sys.stderr, flush=True)


def _share_worker(kind, dirs, device, n, barrier, queue):
    """One Spark task's share of a GPU: one torch thread (Spark's layout), its own model copy, its rows."""
    import torch
    torch.set_num_threads(1)
    if kind == "photoz":
        from lsst_spark_ml.cli import default_model_dir
        from lsst_spark_ml.inference.photoz import PhotozPredictor
        c = np.load(Path(dirs["in"]) / "calib.npz")
        reps = int(np.ceil(n / len(c["v"])))
        v = np.tile(c["v"].astype(np.float64), (reps, 1))[:n]
        e = np.tile(c["e"].astype(np.float64), (reps, 1))[:n]
        pred = PhotozPredictor.load(default_model_dir(), device=device, precision="bfloat16")
        pred.predict(v[:70000], e[:70000], "mag", batch_size=65536)

        def work():
            pred.predict(v, e, "mag", batch_size=65536)
    else:
        from lsst_spark_ml.inference.morphology import MorphologyPredictor
        bands = np.load(Path(dirs["in"]) / "cutouts.npz")["bands"].astype(np.float32)
        bands = np.resize(bands, (n,) + bands.shape[1:])
        pred = MorphologyPredictor.load(dirs["model"], device=device, precision="bfloat16")
        pred.predict(bands[:2], batch_size=8)

        def work():
            pred.predict(bands, batch_size=8)
    barrier.wait()
    t0 = time.time()
    work()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    queue.put((t0, time.time()))


def sharing(res: dict, dev, args) -> None:
    """k processes share one GPU, as k Spark tasks with gpu amount 1/k: aggregate rows/s and images/s."""
    import multiprocessing as mp

    import torch

    from lsst_spark_ml.artefacts import save_artefact
    from lsst_spark_ml.config import MorphologySettings
    from lsst_spark_ml.inference.morphology import KIND
    from lsst_spark_ml.models.dat import build_morphology_model
    from lsst_spark_ml.training.morphology import network_config
    classes = ["E", "S0", "Sa", "Sb", "Sc", "Irr"]
    cfg = network_config(MorphologySettings(network="dat", preset="dat_tiny", image_size=480), len(classes))
    torch.manual_seed(0)
    model_dir = Path(tempfile.mkdtemp(prefix="dat_tiny_share_"))
    save_artefact(model_dir, build_morphology_model("dat", cfg).state_dict(), {
        "kind": KIND, "network": "dat", "architecture": cfg, "classes": classes, "bands": list("grizy"),
        "image_size": 480, "note": "random weights: benchmark only"})
    dirs = {"in": args.dir, "model": str(model_dir)}
    ctx = mp.get_context("spawn")
    share = {}
    for kind, n, ks in (("photoz", args.share_rows, args.share_photoz), ("morphology", args.share_images,
                                                                        args.share_morph)):
        for k in ks:
            barrier, queue = ctx.Barrier(k), ctx.Queue()
            procs = [ctx.Process(target=_share_worker, args=(kind, dirs, str(dev), n, barrier, queue))
                     for _ in range(k)]
            for p in procs:
                p.start()
            times = [queue.get(timeout=300) for _ in procs]
            for p in procs:
                p.join()
            wall = max(t[1] for t in times) - min(t[0] for t in times)
            share[f"{kind}_tasks{k}"] = {"per_s": k * n / wall, "per_s_per_task": n / wall}
            print("share", kind, k, json.dumps(share[f"{kind}_tasks{k}"]), file=sys.stderr, flush=True)
    res["sharing"] = share


def run(args) -> int:
    import torch
    dev = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"torch": torch.__version__, "device": str(dev), "cpu_count": os.cpu_count()}
    if dev.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(dev)
        res["capability"] = list(torch.cuda.get_device_capability(dev))
    c = np.load(Path(args.dir) / "calib.npz")
    calib = (c["v"].astype(np.float64), c["e"].astype(np.float64), str(c["kind"]), c["z"])
    cutouts = np.load(Path(args.dir) / "cutouts.npz")["bands"]
    cutouts = np.resize(cutouts, (args.images,) + cutouts.shape[1:])
    failures = []
    sections = {"peaks": lambda: res.update(matmul_peak=matmul_peaks(dev, 2048 if args.quick else 8192)),
                "photoz": lambda: photoz(res, dev, calib, args.rows, args.quick),
                "dcp": lambda: dcp(res, dev, calib, args.rows),
                "morphology": lambda: morphology(res, dev, cutouts, args.quick),
                "sharing": lambda: sharing(res, dev, args)}
    for name, f in ((k, sections[k]) for k in args.sections.split(",")):
        t = time.perf_counter()
        try:
            f()
        except Exception:                       # noqa: BLE001 - record it and go on to the next section
            failures.append(name)
            res[f"{name}_error"] = traceback.format_exc()
            print(res[f"{name}_error"], file=sys.stderr, flush=True)
        res[f"{name}_seconds"] = time.perf_counter() - t
        (out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps(res, indent=1, default=float))
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dir", default="outputs/gpu_in")
    p.add_argument("--renders", type=int, default=4)
    p.add_argument("--size", type=int, default=480)
    r = sub.add_parser("run")
    r.add_argument("--dir", default="outputs/gpu_in")
    r.add_argument("--out", default="outputs/gpu_check")
    r.add_argument("--device", default="auto")
    r.add_argument("--rows", type=int, default=1_000_000)
    r.add_argument("--images", type=int, default=32)
    r.add_argument("--quick", action="store_true", help="small sizes: a dry run of every section on a CPU")
    r.add_argument("--sections", default="peaks,photoz,dcp,morphology,sharing")
    r.add_argument("--share-rows", type=int, default=1_000_000, help="photo-z rows per sharing task")
    r.add_argument("--share-images", type=int, default=16, help="480 px cutouts per sharing task")
    r.add_argument("--share-photoz", type=lambda t: [int(x) for x in t.split(",")], default=[1, 2, 4, 8, 16])
    r.add_argument("--share-morph", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4, 8, 16])
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(Path(args.dir), args.renders, args.size)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
