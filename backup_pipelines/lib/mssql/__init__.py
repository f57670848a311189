"""SQL Server: the database (not a workspace) is the unit of backup — full daily, differential
every 4 hours, log every 15 minutes, `WITH COMPRESSION, CHECKSUM` — and restores are planned
from the store's catalog alone.

    backupset.py  the header fields that place a backup in its chain (RESTORE HEADERONLY)
    chain.py      the restore chain planner for a target time
"""
