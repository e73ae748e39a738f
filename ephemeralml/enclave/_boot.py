"""What an enclave does first on Nitro, before it can reach anything (ARCHITECTURE flow 5).

Inside a Nitro enclave the loopback interface is down (the Nitro init does not bring
it up), there is no route and no DNS. The enclave's only way out is vsock to its
parent: boto3 speaks HTTPS to ``kms.REGION.amazonaws.com`` through an ``https_proxy``
on the enclave's own loopback, a byte relay to the host's egress proxy
(:mod:`ephemeralml.host._egress`), which allows only that target. So, at start:

* :func:`loopback_up` brings ``lo`` up (``SIOCSIFFLAGS``, as ``ip link set lo up``);
* :func:`seed_rng` mixes random bytes from the NSM into the kernel's pool (written to
  ``/dev/urandom``: mixed in, not credited; the kernel's own generator is seeded
  from the NSM's hwrng by the Nitro kernel, this adds to it and costs nothing).
"""

from __future__ import annotations

import fcntl
import socket
import struct

from ephemeralml.common._errors import ConfigError

from ._nsm import MAX_RANDOM_BYTES, Nsm

__all__ = ["loopback_up", "seed_rng"]

# <linux/sockios.h>, <net/if.h>
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
#: struct ifreq: 16-byte name, then a union whose first member here is short flags.
_IFREQ = struct.Struct("16sH22x")


def loopback_up(name: str = "lo") -> bool:
    """Bring interface ``name`` up; True if it was down. A one-line ConfigError if
    the kernel refuses (it needs CAP_NET_ADMIN, which the enclave's init has)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            got = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0))
            _, flags = _IFREQ.unpack(got)
            if flags & _IFF_UP:
                return False
            fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))
            return True
    except OSError as e:
        raise ConfigError(f"cannot bring up {name}: {e.strerror or e}") from e


def seed_rng(nsm: Nsm, *, device: str = "/dev/urandom") -> int:
    """Mix :data:`MAX_RANDOM_BYTES` from the NSM into the kernel's pool; the count."""
    data = nsm.get_random(MAX_RANDOM_BYTES)
    try:
        with open(device, "wb", buffering=0) as f:
            f.write(data)
    except OSError as e:
        raise ConfigError(f"cannot seed the kernel's RNG through {device}: {e.strerror}") from e
    return len(data)
