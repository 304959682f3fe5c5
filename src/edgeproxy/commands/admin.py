"""``edgeproxy admin set-password``: the password of the Control Panel (the web administration
served under ``/ui/`` on the admin listener when ``[admin] ui = true``).

Two logins exist: ``--role admin`` (the default; changes things, like the admin token) and
``--role read-only`` (the dashboard and the lists only). The password is read from a file or a
prompt that does not echo (never from the command line) and stored as an scrypt hash, mode
0600, in ``<state-dir>/ui-<role>.password``; ``--clear`` removes it. The admin token
(``[admin] token-file``) logs in as admin too.

``--json`` prints the change as ``{"kind": "admin-password", "before": …, "after": …,
"warnings": []}``, each side ``{"role": ROLE, "password-set": BOOL}`` (never the password or its
hash).
"""

from __future__ import annotations

import argparse

from edgeproxy.commands.common import (
    EXIT_OK,
    SubParsers,
    add_json_option,
    change_json,
    command_group,
    config_option_parent,
    load_args_config,
    refused,
)
from edgeproxy.commands.records import print_json
from edgeproxy.commands.secrets import add_secret_options, read_secret
from edgeproxy.ops.admin import (
    MIN_PASSWORD_CHARS,
    PanelRole,
    panel_password_path,
    write_panel_password,
)
from edgeproxy.policy.validation import ChangeRefused

#: The ``kind`` of an ``admin set-password --json`` change.
KIND = "admin-password"


def _record(role: PanelRole, is_set: bool) -> dict[str, object]:
    return {"role": role.value, "password-set": is_set}


def _set_password(args: argparse.Namespace) -> int:
    config = load_args_config(args)
    role = PanelRole(args.role)
    path = panel_password_path(config, role)
    existed = path.exists()
    if args.clear:
        path.unlink(missing_ok=True)
        headline = (f"Control Panel password for {role.value} removed ({path})" if existed
                    else f"no Control Panel password for {role.value} was set")
    else:
        try:
            password = read_secret("password", args.password_file)
        except ChangeRefused as exc:
            return refused(str(exc))
        if len(password) < MIN_PASSWORD_CHARS:
            return refused(f"refused: the password has fewer than {MIN_PASSWORD_CHARS} characters; nothing saved")
        write_panel_password(path, password)
        headline = f"Control Panel password for {role.value} saved as an scrypt hash in {path} (mode 0600)"
    if args.json:
        print_json(change_json(KIND, _record(role, existed), _record(role, not args.clear)))
    else:
        print(headline)
    return EXIT_OK


def register(sub: SubParsers) -> None:
    """``edgeproxy admin …``."""
    group = command_group(sub, "admin", "the Control Panel's logins (web administration under /ui/)")
    setpw = group.add_parser(
        "set-password",
        parents=[config_option_parent()],
        help="set the Control Panel password of a role (prompted twice, or --password-file; "
        "never on the command line); only its scrypt hash is stored, mode 0600, in the state dir",
        allow_abbrev=False,  # --password SECRET must not be taken for --password-file SECRET
    )
    setpw.add_argument(
        "--role",
        choices=[r.value for r in PanelRole],
        default=PanelRole.ADMIN.value,
        help="admin changes things; read-only sees the dashboard and the lists (default: admin)",
    )
    add_secret_options(
        setpw, "--password", "the password", prompt="the prompt (no option)",
        default=f"a prompt that does not echo, asking twice; at least {MIN_PASSWORD_CHARS} characters",
    )
    setpw.add_argument("--clear", action="store_true",
                       help="remove the role's password instead (default: set it)")
    add_json_option(setpw)
    setpw.set_defaults(handler=_set_password)
