"""Columns (names and SQL Server types) of the catalog views the stand-in serves."""

from __future__ import annotations

SERVER_LEVEL = {
    "sys.databases",
    "sys.master_files",
    "sys.dm_exec_sessions",
    "sys.dm_exec_requests",
    "sys.credentials",
    "sys.database_files",
}


def _cols(spec: str) -> list[tuple[str, str]]:
    out = []
    for part in spec.split(";"):
        name, type_text = part.strip().split(" ", 1)
        out.append((name, type_text.strip()))
    return out


SYSNAME = "nvarchar(128)"
DT = "datetime"
VIEWS: dict[str, list[tuple[str, str]]] = {
    "sys.databases": _cols(
        f"name {SYSNAME}; database_id int; source_database_id int; create_date {DT}; "
        "compatibility_level tinyint; collation_name nvarchar(128); user_access tinyint; "
        "user_access_desc nvarchar(60); is_read_only bit; state tinyint; state_desc nvarchar(60); "
        "recovery_model tinyint; recovery_model_desc nvarchar(60); is_in_standby bit; "
        "log_reuse_wait_desc nvarchar(60); is_encrypted bit"
    ),
    "sys.master_files": _cols(
        "database_id int; file_id int; file_guid uniqueidentifier; type tinyint; "
        f"type_desc nvarchar(60); data_space_id int; name {SYSNAME}; physical_name nvarchar(260); "
        "state tinyint; state_desc nvarchar(60); size int; max_size int; growth int; "
        "is_percent_growth bit"
    ),
    "sys.database_files": _cols(
        "file_id int; file_guid uniqueidentifier; type tinyint; type_desc nvarchar(60); "
        f"data_space_id int; name {SYSNAME}; physical_name nvarchar(260); state tinyint; "
        "state_desc nvarchar(60); size int; max_size int; growth int"
    ),
    "sys.dm_exec_requests": _cols(
        f"session_id smallint; request_id int; start_time {DT}; status nvarchar(30); command nvarchar(32); "
        "database_id smallint; percent_complete real; estimated_completion_time bigint; "
        "blocking_session_id smallint; wait_type nvarchar(60); open_transaction_count int"
    ),
    "sys.dm_exec_sessions": _cols(
        f"session_id smallint; login_name {SYSNAME}; host_name {SYSNAME}; program_name {SYSNAME}; "
        "status nvarchar(30); database_id smallint; is_user_process bit; open_transaction_count int"
    ),
    "sys.credentials": _cols(
        f"credential_id int; name {SYSNAME}; credential_identity nvarchar(4000); create_date {DT}"
    ),
    "sys.schemas": _cols(f"name {SYSNAME}; schema_id int; principal_id int"),
    "sys.objects": _cols(
        f"name {SYSNAME}; object_id int; principal_id int; schema_id int; parent_object_id int; "
        f"type char(2); type_desc nvarchar(60); create_date {DT}; modify_date {DT}; is_ms_shipped bit"
    ),
    "sys.tables": _cols(
        f"name {SYSNAME}; object_id int; principal_id int; schema_id int; parent_object_id int; "
        f"type char(2); type_desc nvarchar(60); create_date {DT}; modify_date {DT}; "
        "is_ms_shipped bit; temporal_type tinyint"
    ),
    "sys.columns": _cols(
        f"object_id int; name {SYSNAME}; column_id int; system_type_id tinyint; user_type_id int; "
        "max_length smallint; precision tinyint; scale tinyint; collation_name nvarchar(128); "
        "is_nullable bit; is_identity bit; is_computed bit; default_object_id int"
    ),
    "sys.types": _cols(
        f"name {SYSNAME}; system_type_id tinyint; user_type_id int; schema_id int; "
        "max_length smallint; precision tinyint; scale tinyint; is_nullable bit; is_user_defined bit"
    ),
    "sys.identity_columns": _cols(
        f"object_id int; name {SYSNAME}; column_id int; seed_value bigint; increment_value bigint; "
        "last_value bigint"
    ),
    "sys.foreign_keys": _cols(
        f"name {SYSNAME}; object_id int; schema_id int; parent_object_id int; type char(2); "
        f"type_desc nvarchar(60); create_date {DT}; referenced_object_id int; is_disabled bit; "
        "delete_referential_action tinyint; delete_referential_action_desc nvarchar(60); "
        "update_referential_action tinyint; update_referential_action_desc nvarchar(60)"
    ),
    "sys.foreign_key_columns": _cols(
        "constraint_object_id int; constraint_column_id int; parent_object_id int; "
        "parent_column_id int; referenced_object_id int; referenced_column_id int"
    ),
    "sys.key_constraints": _cols(
        f"name {SYSNAME}; object_id int; schema_id int; parent_object_id int; type char(2); "
        f"type_desc nvarchar(60); create_date {DT}; unique_index_id int; is_system_named bit"
    ),
    "sys.indexes": _cols(
        f"object_id int; name {SYSNAME}; index_id int; type tinyint; type_desc nvarchar(60); "
        "is_unique bit; is_primary_key bit; is_unique_constraint bit"
    ),
    "sys.index_columns": _cols(
        "object_id int; index_id int; index_column_id int; column_id int; key_ordinal tinyint; "
        "is_descending_key bit; is_included_column bit"
    ),
    "information_schema.tables": _cols(
        f"TABLE_CATALOG {SYSNAME}; TABLE_SCHEMA {SYSNAME}; TABLE_NAME {SYSNAME}; TABLE_TYPE varchar(10)"
    ),
    "information_schema.columns": _cols(
        f"TABLE_CATALOG {SYSNAME}; TABLE_SCHEMA {SYSNAME}; TABLE_NAME {SYSNAME}; COLUMN_NAME {SYSNAME}; "
        "ORDINAL_POSITION int; COLUMN_DEFAULT nvarchar(4000); IS_NULLABLE varchar(3); "
        "DATA_TYPE nvarchar(128); CHARACTER_MAXIMUM_LENGTH int; CHARACTER_OCTET_LENGTH int; "
        "NUMERIC_PRECISION tinyint; NUMERIC_PRECISION_RADIX smallint; NUMERIC_SCALE int; "
        f"DATETIME_PRECISION smallint; CHARACTER_SET_NAME {SYSNAME}; COLLATION_NAME {SYSNAME}"
    ),
    "information_schema.table_constraints": _cols(
        f"CONSTRAINT_CATALOG {SYSNAME}; CONSTRAINT_SCHEMA {SYSNAME}; CONSTRAINT_NAME {SYSNAME}; "
        f"TABLE_CATALOG {SYSNAME}; TABLE_SCHEMA {SYSNAME}; TABLE_NAME {SYSNAME}; "
        "CONSTRAINT_TYPE varchar(11); IS_DEFERRABLE varchar(2); INITIALLY_DEFERRED varchar(2)"
    ),
    "information_schema.key_column_usage": _cols(
        f"CONSTRAINT_CATALOG {SYSNAME}; CONSTRAINT_SCHEMA {SYSNAME}; CONSTRAINT_NAME {SYSNAME}; "
        f"TABLE_CATALOG {SYSNAME}; TABLE_SCHEMA {SYSNAME}; TABLE_NAME {SYSNAME}; "
        f"COLUMN_NAME {SYSNAME}; ORDINAL_POSITION int"
    ),
    "information_schema.constraint_column_usage": _cols(
        f"TABLE_CATALOG {SYSNAME}; TABLE_SCHEMA {SYSNAME}; TABLE_NAME {SYSNAME}; COLUMN_NAME {SYSNAME}; "
        f"CONSTRAINT_CATALOG {SYSNAME}; CONSTRAINT_SCHEMA {SYSNAME}; CONSTRAINT_NAME {SYSNAME}"
    ),
    "information_schema.referential_constraints": _cols(
        f"CONSTRAINT_CATALOG {SYSNAME}; CONSTRAINT_SCHEMA {SYSNAME}; CONSTRAINT_NAME {SYSNAME}; "
        f"UNIQUE_CONSTRAINT_CATALOG {SYSNAME}; UNIQUE_CONSTRAINT_SCHEMA {SYSNAME}; "
        f"UNIQUE_CONSTRAINT_NAME {SYSNAME}; MATCH_OPTION varchar(7); UPDATE_RULE varchar(11); "
        "DELETE_RULE varchar(11)"
    ),
    "information_schema.schemata": _cols(
        f"CATALOG_NAME {SYSNAME}; SCHEMA_NAME {SYSNAME}; SCHEMA_OWNER {SYSNAME}"
    ),
}
