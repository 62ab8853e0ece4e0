"""Morphology UDF: cutout rows in (Arrow), the same rows out with class probabilities appended.

Thin: decoding is ``morphology.cutouts``, inputs and the model are ``inference.morphology``; this module moves
Arrow batches and keeps one predictor per Python worker (``inference.cache``, keyed by the model's sha256).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from lsst_spark_ml.config import MorphologySettings
from lsst_spark_ml.inference import cache

CUTOUT_COLUMNS = ("cutout", "cutout_shape", "cutout_dtype")
OUTPUT_COLUMNS = ("morph_class", "morph_class_id", "morph_confidence", "morph_probs", "morph_flags",
                  "morph_model_sha256")
ATTENTION_COLUMNS = ("morph_attention", "morph_attention_shape")


def _predictor(model, ms: MorphologySettings):
    from lsst_spark_ml.inference.photoz import pick_device
    payload = model.value
    device = str(pick_device(ms.device))

    def load():
        import torch

        from lsst_spark_ml.artefacts import artefact_from_payload
        from lsst_spark_ml.inference.morphology import MorphologyPredictor
        from lsst_spark_ml.session import task_cores
        torch.set_num_threads(task_cores())
        return MorphologyPredictor.from_artefact(artefact_from_payload(payload), device=device,
                                                 precision=ms.precision)
    return cache.get_or_load((payload.sha256, device, ms.precision, "morphology"), load)


def _probs_array(probs: np.ndarray, ok: np.ndarray) -> pa.Array:
    n, c = probs.shape
    offsets = pa.array(np.arange(0, (n + 1) * c, c, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(np.nan_to_num(probs).ravel(), pa.float32()),
                                    mask=pa.array(~ok))


def output_arrays(res: dict, classes: list[str], sha256: str, attention: bool) -> dict[str, pa.Array]:
    from lsst_spark_ml.morphology.inputs import BAD_ROW
    ok = (res["flags"] & BAD_ROW) == 0
    names = np.asarray(classes, dtype=object)
    cls = np.where(ok, names[np.clip(res["class_id"], 0, None)], None)
    out = {
        "morph_class": pa.array(cls, pa.string()),
        "morph_class_id": pa.array(res["class_id"], pa.int32(), mask=~ok),
        "morph_confidence": pa.array(res["confidence"], pa.float32(), mask=~ok),
        "morph_probs": _probs_array(res["probs"], ok),
        "morph_flags": pa.array(res["flags"], pa.int32()),
        "morph_model_sha256": pa.array([sha256] * len(ok), pa.string()),
    }
    if attention:
        maps = res["attention"].astype(np.float16)
        out["morph_attention"] = pa.array([m.tobytes() if k else None for m, k in zip(maps, ok)], pa.binary())
        out["morph_attention_shape"] = pa.array([list(maps.shape[1:])] * len(ok), pa.list_(pa.int32()))
    return out


def morphology_arrow_mapper(model, ms: MorphologySettings, keep_cutout: bool = False):
    """For ``DataFrame.mapInArrow``: each input row comes out once, with the morphology columns appended.

    ``model``: a Broadcast of the verified model payload (``udfs.photoz.broadcast_model``).
    """
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from lsst_spark_ml.morphology.cutouts import decode_cutouts
        pred = _predictor(model, ms)
        shape = (len(pred.manifest["bands"]), pred.image_size, pred.image_size)
        for batch in batches:
            bands, flags = decode_cutouts(batch.column("cutout"), batch.column("cutout_shape"),
                                          batch.column("cutout_dtype"), shape)
            res = pred.predict(bands, flags, attention=ms.attention, batch_size=ms.batch_size_predict)
            out = output_arrays(res, pred.classes, pred.sha256, ms.attention)
            keep = [i for i, n in enumerate(batch.schema.names) if keep_cutout or n not in CUTOUT_COLUMNS]
            arrays = [batch.column(i) for i in keep] + list(out.values())
            names = [batch.schema.names[i] for i in keep] + list(out)
            yield pa.RecordBatch.from_arrays(arrays, names=names)
    return run


def output_schema(input_schema, attention: bool, keep_cutout: bool = False):
    from pyspark.sql import types as T
    fields = [f for f in input_schema.fields if keep_cutout or f.name not in CUTOUT_COLUMNS]
    fields += [T.StructField("morph_class", T.StringType(), True),
               T.StructField("morph_class_id", T.IntegerType(), True),
               T.StructField("morph_confidence", T.FloatType(), True),
               T.StructField("morph_probs", T.ArrayType(T.FloatType(), False), True),
               T.StructField("morph_flags", T.IntegerType(), False),
               T.StructField("morph_model_sha256", T.StringType(), False)]
    if attention:
        fields += [T.StructField("morph_attention", T.BinaryType(), True),
                   T.StructField("morph_attention_shape", T.ArrayType(T.IntegerType(), False), True)]
    return T.StructType(fields)


def morphology_pandas_udf(model, ms: MorphologySettings):
    """``morphology_dat(cutout, cutout_shape, cutout_dtype)`` for SQL (``udfs.sql.register``): a struct of the
    morphology columns (no attention map) per row, from the same per-worker cached predictor."""
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import StructField, StructType

    # pandas carries no non-null marker: every struct field is declared nullable.
    schema = StructType([StructField(f.name, f.dataType, True) for f in output_schema(StructType([]), False).fields])

    @pandas_udf(schema)
    def morphology_dat(it: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        from lsst_spark_ml.morphology.cutouts import decode_cutouts
        pred = _predictor(model, ms)
        shape = (len(pred.manifest["bands"]), pred.image_size, pred.image_size)
        for cutout, cshape, cdtype in it:
            bands, flags = decode_cutouts(pa.array(cutout, pa.binary()),
                                          pa.array(cshape, pa.list_(pa.int32())), pa.array(cdtype, pa.string()),
                                          shape)
            res = pred.predict(bands, flags, batch_size=ms.batch_size_predict)
            arrays = output_arrays(res, pred.classes, pred.sha256, False)
            # Nullable ints stay Int32 (pandas would make them float64, which Arrow then refuses as int).
            ints = {pa.int32(): pd.Int32Dtype()}.get
            yield pd.DataFrame({k: v.to_pandas(types_mapper=ints) for k, v in arrays.items()})
    return morphology_dat
