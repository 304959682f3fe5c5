"""Helper process for the store durability tests (run as a script, not collected by pytest).

usage: _store_writer.py CONFIG MODE PREFIX COUNT
  cli   — COUNT ``edgeproxy user new`` commands (via edgeproxy.cli.main) in this process
  bulk  — COUNT write transactions, each adding a user with 200 contacts; after each commit
          prints the index, so the parent knows which writes are committed
"""

from __future__ import annotations

import sys

from edgeproxy.cli import main
from edgeproxy.config import load_config
from edgeproxy.policy import operations as ops
from edgeproxy.policy.model import User
from edgeproxy.policy.store import Store


def run() -> int:
    config_path, mode, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "cli":
        for i in range(count):
            code = main(["user", "new", f"{prefix}{i}@contoso.test", "--config", config_path])
            if code != 0:
                return code
            print(i, flush=True)
        return 0
    config = load_config(config_path)
    store = Store.open(config.state_dir)
    contacts = tuple(f"contact{j}@gmail.com" for j in range(200))
    for i in range(count):
        user = User(f"sip:{prefix}{i}@contoso.test", name="x" * 500, contacts=contacts)
        ops.new_user(store, config.edge.domains, user)
        print(i, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run())
