"""fastmgr.aio over TCP and TLS (loopback): the lanes of an async view
carry TLS through memory buffers on their non-blocking sockets."""
import asyncio
import queue
import shutil
import ssl
import subprocess

import pytest

from helpers.aio import AioManager
from fastmgr import AuthenticationError, AutoProxy, Token, aio

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    d = tmp_path_factory.mktemp("aio-tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "key.pem",
                    "-out", "cert.pem", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   cwd=str(d), check=True, capture_output=True, timeout=60)
    return d


def _contexts(certificate):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(certificate / "cert.pem"), str(certificate / "key.pem"))
    client = ssl.create_default_context(cafile=str(certificate / "cert.pem"))
    return server, client


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_views_over_tcp(tls, certificate, aio_run):
    kwds = {}
    if tls:
        kwds["ssl_context"], kwds["client_ssl_context"] = _contexts(certificate)
    m = AioManager(address=("127.0.0.1", 0), **kwds)
    m.start()
    try:
        maths, q, d = m.Maths(), m.Queue(), m.dict()
        big = b"\x01" * 300000  # several TLS records, more than a socket buffer

        async def main():
            am, aq, ad = aio(maths), aio(q), aio(d)
            assert await am.echo(big) == big
            blobs = [bytes([i]) * (64 << 10) for i in range(80)]  # out of band, 80 buffers
            assert await asyncio.gather(am.echo(blobs), am.echo(big)) == [blobs, big]
            sums = await asyncio.gather(*[am.add(i, i) for i in range(200)])
            getter = asyncio.ensure_future(aq.get(timeout=10))  # a lane of its own
            await asyncio.sleep(0.05)
            await aq.put("over the wire")
            assert await getter == "over the wire"
            with pytest.raises(queue.Empty):
                await aq.get(timeout=0.05)
            await ad.update({i: str(i) for i in range(100)})
            return sums, await ad.len()

        sums, length = aio_run(main)
        assert sums == [2 * i for i in range(200)] and length == 100
    finally:
        m.shutdown()


def test_tls_refuses_a_plain_lane(certificate):
    """A client that does not speak TLS to a TLS aio_manager is refused."""
    server, client = _contexts(certificate)
    m = AioManager(address=("127.0.0.1", 0), ssl_context=server, client_ssl_context=client)
    m.start()
    try:
        d = m.dict()
        # the same object through a link of its own (another serializer
        # makes another link), which has no TLS
        stranger = AutoProxy(Token("dict", m.address, d._id), "xmlrpclib", authkey=m._authkey,
                             exposed=("keys",), incref=False)
        stranger._peer.configure(connect_timeout=2)
        with pytest.raises((AuthenticationError, TimeoutError, ConnectionError, EOFError,
                            ssl.SSLError)):
            asyncio.run(aio(stranger).keys())
    finally:
        m.shutdown()


def test_a_unix_listener_with_a_full_backlog_is_waited_for(tmp_path, aio_run):
    # connect() on a non-blocking unix socket fails with EAGAIN while the
    # listener's backlog is full, leaving the socket unconnected; a lane must
    # wait for room rather than take that for a connection in progress
    import socket
    from fastmgr._aio.connect import _connect

    path = str(tmp_path / "listener")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(0)
    queued = socket.socket(socket.AF_UNIX)
    queued.connect(path)            # fills the backlog
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    try:
        async def main():
            loop = asyncio.get_running_loop()
            attempt = asyncio.ensure_future(_connect(loop, sock, path))
            await asyncio.sleep(0.2)
            waited = not attempt.done()
            listener.accept()[0].close()   # room for one more
            await asyncio.wait_for(attempt, 10)
            return waited

        assert aio_run(main)
        assert sock.getpeername() == path
    finally:
        for s in (sock, queued, listener):
            s.close()
