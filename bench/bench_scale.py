"""Benchmark: monitoring and retention at 1,000 and 10,000 workspaces (issue 16, item 3).

For each size, one store is built (bench/scale_store.py: the product's artifacts, written from
templates the store's own writer made) and served twice: as a local folder and from moto's S3
server (bench/scale_moto.py, with S3's listing cost; stock moto is measured beside it). Then,
through the real Definitions (`build_definitions()` with DATABASE_URL, TYPESENSE_URL,
QDRANT_URL and BACKUP_STORE_URL set) and a SQLite Dagster instance holding the `workspaces`
partitions and a materialization per committed partition of the RPO window:

  rpo, no catalog `rpo_sensor`'s first tick on a store monitoring never looked at (a first
                  deployment, an upgrade): newest manifests read (and remembered) for the
                  tick's budget (rpo.MANIFEST_READ_SECONDS), the rest left as lower bounds
  catch-up run    the run of `backup_health_report_job` that tick requests: every manifest
                  left is read; the next tick must confirm every age (on S3 above
                  --s3-retention-max workspaces the run is not timed: moto answers GETs one
                  at a time; its catalog is carried over from the local run, set-up)
  rpo restarted   the first tick of a code server that just started (no cursor, nothing in
                  memory; the captured-at catalog object is in the store)
  rpo steady      the next tick (the previous tick's cursor)
  discovery new   `workspace_discovery_sensor` on an instance that knows no workspace (a first
                  deployment, or an instance rebuilt after an incident): every workspace of the
                  registry (a real PostgreSQL table) is new, the store already holds last
                  night's backup of 95% of them, which must not be replaced
  discovery +10   the same sensor when 10 workspaces are new among all the known ones
  health          `backup_health_report_job` (one run: the report asset's step)
  retention, nothing remembered
                  `plan_retention` with the real verifier, keep_daily_days = keep_weekly_days
                  = 2, so every series has artifacts to delete, on a store without a
                  verification record: the newest artifact of every series is re-read and
                  hashed (what every daily plan cost before verified.py; = --full-reverify)
  retention, remembered
                  the next plan: every series' newest artifact trusted from that
                  verification (its listed objects unchanged, younger than
                  reverify_after_days), nothing re-read. On S3 above --s3-retention-max the
                  record is carried over (set-up, untimed) from the local plan's
                  verification of the same bytes, with the S3 listing's ETags.

Each is run `--repeat` times; the best and the worst are printed, with the load average
(os.getloadavg) before each, what this process read from disk during each repeat (getrusage:
a page cache gone cold shows here) and its CPU, user and system, the growth from the smallest to the largest size (time ratio
against workspace ratio: 1.0 = linear) and the ratio to the 10 s aim.

    .venv/bin/python bench/bench_scale.py [--sizes 1000,10000] [--repeat 2] [--stock-moto]
        [--reuse] [--s3-retention-max 1000] [--drop-caches]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg  # noqa: E402
import scale_store  # noqa: E402

from backup_pipelines.devstack.ports import free_port, wait_for_port  # noqa: E402
from backup_pipelines_tests.alert_receiver import AlertReceiver  # noqa: E402

AIM_SECONDS = 10.0
DAYS = 3
BUCKET = "bench-scale"
S3_PREFIX = "backups"
ACCESS = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def metadata_sum(tick, key: str) -> int:
    """The sum of `key` over the tick's RPO events (those carrying `ages_unconfirmed`): an RPO
    tick also records the health report, whose `workspaces_late` counts workspaces again."""
    return sum(e.metadata[key].value for e in tick.asset_events if "ages_unconfirmed" in e.metadata)


def backup_requests(tick) -> list:
    """The tick's backup run requests (discovery also asks for the catalog's refresh)."""
    return [r for r in tick.run_requests if r.job_name == "workspace_backup_job"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {message}", flush=True)


@dataclass
class Measured:
    name: str
    size: int
    store: str
    seconds: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    # Per repeat: MB this process read from disk (getrusage's blocks in: a cold page cache)
    # and its CPU seconds, user and system (all of its threads).
    disk_mb: list[float] = field(default_factory=list)
    cpu: list[tuple[float, float]] = field(default_factory=list)
    # Per repeat: CPU seconds of the S3 server (moto, on the same two cores), None for local;
    # and this process's live threads when the measurement started.
    server_cpu: list[float | None] = field(default_factory=list)
    threads: list[int] = field(default_factory=list)
    note: str = ""

    def describe_usage(self) -> str:
        return ", ".join(
            f"read {mb:.0f} MB from disk, CPU {user:.1f} user + {system:.1f} system s"
            + (f", moto CPU {server:.1f} s" if server is not None else "")
            + f", {threads} threads before"
            for mb, (user, system), server, threads in zip(
                self.disk_mb, self.cpu, self.server_cpu, self.threads, strict=True
            )
        )

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)


# The S3 server answering the store being measured (its pid), None while measuring a folder.
SERVER_PID: int | None = None


def server_cpu_seconds() -> float | None:
    """User + system CPU seconds of SERVER_PID so far (Linux /proc), None when unknown."""
    if SERVER_PID is None:
        return None
    try:
        fields = Path(f"/proc/{SERVER_PID}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after the ")" ending the command name: utime and stime are the 12th and 13th fields
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(measured: Measured, action, repeat: int, before=None):
    """Run `action` `repeat` times (after `before()`, untimed), keep its times and loads."""
    result = None
    for _ in range(repeat):
        if before is not None:
            before()
        measured.loads.append(os.getloadavg()[0])
        measured.threads.append(threading.active_count())
        server = server_cpu_seconds()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        result = action()
        measured.seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_SELF)
        server_after = server_cpu_seconds()
        measured.server_cpu.append(
            None if server is None or server_after is None else server_after - server
        )
        measured.disk_mb.append((after.ru_inblock - usage.ru_inblock) * 512 / 1e6)
        measured.cpu.append((after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime))
    log(
        f"{measured.name} [{measured.store}, {measured.size:,}]: "
        + ", ".join(f"{s:.2f} s" for s in measured.seconds)
        + f" ({measured.describe_usage()})"
        + (f"  ({measured.note})" if measured.note else "")
    )
    return result


# --------------------------------------------------------------------------------------------
# Servers


class Moto:
    """bench/scale_moto.py in a child process, loaded with a store folder."""

    def __init__(self, load_dir: Path, indexed: bool, object_lock: bool = False) -> None:
        self.port = free_port()
        self.indexed = indexed
        argv = [sys.executable, str(Path(__file__).with_name("scale_moto.py")),
                "--port", str(self.port), "--bucket", BUCKET, "--load", str(load_dir),
                "--prefix", S3_PREFIX]  # fmt: skip
        if indexed:
            argv.append("--indexed")
        if object_lock:
            argv.append("--object-lock")
        started = time.monotonic()
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().split()
        if not line or line[0] != "ready":
            self.stop()
            raise RuntimeError(f"moto did not start: {line}")
        wait_for_port(self.port)
        self.objects = int(line[1])
        self.load_seconds = time.monotonic() - started

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{self.port}",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            **ACCESS,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def serving(moto: Moto):
    """Measurements meanwhile report `moto`'s CPU beside this process's."""
    global SERVER_PID
    SERVER_PID = moto.process.pid
    try:
        yield
    finally:
        SERVER_PID = None


def start_registry(cluster, workspaces: list[str]) -> str:
    """A PostgreSQL database whose workspace registry lists `workspaces`."""
    import psycopg

    url = cluster.create_database(f"bench_registry_{len(workspaces)}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE workspaces (workspace_id text PRIMARY KEY, name text)")
        with conn.cursor().copy("COPY workspaces (workspace_id, name) FROM STDIN") as copy:
            for workspace in workspaces:
                copy.write_row((workspace, workspace))
    return url


# --------------------------------------------------------------------------------------------
# The deployment under test


def deployment_env(store_url: str, database_url: str, s3_env: dict[str, str] | None) -> None:
    for key in list(os.environ):
        if key.startswith(("AWS_", "PGBACKREST_", "DIGITALOCEAN_", "MSSQL_", "BACKUP_")):
            del os.environ[key]
    os.environ.update(
        DATABASE_URL=database_url,
        TYPESENSE_URL="http://127.0.0.1:9",  # configured, never called by what is measured
        TYPESENSE_API_KEY="bench",
        QDRANT_URL="http://127.0.0.1:9",
        BACKUP_STORE_URL=store_url,
        **(s3_env or {}),
    )


def definitions():
    from backup_pipelines.definitions import build_definitions

    return build_definitions()


@contextlib.contextmanager
def one_transaction_per_shard(instance):
    """Set-up only: the SQLite event log opens a new engine (and compiles every statement
    again) for each event, ~15 ms an event here, 15 minutes for 10,000 workspaces. While
    active, each shard is written through one connection and one transaction (~2 ms)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    storage = instance.event_log_storage
    original = storage._connect
    opened: dict = {}
    for shard in ("", "index"):
        with original(shard):
            pass  # creates the shard's tables

    @contextlib.contextmanager
    def connect(shard):
        if shard not in opened:
            engine = create_engine(storage.conn_string_for_shard(shard), poolclass=NullPool)
            connection = engine.connect()
            connection.begin()
            opened[shard] = (engine, connection)
        yield opened[shard][1]

    storage._connect = connect
    try:
        yield
        for _engine, connection in opened.values():
            connection.commit()
    finally:
        storage._connect = original
        for engine, connection in opened.values():
            connection.close()
            engine.dispose()


