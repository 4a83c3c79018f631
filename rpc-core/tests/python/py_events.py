"""A Python nameko service for the events interop tests.

It listens to events from SOURCE (a Rust service) with each handler type and
reports every event to the Rust service RECORDER (method `record`), and it
dispatches its own events on request (`emit`). Its name is PY_SERVICE_NAME.
"""
import os

from nameko.events import BROADCAST, SINGLETON, EventDispatcher, event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy, rpc

SOURCE = os.environ["SOURCE"]


class WorkerContext(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return worker_ctx


class PyEvents:
    name = os.environ["PY_SERVICE_NAME"]

    worker = WorkerContext()
    recorder = RpcProxy(os.environ["RECORDER"])
    dispatch = EventDispatcher()

    @rpc
    def ping(self):
        return "pong"

    @rpc
    def emit(self, event_type, data):
        self.dispatch(event_type, data)
        return self.worker.call_id

    def _record(self, kind, data):
        self.recorder.record(kind, data, self.worker.call_id_stack)

    @event_handler(SOURCE, "ping")
    def on_ping_pool(self, data):
        self._record("service_pool", data)

    @event_handler(SOURCE, "ping", handler_type=SINGLETON)
    def on_ping_singleton(self, data):
        self._record("singleton", data)

    @event_handler(SOURCE, "ping", handler_type=BROADCAST, reliable_delivery=False)
    def on_ping_broadcast(self, data):
        self._record("broadcast", data)
