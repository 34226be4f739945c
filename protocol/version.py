"""The protocol version, the rule for which peers can talk to each other, and the release version.

Every frame carries `v`, the protocol version it is written in. A peer decodes only frames whose `v`
it supports, with one exception: the shape of an `error` frame never changes, so a client can
always read the refusal of a coordinator that speaks another version.

Within one version the schema is frozen: no field is added, removed or retyped, and unknown fields
are refused. Any change to a message is a new version. A coordinator may support a range of
versions at once (`MIN_PROTOCOL_VERSION` .. `PROTOCOL_VERSION`) so that volunteers can update at
their own pace; a client speaks exactly one.

    >>> check_version(PROTOCOL_VERSION)
    >>> check_version(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    protocol.errors.ProtocolError: version_mismatch: Your app speaks protocol version 0, ... Update the ...
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final, Literal

from protocol.errors import ErrorCode, ProtocolError

PROTOCOL_VERSION: Final = 5
"""The version this code writes."""

MIN_PROTOCOL_VERSION: Final = 5
"""The oldest version this code still reads."""

SUPPORTED_PROTOCOL_VERSIONS: Final = range(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION + 1)


def _release_version() -> str:
    try:
        return version("commonweights")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0+source"


RELEASE_VERSION: Final = _release_version()
"""The Commonweights release this code belongs to: `version` in pyproject.toml, read from the installed
package's metadata so it is written down once. Peers report it in `hello` and `welcome`, the REST API
in /api/health and the CLI in --version; compatibility is decided by the protocol version alone."""

Peer = Literal["volunteer", "coordinator"]


def is_supported(protocol_version: int) -> bool:
    """Whether a frame written in `protocol_version` can be read here."""
    return protocol_version in SUPPORTED_PROTOCOL_VERSIONS


def check_version(protocol_version: int, *, peer: Peer = "volunteer") -> None:
    """Raise `ProtocolError(version_mismatch)` unless frames in `protocol_version` can be read here.

    `peer` is who sent the version: the message is written for the volunteer either way, since the
    volunteer is the one who can act (by updating the app).
    """
    if is_supported(protocol_version):
        return
    ours = _describe(SUPPORTED_PROTOCOL_VERSIONS)
    theirs = f"protocol version {protocol_version}"
    update_app = "Update the Commonweights app to the latest release and connect again."
    if peer == "volunteer" and protocol_version < MIN_PROTOCOL_VERSION:
        message = f"Your app speaks {theirs}, but this coordinator needs {ours}. {update_app}"
    elif peer == "volunteer":
        message = (
            f"Your app speaks {theirs}, newer than this coordinator supports ({ours}). Install an app "
            f"release that speaks {ours}, or ask the coordinator's admins to upgrade."
        )
    elif protocol_version > PROTOCOL_VERSION:
        message = f"The coordinator speaks {theirs}, but this app speaks {ours}. {update_app}"
    else:
        message = (
            f"The coordinator speaks {theirs}, older than this app supports ({ours}). Ask the "
            "coordinator's admins to upgrade it, or use an older app release."
        )
    raise ProtocolError(ErrorCode.VERSION_MISMATCH, message)


def _describe(versions: range) -> str:
    if len(versions) == 1:
        return f"protocol version {versions[0]}"
    return f"protocol versions {versions[0]} to {versions[-1]}"
