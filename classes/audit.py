"""audit: the audit log of state-changing calls (auth/audit.py), read by pool-admins.

Not a stored class: rows live in their own SQLite table, raise no events and are read only
through these two messages, oldest first, at most 10,000 per call (page with the last id).
"""
from classes.enums import ENUMS
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import POOL_ADMIN

_RECORDS = T.Set(T.Record("audit"))


def get_records(ctx, after, limit):
    return ctx.services.audit.after(after, limit)


def get_since(ctx, since):
    return ctx.services.audit.since(since.seconds)


audit = declare_class(
    "audit", "One state-changing call: who made it, through which transport and from where, on which "
             "objects, and its outcome. Reads are not logged; failed logins and refused calls are.",
    fields("id:i timestamp:dt user:s via:s address:s method:s objects:s[] uuids:s[] outcome:s task:s", ENUMS,
           docs={"user": "the session's user, or for a login the name it tried",
                 "via": "the transport: http, https, unix, stdio or ssh",
                 "address": "the client's address and port, as the transport saw it",
                 "method": "the method as called (`Async.` included)",
                 "objects": "`class/ref` of each object the call named, and of the object it created",
                 "uuids": "the uuids of `objects`, in the same order (empty when unknown)",
                 "outcome": "`ok`, or the error code",
                 "task": "for an Async call: its task"}),
    [
        message("get_records", "Return the audit records with an id greater than `after`, oldest first, at most `limit` (and 10,000).",
                params=[param(T.Int, "after", "the id of the last record already read (0: from the oldest kept)"),
                        param(T.Int, "limit", "how many records at most", default=1000)],
                result=_RECORDS, roles=POOL_ADMIN, impl=get_records),
        message("get_since", "Return the audit records written at or after the given time, oldest first, at most 10,000.",
                params=[param(T.Timestamp, "since", "the earliest time")],
                result=_RECORDS, roles=POOL_ADMIN, impl=get_since),
    ],
    events=False, stored=False,
)
