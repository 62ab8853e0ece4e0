"""What the inference workers import: no GalSim (a cluster that only applies a model need not have it), and
the Spark-free predictors and Arrow functions import without PySpark (benchmarks/gpu_check.py drives them on
GPU machines that have no JVM)."""
import subprocess
import sys
import textwrap

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split('.')[0] in {blocked!r}:
                raise ImportError('blocked ' + name)
    sys.meta_path.insert(0, Block())
""")


def _imports_without(blocked: set, modules: list[str]) -> subprocess.CompletedProcess:
    code = BLOCKER.format(blocked=blocked) + "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_morphology_inference_needs_no_galsim():
    r = _imports_without({"galsim"}, ["udfs.morphology", "lsst_spark_ml.morphology.cutouts",
                                      "lsst_spark_ml.inference.morphology", "lsst_spark_ml.morphology.inputs"])
    assert r.returncode == 0, r.stderr


def test_predictors_and_arrow_functions_need_no_pyspark():
    r = _imports_without({"pyspark", "py4j", "galsim"},
                         ["lsst_spark_ml.inference.photoz", "lsst_spark_ml.inference.dcp",
                          "lsst_spark_ml.inference.morphology", "udfs.photoz", "udfs.morphology"])
    assert r.returncode == 0, r.stderr


def test_the_blocker_blocks():
    """Without this the two tests above could pass with a blocker that does nothing."""
    r = _imports_without({"galsim"}, ["lsst_spark_ml.morphology.render"])
    assert r.returncode != 0 and "blocked galsim" in r.stderr
