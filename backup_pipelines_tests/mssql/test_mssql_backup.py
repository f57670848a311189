"""BACKUP / RESTORE rules, headers, msdb history and point-in-time restore, through pyodbc."""

from __future__ import annotations

import pyodbc
import pytest

from .helpers import (
    connect,
    error_number,
    header,
    message_numbers,
    run,
    server_time,
    wait_until_no_sessions_use,
    wait_until_server_time_passes,
)

OPTS = "WITH COMPRESSION, CHECKSUM"
# What SQL Server reports first for a damaged backup: checksum (3189/3183), structure (3241),
# read failure (3203) or only the terminating 3013.
DAMAGED = {3189, 3183, 3241, 3203, 3013}


def _seed(conn, db: str) -> None:
    run(
        conn,
        f"CREATE TABLE [{db}].dbo.notes (id INT NOT NULL PRIMARY KEY, agent_id INT NOT NULL, body NVARCHAR(200) NOT NULL)",
    )


def _insert(conn, db: str, *ids: int) -> None:
    for i in ids:
        conn.execute(
            f"INSERT INTO [{db}].dbo.notes (id, agent_id, body) VALUES (?, ?, ?)",
            i,
            i % 2,
            f"note {i}",
        )


def _ids(conn, db: str) -> list[int]:
    return [r[0] for r in conn.execute(f"SELECT id FROM [{db}].dbo.notes ORDER BY id").fetchall()]


def _fails(conn, sql: str) -> list[int]:
    with pytest.raises(pyodbc.Error) as failure:
        run(conn, sql)
    return error_number(failure.value)


