"""The routes.yaml reference: the README's copy is the generated one, and every key is described."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, reference
from gateway.config.bounded import duration, whole_number
from gateway.config.reference import SECTIONS, between_markers, documented_keys, render, spliced
from gateway.config.schema import auth, database, models, routes, server, top, upstreams
from gateway.config.schema.fields import KeyDoc, config_dataclass, doc, field_doc, key_doc
from gateway.config.schema.models import ModelConfig
from gateway.config.schema.server import ServerConfig
from gateway.config.schema.upstreams import UpstreamConfig

README = Path(__file__).resolve().parents[2] / "README.md"
SCHEMA_MODULES = (auth, database, models, routes, server, top, upstreams)


def test_readme_reference_is_the_generated_one() -> None:
    written = between_markers(README.read_text(encoding="utf-8"))
    assert written == render(), (
        "README.md's routes.yaml reference differs from the schema's; regenerate it with "
        f"`{reference.REGENERATE}`"
    )


@pytest.mark.parametrize(("section", "cls"), SECTIONS, ids=[name for name, _ in SECTIONS])
def test_every_field_has_a_description(section: str, cls: type) -> None:
    """A new field made with plain `field()` or a bare default has no KeyDoc: it fails here."""
    for each in dataclasses.fields(cls):
        assert "routes.yaml" in each.metadata, (
            f"{section}: {cls.__name__}.{each.name} has no description; make it with doc(...)"
        )
        meaning = field_doc(each)
        assert meaning.description.strip(), f"{cls.__name__}.{each.name}: empty description"
        assert "\n" not in meaning.description, f"{cls.__name__}.{each.name}: one line, please"


def test_every_config_dataclass_of_the_schema_is_in_the_reference() -> None:
    """A new section's dataclass must be listed in SECTIONS, so its keys are documented."""
    listed = {cls for _, cls in SECTIONS}
    for module in SCHEMA_MODULES:
        for name, member in vars(module).items():
            if isinstance(member, type) and dataclasses.is_dataclass(member):
                if member.__module__ != module.__name__:
                    continue
                assert member in listed, f"{module.__name__}.{name} is not in reference.SECTIONS"


# Each section with an unknown key (bogus, or x): the parser names its known keys in the message.
UNKNOWN_KEY = {
    "top level": "bogus: 1",
    "server": "server: {bogus: 1}",
    "server.tls": "server: {tls: {cert: a.crt, key: a.key, bogus: 1}}",
    "server.cors": "server: {cors: {origins: ['*'], bogus: 1}}",
    "auth": "auth: {bogus: 1}",
    "auth.keys[]": "auth: {keys: [{kid: k, secret: s, bogus: 1}]}",
    "auth.issuers[]": "auth: {issuers: [{issuer: https://i, jwks_url: https://i/k, audience: a, "
    "bogus: 1}]}",
    "auth.password_hashing": "auth: {password_hashing: {bogus: 1}}",
    "database": "database: {bogus: 1}",
    "audit": "audit: {bogus: 1}",
    "upstreams.NAME": "upstreams: {up: {targets: [http://a], bogus: 1}}",
    "upstreams.NAME.targets[]": "upstreams: {up: {targets: [{url: http://a, bogus: 1}]}}",
    "upstreams.NAME.health_check": "upstreams: {u: {targets: [http://a], health_check: {x: 1}}}",
    "upstreams.NAME.passive": "upstreams: {up: {targets: [http://a], passive: {bogus: 1}}}",
    "upstreams.NAME.retry_budget": "upstreams: {u: {targets: [http://a], retry_budget: {x: 1}}}",
    "upstreams.NAME.tls": "upstreams: {up: {targets: [https://a], tls: {bogus: 1}}}",
    "routes[]": "routes: [{path: /a, handler: admin, bogus: 1}]",
    "rate_limit": "routes: [{path: /a, handler: admin, rate_limit: {limit: 1, per: 1s, bogus: 1}}]",
    "models.NAME": "models: {m: {url: http://a, bogus: 1}}",
}


