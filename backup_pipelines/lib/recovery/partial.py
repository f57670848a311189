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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backup_pipelines.lib.engines import IndexEngine, Mode
from backup_pipelines.lib.errors import PartialRestore, Refusals
from backup_pipelines.lib.streams import Log

SKIP_SWITCHES = "--skip-refused on the command line, run tag restore/skip_refused=true in Dagster"
DONE, REFUSED, FAILED, NOT_STARTED = "done", "refused", "failed", "not started"


def sql_state(sql_report: Mapping[str, dict] | None) -> dict:
    """The SQL step's state from its report (table -> inserted, already_present, ...)."""
    if sql_report is None:
        return {"state": "committed by an earlier step"}
    return {
        "state": "committed",
        "rows_inserted": sum(t.get("inserted", 0) for t in sql_report.values()),
        "rows_already_present": sum(t.get("already_present", 0) for t in sql_report.values()),
    }


@dataclass
class _Index:
    engine: IndexEngine
    client: Any
    collection: str
    expected: int  # the backed-up rows of the engine's mapped table
    refused: Refusals
    state: str = NOT_STARTED
    error: str = ""
    result: dict = field(default_factory=dict)


class IndexProgress:
    """Each engine's index step of one restore, as it went; `finish` returns every engine's
    result, or raises PartialRestore when one is not done."""

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
        self.indexes: dict[str, _Index] = {}
        self.first_error: BaseException | None = None

    def start(self, engine: IndexEngine, client: Any, collection: str, expected: int) -> Refusals:
        """Register the engine's step; returns the collector its refused entries go to."""
        refused = Refusals(engine.label, collection)
        self.indexes[engine.name] = _Index(engine, client, collection, expected, refused)
        return refused

    def finished(self, engine: IndexEngine, result: dict) -> None:
        index = self.indexes[engine.name]
        index.result = result
        if not index.refused.count:
            index.state = DONE
        elif self.skip_refused:
            index.state = DONE
            result["refused_skipped"] = index.refused.to_dict()
            self.log(
                f"WARNING: {engine.label} collection {index.collection}: "
                f"{index.refused.described()} — skipped, as asked (skip_refused)"
            )
        else:
            index.state = REFUSED

    def failed(self, engine: IndexEngine, error: BaseException) -> None:
        index = self.indexes[engine.name]
        index.state = FAILED
        index.error = f"{type(error).__name__}: {error}"
        self.first_error = self.first_error or error
        self.log(f"{engine.label} restore of {index.collection} FAILED: {index.error}")

    def finish(self) -> dict[str, dict]:
        """Every engine's result when all are done; else PartialRestore."""
        if all(index.state == DONE for index in self.indexes.values()):
            return {name: index.result for name, index in self.indexes.items()}
        states = {"sql": sql_state(self.sql_report)}
        states.update({name: _index_state(index) for name, index in self.indexes.items()})
        raise PartialRestore(self._message(states), states) from self.first_error

    def _message(self, states: dict[str, dict]) -> str:
        lines = [f"restore of {self.partition} ({self.mode}) stopped part-way; each store now:"]
        lines.append(f"  - SQL: {_described_sql(states['sql'])}")
        for name, index in self.indexes.items():
            lines.append(
                f"  - {index.engine.label} {index.collection}: {_described(index, states[name])}"
            )
        lines.append(rerun_advice(self.mode))
        if any(index.state == REFUSED for index in self.indexes.values()):
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


def _index_state(index: _Index) -> dict:
    state: dict[str, Any] = {"state": index.state, "collection": index.collection}
    if index.state != NOT_STARTED:
        state["entries"] = _count(index)
        state["expected"] = index.expected
    if index.refused.count:
        state["refused"] = index.refused.to_dict()
    if index.error:
        state["error"] = index.error
    if index.result:
        state["result"] = index.result
    return state


def _count(index: _Index) -> int | str:
    try:
        return index.engine.count(index.client, index.collection)
    except Exception as error:  # the state is reported anyway; the count is a best effort
        return f"unknown ({type(error).__name__}: {error})"


def _described_sql(state: dict) -> str:
    if "rows_inserted" not in state:
        return state["state"]
    return (
        f"committed ({state['rows_inserted']} rows inserted, "
        f"{state['rows_already_present']} already present)"
    )


def _described(index: _Index, state: dict) -> str:
    entries = f"{state.get('entries')} of the {state.get('expected')} backed-up entries now"
    if index.state == DONE:
        return f"done ({state.get('entries')} entries)"
    if index.state == REFUSED:
        return f"{index.refused.described()} ({entries}; every other entry is in)"
    if index.state == FAILED:
        refused = f"; before that {index.refused.described()}" if index.refused.count else ""
        return f"FAILED ({entries}): {index.error}{refused}"
    return "not started"
