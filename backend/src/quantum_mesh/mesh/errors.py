"""Errors of the execution plane. Transport failures become these before leaving ``mesh/``."""

from __future__ import annotations

from quantum_mesh.errors import QMeshError
from quantum_mesh.mesh.protocol import ERR_FRAME_TOO_LARGE, ERR_PROTOCOL


class MeshError(QMeshError):
    """Base of every mesh failure: callers that only care "did the call work" catch this."""

    code = "mesh_error"


class PeerUnreachable(MeshError):
    """The peer could not be dialled, or the connection died before the reply arrived."""

    code = "peer_unreachable"


class PeerNotReached(PeerUnreachable):
    """No connection to the peer could be made: the request never left this host, so the
    peer did not see it (a real fault of the link or the peer, but not an execution)."""


class InvokeTimeout(MeshError):
    """No complete reply within the caller's timeout."""

    code = "invoke_timeout"


class RemoteError(MeshError):
    """The peer answered with ``ok: false``; ``code`` is the remote, machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, details={"remote_code": code})
        self.code = code


class FrameTooLarge(MeshError):
    """A frame's declared or encoded length exceeds the configured limit."""

    code = ERR_FRAME_TOO_LARGE


class ProtocolError(MeshError):
    """The bytes on the wire do not follow docs/wire-protocol.md (truncated, not JSON, ...)."""

    code = ERR_PROTOCOL

    def __init__(self, message: str, *, code: str = ERR_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


class AdvertRejected(MeshError):
    """An advert failed validation; ``reason`` is one of the ``advert_stats`` keys."""

    code = "advert_rejected"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, details={"reason": reason})
        self.reason = reason
