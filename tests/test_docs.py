"""docs/: generated pages up to date with the code, relative links that resolve, every page reachable.

No Spark: these read the source, the schema objects and the Markdown.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod          # dataclasses in the script look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_configuration_reference_is_up_to_date(capsys):
    rc = _script("config_reference").main(["--check"])
    assert rc == 0, ("docs/configuration.md differs from lsst_spark_ml/config.py; run `make docs`\n"
                     + capsys.readouterr().out[-4000:])


def test_output_reference_is_up_to_date(capsys):
    rc = _script("output_reference").main(["--check"])
    assert rc == 0, ("docs/outputs.md differs from the jobs' schemas; run `make docs`\n"
                     + capsys.readouterr().out[-4000:])


def test_configuration_reference_names_every_key_with_its_default():
    """Independent of the generator: walks the live dataclasses, so a field the parser skipped is caught."""
    from lsst_spark_ml.config import Config
    page = (DOCS / "configuration.md").read_text()
    rows = {}
    for line in page.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]     # cells split on unescaped |
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    missing = []
    for sec in dataclasses.fields(Config):
        section = sec.default_factory()
        assert f"\n## {sec.name}\n" in page, f"no section for {sec.name}"
        for f in dataclasses.fields(section):
            key, value = f"{sec.name}.{f.name}", getattr(section, f.name)
            if key not in rows:
                missing.append(key)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(rows[key]) == float(value), f"{key}: documented {rows[key]}, default {value}"
            elif value is None:
                assert rows[key] == "null", f"{key}: documented {rows[key]}, default None"
    assert not missing, f"keys absent from docs/configuration.md: {missing}"


def test_output_reference_lists_the_photoz_schema_in_order():
    """The photo-z table must list the columns the UDF declares, in its order (a hand edit between the
    markers that the generator would not notice as stale still fails here)."""
    from pyspark.sql.types import StructType

    from udfs.photoz import output_schema
    page = (DOCS / "outputs.md").read_text()
    block = page.split("<!-- BEGIN GENERATED: photoz-predict -->")[1].split("<!-- END GENERATED")[0]
    listed = re.findall(r"^\| `([^`]+)` \|", block, re.M)
    assert listed == output_schema(StructType([])).names


def _markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]


_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"(?<!\!)\[[^\]\n]*\]\(([^)\s]+)\)|!\[[^\]\n]*\]\(([^)\s]+)\)")


def _links(text: str) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", text))
    return [a or b for a, b in _LINK.findall(text)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    h = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", h).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6} +(.+?) *#*$", text, re.M)}


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    broken = []
    for link in _links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):          # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        if not path.exists():
            broken.append(f"{link} (no {path})")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{link} (no heading #{anchor} in {path.name})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken links: {broken}"


def test_link_checker_sees_links_and_misses():
    """The checker itself: it must find a link outside code, ignore ones in code, and reject a bad anchor."""
    text = "see [a](x.md#b) and `[c](d.md)`\n```\n[e](f.md)\n```\n![img](p.png)"
    assert _links(text) == ["x.md#b", "p.png"]
    assert _slug("Annual release (issue 9)") == "annual-release-issue-9"
    assert _slug("Bayesian follow-up (bayes run)") == "bayesian-follow-up-bayes-run"


def test_index_reaches_every_page():
    reached, todo = set(), [DOCS / "index.md"]
    while todo:
        page = todo.pop()
        if page in reached or not page.exists() or page.suffix != ".md":
            continue
        reached.add(page)
        for link in _links(page.read_text()):
            target = link.partition("#")[0]
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target):
                p = (page.parent / target).resolve()
                if p.is_relative_to(DOCS):
                    todo.append(p)
    assert sorted(p.relative_to(DOCS) for p in DOCS.rglob("*.md") if p not in reached) == []


CAPABILITIES = ("photoz", "ood", "bayes", "influence", "asteroids", "morphology", "release", "inference-at-scale")


@pytest.mark.parametrize("name", CAPABILITIES)
def test_capability_page_has_method_run_validation_and_limits(name):
    page = (DOCS / "capabilities" / f"{name}.md").read_text()
    headings = re.findall(r"^## (.+)$", page, re.M)
    assert headings == ["Method", "How to run", "Validation", "Limits and known gaps"], headings


@pytest.mark.parametrize("name", CAPABILITIES)
def test_capability_validation_numbers_are_quoted_not_invented(name):
    """Every decimal number in a page's Validation section appears in the README or the Bayesian results
    file: the pages quote measurements, they do not make new ones."""
    sources = (ROOT / "README.md").read_text() + (ROOT / "benchmarks" / "bayes_results.md").read_text()
    known = set(re.findall(r"\d+\.\d+", sources.replace(",", "")))
    page = (DOCS / "capabilities" / f"{name}.md").read_text()
    validation = page.split("## Validation")[1].split("\n## ")[0]
    numbers = set(re.findall(r"\d+\.\d+", _FENCE.sub("", validation).replace(",", "")))
    assert numbers, "no numbers in the Validation section"
    assert sorted(numbers - known) == []
