"""A small Python nameko service for the interop tests.

Its name comes from PY_SERVICE_NAME and the Rust service it calls back
from RUST_SERVICE, so each test runs an isolated copy.
"""
import os

from nameko.extensions import DependencyProvider
from nameko.rpc import RpcProxy, rpc


class WorkerContext(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return worker_ctx


class PyService:
    name = os.environ["PY_SERVICE_NAME"]

    worker = WorkerContext()
    rust = RpcProxy(os.environ.get("RUST_SERVICE", "calc"))

    @rpc
    def ping(self):
        return "pong"

    @rpc
    def add(self, a, b=0):
        return a + b

    @rpc
    def fail(self, message):
        raise ValueError(message)

    @rpc
    def ctx(self):
        return {"stack": self.worker.call_id_stack, "data": self.worker.data}

    @rpc
    def call_rust(self, method, *args, **kwargs):
        return getattr(self.rust, method)(*args, **kwargs)
