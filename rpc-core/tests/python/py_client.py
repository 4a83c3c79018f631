"""Calls a Rust service from Python nameko's ClusterRpcProxy and prints one
JSON object per call: {"name", "result"} or {"name", "error", "class", ...}.

usage: py_client.py BROKER SERVICE
"""
import json
import sys

from nameko.exceptions import RemoteError
from nameko.standalone.rpc import ClusterRpcProxy

broker, service = sys.argv[1], sys.argv[2]
config = {"AMQP_URI": broker}


def report(name, fn):
    try:
        out = {"name": name, "result": fn()}
    except RemoteError as e:
        out = {"name": name, "class": "RemoteError", "exc_type": e.exc_type, "value": e.value}
    except Exception as e:  # typed nameko exceptions land here
        out = {"name": name, "class": type(e).__name__, "module": type(e).__module__, "args": [str(a) for a in e.args]}
    print(json.dumps(out), flush=True)


with ClusterRpcProxy(config, context_data={"user_id": "py-user"}, timeout=20) as rpc:
    svc = rpc[service]
    report("add", lambda: svc.add(1, 2))
    report("add_kw", lambda: svc.add(a=40, b=2))
    report("greet_default", lambda: svc.greet("Ada"))
    report("echo_unicode", lambda: svc.echo({"name": "Zoë 😀", "n": [1, 2.5, None, True]}))
    report("not_found", lambda: svc.nosuch())
    report("bad_signature", lambda: svc.add(1))
    report("app_error", lambda: svc.fail("bad"))
    report("ctx", lambda: svc.ctx())
    handles = [svc.slow.call_async(i, 50) for i in range(20)]
    report("call_async", lambda: [h.result() for h in reversed(handles)])
