"""event: notifications of changes, as a long poll over the server's change log."""
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import Field, declare_class, fields, message, param

_CLASSES = param(T.Set(T.String), "classes", "the classes to watch: '*', a class name, or 'class/ref'")

event = declare_class(
    "event", "Asynchronous event registration and handling.",
    [*fields("id:i timestamp:dt class:s operation:s ref:s ~obj_uuid:s", ENUMS),
     # xapi's event record has one more field, outside its IDL (its docs are written by hand)
     Field("snapshot", T.Any_, doc="the record of the object after the change; absent for `del` in event.from")],
    [
        message("register", "Registers this session with the event system for a set of given classes (deprecated: use event.from).",
                params=[_CLASSES], impl=lambda ctx, classes: ctx.services.events.register(ctx, classes),
                errors=(E.EVENT_SUBSCRIPTION_PARSE_FAILURE,), changes_nothing=True),
        message("unregister", "Removes this session's registration with the event system for a set of given classes.",
                params=[_CLASSES], impl=lambda ctx, classes: ctx.services.events.unregister(ctx, classes),
                changes_nothing=True),
        message("next", "Blocking call which returns a (possibly empty) batch of events (deprecated: use event.from).",
                result=T.Set(T.Any_), impl=lambda ctx: ctx.services.events.next(ctx),
                errors=(E.SESSION_NOT_REGISTERED, E.EVENTS_LOST), changes_nothing=True),
        message("from", "Blocking call which returns a new token and a (possibly empty) batch of events, coalesced to one per object.",
                params=[_CLASSES, param(T.String, "token", "a token from a previous call, or '' for everything"),
                        param(T.Float, "timeout", "return after this many seconds if nothing has happened")],
                result=T.Any_, impl=lambda ctx, classes, token, timeout: ctx.services.events.event_from(ctx, classes, token, timeout),
                errors=(E.EVENT_FROM_TOKEN_PARSE_FAILURE, E.EVENT_SUBSCRIPTION_PARSE_FAILURE, E.SESSION_INVALID),
                changes_nothing=True),
        message("get_current_id", "Return the ID of the most recent event.", result=T.Int,
                impl=lambda ctx: ctx.store.last_id),
        message("inject", "Injects an artificial event on the given object and returns the corresponding token.",
                params=[param(T.String, "class", "class of the object"), param(T.String, "ref", "A reference to the object")],
                result=T.String, impl=lambda ctx, cls, ref: ctx.services.events.inject(ctx, cls, ref),
                errors=(E.HANDLE_INVALID,), changes_nothing=True),
    ],
    events=False, stored=False,
)
