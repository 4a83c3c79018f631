"""Creates under load through nameko 2.14.1's ClusterRpcProxy, for
cluster.rs: CALLERS threads, each with a proxy of its own, call
PERSON_SERVICE.create(first, marker, age) with a unique marker per call,
until STOP_FILE exists, MAX_CALLS calls were made or DURATION seconds
passed.

Each call's outcome is one JSON line on OUT_FILE (flushed at once, so the
test follows the load as it goes):
  {"m": marker, "ok": id, "t": epoch seconds at the answer}
  {"m": marker, "err": exception type, "msg": text, "first": URI, "t": epoch seconds}
where "first" is the broker the caller's list starts at (kombu tries it
first whenever it connects), so the test can tell the callers a node kill
hits from the others.
A caller whose call failed makes a new proxy (its reply consumer may be on a
dead connection) before its next call.

Environment: AMQP_URI (a `;` list: kombu fails over between them; each
caller starts at a different one, round-robin), PERSON_SERVICE, OUT_FILE,
STOP_FILE, CALLERS, MAX_CALLS, DURATION, CALL_TIMEOUT, RUN (the markers'
prefix).
"""
import itertools
import json
import os
import sys
import threading
import time

from nameko.standalone.rpc import ClusterRpcProxy

URIS = os.environ["AMQP_URI"].split(";")
SERVICE = os.environ["PERSON_SERVICE"]
OUT = open(os.environ["OUT_FILE"], "a", buffering=1)
STOP = os.environ["STOP_FILE"]
CALLERS = int(os.environ.get("CALLERS", "8"))
MAX_CALLS = int(os.environ.get("MAX_CALLS", "3000"))
DEADLINE = time.time() + float(os.environ.get("DURATION", "90"))
TIMEOUT = float(os.environ.get("CALL_TIMEOUT", "10"))
RUN = os.environ["RUN"]

lock = threading.Lock()
counter = itertools.count()


def write(record):
    with lock:
        OUT.write(json.dumps(record) + "\n")


def kind(e):
    """The exception's class with its module, e.g.
    kombu.exceptions.OperationalError."""
    return "%s.%s" % (type(e).__module__, type(e).__name__)


def done():
    return os.path.exists(STOP) or time.time() > DEADLINE


def first_uri(caller):
    # Each caller's list starts at a different node, so the callers spread
    # over the cluster.
    return URIS[caller % len(URIS)]


def open_proxy(caller):
    start = caller % len(URIS)
    uri = ";".join(URIS[start:] + URIS[:start])
    proxy = ClusterRpcProxy({"AMQP_URI": uri}, timeout=TIMEOUT)
    return proxy, proxy.start()


def caller(c):
    proxy = None
    while not done():
        if proxy is None:
            try:
                proxy, services = open_proxy(c)
            except Exception as e:  # the broker may be failing over
                write({"m": None, "connect_err": kind(e), "msg": (str(e) or repr(e))[:200],
                       "t": time.time()})
                time.sleep(0.2)
                continue
        n = next(counter)
        if n >= MAX_CALLS:
            break
        marker = "%s-%d-%d" % (RUN, c, n)
        try:
            pid = getattr(services, SERVICE).create("Cluster", marker, age=30)
            write({"m": marker, "ok": pid, "t": time.time()})
        except Exception as e:
            write({"m": marker, "err": kind(e), "msg": (str(e) or repr(e))[:200],
                   "first": first_uri(c), "t": time.time()})
            try:
                proxy.stop()
            except Exception:
                pass
            proxy = None
    if proxy is not None:
        try:
            proxy.stop()
        except Exception:
            pass


threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(CALLERS)]
for t in threads:
    t.start()
for t in threads:
    # Bounded: a caller stuck in a call is at most CALL_TIMEOUT past the
    # deadline.
    t.join(max(0.0, DEADLINE - time.time()) + TIMEOUT + 5)
write({"m": None, "finished": True, "alive": sum(t.is_alive() for t in threads),
       "t": time.time()})
OUT.close()
sys.exit(0)
