"""A SQL Server stand-in: speaks TDS 7.4 on 127.0.0.1, keeps rows in SQLite, and enforces SQL
Server's BACKUP / RESTORE rules, so the product's SQL Server code is tested through the real
pyodbc and the real FreeTDS ODBC driver. No SQL Server engine can run on these machines.

Running it
----------
    python -m backup_pipelines.devstack.mssql --port P --storage DIR [--password PWD] [--verbose]

or ``with MssqlStandinProcess() as mssql: ...`` (its own process, a free loopback port, storage in
a temporary folder removed on stop; ``mssql.connection_string(database)``). The login is ``sa``
with the given password (default ``Standin!Passw0rd``, or ``$MSSQL_STANDIN_PASSWORD``); any other
login or password is error 18456. ``--verbose`` (or ``$MSSQL_STANDIN_VERBOSE``) logs every request.

Connecting (what the product should do)
---------------------------------------
    pyodbc.connect("DRIVER={FreeTDS};SERVER=127.0.0.1;PORT=P;UID=sa;PWD={...};"
                   "TDS_Version=7.4;DATABASE=master", autocommit=True, timeout=10)

- BACKUP and RESTORE need ``autocommit=True`` (pyodbc's default autocommit=False makes FreeTDS
  open a transaction at once: BACKUP is then error 3021 + 3013).
- BACKUP/RESTORE answer in several result sets (progress with ``STATS``, then the closing
  messages): drain them, ``while cursor.nextset(): pass``, and collect ``cursor.messages`` after
  every ``nextset()`` (it holds the current result set's messages only). Closing an undrained
  cursor makes FreeTDS send a cancel (ATTENTION): the stand-in then stops the statement (a
  cancelled BACKUP leaves no file and no msdb row), like SQL Server.
- pyodbc reports the FIRST error of a statement: e.g. a failed BACKUP raises with "(4208)" and
  the following "BACKUP LOG is terminating abnormally. (3013)" is not in the exception text.
  Numbers appear as "(NNNN)" at the end of the message; classes follow FreeTDS's SQLSTATE mapping
  (ProgrammingError, IntegrityError, ...).
- FreeTDS runs one statement at a time per connection: fetch a result completely (fetchall)
  before executing the next statement on another cursor of the same connection.
- Do not use ``cursor.fast_executemany = True``: pyodbc's parameter arrays crash (segfault) the
  client with FreeTDS 1.3 before anything is sent; plain ``executemany`` works.
- pyodbc sends datetime parameters with millisecond precision (it reads datetime's precision,
  23, from sp_datatype_info on connect; the stand-in answers what SQL Server answers).
- datetimeoffset columns need ``conn.add_output_converter(-155, ...)`` in pyodbc (SQL type -155),
  as with a real SQL Server; send datetimeoffset parameters as strings ('2026-12-01 13:05:00 +02:00').

The T-SQL surface
-----------------
Batches may hold several statements separated by semicolons (or starting on keywords such as
BEGIN TRAN, COMMIT, SET, USE, BACKUP). Parameters: ``?`` through pyodbc (FreeTDS sends RPCs:
sp_prepexec / sp_execute / sp_executesql / sp_prepare / sp_unprepare), with int, bigint, bit,
float, real, decimal/numeric, nvarchar/varchar (also MAX), varbinary (also MAX), date,
datetime, datetime2, datetimeoffset, uniqueidentifier and NULL. Parameters may also stand for
names and options of BACKUP/RESTORE (``BACKUP DATABASE ? TO DISK = ?``).

Server: ``SELECT @@VERSION, SERVERPROPERTY('ProductVersion')`` (16.0.1000.1, SQL Server 2022;
``'InstanceDefaultDataPath'`` is ``<storage>/data/``),
``@@TRANCOUNT, @@SPID, @@SERVERNAME, @@ROWCOUNT, @@IDENTITY``, ``DB_ID([name]), DB_NAME([id]),
OBJECT_ID(name), OBJECT_NAME(id[, db_id]), SCHEMA_NAME(id), TYPE_NAME(id), SCOPE_IDENTITY(),
IDENT_CURRENT(name), SUSER_SNAME(), DATABASEPROPERTYEX(db, prop)``; ``SYSUTCDATETIME(),
SYSDATETIME(), GETUTCDATE(), GETDATE(), SYSDATETIMEOFFSET()`` (the server clock is UTC: local time
= UTC), ``NEWID(), LEN, DATALENGTH, ISNULL, COALESCE, NULLIF, IIF, CHARINDEX, CONCAT, LEFT, RIGHT,
SUBSTRING, UPPER, LOWER, REPLACE, DATEADD, DATEDIFF, CAST, CONVERT, TRY_CAST, TRY_CONVERT,
HASHBYTES('SHA2_256'|'SHA2_512'|'SHA1'|'MD5', x), CHECKSUM(...), CHECKSUM(*)`` (one table),
``CHECKSUM_AGG``, ``COUNT, COUNT_BIG, MIN, MAX, SUM, AVG, STRING_AGG``.

Databases: ``CREATE DATABASE [x]`` (1801 if it exists; FULL recovery like model; files
``<storage>/data/x.mdf`` and ``x_log.ldf``), ``DROP DATABASE [IF EXISTS] [x]`` (3701 missing,
3702 in use), ``ALTER DATABASE [x] SET RECOVERY FULL|SIMPLE|BULK_LOGGED``, ``SET SINGLE_USER
[WITH ROLLBACK IMMEDIATE]`` (other sessions using it are disconnected; 5061 without ROLLBACK),
``SET MULTI_USER``; other ``SET`` options are accepted and ignored. ``USE [x]`` (ENVCHANGE +
5701; 911 missing, 927 restoring, 924 single user). None of these inside a transaction (226).
System databases master (1), tempdb (2), model (3), msdb (4) exist.

Tables (schema dbo only): ``CREATE TABLE`` with INT, BIGINT, SMALLINT, TINYINT, BIT, FLOAT,
REAL, DECIMAL/NUMERIC(p,s), MONEY, NVARCHAR/VARCHAR/NCHAR/CHAR(n|MAX), VARBINARY/BINARY(n|MAX),
DATE, TIME, DATETIME, DATETIME2(n), DATETIMEOFFSET(n), UNIQUEIDENTIFIER, SYSNAME; IDENTITY(s,i),
NULL/NOT NULL, DEFAULT, [CONSTRAINT n] PRIMARY KEY / UNIQUE (column or table level, composite),
FOREIGN KEY ... REFERENCES ... [ON DELETE/UPDATE CASCADE|SET NULL|NO ACTION], CHECK;
``DROP TABLE [IF EXISTS]`` (3726 when referenced), ``CREATE [UNIQUE] [NON]CLUSTERED INDEX ... ON
t (cols) [INCLUDE (...)]``, ``DROP INDEX``, ``ALTER TABLE t ADD column``, ``TRUNCATE TABLE``.
Text comparisons are case-insensitive (like SQL_Latin1_General_CP1_CI_AS, ASCII letters only).

Catalog: INFORMATION_SCHEMA.TABLES, COLUMNS, TABLE_CONSTRAINTS, KEY_COLUMN_USAGE,
CONSTRAINT_COLUMN_USAGE, REFERENTIAL_CONSTRAINTS, SCHEMATA (fully); sys.databases,
sys.master_files, sys.database_files, sys.dm_exec_sessions, sys.dm_exec_requests (command,
percent_complete of a running BACKUP/RESTORE), sys.credentials (server level);
sys.tables, sys.objects, sys.columns, sys.types, sys.identity_columns, sys.foreign_keys,
sys.foreign_key_columns, sys.key_constraints, sys.indexes, sys.index_columns, sys.schemas (their
common columns; see catalog_views.py). All can be three-part (``db.sys.tables``) and joined.

DML: ``SELECT [DISTINCT] [TOP (n)] ... FROM ... [INNER|LEFT|RIGHT|CROSS] JOIN ... WHERE (=, <>,
<, >, IN, LIKE, BETWEEN, IS [NOT] NULL, EXISTS, AND/OR) GROUP BY ... HAVING ... ORDER BY ...
[OFFSET n ROWS FETCH NEXT m ROWS ONLY]``, subqueries, UNION; ``INSERT INTO t [(cols)] VALUES
(...), (...) | SELECT ... | DEFAULT VALUES`` (also across databases: ``INSERT INTO db.dbo.t (...)
SELECT ... FROM db2.dbo.t s WHERE ... NOT EXISTS (...)``), ``OUTPUT INSERTED.col`` / ``DELETED.col``,
``UPDATE ... SET ... [FROM other tables] WHERE``, ``DELETE [FROM] ... WHERE``; ``SET IDENTITY_INSERT t
ON|OFF`` (544 without it, 8107 when another table has it); table hints (NOLOCK, ...) are ignored.
Names: [brackets], "quotes", one-, two- and three-part names (databases attached as needed).

Transactions: ``BEGIN TRAN[SACTION]``, ``COMMIT``, ``ROLLBACK`` (nesting via @@TRANCOUNT),
``IF @@TRANCOUNT > 0 ROLLBACK``, the transaction-manager requests FreeTDS sends for
autocommit=False (begin, commit/rollback and begin again), ``SET IMPLICIT_TRANSACTIONS ON``.
``SET NOCOUNT``, ``SET XACT_ABORT`` (an error rolls back and ends the batch), ``SET LOCK_TIMEOUT n``
(waits on another session's write lock end with 1222); other SET options are accepted. Other
statements: ``IF <condition> <statement>`` (e.g. ``IF OBJECT_ID(N'dbo.t') IS NOT NULL DROP TABLE
dbo.t``), ``PRINT``, ``RAISERROR (text, severity, state) [WITH NOWAIT]``, ``WAITFOR DELAY``, ``CHECKPOINT``, ``CREATE/DROP CREDENTIAL``, ``DBCC CHECKDB
[(db)] [WITH NO_INFOMSGS]`` (SQLite's integrity check of the file: 8989 and 2528, or 8939 errors).

Errors (number, as SQL Server): 102 syntax, 207 column, 208 object, 209 ambiguous, 515 NULL
into NOT NULL, 544 identity insert, 547 foreign key / check conflict, 2627 primary key or unique
constraint (2601 unique index), each followed by 3621 "The statement has been terminated.";
constraint errors end the statement, the batch goes on and the transaction stays open;
compile errors (102, 207, 208, 137) end the batch.

Backup and restore
------------------
``BACKUP DATABASE [x] TO DISK = N'/path' | URL = N's3://host:port/bucket/key' WITH [COMPRESSION]
[, CHECKSUM] [, DIFFERENTIAL] [, COPY_ONLY] [, FORMAT] [, INIT] [, NAME = N'..'] [, DESCRIPTION]
[, STATS [= n]] [, MAXTRANSFERSIZE = n]``; ``BACKUP LOG [x] TO ... WITH ... [, COPY_ONLY]
[, NORECOVERY]`` (NORECOVERY: a tail-log backup leaving the database RESTORING). Without
INIT/FORMAT a backup set is appended to the file (Position 2, 3, ...; RESTORE ... WITH FILE = n).
Rules: not in a transaction (3021 + 3013); BACKUP LOG not in SIMPLE (4208) and not before a full
backup since the database was created or switched to FULL (4214); DIFFERENTIAL needs a full base
(3035); a copy-only full is never a differential base and does not touch the log chain; a
differential's DatabaseBackupLSN = DifferentialBaseLSN = its base full's CheckpointLSN; log
backups chain (LastLSN = next FirstLSN) and truncate what they covered; one device only (3205
for stripes). Messages: "n percent processed." (3211, each in its own result set), "Processed N
pages for database 'x', file 'x' on file 1." (4035), "BACKUP DATABASE [WITH DIFFERENTIAL] | BACKUP
LOG | RESTORE DATABASE | RESTORE LOG successfully processed N pages in s.sss seconds (r.rrr
MB/sec)." (3014). Every backup adds msdb.dbo.backupmediaset, backupmediafamily, backupset and
backupfile rows (SQL Server's column names and types); every restore a restorehistory row.

``RESTORE HEADERONLY | FILELISTONLY | LABELONLY FROM ...`` (SQL Server 2022's columns and types:
LSNs numeric(25,0), GUIDs uniqueidentifier, dates datetime); ``RESTORE VERIFYONLY FROM ...
[WITH CHECKSUM, FILE = n]`` ("The backup set on file 1 is valid.", 3262; a damaged file is 3189
or 3241 + 3013); ``RESTORE DATABASE [x] FROM ... WITH NORECOVERY|RECOVERY [, REPLACE]
[, MOVE N'logical' TO N'/path'] [, STOPAT = ..] [, STATS] [, FILE = n]``; ``RESTORE DATABASE [x]
WITH RECOVERY``; ``RESTORE LOG [x] FROM ... WITH NORECOVERY|RECOVERY [, STOPAT = N'2026-12-01T13:05:00.123']``.
Rules: 3159 tail of the log not backed up (ONLINE, FULL, no REPLACE/STOPAT), 3154 another
database's backup, 3101 database in use by another session (3102 by this one), 1834/3156/3119
files of another database without MOVE (5133 missing folder, 3234 unknown logical name), 3136
differential without its base restored, 4305 log too recent, 4326 log too early, 3117 log or
differential onto an ONLINE database, 3118 missing database, 4338 data backup newer than STOPAT,
4335 STOPAT before the current point, 4332 after a STOPAT was reached, 3153 already recovered,
3135 wrong backup type, 3183 damaged backup (nothing is restored from a damaged set). STOPAT
redoes exactly the transactions committed at or before the time; a log ending before it leaves
the database RESTORING with 4322. RECOVERY puts the database ONLINE on a new recovery fork
(RecoveryForkID of its later backups changes). A RESTORING database refuses queries (927) and
logins to it (4060).

How it works
------------
Each database is one SQLite file (its .mdf; the .ldf is a placeholder). The session's SQLite
connection attaches the databases it uses. Every committed transaction also writes a logical log
record in the same SQLite transaction (LSN range like 37000000012300001, commit time in UTC with
microseconds, the DDL it ran and the final image of every row it changed), see dbfile.py. A full
or differential backup is the database file as of a checkpoint; a log backup is the log records
of its LSN range; the file format (streamed, zstd-compressed, SHA-256 over every byte) is in
backup_file.py.

Known gaps and deviations from SQL Server
------------------------------------------
- Isolation is READ COMMITTED without blocking readers: a reader sees the last committed rows
  instead of waiting for a writer's locks (SQL Server would block, or answer 1222 under
  LOCK_TIMEOUT). Writers serialize per database file (not per row): a second writer to the same
  database waits for the first transaction's end (up to LOCK_TIMEOUT, then 1222; without
  LOCK_TIMEOUT 60 s, then 1205 as a deadlock victim); a transaction that reads a database and
  later writes it after another session committed to it can fail the same way. A BACKUP first
  writes a checkpoint/marker record, so it waits (up to 120 s) for open write transactions on
  that database to end; a full or differential backup then holds a read lock while it copies
  (commits wait until it ends), a log backup the write lock.
- A differential backup holds the whole database (not only the changed extents); "pages" in the
  messages are the file size / 8 KB. IDENTITY values are transactional (rolled back with the
  transaction). Identity columns must be listed with IDENTITY_INSERT ON to be set explicitly.
- Not supported (clear errors, 50000 or SQL Server's number): stripes (several devices), TAPE,
  STANDBY, STOPATMARK, PARTIAL/file/filegroup restores, encryption, mirrors, ``SAVE TRAN``,
  DECLARE/local variables, temporary (#) tables, schemas other than dbo, views, procedures,
  triggers, MERGE, CTEs (WITH), SELECT INTO, UPDATE/DELETE TOP, TOP PERCENT/WITH TIES, UPDATE
  whose target is repeated in its FROM clause (T-SQL's UPDATE t ... FROM t JOIN ...), computed
  columns, self-referencing foreign keys, ALTER TABLE other than ADD column.
- '+' concatenates strings only next to a string literal (``a + b`` of two text columns adds
  numbers, as SQLite does); LIKE has no [ ] character classes; decimal values beyond 15 significant
  digits in fractions (19 in integers) lose precision (SQLite numbers); datetime2 keeps
  microseconds (not 100 ns); varchar data is stored as Unicode and sent as cp1252.
- The duplicate key value in 2627 messages is shown as "(<duplicate>)".
- A result column of expressions whose every value is NULL is typed nvarchar; an empty result of
  expressions has nvarchar columns (typed table columns keep their types).
- BACKUP without CHECKSUM still verifies the set's digest on RESTORE/VERIFYONLY (stricter).
- TO URL: plain HTTP for loopback endpoints (real SQL Server requires HTTPS); the set is staged
  in a temporary file before the upload (so a local disk must hold it).
- A query timeout (HYT00) cancels the statement and the connection stays usable (SQL Server may
  leave it unusable, see shared/FACTS.md): do not rely on either.
- No TLS (PRELOGIN answers ENCRYPT_NOT_SUP), no MARS, TDS 7.4 only, SQL logins only.
"""

from .process import MssqlStandinProcess

__all__ = ["MssqlStandinProcess"]
