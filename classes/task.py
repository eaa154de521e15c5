"""task: the record of a long-running or asynchronous call.

As in xapi, anyone may create tasks, but only a task's owner (the user whose call or task.create
made it: ``other_config["owner"]``) may destroy, cancel or update it; others need xapi's
``task.destroy/any`` permission (pool-operator and up), else RBAC_PERMISSION_DENIED names it.
The owner key is the server's record and keeps its value whatever other_config a caller sets.
"""
from auth.rbac import EXTRA_PERMISSIONS, TASK_ANY, denied
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param

_SELF = param(T.Ref("task"), "self", "Reference to the task object")
OWNER = "owner"


def _assert_may_change(ctx, task) -> dict:
    rec = ctx.store.get("task", task)
    if rec["other_config"].get(OWNER) != ctx.user and TASK_ANY not in ctx.permissions:
        raise denied(TASK_ANY, EXTRA_PERMISSIONS[TASK_ANY])
    return rec


def create(ctx, label, description):
    return ctx.services.tasks.create(label, description, ctx)


def destroy(ctx, self):
    _assert_may_change(ctx, self)
    ctx.store.delete("task", self)


def cancel(ctx, task):
    _assert_may_change(ctx, task)
    ctx.services.tasks.cancel(task)


def _setter(field, convert=lambda v: v):
    def set_field(ctx, self, value):
        _assert_may_change(ctx, self)
        ctx.store.update("task", self, {field: convert(value)})
    return set_field


def set_other_config(ctx, self, value):
    _assert_may_change(ctx, self)
    value = {k: v for k, v in value.items() if k != OWNER}

    def keep_owner(rec):             # read and written in one step: the owner is the record's
        owner = rec["other_config"].get(OWNER)
        return {"other_config": {**value, OWNER: owner} if owner is not None else value}
    ctx.store.modify("task", self, keep_owner)


task = declare_class(
    "task", "A long-running asynchronous task.",
    fields("""uuid:s name_label:s name_description:s allowed_operations:task_allowed_operations[]
              current_operations:{s:task_allowed_operations} created:dt finished:dt status:task_status_type
              resident_on:@host progress:f type:s result:s error_info:s[] other_config*:s2s subtask_of:@task
              subtasks:@task[] backtrace:s""", ENUMS, defaults={"backtrace": "()"}),
    [
        message("create", "Create a new task object which must be manually destroyed.",
                params=[param(T.String, "label", "short label for the new task"),
                        param(T.String, "description", "longer description for the new task")],
                result=T.Ref("task"), impl=create),
        message("destroy", "Destroy the task object.", params=[_SELF], impl=destroy),
        message("cancel", "Request that a task be cancelled. A task that cannot be cancelled in its current state gives OPERATION_NOT_ALLOWED.",
                params=[param(T.Ref("task"), "task", "The task")], impl=cancel, errors=(E.OPERATION_NOT_ALLOWED,)),
        message("set_status", "Set the task status.", params=[_SELF, param(ENUMS["task_status_type"], "value", "task status value to be set")],
                impl=_setter("status")),
        message("set_progress", "Set the task progress.", params=[_SELF, param(T.Float, "value", "Task progress value to be set")],
                impl=_setter("progress")),
        message("set_result", "Set the task result.", params=[_SELF, param(T.String, "value", "Task result to be set")],
                impl=_setter("result")),
        message("set_error_info", "Set the task error info.", params=[_SELF, param(T.Set(T.String), "value", "Task error info to be set")],
                impl=_setter("error_info")),
    ],
    persisted=True, hooks={"set_other_config": set_other_config},
)
