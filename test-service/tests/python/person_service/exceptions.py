"""person-service's errors, under the module path the Rust service uses in
its exc_path (``person_service.exceptions.<Class>``), with the same args
and the same ``str`` (nameko sends it as the error's ``value``)."""
from nameko.exceptions import deserialize_to_instance


@deserialize_to_instance
class PersonNotFound(Exception):
    """No person has the id. args: (id,)"""

    def __str__(self):
        return "no person with id {}".format(self.args[0])


@deserialize_to_instance
class ValidationError(Exception):
    """A field breaks a rule or has the wrong type. args: (field, message)"""

    def __str__(self):
        return "{}: {}".format(*self.args)
