"""A Python nameko service whose workers call Rust services, for
interop_python_caller.rs.

Environment:
  PY_SERVICE_NAME  this service's name
  PERSON_SERVICE   the Rust person-service it calls (nameko's RpcProxy)
  CTX_SERVICE      a Rust service whose `stack()` returns the call-id stack
                   it received
"""
import os

from nameko.exceptions import RemoteError
from nameko.extensions import DependencyProvider
from nameko.rpc import ReplyListener, RpcProxy, rpc


class WorkerContext(DependencyProvider):
    def get_dependency(self, worker_ctx):
        return worker_ctx


class ReplyQueues(DependencyProvider):
    """The names of this container's RpcProxy reply queues. They are
    durable and outlive the process (x-expires 5 min), so the test deletes
    them."""

    def get_dependency(self, worker_ctx):
        return sorted(
            ext.queue.name
            for ext in self.container.subextensions
            if isinstance(ext, ReplyListener)
        )


class PersonCaller:
    name = os.environ["PY_SERVICE_NAME"]

    person = RpcProxy(os.environ["PERSON_SERVICE"])
    ctx = RpcProxy(os.environ["CTX_SERVICE"])
    worker = WorkerContext()
    reply_queues = ReplyQueues()

    @rpc
    def ping(self):
        return {"reply_queues": self.reply_queues}

    @rpc
    def register(self, first_name, last_name, age):
        """Creates a person on the Rust person-service, reads it back, and
        asks the Rust ctx service, from the same worker, which call-id stack
        it received."""
        pid = self.person.create(first_name, last_name, age=age)
        return {
            "id": pid,
            "get": self.person.get(pid),
            "list": self.person.list(after_id=pid - 1, limit=1),
            "own_stack": self.worker.call_id_stack,
            "rust_stack": self.ctx.stack(),
        }

    @rpc
    def call_person(self, method, *args, **kwargs):
        """Any person method; its errors propagate as nameko propagates
        them."""
        return getattr(self.person, method)(*args, **kwargs)

    @rpc
    def get_or_error(self, pid):
        """get, with the person-service's error caught in the worker."""
        try:
            return {"result": self.person.get(pid)}
        except RemoteError as e:
            return {"exc_type": e.exc_type, "value": e.value}
