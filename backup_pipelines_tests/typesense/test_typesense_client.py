"""The Typesense client against a real typesense-server 0.24.1 on loopback."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from backup_pipelines.devstack.ports import free_port
from backup_pipelines.devstack.typesense_server import TypesenseServer
from backup_pipelines.lib.http import IndexStoreError, RetryPolicy
from backup_pipelines.lib.typesense.client import (
    ExportIncomplete,
    ImportFailed,
    JsonlTally,
    TypesenseClient,
    check_export_count,
)

API_KEY = "ts-test-key-4f1c9a"
DOCUMENT_COUNT = 2000
FAST_RETRIES = RetryPolicy(attempts=3, first_delay=0.01, max_delay=0.05, read_timeout=10)

MEMORY_SCHEMA = {
    "name": "agent_memory",
    "fields": [
        {"name": "text", "type": "string"},
        {"name": "agent", "type": "string", "facet": True},
        {"name": "created", "type": "int64"},
        {"name": "embedding", "type": "float[]", "num_dim": 4},
    ],
    "default_sorting_field": "created",
    "token_separators": ["-"],
}


@pytest.fixture(scope="module")
def server() -> Iterator[TypesenseServer]:
    with TypesenseServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def client(server: TypesenseServer) -> Iterator[TypesenseClient]:
    with TypesenseClient(server.url, API_KEY, FAST_RETRIES) as typesense:
        yield typesense
        # Each test starts from an empty server: no collections, no aliases.
        for collection in typesense.http.json("GET", "/collections", "list collections"):
            typesense.delete_collection(collection["name"])
        for alias in typesense.list_aliases():
            typesense.http.request("DELETE", f"/aliases/{alias['name']}", "delete alias")


def memory_document(i: int) -> dict:
    rng = random.Random(i)
    return {
        "id": f"mem-{i}",
        "text": f"memory {i}: the user {'likes' if i % 10 == 0 else 'mentioned'} topic-{i % 37}",
        "agent": f"agent-{i % 5}",
        "created": 1_700_000_000 + i,
        "embedding": [round(rng.uniform(-1, 1), 4) for _ in range(4)],
    }


def jsonl_chunks(documents: list[dict], chunk_size: int) -> Iterator[bytes]:
    """JSONL cut into chunks that ignore line boundaries, as a file read would be."""
    body = b"".join(json.dumps(doc).encode() + b"\n" for doc in documents)
    for start in range(0, len(body), chunk_size):
        yield body[start : start + chunk_size]


def file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            yield chunk


def sorted_lines(jsonl: bytes) -> list[bytes]:
    return sorted(line for line in jsonl.split(b"\n") if line)


def create_memory_collection(client: TypesenseClient) -> None:
    client.create_collection(MEMORY_SCHEMA)
    client.upsert_synonym("agent_memory", {"id": "likes", "synonyms": ["likes", "prefers"]})
    client.upsert_synonym("agent_memory", {"id": "car", "root": "car", "synonyms": ["auto"]})
    client.upsert_override(
        "agent_memory",
        {
            "id": "pin-first",
            "rule": {"query": "pinned", "match": "exact"},
            "includes": [{"id": "mem-1", "position": 1}],
        },
    )
    client.upsert_alias("memory_live", "agent_memory")
    client.upsert_alias("unrelated_alias", "other_collection")
    documents = [memory_document(i) for i in range(DOCUMENT_COUNT)]
    assert client.import_jsonl("agent_memory", jsonl_chunks(documents, 7_777)) == DOCUMENT_COUNT


def export_to_file(client: TypesenseClient, collection: str, target: Path) -> int:
    export = client.stream_export(collection, chunk_size=16 * 1024)
    with target.open("wb") as out:
        for chunk in export:
            out.write(chunk)
    return export.documents


def saved_definition(client: TypesenseClient, collection: str) -> dict:
    """What a backup stores beside the documents, through JSON as it would be on disk."""
    definition = {
        "schema": client.get_collection_schema(collection),
        "synonyms": client.list_synonyms(collection),
        "overrides": client.list_overrides(collection),
        "aliases": client.aliases_for(collection),
    }
    return json.loads(json.dumps(definition))


def test_backup_then_restore_gives_identical_collection(client, tmp_path):
    create_memory_collection(client)
    export_file = tmp_path / "agent_memory.jsonl"
    assert export_to_file(client, "agent_memory", export_file) == DOCUMENT_COUNT
    definition = saved_definition(client, "agent_memory")
    assert definition["aliases"] == [{"collection_name": "agent_memory", "name": "memory_live"}]
    assert "num_documents" not in definition["schema"]
    assert "created_at" not in definition["schema"]

    client.delete_collection("agent_memory")
    assert not client.collection_exists("agent_memory")
    client.recreate_collection(
        definition["schema"], definition["synonyms"], definition["overrides"], definition["aliases"]
    )
    restored = client.import_jsonl("agent_memory", file_chunks(export_file, 10_001), batch_size=300)

    assert restored == DOCUMENT_COUNT
    assert client.num_documents("agent_memory") == DOCUMENT_COUNT
    assert saved_definition(client, "agent_memory") == definition
    again = b"".join(client.stream_export("agent_memory"))
    assert sorted_lines(again) == sorted_lines(export_file.read_bytes())
    # Synonyms and the override work again, not merely exist.
    exact = {"num_typos": 0, "prefix": "false"}
    assert client.search("memory_live", "prefers", "text", **exact)["found"] == DOCUMENT_COUNT // 10
    assert client.search("agent_memory", "pinned", "text")["hits"][0]["document"]["id"] == "mem-1"


def test_restore_under_another_name_moves_the_alias(client):
    create_memory_collection(client)
    definition = saved_definition(client, "agent_memory")
    target = client.recreate_collection(
        definition["schema"],
        definition["synonyms"],
        aliases=definition["aliases"],
        name="agent_memory_v2",
    )
    assert target == "agent_memory_v2"
    assert client.aliases_for("agent_memory_v2") == [
        {"collection_name": "agent_memory_v2", "name": "memory_live"}
    ]
    assert client.aliases_for("agent_memory") == []


def test_recreate_refuses_to_overwrite_an_existing_collection(client):
    client.create_collection(MEMORY_SCHEMA)
    with pytest.raises(IndexStoreError) as raised:
        client.recreate_collection(MEMORY_SCHEMA)
    assert raised.value.status == 409


def test_refused_import_lines_raise_with_count_and_first_failures(client):
    client.create_collection(MEMORY_SCHEMA)
    good = json.dumps(memory_document(1)).encode()
    no_sort_field = json.dumps(
        {"id": "mem-x", "text": "t", "agent": "a", "embedding": [0, 0, 0, 0]}
    ).encode()
    body = [good + b"\n" + no_sort_field + b"\n{not json\n"]

    with pytest.raises(ImportFailed) as raised:
        client.import_jsonl("agent_memory", body)

    message = str(raised.value)
    assert raised.value.failed == 2
    assert "2 of 3 documents" in message
    assert "'mem-x'" in message and "created" in message
    assert "Bad JSON" in message
    assert API_KEY not in message


def test_import_into_missing_collection_is_a_clear_404(client):
    with pytest.raises(IndexStoreError) as raised:
        client.import_jsonl("no_such_collection", [b'{"id": "1"}\n'])
    assert raised.value.status == 404
    assert "Typesense import failed" in str(raised.value)
    assert "/collections/no_such_collection/documents/import" in str(raised.value)


@pytest.mark.parametrize(
    ("cut", "reason"),
    [("mid_line", "last line is not whole JSON"), ("after_newline", "the collection holds 500")],
)
def test_export_cut_off_by_a_proxy_is_detected(client, server, cut, reason):
    client.create_collection(MEMORY_SCHEMA)
    client.import_jsonl(
        "agent_memory", jsonl_chunks([memory_document(i) for i in range(500)], 1 << 16)
    )

    with CuttingProxy(server.url, cut) as proxy:
        through_proxy = TypesenseClient(proxy.url, API_KEY, FAST_RETRIES)
        export = through_proxy.stream_export("agent_memory", chunk_size=4096)
        with pytest.raises(ExportIncomplete, match=f"export cut off: .*{reason}"):
            for _ in export:
                pass
    assert export.documents is None


def test_tally_counts_documents_across_arbitrary_chunks():
    body = b'{"id":"1"}\n{"id":"2"}\n{"id":"3"}'
    tally = JsonlTally()
    for i in range(len(body)):
        tally.feed(body[i : i + 1])
    assert tally.finish() == 3
    assert tally.bytes == len(body)


def test_tally_rejects_a_cut_last_line():
    tally = JsonlTally()
    for chunk in (b'{"id":"1"}\n{"id":', b'"2", "te'):
        tally.feed(chunk)
    with pytest.raises(ValueError, match="not whole JSON"):
        tally.finish()


def test_count_check_allows_writes_during_export_but_not_losses():
    check_export_count(100, 100, 100)
    check_export_count(103, 100, 105)
    check_export_count(97, 100, 95)
    with pytest.raises(ValueError, match="exported 99 documents, the collection holds 100"):
        check_export_count(99, 100, 100)


def test_unreachable_server_fails_after_bounded_retries_without_the_key():
    dead_url = f"http://127.0.0.1:{free_port()}"
    with (
        TypesenseClient(dead_url, API_KEY, FAST_RETRIES) as typesense,
        pytest.raises(IndexStoreError) as raised,
    ):
        typesense.collection_exists("agent_memory")
    message = str(raised.value)
    assert raised.value.attempts == FAST_RETRIES.attempts
    assert message.startswith("Typesense get collection failed after 3 attempts")
    assert "/collections/agent_memory" in message
    assert API_KEY not in message


def test_transient_errors_are_retried_and_a_key_echo_is_redacted():
    # The stub echoes the API key in its error body, as a badly behaved proxy might.
    with ScriptedServer([503, 429, 200]) as flaky:
        with TypesenseClient(flaky.url, API_KEY, FAST_RETRIES) as typesense:
            assert typesense.collection_exists("agent_memory")
        assert flaky.hits == 3
    with (
        ScriptedServer([500, 500, 500]) as broken,
        TypesenseClient(broken.url, API_KEY, FAST_RETRIES) as typesense,
        pytest.raises(IndexStoreError) as raised,
    ):
        typesense.collection_exists("agent_memory")
    assert raised.value.status == 500
    assert raised.value.attempts == FAST_RETRIES.attempts
    assert API_KEY not in str(raised.value)
    assert "***" in str(raised.value)


def test_client_errors_are_not_retried(server):
    with (
        TypesenseClient(server.url, "wrong-key", FAST_RETRIES) as typesense,
        pytest.raises(IndexStoreError) as raised,
    ):
        typesense.list_aliases()
    assert raised.value.status == 401
    assert raised.value.attempts == 1
    assert "wrong-key" not in str(raised.value)


class CuttingProxy:
    """A loopback proxy that passes calls through but cuts export bodies short, silently.

    It answers exports over HTTP/1.0 without a length and closes the connection early, which
    is what a proxy with a short timeout does: the client sees a normal end of body.
    """

    def __init__(self, upstream: str, cut: str) -> None:
        self.upstream = upstream
        self.cut = cut
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def cut_body(self, body: bytes) -> bytes:
        half = body[: len(body) // 2]
        if self.cut == "after_newline":
            return half[: half.rindex(b"\n") + 1]
        return half

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                upstream = requests.get(
                    proxy.upstream + self.path,
                    headers={"X-TYPESENSE-API-KEY": self.headers["X-TYPESENSE-API-KEY"]},
                    timeout=10,
                )
                body = upstream.content
                if self.path.endswith("/documents/export"):
                    body = proxy.cut_body(body)
                self.send_response(upstream.status_code)
                self.send_header("Content-Type", upstream.headers["Content-Type"])
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> CuttingProxy:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class ScriptedServer:
    """Answers each GET with the next status of a script; error bodies echo the API key."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.hits = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status = stub.statuses[min(stub.hits, len(stub.statuses) - 1)]
                stub.hits += 1
                if status == 200:
                    body = b'{"name": "agent_memory", "num_documents": 0}'
                else:
                    body = json.dumps(
                        {"message": f"bad key {self.headers['X-TYPESENSE-API-KEY']}"}
                    ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
