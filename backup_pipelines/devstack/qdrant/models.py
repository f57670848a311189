"""The stand-in's REST vocabulary: API errors, JSON <-> Qdrant engine (qdrant-edge) conversions,
collection configs and the small JSON file helpers."""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from http import HTTPStatus
from pathlib import Path
from typing import Any

import qdrant_edge as edge

log = logging.getLogger(__name__)

# Storage format the snapshots claim (version.info) unless a stand-in is started with another
# version. A real server recovers snapshots of its own or the previous minor version only; 1.19
# is the server the snapshot layout was measured on.
STORAGE_VERSION = "1.19.0"
STANDIN_SUFFIX = "-standin"
REPORTED_VERSION = f"{STORAGE_VERSION}{STANDIN_SUFFIX}"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
COPY_CHUNK = 1024 * 1024
SNAPSHOT_SUFFIX = ".snapshot"
CHECKSUM_SUFFIX = ".checksum"
SHARD_ID = "0"
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
# The real server's auth whitelist: `/` and `/healthz` exactly, `/readyz` and `/livez` as prefixes.
OPEN_PATHS = {"/", "/healthz"}
OPEN_PREFIXES = ("/readyz", "/livez")
SNAPSHOT_PRIORITIES = {None, "no_sync", "snapshot", "replica"}
DISTANCES = {
    "Cosine": edge.Distance.Cosine,
    "Euclid": edge.Distance.Euclid,
    "Dot": edge.Distance.Dot,
    "Manhattan": edge.Distance.Manhattan,
}
UPDATE_MODES = {
    "upsert": edge.UpdateMode.Upsert,
    "insert_only": edge.UpdateMode.InsertOnly,
    "update_only": edge.UpdateMode.UpdateOnly,
}


