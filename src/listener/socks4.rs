//! SOCKS4 and SOCKS4a: one request, one reply. SOCKS4's user id is not a credential, so a rule
//! that needs a user refuses it.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::io::write_reply;
use super::{Listener, Request};
use crate::outcome::Outcome;
use crate::protocol::socks4;
use crate::reply;

impl Listener {
    pub(super) async fn socks4(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        let refusal = |_: &_| Some(reply::socks4_failure().to_vec());
        let Some((request, used)) = self
            .read_message(&mut stream, &mut buf, &req, socks4::parse_request, refusal)
            .await
        else {
            return;
        };
        req.handshake_done();
        let early = buf.split_off(used);
        if request.command != socks4::CONNECT {
            let why = "only CONNECT is supported".to_string();
            self.finish_refused(&req, Some(&request.target), Outcome::BadRequest, why);
            write_reply(&mut stream, &reply::socks4_failure()).await;
            return;
        }
        self.open_and_tunnel(
            req,
            stream,
            &request.target,
            early,
            |_| socks4::reply(true).to_vec(),
            |_| reply::socks4_failure().to_vec(),
        )
        .await;
    }
}
