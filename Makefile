# The two commands of the README. Each creates .venv/ when it is missing.
.PHONY: demo test test-fast bench bench-training bench-ood bench-influence train-default train-ood \
	train-influence evaluate-influence bench-inference bench-release

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

bench-influence:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/influence_throughput.py --train-rows 10000 --queries 1000 $(ARGS)

bench-inference:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/inference_paths.py --rows 200000 --repeats 3 $(ARGS)
	.venv/bin/python benchmarks/compact_pdf.py
	.venv/bin/python benchmarks/cost_model.py

bench-release:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/release_throughput.py --rows 1000000 --cores 2 $(ARGS)

# The shipped recipe with TracIn snapshots every 10 epochs (influence needs them; ~90 MB, not shipped).
train-influence:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml photoz train --conf conf/photoz_train_dc2.yaml --set train.snapshot_every=10 \
		--out outputs/models/mbrnn_dc2_tracin $(ARGS)

evaluate-influence:
	@scripts/bootstrap.sh
	.venv/bin/python scripts/evaluate_influence.py --out outputs/influence_eval $(ARGS)

train-ood:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml ood fit --conf conf/ood_train_dc2.yaml --out lsst_spark_ml/resources/models/dcp_dc2 $(ARGS)

train-default:
	@scripts/bootstrap.sh
	.venv/bin/lsst-spark-ml photoz train --conf conf/photoz_train_dc2.yaml \
		--out lsst_spark_ml/resources/models/mbrnn_dc2 $(ARGS)

# Packaging for clusters (docs/cluster.md) and the generated parts of docs/.
.PHONY: wheel pack-env docs

wheel:
	@scripts/bootstrap.sh
	scripts/build_wheel.sh $(ARGS)

pack-env:
	@scripts/bootstrap.sh
	scripts/pack_env.sh $(ARGS)

docs:
	@scripts/bootstrap.sh
	.venv/bin/python scripts/config_reference.py
	.venv/bin/python scripts/output_reference.py

# Galaxy morphology (issue 8). The sets: 400 labelled (labelled domain), 3,600 unlabelled and 1,000 test
# (survey domain) GalSim galaxies at 64 px; the shipped model is the DAT trained semi-supervised on them.
MORPH_DATA = outputs/morphology_eval/data
.PHONY: morphology-data train-morphology evaluate-morphology bench-morphology

morphology-data:
	@scripts/bootstrap.sh
	[ -f $(MORPH_DATA)/manifest.json ] || .venv/bin/lsst-spark-ml morphology make-cutouts --out $(MORPH_DATA) \
		--n-labelled 400 --n-unlabelled 3600 --n-test 1000

train-morphology: morphology-data
	.venv/bin/lsst-spark-ml morphology train --conf conf/morphology.yaml --set morphology.budget_images=150000 \
		--labelled $(MORPH_DATA)/labelled --unlabelled $(MORPH_DATA)/unlabelled \
		--out lsst_spark_ml/resources/models/morphology_dat $(ARGS)

evaluate-morphology: morphology-data
	.venv/bin/python scripts/evaluate_morphology.py --out outputs/morphology_eval --budget 150000 $(ARGS)

bench-morphology:
	@scripts/bootstrap.sh
	.venv/bin/python benchmarks/morphology_inference.py --images 48 $(ARGS)
