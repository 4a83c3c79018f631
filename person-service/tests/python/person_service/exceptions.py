"""person-service's errors as Python classes a nameko client can register.

nameko rebuilds a remote error as a typed exception when the caller's
process has a class registered (``deserialize_to_instance``) under the
error's ``exc_path``, which is ``<module>.<ClassName>``. person-service
sends ``person_service.exceptions.PersonNotFound`` and so on, so importing
this module (as ``person_service.exceptions``) is what turns its
RemoteErrors into these classes, with the ``exc_args`` as their args
(strings, as nameko stringifies every non-string argument).
"""
from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class PersonNotFound(Exception):
    """No person has the id. args: (id,)"""


@deserialize_to_instance
class ValidationError(Exception):
    """A field breaks a rule or has the wrong type. args: (field, message)"""


@deserialize_to_instance
class StorageError(Exception):
    """The database failed. args: (message,)"""
