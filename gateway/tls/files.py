"""Certificate and key files: a pair loaded without a password prompt, and the checks the
config loader reports with FILE:LINE (README, "TLS and certificates").

The config loader imports this module: it imports neither aiohttp nor the rest of the
gateway, so `gateway check` stays quick.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509


class EncryptedKey(ValueError):
    """Raised by the password callback: the gateway never prompts for a key's password."""


def _no_password() -> bytes:
    raise EncryptedKey("the key is encrypted; the gateway needs it unencrypted")


def load_pair(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    """Load `cert` and `key` into `context`; an encrypted key raises EncryptedKey."""
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    context.load_cert_chain(cert, key, password=_no_password)


def pair_problem(cert: Path, key: Path) -> tuple[str, str] | None:
    """Why `cert` and `key` cannot serve TLS together, as (`"cert"` or `"key"`, message).

    None when they load together, exactly as the listener will load them.
    """
    for which, path in (("cert", cert), ("key", key)):
        problem = _file_problem(path)
        if problem is not None:
            return which, problem
    try:
        x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError):
        return "cert", f"{cert}: no PEM certificate in it"
    try:
        load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key)
    except EncryptedKey:
        return "key", f"{key} is encrypted; the gateway needs it unencrypted (keep it mode 0600)"
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key", f"{key} is not the private key of {cert}"
        return "key", f"{key}: not a PEM private key ({exc.reason or exc.strerror})"
    except OSError as exc:
        return "key", f"{key}: cannot load ({exc.strerror or exc})"
    return None


def ca_problem(ca: Path) -> str | None:
    """Why `ca` cannot serve as a CA bundle, or None."""
    problem = _file_problem(ca)
    if problem is not None:
        return problem
    try:
        ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError:
        return f"{ca}: no PEM CA certificate in it"
    except OSError as exc:
        return f"{ca}: cannot load ({exc.strerror or exc})"
    return None


def _file_problem(path: Path) -> str | None:
    try:
        with path.open("rb"):
            return None
    except FileNotFoundError:
        return f"{path}: no such file"
    except IsADirectoryError:
        return f"{path}: is a folder, not a file"
    except OSError as exc:
        return f"{path}: cannot read ({exc.strerror or exc})"
