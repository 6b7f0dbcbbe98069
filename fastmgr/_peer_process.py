"""Which process of this host is at the other end of a connected socket.

A client of plain ``multiprocessing.managers`` sends nothing that names its
process, yet its references must go when that process dies (see
``_stdlib_server.py``).  The kernel knows the process:

- on a unix socket it tells us (``SO_PEERCRED``: the pid that connected);
- on TCP from this host (in this network namespace), the client's socket is
  a row of ``/proc/net/tcp`` (or ``tcp6``) whose inode some process holds
  open; ``ss -p`` and ``lsof`` find it the same way, by reading the
  ``/proc/PID/fd`` links.  The processes seen before are looked at first,
  since a client makes many connections.

Anything else (another host, another namespace, a process we may not
inspect) is None.
"""
import ipaddress
import os
import socket
import struct

__all__ = ["peer_pid"]

_UCRED = struct.Struct("3i")   # pid, uid, gid
_WORD = struct.Struct("=I")    # /proc/net/tcp writes addresses as native 32-bit words


def peer_pid(sock, hints=()):
    """The pid of the process at the other end of sock, or None; hints:
    pids to try first."""
    try:
        if sock.family == socket.AF_UNIX:
            pid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                _UCRED.size))[0]
            return pid or None  # 0: a process outside our pid namespace
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            inode = _tcp_inode(sock.getpeername(), sock.getsockname())
            return None if inode is None else _holder("socket:[%d]" % inode, hints)
    except OSError:
        pass
    return None


def _host(address):
    """An IP address of a socket name, IPv4-mapped IPv6 as IPv4."""
    ip = ipaddress.ip_address(address[0].partition("%")[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _proc_address(ip, port):
    """An address as /proc/net/tcp{,6} writes it."""
    words = ip.packed
    text = "".join("%08X" % _WORD.unpack(words[i:i + 4])[0] for i in range(0, len(words), 4))
    return "%s:%04X" % (text, port)


def _tcp_inode(peer, local):
    """The inode of the peer's end of a TCP connection made from this host."""
    peer_ip, local_ip = _host(peer), _host(local)
    if not (peer_ip.is_loopback or peer_ip == local_ip):
        return None  # another host
    theirs = _proc_address(peer_ip, peer[1])
    ours = _proc_address(local_ip, local[1])
    table = "/proc/net/tcp" if peer_ip.version == 4 else "/proc/net/tcp6"
    try:
        with open(table) as f:
            next(f)  # the header
            for line in f:
                fields = line.split()
                if fields[1] == theirs and fields[2] == ours:
                    return int(fields[9]) or None
    except (OSError, IndexError, ValueError):
        pass
    return None


def _holds(pid, link):
    fd_dir = "/proc/%d/fd" % pid
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return False
    for name in names:
        try:
            if os.readlink(os.path.join(fd_dir, name)) == link:
                return True
        except OSError:
            continue
    return False


def _holder(link, hints):
    """A process that holds the file that link names."""
    for pid in hints:
        if _holds(pid, link):
            return pid
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in pids:
        if pid not in hints and _holds(pid, link):
            return pid
    return None
