"""Getting data back, and proving it can be: the consistency gate between SQL and index
artifacts, workspace and full restores, and the weekly restore drill. Index engines are used
through backup_pipelines.lib.engines only.

    consistency.py       the gate: PASS, REBUILD_INDEX or FAIL, with the evidence
    workspace_restore.py locate + verify, gate, SQL merge, index restore, verification
    full_restore.py      the whole-database restore (new database, or over live by a verified
                         swap), missing collections, runbook steps, health check
    drill.py             restore into scratch places, timed against the RTO, always cleaned up
"""
