"""Wiber's configuration: one YAML file, parsed into frozen dataclasses and validated once at start.

Every node and every `wiber` command reads the same file. A mistake in it is caught before
anything binds a socket or touches a disk, and reported as one line, ``FILE: KEY: PROBLEM``, that
names the file, the key path (``cluster.heartbeat_ms``, ``nodes[1].port``) and what to change
(docs/design.md section 2; the CLI exits with status 2). Once `load_config` has returned, every value is
known to be well typed and consistent, and no other module checks it again.

Example (this is ``conf/cluster.yaml``)::

    cluster:                         # optional: every key below has a default
      data_dir: ./data
      heartbeat_ms: 50
      election_timeout_ms: 300
      max_message_bytes: 1048576
      reorder_window_ms: 0
    nodes:                           # required: 1 to 7 nodes (3 or 5 in production)
      - {id: n1, host: 127.0.0.1, port: 9101}
      - {id: n2, host: 127.0.0.1, port: 9102}
      - {id: n3, host: 127.0.0.1, port: 9103}

Keys of ``cluster`` (all optional)
----------------------------------

data_dir (string, default ``./data``)
    Directory under which node <id> keeps its log, hard state and snapshots, in ``data_dir/<id>``.
    A relative path is resolved against the current working directory of the process that loads
    the file (for ``make run``, the repository root), never against the YAML file's location;
    ``~`` is expanded. The loaded config holds the absolute path.

heartbeat_ms (integer > 0, default 50)
    How often the leader sends AppendEntries (empty when there is nothing new) to each follower.
    Must be less than election_timeout_ms, or followers would start elections between heartbeats.

election_timeout_ms (integer > 0, default 300)
    A follower that hears no leader for this long starts an election. Each node draws its timeout
    at random in [t, 2t) every time, so that split votes resolve. A deposed leader that has not
    heard from a majority for this long steps down (CheckQuorum). Lower values fail over faster
    but risk needless elections on a loaded machine.

max_message_bytes (integer > 0, at most 67108864 = 64 MiB, default 1048576 = 1 MiB)
    Largest ``data`` of one PUB; a larger one is answered TOO_LARGE. A PUB_BATCH may carry up to
    16 times this in all.

reorder_window_ms (integer >= 0, default 0 = off)
    With a window, the leader holds PUBs that carry a client ``ts`` for up to this long and appends
    them in (ts, client_id, seq) order (docs/design.md section 5). Must be less than request_timeout_ms.

request_timeout_ms (integer > 0, default 5000)
    A PUB that is not committed this long after it arrived is answered UNAVAILABLE (its outcome is
    unknown; a retry with the same client_id and seq is safe).

snapshot_every (integer > 0, default 10000)
    Number of log entries applied between two checkpoints (Raft snapshots); the Raft log before a
    checkpoint is then discarded. Smaller values mean faster restarts and more checkpoint writes.
    A checkpoint is cheap (it fsyncs the topic segments written since the last one and commits the
    index rows that changed, off the node's loop) and never stops the loop for long.

snapshot_bytes (integer > 0, default 16777216 = 16 MiB)
    A checkpoint is also taken once this many bytes of log entries were applied since the last one.
    It bounds the memory a node holds for what the last checkpoint does not cover yet (the Raft log
    since it, and the index of the messages written since it), whatever the size of the batches.

segment_bytes (integer > 0, default 67108864 = 64 MiB)
    Size at which a topic segment file (shared by every topic) is sealed and a new one started.
    Retention frees disk space a whole sealed segment at a time.

session_window (integer > 0, default 4096)
    Per client_id, how many answers the broker keeps for deduplicating retries (seqs at or above
    the client's ack_floor). A pipelining client may have up to this many requests in flight.

max_sessions (integer > 0, default 10000)
    Number of client_ids the broker remembers; the least recently active (by log index) is evicted
    first, and its late retries get SESSION_EXPIRED.

fsync (true or false, default true)
    Whether the log is fsynced before a write is acknowledged. ``false`` is UNSAFE: a power loss or
    kernel crash can then lose acknowledged messages or break Raft's guarantees. Use it only for
    experiments and benchmarks, and say so next to any figure measured with it.

insecure (true or false, default false)
    Without a ``security`` section a node refuses to start (exit status 2) when any node's host is
    not a loopback address (127.0.0.0/8, ::1, localhost): its ports would take anyone's requests
    and Raft messages in plain text. ``true`` lets it start anyway, with a WARNING logged at every
    start; use it only on a network you trust entirely. Ignored with a ``security`` section.

max_reply_bytes (integer > 0, at most 1073741824 = 1 GiB, default 4194304 = 4 MiB)
    Most message data one HISTORY reply carries: a page that would pass it holds fewer messages
    (at least one), and its ``next_offset`` says where to read on. It bounds the memory a reader
    makes a node spend per request.

retention (mapping, default: keep everything)
    Cluster-wide limits on what each topic keeps, with the keys below. When a limit is reached the
    oldest messages are removed; offsets are never reused (HISTORY's ``first_offset`` moves up).

    max_messages (integer > 0, or null = unlimited; default null)
        Keep at most this many messages per topic.
    max_bytes (integer > 0, or null = unlimited; default null)
        Keep at most this many bytes of message data per topic.
    max_age_s (number > 0, or null = unlimited; default null)
        Remove messages older than this many seconds (by their ``ts``).

topics (mapping of topic name to retention, default: none)
    Per-topic retention overrides, e.g. ``topics: {audit: {max_age_s: 86400}}``. Each override takes
    the keys of ``retention``; a key it leaves out keeps the cluster-wide value, and an explicit
    ``null`` makes that limit unlimited for the topic. So the effective retention of a topic is
    ``cluster.topics.get(name, cluster.retention)``. Topic names: 1-255 bytes of UTF-8, no NUL,
    not starting with ``$`` (reserved).

Keys of each entry of ``nodes``
-------------------------------

id (string, required)
    The node's name: 1-64 characters of ``A-Z a-z 0-9 _ . -`` (not ``.`` or ``..``), unique. It
    names the node's data directory, ``data_dir/<id>``, and is what ``wiber-node <id>`` starts.

host (string, required)
    Hostname or IP address the node binds its sockets to and that peers and clients connect to,
    so it must be reachable by them (``127.0.0.1`` for a single-machine cluster).

port (integer 1-65535, required)
    Client requests (ZeroMQ ROUTER), ``tcp://host:port``.

raft_port (integer 1-65535, default port + 100)
    Raft messages from the other nodes, ``tcp://host:raft_port``.

pub_port (integer 1-65535, default port + 200)
    Fan-out of applied messages to subscribers (ZeroMQ PUB), ``tcp://host:pub_port``.

metrics_port (integer 0-65535, default port + 300)
    Prometheus metrics at ``http://host:metrics_port/metrics`` and a health check at ``/healthz``
    (docs/operations.md). ``0`` turns them off. A written port must be free or the node does not
    start; when the defaulted one is taken the node serves without metrics and logs a warning.

Every (host, port) pair, across the port, raft_port, pub_port and metrics_port of all nodes, must be unique.
There must be 1 to 7 nodes; a cluster of N tolerates the loss of (N - 1) // 2 of them.

Keys of ``security`` (optional: without it the nodes speak plain TCP, loopback only)
------------------------------------------------------------------------------------

With this section every node serves its client, raft and pub ports as a CURVE server and
authenticates its peers (docs/design.md section 10)::

    security:
      keys_dir: ./keys
      clients:
        - {name: app, publish: ["orders.>"], subscribe: [">"]}
        - {name: ops, admin: true}

keys_dir (string, required)
    Directory of the key files, as ``wiber keygen NAME --dir DIR`` (or ``zmq.auth``) writes them:
    ``<name>.key`` holds a public key, ``<name>.key_secret`` the key pair. A relative path is
    resolved against the directory of this YAML file (not the working directory, unlike
    data_dir); ``~`` is expanded. A node starts only when it finds its own ``<id>.key_secret``,
    and ``<name>.key`` for every node and every client below; the error names the missing file.
    A node needs no other node's secret: hand each machine only its own.

clients (list, default: none)
    Who may connect to the client and pub ports, by the name of their key. Each entry:

    name (string, required)
        The key's name, ``keys_dir/<name>.key``: 1-64 letters, digits, ``_ . -``, unique, and not
        a node id (a node's key is admitted on the raft port only).
    publish (list of topic patterns, default: none)
        Topics the client may PUB and PUB_BATCH to; others are answered FORBIDDEN.
    subscribe (list of topic patterns, default: none)
        Topics the client may read with HISTORY and SUB; others are answered FORBIDDEN. The pub
        port admits only clients with ``">"`` here (or admin): a PUB socket cannot filter per
        subscriber. TOPICS lists only the topics the client may publish to or read.
    admin (true or false, default false)
        Every op on every topic, STATUS, and the cluster commands.

    A topic pattern is tokens separated by ``.``: a literal token matches itself, ``*`` exactly
    one token, ``>`` (last token only) one or more tokens; so ``orders.>`` matches
    ``orders.eu`` and ``orders.eu.new`` but not ``orders``. Tokens are not empty, and ``*`` and
    ``>`` are wildcards only as whole tokens. PING needs no right. Deduplication sessions belong
    to (client name, client_id): no client can touch another's session.

Validation rules
----------------
* A key that is not listed above is refused, naming the keys allowed at that place.
* An integer key takes an integer only: ``true``, ``1.5`` and ``"50"`` are refused. A number key
  (max_age_s) also takes an integer. A mapping key repeated in one YAML mapping is refused
  (PyYAML would silently keep the last one).
* An empty section (``cluster:`` with nothing under it) is the same as leaving it out, except
  ``security:``, which is refused: leaving that one out turns CURVE off.
* Checking stops at the first problem found. An error that concerns the file as a
  whole names the pseudo-key ``(file)`` (missing, unreadable), ``(yaml)`` (not YAML; with line and
  column) or ``(top level)`` (empty, or not a mapping).
"""

from wiber.config.loading import load_config, parse_config
from wiber.config.model import (
    MAX_MESSAGE_BYTES_LIMIT,
    MAX_NODE_ID_LEN,
    MAX_NODES,
    MAX_REPLY_BYTES_LIMIT,
    MAX_TOPIC_BYTES,
    PUB_PORT_OFFSET,
    METRICS_PORT_OFFSET,
    RAFT_PORT_OFFSET,
    ClientRights,
    ClusterConfig,
    Config,
    NodeConfig,
    RetentionConfig,
    SecurityConfig,
)
from wiber.config.security import pattern_problem

__all__ = [
    "MAX_MESSAGE_BYTES_LIMIT",
    "MAX_NODES",
    "MAX_NODE_ID_LEN",
    "MAX_REPLY_BYTES_LIMIT",
    "MAX_TOPIC_BYTES",
    "PUB_PORT_OFFSET",
    "METRICS_PORT_OFFSET",
    "RAFT_PORT_OFFSET",
    "ClientRights",
    "ClusterConfig",
    "Config",
    "NodeConfig",
    "RetentionConfig",
    "SecurityConfig",
    "load_config",
    "parse_config",
    "pattern_problem",
]