class ApiError(Exception):
    """An error answered with the real server's error envelope and status code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, f"Not found: {what}")


def wrong_input(what: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Wrong input: {what}")


def bad_request(what: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, f"Bad request: {what}")


def missing_collection(name: str) -> ApiError:
    return not_found(f"Collection `{name}` doesn't exist!")


# ---------------------------------------------------------------------------------------------
# JSON <-> Edge conversions
# ---------------------------------------------------------------------------------------------


def point_id_from_json(value: Any) -> int | str:
    """Point ids are unsigned integers or UUIDs (returned in their canonical hyphenated form)."""
    if isinstance(value, bool):
        raise wrong_input(f"point id {value!r} is neither an unsigned integer nor a UUID")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise wrong_input(f"point id {value!r} is neither an unsigned integer nor a UUID")


def point_id_to_json(value: Any) -> int | str:
    return value if isinstance(value, int) else str(value)


def with_payload_from_json(value: Any, default: bool) -> Any:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return edge.PayloadSelector.Include(value)
    if isinstance(value, dict) and "include" in value:
        return edge.PayloadSelector.Include(list(value["include"]))
    if isinstance(value, dict) and "exclude" in value:
        return edge.PayloadSelector.Exclude(list(value["exclude"]))
    raise wrong_input(f"unsupported with_payload {value!r}")


def with_vector_from_json(value: Any, default: bool) -> bool | list[str]:
    if value is None:
        return default
    if isinstance(value, bool | list):
        return value
    raise wrong_input(f"unsupported with_vector {value!r}")


def match_from_json(match: dict) -> Any:
    if "value" in match:
        return edge.MatchValue(match["value"])
    if "any" in match:
        return edge.MatchAny(any=match["any"])
    if "except" in match:
        return edge.MatchExcept(except_=match["except"])
    if "text" in match:
        return edge.MatchText(match["text"])
    if "text_any" in match:
        return edge.MatchTextAny(match["text_any"])
    if "phrase" in match:
        return edge.MatchPhrase(match["phrase"])
    raise wrong_input(f"the stand-in does not support match {match!r}")


def range_from_json(bounds: dict) -> Any:
    limits = {key: bounds.get(key) for key in ("gt", "gte", "lt", "lte")}
    if any(isinstance(value, str) for value in limits.values()):
        return edge.RangeDateTime(**limits)
    return edge.RangeFloat(**limits)


def field_condition_from_json(condition: dict) -> Any:
    arguments: dict[str, Any] = {}
    if condition.get("match") is not None:
        arguments["match"] = match_from_json(condition["match"])
    if condition.get("range") is not None:
        arguments["range"] = range_from_json(condition["range"])
    if condition.get("values_count") is not None:
        arguments["values_count"] = edge.ValuesCount(**condition["values_count"])
    for flag in ("is_empty", "is_null"):
        if condition.get(flag) is not None:
            arguments[flag] = condition[flag]
    if not arguments:
        raise wrong_input(f"the stand-in does not support condition {condition!r}")
    return edge.FieldCondition(key=condition["key"], **arguments)


def condition_from_json(condition: Any) -> Any:
    if not isinstance(condition, dict):
        raise wrong_input(f"condition {condition!r} is not an object")
    if "key" in condition:
        return field_condition_from_json(condition)
    if "has_id" in condition:
        return edge.HasIdCondition({point_id_from_json(i) for i in condition["has_id"]})
    if "is_empty" in condition:
        return edge.IsEmptyCondition(condition["is_empty"]["key"])
    if "is_null" in condition:
        return edge.IsNullCondition(condition["is_null"]["key"])
    if "has_vector" in condition:
        return edge.HasVectorCondition(condition["has_vector"])
    if "nested" in condition:
        nested = condition["nested"]
        return edge.NestedCondition(nested["key"], filter_from_json(nested["filter"]))
    if {"must", "should", "must_not", "min_should"} & condition.keys():
        return filter_from_json(condition)
    raise wrong_input(f"the stand-in does not support condition {condition!r}")


def conditions_from_json(conditions: Any) -> list | None:
    if conditions is None:
        return None
    # The real API accepts one condition or a list of them.
    items = conditions if isinstance(conditions, list) else [conditions]
    return [condition_from_json(item) for item in items]


def filter_from_json(payload_filter: Any) -> Any:
    if payload_filter is None:
        return None
    if not isinstance(payload_filter, dict):
        raise wrong_input(f"filter {payload_filter!r} is not an object")
    min_should = payload_filter.get("min_should")
    return edge.Filter(
        must=conditions_from_json(payload_filter.get("must")),
        should=conditions_from_json(payload_filter.get("should")),
        must_not=conditions_from_json(payload_filter.get("must_not")),
        min_should=(
            edge.MinShould(conditions_from_json(min_should["conditions"]), min_should["min_count"])
            if min_should
            else None
        ),
    )


def record_to_json(record: Any) -> dict:
    return {
        "id": point_id_to_json(record.id),
        "payload": record.payload,
        "vector": record.vector,
    }


def scored_point_to_json(point: Any) -> dict:
    return {
        "id": point_id_to_json(point.id),
        "version": point.version,
        "score": point.score,
        "payload": point.payload,
        "vector": point.vector,
    }


# ---------------------------------------------------------------------------------------------
# Collection configuration (the server's config.json format, also served by GET /collections/c)
# ---------------------------------------------------------------------------------------------

DEFAULT_HNSW = {
    "m": 16,
    "ef_construct": 100,
    "full_scan_threshold": 10000,
    "max_indexing_threads": 0,
    "on_disk": False,
}
DEFAULT_OPTIMIZERS = {
    "deleted_threshold": 0.2,
    "vacuum_min_vector_number": 1000,
    "default_segment_number": 0,
    "max_segment_size": None,
    "memmap_threshold": None,
    "indexing_threshold": 10000,
    "flush_interval_sec": 5,
    "max_optimization_threads": None,
}
DEFAULT_WAL = {"wal_capacity_mb": 32, "wal_segments_ahead": 0}


def is_single_vector(vectors: dict) -> bool:
    return "size" in vectors and "distance" in vectors


def validate_vector_params(name: str, params: Any) -> dict:
    if not isinstance(params, dict) or params.get("distance") not in DISTANCES:
        raise wrong_input(f"vector `{name}` needs a distance among {sorted(DISTANCES)}")
    size = params.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise wrong_input(f"vector `{name}` needs a positive integer size")
    return params


def normalized_vectors(vectors: Any) -> dict:
    if not isinstance(vectors, dict) or not vectors:
        raise wrong_input("`vectors` must describe the dense vectors of the collection")
    if is_single_vector(vectors):
        return validate_vector_params("", vectors)
    return {name: validate_vector_params(name, params) for name, params in vectors.items()}


def positive_int(body: dict, key: str) -> int:
    value = body.get(key, 1)
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise wrong_input(f"`{key}` must be a positive integer")
    return value


def collection_config_from_request(body: dict) -> dict:
    """The config.json a real server would store for this create-collection request.

    `shard_number` is recorded (and compared on recovery like a real server does) but the
    stand-in keeps every collection's points in one Edge shard."""
    return {
        "params": {
            "vectors": normalized_vectors(body.get("vectors")),
            "shard_number": positive_int(body, "shard_number"),
            "replication_factor": positive_int(body, "replication_factor"),
            "write_consistency_factor": 1,
            "on_disk_payload": body.get("on_disk_payload", True),
        },
        "hnsw_config": {**DEFAULT_HNSW, **(body.get("hnsw_config") or {})},
        "optimizer_config": {**DEFAULT_OPTIMIZERS, **(body.get("optimizers_config") or {})},
        "wal_config": {**DEFAULT_WAL, **(body.get("wal_config") or {})},
        "quantization_config": body.get("quantization_config"),
        "metadata": body.get("metadata"),
        "uuid": str(uuid.uuid4()),
    }


def edge_vector_params(params: dict) -> Any:
    return edge.EdgeVectorParams(
        size=params["size"],
        distance=DISTANCES[params["distance"]],
        on_disk=params.get("on_disk"),
    )


def edge_config_from_collection_config(config: dict) -> Any:
    vectors = config["params"]["vectors"]
    if is_single_vector(vectors):
        return edge.EdgeConfig(vectors=edge_vector_params(vectors))
    return edge.EdgeConfig(vectors={name: edge_vector_params(p) for name, p in vectors.items()})


def vector_sizes(config: dict) -> dict[str, int]:
    """Size of each dense vector by name; the unnamed default vector is called ``""``."""
    vectors = config["params"]["vectors"]
    if is_single_vector(vectors):
        return {"": vectors["size"]}
    return {name: params["size"] for name, params in vectors.items()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json_atomically(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)
