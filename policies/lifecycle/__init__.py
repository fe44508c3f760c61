"""Replica lifecycle: the state machine, deploy validation, storage / start-up times, the node model cache and
the restart back-off. Pure: callers pass `now` and plain numbers."""

from policies.lifecycle.states import (
    LEGAL_TRANSITIONS,
    NEXT_STATES,
    STATES,
    IllegalTransition,
    Lifecycle,
    RestartBackoff,
    RestartBackoffParams,
    Transition,
    holds_gpus,
    is_legal,
    serves,
)
from policies.lifecycle.storage import (
    KNOWN_SCHEMES,
    CacheAdd,
    NodeModelCache,
    StartupModel,
    StartupParams,
    StartupPlan,
    StorageUri,
    UnknownStorageScheme,
    download_time_s,
    load_time_s,
    parse_storage_uri,
)
from policies.lifecycle.validation import Verdict, validate_deployment

__all__ = [
    "KNOWN_SCHEMES",
    "LEGAL_TRANSITIONS",
    "NEXT_STATES",
    "STATES",
    "CacheAdd",
    "IllegalTransition",
    "Lifecycle",
    "NodeModelCache",
    "RestartBackoff",
    "RestartBackoffParams",
    "StartupModel",
    "StartupParams",
    "StartupPlan",
    "StorageUri",
    "Transition",
    "UnknownStorageScheme",
    "Verdict",
    "download_time_s",
    "holds_gpus",
    "is_legal",
    "load_time_s",
    "parse_storage_uri",
    "serves",
    "validate_deployment",
]
