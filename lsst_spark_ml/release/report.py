"""The release report: report.json (row counts, flags, metric summaries, timings, failures) and report.html
with PNG plots, all aggregated from the manifest records (no pass over the data)."""
from __future__ import annotations

import hashlib
import html
import json

import numpy as np

from ..io.readers import _join, filesystem
from . import manifest, stages

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"


def records_digest(records: dict) -> str:
    keep = sorted((k, r.get("status"), r.get("rows_checksum"), r.get("file_sha256"), r.get("error"))
                  for k, r in records.items())
    return hashlib.sha256(json.dumps(keep, default=str).encode()).hexdigest()


def read_report(release_dir: str) -> dict | None:
    fs, root = filesystem(release_dir)
    try:
        with fs.open_input_stream(_join(root, REPORT_JSON)) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError, ValueError):
        return None


def _stage_stats(recs: list[dict], stage: str) -> list[dict]:
    """Per-record stats of one stage, whether stored per stage or inside a joined record."""
    out = []
    for r in recs:
        s = r.get("stats", {})
        out.append(s.get(stage, {}) if r["stage"] == "joined" else s)
    return out


def _nmad_from_hist(h: np.ndarray) -> dict:
    centres = 0.5 * (stages.DZ_HIST_EDGES[1:] + stages.DZ_HIST_EDGES[:-1])
    c = np.cumsum(h)
    n = c[-1]
    if n == 0:
        return {}
    med = centres[np.searchsorted(c, n / 2)]
    order = np.argsort(np.abs(centres - med))
    cm = np.cumsum(h[order])
    mad = np.abs(centres - med)[order][np.searchsorted(cm, n / 2)]
    return {"median_dz": float(med), "sigma_nmad": float(1.4826 * mad),
            "bin_width": float(stages.DZ_HIST_EDGES[1] - stages.DZ_HIST_EDGES[0])}


def summarise(plan, records: dict) -> dict:
    names = sorted({k[0] for k in records})
    out = {}
    for c in names:
        recs = [r for k, r in sorted(records.items()) if k[0] == c and r.get("status") == "committed"]
        failed = {r["partition"]: r.get("error") for k, r in records.items()
                  if k[0] == c and r.get("status") == "failed"}
        sec: dict[str, float] = {}
        for r in recs:
            for k, v in r.get("seconds", {}).items():
                sec[k] = sec.get(k, 0.0) + v
        entry = {"partitions_committed": len(recs), "partitions_failed": failed,
                 "rows_in": sum(r["rows_in"] for r in recs), "rows_out": sum(r["rows_out"] for r in recs),
                 "task_seconds": {k: round(v, 2) for k, v in sec.items()},
                 "bytes": sum(r.get("file_bytes", 0) for r in recs),
                 "rows_checksum": _combine([r["rows_checksum"] for r in recs]),
                 "id_checksum": _combine([r["id_checksum"] for r in recs])}
        stage_names = [s.name for s in plan.stages] if c == "joined" else [c]
        entry["stages"] = {}
        for s in stage_names:
            st = _stage_stats(recs, s)
            d: dict = {}
            for key in ("no_estimate", "out_of_range", "any_nondetect", "any_missing", "any_bad_error", "ood_flag",
                        "dz_catastrophic", "dz_n"):
                if any(key in x for x in st):
                    d[key] = int(sum(x.get(key, 0) for x in st))
            for key in ("terciles", "z_source"):
                if any(key in x for x in st):
                    acc: dict = {}
                    for x in st:
                        for k, v in x.get(key, {}).items():
                            acc[k] = acc.get(k, 0) + v
                    d[key] = acc
            for key in ("z_median_hist", "ood_score_hist", "dz_hist"):
                hs = [np.asarray(x[key], np.int64) for x in st if key in x]
                if hs:
                    d[key] = np.sum(hs, axis=0).tolist()
            if "dz_hist" in d:
                d["photoz_metrics"] = {**_nmad_from_hist(np.asarray(d["dz_hist"])),
                                       "catastrophic_fraction": d.get("dz_catastrophic", 0) / max(d.get("dz_n", 1), 1)}
            entry["stages"][s] = d
        out[c] = entry
    return out


def _combine(cs):
    from .checksum import combine
    return combine(cs) if cs else None


