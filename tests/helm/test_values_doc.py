"""values.yaml is documented `## @param` style, value by value, and the chart README's
parameters table is generated from it (helm/tools/gen_values_table.py) and up to date."""

from __future__ import annotations

import importlib.util
import sys

import yaml

from tests.helm.chart import CHART, REPO

_spec = importlib.util.spec_from_file_location("gen_values_table", REPO / "helm" / "tools" / "gen_values_table.py")
gen = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("gen_values_table", gen)
_spec.loader.exec_module(gen)


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    problems = gen.problems(yaml.safe_load(text), gen.parse_params(text))
    assert not problems, "\n".join(problems)


def test_readme_table_is_up_to_date():
    current, fresh, _ = gen.generate(CHART)
    assert current == fresh, ("the values table in helm/streams-enricher/README.md is out of date: "
                              "run `.venv/bin/python helm/tools/gen_values_table.py` (or make helm-docs)")


def test_generator_catches_gaps():
    text = """\
## @section S
a:
  ## @param a.b documented
  b: 1
  c: 2
## @param d.e names nothing
d: {}
## @param m a map documented as a whole
m:
  x: 1
"""
    problems = gen.problems(yaml.safe_load(text), gen.parse_params(text))
    assert problems == ["@param d.e names no value in values.yaml",
                        "a.c has no ## @param comment (document it or a map above it)",
                        "d has no ## @param comment (document it or a map above it)"]


def test_table_rows():
    text = '## @section Things\n## @param a A \\| pipe\na: ""\n## @param b.c List\nb:\n  c: [1, 2]\n'
    table = gen.render_tables(yaml.safe_load(text), gen.parse_params(text))
    assert table.splitlines() == [
        "### Things", "", "| Name | Description | Value |", "| --- | --- | --- |",
        '| `a` | A \\\\| pipe | `""` |',
        "| `b.c` | List | `[1, 2]` |",
    ]