@pytest.mark.parametrize(("section", "cls"), SECTIONS, ids=[name for name, _ in SECTIONS])
def test_reference_keys_are_the_keys_the_parser_knows(
    section: str, cls: type, tmp_path: Path
) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text(UNKNOWN_KEY[section] + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    hints = [
        p.message.split("(known keys: ", 1)[1].rstrip(")")
        for p in info.value.problems
        if "unknown key (known keys" in p.message
    ]
    assert len(hints) == 1, info.value.problems
    known = set(hints[0].split(", "))
    documented = {
        key for _, meaning in documented_keys(cls) for key in str(meaning.key).split(", ")
    }
    if cls is ModelConfig:  # a model also takes url and the upstream and route keys
        assert documented <= known
    else:
        assert documented == known


def _typo(key: str) -> str:
    """`key` with its last letter doubled: one edit away from it and from no other key."""
    return key + key[-1]


@pytest.mark.parametrize(("section", "cls"), SECTIONS, ids=[name for name, _ in SECTIONS])
def test_a_misspelt_key_gets_the_nearest_known_key_suggested(
    section: str, cls: type, tmp_path: Path
) -> None:
    """At every level: a key one letter off a known one names that one."""
    keys = sorted(
        key for _, meaning in documented_keys(cls) for key in str(meaning.key).split(", ")
    )
    wanted = max(keys, key=len)  # the longest: no other key is as close to its typo
    path = tmp_path / "routes.yaml"
    text = re.sub(r"\b(bogus|x): 1", f"{_typo(wanted)}: 1", UNKNOWN_KEY[section])
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    suggestions = [p.message for p in info.value.problems if "did you mean" in p.message]
    assert len(suggestions) == 1, info.value.problems
    assert suggestions[0].endswith(f"unknown key `{_typo(wanted)}`; did you mean `{wanted}`?"), (
        suggestions
    )


def test_bounds_are_read_from_the_field() -> None:
    """A parser's bound is the metadata's: the same KeyDoc, key resolved to the field name."""
    assert key_doc(UpstreamConfig, "retries") == KeyDoc(
        description=key_doc(UpstreamConfig, "retries").description,
        key="retries",
        minimum=0,
        maximum=10,
    )
    assert key_doc(ServerConfig, "host").key == "listen"
    assert key_doc(ServerConfig, "port").key is None
    with pytest.raises(KeyError):
        key_doc(ServerConfig, "no_such_field")


def test_doc_makes_required_and_default_fields() -> None:
    @config_dataclass
    class Sample:
        needed: int = doc("must be given")
        counted: int = doc("a count", default=3, minimum=1)
        listed: tuple[str, ...] = doc("a list", default_factory=tuple)

    assert Sample(needed=1) == Sample(1, 3, ())
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Sample(1).counted = 4  # type: ignore[misc]
    assert key_doc(Sample, "counted") == KeyDoc("a count", "counted", minimum=1)


def test_bounded_converters_refuse_bounds_they_cannot_check() -> None:
    @config_dataclass
    class Odd:
        half_open: float = doc("a duration with only a minimum", default=1.0, minimum=1)

    with pytest.raises(TypeError):
        duration(Odd, "half_open")
    assert callable(whole_number(ServerConfig, "max_connections"))


def test_write_splices_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(
        f"# title\n\n{reference.START}\nold text\n{reference.END}\n\nafter\n", encoding="utf-8"
    )
    assert reference.main(["--write", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith(f"# title\n\n{reference.START}\n")
    assert text.endswith(f"{reference.END}\n\nafter\n")
    assert between_markers(text) == render()
    with pytest.raises(ValueError, match="markers"):
        spliced("no markers here", render())


def test_write_without_markers_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# title\n", encoding="utf-8")
    assert reference.main(["--write", str(readme)]) == 1
    assert "markers" in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == "# title\n"
