"""The command line refuses bad input with a clear message (exit 2, never a traceback), and
`verify` / `list` report every unreadable manifest and go on to the end."""

import json
import subprocess
import sys

import pytest

from backup_pipelines import cli
from backup_pipelines.lib.store import (
    MANIFEST_FORMAT_VERSION,
    MANIFEST_NAME,
    ArtifactRef,
    LocalStore,
)
from backup_pipelines_tests.helpers import flip_one_byte

SQL = "postgres/workspace_dump"
BAD_DATES = [
    "",
    "20261201",
    "2026-W49-2",
    "2026-13-01",
    "2026-3-1",
    "2026-11-21T00:00",
    " 2026-11-21",
]
WITH_DATE = {
    "list": ["list", "--date", "{}"],
    "verify": ["verify", "--date", "{}"],
    "restore workspace": ["restore", "workspace", "--date", "{}", "--workspace", "ws_acme"],
    "restore full": ["restore", "full", "--date", "{}"],
    "restore agent": ["restore", "agent", "--date", "{}", "--agent", "agent_a"],
    "keep": ["keep", "--date", "{}", "--workspace", "ws_acme", "--reason", "audit"],
    "release": ["release", "--date", "{}"],
    "retention --today": ["retention", "--dry-run", "--today", "{}"],
}


@pytest.fixture
def env(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "store")
    monkeypatch.setenv("BACKUP_STORE_URL", f"file://{store.root}")
    monkeypatch.delenv("BACKUP_POLICY_FILE", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    return store


def write_artifact(store, day: str, workspace: str) -> ArtifactRef:
    ref = ArtifactRef(SQL, day, workspace)
    with store.begin(ref) as writer:
        writer.write_bytes("data.bin", bytes(range(256)))
        writer.commit(
            captured_at=f"{day}T00:30:00Z", counts={"rows": {"t": 1}}, source={}, tool={}, tables=[]
        )
    return ref


@pytest.mark.parametrize("command", list(WITH_DATE))
@pytest.mark.parametrize("bad", BAD_DATES)
def test_every_date_option_is_strict(env, capsys, command, bad):
    argv = [part.replace("{}", bad) for part in WITH_DATE[command]]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert f"{bad!r} is not a" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # nothing ran


def test_a_bad_date_is_a_message_not_a_traceback():
    done = subprocess.run(
        [sys.executable, "-m", "backup_pipelines.cli", "restore", "full", "--date", "2026-W49-2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "argument --date: '2026-W49-2' is not a date written YYYY-MM-DD" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["list", "--workspace", "../etc"], "is not a workspace id"),
        (["verify", "--asset", "postgres/../x"], "is not an asset key path"),
        (["restore", "full", "--date", "2026-11-21", "--jobs", "0"], "number of jobs from 1 to 64"),
        (
            ["restore", "full", "--date", "2026-11-21", "--jobs", "many"],
            "number of jobs from 1 to 64",
        ),
        (["keep", "--date", "2026-11-21", "--reason", "  "], "must not be empty"),
        (["restore", "full", "--date", "2026-11-21", "--command-before", ""], "must not be empty"),
    ],
)
def test_other_inputs_are_refused_with_a_clear_message(env, capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_keep_on_a_missing_backup_names_the_missing_backup(env, capsys):
    """Was: `invalid date '2026-3-1'` — a folder in the store this project did not write,
    reported as if the operator had typed it."""
    write_artifact(env, "2026-11-20", "ws_acme")
    env._put_atomic(f"{SQL}/date=2026-3-1/workspace=ws_acme/{MANIFEST_NAME}", b"{}")
    argv = ["keep", "--date", "2026-11-21", "--workspace", "ws_acme", "--reason", "audit"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert (
        "no backup of 2026-11-21|ws_acme" in err and "the store holds no backup of that date" in err
    )
    assert "2026-3-1" not in err
    argv = ["keep", "--date", "2026-11-20", "--workspace", "ws_globex", "--reason", "audit"]
    assert cli.main(argv) == 1
    assert "that date holds backups of: ws_acme" in capsys.readouterr().err
    assert (
        cli.main(["keep", "--date", "2026-11-20", "--workspace", "ws_acme", "--reason", "x"]) == 0
    )


def test_verify_and_list_report_every_unreadable_manifest_and_go_on(env, capsys):
    good = [write_artifact(env, "2026-11-2" + str(n), "ws_acme") for n in range(5)]
    not_json, wrong_shape, corrupt = good[0], good[2], good[3]
    env._put_atomic(f"{not_json.folder}/{MANIFEST_NAME}", b"{not json")
    shape = {"format_version": MANIFEST_FORMAT_VERSION, "files": "everything", "counts": []}
    env._put_atomic(f"{wrong_shape.folder}/{MANIFEST_NAME}", json.dumps(shape).encode())
    flip_one_byte(env, corrupt, "data.bin")

    assert cli.main(["verify"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out if not line.startswith(" ")] == [
        "UNREADABLE", "ok", "UNREADABLE", "CORRUPT", "ok", "2",
    ]  # fmt: skip
    assert "manifest.json is not valid JSON" in out[0]
    assert "does not have the expected shape" in out[2]
    assert out[-1] == "2 of 5 artifacts verified, 1 corrupt, 2 with an unreadable manifest"

    assert cli.main(["list"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 5 + 1
    assert ["UNREADABLE" in line for line in out[1:6]] == [True, False, True, False, False]
    assert out[-1] == "5 artifacts listed, 2 with an unreadable manifest"

    assert cli.main(["verify", "--date", "2026-11-21"]) == 0
    assert cli.main(["verify", "--workspace", "ws_other"]) == 1
    assert "no artifact matches" in capsys.readouterr().err
