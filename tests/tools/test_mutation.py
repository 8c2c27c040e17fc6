"""tools/mutation.py: the list fits the code (cheap, every run), a changed snippet is an
error that says what to do, and a run tells a killed mutant from a surviving one. The
full check, every mutant, is `make mutation`."""

from __future__ import annotations

from dataclasses import replace

from tools.mutation import KILLED, SURVIVED, Mutant, Run, execute, load, main, problems

DECISIONS = {
    "gateway/pipeline/policy.py",
    "gateway/pipeline/authentication.py",
    "gateway/pipeline/rate_limit.py",
    "gateway/state/gcra.py",
    "gateway/routing.py",
    "gateway/pipeline/forwarded.py",
    "gateway/security/tokens.py",
    "gateway/proxy/headers.py",
}
GCRA = Mutant(
    name="gcra-forgets-history",
    file="gateway/state/gcra.py",
    original="start = now if tat is None or tat < now else tat",
    mutated="start = now",
    tests=("tests/state/test_gcra.py::test_a_burst_of_limit_passes_then_refusals",),
)


def test_every_snippet_of_the_list_is_in_the_code_once() -> None:
    mutants = load()
    assert problems(mutants) == []
    assert {m.file for m in mutants} == DECISIONS
    assert len(mutants) >= 25


def test_a_snippet_the_code_no_longer_has_is_an_error_naming_the_mutant() -> None:
    gone = replace(GCRA, original="start = now if tat is None else tat")
    assert problems([gone]) == [
        "mutant gcra-forgets-history (gateway/state/gcra.py): its original snippet is no "
        "longer in the file. The code changed: rewrite the mutant in tools/mutations.toml "
        "for the new code (same intent), do not delete it"
    ]
    twice = replace(GCRA, original="now")
    assert "occurs" in problems([twice])[0]
    assert main(["--check"]) == 0


def test_a_broken_decision_is_killed_and_a_harmless_change_survives() -> None:
    killed = execute(Run(GCRA, GCRA.tests))
    assert (killed.verdict, killed.code) == (KILLED, 1), killed.tail()
    harmless = replace(GCRA, mutated=GCRA.original + "  # the same code")
    survived = execute(Run(harmless, harmless.tests))
    assert (survived.verdict, survived.code) == (SURVIVED, 0), survived.tail()
