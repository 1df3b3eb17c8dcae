"""bench.server.free_port: ports for servers that bind later, where no outgoing
connection can be given them meanwhile."""

import socket

from bench.server import _bindable, _ephemeral_low, free_port


def test_ports_are_free_consecutive_below_the_ephemeral_range_and_never_handed_out_twice():
    seen = set()
    for _ in range(20):
        base = free_port(count=3)
        ports = set(range(base, base + 3))
        assert base + 2 < _ephemeral_low()
        assert not ports & seen
        seen |= ports
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # free: no socket has it


def test_a_port_that_a_socket_holds_is_not_taken_for_free():
    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        assert not _bindable(port)
        with socket.create_connection(("127.0.0.1", port)) as client:
            # An outgoing connection's own local port counts as taken too.
            assert not _bindable(client.getsockname()[1])
