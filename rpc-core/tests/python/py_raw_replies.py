"""Makes the same calls to each service named on the command line with
nameko's ClusterRpcProxy, and prints every reply message as nameko's
client received it (body and properties), one JSON object per line:
{"service", "call", "body", "properties"}. The correlation id, which is
unique per call, is left out.

usage: py_raw_replies.py BROKER SERVICE...
"""
import json
import sys

from nameko.standalone import rpc as standalone

broker, services = sys.argv[1], sys.argv[2:]
received = []
original = standalone.PollingQueueConsumer.on_message


def recording(self, body, message):
    props = {k: v for k, v in message.properties.items() if k != "correlation_id"}
    received.append({"body": body, "properties": props, "headers": message.headers})
    return original(self, body, message)


standalone.PollingQueueConsumer.on_message = recording

CALLS = [
    ("hello", ["Ada"], {}),
    ("hello", ["Ada"], {"punctuation": "?"}),
    ("hello", [], {"name": "Zoë 😀"}),
    ("hello", [], {}),
    ("hello", ["a", "b", "c"], {}),
    ("hello", ["Ada"], {"nope": 1}),
    ("hello", [5], {}),
    ("whoami", [], {}),
    ("whoami", [], {"shout": True}),
    ("whoami", ["yes"], {}),
    ("fail", [7], {}),
    ("count", [], {}),
    ("count", [300], {}),
    ("nosuch", [], {}),
]

config = {"AMQP_URI": broker}
with standalone.ClusterRpcProxy(
    config, context_data={"user_id": "py-user"}, timeout=20
) as proxy:
    for service in services:
        for i, (method, args, kwargs) in enumerate(CALLS):
            before = len(received)
            try:
                getattr(proxy[service], method)(*args, **kwargs)
            except Exception:
                pass  # the reply is what is compared, errors included
            reply = received[before] if len(received) > before else None
            print(json.dumps({"service": service, "call": i, "reply": reply}), flush=True)
