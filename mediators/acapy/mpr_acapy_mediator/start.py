"""The container's entry point: the mediator's settings, from environment variables named like
the Credo mediator's (mediators/credo), turned into `aca-py start` arguments; then aca-py
replaces this process (PID 1: it takes SIGTERM itself). Secrets go to ACA-Py and the plugin
through their environment variables, never on the command line, and are never printed. A bad
setting stops it with exit 2 naming the variable."""

import json
import os
import re
import sys

MODES = ("websocket", "socketdock")


class SettingError(ValueError):
    pass


def setting(env, name, default=None, *, pattern=None, what=None):
    value = env.get(name) or default
    if value is None:
        raise SettingError(f"{name} is required")
    if pattern and not re.fullmatch(pattern, value):
        raise SettingError(f"{name} must be {what}; got {value!r}")
    return value


def port(env, name, default):
    value = setting(env, name, default, pattern=r"[0-9]{1,5}", what="a port number")
    if not 0 < int(value) < 65536:
        raise SettingError(f"{name} must be a port number; got {value!r}")
    return value


def command(env):
    """The aca-py arguments and the environment it runs with."""
    mpr_url = setting(env, "MPR_URL", "ws://127.0.0.1:3100", pattern=r"wss?://\S+", what="a ws:// or wss:// URL")
    wallet_key = setting(env, "WALLET_KEY")
    bind = setting(env, "BIND_ADDRESS", "0.0.0.0")
    http_port = port(env, "HTTP_PORT", "3001")
    mode = setting(env, "INBOUND_MODE", "websocket", pattern="|".join(MODES), what=" or ".join(MODES))
    if mode == "websocket":
        inbound = ["-it", "ws", bind, port(env, "WS_PORT", "3002")]
        recipients = f"ws://127.0.0.1:{inbound[-1]}"
    else:
        inbound = ["-it", "mpr_acapy.socketdock", bind, port(env, "SOCKETDOCK_PORT", "3003")]
        recipients = None
    default_endpoints = ",".join(filter(None, [f"http://127.0.0.1:{http_port}", recipients]))
    endpoints = [e.strip() for e in setting(env, "ENDPOINTS", default_endpoints).split(",") if e.strip()]
    if not endpoints or not all(re.fullmatch(r"(https?|wss?)://\S+", e) for e in endpoints):
        raise SettingError(f"ENDPOINTS must be comma-separated http(s):// and ws(s):// URLs; got {env.get('ENDPOINTS')!r}")

    child = dict(env)
    child["ACAPY_WALLET_KEY"] = wallet_key
    if env.get("MPR_TOKEN"):
        child["MPR_ACAPY_TOKEN"] = env["MPR_TOKEN"]
    wallet = ["--wallet-type", "askar", "--wallet-name", setting(env, "WALLET_ID", "mediator")]
    if env.get("POSTGRES_HOST"):
        user = setting(env, "POSTGRES_USER", "postgres")
        password = env.get("POSTGRES_PASSWORD", "")
        wallet += [
            "--wallet-storage-type", "postgres_storage",
            "--wallet-storage-config",
            json.dumps({"url": f"{env['POSTGRES_HOST']}:{port(env, 'POSTGRES_PORT', '5432')}", "max_connections": 10}),
        ]
        child["ACAPY_WALLET_STORAGE_CREDS"] = json.dumps({
            "account": user,
            "password": password,
            "admin_account": env.get("POSTGRES_ADMIN_USER") or user,
            "admin_password": env.get("POSTGRES_ADMIN_PASSWORD") or password,
        })

    args = [
        "aca-py", "start",
        "--label", setting(env, "AGENT_LABEL", "mpr ACA-Py mediator"),
        # Senders: answered once handled (a forward not stored: 503); GET /invitation.
        "-it", "mpr_acapy_mediator.http", bind, http_port,
        *inbound,
        "-ot", "http", "-ot", "ws",
        "-e", *endpoints,
        *wallet,
        "--auto-provision", "--no-ledger",
        "--open-mediation", "--auto-accept-requests", "--auto-accept-invites",
        "--emit-new-didcomm-mime-type",
        "--log-level", setting(env, "LOG_LEVEL", "info", pattern="debug|info|warning|error|critical", what="debug, info, warning, error or critical"),
        "--plugin", "mpr_acapy", "-o", f"mpr_acapy.url={mpr_url}",
    ]
    return args, child


def main():
    try:
        args, child = command(os.environ)
    except SettingError as error:
        print(f"mpr-acapy-mediator: {error}", file=sys.stderr)
        sys.exit(2)
    os.execvpe(args[0], args, child)


if __name__ == "__main__":
    main()
