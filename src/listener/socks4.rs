//! SOCKS4 and SOCKS4a: one request, one reply. SOCKS4's user id is not a credential, so a rule
//! that needs a user refuses it.

use bytes::BytesMut;
use pingora::protocols::Stream;

use super::{Listener, Request};
use crate::protocol::socks4;
use crate::reply::Answer;
use crate::session::OpenError;

impl Listener {
    pub(super) async fn socks4(&self, mut stream: Stream, mut buf: BytesMut, mut req: Request) {
        let refusal = |_: &_| Some(Answer::socks4(false));
        let Some((request, used)) = self
            .read_message(&mut stream, &mut buf, &req, socks4::parse_request, refusal)
            .await
        else {
            return;
        };
        req.handshake_done();
        let early = buf.split_off(used);
        if request.command != socks4::CONNECT {
            let e = OpenError::BadRequest("only CONNECT is supported".into());
            let answer = Answer::socks4(false);
            self.refuse(&mut stream, &req, Some(&request.target), &e, answer)
                .await;
            return;
        }
        self.open_and_tunnel(
            req,
            stream,
            &request.target,
            early,
            |_| Answer::socks4(true),
            |_| Answer::socks4(false),
        )
        .await;
    }
}
