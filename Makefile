# The two commands of the README. Each creates .venv/ when it is missing.
.PHONY: demo test test-fast bench train-default

demo:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml demo $(ARGS)

test:
	@scripts/bootstrap.sh
	.venv/bin/python -m pytest $(ARGS)

test-fast:
	@scripts/bootstrap.sh
	.venv/bin/python -m pytest -m "not slow" $(ARGS)

bench:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/photoz_throughput.py --rows 200000 --cores 2 $(ARGS)

train-default:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml photoz train --conf conf/photoz_train_dc2.yaml \
		--out lsst_spark_ml/resources/models/mbrnn_dc2 $(ARGS)
