//! A blackholed server on loopback: a socket whose accept queue is full and never drained, so
//! further SYNs are dropped and connects hang until they time out, as with a dead host.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// Holds the full listening socket and the connections that fill its queue; drop to end it.
pub struct Blackhole {
    _socket: Socket,
    _fillers: Vec<std::net::TcpStream>,
}

impl Blackhole {
    /// Makes `addr` a blackhole (it must be free: stop any server on it first).
    pub fn new(addr: SocketAddr) -> std::io::Result<Blackhole> {
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(0)?;
        let mut fillers = Vec::new();
        for _ in 0..64 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                Ok(c) => fillers.push(c),
                Err(_) => {
                    return Ok(Blackhole {
                        _socket: socket,
                        _fillers: fillers,
                    })
                }
            }
        }
        Err(std::io::Error::other(format!(
            "could not fill the accept queue of {addr}"
        )))
    }

    /// Ends the blackhole by starting to accept: a server that was too busy to accept for a
    /// while. The fillers are closed; their queued connections are the first the listener
    /// accepts (each reads as an immediate EOF). Connects whose SYN was dropped meanwhile complete
    /// on their client's next SYN retransmission (about 1 s after the first on Linux).
    pub fn into_listener(self) -> std::net::TcpListener {
        let Blackhole { _socket, _fillers } = self;
        drop(_fillers);
        // Room in the queue from now on, as for a server that keeps up again.
        let _ = _socket.listen(1024);
        _socket.into()
    }
}
