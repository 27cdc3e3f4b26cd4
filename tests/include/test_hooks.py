"""Deployment settings read from the environment (the part of hooks that needs no Airflow)."""

from __future__ import annotations

import pytest

from include.harvest.hooks import keep_work_files


@pytest.mark.parametrize(
    ("value", "keep"),
    [(None, False), ("", False), ("  ", False), ("true", True), ("1", True), ("Yes", True),
     ("false", False), ("0", False), ("no", False)],
)  # fmt: skip
def test_keep_work_files_reads_true_and_false_and_defaults_to_false(value: str | None, keep: bool):
    environ = {} if value is None else {"HARVEST_KEEP_WORK_FILES": value}
    assert keep_work_files(environ) is keep


def test_a_value_that_is_not_a_boolean_names_the_variable():
    with pytest.raises(
        ValueError, match=r"^HARVEST_KEEP_WORK_FILES='keep' is not a boolean \(use true or false\)$"
    ):
        keep_work_files({"HARVEST_KEEP_WORK_FILES": "keep"})
