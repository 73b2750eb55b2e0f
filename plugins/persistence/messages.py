"""The persistence plugin's own bus messages (declared through ``tickbus_message_types``,
so every lane of the process decodes them). Other plugins read them by field name."""

from __future__ import annotations

from tickbus.schemas import Msg

STATS_TOPIC = "persist.stats"
RESTORE_DONE_TOPIC = "restore.done"


class PersistenceStats(Msg):
    """How the database keeps up, topic ``persist.stats`` every ``stats_interval_ms``."""

    instance: str
    rows: int
    """Rows committed since start."""
    commits: int
    pending: int
    """Rows waiting for the next commit (bounded by ``max_pending_rows``)."""
    backlog: int
    """Messages for persistence published in this process and not yet handled by it (the
    bus queue in front of the lane: grows when the disk is slower than the traffic)."""
    retries: int
    failures: int
    """Commits that failed (each is retried; nothing is dropped)."""
    bad: int
    """Rows the database refused for their content (skipped, logged once per kind)."""
    db_bytes: int
    """Size of the database file and its WAL."""
    commit_us: list[int]
    """Latency of each commit since the previous stats message (at most 1024)."""
    ts_ns: int


class Restored(Msg):
    """The state restored from the database has been published, topic ``restore.done``
    (after every ``restore.pos.<S>``, ``restore.order``/``restore.report`` and
    ``restore.snap.<id>`` message); also sent, with zeros, when there was nothing."""

    run_id: int
    from_run: int
    """The run whose state it is (0: none)."""
    positions: int
    orders: int
    snapshots: int
    ts_ns: int
