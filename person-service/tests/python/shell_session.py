# A `nameko shell` session against a person-service, piped to the shell's
# stdin by interop_shell.rs. The service's name comes from PERSON_SERVICE.
#
# stdin is not a terminal, so nameko runs its plain console: this is read
# one line at a time as if typed, so a blank line must end every block and
# none may appear inside one. An uncaught exception ends the shell with a
# non-zero status. `n` is the shell's helper (`n.rpc` is its
# ClusterRpcProxy, which has no timeout).
#
# Every result is printed as `JSON {"label": ..., ...}`; the console's
# prompts (">>> ", "... ") come before it on the same line.
import json
import os
from nameko.exceptions import RemoteError
svc = n.rpc[os.environ["PERSON_SERVICE"]]
MISSING = 987654321
def emit(label, **fields):
    print("JSON " + json.dumps(dict(label=label, **fields)), flush=True)

def attempt(label, fn):
    try:
        result = fn()
    except RemoteError as e:
        emit(label, raised="RemoteError", module=type(e).__module__, exc_type=e.exc_type, value=e.value, text=str(e))
    except Exception as e:
        emit(label, raised=type(e).__name__, module=type(e).__module__, args=list(e.args))
    else:
        emit(label, result=result)

emit("reply_queue", result=n.rpc._reply_listener.queue.name)
ada = svc.create("Ada", "Lovelace", 36)
emit("create_positional", result=ada)
grace = svc.create(first_name="Grace", last_name="Hopper", age=85, member=True)
emit("create_keyword", result=grace)
zoe = svc.create("Zoë", "Ñúñez 😀", 0, member=False)
emit("create_mixed", result=zoe)
emit("ids", result=[ada, grace, zoe])
attempt("get", lambda: svc.get(ada))
attempt("get_keyword", lambda: svc.get(id=grace))
attempt("get_unicode", lambda: svc.get(zoe))
attempt("list", lambda: svc.list())
attempt("list_page_1", lambda: svc.list(limit=2))
attempt("list_page_2", lambda: svc.list(limit=2, after_id=grace))
attempt("list_positional", lambda: svc.list(1, ada))
attempt("list_after_last", lambda: svc.list(after_id=zoe))
attempt("update", lambda: svc.update(ada, age=37, member=True))
attempt("update_name", lambda: svc.update(grace, first_name="Amazing Grace"))
attempt("get_updated", lambda: svc.get(ada))
attempt("delete", lambda: svc.delete(zoe))
attempt("get_deleted", lambda: svc.get(zoe))
attempt("delete_again", lambda: svc.delete(zoe))
attempt("list_after_delete", lambda: svc.list())
attempt("get_missing", lambda: svc.get(MISSING))
attempt("update_missing", lambda: svc.update(MISSING, age=1))
attempt("create_empty_first_name", lambda: svc.create("", "Hopper", 1))
attempt("create_age_out_of_range", lambda: svc.create("Old", "Timer", 200))
attempt("create_age_wrong_type", lambda: svc.create("Old", "Timer", "old"))
attempt("update_empty_last_name", lambda: svc.update(ada, last_name=""))
attempt("list_limit_zero", lambda: svc.list(limit=0))
attempt("method_not_found", lambda: svc.nosuch(1))
attempt("signature_too_few", lambda: svc.get())
attempt("signature_too_many", lambda: svc.get(ada, 2))
attempt("signature_unknown_keyword", lambda: svc.get(ada, bogus=1))
attempt("signature_twice", lambda: svc.get(ada, id=ada))
attempt("signature_create_one", lambda: svc.create("only-one"))
handles = [svc.get.call_async(ada) for _ in range(10)]
emit("call_async", result=[h.result()["age"] for h in handles])
# Registering classes under person-service's exc_paths makes them typed.
import person_service.exceptions
attempt("typed_not_found", lambda: svc.get(MISSING))
attempt("typed_invalid", lambda: svc.create("", "Hopper", 1))
emit("done", result=True)
