"""The bfloat16 accuracy gate: bfloat16 is used only where it changes the science by less than a tolerance.

The check compares the model's bfloat16 and float32 answers on a calibration sample with known redshifts,
by default the cosmoDC2 validation file (20,449 galaxies, never used in training, shipped by pz-rail-base):

* point metrics of ``z_median`` and ``z_mean`` (sigma_NMAD, catastrophic fraction |ez| > 0.15) and the PDF
  metrics PIT KS and CRPS move by less than ``rel_tol`` (1 %) relative;
* the bias (median ez) of ``z_median`` and ``z_mean`` moves by less than ``rel_tol`` x sigma_NMAD (a
  relative change of a quantity that is ~1e-4 is meaningless: the scatter is its natural scale);
* the per-object total variation distance 0.5 sum_k |p16_k - p32_k| has its 99th percentile below
  ``tv_p99`` (0.01).

Where it runs: when a predictor is loaded with ``precision='auto'`` and the hardware would pick bfloat16.
The driver of a job runs it once (``pipelines.photoz.predict``) and ships the verdict to the executors with
the task closure; a loader without a verdict (the SQL functions) runs it itself. Either way the result is
cached per model sha256 and tolerance: in the process, and on disk under
``$XDG_CACHE_HOME/lsst_spark_ml/bf16_gate/`` (about 1 s of compute for the shipped ensemble on 2 cores).
If the sample is not available (pz-rail-base missing), the gate cannot pass: float32, said in the log.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REL_TOL = 0.01
TV_P99 = 0.01
GATED_POINT = ("sigma_nmad", "catastrophic_fraction")
GATED_PDF = ("pit_ks", "crps")
_MEMO: dict[tuple, "GateResult"] = {}
_LOCK = threading.Lock()


@dataclass
class GateResult:
    passed: bool
    reason: str
    n: int = 0
    float32: dict = field(default_factory=dict)
    bfloat16: dict = field(default_factory=dict)
    deltas: dict = field(default_factory=dict)        # metric -> relative change (bias: change / sigma_NMAD)
    tv_p99: float = float("nan")
    tv_max: float = float("nan")


def calibration_sample(n: int | None = None):
    """(magnitudes, errors, 'mag', true z) of the cosmoDC2 validation file; the first ``n`` rows."""
    import h5py

    from ..io.datasets import dc2_paths
    bands = list("ugrizy")
    with h5py.File(dc2_paths()["validation"], "r") as h:
        g = h["photometry"]
        sl = slice(0, n)
        v = np.column_stack([g[f"mag_{b}_lsst"][sl] for b in bands]).astype(np.float64)
        e = np.column_stack([g[f"mag_err_{b}_lsst"][sl] for b in bands]).astype(np.float64)
        return v, e, "mag", g["redshift"][sl].astype(np.float64)


def _metrics(pdf: np.ndarray, edges: np.ndarray, truth: np.ndarray) -> dict:
    from ..metrics import reference as R
    from .summaries import summarize
    s = summarize(pdf, edges)
    out = {}
    for est in ("z_median", "z_mean"):
        pm = R.point_metrics(s[est], truth)
        for k in (*GATED_POINT, "point_bias"):
            out[f"{est}.{k}"] = pm[k]
    p, _ = R.normalise_pdfs(pdf)
    pit = R.pit_values(p, edges, np.clip(truth, edges[0], edges[-1]))
    out["pit_ks"] = R.pit_statistics(pit)["pit_ks"]
    out["crps"] = float(np.mean(R.crps_values(p, edges, truth)))
    return out


def compare(pdf32: np.ndarray, pdf16: np.ndarray, edges: np.ndarray, truth: np.ndarray,
            rel_tol: float = REL_TOL, tv_p99: float = TV_P99) -> GateResult:
    """The gate's decision from two sets of PDFs of the same objects (rows: objects)."""
    m32, m16 = _metrics(pdf32, edges, truth), _metrics(pdf16, edges, truth)
    deltas, bad = {}, []
    for k, a in m32.items():
        b = m16[k]
        if k.endswith("point_bias"):
            scale = m32[k.replace("point_bias", "sigma_nmad")]
        else:
            scale = abs(a)
        d = abs(b - a) / scale if scale > 0 else (0.0 if a == b else float("inf"))
        deltas[k] = d
        if not d < rel_tol:
            bad.append(f"{k} {a:.5g} -> {b:.5g} ({d:.2%})")
    tv = 0.5 * np.abs(pdf16.astype(np.float64) - pdf32.astype(np.float64)).sum(axis=1)
    p99 = float(np.percentile(tv, 99))
    if not p99 < tv_p99:
        bad.append(f"PDF total variation p99 {p99:.4f} >= {tv_p99}")
    reason = ("within tolerance" if not bad else "; ".join(bad))
    return GateResult(not bad, reason, len(truth), m32, m16, deltas, p99, float(tv.max()))


OOD_JACCARD = 0.98


