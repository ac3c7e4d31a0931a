"""ZeroMQ CURVE for streams that leave the machine (``docs/protocol.md``, "Security").

By default every btomo address is on 127.0.0.1 and nothing is encrypted. For a remote
detector, CURVE gives encryption and authentication: the sender (which binds, like a detector)
is the CURVE server, the receiver the CURVE client. Keys are the certificate files of
``zmq.auth.create_certificates`` (``NAME.key`` public, ``NAME.key_secret`` secret)::

    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'sender')"
    python -c "import zmq.auth; zmq.auth.create_certificates('keys', 'receiver')"

Receiver: ``stream.curve_server_public_key = keys/sender.key`` and
``stream.curve_secret_key = keys/receiver.key_secret``. Sender: ``stream.curve_secret_key =
keys/sender.key_secret`` and, to admit only known receivers, ``stream.curve_authorized_dir`` =
a directory holding their public ``.key`` files.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zmq

log = logging.getLogger(__name__)

__all__ = ["CurveError", "configure_curve_client", "configure_curve_server"]


class CurveError(ValueError):
    """CURVE was asked for but cannot be set up; the message says why."""


def _load(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth  # noqa: PLC0415

    if not zmq.has("curve"):
        raise CurveError("this libzmq was built without CURVE support")
    p = Path(path)
    if not p.is_file():
        raise CurveError(f"CURVE certificate not found: {p}")
    try:
        public, private = zmq.auth.load_certificate(p)
    except (ValueError, OSError) as exc:
        raise CurveError(f"{p}: not a ZeroMQ certificate ({exc})") from None
    if secret and not private:
        raise CurveError(f"{p}: expected a secret certificate (NAME.key_secret), got a public one")
    return public, private


def configure_curve_client(sock: zmq.Socket, stream: Any) -> bool:
    """Make ``sock`` a CURVE client when ``stream.curve_server_public_key`` is set."""
    if not stream.curve_server_public_key:
        return False
    server_public, _ = _load(stream.curve_server_public_key, secret=False)
    public, secret = _load(stream.curve_secret_key, secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    log.info("CURVE: encrypted stream, server key %s", stream.curve_server_public_key)
    return True


def configure_curve_server(sock: zmq.Socket, stream: Any, context: zmq.Context) -> Any:
    """Make ``sock`` a CURVE server when ``stream.curve_secret_key`` is set.

    Returns the running authenticator (stop it when done) when ``curve_authorized_dir`` limits
    the clients, else None.
    """
    if not stream.curve_secret_key:
        return None
    public, secret = _load(stream.curve_secret_key, secret=True)
    auth = None
    if stream.curve_authorized_dir:
        from zmq.auth.thread import ThreadAuthenticator  # noqa: PLC0415

        location = Path(stream.curve_authorized_dir)
        if not location.is_dir():
            raise CurveError(f"CURVE authorized-clients directory not found: {location}")
        auth = ThreadAuthenticator(context)
        auth.start()
        auth.configure_curve(domain="*", location=str(location))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    log.info("CURVE server%s", f", clients from {stream.curve_authorized_dir}" if auth else ", any client with the key")
    return auth