def _plots(plan, summary: dict, records: dict, out_dir: str) -> list[str]:
    from ..plots.canvas import figure
    files = []
    fig = figure(figsize=(7, 3.5))
    ax = fig.add_subplot()
    for c in summary:
        recs = [r for k, r in sorted(records.items()) if k[0] == c and r.get("status") == "committed"]
        rates = [r["rows_in"] / max(sum(v for k, v in r["seconds"].items() if k != "read"), 1e-9) for r in recs]
        ax.plot(range(len(rates)), rates, "o-", label=c)
    ax.set_xlabel("partition (manifest order)")
    ax.set_ylabel("rows / task-second")
    ax.set_title(f"{plan.release_id}: per-partition throughput")
    ax.legend()
    fig.tight_layout()
    files.append(_save(fig, out_dir, "throughput.png"))
    hists = []
    for c, e in summary.items():
        for s, d in e["stages"].items():
            if "z_median_hist" in d:
                hists.append(("photo-z z_median", stages.Z_HIST_EDGES, d["z_median_hist"], "z_median.png"))
            if "ood_score_hist" in d:
                hists.append(("DCP ood_score (clipped to 5)", stages.OOD_HIST_EDGES, d["ood_score_hist"],
                              "ood_score.png"))
            if "dz_hist" in d:
                hists.append(("(z_median - z_true) / (1 + z_true)", stages.DZ_HIST_EDGES, d["dz_hist"], "dz.png"))
    for title, edges, counts, name in {h[3]: h for h in hists}.values():
        fig = figure(figsize=(6, 3.5))
        ax = fig.add_subplot()
        ax.stairs(counts, edges)
        ax.set_title(title)
        ax.set_ylabel("rows")
        fig.tight_layout()
        files.append(_save(fig, out_dir, name))
    return files


def _save(fig, out_dir, name):
    import io
    fs, root = filesystem(out_dir)
    buf = io.BytesIO()
    # No date or software in the PNG: the same records give the same bytes.
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    fs.create_dir(root, recursive=True)
    manifest.atomic_write(fs, _join(root, name), buf.getvalue())
    return f"plots/{name}"


def write_report(plan, cfg, stored: dict, records: dict, cats: dict, digest: str) -> dict:
    fs, root = filesystem(plan.release_dir)
    summary = summarise(plan, records)
    plots = _plots(plan, summary, records, _join(root, "plots"))
    runs = []
    runs_dir = _join(root, "_runs")
    import pyarrow.fs as pafs
    if fs.get_file_info(runs_dir).type == pafs.FileType.Directory:
        for info in sorted(fs.get_file_info(pafs.FileSelector(runs_dir)), key=lambda i: i.path):
            if info.base_name.endswith(".json") and ".tmp-" not in info.base_name:
                with fs.open_input_stream(info.path) as f:
                    r = json.loads(f.read())
                runs.append({k: r.get(k) for k in ("status", "seconds", "rounds", "committed")})
    rep = {"release_id": plan.release_id, "config_hash": plan.config_hash, "code_version": plan.code_version,
           "created_utc": stored["created_utc"], "models": {s.name: s.model_sha256 for s in plan.stages},
           "inputs": plan.inputs, "estimate": plan.estimate, "catalogs": cats, "summary": summary,
           "previous_runs": runs, "plots": plots, "records_digest": digest}
    manifest.atomic_write(fs, _join(root, REPORT_JSON), (json.dumps(rep, indent=1, default=str) + "\n").encode())
    manifest.atomic_write(fs, _join(root, REPORT_HTML), _html(rep).encode())
    return rep


def _html(rep: dict) -> str:
    e = html.escape
    rows = []
    for c, s in rep["summary"].items():
        flags = "; ".join(f"{st}: " + ", ".join(f"{k} {v:,}" for k, v in d.items() if isinstance(v, int))
                          for st, d in s["stages"].items())
        metrics = "; ".join(f"{st}: " + ", ".join(f"{k} {v:.4g}" for k, v in d["photoz_metrics"].items())
                            for st, d in s["stages"].items() if "photoz_metrics" in d)
        rows.append(f"<tr><td>{e(c)}</td><td>{s['partitions_committed']}</td><td>{len(s['partitions_failed'])}</td>"
                    f"<td>{s['rows_in']:,}</td><td>{s['rows_out']:,}</td><td>{e(flags)}</td><td>{e(metrics)}</td>"
                    f"<td>{e(json.dumps(s['task_seconds']))}</td><td><code>{e(str(s['rows_checksum']))}</code></td></tr>")
    failed = "".join(f"<li>{e(c)} {e(p)}: {e(str(why))}</li>" for c, s in rep["summary"].items()
                     for p, why in s["partitions_failed"].items())
    imgs = "".join(f'<figure><img src="{e(p)}" alt="{e(p)}"></figure>' for p in rep["plots"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Release {e(rep['release_id'])}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:1em auto}td,th{border:1px solid #ccc;"
            "padding:3px 6px;font-size:90%}table{border-collapse:collapse}figure{display:inline-block}</style>"
            f"</head><body><h1>Release {e(rep['release_id'])}</h1>"
            f"<p>config hash <code>{e(rep['config_hash'])}</code>, code version {e(rep['code_version'])}, "
            f"started {e(rep['created_utc'])}; models: {e(json.dumps(rep['models']))}</p>"
            "<table><tr><th>catalog</th><th>partitions</th><th>failed</th><th>rows in</th><th>rows out</th>"
            "<th>flag counts</th><th>metrics</th><th>task seconds</th><th>rows checksum</th></tr>"
            + "".join(rows) + "</table>"
            + (f"<h2>Failed partitions</h2><ul>{failed}</ul>" if failed else "")
            + f"<h2>Runs</h2><pre>{e(json.dumps(rep['previous_runs'], indent=1))}</pre>{imgs}</body></html>\n")
