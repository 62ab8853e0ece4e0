# The two commands of the README. Each creates .venv/ when it is missing.
.PHONY: demo test test-fast bench bench-training bench-ood train-default train-ood

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

bench-training:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/training_scaling.py $(ARGS)

bench-ood:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/ood_throughput.py --rows 200000 --cores 2 $(ARGS)

train-ood:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml ood fit --conf conf/ood_train_dc2.yaml --out lsst_spark_ml/resources/models/dcp_dc2 $(ARGS)

train-default:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml photoz train --conf conf/photoz_train_dc2.yaml \
		--out lsst_spark_ml/resources/models/mbrnn_dc2 $(ARGS)
