"""PostgreSQL: talking to the server, logical backups (the whole database with pg_dump, one
workspace with COPY in one snapshot) and putting them back.

    connection.py    connections, client binaries, descriptions without secrets
    catalog.py       workspace tables (foreign-key order), columns, keys, registry, counts
    dump.py          the full dump and the workspace dump
    load.py          DDL, COPY files and full dumps loaded back
    merge.py         a workspace dump merged into live tables (insert missing rows only)
    full_restore.py  the whole database into a new database, verified against the dump
    toc.py           a dump's table of contents, and which of its objects a database lacks
    database_swap.py a restored database renamed into live's place (and back), names, release
    memory_rows.py   the memory rows the indexes are derived from
    ids.py           the memory-entry ids of a workspace dump (for the consistency gate)
    pgbackrest.py    pgBackRest: stanza configuration, commands, `info` as typed records
    pitr.py          WAL RPO, the reachable window, restore the cluster to an instant
    digitalocean.py  DigitalOcean Managed PostgreSQL: backups and point-in-time restore (pydo)
"""
