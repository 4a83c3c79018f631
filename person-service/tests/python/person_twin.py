"""A Python nameko service under the same name as a Rust person-service
(PERSON_SERVICE_NAME), so both consume one `rpc-{name}` queue, for
interop_mixed.rs.

It answers `get(id)` with a record of its own, so a caller can tell which
instance answered. Every other method is MethodNotFound here.
"""
import os

from nameko.rpc import rpc


class PersonTwin:
    name = os.environ["PERSON_SERVICE_NAME"]

    @rpc
    def get(self, id):
        return {
            "id": id,
            "first_name": "Python",
            "last_name": "Twin",
            "age": 30,
            "member": False,
        }
