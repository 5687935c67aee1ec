"""
The replicated DHT: put / create / get / delete with TTLs and owner signatures.

Keys live in the address space (SHA-256 of the key, first 160 bits).  The
node closest to a key is its I{root}; the root and the next closest nodes,
C{k} in all, are its I{replicas}.  A client routes its request (CLOSEST mode)
to the key; the root coordinates the replicas and answers (EXACT mode).

Every value is a record signed by its owner (the node key), so replicas can
check that only the owner writes, renews or deletes it.  Deletes are signed
tombstones kept as long as a record they remove could still be replayed.

C{create} is a compare-and-set decided by a majority of the replicas (see
docs/architecture.md, "Why create is safe"): the root asks every replica to
I{reserve} the key for the record's owner; a replica grants at most one live
reservation per key and refuses when it holds a live value of another owner;
a record is committed only with ⌊k/2⌋+1 grants, so two concurrent creates
cannot both win, even if a replica dies mid-operation.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from wow.overlay import address as A
from wow.overlay import wire as W
from wow.overlay.identity import address_of

if TYPE_CHECKING:
    from wow.overlay.node import OverlayNode

PUT, CREATE, DELETE = 0, 1, 2
ACTIONS = {"put": PUT, "create": CREATE, "delete": DELETE}
MAX_KEY = 256
#: Clock skew tolerated between an owner's "issued" stamp and a replica.
SKEW = 300.0
RESERVE_LEASE = 10.0


class DhtError(Exception):
    """A DHT operation failed; C{reason} is one word (exists, timeout, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Record:
    key: bytes
    value: bytes
    owner_public: bytes
    owner: int
    ttl: int
    issued_ms: int
    action: int
    sig: bytes

    @property
    def expires(self) -> float:
        return self.issued_ms / 1000 + self.ttl

    def signed_data(self) -> bytes:
        return signed_data(self.action, self.key, self.value, self.ttl, self.issued_ms)

    def to_wire(self) -> dict[str, Any]:
        return {"k": self.key, "v": self.value, "o": self.owner_public, "t": self.ttl,
                "i": self.issued_ms, "x": self.action, "s": self.sig}


def signed_data(action: int, key: bytes, value: bytes, ttl: int, issued_ms: int) -> bytes:
    return W.encode({"d": "wow-dht-1", "x": action, "k": key, "v": value, "t": ttl,
                     "i": issued_ms})


def record_from_wire(m: Any, max_value: int) -> Record:
    if not isinstance(m, dict):
        raise W.WireError("bad-payload", "record")
    public = W.f_bytes(m, "o", max_size=512)
    return Record(
        key=W.f_bytes(m, "k", max_size=MAX_KEY),
        value=W.f_bytes(m, "v", max_size=max_value),
        owner_public=public,
        owner=address_of(public),
        ttl=W.f_int(m, "t", 1, 10 * 365 * 86400),
        issued_ms=W.f_int(m, "i"),
        action=W.f_int(m, "x", 0, 2),
        sig=W.f_bytes(m, "s", max_size=256),
    )


@dataclass(frozen=True, slots=True)
class DhtValue:
    value: bytes
    owner: int
    ttl_left: float


@dataclass(slots=True)
class _Reservation:
    op: int
    owner: int
    expires: float


@dataclass(slots=True)
class _Pending:
    d: Deferred[Any]
    action: str
    key: bytes
    rec: Record | None
    attempts: int
    timer: Any
    started: float = 0.0


class _RootOp:
    """One operation the root coordinates over the replicas."""

    __slots__ = ("op", "action", "key", "rec", "client", "rid", "waiting", "votes", "values",
                 "timer", "done", "replicas", "retried", "msg", "quorum")

    def __init__(self, op: int, action: str, key: bytes, rec: Record | None, client: int,
                 rid: int, replicas: list[int], quorum: int) -> None:
        self.op = op
        self.action = action
        self.key = key
        self.rec = rec
        self.client = client
        self.rid = rid
        self.replicas = replicas
        #: How many "ok" votes decide it (see L{Dht.quorum_for}).
        self.quorum = quorum
        self.waiting = set(replicas)
        self.votes: dict[int, str] = {}
        self.values: dict[tuple[int, int, bytes], Record] = {}
        self.timer: Any = None
        self.done = False
        self.retried = False
        #: What was sent to every replica (sent again to the silent ones).
        self.msg: dict[str, Any] = {}


class Dht:
    log = Logger()

    def __init__(self, node: OverlayNode) -> None:
        self.node = node
        self.k = node.params.replicas
        self.quorum = self.k // 2 + 1
        #: key -> {(owner, action==DELETE, value): Record}
        self.store: dict[bytes, dict[tuple[int, bool, bytes], Record]] = {}
        self.reservations: dict[bytes, _Reservation] = {}
        self.pending: dict[int, _Pending] = {}
        self.root_ops: dict[int, _RootOp] = {}
        self.create_queue: dict[bytes, deque[tuple[int, int, Record]]] = {}
        self.busy_keys: set[bytes] = set()
        self._pushed: dict[bytes, frozenset[int]] = {}
        self.rng = random.Random(node.rng.getrandbits(64))

    @property
    def counters(self) -> Any:
        return self.node.counters

    # -- client API ---------------------------------------------------------

    def put(self, key: bytes, value: bytes, ttl: int) -> Deferred[Any]:
        """Append C{value} under C{key} for C{ttl} seconds (same value renews)."""
        return self._start("put", key, self._sign(PUT, key, value, ttl))

    def create(self, key: bytes, value: bytes, ttl: int) -> Deferred[Any]:
        """Claim C{key}: fails with DhtError("exists") if another owner holds it."""
        return self._start("create", key, self._sign(CREATE, key, value, ttl))

    def delete(self, key: bytes, value: bytes = b"") -> Deferred[Any]:
        """Delete this node's C{value} (b"" = all its values) under C{key}."""
        return self._start("delete", key,
                           self._sign(DELETE, key, value, self.node.params.dht_max_ttl))

    def get(self, key: bytes) -> Deferred[Any]:
        """All live values under C{key}, as a list of L{DhtValue}."""
        return self._start("get", key, None)

    def _sign(self, action: int, key: bytes, value: bytes, ttl: int) -> Record:
        p = self.node.params
        if len(key) > MAX_KEY or not key:
            raise ValueError(f"a DHT key has 1 to {MAX_KEY} bytes")
        if len(value) > p.dht_max_value:
            raise ValueError(f"a DHT value has at most {p.dht_max_value} bytes")
        if not 1 <= ttl <= p.dht_max_ttl:
            raise ValueError(f"a DHT TTL is between 1 and {p.dht_max_ttl} seconds")
        issued = int(self.node.clock() * 1000)
        crypto = self.node.crypto
        sig = crypto.sign(signed_data(action, key, value, ttl, issued))
        return Record(key, value, crypto.public, crypto.address, ttl, issued, action, sig)

    def _start(self, action: str, key: bytes, rec: Record | None) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        rid = self.rng.getrandbits(62)
        self.pending[rid] = _Pending(d, action, key, rec, 0, None, self.node.clock())
        self._send_request(rid)
        return d

    def _send_request(self, rid: int) -> None:
        p = self.pending[rid]
        p.attempts += 1
        p.timer = self.node.call_later(self.node.params.dht_timeout,
                                       lambda now: self._request_timeout(rid))
        m: dict[str, Any] = {"op": "req", "r": rid, "a": p.action, "k": p.key}
        if p.rec is not None:
            m["rec"] = p.rec.to_wire()
        self.node.send_to(A.digest(p.key), W.DHT, W.encode(m), W.CLOSEST)

    def _request_timeout(self, rid: int) -> None:
        p = self.pending.get(rid)
        if p is None:
            return
        if p.attempts < self.node.params.dht_attempts:
            self.counters.inc("dht_retries", reason="timeout")
            self._send_request(rid)
        else:
            del self.pending[rid]
            self.counters.inc("dht_ops", op=p.action, result="timeout")
            self.counters.observe("dht_op_seconds", self.node.clock() - p.started, op=p.action)
            p.d.errback(DhtError("timeout"))

    def _on_result(self, m: dict[str, Any], now: float) -> None:
        rid = W.f_int(m, "r")
        p = self.pending.get(rid)
        if p is None:
            self.counters.inc("dht_dropped", reason="unknown-request")
            return
        ok = bool(m.get("ok"))
        e = m.get("e")
        err: str = e if isinstance(e, str) else "failed"
        if p.timer is not None:
            p.timer.cancel()
        retries_left = p.attempts < self.node.params.dht_attempts + 6
        if not ok and err in ("conflict", "busy") and retries_left:
            # A concurrent create held a reservation: back off and try again.
            self.counters.inc("dht_retries", reason=err)
            p.timer = self.node.call_later(self.rng.uniform(0.2, 1.5),
                                           lambda now: self._send_request(rid))
            return
        del self.pending[rid]
        self.counters.inc("dht_ops", op=p.action, result="ok" if ok else err)
        self.counters.observe("dht_op_seconds", now - p.started, op=p.action)
        if not ok:
            p.d.errback(DhtError(err))
        elif p.action == "get":
            vals = m.get("v")
            if not isinstance(vals, list):
                p.d.errback(DhtError("bad-reply"))
                return
            out = []
            for v in vals:
                if isinstance(v, list) and len(v) == 3 and isinstance(v[0], bytes) \
                        and isinstance(v[1], bytes) and len(v[1]) == A.SIZE:
                    out.append(DhtValue(v[0], A.from_bytes(v[1]), float(v[2])))
            p.d.callback(out)
        else:
            p.d.callback(True)

    # -- storage ------------------------------------------------------------

    def _valid(self, rec: Record, now: float) -> str | None:
        p = self.node.params
        if rec.expires <= now:
            return "expired"
        if rec.issued_ms / 1000 > now + SKEW:
            return "from-the-future"
        if rec.ttl > p.dht_max_ttl or len(rec.value) > p.dht_max_value:
            return "too-big"
        if not self.node.crypto.verify(rec.owner_public, rec.sig, rec.signed_data()):
            self.counters.inc("overlay_dropped", reason="bad-signature")
            return "bad-signature"
        return None

    def live(self, key: bytes, now: float) -> dict[tuple[int, bool, bytes], Record]:
        entries = self.store.get(key)
        if not entries:
            return {}
        dead = [k for k, r in entries.items() if r.expires <= now]
        for k in dead:
            del entries[k]
        if not entries:
            del self.store[key]
            return {}
        return entries

    def _conflict(self, key: bytes, owner: int, now: float) -> bool:
        return any(r.owner != owner and r.action != DELETE for r in self.live(key, now).values())

    def apply(self, rec: Record, now: float, verified: bool = False) -> str | None:
        """Store C{rec} if it is valid and allowed; return why not, or None."""
        if not verified:
            why = self._valid(rec, now)
            if why:
                return why
        entries = self.live(rec.key, now)
        for (owner, is_del, _), r in entries.items():
            if is_del and owner == rec.owner and r.issued_ms >= rec.issued_ms \
                    and (not r.value or r.value == rec.value) and rec.action != DELETE:
                return "deleted"
        if rec.action == DELETE:
            for k in [k for k, r in entries.items() if r.owner == rec.owner and not k[1]
                      and (not rec.value or r.value == rec.value)
                      and r.issued_ms <= rec.issued_ms]:
                del entries[k]
        elif rec.action == CREATE:
            if self._conflict(rec.key, rec.owner, now):
                return "exists"
            for k in [k for k, r in entries.items() if r.owner == rec.owner and not k[1]]:
                del entries[k]
        elif any(r.action == CREATE and r.owner != rec.owner for r in entries.values()):
            return "exists"
        ident = (rec.owner, rec.action == DELETE, rec.value)
        old = entries.get(ident)
        if old is None or old.issued_ms <= rec.issued_ms:
            self.store.setdefault(rec.key, entries)[ident] = rec
        return None

    # -- replicas -------------------------------------------------------------

    def replicas(self, key: bytes) -> list[int]:
        """The k nodes closest to the key among this node and its (live) links."""
        target = A.digest(key)
        suspects = self.node.suspects
        nodes = [a for a in self.node.table.links if a not in suspects] + [self.node.me]
        nodes.sort(key=lambda a: A.ring_distance(a, target))
        return nodes[: self.k]

    def alone(self) -> bool:
        """
        Whether this node is the whole overlay: the seed (no bootstrap
        configured) before any other node linked to it.
        """
        return self.node.params.seed and not self.node.table.links

    def quorum_for(self, replicas: list[int]) -> int:
        """
        The "ok" votes an operation over C{replicas} needs: a majority of
        C{k}, so two creates of one key cannot both win; only the lone seed,
        the sole replica there is, decides alone.
        """
        if replicas == [self.node.me] and self.alone():
            return 1
        return self.quorum

    def _to(self, dst: int, m: dict[str, Any]) -> None:
        if dst == self.node.me:
            self._on_replica_message(dst, m, self.node.clock())
        else:
            self.node.send_to(dst, W.DHT, W.encode(m), W.EXACT)

    # -- messages -------------------------------------------------------------

    def on_message(self, hdr: W.Header, payload: bytes, now: float) -> None:
        m = W.decode(payload)
        op = W.f_str(m, "op")
        if op == "req":
            self._on_request(hdr.src, m, now)
        elif op == "res":
            self._on_result(m, now)
        else:
            self._on_replica_message(hdr.src, m, now)

    def _reply(self, client: int, rid: int, ok: bool, err: str = "",
               values: list[list[Any]] | None = None) -> None:
        m: dict[str, Any] = {"op": "res", "r": rid, "ok": ok}
        if err:
            m["e"] = err
        if values is not None:
            m["v"] = values
        if client == self.node.me:
            self._on_result(m, self.node.clock())
        else:
            self.node.send_to(client, W.DHT, W.encode(m), W.EXACT)

    def _on_request(self, client: int, m: dict[str, Any], now: float) -> None:
        rid = W.f_int(m, "r")
        action = W.f_str(m, "a")
        key = W.f_bytes(m, "k", max_size=MAX_KEY)
        self.counters.inc("dht_root_ops", op=action)
        if action == "get":
            op = self._new_op("get", key, None, client, rid)
            self._send_all(op, {"op": "fetch", "r": op.op, "k": key})
            return
        if action not in ACTIONS:
            raise W.WireError("bad-payload", f"dht action {action!r}")
        rec = record_from_wire(m.get("rec"), self.node.params.dht_max_value)
        if rec.key != key or rec.action != ACTIONS[action]:
            raise W.WireError("bad-payload", "record does not match request")
        why = self._valid(rec, now)
        if why:
            self._reply(client, rid, False, why)
            return
        if action == "create":
            if key in self.busy_keys:
                self.create_queue.setdefault(key, deque()).append((client, rid, rec))
                return
            self._start_create(client, rid, rec)
            return
        op = self._new_op(action, key, rec, client, rid)
        self._send_all(op, {"op": "store", "r": op.op, "rec": rec.to_wire()})

    def _new_op(self, action: str, key: bytes, rec: Record | None, client: int,
                rid: int) -> _RootOp:
        replicas = self.replicas(key)
        op = _RootOp(self.rng.getrandbits(62), action, key, rec, client, rid, replicas,
                     self.quorum_for(replicas))
        self.root_ops[op.op] = op
        op.timer = self.node.call_later(self.node.params.dht_timeout / 2,
                                        lambda now: self._finish(op, now))
        return op

    def _start_create(self, client: int, rid: int, rec: Record) -> None:
        self.busy_keys.add(rec.key)
        op = self._new_op("create", rec.key, rec, client, rid)
        self._send_all(op, {"op": "reserve", "r": op.op, "rec": rec.to_wire()})

    def _send_all(self, op: _RootOp, msg: dict[str, Any]) -> None:
        op.msg = msg
        for r in op.replicas:
            self._to(r, msg)

    def _on_replica_message(self, src: int, m: dict[str, Any], now: float) -> None:
        op = W.f_str(m, "op")
        if op in ("ack", "vote", "values"):
            rop = self.root_ops.get(W.f_int(m, "r"))
            if rop is None or rop.done or src not in rop.waiting:
                return
            rop.waiting.discard(src)
            if op == "values":
                recs = m.get("recs")
                if not isinstance(recs, list):
                    raise W.WireError("bad-payload", "values")
                for rm in recs[:256]:
                    rec = record_from_wire(rm, self.node.params.dht_max_value)
                    if rec.key == rop.key and rec.expires > now:
                        rop.values[(rec.owner, rec.action, rec.value)] = rec
                rop.votes[src] = "ok"
            else:
                rop.votes[src] = W.f_str(m, "v")
            if not rop.waiting or self._decided(rop):
                self._finish(rop, now)
            return
        rid = W.f_int(m, "r")
        if op == "fetch":
            key = W.f_bytes(m, "k", max_size=MAX_KEY)
            recs = [r.to_wire() for r in self.live(key, now).values()]
            self._to(src, {"op": "values", "r": rid, "recs": recs})
        elif op == "store":
            rec = record_from_wire(m.get("rec"), self.node.params.dht_max_value)
            why = self.apply(rec, now)
            self._to(src, {"op": "ack", "r": rid, "v": why or "ok"})
        elif op == "reserve":
            rec = record_from_wire(m.get("rec"), self.node.params.dht_max_value)
            self._to(src, {"op": "vote", "r": rid, "v": self._vote(rid, rec, now)})
        elif op == "commit":
            rec = record_from_wire(m.get("rec"), self.node.params.dht_max_value)
            res = self.reservations.get(rec.key)
            if res is not None and res.op == rid:
                del self.reservations[rec.key]
            self.apply(rec, now)
        elif op == "abort":
            key = W.f_bytes(m, "k", max_size=MAX_KEY)
            res = self.reservations.get(key)
            if res is not None and res.op == rid:
                del self.reservations[key]
        elif op == "replicate":
            recs = m.get("recs")
            if not isinstance(recs, list):
                raise W.WireError("bad-payload", "replicate")
            for rm in recs[:256]:
                self.apply(record_from_wire(rm, self.node.params.dht_max_value), now)
        else:
            raise W.WireError("bad-payload", f"dht op {op!r}")

    def _vote(self, op: int, rec: Record, now: float) -> str:
        """A replica's compare-and-set: grant at most one live reservation per key."""
        why = self._valid(rec, now)
        if why:
            return why
        if self._conflict(rec.key, rec.owner, now):
            return "exists"
        res = self.reservations.get(rec.key)
        if res is not None and res.expires > now and res.op != op:
            if res.owner != rec.owner:
                return "busy"
        recently = max(self.node.started_at, self.node.near_lost_at)
        if (not self.live(rec.key, now) and now - recently < self.node.params.dht_sync_grace
                and not self.alone()):
            # We just started or lost a near neighbour: we may have become a
            # replica of keys whose records are still on their way to us, so
            # we must not vote "absent".
            return "abstain"
        self.reservations[rec.key] = _Reservation(op, rec.owner, now + RESERVE_LEASE)
        return "ok"

    def _decided(self, op: _RootOp) -> bool:
        """Whether the root can answer before every replica has."""
        if op.action == "get":
            return False
        if op.action != "create":
            return sum(1 for v in op.votes.values() if v == "ok") >= op.quorum
        ok = sum(1 for v in op.votes.values() if v == "ok")
        return ok >= op.quorum or "exists" in op.votes.values()

    def _finish(self, op: _RootOp, now: float) -> None:
        if op.done:
            return
        op.done = True
        if op.timer is not None:
            op.timer.cancel()
        self.root_ops.pop(op.op, None)
        oks = sum(1 for v in op.votes.values() if v == "ok")
        found = op.action == "get" and (op.values or self.live(op.key, now))
        if op.waiting and not op.retried and not self._decided(op) and not found:
            # Some replicas did not answer (a lost datagram, or a replica
            # that died): ask the silent ones once more before deciding.
            op.retried, op.done = True, False
            self.root_ops[op.op] = op
            op.timer = self.node.call_later(self.node.params.dht_timeout / 2,
                                            lambda now: self._finish(op, now))
            for replica in op.waiting:
                self._to(replica, op.msg)
            return
        if op.action == "get":
            merged = {k: r for k, r in op.values.items()}
            for r in self.live(op.key, now).values():
                merged[(r.owner, r.action, r.value)] = r
            deletes = [r for r in merged.values() if r.action == DELETE]
            values = []
            for r in merged.values():
                if r.action == DELETE or r.expires <= now:
                    continue
                if any(t.owner == r.owner and t.issued_ms >= r.issued_ms
                       and (not t.value or t.value == r.value) for t in deletes):
                    continue
                values.append([r.value, A.to_bytes(r.owner), round(r.expires - now, 1)])
            if oks == 0:
                self._reply(op.client, op.rid, False, "timeout")
            else:
                self._reply(op.client, op.rid, True, values=values)
            return
        if op.action == "create":
            assert op.rec is not None
            if oks >= op.quorum:
                for replica in op.replicas:
                    self._to(replica, {"op": "commit", "r": op.op, "rec": op.rec.to_wire()})
                self._reply(op.client, op.rid, True)
            else:
                for replica in op.replicas:
                    self._to(replica, {"op": "abort", "r": op.op, "k": op.key})
                err = "exists" if "exists" in op.votes.values() else "conflict"
                self._reply(op.client, op.rid, False, err)
            self.busy_keys.discard(op.key)
            queue = self.create_queue.get(op.key)
            if queue:
                client, rid, rec = queue.popleft()
                if not queue:
                    del self.create_queue[op.key]
                self._start_create(client, rid, rec)
            return
        # put / delete
        errors = [v for v in op.votes.values() if v != "ok"]
        if oks >= op.quorum or (oks and oks == len(op.replicas)):
            self._reply(op.client, op.rid, True)
        else:
            self._reply(op.client, op.rid, False, errors[0] if errors else "timeout")

    # -- re-replication -----------------------------------------------------

    def membership_changed(self, now: float) -> None:
        """Push records to replicas that are new for their key (churn)."""
        self._push(now, only_changed=True)

    def republish(self, now: float) -> None:
        try:
            self._push(now, only_changed=False)
            for key in list(self.store):
                self.live(key, now)
            for key in [k for k, r in self.reservations.items() if r.expires <= now]:
                del self.reservations[key]
        finally:
            p = self.node.params
            self.node.call_later(p.dht_republish * self.rng.uniform(0.8, 1.2), self.republish)

    def _push(self, now: float, only_changed: bool) -> None:
        batches: dict[int, list[dict[str, Any]]] = {}
        me = self.node.me
        for key in list(self.store):
            entries = self.live(key, now)
            if not entries:
                self._pushed.pop(key, None)
                continue
            replicas = frozenset(self.replicas(key))
            if only_changed and self._pushed.get(key) == replicas:
                continue
            before = self._pushed.get(key, frozenset())
            self._pushed[key] = replicas
            targets = replicas - {me}
            if only_changed:
                targets = targets - before
            for r in targets:
                batches.setdefault(r, []).extend(rec.to_wire() for rec in entries.values())
        for dst, recs in batches.items():
            for i in range(0, len(recs), 4):
                self.counters.inc("dht_replicated", amount=len(recs[i:i + 4]))
                self._to(dst, {"op": "replicate", "r": 0, "recs": recs[i:i + 4]})

