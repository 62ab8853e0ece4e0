#!/usr/bin/env python
"""Fill the generated tables of docs/outputs.md from the output-schema definitions in the code.

    python scripts/output_reference.py            # rewrite the blocks between the GENERATED markers
    python scripts/output_reference.py --check    # exit 1 and show a diff when a block is stale

The prose of docs/outputs.md is hand-written; each block between ``<!-- BEGIN GENERATED: key -->`` and
``<!-- END GENERATED: key -->`` is produced here from the object the job itself uses to build its output
(``udfs.photoz.output_schema``, ``udfs.dcp.output_schema``, ``pipelines.bayes.output_fields``,
``pipelines.targets.SCORE_SCHEMA``, the asteroid estimators' column Params, ``release.partition._provenance``),
or, for the ``_*_meta.json`` files, from the keys of the dict literal each pipeline writes (``ast``).
Column meanings live in ``MEANINGS`` below: a column the code adds without a meaning here fails the run, so
a new column cannot reach the page undocumented.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import re
import sys
import textwrap
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_DOC = ROOT / "docs" / "outputs.md"
BLOCK = re.compile(r"(<!-- BEGIN GENERATED: (?P<key>[\w-]+) -->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=key) -->)",
                   re.S)

MEANINGS = {
    # photo-z (inference.schema; inference.summaries.summarize)
    "z_mean": "mean of the PDF (the paper's point estimate; pulled by the tails)",
    "z_mode": "centre of the most probable bin",
    "z_median": "median of the PDF (recommended point estimate)",
    "z_std": "standard deviation of the PDF, within-bin spread included",
    "z_lo68": "15.87 % quantile of the PDF",
    "z_hi68": "84.13 % quantile of the PDF",
    "pdf": "probabilities on the model's bins (`_photoz_meta.json` `bins`); with `inference.pdf_format: uint8`, "
           "one byte per bin (`inference/compact_pdf.py`); absent with `output.write_pdf: false`",
    "flags": "bit set: NONDETECT (0+k), MISSING (8+k), BAD_ERROR (16+k), NO_ESTIMATE (24), OUT_OF_RANGE (25), "
             "BAD_EBV (26); k = band index in the model's band set (README, Bad input). "
             "`lsst_spark_ml.features.flags.describe` names them",
    "model_sha256": "sha256 of the model directory's manifest the row was computed with",
    # Morphology (udfs.morphology)
    "morph_class": "predicted class name (E, S0, Sa, Sb, Sc, Irr: the model manifest's `classes`); null on a "
                   "flagged row",
    "morph_class_id": "index of the predicted class in the manifest's `classes`",
    "morph_confidence": "probability of the predicted class",
    "morph_probs": "probability per class, in the manifest's class order",
    "morph_flags": "bit set (`lsst_spark_ml.morphology.inputs`): BAD_SHAPE 1, MISSING_BAND 2, ALL_NAN_BAND 4, "
                   "NO_OBJECT 8 (informational: still classified), BAD_DTYPE 16",
    "morph_model_sha256": "sha256 of the model directory's manifest the row was computed with",
    "morph_attention": "with `morphology.attention: true`: the last block's attention map, float16 bytes, "
                       "C order, at the cutout's resolution",
    "morph_attention_shape": "shape of `morph_attention` (height, width)",
    # DCP (udfs.dcp)
    "ood_score": "DCP entropy gap clamp(H_HE - H_LE, 1e-5, ln n_bins): high = unfamiliar to the network",
    "ood_flag": "score above the model's stored `flag` threshold (99th percentile of labelled validation "
                "scores by default), or the photo-z could not use the row (NO_ESTIMATE)",
    "ood_tercile": "0, 1, 2: score below the 1/3 quantile, between, above the 2/3 quantile of the labelled "
                   "validation scores",
    # Bayesian follow-up (pipelines.bayes)
    "bayes_z_mean": "posterior mean (null on rows not selected)",
    "bayes_z_median": "posterior median",
    "bayes_z_mode": "posterior mode",
    "bayes_z_std": "posterior standard deviation",
    "bayes_z_lo68": "posterior 15.87 % quantile",
    "bayes_z_hi68": "posterior 84.13 % quantile",
    "bayes_z_lo95": "posterior 2.28 % quantile",
    "bayes_z_hi95": "posterior 97.72 % quantile",
    "bayes_rhat": "MCMC: split R-hat of z over the walkers (NaN for grid and VI)",
    "bayes_ess": "MCMC: effective sample size of z (NaN for grid and VI)",
    "bayes_elbo": "VI: final ELBO (NaN for grid and MCMC)",
    "z_adopted": "the adopted redshift: the Bayesian median where it ran and succeeded, else the network's "
                 "z_median, else null",
    "z_adopted_lo68": "lower 68 % bound of the adopted answer",
    "z_adopted_hi68": "upper 68 % bound of the adopted answer",
    "bayes_pdf": "posterior probabilities on the network's bins",
    "bayes_flags": "1 NO_DATA (every band missing), 2 NOT_CONVERGED (MCMC R-hat/ESS, VI non-finite ELBO)",
    "bayes_method": "grid | mcmc | vi on the selected rows, null elsewhere",
    "z_source": "which answer was adopted: the method name, `network`, or `none`",
    "pdf_adopted": "PDF of the adopted answer, on the network's bins",
    # targets (pipelines.targets.SCORE_SCHEMA)
    "id": "the pool's id column (renamed to its own name on write)",
    "z_phot": "ensemble z_median",
    "uncertainty": "DCP ood_score (with --dcp-model) or the entropy of the ensemble PDF",
    "uncertainty_pct": "percentile of `uncertainty` in the broadcast reference sample",
    "density": "inverse mean distance to the `influence.density_k` nearest reference objects",
    "density_pct": "percentile of `density` in the reference sample",
    "dist_labelled": "feature-space distance to the nearest labelled (training) object",
    "priority": "uncertainty_pct^a x density_pct^b (a, b: influence.uncertainty_weight, density_weight)",
    "target_flags": "1 NO_FEATURES: photometry gives no estimate, scores null",
    "feature_flags": "the photo-z `flags` bits of the row",
    # asteroids (estimators.asteroids)
    "refl_mag": "per-band reflectance magnitudes (asteroid minus Sun; NaN = band missing), ReflectanceFeatures",
    "refl_err": "their errors",
    "probability": "class probabilities, in the model's class order (`_asteroids_meta.json` / getClasses())",
    "prediction": "index of the most probable class",
    "asteroid_class": "class name (C, D, K, L, S, V, X; clustering: `unassigned` below min_probability)",
    "asteroid_complex": "complex (C, S, X, V, D; K and L count as S)",
    "max_probability": "largest class probability",
    "log_likelihood": "log marginal density of the observed colours",
    "unusual_score": "-log10 chi-square tail probability under the nearest component (high = unlike every "
                     "component)",
    "asteroid_flags": "bits 0-7 MISSING band k, 8 NO_COLOUR, 9 LOW_PROBABILITY, 10 UNUSUAL",
    # release provenance (release.partition._provenance)
    "release_id": "the release's id (release.id)",
    "release_stage": "stage name (photoz, ood, bayes) or `joined`",
    "code_version": "lsst_spark_ml.__version__ of the run",
    "config_hash": "hash of the release-relevant configuration and the verified model sha256s (release.json)",
    "photoz_model_sha256": "(joined catalogs) the photo-z model's sha256",
    "ood_model_sha256": "(joined catalogs) the DCP model's sha256",
    # HATS layout (io.hats_writer)
    "_healpix_29": "nested HEALPix index at order 29 of (ra, dec); 0 for invalid coordinates",
    "Norder": "HEALPix order of the partition (directory level; output.hats_order)",
    "Dir": "Npix rounded down to a multiple of 10,000 (directory level)",
    "Npix": "HEALPix pixel of the partition at Norder (directory level)",
}

# The asteroid model writes its columns from inside ``_transform`` (no schema object): the names come from
# the estimator's Params defaults (generated), the types from this map, checked to cover the names exactly.
ASTEROID_TYPES = {"probability": ("array<double>", True), "prediction": ("double", True),
                  "asteroid_class": ("string", True), "asteroid_complex": ("string", True),
                  "max_probability": ("double", True), "log_likelihood": ("double", True),
                  "unusual_score": ("double", True), "asteroid_flags": ("bigint", False),
                  "refl_mag": ("array<double>", False), "refl_err": ("array<double>", False)}


class DocError(RuntimeError):
    pass


def _meaning(name: str) -> str:
    if name not in MEANINGS:
        raise DocError(f"column {name!r} has no meaning in scripts/output_reference.py MEANINGS: add one")
    return MEANINGS[name].replace("|", "\\|")


def _rows(cols: list[tuple[str, str, bool]]) -> list[str]:
    out = ["| column | type | nullable | meaning |", "|---|---|---|---|"]
    # A type already in backticks is a composite cell (two variants); others are one Spark type name.
    out += [f"| `{n}` | {t if t.startswith('`') else f'`{t}`'} | {'yes' if nl else 'no'} | {_meaning(n)} |"
            for n, t, nl in cols]
    return out


def _spark_cols(struct) -> list[tuple[str, str, bool]]:
    return [(f.name, f.dataType.simpleString(), f.nullable) for f in struct.fields]


def _ddl_cols(ddl: str) -> list[tuple[str, str, bool]]:
    """``"a long, b double"`` -> [(a, bigint, True), ...] without a JVM (Spark's DDL names, nullable)."""
    alias = {"long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint"}
    out = []
    for part in ddl.split(","):
        name, typ = part.split()
        out.append((name, alias.get(typ.lower(), typ.lower()), True))
    return out


def _arrow_name(t) -> str:
    return {"string": "string", "int64": "bigint", "double": "double"}.get(str(t), str(t))


def meta_keys(func) -> list[str]:
    """Constant keys of ``meta = {...}``, ``meta.update({...})`` and ``meta["k"] = ...`` in ``func``."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    keys: list[str] = []

    def add(d: ast.Dict):
        keys.extend(k.value for k in d.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "meta" for t in node.targets):
            if isinstance(node.value, ast.Dict):
                add(node.value)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "meta"
                        and isinstance(t.slice, ast.Constant)):
                    keys.append(t.slice.value)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
              and isinstance(node.func.value, ast.Name) and node.func.value.id == "meta"):
            for a in node.args:
                if isinstance(a, ast.Dict):
                    add(a)
    if not keys:
        raise DocError(f"no meta dict found in {func.__module__}.{func.__name__}")
    return list(dict.fromkeys(keys))


def _keys_line(func, file_name: str) -> list[str]:
    return [f"`{file_name}` keys (from `{func.__module__}.{func.__name__}`): "
            + ", ".join(f"`{k}`" for k in meta_keys(func)) + "."]


def blocks() -> dict[str, list[str]]:
    from pyspark.sql.types import StructType

    import udfs.dcp as dcp_udf
    import udfs.photoz as photoz_udf
    from lsst_spark_ml.io import hats_writer
    from lsst_spark_ml.pipelines import asteroids as ast_pipe
    from lsst_spark_ml.pipelines import bayes, influence, ood, photoz, targets
    from lsst_spark_ml.release import partition
    empty = StructType([])
    out: dict[str, list[str]] = {}

    f32 = _spark_cols(photoz_udf.output_schema(empty, True, "float32"))
    u8 = dict((n, t) for n, t, _ in _spark_cols(photoz_udf.output_schema(empty, True, "uint8")))
    pz = [(n, t if u8[n] == t else f"`{t}` (pdf_format uint8: `{u8[n]}`)", nl) for n, t, nl in f32]
    out["photoz-predict"] = _rows(pz)
    out["photoz-meta"] = _keys_line(photoz.predict, photoz.META_FILE)
    # Norder/Dir/Npix are Hive-style directory names (Spark infers integers when it reads them back).
    out["hats-columns"] = _rows([(hats_writer.HEALPIX_COLUMN, "bigint", True)]
                                + [(c, "`(directory)`", False) for c in hats_writer.PARTITION_COLUMNS])

    out["ood-score"] = _rows(_spark_cols(dcp_udf.output_schema(empty, True, True)))
    out["ood-meta"] = _keys_line(ood.score, ood.META_FILE)

    out["bayes-run"] = _rows(_spark_cols(StructType(bayes.output_fields())))
    out["bayes-meta"] = _keys_line(bayes.run, bayes.META_FILE)

    out["influence-meta"] = _keys_line(influence.run, influence.META_FILE)

    out["targets-scores"] = _rows(_ddl_cols(targets.SCORE_SCHEMA))
    out["targets-meta"] = _keys_line(targets.run, targets.META_FILE)

    from lsst_spark_ml.estimators.asteroids import ReflectanceFeatures, SemiSupervisedAsteroidGMMModel
    feats, model = ReflectanceFeatures(), SemiSupervisedAsteroidGMMModel()
    names = [feats.getOrDefault(p) for p in (feats.outputCol, feats.errorsOutputCol)]
    names += [model.getOrDefault(p) for p in (model.probabilityCol, model.predictionCol, model.classCol,
                                              model.complexCol, model.maxProbabilityCol, model.logLikelihoodCol,
                                              model.unusualScoreCol, model.flagsCol)]
    if sorted(names) != sorted(ASTEROID_TYPES):
        raise DocError(f"asteroid output columns {names} differ from ASTEROID_TYPES {sorted(ASTEROID_TYPES)}")
    out["asteroids-classify"] = _rows([(n, *ASTEROID_TYPES[n]) for n in names])
    out["asteroids-meta"] = _keys_line(ast_pipe.classify, ast_pipe.META_FILE)

    import udfs.morphology as morph_udf
    from lsst_spark_ml.pipelines import morphology
    out["morphology-predict"] = _rows(_spark_cols(morph_udf.output_schema(empty, True)))
    out["morphology-meta"] = _keys_line(morphology.predict, morphology.META_FILE)

    def without_sha(cols):
        return [c for c in cols if c[0] != "model_sha256"]
    out["release-photoz"] = _rows(without_sha(_spark_cols(photoz_udf.output_schema(empty, True, "float32"))))
    out["release-ood"] = _rows(without_sha(_spark_cols(dcp_udf.output_schema(empty, False, False))))
    out["release-bayes"] = _rows(_spark_cols(StructType(bayes.output_fields())))
    # _provenance only reads these three attributes of its task context.
    ctx = types.SimpleNamespace(release_id="r", code_version="v", config_hash="h")
    per_stage = partition._provenance(ctx, 0, "photoz", {"photoz": "x"})
    # The bayes stage has no model directory (sha None): joined catalogs carry no bayes_model_sha256.
    joined = partition._provenance(ctx, 0, "joined", {"photoz": "x", "ood": "y", "bayes": None})
    prov = [(k, _arrow_name(v.type), True) for k, v in per_stage.items()]
    prov += [(k, _arrow_name(v.type), True) for k, v in joined.items() if k not in per_stage]
    out["release-provenance"] = _rows(prov)
    return out


def render(doc: str) -> str:
    generated = blocks()
    seen = set()

    def fill(m: re.Match) -> str:
        key = m.group("key")
        if key not in generated:
            raise DocError(f"docs/outputs.md has a block {key!r} the generator does not know")
        seen.add(key)
        return m.group(1) + "\n".join(generated[key]) + "\n" + m.group(4)
    text = BLOCK.sub(fill, doc)
    missing = sorted(set(generated) - seen)
    if missing:
        raise DocError(f"docs/outputs.md lacks the GENERATED block(s) {missing}")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    p.add_argument("--doc", type=Path, default=DEFAULT_DOC)
    args = p.parse_args(argv)
    old = args.doc.read_text()
    new = render(old)
    if args.check:
        if new == old:
            print(f"{args.doc} is up to date")
            return 0
        sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(args.doc),
                                                   "generated", n=1))
        print(f"\n{args.doc} is stale: run `make docs` (or python scripts/output_reference.py)", file=sys.stderr)
        return 1
    if new != old:
        args.doc.write_text(new)
        print(f"wrote {args.doc}")
    else:
        print(f"{args.doc} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
