"""session: a logged-in user.  Refs are secret, so sessions are not listable."""
from classes.enums import ENUMS
from xenapi import errors as E
from xenapi.errors import XenAPIError
from xenapi.model import types as T
from xenapi.model.declare import declare_class, fields, message, param
from xenapi.model.roles import READ_ONLY


def login_with_password(ctx, uname, pwd, version, originator):
    return ctx.services.sessions.login(uname, pwd, originator, ctx.identity)


def logout(ctx):
    ctx.services.sessions.logout(ctx.session_ref)


def change_password(ctx, old_pwd, new_pwd):
    # the old password is checked as a login checks it: throttled, so a stolen session cannot guess it
    ctx.services.sessions.authenticate(ctx.user, old_pwd, ctx.identity)
    if not new_pwd:
        raise XenAPIError(E.INVALID_VALUE, "new_pwd", "")
    ctx.services.users.set_password(ctx.user, new_pwd)


def get_all_subject_identifiers(ctx):
    return []


session = declare_class(
    "session", "A session: a user's authenticated connection to the server.",
    fields("""uuid:s this_host:@host this_user:@user last_active:dt pool:b other_config*:s2s is_local_superuser:b
              subject:@subject validation_time:dt auth_user_sid:s auth_user_name:s rbac_permissions^:s[]
              tasks:@task[] parent^:@session originator:s client_certificate:b""", ENUMS),
    [
        message("login_with_password", "Attempt to authenticate the user, returning a session reference if successful.",
                params=[param(T.String, "uname", "Username for login."),
                        param(T.String, "pwd", "Password for login."),
                        param(T.String, "version", "Client API version.", default="1.1"),
                        param(T.String, "originator", "Key string for distinguishing different API users sharing the same login name.", default="")],
                result=T.Ref("session"), session=False, impl=login_with_password,
                errors=(E.SESSION_AUTHENTICATION_FAILED, E.SESSION_AUTHORIZATION_FAILED)),
        message("logout", "Log out of a session.", impl=logout),
        message("change_password", "Change the account password of the session's user; the old password must be given.",
                params=[param(T.String, "old_pwd", "Old password for account"),
                        param(T.String, "new_pwd", "New password for account")],
                impl=change_password, errors=(E.SESSION_AUTHENTICATION_FAILED, E.INVALID_VALUE)),
        message("get_all_subject_identifiers", "Return a list of all the user subject-identifiers of all existing sessions (local users have none).",
                result=T.Set(T.String), impl=get_all_subject_identifiers),
    ],
    persisted=True, events=False, listable=False, writer_roles=READ_ONLY,
)