def _with_ood_checks(res: GateResult, r32: dict, r16: dict, flag_threshold: float, rel_tol: float) -> GateResult:
    """DCP models: the OOD answer must not move either. The flagged fraction within ``rel_tol`` relative,
    the flagged sets overlapping by ``OOD_JACCARD`` (intersection / union), and the score's 99th-percentile
    change below ``rel_tol`` of the flag threshold (the shipped model: 320 -> 322 flagged of 20,449, 4
    changed, Jaccard 0.988, p99 change 0.0195 on a threshold of 3.37)."""
    f32, f16 = np.asarray(r32["ood_flag"], bool), np.asarray(r16["ood_flag"], bool)
    n32, n16 = int(f32.sum()), int(f16.sum())
    frac = abs(n16 - n32) / max(n32, 1)
    jac = (f32 & f16).sum() / max(int((f32 | f16).sum()), 1)
    dscore = float(np.percentile(np.abs(np.asarray(r16["ood_score"]) - np.asarray(r32["ood_score"])), 99))
    bad = [] if res.passed else [res.reason]
    if not frac < rel_tol:
        bad.append(f"flagged {n32} -> {n16} ({frac:.2%})")
    if not jac >= OOD_JACCARD:
        bad.append(f"flagged sets overlap {jac:.3f} < {OOD_JACCARD}")
    if not dscore < rel_tol * flag_threshold:
        bad.append(f"OOD score change p99 {dscore:.4f} >= {rel_tol:g} x threshold {flag_threshold:.3f}")
    res.deltas.update({"ood_flagged_fraction": frac, "ood_flag_jaccard": float(jac),
                       "ood_score_change_p99_over_threshold": dscore / flag_threshold})
    res.passed, res.reason = not bad, ("within tolerance" if not bad else "; ".join(bad))
    return res


def _disk_path(key: str) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lsst_spark_ml" / "bf16_gate"
    return root / f"{key}.json"


def bf16_gate(pred, rel_tol: float = REL_TOL, tv_p99: float = TV_P99, sample=None,
              use_cache: bool = True) -> GateResult:
    """Run (or recall) the gate for a loaded ``PhotozPredictor`` or ``DCPPredictor``. ``sample``: (values,
    errors, kind, truth); None: the cosmoDC2 validation file. Results from a caller-supplied sample are never cached."""
    import torch

    from .fast import FoldedEnsemble
    ood = f"-ood{OOD_JACCARD:g}" if hasattr(pred, "thresholds") else ""        # DCP: the OOD checks too
    cache_key = (f"{pred.sha256}-{FoldedEnsemble.SCHEME}{ood}-rel{rel_tol:g}-tv{tv_p99:g}"
                 f"-torch{torch.__version__}")
    cacheable = use_cache and sample is None
    if cacheable:
        with _LOCK:
            if cache_key in _MEMO:
                return _MEMO[cache_key]
        try:
            res = GateResult(**json.loads(_disk_path(cache_key).read_text()))
            with _LOCK:
                _MEMO[cache_key] = res
            return res
        except (OSError, ValueError, TypeError):
            pass
    if sample is None:
        try:
            sample = calibration_sample()
        except Exception as exc:  # noqa: BLE001 - no data package: the gate cannot pass
            return GateResult(False, f"no calibration sample ({exc}); bfloat16 not verified")
    values, errors, kind, truth = sample
    r32 = pred.with_precision("float32").predict(values, errors, kind)
    r16 = pred.with_precision("bfloat16").predict(values, errors, kind)
    ok = r32["ok"] & r16["ok"] & np.isfinite(truth)
    res = compare(r32["pdf"][ok], r16["pdf"][ok], pred.edges, truth[ok], rel_tol, tv_p99)
    if "ood_score" in r32:
        res = _with_ood_checks(res, r32, r16, pred.thresholds["flag"], rel_tol)
    if cacheable:
        with _LOCK:
            _MEMO[cache_key] = res
        try:
            p = _disk_path(cache_key)
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(res), indent=1))
            tmp.replace(p)
        except OSError:
            pass
    return res


def choose_precision(pred, requested: str, bf16_verified: bool | None = None, gate_kw: dict | None = None):
    """The loaded float32 ``pred`` (a PhotozPredictor or DCPPredictor) in the precision to run, with
    ``precision_reason`` saying why. ``requested``: float32 | bfloat16 (as asked, no gate) | auto (bfloat16
    where the hardware runs it natively and the gate passes). ``bf16_verified``: the verdict of a gate the
    caller (a job's driver) already ran; None runs it here (cached per model), with ``gate_kw``."""
    from .fast import resolve_precision
    resolved = resolve_precision(requested, pred.device)
    if requested != "auto":
        return pred.with_precision(resolved)
    if resolved == "float32":
        pred.precision_reason = f"auto: no native bfloat16 on {pred.device.type}"
        return pred
    if bf16_verified is not None:
        out = pred.with_precision("bfloat16") if bf16_verified else pred
        out.precision_reason = ("auto: native bfloat16, accuracy gate passed (verdict from the driver)"
                                if bf16_verified else "auto: accuracy gate failed on the driver; float32")
        return out
    gate = bf16_gate(pred, **(gate_kw or {}))
    if not gate.passed:
        log.warning("model %s: bfloat16 fails the accuracy gate (%s); falling back to float32",
                    pred.sha256[:12], gate.reason)
        pred.precision_reason, pred.gate = f"auto: accuracy gate failed ({gate.reason}); float32", gate
        return pred
    out = pred.with_precision("bfloat16")
    out.precision_reason = (f"auto: native bfloat16, accuracy gate passed on {gate.n} objects "
                            f"(TV p99 {gate.tv_p99:.4f})")
    out.gate = gate
    return out