def fill_instance(instance, workspaces: list[str], artifacts) -> int:
    """The workspaces partitions and the materializations Dagster would hold for the RPO
    window (the newest two dates)."""
    instance.add_dynamic_partitions("workspaces", workspaces)
    newest = sorted({day for _a, day, _w, _c in artifacts})[-2:]
    recent = [a for a in artifacts if a[1] in newest]
    count = 0
    with one_transaction_per_shard(instance):
        for asset, partition in scale_store.committed_partitions(recent):
            instance.report_runless_asset_event(
                dg.AssetMaterialization(dg.AssetKey(asset.split("/")), partition=partition)
            )
            count += 1
    return count


class phase_timer(contextlib.ContextDecorator):
    """Time spent in the RPO evaluation's parts while active (wraps the module functions)."""

    PARTS = (
        ("backup_pipelines.defs.monitoring.rpo", "run_history", "run history"),
        ("backup_pipelines.defs.monitoring.rpo", "rpo_subjects", "partitions"),
        (
            "backup_pipelines.lib.monitoring.rpo",
            "newest_dates",
            "store listings (summed over assets listed at once)",
        ),
        ("backup_pipelines.lib.monitoring.rpo", "captured_times", "captured_at"),
        ("backup_pipelines.defs.monitoring.rpo", "rpo_check_evaluations", "check results"),
    )

    def __enter__(self):
        import importlib

        self.spent: dict[str, float] = {}
        self.saved = []
        for module_name, function, label in self.PARTS:
            module = importlib.import_module(module_name)
            original = getattr(module, function)
            self.saved.append((module, function, original))
            setattr(module, function, self._wrap(original, label))
        return self

    def _wrap(self, original, label):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - started

        return timed_call

    def __exit__(self, *exc):
        for module, function, original in self.saved:
            setattr(module, function, original)
        return False

    def describe(self) -> str:
        return ", ".join(f"{label} {seconds:.2f} s" for label, seconds in self.spent.items())


