"""Every generated copy of a fact (CRDs, rules, defaults, references) matches its one source."""

from tools.generate import all_outputs, drifted


def test_every_generated_copy_matches_its_source():
    outputs = all_outputs()
    assert drifted(outputs) == [], "run `make generate` and commit the result"
