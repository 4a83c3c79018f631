"""A Python nameko person service: the Rust person-service's RPC contract
over a dict in memory, for interop_python_person.rs.

Same methods, signatures, defaults, id order and errors as
person-service/src/rpc.rs and domain.rs:

  create(first_name, last_name, age, member=False) -> id
  get(id) -> record
  list(limit=None, after_id=None) -> records with id > after_id, in id order
  update(id, first_name=None, last_name=None, age=None, member=None) -> record
  delete(id) -> None

PersonNotFound(id) and ValidationError(field, message). Ids count up from
1 and are never reused. Each change dispatches its event from this service
(exchange `{name}.events`), from inside the worker so the caller's call-id
stack travels with it: person_created and person_updated with the record,
person_deleted with {"id": id}. The name comes from PERSON_SERVICE_NAME.
"""
import itertools
import os
import unicodedata

from nameko.events import EventDispatcher
from nameko.rpc import rpc

from person_service.exceptions import PersonNotFound, ValidationError

MAX_NAME_CHARS = 100
MAX_AGE = 150
MAX_PAGE = 10000


# Like the Rust service, every argument's type is checked first (in
# parameter order, as its arguments are bound), then the rules.

def of_type(field, value, kind):
    """`value` when it has the JSON type `kind`: str, int or bool."""
    if kind is int:
        # JSON true/false arrive as bools, which Python counts as ints.
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind is bool:
        ok = isinstance(value, bool)
        expected = "a boolean"
    else:
        ok = isinstance(value, str)
        expected = "a string"
    if not ok:
        raise ValidationError(
            field, "invalid type: {!r}, expected {}".format(value, expected))
    return value


def check_name(field, value):
    if not value.strip():
        raise ValidationError(field, "must not be empty")
    if len(value) > MAX_NAME_CHARS:
        raise ValidationError(
            field, "must be at most {} characters".format(MAX_NAME_CHARS))
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValidationError(field, "must not contain control characters")
    return value


def check_age(value):
    if not 0 <= value <= MAX_AGE:
        raise ValidationError(
            "age", "must be between 0 and {}".format(MAX_AGE))
    return value


def optional(field, value, kind):
    return None if value is None else of_type(field, value, kind)


class PersonFixture:
    name = os.environ["PERSON_SERVICE_NAME"]

    dispatch = EventDispatcher()

    # Class attributes: one store for every worker of the process.
    people = {}
    ids = itertools.count(1)

    def find(self, id):
        try:
            return self.people[id]
        except KeyError:
            raise PersonNotFound(id)

    @rpc
    def create(self, first_name, last_name, age, member=False):
        of_type("first_name", first_name, str)
        of_type("last_name", last_name, str)
        of_type("age", age, int)
        of_type("member", member, bool)
        person = {
            "first_name": check_name("first_name", first_name),
            "last_name": check_name("last_name", last_name),
            "age": check_age(age),
            "member": member,
        }
        id = next(self.ids)
        self.people[id] = dict(id=id, **person)
        self.dispatch("person_created", dict(self.people[id]))
        return id

    @rpc
    def get(self, id):
        return dict(self.find(of_type("id", id, int)))

    @rpc
    def list(self, limit=None, after_id=None):
        limit = optional("limit", limit, int)
        after_id = optional("after_id", after_id, int)
        if limit is not None and not 1 <= limit <= MAX_PAGE:
            raise ValidationError(
                "limit", "must be between 1 and {}".format(MAX_PAGE))
        after = 0 if after_id is None else after_id
        page = [dict(self.people[i]) for i in sorted(self.people) if i > after]
        return page if limit is None else page[:limit]

    @rpc
    def update(self, id, first_name=None, last_name=None, age=None,
               member=None):
        of_type("id", id, int)
        fields = {
            "first_name": optional("first_name", first_name, str),
            "last_name": optional("last_name", last_name, str),
            "age": optional("age", age, int),
            "member": optional("member", member, bool),
        }
        rules = {"first_name": lambda v: check_name("first_name", v),
                 "last_name": lambda v: check_name("last_name", v),
                 "age": check_age,
                 "member": lambda v: v}
        changes = {k: rules[k](v) for k, v in fields.items() if v is not None}
        # The changes are checked before the id is looked up.
        person = self.find(id)
        person.update(changes)
        self.dispatch("person_updated", dict(person))
        return dict(person)

    @rpc
    def delete(self, id):
        self.find(of_type("id", id, int))
        del self.people[id]
        self.dispatch("person_deleted", {"id": id})
