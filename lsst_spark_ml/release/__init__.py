"""The annual data-release reprocessing job (issue 9): plan, partition commits, manifest, provenance, report.

One sky partition (HATS pixel) of the input is the unit of work, of commit and of bookkeeping: a Spark task
reads it, runs every configured stage on it, writes each stage's output to a temporary file and commits it by
rename, then records the commit in the release manifest. A rerun skips what the manifest says is committed.
"""
