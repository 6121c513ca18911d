"""The node's Ed25519 identity: one key file, created 0600 when missing, never silently replaced.

The file holds the libp2p protobuf encoding of the private key (the same bytes go-libp2p and
js-libp2p write), so a key made here can be used by other libp2p tools and vice versa.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from ._errors import IdentityError
from ._events import PeerId

MAX_KEY_FILE = 4096


def new_identity() -> KeyPair:
    """A fresh Ed25519 key pair (not written anywhere)."""
    return create_new_key_pair()


def peer_id_of(key_pair: KeyPair) -> PeerId:
    """The peer id of a key pair (as `new_identity` or `read_identity` return it)."""
    return PeerId(ID.from_pubkey(key_pair.public_key).to_base58())


def write_identity(path: Path, key_pair: KeyPair) -> None:
    """Write a key file with mode 0600, refusing to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = key_pair.private_key.serialize()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the target exists: two processes racing never clobber each other.
        os.link(tmp, path)
    except FileExistsError:
        raise IdentityError(f"{path}: identity key already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)


def read_identity(path: Path) -> KeyPair:
    """Read a key file, checking that nobody but the owner can read it."""
    try:
        st = path.stat()
    except PermissionError as exc:
        raise IdentityError(f"{path}: cannot read identity key ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise IdentityError(f"{path}: identity key is not a regular file")
    if st.st_mode & 0o077:
        raise IdentityError(
            f"{path}: identity key is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod 600 {path}")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise IdentityError(f"{path}: cannot read identity key ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise IdentityError(f"{path}: not an identity key (file larger than {MAX_KEY_FILE} bytes)")
    try:
        private_key = deserialize_private_key(data)
    except Exception:
        raise IdentityError(
            f"{path}: identity key is corrupt (not a libp2p private key); "
            "move it away to create a new identity (the peer id will change)") from None
    if private_key.get_type() != KeyType.Ed25519:
        raise IdentityError(f"{path}: identity key is {private_key.get_type().name}, expected Ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def load_or_create_identity(path: Path | None) -> KeyPair:
    """The key at `path` (created when missing), or a throwaway key when `path` is None."""
    if path is None:
        return new_identity()
    if not path.exists():
        try:
            write_identity(path, new_identity())
        except OSError as exc:
            raise IdentityError(f"{path}: cannot create identity key ({exc.strerror})") from None
    return read_identity(path)
