"""Watching the promises: the RPO of every asset x workspace, and the alerts that go out when
one is missed (or a run fails, or a drill does).

    rpo.py     freshness of the newest committed artifact, breach and recovery transitions
    alerts.py  Slack (dagster-slack) and a JSON webhook; delivery never raises
"""