def sensor_tick(defs, name: str, instance, cursor=None):
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
    ) as context:
        return sensor(context)


def restarted_code_server() -> None:
    """A code server that just started: nothing held in this process (the captured-at
    catalog object stays in the store)."""
    from backup_pipelines.lib.monitoring import catalog

    catalog.forget()


def store_without_catalog(store) -> None:
    """A store monitoring has never looked at (a first deployment, or after an upgrade to
    this version): no captured-at catalog anywhere."""
    from backup_pipelines.lib.monitoring import catalog

    catalog.forget()
    store._delete_prefix(catalog.CATALOG_PREFIX)
    if DROP_CACHES:
        drop_page_cache()


DROP_CACHES = False  # --drop-caches


def drop_page_cache() -> None:
    """The kernel forgets every cached file and folder (root only): a first tick then reads the
    store from the disk, as on a first deployment, whatever this machine ran before."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


# --------------------------------------------------------------------------------------------
# One size


def measure_store(
    results: list[Measured],
    label: str,
    size: int,
    workspaces: list[str],
    instance,
    registry: dict[str, str],
    repeat: int,
    max_s3_retention: int,
    local_dir: Path,
) -> None:
    from backup_pipelines.lib.lifecycle.retention import plan_retention
    from backup_pipelines.lib.lifecycle.verified import VERIFIED_PREFIX
    from backup_pipelines.lib.policy import Policy

    defs = definitions()
    # RPO sensor: the very first tick on a store (every newest manifest read), the first tick
    # of a restarted code server (the catalog object read), and a steady tick.
    store = defs.resources["backup_store"].get_store()
    never = Measured("rpo tick, no catalog yet", size, label)
    first = timed(
        never,
        lambda: sensor_tick(defs, "rpo_sensor", instance),
        repeat,
        lambda: store_without_catalog(store),
    )
    unconfirmed = metadata_sum(first, "ages_unconfirmed")
    requested = [r.job_name for r in first.run_requests or []]
    if bool(unconfirmed) != (requested == ["backup_health_report_job"]):
        raise AssertionError(f"{unconfirmed} ages unconfirmed but runs requested: {requested}")
    never.note = "every newest manifest read in that tick"
    catch_up = None
    if unconfirmed:
        never.note = (
            f"{unconfirmed:,} ages left unconfirmed (lower bounds) and a run of "
            "backup_health_report_job requested; "
        )
        if label == "s3" and size > max_s3_retention:
            # Moto answers GETs one at a time (~30 min for 30,000 manifests): the catalog the
            # run would save is carried over from the local run's (same bytes).
            carried = carry_captured_catalog(store, local_dir)
            never.note += f"that run not timed on moto: its {carried:,} entries carried over"
        else:
            catch_up = Measured("rpo catch-up run (every manifest read)", size, label)
            job = defs.resolve_job_def("backup_health_report_job")
            timed(catch_up, lambda: job.execute_in_process(instance=instance), 1)
            catch_up.note = "the run the first tick requested, as the daemon launches it"
            never.note += "that run timed on the next line"
    last = sensor_tick(defs, "rpo_sensor", instance, first.cursor)
    left = metadata_sum(last, "ages_unconfirmed")
    if left or last.run_requests:
        raise AssertionError(f"{left} ages unconfirmed after the catch-up run")
    # Checked once every age is confirmed: an unread manifest's age is a lower bound from its
    # write time, and moto's objects were all written at load time (real S3: at backup time).
    late = metadata_sum(last, "workspaces_late")
    expected_late = len(scale_store.WORKSPACE_ASSETS) * len(workspaces[::20])
    if late != expected_late:
        raise AssertionError(f"rpo tick found {late} late, expected {expected_late}")
    never.note = f"{late} asset x workspace late once confirmed; " + never.note
    results.extend(m for m in (never, catch_up) if m is not None)
    cold = Measured("rpo tick, restarted", size, label)
    timed(cold, lambda: sensor_tick(defs, "rpo_sensor", instance), repeat, restarted_code_server)
    results.append(cold)
    steady = Measured("rpo tick, steady", size, label)
    with phase_timer() as phases:
        timed(steady, lambda: sensor_tick(defs, "rpo_sensor", instance, first.cursor), repeat)
    steady.note = "where the time went (all repeats): " + phases.describe()
    results.append(steady)

    # Discovery: a fresh instance (every workspace new), then 10 new among the known ones.
    new = Measured("discovery, all new", size, label)

    fresh: list = []  # an instance that knows no workspace, made before each timed tick

    def new_instance():
        with contextlib.ExitStack() as stack:
            fresh[:] = [stack.enter_context(dg.instance_for_test())]
            closers.append(stack.pop_all())

    closers: list[contextlib.ExitStack] = []
    try:
        found = timed(
            new,
            lambda: sensor_tick(defs, "workspace_discovery_sensor", fresh[0]),
            repeat,
            new_instance,
        )
    finally:
        # Last opened, first closed: each instance_for_test puts back the DAGSTER_HOME it
        # found, so closing in opening order leaves it at a deleted folder (--repeat 2 then
        # failed with "unable to open database file" on the next tick).
        for closer in reversed(closers):
            closer.close()
    requested = len(backup_requests(found))
    if requested != len(workspaces[::20]):
        raise AssertionError(f"discovery requested {requested} first backups")
    new.note = f"{size:,} new, {requested} first backups (the rest already held)"
    results.append(new)
    plus = Measured("discovery, 10 new", size, label)
    os.environ["DATABASE_URL"] = registry["plus"]
    plus_defs = definitions()
    found = timed(plus, lambda: sensor_tick(plus_defs, "workspace_discovery_sensor", instance), 1)
    os.environ["DATABASE_URL"] = registry["base"]
    plus.note = f"{len(backup_requests(found))} first backups"
    results.append(plus)

    # Health report: one run of its job.
    health = Measured("health report", size, label)
    job = defs.resolve_job_def("backup_health_report_job")
    outcome = timed(health, lambda: job.execute_in_process(instance=instance), repeat)
    stats = instance.get_run_step_stats(outcome.run_id)
    step = sum((s.end_time or 0) - (s.start_time or 0) for s in stats)
    health.note = f"last run's step {step:.2f} s"
    results.append(health)

    # Retention's planning pass (nothing remembered: on S3 only up to --s3-retention-max
    # workspaces: it re-reads one artifact per series, ~9 requests each, which moto answers
    # one at a time).
    policy = Policy(keep_daily_days=2, keep_weekly_days=2)
    today = datetime.now(UTC).date()

    def describe(made) -> str:
        return (
            f"{len(made.artifacts):,} artifacts, {made.verifications:,} verified now, "
            f"{made.trusted:,} trusted from an earlier verification, "
            f"{len(made.to_delete):,} to delete; last plan's {made.listing.describe()}"
        )

    if label == "s3" and size > max_s3_retention:
        carried = carry_verification_record(store, local_dir)
        log(f"  verification record carried over from the local plan: {carried:,} entries "
            "(set-up)")  # fmt: skip
    else:
        full = Measured("retention, nothing remembered", size, label)
        made = timed(full, lambda: plan_retention(store, policy, today), repeat,
                     lambda: store._delete_prefix(VERIFIED_PREFIX))  # fmt: skip
        full.note = describe(made)
        results.append(full)
    plan = Measured("retention, remembered", size, label)
    made = timed(plan, lambda: plan_retention(store, policy, today), repeat)
    if made.verifications:
        raise AssertionError(f"the remembered plan verified {made.verifications} artifacts")
    plan.note = describe(made)
    results.append(plan)


def carry_captured_catalog(store, local_dir: Path) -> int:
    """Set-up: the captured-at entries the local run read, recorded against this store's
    listing (its own tags): the same bytes were loaded into moto. Returns how many."""
    from backup_pipelines.lib.monitoring import catalog
    from backup_pipelines.lib.store import LocalStore, listing

    local = LocalStore(local_dir)
    today = datetime.now(UTC).date()
    carried = 0
    for asset in scale_store.ASSETS:
        source = catalog.CapturedCatalog(asset)
        data = local._get(source.key)
        if data is None:
            continue
        source.merge_bytes(data)
        target = catalog.catalog_for(store, asset)
        for manifest in catalog.committed_in(listing.iter_objects(store, f"{asset}/")).values():
            entry = source.entries.get(manifest.ref.folder)
            if entry is not None and target.lookup(manifest) is None:
                target.record(manifest, entry[1])
                carried += 1
        catalog.save(store, target, today)
    return carried


def carry_verification_record(store, local_dir: Path) -> int:
    """Set-up: the local plan's verifications, recorded against this store's listing
    (fingerprints of its own ETags): the same bytes were loaded into moto."""
    from backup_pipelines.lib.lifecycle.scan import scan_store
    from backup_pipelines.lib.lifecycle.verified import VerificationRecord
    from backup_pipelines.lib.store import LocalStore

    verified = VerificationRecord.load(LocalStore(local_dir), scale_store.ASSETS)
    folders = scan_store(store)
    record, now = VerificationRecord(), time.time()
    for folder in folders.values():
        entry = verified.entries.get(folder.ref.asset, {}).get(folder.ref.folder)
        if entry is not None and folder.has_manifest:
            record.remember(folder, now, True)
    count = sum(len(e) for e in record.entries.values())
    record.save(store, folders.values())
    return count


def stock_moto_page(moto: Moto, prefix: str) -> float:
    """Seconds for one ListObjectsV2 page of stock moto (boto3's own paginator)."""
    from backup_pipelines.lib.store import make_s3_client

    os.environ.update(moto.env)
    client = make_s3_client()
    started = time.perf_counter()
    client.list_objects_v2(Bucket=BUCKET, Prefix=f"{S3_PREFIX}/{prefix}", MaxKeys=1000)
    return time.perf_counter() - started


def compare_listings(indexed: Moto, stock: Moto) -> str:
    """The indexed server lists what stock moto lists, and the fast parse what boto3 parses."""
    from backup_pipelines.lib.store import S3Store, listing

    os.environ.update(indexed.env)
    fast = S3Store(BUCKET, S3_PREFIX)
    os.environ.update(stock.env)
    slow = S3Store(BUCKET, S3_PREFIX)
    day = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    prefix = f"postgres/workspace_dump/date={day}/"
    ours = sorted((k, s) for k, s, _m in listing.iter_keys(fast, prefix))
    theirs = sorted((k, s) for k, s, _m in slow._list(prefix))
    if ours != theirs or not ours:
        raise AssertionError(f"indexed listing differs from stock moto under {prefix}")
    if sorted(fast._list(prefix)) != sorted(listing.iter_keys(fast, prefix)):
        raise AssertionError("the fast parse differs from boto3's parse")
    folders = listing.list_folders(fast, f"postgres/workspace_dump/date={day}/")
    if folders != listing.list_folders(slow, f"postgres/workspace_dump/date={day}/"):
        raise AssertionError("folder listings differ")
    return f"{len(ours):,} keys and {len(folders):,} folders identical"


REUSE_HOURS = 6  # a reused store's newest backups are this much older: still on time


def prepared_store(work: Path, size: int, reuse: bool) -> datetime | None:
    """With --reuse: the moment the kept store of this size was made, when it can serve again
    (same scenario, made less than REUSE_HOURS ago); it is then cleared of what the
    measurements wrote (catalogs). Else None, and the work folder is emptied."""
    stamp = work / "scenario.json"
    if reuse and stamp.exists():
        made = json.loads(stamp.read_text())
        when = datetime.fromisoformat(made["now"])
        if made["size"] == size and made["days"] == DAYS and \
                datetime.now(UTC) - when < timedelta(hours=REUSE_HOURS):  # fmt: skip
            shutil.rmtree(work / "store" / "_catalog", ignore_errors=True)
            shutil.rmtree(work / "dagster", ignore_errors=True)
            return when
    shutil.rmtree(work, ignore_errors=True)
    return None


def run_size(size: int, args, templates, cluster, receiver, results: list[Measured]) -> None:
    work = Path(args.work_dir) / f"scale-{size}"
    store_dir = work / "store"
    workspaces = scale_store.workspace_ids(size)
    reused = prepared_store(work, size, args.reuse)
    now = reused or datetime.now(UTC)
    artifacts = list(scale_store.scenario(workspaces, now, DAYS))
    if reused:
        log(f"{size:,} workspaces: reusing the store made at {now:%H:%M:%S} (--reuse)")
    else:
        log(f"{size:,} workspaces: writing {len(artifacts):,} artifacts ...")
        started = time.monotonic()
        count, files = scale_store.write_local(store_dir, artifacts, templates)
        log(f"  {count:,} artifacts, {files:,} files in {time.monotonic() - started:.1f} s "
            "(set-up)")  # fmt: skip
        stamp = {"size": size, "days": DAYS, "now": now.isoformat()}
        (work / "scenario.json").write_text(json.dumps(stamp))
    registry = {
        "base": start_registry(cluster, workspaces),
        "plus": start_registry(cluster, workspaces + [f"wsnew_{n}" for n in range(10)]),
    }
    servers: list[Moto] = []
    try:
        (work / "dagster").mkdir(parents=True, exist_ok=True)
        with dg.instance_for_test(temp_dir=str(work / "dagster")) as instance:
            started = time.monotonic()
            events = fill_instance(instance, workspaces, artifacts)
            log(f"  instance: {size:,} partitions, {events:,} materializations "
                f"({time.monotonic() - started:.1f} s, set-up)")  # fmt: skip
            deployment_env(f"file://{store_dir}", registry["base"], None)
            os.environ["ALERT_WEBHOOK_URL"] = f"{receiver.url}/hook"
            measure_store(results, "local", size, workspaces, instance, registry, args.repeat,
                          args.s3_retention_max, store_dir)  # fmt: skip

            indexed = Moto(store_dir, indexed=True)
            servers.append(indexed)
            log(f"  moto (S3 listing cost): {indexed.objects:,} objects loaded in "
                f"{indexed.load_seconds:.1f} s (set-up)")  # fmt: skip
            if args.stock_moto:
                stock = Moto(store_dir, indexed=False)
                servers.append(stock)
                log("  stock moto: " + compare_listings(indexed, stock))
                day = (now.date() - timedelta(days=1)).isoformat()
                page = min(stock_moto_page(stock, f"postgres/workspace_dump/date={day}/")
                           for _ in range(2))  # fmt: skip
                fast = min(stock_moto_page(indexed, f"postgres/workspace_dump/date={day}/")
                           for _ in range(2))  # fmt: skip
                log(f"  one ListObjectsV2 page of 1,000 keys (boto3): stock moto {page:.3f} s, "
                    f"moto with S3's listing cost {fast:.3f} s")  # fmt: skip
                results.append(Measured("list page, stock moto", size, "s3", [page]))
                results.append(Measured("list page, indexed moto", size, "s3", [fast]))
                if size <= args.stock_moto_max:
                    deployment_env(f"s3://{BUCKET}/{S3_PREFIX}", registry["base"], stock.env)
                    os.environ["ALERT_WEBHOOK_URL"] = f"{receiver.url}/hook"
                    defs = definitions()
                    stock_store = defs.resources["backup_store"].get_store()
                    for name, before in (
                        ("rpo tick, no catalog yet", lambda: store_without_catalog(stock_store)),
                        ("rpo tick, restarted", restarted_code_server),
                    ):
                        measured = Measured(name, size, "s3 stock moto")
                        with serving(stock):
                            timed(measured, lambda: sensor_tick(defs, "rpo_sensor", instance),
                                  1, before)  # fmt: skip
                        results.append(measured)
                stock.stop()
                servers.remove(stock)
            deployment_env(f"s3://{BUCKET}/{S3_PREFIX}", registry["base"], indexed.env)
            os.environ["ALERT_WEBHOOK_URL"] = f"{receiver.url}/hook"
            with serving(indexed):
                measure_store(results, "s3", size, workspaces, instance, registry, args.repeat,
                              args.s3_retention_max, store_dir)  # fmt: skip
    finally:
        for server in servers:
            server.stop()
        if not args.keep and not args.reuse:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Report


def report(results: list[Measured], sizes: list[int]) -> None:
    small, large = min(sizes), max(sizes)
    print()
    print("=" * 104)
    print(f"aim: each under {AIM_SECONDS:.0f} s at {large:,} workspaces on this machine "
          f"({os.cpu_count()} CPUs); best of the repeats, worst in brackets; growth = "
          f"time ratio / workspace ratio ({large // small}x), 1.00 = linear")  # fmt: skip
    header = (
        f"{'measurement':<30} {'store':<14}"
        + "".join(f"{f'{size:,} ws':>20}" for size in sizes)
        + f"{'growth':>9}{'x aim':>8}{'':>6}  load"
    )
    print(header)
    print("-" * len(header))
    keys = []
    for item in results:
        if (item.name, item.store) not in keys:
            keys.append((item.name, item.store))
    for name, store in keys:
        row = {m.size: m for m in results if m.name == name and m.store == store}
        cells = "".join(
            f"{f'{row[s].best:.2f} ({row[s].worst:.2f})':>20}" if s in row else f"{'-':>20}"
            for s in sizes
        )
        growth = ""
        if small in row and large in row and small != large:
            growth = f"{(row[large].best / row[small].best) / (large / small):.2f}"
        aim = verdict = ""
        if large in row and not name.startswith(("list page", "rpo catch-up")):  # no aim
            aim = f"{row[large].best / AIM_SECONDS:.3f}"
            verdict = "PASS" if row[large].best < AIM_SECONDS else "MISS"
        loads = "/".join(
            f"{max(row[s].loads) if row[s].loads else 0:.1f}" for s in sizes if s in row
        )
        print(f"{name:<30} {store:<14}{cells}{growth:>9}{aim:>8}{verdict:>6}  {loads}")
    print("-" * len(header))
    for item in results:
        if item.note and item.size == large:
            print(f"  {item.name} [{item.store}]: {item.note}")
    print(f"this process at {large:,} workspaces, per repeat (S3: moto's reads are not in it, "
          "its CPU is shown apart):")  # fmt: skip
    for item in results:
        if item.size == large and item.cpu:
            print(f"  {item.name} [{item.store}]: {item.describe_usage()}")
    print("=" * 104, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--stock-moto", action="store_true",
                        help="also load stock moto: compare listings, time one page, and run a "
                        "cold RPO tick on it up to --stock-moto-max workspaces")  # fmt: skip
    parser.add_argument("--stock-moto-max", type=int, default=1000)
    parser.add_argument("--s3-retention-max", type=int, default=1000,
                        help="time retention's plan on S3 only up to this many workspaces")  # fmt: skip
    parser.add_argument("--drop-caches", action="store_true",
                        help="drop the page cache before each 'no catalog yet' tick (root): "
                        "the first tick reads a cold store")  # fmt: skip
    parser.add_argument("--work-dir", default=str(ROOT / ".bench"))
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help=f"keep each size's store in --work-dir and use it again when made "
                        f"less than {REUSE_HOURS} h before (implies --keep)")  # fmt: skip
    args = parser.parse_args()
    global DROP_CACHES
    DROP_CACHES = args.drop_caches
    sizes = sorted(int(s) for s in args.sizes.split(","))

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    import logging

    from backup_pipelines.devstack.postgres_cluster import PostgresCluster

    logging.getLogger("dagster").setLevel(logging.ERROR)  # per-workspace alerts, run events
    log(f"load average (1, 5, 15 min): {os.getloadavg()}; {os.cpu_count()} CPUs")
    templates = scale_store.make_templates()
    log("templates (written by ArtifactWriter): " + scale_store.template_summary(templates))
    results: list[Measured] = []
    receiver = AlertReceiver().start()
    cluster = PostgresCluster()
    try:
        cluster.start()
        for size in sizes:
            run_size(size, args, templates, cluster, receiver, results)
    finally:
        cluster.stop()
        receiver.stop()
    report(results, sizes)
    out = Path(args.work_dir) / "scale-results.json"
    out.write_text(json.dumps([m.__dict__ for m in results], indent=1))
    log(f"results also in {out}; load average now {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
