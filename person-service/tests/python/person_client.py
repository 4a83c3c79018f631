"""Calls every person method through Python nameko's ClusterRpcProxy and
prints what came back as one JSON object.

usage: person_client.py BROKER SERVICE
"""
import json
import sys

from nameko.exceptions import IncorrectSignature, RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

broker, service = sys.argv[1], sys.argv[2]
out = {}


def remote(fn):
    try:
        fn()
    except RemoteError as e:
        return {"exc_type": e.exc_type, "value": e.value}
    return None


with ClusterRpcProxy({"AMQP_URI": broker}, timeout=20) as rpc:
    people = rpc[service]
    pid = people.create("Ada", "Lovelace", 36, member=True)
    out["create"] = pid
    out["get"] = people.get(pid)
    other = people.create(first_name="Zoë", last_name="Ñúñez", age=0)
    out["list"] = people.list()
    out["page"] = people.list(limit=1, after_id=pid)
    out["update"] = people.update(pid, age=37)
    out["delete"] = people.delete(other)
    out["not_found"] = remote(lambda: people.get(other))
    out["invalid"] = remote(lambda: people.create("", "x", 1))
    try:
        people.create("only-one")
    except IncorrectSignature as e:
        out["signature"] = str(e)
    async_calls = [people.get.call_async(pid) for _ in range(10)]
    out["async"] = [c.result()["age"] for c in async_calls]

print(json.dumps(out))
