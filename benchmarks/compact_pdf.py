"""What compact PDFs cost in accuracy and save in bytes, on the cosmoDC2 validation PDFs of the shipped model.

    .venv/bin/python benchmarks/compact_pdf.py [--precision float32] [--json out.json]

For each storage format (``inference.pdf_format``; lsst_spark_ml/inference/compact_pdf.py): the PDF metrics
(PIT KS / CvM / AD, CRPS, CDE loss, Brier) and the point metrics of z_median, z_mean and z_mode recomputed
from the stored PDFs, relative to the full float32 PDFs; the payload bytes per object; and the real
Parquet bytes of the PDF column (zstd and snappy) for these 20,449 objects, scaled to 10^9 objects. With
``qp`` importable (``pip install qp-prob``), the decoded PDFs also go through qp's hist and quant
representations and qp's CDF at the true redshifts is compared with this project's PIT.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from lsst_spark_ml.cli import default_model_dir
    from lsst_spark_ml.inference import compact_pdf as C
    from lsst_spark_ml.inference.accuracy import calibration_sample
    from lsst_spark_ml.inference.photoz import PhotozPredictor
    from lsst_spark_ml.inference.summaries import summarize
    from lsst_spark_ml.metrics import reference as R

    pred = PhotozPredictor.load(args.model or default_model_dir(), precision=args.precision)
    v, e, kind, z = calibration_sample()
    res = pred.predict(v, e, kind)
    ok = res["ok"] & np.isfinite(z)
    full = res["pdf"][ok]
    truth = z[ok]
    edges = pred.edges
    n = len(full)

    def metrics(p):
        out = {}
        s = summarize(p, edges)
        for est in ("z_median", "z_mean", "z_mode"):
            pm = R.point_metrics(s[est], truth)
            for k in ("sigma_nmad", "catastrophic_fraction", "point_bias", "point_outlier_rate"):
                out[f"{est}.{k}"] = pm[k]
        pdfm = R.pdf_metrics(p, truth, edges, brier_grid=(edges[0], edges[-1], 0.01))
        for k in ("pit_ks", "pit_cvm", "pit_ad", "crps", "cde_loss", "brier", "pit_outlier_rate"):
            out[k] = pdfm[k]
        return out

    def parquet_bytes(col: pa.Array, compression: str) -> int:
        buf = io.BytesIO()
        pq.write_table(pa.table({"pdf": col}), buf, compression=compression)
        return buf.tell()

    ref = metrics(full)
    offsets = pa.array(np.arange(0, (n + 1) * pred.n_bins, pred.n_bins, dtype=np.int32))
    rows = []
    for fmt in C.FORMATS:
        codes = C.encode(full, fmt)
        back = C.decode(codes, fmt)
        m = metrics(back)
        col = (pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(codes).ravel(), pa.float32()))
               if fmt == "float32" else C.binary_array(codes, np.ones(n, bool)))
        rel = {}
        for k, a in ref.items():
            b = m[k]
            scale = ref[k.replace("point_bias", "sigma_nmad")] if k.endswith("point_bias") else abs(a)
            rel[k] = abs(b - a) / scale if scale > 0 else float(a != b)
        cdf_err = np.abs(np.cumsum(back, 1) - np.cumsum(full, 1)).max(axis=1)
        tv = 0.5 * np.abs(back - full).sum(axis=1)
        pq_z, pq_s = parquet_bytes(col, "zstd") / n, parquet_bytes(col, "snappy") / n
        rows.append({"format": fmt, "payload_bytes": C.bytes_per_object(fmt, pred.n_bins),
                     "parquet_zstd_bytes": pq_z, "parquet_snappy_bytes": pq_s,
                     "gb_per_1e9_zstd": pq_z, "metrics": m, "rel_change": rel,
                     "max_rel_change": max(rel.values()), "worst": max(rel, key=rel.get),
                     "cdf_max_err_p99": float(np.percentile(cdf_err, 99)), "tv_p99": float(np.percentile(tv, 99))})
    qp_check = None
    try:
        import qp
        codes = C.encode(full, "uint8")
        ens = C.to_qp_ensemble(codes, edges, "hist")
        qcdf = np.array([np.asarray(ens[i].cdf(truth[i])).item() for i in range(min(n, 2000))])
        ours = R.pit_values(C.decode_uint8(codes)[:len(qcdf)].astype(np.float64), edges, truth[:len(qcdf)])
        quant = qp.Ensemble(qp.quant, data=C.to_qp_quant(codes[:2000], edges))
        med = np.asarray(quant.median()).reshape(-1)
        qp_check = {"qp_version": qp.__version__, "hist_cdf_vs_our_pit_max_abs": float(np.max(np.abs(qcdf - ours))),
                    "quant_median_vs_z_median_max_abs": float(np.max(np.abs(
                        med - summarize(C.decode_uint8(codes[:2000]), edges)["z_median"])))}
    except ImportError:
        qp_check = "qp not installed (pip install qp-prob); the hist/quant parameters are plain arrays"

    out = {"model_sha256": pred.sha256, "precision": pred.precision, "n_objects": n, "reference": ref,
           "formats": rows, "qp": qp_check}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"\ncompact PDFs, shipped model {pred.sha256[:12]} ({pred.precision}), cosmoDC2 validation, {n:,} objects, "
          f"{pred.n_bins} bins")
    print("| format | payload B/object | Parquet zstd B/object | Parquet snappy B/object | GB per 10^9 objects "
          "(zstd) | worst metric change | PDF TV p99 | CDF max error p99 |")
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['payload_bytes']} | {r['parquet_zstd_bytes']:.1f} | "
              f"{r['parquet_snappy_bytes']:.1f} | {r['gb_per_1e9_zstd']:.0f} | {r['worst']} "
              f"{r['max_rel_change']:.3%} | {r['tv_p99']:.4f} | {r['cdf_max_err_p99']:.4f} |")
    u8 = next(r for r in rows if r["format"] == "uint8")
    print("\n| metric | full float32 PDFs | uint8 PDFs | relative change |")
    print("|---|---:|---:|---:|")
    for k, a in ref.items():
        print(f"| {k} | {a:.5f} | {u8['metrics'][k]:.5f} | {u8['rel_change'][k]:.3%} |")
    print(f"\nqp: {qp_check}")


if __name__ == "__main__":
    main()
