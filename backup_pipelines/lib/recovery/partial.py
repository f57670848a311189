"""A workspace restore that stopped part-way: what each store holds now, and how to finish.

A restore writes SQL first (one transaction: every missing row or none), then each index in
turn. An index step that fails, or ends with entries the index refused that nobody asked to
skip, does not stop the other indexes (they are independent, and each one finished is one less
to finish); at the end PartialRestore says, per store:

- SQL: committed (rows inserted, rows already present);
- each index: done (its entries), refused (entries now against the backed-up rows, the refused
  ids with the index's reasons), failed (entries now, the error) or not started;

as a message and as data (`states`, for run metadata), and that the same command run again
finishes what is missing: SQL rows already there are counted as already present, and in merge
mode an index only gets the entries it lacks; in replace mode the indexes are imported again as
backed up (the same end state, safe to repeat). Refused entries are skipped only when the
operator says so (`skip_refused`): they are then reported by id in the index's result.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from backup_pipelines.lib.engines import IndexEngine, Mode
from backup_pipelines.lib.errors import CommitOutcomeUnknown, PartialRestore, Refusals
from backup_pipelines.lib.secrets import scrub
from backup_pipelines.lib.streams import Log

SKIP_SWITCHES = "--skip-refused on the command line, run tag restore/skip_refused=true in Dagster"
DONE, REFUSED, FAILED, NOT_STARTED = "done", "refused", "failed", "not started"


SQL_RUNNING = "running (one transaction: it commits whole or rolls back)"


def sql_state(
    sql_report: Mapping[str, dict] | None,
    sql_error: str = "",
    running=False,
    commit_unknown: bool = False,
) -> dict:
    """The SQL step's state from its report (table -> inserted, already_present, ...), or its
    failure: its one transaction rolled back (nothing of it was written), or, when the
    connection was lost during the COMMIT, not known to have committed or not."""
    if sql_error and commit_unknown:
        return {"state": FAILED, "rolled_back": False, "commit": "unknown", "error": sql_error}
    if sql_error:
        return {"state": FAILED, "rolled_back": True, "error": sql_error}
    if running:
        return {"state": SQL_RUNNING}
    if sql_report is None:
        return {"state": "committed by an earlier step"}
    return {
        "state": "committed",
        "rows_inserted": sum(t.get("inserted", 0) for t in sql_report.values()),
        "rows_already_present": sum(t.get("already_present", 0) for t in sql_report.values()),
    }


@dataclass
class IndexStep:
    """One engine's index step: what it restores into, and how it went."""

    engine: IndexEngine
    client: Any
    collection: str
    expected: int  # the backed-up rows of the engine's mapped table
    refused: Refusals
    state: str = NOT_STARTED
    error: str = ""
    result: dict = field(default_factory=dict)


class IndexProgress:
    """The index steps of one restore, planned first (so one never reached says "not
    started"), then run one by one inside `running`; `finish` returns every engine's result,
    or raises PartialRestore when one is not done."""

    def __init__(
        self,
        partition: str,
        mode: Mode,
        skip_refused: bool,
        sql_report: Mapping[str, dict] | None,
        log: Log | None = None,
    ) -> None:
        self.partition = partition
        self.mode = mode
        self.skip_refused = skip_refused
        self.sql_report = sql_report
        self.log = log or (lambda _m: None)
        self.steps: list[IndexStep] = []
        self.first_error: BaseException | None = None
        self.sql_error = ""  # set when the SQL merge ran beside the indexes and failed
        self.sql_commit_unknown = False  # ... at its COMMIT, the connection lost
        self.sql_running = False

    def sql_failed(self, error: BaseException) -> None:
        """The SQL merge, run beside the index steps, failed: its transaction rolled back, or
        (CommitOutcomeUnknown) its outcome unknown."""
        described = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        self.sql_error = scrub(described)
        self.sql_commit_unknown = isinstance(error, CommitOutcomeUnknown)
        self.first_error = error  # the SQL failure is the root cause to chain
        outcome = "its commit's outcome unknown" if self.sql_commit_unknown else "rolled back"
        self.log(f"SQL merge of {self.partition} FAILED ({outcome}): {self.sql_error}")

    def plan(self, engine: IndexEngine, client: Any, collection: str, expected: int) -> None:
        refused = Refusals(engine.label, collection)
        self.steps.append(IndexStep(engine, client, collection, expected, refused))

    @contextmanager
    def running(self, step: IndexStep) -> Iterator[None]:
        """Run the body as `step`; it sets step.result. An Exception marks the step failed and
        lets the next one run; an interrupt (Ctrl-C, a cancelled run) is logged with every
        store's state and goes on up."""
        try:
            yield
        except Exception as error:
            self._failed(step, error)
        except BaseException as interrupt:
            self._failed(step, interrupt)
            # no counting now: a hung server may be why the operator pressed Ctrl-C
            self.log(self._message(self._states(counted=False)))
            raise
        else:
            self._finished(step)

    def finish(self) -> dict[str, dict]:
        """Every engine's result when all are done; else PartialRestore."""
        if not self.sql_error and all(step.state == DONE for step in self.steps):
            return {step.engine.name: step.result for step in self.steps}
        states = self._states()
        raise PartialRestore(self._message(states), states) from self.first_error

    def _finished(self, step: IndexStep) -> None:
        if not step.refused.count:
            step.state = DONE
        elif self.skip_refused:
            step.state = DONE
            step.result["refused_skipped"] = step.refused.to_dict()
            self.log(
                f"WARNING: {step.engine.label} collection {step.collection}: "
                f"{step.refused.described()} — skipped, as asked (skip_refused)"
            )
        else:
            step.state = REFUSED

    def _failed(self, step: IndexStep, error: BaseException) -> None:
        step.state = FAILED
        described = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        step.error = scrub(described)  # it goes into run metadata too
        self.first_error = self.first_error or error
        self.log(f"{step.engine.label} restore of {step.collection} FAILED: {step.error}")

    def _states(self, counted: bool = True) -> dict[str, dict]:
        states = {
            "sql": sql_state(
                self.sql_report, self.sql_error, self.sql_running, self.sql_commit_unknown
            )
        }
        states.update({step.engine.name: _step_state(step, counted) for step in self.steps})
        return states

    def _message(self, states: dict[str, dict]) -> str:
        lines = [f"restore of {self.partition} ({self.mode}) stopped part-way; each store now:"]
        lines.append(f"  - SQL: {_described_sql(states['sql'])}")
        for step in self.steps:
            described = _described(step, states[step.engine.name])
            lines.append(f"  - {step.engine.label} {step.collection}: {described}")
        lines.append(rerun_advice(self.mode))
        if any(step.state == REFUSED for step in self.steps):
            lines.append(
                "To restore without the refused entries instead, run it again with "
                f"{SKIP_SWITCHES}: they are then skipped and reported by id."
            )
        return "\n".join(lines)


