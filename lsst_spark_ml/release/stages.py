"""Stage computations on one partition, as Arrow tables, inside a Spark task.

Each stage reuses the job's own Arrow mapper (``udfs.photoz``, ``udfs.dcp``, ``pipelines.bayes``): the same
broadcast model, per-worker cache and flag policy as ``photoz predict`` / ``ood score`` / ``bayes run``, so a
release row equals what the single-stage command writes for it. Every function returns only the stage's own
columns, one row per input row, in input order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..config import InferenceSettings
from ..io.columns import ResolvedColumns

PHOTOZ_NETWORK = ("z_median", "z_lo68", "z_hi68")
Z_HIST_EDGES = np.linspace(0.0, 3.1, 63)           # report histograms (fixed, so partitions add up)
DZ_HIST_EDGES = np.linspace(-0.5, 0.5, 1001)
OOD_HIST_EDGES = np.linspace(0.0, 5.0, 51)


@dataclass
class StageRuntime:
    """What a task needs for one stage; pickled into the task closure (broadcasts travel as references)."""
    name: str
    model_sha256: str | None
    cols: ResolvedColumns
    model: object = None                             # Broadcast of artefacts.Payload (photoz, ood)
    bayes: dict = field(default_factory=dict)        # grid broadcast, settings, limits, edges (bayes)


def _run_mapper(mapper, table: pa.Table, inputs: list[str], batch_rows: int) -> pa.Table:
    batches = table.select(inputs).to_batches(max_chunksize=batch_rows)
    out = list(mapper(iter(batches)))
    return pa.Table.from_batches(out).drop_columns(inputs)


def photoz(st: StageRuntime, table: pa.Table, inf: InferenceSettings, write_pdf: bool) -> pa.Table:
    from udfs.photoz import photoz_arrow_mapper
    mapper = photoz_arrow_mapper(st.model, st.cols, inf, write_pdf)
    return _run_mapper(mapper, table, st.cols.inputs, inf.batch_size).drop_columns(["model_sha256"])


def ood(st: StageRuntime, table: pa.Table, inf: InferenceSettings, write_pdf: bool) -> pa.Table:
    from udfs.dcp import dcp_arrow_mapper
    # Photo-z columns come from the photoz stage; the DCP's own TS3 photo-z would only duplicate them.
    mapper = dcp_arrow_mapper(st.model, st.cols, inf, with_photoz=False)
    return _run_mapper(mapper, table, st.cols.inputs, inf.batch_size).drop_columns(["model_sha256"])


def bayes(st: StageRuntime, table: pa.Table, earlier: dict[str, pa.Table]) -> pa.Table:
    """Template-fitting posteriors for the rows the ood stage flagged; the others adopt the network's answer
    (exactly the columns and rules of ``pipelines.bayes``: z_source says which answer each row adopted)."""
    from ..pipelines.bayes import SCALAR_OUT, bayes_mapper
    b = st.bayes
    n = table.num_rows
    pz, oo = earlier["photoz"], earlier["ood"]
    flag = np.asarray(oo.column("ood_flag").fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
    sel = np.flatnonzero(flag)
    has_pdf = "pdf" in pz.column_names
    net = {c: np.asarray(pz.column(c).to_numpy(zero_copy_only=False), dtype=np.float64) for c in PHOTOZ_NETWORK}
    cols: dict[str, pa.Array] = {}
    fitted = None
    if len(sel):
        frame = table.select(st.cols.values + st.cols.errors).take(pa.array(sel)).to_pandas()
        for c in PHOTOZ_NETWORK:
            frame[c] = net[c][sel]
        if has_pdf:
            frame["pdf"] = pz.column("pdf").take(pa.array(sel)).to_pylist()
        mapper = bayes_mapper(b["grid"], b["settings"], st.cols, b["limits"], b["settings"].method, b["edges"],
                              has_pdf)
        fitted = next(iter(mapper(iter([frame]))))
    chosen = np.zeros(n, bool)
    chosen[sel] = True
    for c in SCALAR_OUT[:11]:
        v = np.full(n, np.nan)
        if fitted is not None:
            v[sel] = fitted[c].to_numpy(np.float64)
        cols[c] = pa.array(v, mask=~chosen)
    pdfs = [None] * n
    flags = np.zeros(n, np.int64)
    method = [None] * n
    source = np.where(np.isfinite(net["z_median"]), "network", "none").astype(object)
    adopted = {dst: net[src].copy() for dst, src in (("z_adopted", "z_median"), ("z_adopted_lo68", "z_lo68"),
                                                     ("z_adopted_hi68", "z_hi68"))}
    pdf_adopted = pz.column("pdf").to_pylist() if has_pdf else [None] * n
    if fitted is not None:
        for j, i in enumerate(sel):
            pdfs[i] = fitted["bayes_pdf"].iat[j]
            method[i] = fitted["bayes_method"].iat[j]
            pdf_adopted[i] = fitted["pdf_adopted"].iat[j]
        flags[sel] = fitted["bayes_flags"].to_numpy(np.int64)
        source[sel] = fitted["z_source"].to_numpy(object)
        for c in adopted:
            adopted[c][sel] = fitted[c].to_numpy(np.float64)
    flist = pa.list_(pa.float32())
    cols["bayes_pdf"] = pa.array([None if p is None else np.asarray(p, np.float32) for p in pdfs], type=flist)
    cols["bayes_flags"] = pa.array(flags, mask=~chosen)
    cols["bayes_method"] = pa.array(method, type=pa.string())
    cols["z_source"] = pa.array(source.tolist(), type=pa.string())
    for c, v in adopted.items():
        cols[c] = pa.array(v, mask=~np.isfinite(v))
    cols["pdf_adopted"] = pa.array([None if p is None else np.asarray(p, np.float32) for p in pdf_adopted],
                                   type=flist)
    return pa.table(cols)


def stats(name: str, out: pa.Table, truth: np.ndarray | None) -> dict:
    """Additive per-partition summaries (counts and fixed-bin histograms) for the release report."""
    s: dict = {}
    if name == "photoz":
        flags = np.asarray(out.column("flags").to_numpy(zero_copy_only=False), dtype=np.int64)
        s["no_estimate"] = int(np.count_nonzero(flags & (1 << 24)))
        s["out_of_range"] = int(np.count_nonzero(flags & (1 << 25)))
        s["any_nondetect"] = int(np.count_nonzero(flags & 0xFF))
        s["any_missing"] = int(np.count_nonzero(flags & 0xFF00))
        s["any_bad_error"] = int(np.count_nonzero(flags & 0xFF0000))
        z = np.asarray(out.column("z_median").to_numpy(zero_copy_only=False), dtype=np.float64)
        s["z_median_hist"] = np.histogram(z[np.isfinite(z)], Z_HIST_EDGES)[0].tolist()
        if truth is not None:
            good = np.isfinite(z) & np.isfinite(truth)
            dz = (z[good] - truth[good]) / (1 + truth[good])
            s["dz_hist"] = np.histogram(np.clip(dz, -0.5, 0.5), DZ_HIST_EDGES)[0].tolist()
            s["dz_catastrophic"] = int(np.count_nonzero(np.abs(dz) > 0.15))
            s["dz_n"] = int(good.sum())
    elif name == "ood":
        flag = np.asarray(out.column("ood_flag").fill_null(False).to_numpy(zero_copy_only=False), dtype=bool)
        s["ood_flag"] = int(flag.sum())
        score = np.asarray(out.column("ood_score").to_numpy(zero_copy_only=False), dtype=np.float64)
        s["ood_score_hist"] = np.histogram(np.clip(score[np.isfinite(score)], 0, 5), OOD_HIST_EDGES)[0].tolist()
        t = out.column("ood_tercile").to_numpy(zero_copy_only=False)
        s["terciles"] = {str(k): int(np.count_nonzero(t == k)) for k in (0, 1, 2)}
    elif name == "bayes":
        src = out.column("z_source").to_pylist()
        s["z_source"] = {k: src.count(k) for k in sorted(set(src), key=str)}
    return s
