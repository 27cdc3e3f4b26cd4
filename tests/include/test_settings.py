"""``FetchSettings.from_env``: the deployment's ``HARVEST_*`` variables, then the run's Params."""

from __future__ import annotations

import dataclasses

import pytest

from include.harvest.settings import DEFAULT_USER_AGENT, FetchSettings

DEFAULTS = FetchSettings()


def test_no_variables_give_the_named_defaults() -> None:
    assert FetchSettings.from_env({}) == DEFAULTS


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(FetchSettings)])
@pytest.mark.parametrize("empty", ["", "  "])
def test_an_empty_variable_means_the_default(field: str, empty: str) -> None:
    # `HARVEST_BATCH_DEADLINE=` in an .env file or a compose `${X:-}` sets the variable to "".
    settings = FetchSettings.from_env({f"HARVEST_{field.upper()}": empty})
    assert getattr(settings, field) == getattr(DEFAULTS, field)


def test_empty_numbers_and_strings_in_particular() -> None:
    settings = FetchSettings.from_env(
        {
            "HARVEST_BATCH_DEADLINE": "",
            "HARVEST_CONCURRENCY": "",
            "HARVEST_USER_AGENT": "",
            "HARVEST_REDIS_URL": "",
        }
    )
    assert settings.batch_deadline is None and settings.concurrency == 32
    assert settings.user_agent == DEFAULT_USER_AGENT  # never an empty User-Agent header
    assert settings.redis_url is None


def test_values_of_each_type_are_parsed() -> None:
    settings = FetchSettings.from_env(
        {
            "HARVEST_CONCURRENCY": " 12 ",
            "HARVEST_CONNECT_TIMEOUT": "2.5",
            "HARVEST_BATCH_DEADLINE": "600",
            "HARVEST_RESPECT_ROBOTS_TAG": "Off",
            "HARVEST_ALLOW_SVG": "yes",
            "HARVEST_USER_AGENT": "Acme/1.0 (ops@acme.example)",
            "HARVEST_REDIS_URL": "redis://127.0.0.1:6379/1",
            "HARVEST_UNRELATED": "ignored",
        }
    )
    assert settings.concurrency == 12 and isinstance(settings.concurrency, int)
    assert settings.connect_timeout == 2.5
    assert settings.batch_deadline == 600.0 and isinstance(settings.batch_deadline, float)
    assert settings.respect_robots_tag is False and settings.allow_svg is True
    assert settings.user_agent == "Acme/1.0 (ops@acme.example)"
    assert settings.redis_url == "redis://127.0.0.1:6379/1"


def test_tuples_are_split_on_commas_and_stripped() -> None:
    settings = FetchSettings.from_env({"HARVEST_ALLOW_HOSTS": "a, b,"})
    assert settings.allow_hosts == ("a", "b")
    assert FetchSettings.from_env({"HARVEST_ALLOW_HOSTS": " ,, "}).allow_hosts == ()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("HARVEST_CONCURRENCY", "lots", "is not a whole number"),
        ("HARVEST_CONCURRENCY", "2.5", "is not a whole number"),
        ("HARVEST_MAX_BYTES", "20MB", "is not a whole number"),
        ("HARVEST_BATCH_DEADLINE", "soon", "is not a number"),
        ("HARVEST_TOTAL_TIMEOUT", "nan", "is not a finite number"),
        ("HARVEST_READ_TIMEOUT", "inf", "is not a finite number"),
        ("HARVEST_RESPECT_ROBOTS_TAG", "maybe", "is not a boolean"),
        ("HARVEST_BLOCK_PRIVATE_ADDRESSES", "2", "is not a boolean"),
    ],
)
def test_a_bad_value_raises_an_error_naming_the_variable(name: str, value: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        FetchSettings.from_env({name: value})
    assert f"{name}={value!r}" in str(info.value) and says in str(info.value)


def test_params_overrides_win_over_the_environment() -> None:
    env = {"HARVEST_CONCURRENCY": "12", "HARVEST_MAX_BYTES": "1000", "HARVEST_ALLOW_HOSTS": "env.example"}
    settings = FetchSettings.from_env(env, concurrency=4, allow_hosts=["a.example", " b.example "])
    assert settings.concurrency == 4
    assert settings.max_bytes == 1000  # not overridden: the environment's value stays
    assert settings.allow_hosts == ("a.example", "b.example")


def test_a_param_left_empty_keeps_the_environment_value() -> None:
    # The DAG passes every Param; one the user did not set arrives as None.
    settings = FetchSettings.from_env(
        {"HARVEST_CONCURRENCY": "12"}, concurrency=None, accept_any_content=None
    )
    assert settings.concurrency == 12 and settings.accept_any_content is False


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARVEST_PER_HOST_CONCURRENCY", "3")
    monkeypatch.setenv("HARVEST_BATCH_DEADLINE", "")
    settings = FetchSettings.from_env()
    assert settings.per_host_concurrency == 3 and settings.batch_deadline is None