def rerun_advice(mode: Mode) -> str:
    again = (
        "an index only gets the entries it lacks"
        if mode is Mode.MERGE
        else "replace mode imports every backed-up index entry again (the same end state, safe "
        "to repeat)"
    )
    return (
        "Run the same restore again once the cause is fixed: it finishes what is missing "
        f"(SQL rows already there are kept and counted as already present; {again})."
    )


def not_verified(
    partition: str,
    mode: Mode,
    sql_report: Mapping[str, dict],
    index_results: Mapping[str, dict],
    verification: Mapping[str, Any],
) -> PartialRestore:
    """Everything was written but the check afterwards found less than the backup holds."""
    states: dict[str, dict] = {"sql": sql_state(sql_report)}
    states["sql"]["rows_live"] = verification.get("sql_rows", {})
    for name, result in index_results.items():
        states[name] = {"state": DONE, "entries": verification.get(f"{name}_entries"), **result}
    message = (
        f"restore of {partition} did not verify: " + "; ".join(verification["problems"]) + ". "
        f"SQL {_described_sql(states['sql'])}; indexes restored: "
        + (", ".join(f"{n} ({states[n]['entries']} entries)" for n in index_results) or "none")
        + ". "
        + rerun_advice(mode)
    )
    return PartialRestore(message, {**states, "problems": list(verification["problems"])})


def _step_state(step: IndexStep, counted: bool) -> dict:
    state: dict[str, Any] = {"state": step.state, "collection": step.collection}
    if step.state != NOT_STARTED:
        state["entries"] = _count(step) if counted else "not counted"
        state["expected"] = step.expected
    if step.refused.count:
        state["refused"] = step.refused.to_dict()
    if step.error:
        state["error"] = step.error
    if step.result:
        state["result"] = step.result
    return state


def _count(step: IndexStep) -> int | str:
    try:
        return step.engine.count(step.client, step.collection)
    except Exception as error:  # the state is reported anyway; the count is a best effort
        return scrub(f"unknown ({type(error).__name__}: {error})")


def _described_sql(state: dict) -> str:
    if state.get("commit") == "unknown":
        return (
            f"FAILED at its commit, outcome unknown: its rows may or may not be in "
            f"({state['error']}); run the restore again: it adds only the rows still missing"
        )
    if state.get("rolled_back"):
        return (
            f"FAILED, rolled back: none of its rows were written ({state['error']}); the "
            "indexes below may hold entries whose rows are not in SQL until the restore is run "
            "again"
        )
    if "rows_inserted" not in state:
        return state["state"]
    return (
        f"committed ({state['rows_inserted']} rows inserted, "
        f"{state['rows_already_present']} already present)"
    )


def _described(step: IndexStep, state: dict) -> str:
    entries = f"{state.get('entries')} of the {state.get('expected')} backed-up entries now"
    if step.state == DONE:
        return f"done ({state.get('entries')} entries)"
    if step.state == REFUSED:
        return f"{step.refused.described()} ({entries}; every other entry is in)"
    if step.state == FAILED:
        refused = f"; before that {step.refused.described()}" if step.refused.count else ""
        return f"FAILED ({entries}): {step.error}{refused}"
    return "not started"