def test_mssql_backup_chain_headers_and_msdb_history(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("chain")
    files = {kind: backups / f"{db}_{kind}.bak" for kind in ("full", "diff", "log1", "log2")}
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        _insert(conn, db, 1, 2)
        run(
            conn,
            f"BACKUP DATABASE [{db}] TO DISK = N'{files['full']}' {OPTS}, FORMAT, INIT, NAME = N'full'",
        )
        _insert(conn, db, 3)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{files['diff']}' {OPTS}, DIFFERENTIAL")
        _insert(conn, db, 4)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{files['log1']}' {OPTS}")
        conn.execute(f"UPDATE [{db}].dbo.notes SET body = N'changed' WHERE id = 1")
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{files['log2']}' {OPTS}")
        full, diff, log1, log2 = (header(conn, files[k]) for k in ("full", "diff", "log1", "log2"))
        assert (full.BackupType, diff.BackupType, log1.BackupType, log2.BackupType) == (1, 5, 2, 2)
        assert full.BackupName == "full" and full.DatabaseName == db
        assert full.HasBackupChecksums and full.Compressed and not full.IsCopyOnly
        assert diff.DatabaseBackupLSN == full.CheckpointLSN
        assert diff.DifferentialBaseLSN == full.CheckpointLSN
        assert diff.DifferentialBaseGUID == full.BackupSetGUID
        assert log1.FirstLSN <= full.LastLSN <= log1.LastLSN
        assert log1.LastLSN == log2.FirstLSN
        assert log2.LastLSN > log2.FirstLSN
        assert log1.DatabaseBackupLSN == full.CheckpointLSN
        assert full.FirstLSN <= full.CheckpointLSN < full.LastLSN
        assert full.RecoveryModel == "FULL" and full.BackupTypeDescription == "Database"
        history = conn.execute(
            "SELECT b.type, b.first_lsn, b.last_lsn, b.checkpoint_lsn, b.database_backup_lsn, b.backup_set_uuid, "
            "b.is_copy_only, b.has_backup_checksums, f.physical_device_name, f.family_sequence_number, f.mirror "
            "FROM msdb.dbo.backupset b JOIN msdb.dbo.backupmediafamily f ON f.media_set_id = b.media_set_id "
            "WHERE b.database_name = ? ORDER BY b.backup_set_id",
            db,
        ).fetchall()
        assert [r.type for r in history] == ["D", "I", "L", "L"]
        for row, head, path in zip(history, (full, diff, log1, log2), files.values(), strict=True):
            assert (row.first_lsn, row.last_lsn, row.checkpoint_lsn, row.database_backup_lsn) == (
                head.FirstLSN, head.LastLSN, head.CheckpointLSN, head.DatabaseBackupLSN
            )  # fmt: skip
            assert str(row.backup_set_uuid).upper() == str(head.BackupSetGUID).upper()
            assert row.physical_device_name == str(path)
            assert (
                row.family_sequence_number,
                row.mirror,
                row.is_copy_only,
                row.has_backup_checksums,
            ) == (1, 0, False, True)
        files_listed = conn.execute(
            f"RESTORE FILELISTONLY FROM DISK = N'{files['full']}'"
        ).fetchall()
        assert sorted(r.Type for r in files_listed) == ["D", "L"]


def test_mssql_point_in_time_restore_into_new_database(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    db = mssql_databases.create("pitr")
    copy = mssql_databases.name("pitr_copy")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        _insert(conn, db, 1)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        _insert(conn, db, 2)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/diff.bak' {OPTS}, DIFFERENTIAL")
        _insert(conn, db, 3)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log1.bak' {OPTS}")
        _insert(conn, db, 4)
        committed = server_time(conn)
        wait_until_server_time_passes(conn, committed)
        stop_at = server_time(conn)
        wait_until_server_time_passes(conn, stop_at)
        _insert(conn, db, 5)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log2.bak' {OPTS}")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{backups}/full.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        stamp = stop_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/full.bak' WITH NORECOVERY, {move}, STATS = 50",
        )
        state = conn.execute(
            "SELECT state_desc FROM sys.databases WHERE name = ?", copy
        ).fetchone()[0]
        assert state == "RESTORING"
        assert 927 in _fails(conn, f"SELECT * FROM [{copy}].dbo.notes")
        run(conn, f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/diff.bak' WITH NORECOVERY")
        messages = run(
            conn,
            f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log1.bak' WITH NORECOVERY, STOPAT = N'{stamp}'",
        )
        assert 4322 in message_numbers(messages)  # T is after this log: more roll forward needed
        run(
            conn,
            f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log2.bak' WITH RECOVERY, STOPAT = N'{stamp}'",
        )
        assert (
            conn.execute("SELECT state_desc FROM sys.databases WHERE name = ?", copy).fetchone()[0]
            == "ONLINE"
        )
        assert _ids(conn, copy) == [1, 2, 3, 4]
        assert _ids(conn, db) == [1, 2, 3, 4, 5]
        run(conn, f"DBCC CHECKDB ([{copy}]) WITH NO_INFOMSGS")
        files = conn.execute(
            "SELECT type_desc, physical_name FROM sys.master_files WHERE database_id = DB_ID(?) ORDER BY file_id",
            copy,
        ).fetchall()
        assert [tuple(f) for f in files] == [
            ("ROWS", f"{data}/{copy}.mdf"),
            ("LOG", f"{data}/{copy}_log.ldf"),
        ]
        # the recovered copy is usable and starts a new recovery fork
        _insert(conn, copy, 40)
        run(conn, f"BACKUP DATABASE [{copy}] TO DISK = N'{backups}/copy_full.bak' {OPTS}")
        assert (
            header(conn, backups / "copy_full.bak").RecoveryForkID
            != header(conn, backups / "log2.bak").RecoveryForkID
        )


def test_mssql_log_restore_out_of_order_is_4305_and_too_early_is_4326(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    db = mssql_databases.create("order")
    copy = mssql_databases.name("order_copy")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        for n in (1, 2, 3):
            _insert(conn, db, n)
            run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log{n}.bak' {OPTS}")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{backups}/full.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/full.bak' WITH NORECOVERY, {move}",
        )
        assert 4305 in _fails(
            conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log2.bak' WITH NORECOVERY"
        )
        run(conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log1.bak' WITH NORECOVERY")
        assert 4326 in _fails(
            conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log1.bak' WITH NORECOVERY"
        )
        run(conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log2.bak' WITH NORECOVERY")
        # RESTORE onto a RESTORING database, then RECOVERY without a backup
        run(conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log3.bak' WITH NORECOVERY")
        run(conn, f"RESTORE DATABASE [{copy}] WITH RECOVERY")
        assert _ids(conn, copy) == [1, 2, 3]
        assert 3117 in _fails(conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log3.bak'")


def test_mssql_backup_rules_3021_4208_4214_3035(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    simple = mssql_databases.create("simple", recovery="SIMPLE")
    fresh = mssql_databases.create("fresh")
    with connect(mssql_connection_string) as conn:
        assert _fails(conn, f"BACKUP LOG [{simple}] TO DISK = N'{backups}/s.trn'")[0] == 4208
        assert 4214 in _fails(conn, f"BACKUP LOG [{fresh}] TO DISK = N'{backups}/f.trn'")
        assert 3035 in _fails(
            conn, f"BACKUP DATABASE [{fresh}] TO DISK = N'{backups}/f.dif' WITH DIFFERENTIAL"
        )
        run(conn, f"BACKUP DATABASE [{simple}] TO DISK = N'{backups}/s.bak' {OPTS}")
    with connect(mssql_connection_string, autocommit=False) as tx:
        assert _fails(tx, f"BACKUP DATABASE [{fresh}] TO DISK = N'{backups}/tx.bak'")[0] == 3021
        tx.rollback()


def test_mssql_copy_only_full_does_not_move_differential_base(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("copyonly")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        _insert(conn, db, 1)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log1.bak' {OPTS}")
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/copy.bak' {OPTS}, COPY_ONLY")
        _insert(conn, db, 2)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/diff.bak' {OPTS}, DIFFERENTIAL")
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log2.bak' {OPTS}")
        full, copy, diff = (header(conn, backups / f) for f in ("full.bak", "copy.bak", "diff.bak"))
        log1, log2 = header(conn, backups / "log1.bak"), header(conn, backups / "log2.bak")
        assert copy.IsCopyOnly and not full.IsCopyOnly
        assert diff.DifferentialBaseLSN == full.CheckpointLSN != copy.CheckpointLSN
        assert diff.DifferentialBaseGUID == full.BackupSetGUID
        assert log2.FirstLSN == log1.LastLSN  # the copy-only full did not break the log chain


def test_mssql_verifyonly_detects_a_flipped_byte(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    db = mssql_databases.create("verify")
    path = backups / "full.bak"
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        _insert(conn, db, *range(1, 50))
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{path}' {OPTS}")
        assert 3262 in message_numbers(
            run(conn, f"RESTORE VERIFYONLY FROM DISK = N'{path}' WITH CHECKSUM")
        )
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x5A
        path.write_bytes(bytes(raw))
        assert _fails(conn, f"RESTORE VERIFYONLY FROM DISK = N'{path}' WITH CHECKSUM")[0] in DAMAGED
        copy = mssql_databases.name("verify_copy")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{path}'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        assert (
            _fails(conn, f"RESTORE DATABASE [{copy}] FROM DISK = N'{path}' WITH CHECKSUM, {move}")[
                0
            ]
            in DAMAGED
        )


def test_mssql_progress_messages_arrive_in_several_result_sets(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("stats")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        _insert(conn, db, *range(1, 20))
        cur = conn.cursor()
        cur.execute(f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}, STATS = 10")
        per_set = [list(cur.messages)]
        while cur.nextset():
            per_set.append(list(cur.messages))
        texts = [text for messages in per_set for _, text in messages]
        percents = [t for t in texts if "percent processed." in t]
        assert len([s for s in per_set if s]) > 1
        assert percents and percents[-1].endswith("100 percent processed.")
        assert any(f"pages for database '{db}'" in t for t in texts)
        assert any("BACKUP DATABASE successfully processed" in t for t in texts)


def test_mssql_restore_over_live_database_needs_tail_or_replace(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("tail")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        _insert(conn, db, 1)
        assert 3159 in _fails(conn, f"RESTORE DATABASE [{db}] FROM DISK = N'{backups}/full.bak'")
        with connect(mssql_connection_string, database=db):
            assert 3101 in _fails(
                conn, f"RESTORE DATABASE [{db}] FROM DISK = N'{backups}/full.bak' WITH REPLACE"
            )
        wait_until_no_sessions_use(conn, db)
        run(conn, f"RESTORE DATABASE [{db}] FROM DISK = N'{backups}/full.bak' WITH REPLACE")
        assert _ids(conn, db) == []


def test_mssql_tail_log_backup_then_restore_in_place(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, _ = mssql_dirs
    db = mssql_databases.create("tail_inplace")
    with connect(mssql_connection_string) as conn:
        _seed(conn, db)
        _insert(conn, db, 1)
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        _insert(conn, db, 2)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log1.bak' {OPTS}")
        _insert(conn, db, 3)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/tail.bak' {OPTS}, NORECOVERY")
        tail = header(conn, backups / "tail.bak")
        assert tail.IsForceOffline and tail.FirstLSN == header(conn, backups / "log1.bak").LastLSN
        assert (
            conn.execute("SELECT state_desc FROM sys.databases WHERE name = ?", db).fetchone()[0]
            == "RESTORING"
        )
        run(conn, f"RESTORE DATABASE [{db}] FROM DISK = N'{backups}/full.bak' WITH NORECOVERY")
        run(conn, f"RESTORE LOG [{db}] FROM DISK = N'{backups}/log1.bak' WITH NORECOVERY")
        run(conn, f"RESTORE LOG [{db}] FROM DISK = N'{backups}/tail.bak' WITH RECOVERY")
        assert _ids(conn, db) == [1, 2, 3]


def test_mssql_log_restore_replays_schema_changes_updates_and_deletes(
    mssql_connection_string, mssql_databases, mssql_dirs
):
    backups, data = mssql_dirs
    db = mssql_databases.create("replay")
    copy = mssql_databases.name("replay_copy")
    with connect(mssql_connection_string, database=db) as conn:
        run(
            conn,
            "CREATE TABLE dbo.a (id INT IDENTITY(1,1) PRIMARY KEY, v NVARCHAR(10) NOT NULL, b VARBINARY(10) NULL, f FLOAT NULL)",
        )
        conn.execute(
            "INSERT INTO dbo.a (v, b, f) VALUES (?, ?, ?), (?, ?, ?)",
            "one",
            b"\x01",
            0.1,
            "two",
            None,
            1e300,
        )
        run(conn, f"BACKUP DATABASE [{db}] TO DISK = N'{backups}/full.bak' {OPTS}")
        run(
            conn,
            "CREATE TABLE dbo.n (id INT PRIMARY KEY, a_id INT NOT NULL REFERENCES dbo.a (id), note NVARCHAR(20) NOT NULL DEFAULT N'dflt')",
        )
        run(conn, "CREATE INDEX ix_n_a ON dbo.n (a_id)")
        conn.execute("INSERT INTO dbo.a (v) VALUES (?)", "three")
        conn.execute("INSERT INTO dbo.n (id, a_id) VALUES (?, ?)", 1, 3)
        conn.execute("UPDATE dbo.a SET v = ?, b = ? WHERE id = ?", "ONE", b"\xff\xee", 1)
        conn.execute("DELETE FROM dbo.a WHERE id = ?", 2)
        run(conn, "BEGIN TRANSACTION; INSERT INTO dbo.a (v) VALUES (N'rolled back'); ROLLBACK")
        run(conn, "ALTER TABLE dbo.a ADD extra INT NULL")
        conn.execute("UPDATE dbo.a SET extra = ?", 7)
        run(conn, f"BACKUP LOG [{db}] TO DISK = N'{backups}/log.bak' {OPTS}")
        run(conn, "USE master")
        logical = {
            r.Type: r.LogicalName
            for r in conn.execute(f"RESTORE FILELISTONLY FROM DISK = N'{backups}/full.bak'")
        }
        move = f"MOVE N'{logical['D']}' TO N'{data}/{copy}.mdf', MOVE N'{logical['L']}' TO N'{data}/{copy}_log.ldf'"
        run(
            conn,
            f"RESTORE DATABASE [{copy}] FROM DISK = N'{backups}/full.bak' WITH NORECOVERY, {move}",
        )
        run(conn, f"RESTORE LOG [{copy}] FROM DISK = N'{backups}/log.bak' WITH RECOVERY")
        for name in (db, copy):
            rows = conn.execute(
                f"SELECT id, v, b, f, extra FROM [{name}].dbo.a ORDER BY id"
            ).fetchall()
            assert [tuple(r) for r in rows] == [
                (1, "ONE", b"\xff\xee", 0.1, 7),
                (3, "three", None, None, 7),
            ]
            assert [
                tuple(r)
                for r in conn.execute(f"SELECT id, a_id, note FROM [{name}].dbo.n").fetchall()
            ] == [(1, 3, "dflt")]
            tables = conn.execute(
                f"SELECT TABLE_NAME FROM [{name}].INFORMATION_SCHEMA.TABLES ORDER BY TABLE_NAME"
            ).fetchall()
            assert [r[0] for r in tables] == ["a", "n"]
        conn.execute(f"INSERT INTO [{copy}].dbo.n (id, a_id) VALUES (?, ?)", 2, 1)
        with pytest.raises(pyodbc.Error) as failure:
            conn.execute(f"INSERT INTO [{copy}].dbo.n (id, a_id) VALUES (?, ?)", 3, 99)
        assert 547 in error_number(failure.value)
