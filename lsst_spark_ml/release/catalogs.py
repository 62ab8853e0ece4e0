"""HATS metadata of a release's output catalogs, from the committed partitions only.

The data files are written by the tasks; this writes what ``io.hats_writer.write_hats`` writes after a Spark
write (``_common_metadata``, ``_metadata``, ``partition_info.csv``, ``hats.properties``), so Spark, pyarrow
and LSDB open a release catalog like any other. The creation date is the release's first start, not now:
rerunning a finished release rewrites these files with the same bytes.
"""
from __future__ import annotations

import re

import pyarrow.parquet as pq

from ..io.hats_writer import HEALPIX_COLUMN, HEALPIX_ORDER, write_text
from ..io.readers import _join, filesystem

_PIXEL = re.compile(r"Norder=(\d+)/Dir=(\d+)/Npix=(\d+)")


def write_metadata(cat_dir: str, rel_paths: list[str], name: str, ra_col: str, dec_col: str, created: str,
                   builder: str) -> dict:
    """``rel_paths``: committed data files relative to ``cat_dir/dataset``. Returns a summary."""
    fs, root = filesystem(cat_dir)
    dataset = _join(root, "dataset")

    def key(rel):
        m = _PIXEL.search(rel)
        return (int(m.group(1)), int(m.group(3)), rel) if m else (-1, -1, rel)

    footers = []
    for rel in sorted(rel_paths, key=key):
        with fs.open_input_file(_join(dataset, rel)) as f:
            md = pq.read_metadata(f)
        md.set_file_path(rel)
        footers.append((rel, md))
    if not footers:
        return {"n_rows": 0, "n_partitions": 0}
    with fs.open_input_file(_join(dataset, footers[0][0])) as f:
        schema = pq.read_schema(f)
    pq.write_metadata(schema, _join(dataset, "_common_metadata"), filesystem=fs)
    pq.write_metadata(schema, _join(dataset, "_metadata"), filesystem=fs, metadata_collector=[m for _, m in footers])
    n_rows = sum(m.num_rows for _, m in footers)
    pixels = [(key(rel)[0], key(rel)[1], m.num_rows) for rel, m in footers if key(rel)[0] >= 0]
    if pixels:
        write_text(fs, _join(root, "partition_info.csv"),
                   "Norder,Npix\n" + "".join(f"{o},{p}\n" for o, p, _ in pixels))
        props = {"obs_collection": name, "dataproduct_type": "object", "hats_nrows": n_rows,
                 "hats_col_ra": ra_col, "hats_col_dec": dec_col, "hats_col_healpix": HEALPIX_COLUMN,
                 "hats_col_healpix_order": HEALPIX_ORDER, "hats_npix_suffix": ".parquet",
                 "hats_max_rows": max(r for *_, r in pixels), "hats_order": max(o for o, *_ in pixels),
                 "hats_estsize": sum(i.size for i in fs.get_file_info([_join(dataset, r) for r, _ in footers]))
                 // 1024,
                 "hats_builder": builder, "hats_creation_date": created, "hats_version": "v1.0"}
        text = "#HATS catalog\n" + "".join(f"{k}={v}\n" for k, v in props.items())
        for fname in ("hats.properties", "properties"):
            write_text(fs, _join(root, fname), text)
    return {"n_rows": n_rows, "n_partitions": len(footers), "hats": bool(pixels)}
