"""A policy file with wrong types, values out of range, unknown placeholders and nulls: one
error at load listing every problem, each naming its key; the code location still loads and
says what is wrong instead of stopping at a bare TypeError."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg
import pytest

from backup_pipelines.lib.errors import ConfigError
from backup_pipelines.lib.policy import Policy, load_policy
from backup_pipelines_tests.helpers import DATE

pytestmark = pytest.mark.faults

BROKEN = """
rpo_hours: "24"
workspace_tables: memory_entries
zstd_level: 99
typesense_collection: "memory_{workspace}_{tenant}"
qdrant_collections: ["agent_{workspace}", "notes"]
rto_minutes: null
drill_sample_size: 0
keep_daily_days: 1.5
schema: "public; drop table x"
"""


def load_text(tmp_path, text: str):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return load_policy(path)


def test_policy_problems_are_one_error_naming_every_key(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_text(tmp_path, BROKEN)
    message = str(refused.value)
    assert "9 problems" in message
    for expected in (
        "rpo_hours: should be a valid number, got str '24'",
        "workspace_tables: expected a list of tables, got str 'memory_entries'",
        "zstd_level: should be less than or equal to 22, got 99",
        "typesense_collection: collection template 'memory_{workspace}_{tenant}' has unknown "
        "placeholder(s) {tenant}",
        "qdrant_collections: collection template 'notes' lacks {workspace}",
        "rto_minutes: is null; give a value, or leave the key out for the default",
        "drill_sample_size: should be greater than or equal to 1, got 0",
        "keep_daily_days: should be a valid integer, got float 1.5",
        "schema: 'public; drop table x' is not an identifier",
    ):
        assert expected in message, message


def test_policy_index_mapping_is_checked_at_load(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_text(
            tmp_path,
            """
indexes:
  typesense:
    fields: [body, {column: "x y", type: string}, {column: n, type: int63}]
    text_columns: null
    rebuild_command: "reindex --workspace {workspace} --tenant {tenant}"
  qdrant:
    vector_encoding: float16
    distance: cosine
    rebuild_timeout_seconds: -5
  elastic: {}
""",
        )
    message = str(refused.value)
    for expected in (
        "indexes.typesense.fields[1].column: 'x y' is not an identifier",
        "indexes.typesense.fields[2].type: unknown field type 'int63'",
        "indexes.typesense.text_columns: is null",
        "indexes.typesense.rebuild_command: argument '{tenant}' has unknown placeholder(s) "
        "{tenant}; known: {workspace}, {collection}",
        "indexes.qdrant.vector_encoding: should be 'array', 'float32le' or 'float64le', got "
        "str 'float16'",
        "indexes.qdrant.distance: should be 'Cosine', 'Dot', 'Euclid' or 'Manhattan'",
        "indexes.qdrant.rebuild_timeout_seconds: should be greater than 0, got -5",
        "indexes.elastic: unknown key",
    ):
        assert expected in message, message


def test_policy_cross_key_rules_name_each_key(tmp_path):
    with pytest.raises(ConfigError) as refused:
        load_text(
            tmp_path,
            """
indexes:
  typesense:
    fields: [body, "n:int64"]
    probe_column: noted_at
""",
        )
    message = str(refused.value)
    assert "indexes.typesense.fields: body need a type" in message
    assert "indexes.typesense.text_columns: 'content' must be one of the fields" in message
    assert "indexes.typesense.probe_column: 'noted_at' must be one of the fields" in message
    assert "indexes.typesense.default_sorting_field: 'created_at' must be" in message


def test_policy_file_may_change_one_mapping_key_and_keep_every_default(tmp_path):
    policy = load_text(
        tmp_path,
        "workspace_tables: [workspaces, 'notes:tenant']\nmemory_table: notes\n"
        "indexes:\n  qdrant:\n    probe_column: null\n",
    )
    qdrant, typesense = policy.index_mapping("qdrant"), policy.index_mapping("typesense")
    assert (qdrant.table, qdrant.workspace_column, qdrant.probe_column) == ("notes", "tenant", None)
    assert qdrant.vector_column == "embedding" and qdrant.fields == Policy().indexes.qdrant.fields
    assert typesense.table == "notes" and typesense.probe_column == "created_at"
    assert Policy.rpo_hours == 24.0 and policy.rpo_hours == 24.0


def test_policy_problem_does_not_stop_the_code_location_from_loading(
    tmp_path, source_db, monkeypatch
):
    """`rpo_hours: "24"` used to stop the code location at import with a bare TypeError. It
    loads now, says what is wrong, and every run that reads the policy fails naming the key."""
    path = tmp_path / "policy.yaml"
    path.write_text('rpo_hours: "24"\n')
    env = {
        **os.environ,
        "BACKUP_POLICY_FILE": str(path),
        "DATABASE_URL": source_db,
        "BACKUP_STORE_URL": f"file://{tmp_path / 'store'}",
    }
    for variable in ("TYPESENSE_URL", "TYPESENSE_API_KEY", "QDRANT_URL"):
        env.pop(variable, None)
    loaded = subprocess.run(
        [sys.executable, "-c", "from backup_pipelines.definitions import defs; "
         "print(sorted(j.name for j in defs.jobs))"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr
    assert "workspace_backup_job" in loaded.stdout
    assert "rpo_hours: should be a valid number, got str '24'" in loaded.stderr
    assert "TypeError" not in loaded.stderr

    for key in ("BACKUP_POLICY_FILE", "DATABASE_URL", "BACKUP_STORE_URL"):
        monkeypatch.setenv(key, env[key])
    for variable in ("TYPESENSE_URL", "TYPESENSE_API_KEY", "QDRANT_URL"):
        monkeypatch.delenv(variable, raising=False)
    from backup_pipelines.definitions import build_definitions

    job = build_definitions().resolve_job_def("postgres_full_backup_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, partition_key=DATE, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "rpo_hours: should be a valid number, got str '24'" in str(failure.event_specific_data)
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("manifest.json"))
