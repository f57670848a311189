"""`dagster-daemon` for the deployed-shape tests, its backfill loop every few seconds instead of
every 30 (Dagster's fixed dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS, read by
the backfill loop on each pass): a backfill is picked up, and seen finished, within seconds
rather than up to half a minute each. Nothing else the daemon does changes; like
deployed_definitions.py, only when it happens.

    python -m backup_pipelines_tests.deploy.fast_daemon run -w workspace.yaml
"""

import sys

from dagster._daemon import controller

FAST_LOOP_SECONDS = 3

if __name__ == "__main__":
    controller.DEFAULT_DAEMON_INTERVAL_SECONDS = FAST_LOOP_SECONDS
    from dagster._daemon.cli import main

    sys.argv[0] = "dagster-daemon"
    sys.exit(main())
